"""spandrel, both ways (optional extra ``pip install -e '.[spandrel]'``, Python >= 3.10).

- ``install()`` (the shape of ``spandrel_extra_arches.install()``) adds every described network of this package
  that spandrel does not already know (HINet, HINetSimple, DRCNet, FCN, Baseline with spandrel 0.4.2 and
  spandrel-extra-arches 0.2.0) to ``spandrel.MAIN_REGISTRY``, so ``spandrel.ModelLoader().load_from_file(path)``
  loads their checkpoints. Detection is ours (``hinet_plugins.archs.autodetect``: exact key and shape fit), and
  ours are ordered before every spandrel architecture (``ArchSupport.before``), so an FCN checkpoint is never
  taken for spandrel's MPRNet, whose key test it also passes. The model's output is our final stage; the size
  requirement is the network's own multiple where it reflect-pads (spandrel pads the same way), none otherwise.
- ``load_state_dict(state)``: the fallback of ``Restorer.load(checkpoint=...)`` for a checkpoint that none of our
  networks fits: spandrel (with the extra architectures) detects and loads it; ``SpandrelNet`` wraps the
  descriptor as an ``nn.Module`` (spandrel's padding and output selection), so TLC converts it like any network.
"""
import importlib.util
import sys
import warnings
from typing import Any, Dict, Tuple, Union

import torch
from torch import nn

from ..errors import ConfigError
from ..utils.nets import last_output


def available() -> bool:
    return sys.version_info >= (3, 10) and importlib.util.find_spec('spandrel') is not None


def _import():
    """``spandrel`` (importing it makes torch warn that ``torch.jit.script`` is deprecated: not ours to report)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        import spandrel
        if importlib.util.find_spec('spandrel_extra_arches') is not None:
            import spandrel_extra_arches  # noqa: F401
    return spandrel


def _known_ids():
    spandrel = _import()
    ids = {a.architecture.id for a in spandrel.MAIN_REGISTRY}
    if importlib.util.find_spec('spandrel_extra_arches') is not None:
        import spandrel_extra_arches
        ids |= {a.architecture.id for a in spandrel_extra_arches.EXTRA_REGISTRY}
    return ids


def _architecture(spec):
    spandrel = _import()
    from ..archs import detection

    def fits(state):
        try:
            return detection(state).network_g['type'] == spec.name
        except ConfigError:
            return False

    class Arch(spandrel.Architecture):
        def load(self, state):
            kwargs = {k: v for k, v in detection(state).network_g.items() if k != 'type'}
            model = spec.cls(**kwargs)
            cin, cout = spec.channels(kwargs)
            # spandrel reflect-pads bottom/right to ``multiple_of``: what the network does itself when it reflects
            size = spandrel.SizeRequirements(multiple_of=spec.size_multiple(kwargs)) \
                if spec.pad_mode == 'reflect' else None
            return spandrel.ImageModelDescriptor(
                model, state, architecture=self, purpose='Restoration', tags=[],
                supports_half=False, supports_bfloat16=True, scale=1, input_channels=cin, output_channels=cout,
                size_requirements=size, call_fn=lambda net, x: last_output(net(x)))

    Arch.__name__ = f'{spec.name}Arch'
    return Arch(id=spec.name, detect=fits)


def install(*, ignore_duplicates: bool = False) -> list:
    """Add our networks that spandrel lacks to ``spandrel.MAIN_REGISTRY``; returns the added ``ArchSupport``s."""
    spandrel = _import()
    from ..archs import specs
    known = _known_ids()
    supports = [spandrel.ArchSupport.from_architecture(_architecture(s), before=tuple(sorted(known)))
                for name, s in specs().items() if name not in known]
    return spandrel.MAIN_REGISTRY.add(*supports, ignore_duplicates=ignore_duplicates)


def install_all() -> None:
    """spandrel's extra architectures and ours, each once (safe to call repeatedly)."""
    _import()
    if importlib.util.find_spec('spandrel_extra_arches') is not None:
        import spandrel_extra_arches
        spandrel_extra_arches.install(ignore_duplicates=True)
    install(ignore_duplicates=True)


class SpandrelNet(nn.Module):
    """A spandrel image model as a module: ``forward(x)`` is the descriptor's call (its padding to the model's size
    requirements, its choice of output, its clamping to [0, 1]); ``model`` is the wrapped network (TLC converts it
    in place, and the descriptor calls that same object)."""

    def __init__(self, descriptor: Any) -> None:
        super().__init__()
        self.model = descriptor.model
        self.descriptor = descriptor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.descriptor(x)


def load_state_dict(state: Dict[str, torch.Tensor], path: str,
                    reason: Union[str, Exception]) -> Tuple[SpandrelNet, str]:
    """(``SpandrelNet``, description) for a state dict none of our networks fits; ConfigError when spandrel does
    not know it either (the message keeps ``reason``, our closest networks)."""
    spandrel = _import()
    install_all()
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise ConfigError(f'{reason}; spandrel does not know it either') from None
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{reason}; spandrel detected an architecture but could not load it: {first}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ConfigError(f"checkpoint '{path}': spandrel loads it as {descriptor.architecture.name}, which is not an "
                          'image-to-image model')
    net = SpandrelNet(descriptor)
    return net, (f"{descriptor.architecture.name} from '{path}' (none of our networks fits; detected and loaded by "
                 f'spandrel {spandrel.__version__})')
