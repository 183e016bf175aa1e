"""Checkpoint writing and checking."""
import os
import tempfile

import torch


def atomic_torch_save(obj, path):
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    A crash, kill or full disk during the write leaves the previous file at ``path`` untouched; the error is
    raised (not swallowed as upstream does), so a failed save is never mistaken for a good one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def unwrap_state_dict(loaded, param_key=None):
    """The state_dict inside a checkpoint file: ``loaded[param_key]`` or a common wrapper key, 'module.' removed."""
    state = loaded
    if isinstance(loaded, dict):
        for key in ([param_key] if param_key else []) + ['params', 'params_ema', 'state_dict', 'model']:
            if key in loaded and isinstance(loaded[key], dict):
                state = loaded[key]
                break
    return {(k[7:] if k.startswith('module.') else k): v for k, v in state.items() if hasattr(v, 'shape')}


def describe_state_dict_mismatch(expected, loaded, param_key=None, limit=8):
    """A readable list of missing/unexpected keys and shape differences between a net and a checkpoint."""
    got = unwrap_state_dict(loaded, param_key)
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f'{k}: network {tuple(expected[k].shape)} vs checkpoint {tuple(got[k].shape)}'
              for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)]
    parts = []
    for title, items in (('missing in checkpoint', missing), ('unexpected in checkpoint', unexpected),
                         ('shape differs', shapes)):
        if items:
            more = f' ... (+{len(items) - limit} more)' if len(items) > limit else ''
            parts.append(f'{len(items)} {title}: ' + ', '.join(items[:limit]) + more)
    return '; '.join(parts) or 'keys and shapes match (the error came from elsewhere)'
