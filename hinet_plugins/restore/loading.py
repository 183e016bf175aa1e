"""Build a registered network and load its weights, from an option file or from an arch name + options + checkpoint.

Model sources (``network_spec``), in the order they override each other: an option file (``opt``); ``arch``,
``arch_opt``, ``checkpoint``, ``param_key``, ``tlc``; or only a ``checkpoint``, whose architecture and shaping
keywords are read from the state dict (``detect_network``).

Decisions:
- Every release checkpoint format loads (``params``, ``params_ema``, ``state_dict``, ``model``, bare, a leading
  ``module.``: ``utils.checkpoint.unwrap_state_dict``), strictly unless the option file says otherwise.
- Files are read with ``weights_only=True``: a checkpoint can never run code.
- What the weights cannot show is a stated default, named in the description; a checkpoint that fits none of our
  networks goes to spandrel when that optional extra is installed, else it is a one-line ConfigError.
- Every mistake is a ``ConfigError`` naming the file or the option.
"""
import os
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

import torch
import yaml
from torch import nn

from ..errors import ConfigError
from ..utils.checkpoint import describe_state_dict_mismatch, unwrap_state_dict
from ..utils.nets import input_channels  # noqa: F401  (part of restore's API)

TLC_KEYS = ('train_size', 'base_size', 'fast_imp')


def parse_key_values(items: Optional[Iterable[str]], flag: str = '--arch-opt') -> dict:
    """['wf=32', 'depth=4'] -> {'wf': 32, 'depth': 4} (values read as YAML)."""
    out = {}
    for item in items or []:
        key, sep, value = str(item).partition('=')
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects key=value, got '{item}'")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{flag} {item}: the value is not valid YAML") from None
    return out


def network_spec(opt: Optional[Union[str, dict]] = None, arch: Optional[str] = None, arch_opt: Optional[dict] = None,
                 checkpoint: Optional[str] = None, param_key: Optional[str] = None,
                 tlc: Optional[Union[bool, Mapping[str, Any]]] = None) -> dict:
    """What to build and load: {'network_g', 'checkpoint', 'param_key', 'strict', 'tlc'} (see the module doc).

    The dict also holds ``arch_opt``. ``opt`` is an option-file path or a loaded option dict, read for
    ``network_g``, ``path.pretrain_network_g``, ``path.param_key_g`` (default 'params'), ``path.strict_load_g``
    (default true) and ``val.tlc`` (as validation reads it). ``arch`` replaces ``network_g`` unless it names the
    same type; ``arch_opt`` keywords are added to it. ``tlc`` True uses the option file's ``val.tlc`` settings
    (train_size etc.), a mapping overrides them key by key, False switches TLC off. With neither ``opt`` nor
    ``arch``, ``network_g`` is None: the caller detects it from the checkpoint."""
    net_opt, ckpt, key, strict, tlc_opt = None, None, 'params', True, None
    if opt is not None:
        from ..models.restoration_model import MultiStageRestorationModel
        from ..basicsr_ext import load_yaml
        where = opt if isinstance(opt, str) else 'options'
        opt = load_yaml(opt) if isinstance(opt, str) else opt
        if not isinstance(opt.get('network_g'), dict):
            raise ConfigError(f'{where}: network_g is missing')
        net_opt = dict(opt['network_g'])
        path = opt.get('path') or {}
        ckpt, key = path.get('pretrain_network_g'), path.get('param_key_g') or 'params'
        strict = path.get('strict_load_g', True) is not False
        tlc_opt = MultiStageRestorationModel.tlc_options(opt)
    if arch:
        net_opt = net_opt if net_opt is not None and net_opt.get('type') == arch else {'type': arch}
    if net_opt is None and not checkpoint:
        raise ConfigError('give the model: an option file (-opt), an architecture name (--arch) + checkpoint, or a '
                          'checkpoint alone (--checkpoint: the architecture is read from its weights)')
    if net_opt is not None:
        net_opt.update(arch_opt or {})
    if tlc is False:
        tlc_opt = None
    elif tlc is not None:
        given = {} if tlc is True else dict(tlc)
        unknown = sorted(set(given) - set(TLC_KEYS))
        if unknown:
            raise ConfigError(f'tlc: unknown key(s) {unknown}; expected {list(TLC_KEYS)}')
        merged = {k: v for k, v in (tlc_opt or {}).items() if k in TLC_KEYS}
        merged.update({k: v for k, v in given.items() if v is not None})
        if not merged.get('train_size'):
            raise ConfigError('TLC needs the training patch size: --train-size (or val.tlc.train_size)')
        tlc_opt = merged
    if tlc_opt is not None:
        tlc_opt = {k: tlc_opt.get(k) for k in TLC_KEYS}
    return {'network_g': net_opt, 'checkpoint': checkpoint or ckpt, 'param_key': param_key or key,
            'strict': strict, 'tlc': tlc_opt, 'arch_opt': dict(arch_opt or {})}


def build_net(net_opt: dict) -> nn.Module:
    """``network_g`` -> the network (registry lookup), constructor mistakes -> ConfigError naming ``network_g``."""
    from basicsr.archs import build_network
    from basicsr.utils.registry import ARCH_REGISTRY
    if net_opt.get('type') not in ARCH_REGISTRY:
        names = ', '.join(sorted(name for name, _ in ARCH_REGISTRY))
        raise ConfigError(f"network type '{net_opt.get('type')}' is not registered. Registered: {names}")
    try:
        return build_network(dict(net_opt))
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"network_g: cannot build {net_opt['type']} with {net_opt}: {err}") from None


