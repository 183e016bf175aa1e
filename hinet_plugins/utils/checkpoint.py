"""Checkpoint writing and checking."""
import contextlib
import os
import random
import re
import tempfile
from typing import Any, BinaryIO, Dict, Iterable, Mapping, Optional

import numpy as np
import torch


# Files rank 0 sent to this rank (absolute path -> bytes): checkpoints a node without shared storage lacks
# (``basicsr_ext.resume``); loading a network from such a path reads these bytes instead of the disk.
RECEIVED_FILES = {}


def received(path: Any) -> Optional[BinaryIO]:
    """The bytes rank 0 sent for ``path`` as a file object, or None."""
    import io
    data = RECEIVED_FILES.get(os.path.abspath(path)) if isinstance(path, str) else None
    return io.BytesIO(data) if data is not None else None


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. disk full); the previous file at that path is unchanged."""


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    A crash, kill or full disk during the write leaves the previous file at ``path`` untouched; the error is
    raised (not swallowed as upstream does), so a failed save is never mistaken for a good one. The temporary
    files that a process killed mid-write left in the folder (``.<name>.pth.<random>.tmp``, ``.<iter>.state.…``)
    are removed by the next save into that folder.
    """
    folder = os.path.dirname(os.path.abspath(path))
    prefix = '.' + os.path.basename(path) + '.'
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        remove_stale_temporaries(folder)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix='.tmp', dir=folder)
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and not isinstance(err, CheckpointWriteError):
            raise CheckpointWriteError(err.errno, f"could not write checkpoint '{path}' ({err.strerror or err}); "
                                       'the previous file at that path, if any, is unchanged') from err
        raise


STALE_TEMPORARY = re.compile(r'^\..+\.(pth|state)\.[A-Za-z0-9_]+\.tmp$')


def remove_stale_temporaries(folder: str) -> None:
    """Remove what ``atomic_torch_save`` leaves when killed mid-write (one process writes a run's folder)."""
    for name in os.listdir(folder):
        if STALE_TEMPORARY.match(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))


def rng_states() -> dict:
    """The random states that drive training data and augmentation: python, numpy, torch (and CUDA)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # stored as plain types + tensors: weights_only-safe
    states = {'python': random.getstate(), 'numpy': (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     gauss), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Inverse of ``rng_states`` (CUDA states only when the device count matches)."""
    random.setstate(states['python'])
    name, keys, pos, has_gauss, gauss = states['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states['torch'].cpu())
    cuda = states.get('cuda')
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def unwrap_state_dict(loaded: Any, param_key: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint file: ``loaded[param_key]`` or a common wrapper key, 'module.' removed."""
    state = loaded
    if isinstance(loaded, dict):
        for key in ([param_key] if param_key else []) + ['params', 'params_ema', 'state_dict', 'model']:
            if key in loaded and isinstance(loaded[key], dict):
                state = loaded[key]
                break
    return {(k[7:] if k.startswith('module.') else k): v for k, v in state.items() if hasattr(v, 'shape')}


def describe_state_dict_mismatch(expected: Mapping[str, torch.Tensor], loaded: Any, param_key: Optional[str] = None,
                                 limit: int = 8, ignored_prefixes: Iterable[str] = ()) -> str:
    """A readable list of missing/unexpected keys and shape differences between a net and a checkpoint.

    ``ignored_prefixes``: checkpoint keys the network itself drops when loading (an arch's
    ``ignored_checkpoint_prefixes``, e.g. FCN's unused release decoder); they are not reported as unexpected."""
    got = unwrap_state_dict(loaded, param_key)
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected and not k.startswith(tuple(ignored_prefixes))]
    shapes = [f'{k}: network {tuple(expected[k].shape)} vs checkpoint {tuple(got[k].shape)}'
              for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)]
    parts = []
    for title, items in (('missing in checkpoint', missing), ('unexpected in checkpoint', unexpected),
                         ('shape differs', shapes)):
        if items:
            more = f' ... (+{len(items) - limit} more)' if len(items) > limit else ''
            parts.append(f'{len(items)} {title}: ' + ', '.join(items[:limit]) + more)
    return '; '.join(parts) or 'keys and shapes match (the error came from elsewhere)'
