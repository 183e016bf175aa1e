"""One description per network (``ArchSpec``), declared in the network's own ``*_arch.py`` with ``describe``.

Everything that goes over "all networks" (``<Name>Local`` names, detection, ONNX export, complexity, benchmarks,
the parametrised tests) reads ``specs()``: a new arch file that calls ``describe`` is all a network needs.

- ``configs``: named configurations (``Config``): the releases (``params`` exact when given) and papers' ablations.
- ``tiny``: keywords of a tiny network for tests; ``sample(rng)``: a random small configuration.
- ``size_multiple(kwargs)``, ``pad_mode``: inputs are padded bottom/right to that multiple ('reflect' or 'zeros')
  inside the network and outputs cropped back, so any size works.
- ``channels(kwargs)``: (input, output) channels; ``final_layer``: the module making the final (only or last) output.
- ``detect(state_dict)``: the keywords that shape the weights, from key names and shapes, or ``None`` when the keys
  are not this network's (``autodetect`` checks the fit); ``assumed``: keywords the weights cannot show -> why the
  class default is taken (a dict, or a function of the detected keywords).
"""
import dataclasses
import random
import re
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union


@dataclasses.dataclass(frozen=True)
class Config:
    label: str
    kwargs: dict
    params: Optional[int] = None
    release: bool = True  # the authors' public release: ``params`` is exact
    macs_g: Optional[float] = None  # the paper's MACs at 1x3x256x256 (counting convention in ``note``)
    note: str = ''
    macs_counter: str = 'thop'


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    name: str
    cls: type
    purpose: str
    tiny: dict
    detect: Callable[[dict], Optional[dict]]
    final_layer: str
    size_multiple: Callable[[dict], int]
    channels: Callable[[dict], Tuple[int, int]]
    sample: Callable[[random.Random], dict]
    configs: Tuple[Config, ...] = ()
    pad_mode: str = 'reflect'
    assumed: Union[Dict[str, str], Callable[[dict], Dict[str, str]]] = dataclasses.field(default_factory=dict)

    def assumptions(self, kwargs: dict) -> Dict[str, str]:
        return self.assumed(kwargs) if callable(self.assumed) else dict(self.assumed)

    def options(self, kwargs: Optional[dict] = None) -> dict:
        """``network_g`` of this network with ``kwargs`` (the tiny configuration when None)."""
        return {'type': self.name, **(self.tiny if kwargs is None else kwargs)}


_SPECS = {}


def describe(cls: type, **fields: Any) -> ArchSpec:
    """Declare ``cls``'s description (call it in the arch file, after the class); returns the ``ArchSpec``."""
    spec = ArchSpec(name=cls.__name__, cls=cls, **fields)
    _SPECS[spec.name] = spec
    return spec


def specs() -> Dict[str, ArchSpec]:
    """{name: ArchSpec} of every network registered in ARCH_REGISTRY that has a description, sorted by name."""
    from basicsr.utils.registry import ARCH_REGISTRY
    return {n: _SPECS[n] for n in sorted(_SPECS) if n in ARCH_REGISTRY and ARCH_REGISTRY.get(n) is _SPECS[n].cls}


def spec_of(name: str) -> Optional[ArchSpec]:
    return specs().get(name)


# --- helpers for ``detect`` functions: reading a state dict ---------------------------------------------------

def count(sd: Mapping[str, Any], prefix: str) -> int:
    """Number of consecutive list entries ``prefix<i>.`` (0, 1, ...) in the keys of ``sd``."""
    pattern = re.compile(re.escape(prefix) + r'(\d+)\.')
    found = {int(m.group(1)) for k in sd for m in [pattern.match(k)] if m}
    n = 0
    while n in found:
        n += 1
    return n


def shape(sd: Mapping[str, Any], key: str, dim: Optional[int] = None) -> Optional[Union[int, Tuple[int, ...]]]:
    """``sd[key].shape`` (or one of its dims); None when the key is missing."""
    if key not in sd:
        return None
    s = tuple(sd[key].shape)
    if dim is None:
        return s
    return s[dim] if -len(s) <= dim < len(s) else None


def has_prefix(sd: Mapping[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in sd)