def read_checkpoint(path: Optional[str]) -> Any:
    """The object in a checkpoint file (weights only); a missing or unreadable file -> ConfigError naming it."""
    if not path:
        raise ConfigError('no checkpoint: give --checkpoint or path.pretrain_network_g in the option file')
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001  (unpickling, truncated zip, not a torch file, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"checkpoint '{path}' cannot be loaded as a torch checkpoint: {reason}") from None


def load_weights(net: nn.Module, path: Optional[str], param_key: str = 'params', strict: bool = True,
                 name: Optional[str] = None, loaded: Any = None) -> nn.Module:
    """Load ``path`` into ``net`` (release formats, see the module doc); a mismatch lists the keys/shapes.
    ``loaded``: the file's content when it was already read."""
    loaded = read_checkpoint(path) if loaded is None else loaded
    state = unwrap_state_dict(loaded, param_key)
    if not state:
        raise ConfigError(f"checkpoint '{path}' holds no tensors under '{param_key}' (nor params, params_ema, "
                          'state_dict, model)')
    try:
        net.load_state_dict(state, strict=strict)
    except RuntimeError:
        ignored = getattr(net, 'ignored_checkpoint_prefixes', ())
        raise ConfigError(f"checkpoint '{path}' does not fit {name or type(net).__name__}: "
                          + describe_state_dict_mismatch(net.state_dict(), loaded, param_key,
                                                         ignored_prefixes=ignored)) from None
    return net


def apply_tlc(net: nn.Module, tlc: Mapping[str, Any]) -> str:
    """Convert ``net`` in place with TLC (``hinet_plugins.tlc.convert``); returns the conversion's summary line."""
    from ..tlc import convert
    try:
        conversion = convert(net, tlc['train_size'], tlc.get('base_size'), bool(tlc.get('fast_imp')), warn=False)
    except ValueError as err:
        raise ConfigError(f'TLC: {err}') from None
    return conversion.summary().splitlines()[0]


def load_network(opt: Optional[Union[str, dict]] = None, arch: Optional[str] = None, arch_opt: Optional[dict] = None,
                 checkpoint: Optional[str] = None, param_key: Optional[str] = None,
                 tlc: Optional[Union[bool, Mapping[str, Any]]] = None, device: Union[str, torch.device] = 'cpu',
                 require_checkpoint: bool = True) -> Tuple[nn.Module, str]:
    """The network in eval mode on ``device``, weights loaded and TLC applied, and a one-line description.

    ``require_checkpoint=False`` allows random weights when no checkpoint is given (export tests, benchmarks)."""
    spec = network_spec(opt, arch, arch_opt, checkpoint, param_key, tlc)
    loaded, detected = None, ''
    if spec['network_g'] is None:
        loaded = read_checkpoint(spec['checkpoint'])
        found = detect_network(loaded, spec['checkpoint'], spec['param_key'], given=spec['arch_opt'])
        if not isinstance(found, dict):  # a network of another architecture family, loaded by spandrel
            net, desc = found
            return _finish(net, desc, spec, device)
        spec['network_g'] = {**found, **spec['arch_opt']}
        given = ', '.join(f'{k}={v}' for k, v in spec['arch_opt'].items())
        detected = f" ({spec['network_g'].pop('_detected')}{'; given: ' + given if given else ''})"
    net = build_net(spec['network_g'])
    desc = spec['network_g']['type']
    if spec['checkpoint'] or require_checkpoint:
        load_weights(net, spec['checkpoint'], spec['param_key'], spec['strict'], name=f"{desc} {spec['network_g']}",
                     loaded=loaded)
        desc += f" from '{spec['checkpoint']}'{detected}"
    else:
        desc += ' (random weights)'
    return _finish(net, desc, spec, device)


def detect_network(loaded: Any, path: Optional[str], param_key: str = 'params',
                   given: Iterable[str] = ()) -> Union[dict, Tuple[nn.Module, str]]:
    """``network_g`` of the checkpoint's architecture (with ``'_detected'``: the detection's summary), or, when
    none of ours fits and spandrel is installed, ``(network, description)`` from spandrel. The architecture and
    every keyword that shapes the weights come from the state dict (``hinet_plugins.archs.detect``); keywords in
    ``given`` (``arch_opt``, applied on top, e.g. DRCNet's ``preset``) are not listed as assumed. Without spandrel,
    a checkpoint that fits none of ours is a one-line ConfigError naming the closest networks."""
    from ..archs import detection
    from ..integrations import spandrel as spandrel_support
    state = unwrap_state_dict(loaded, param_key)
    try:
        found = detection(state, source=f"checkpoint '{path}'")
    except ConfigError as err:
        if not state or not spandrel_support.available():
            raise
        return spandrel_support.load_state_dict(state, path, err)
    for key in given:
        found.assumed.pop(key, None)
    return {**found.network_g, '_detected': found.summary()}


def _finish(net, desc, spec, device):
    net.eval().to(device)
    if spec['tlc']:
        desc += '; ' + apply_tlc(net, spec['tlc'])
    return net, desc
