"""Which registered network a checkpoint holds, and its constructor keywords, from key names and tensor shapes.

Each network's ``ArchSpec.detect`` reads its keywords from the state dict; the answer counts only when the network
built with them (on the ``meta`` device: no memory, no time) has exactly the checkpoint's keys and shapes, minus
the keys the network itself drops on load (``ignored_checkpoint_prefixes``, e.g. FCN's unused release decoder).
So a guess can never load loosely, and two networks whose keys differ (FCN vs MPRNet) are never confused.
Exactly one fit -> ``Detection``; none or several -> one-line ``ConfigError`` naming the closest networks and the
first key or shape that does not fit. Keywords the weights cannot show keep the class default and are listed in
``Detection.assumed`` (``ArchSpec.assumed``), which the loader prints.
"""
import dataclasses
import re
from typing import Any

import torch

from ..errors import ConfigError
from ..utils.checkpoint import unwrap_state_dict
from .spec import ArchSpec, specs


@dataclasses.dataclass
class Detection:
    network_g: dict
    assumed: dict  # keyword -> why its default is taken

    def summary(self) -> str:
        args = ', '.join(f'{k}={v}' for k, v in self.network_g.items() if k != 'type')
        text = f"detected {self.network_g['type']}({args}) from the weights"
        if self.assumed:
            text += '; not in the weights, assumed: ' + '; '.join(f'{k} {v}' for k, v in self.assumed.items())
        return text


def _build_meta(spec, kwargs):
    with torch.device('meta'):
        return spec.cls(**kwargs)


def _problems(net, sd):
    """Differences between ``net``'s state dict and ``sd``, in the network's key order, then unexpected keys."""
    expected = net.state_dict()
    ignored = tuple(getattr(net, 'ignored_checkpoint_prefixes', ()))
    out = []
    for key, value in expected.items():
        if key not in sd:
            out.append(f"key '{key}' missing")
        elif tuple(sd[key].shape) != tuple(value.shape):
            out.append(f"'{key}' has shape {tuple(sd[key].shape)}, expected {tuple(value.shape)}")
    out += [f"unexpected key '{k}'" for k in sd if k not in expected and not (ignored and k.startswith(ignored))]
    return out


def _pattern(key):
    return re.sub(r'\.\d+\.', '.#.', key)


def _overlap(spec, sd):
    """Share of key patterns (list indices removed) common to ``sd`` and the spec's tiny network, and the first
    of the network's keys missing from ``sd``."""
    keys = list(_build_meta(spec, spec.tiny).state_dict())
    mine, theirs = {_pattern(k) for k in keys}, {_pattern(k) for k in sd}
    first = next((k for k in keys if _pattern(k) not in theirs), None)
    return len(mine & theirs) / max(len(mine | theirs), 1), first


def detection(checkpoint: Any, source: str = 'the checkpoint') -> Detection:
    """``Detection`` of a state dict or a loaded checkpoint (any wrapper ``unwrap_state_dict`` accepts)."""
    sd = unwrap_state_dict(checkpoint) if isinstance(checkpoint, dict) else {}
    if not sd:
        raise ConfigError(f'{source} holds no tensors (nor params, params_ema, state_dict, model)')
    fits, near = [], []
    for spec in specs().values():
        kwargs = spec.detect(sd)
        if kwargs is None:
            continue
        try:
            problems = _problems(_build_meta(spec, kwargs), sd)
        except (TypeError, ValueError, RuntimeError) as err:
            problems = [f'cannot be built with {kwargs}: {err}']
        (near if problems else fits).append((spec, kwargs, problems))
    if len(fits) == 1:
        spec, kwargs, _ = fits[0]
        return Detection({'type': spec.name, **kwargs}, spec.assumptions(kwargs))
    if fits:
        names = ' and '.join(f'{s.name}({k})' for s, k, _ in fits)
        raise ConfigError(f'{source}: the weights fit {names}; give the architecture (--arch or -opt)')
    ranked = [(0, -len(p), s.name, p[0]) for s, _, p in near]
    for spec in specs().values():
        if spec.name not in {s.name for s, _, _ in near}:
            share, first = _overlap(spec, sd)
            ranked.append((-1, share, spec.name, f"key '{first}' missing" if first else 'keys differ'))
    ranked.sort(reverse=True)
    closest = '; '.join(f'{name}: {problem}' for _, _, name, problem in ranked[:2])
    raise ConfigError(f'{source} fits no registered network ({len(sd)} tensors, first key '
                      f"'{next(iter(sd))}'); closest: {closest}")


def detect(checkpoint: Any) -> dict:
    """The ``network_g`` dict (type + every keyword that shapes the weights) of a state dict or checkpoint."""
    return detection(checkpoint).network_g


def round_trip(spec: ArchSpec, kwargs: dict, size: int = 48, seed: int = 0) -> dict:
    """Detection round trip of one configuration: random weights -> state dict -> ``detection`` -> the detected
    network loaded strictly -> max |difference| of every output on a (size+1) x (size+3) input (0.0 = exact)."""
    torch.manual_seed(seed)
    net = spec.cls(**kwargs).eval()
    with torch.no_grad():
        for p in net.parameters():  # perturbed: some networks start as the identity (NAFNet's zero layer scales)
            p.add_(torch.randn_like(p) * 0.02)
    found = detection({'params': net.state_dict()})
    rebuilt = spec.cls(**{k: v for k, v in found.network_g.items() if k != 'type'}).eval()
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    x = torch.rand(1, spec.channels(kwargs)[0], size + 1, size + 3)
    with torch.no_grad():
        a, b = net(x), rebuilt(x)
    a, b = (list(o) if isinstance(o, (list, tuple)) else [o] for o in (a, b))
    return {'params': sum(p.numel() for p in net.parameters()), 'detection': found,
            'max_diff': max((p - q).abs().max().item() for p, q in zip(a, b))}
