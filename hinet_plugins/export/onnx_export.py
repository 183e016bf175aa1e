"""ONNX export of any registered restoration network, optionally TLC-converted, with dynamic N, H and W.

``export_onnx(net, path)`` traces the network with the TorchScript exporter (``torch.onnx.export(dynamo=False)``)
and marks the input's and output's batch, height and width as dynamic; the graph returns the last stage only.

Decisions:
- The padding to the network's multiple and the crop back are traced into the graph (the tracer records the shape
  arithmetic), so they follow the input size at run time; export sizes are odd so that the trace must pad.
- A file is written only when onnxruntime agrees with PyTorch on two other sizes; a module that cannot be exported,
  or computes something else, is named in the error (``locate.locate_problem``: the deepest failing child).
- TLC layers are exported in fixed-window graph forms (``tlc_forms``), exact above a minimum input size
  (``tlc_min_size``, about ``base_size``; stored as ``hinet_plugins.min_input_size``). The fast mode is refused: its
  size-dependent sampling stride cannot follow a dynamic graph.
"""
import os
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..restore.loading import input_channels
from ..restore.restoring import last_output
from .locate import locate_problem
from .tlc_forms import graph_forms
from .trace import ATOL, OPSET, first_line, max_diff, onnx_export, run_onnx  # noqa: F401  (run_onnx: API)


class LastStage(nn.Module):
    """The network's last output only (multi-stage nets return a list)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return last_output(self.net(x))


def registered_archs() -> List[str]:
    """Names of this package's described networks (``hinet_plugins.archs.specs()``; the ``*Local`` names excluded)."""
    from ..archs import specs
    return list(specs())


def tlc_layers(net: nn.Module) -> Dict[str, nn.Module]:
    from ..tlc import LocalOp
    return {name: m for name, m in net.named_modules() if isinstance(m, LocalOp)}


def tlc_min_size(net: nn.Module, channels: int, probe: int = 33) -> int:
    """Smallest odd side above which every TLC window is smaller than its feature map (0 without TLC layers).

    The local operators branch in Python on sizes (a window covering its map falls back to the global op) and the
    trace keeps the branch taken at the export size, so the graph is exact only for inputs at least this large.

    Feature sizes grow linearly with the input: one probe forward gives each local layer's feature/input ratio,
    hence the side its window needs; a second forward at that side confirms it (and is enlarged if not)."""
    layers = [m for m in tlc_layers(net).values() if m.kernel_size is not None]
    if not layers:
        return 0
    side = probe
    for _ in range(6):
        seen = {}

        def record(module, args, _seen=seen):
            _seen.setdefault(module, tuple(args[0].shape[-2:]))
        handles = [m.register_forward_pre_hook(record) for m in layers]
        try:
            with torch.no_grad():
                net(torch.zeros(1, channels, side, side))
        finally:
            for h in handles:
                h.remove()
        pairs = [(k, f) for m, fs in seen.items() for k, f in zip(m.kernel_size, fs)]
        if all(f > k for k, f in pairs):
            return side
        side = int(max([(k + 1) * side / f for k, f in pairs] + [side * 1.25])) + 1 | 1
    raise ConfigError('TLC: could not find an input size whose feature maps are all larger than their windows')


def default_sizes(min_side: int = 0) -> Tuple[Tuple[int, int], List[Tuple[int, int]]]:
    """(export size, [two check sizes]): odd sizes (never a multiple of the network's padding), above
    ``min_side`` (the TLC bound), one check size smaller and one larger than the export size."""
    lo = max(33, min_side + 2) | 1
    return (lo + 8, lo + 12), [(lo, lo + 22), (lo + 16, lo + 2)]


def export_onnx(net: nn.Module, path: str, size: Optional[Sequence[int]] = None,
                check_sizes: Optional[Sequence[Sequence[int]]] = None, opset: int = OPSET, atol: float = ATOL,
                metadata: Optional[dict] = None) -> dict:
    """Write ``net`` as ONNX with dynamic N, H, W (fp32 on the CPU: ``net`` is moved there and put in eval mode).

    Opset ``OPSET``; the file is written to a temporary name and renamed over ``path`` only when onnxruntime's
    output on every ``check_sizes`` (default: two sizes other than the export size) is within ``atol`` of PyTorch's.

    Returns {'path', 'size', 'diffs': {(h, w): max |ONNX - PyTorch|}}. Raises ConfigError (one line) when the
    network cannot be exported or the exported graph disagrees with PyTorch, naming the module."""
    layers = tlc_layers(net)
    fast = sorted(n for n, m in layers.items() if m.fast_imp)
    if fast:
        raise ConfigError(f"TLC fast mode (fast_imp) cannot be exported with dynamic shapes: its sampling stride "
                          f"depends on the feature size modulo 5..2 (layer '{fast[0]}'); export the exact TLC")
    net = net.float().cpu().eval()
    channels = input_channels(net)
    min_side = tlc_min_size(net, channels)
    auto_size, auto_checks = default_sizes(min_side)
    size = tuple(size or auto_size)
    check_sizes = [tuple(s) for s in (check_sizes or auto_checks)]
    small = [s for s in [size] + check_sizes if min(s) < min_side]
    if small:
        raise ConfigError(f'with TLC the graph is valid for inputs of at least {min_side}x{min_side} (every window '
                          f'smaller than its feature map); {small[0][0]}x{small[0][1]} is smaller')
    reference = LastStage(net).eval()
    graph_net, _ = graph_forms(net)
    wrapper = LastStage(graph_net).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, channels, *size, generator=gen)
    checks = [torch.rand(1, channels, *s, generator=gen) for s in check_sizes]
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"output folder '{folder}' does not exist")
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    os.close(fd)
    name = type(net).__name__
    try:
        try:
            onnx_export(wrapper, [x], tmp, opset)
        except Exception as err:  # noqa: BLE001
            where = locate_problem(graph_net, [x], opset, atol)
            raise ConfigError(_describe(name, where, first_line(err))) from None
        diffs = {}
        for s, t in zip(check_sizes, checks):
            with torch.no_grad():
                ref = reference(t)
            try:
                diffs[s] = max_diff(run_onnx(tmp, t), ref)
            except Exception as err:  # noqa: BLE001
                diffs[s] = float('inf')
                first = first_line(err)
            if diffs[s] > atol:
                where = locate_problem(graph_net, [x, t], opset, atol)
                reason = (f'max |ONNX - PyTorch| = {diffs[s]:.3g} at {s[0]}x{s[1]} (tolerance {atol:g})'
                          if diffs[s] != float('inf') else f'onnxruntime fails at {s[0]}x{s[1]}: {first}')
                raise ConfigError(_describe(name, where, reason))
        _add_metadata(tmp, dict(metadata or {}, export_size=f'{size[0]}x{size[1]}', opset=str(opset),
                                min_input_size=f'{min_side}x{min_side}' if min_side else 'none'))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {'path': path, 'size': size, 'diffs': diffs, 'min_input_size': min_side}


def _describe(name, where, reason):
    if where is None:
        return f'cannot export {name} to ONNX: {reason}'
    module, cls, why = where
    why = why.split(', scope:')[0] + ("'" if ', scope:' in why and why.count("'") % 2 else '')
    return f"cannot export {name} to ONNX: module '{module}' ({cls}): {why}"


def _add_metadata(path, items):
    import onnx
    model = onnx.load(path)
    for key, value in items.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f'hinet_plugins.{key}', str(value)
    onnx.save(model, path)
