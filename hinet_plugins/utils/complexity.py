"""Parameters and MACs of every architecture preset, beside the papers' figures (``scripts/complexity.py``).

The presets are every described network's configurations (``hinet_plugins.archs.specs()``, ``ArchSpec.configs``);
``benchmarks/throughput.py`` reads the same list through :func:`collect_presets`. Params and MACs come from
mmengine's ``get_model_complexity_info`` (one input tensor; a multiply-add is one MAC). Two MAC columns, because
counters disagree on transposed convolutions: mmengine (and fvcore) charge Cin*Cout*k*k per *input* pixel, thop
charges it per *output* pixel (s^2 times more for stride s); most papers' figures (HINet's Table 4) follow thop.
The "paper conv." column is mmengine's total plus that extra for every transposed conv, measured with forward
hooks during mmengine's own trace; a reference counted with ptflops (``macs_counter``, Restormer) is compared
with mmengine minus the transposed attention's matrix products, which ptflops leaves out.
"""
import sys
import time
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from .. import archs
from ..archs.blocks import TransposedAttention
from ..errors import ConfigError
from .nets import input_channels

Preset = Tuple[str, dict]  # (network name, {'label', 'opt', 'ref_params', 'ref_macs_g', 'note', ...})

FOOTNOTE = ('MACs: multiply-accumulates at 1x3x{size}x{size}, mmengine `get_model_complexity_info`. "paper conv." '
            'is the counting behind the reference figure: by default thop\'s, which charges every stride-s '
            "transposed conv s^2 times over (per output instead of per input pixel), as in the HINet paper's "
            'Table 4 (mmengine gives HINet 157.64 G (1x) / 39.56 G (0.5x), the thop convention 170.5 G / 42.8 G vs '
            "the paper's 170.71 G / 42.88 G); marked (ptflops) where the reference was counted with ptflops, which "
            "leaves out matrix products: mmengine minus the transposed attention's q k^T and attn v products "
            '(Restormer). Δ = ours vs the reference.')


def quiet_mmengine() -> None:
    """mmengine warns once per element-wise op it does not count (add, leaky_relu, ...): keep the table readable."""
    from mmengine.logging import MMLogger
    MMLogger.get_instance('hinet_complexity', log_level='ERROR')


def uncovered_archs(presets: List[Preset]) -> List[str]:
    """Architectures registered by this package that no preset measures (e.g. converted TLC variants)."""
    from basicsr.utils.registry import ARCH_REGISTRY
    covered = {p['opt']['type'] for _, p in presets}
    return sorted(name for name, cls in ARCH_REGISTRY
                  if cls.__module__.startswith('hinet_plugins') and name not in covered)


def collect_presets() -> List[Preset]:
    """[(network name, preset dict)] from every described network's configurations (``ArchSpec.configs``)."""
    return [(name, dict(label=c.label, opt=spec.options(c.kwargs), ref_params=c.params, ref_macs_g=c.macs_g,
                        note=c.note, macs_ref_counter=c.macs_counter))
            for name, spec in archs.specs().items() for c in spec.configs]


def build(opt: dict) -> nn.Module:
    from basicsr.archs import build_network
    return build_network(dict(opt))


def transposed_conv_extra(module: nn.Module, inp: tuple, out: torch.Tensor) -> int:
    """thop-style MACs minus mmengine's for one transposed conv call (per output vs per input pixel)."""
    x, y = inp[0], out
    per_pixel = module.in_channels // module.groups * module.out_channels
    for k in module.kernel_size:
        per_pixel *= k
    return x.shape[0] * per_pixel * (y[0, 0].numel() - x[0, 0].numel())


def measure(net: nn.Module, size: int = 256, macs: bool = True) -> dict:
    """{'params', 'macs', 'macs_thop'} for ``net`` on a 1x3xsize x size input (MACs None when ``macs`` is False)."""
    params = sum(p.numel() for p in net.parameters())
    if not macs:
        return {'params': params, 'macs': None, 'macs_thop': None, 'macs_ptflops': None}
    from mmengine.analysis import get_model_complexity_info
    count = {'extra': 0, 'calls': 0, 'products': 0}

    def on_transposed(mod, inp, out):
        count['extra'] += transposed_conv_extra(mod, inp, out)

    def on_attention(mod, inp, out):  # q k^T and attn v: N * heads * C_h^2 * H*W multiply-adds each
        q = inp[0]
        count['products'] += 2 * q.numel() * q.shape[2]

    def on_model(*_):
        count['calls'] += 1

    hooks = [m.register_forward_hook(on_transposed) for m in net.modules()
             if isinstance(m, nn.modules.conv._ConvTransposeNd)]
    hooks += [m.register_forward_hook(on_attention) for m in net.modules() if isinstance(m, TransposedAttention)]
    hooks.append(net.register_forward_hook(on_model))
    try:
        net.eval()
        in_chn = input_channels(net)
        with torch.no_grad():
            info = get_model_complexity_info(net, inputs=(torch.rand(1, in_chn, size, size),),
                                             show_table=False, show_arch=False)
    finally:
        for h in hooks:
            h.remove()
    assert info['params'] == params, (info['params'], params)
    calls = max(count['calls'], 1)  # mmengine traces once per analysis (FLOPs, activations)
    return {'params': params, 'macs': info['flops'], 'macs_thop': info['flops'] + count['extra'] / calls,
            'macs_ptflops': info['flops'] - count['products'] / calls}


def _rel(ours, ref):
    return f'{100.0 * (ours - ref) / ref:+.2f}%' if ours is not None and ref else '–'


def _fmt(value, scale, digits):
    return '–' if value is None else f'{value / scale:.{digits}f}'


HEADER = ('Model', 'Params (M)', 'Ref. params (M)', 'Δ params', 'MACs mmengine (G)', 'MACs paper conv. (G)',
          'Paper MACs (G)', 'Δ mmengine', 'Δ paper conv.', 'Reference')


def rows_for(presets: List[Preset], size: int = 256, macs: bool = True,
             log: Callable = print) -> List[Tuple[str, ...]]:
    """One table row per preset (each network built and measured); ``log`` gets one timing line per preset."""
    rows = []
    for module_name, p in presets:
        start = time.time()
        r = measure(build(p['opt']), size=size, macs=macs)
        ref_p, ref_m = p.get('ref_params'), p.get('ref_macs_g')
        counter = p.get('macs_ref_counter', 'thop')
        paper = r[f'macs_{counter}']
        rows.append((p['label'], _fmt(r['params'], 1e6, 3), _fmt(ref_p, 1e6, 3), _rel(r['params'], ref_p),
                     _fmt(r['macs'], 1e9, 2), _fmt(paper, 1e9, 2) + ('' if counter == 'thop' or paper is None
                                                                     else f' ({counter})'),
                     '–' if not ref_m else f'{ref_m:.2f}', _rel(r['macs'] and r['macs'] / 1e9, ref_m),
                     _rel(paper and paper / 1e9, ref_m), p.get('note', '')))
        log(f"  measured {p['label']} ({module_name}) in {time.time() - start:.1f} s", file=sys.stderr)
    return rows


def render(rows: List[Tuple[str, ...]], markdown: bool = True, size: int = 256) -> str:
    """The rows as a markdown table or aligned text, with the footnote on the MAC counting."""
    if markdown:
        lines = ['| ' + ' | '.join(HEADER) + ' |', '|' + '|'.join(['---'] + ['---:'] * 8 + ['---']) + '|']
        lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
        return '\n'.join(lines) + '\n\n' + FOOTNOTE.format(size=size)
    widths = [max(len(str(x)) for x in col) for col in zip(HEADER, *rows)]
    fmt = '  '.join('{:<%d}' % w for w in widths)
    return '\n'.join([fmt.format(*HEADER), fmt.format(*['-' * w for w in widths])] + [fmt.format(*r) for r in rows]) \
        + '\n\n' + FOOTNOTE.format(size=size)


def select(presets: List[Preset], only: Optional[str]) -> List[Preset]:
    """The presets whose label contains ``only`` (case-insensitive; all when ``only`` is empty)."""
    if not only:
        return presets
    chosen = [(m, p) for m, p in presets if only.lower() in p['label'].lower()]
    if not chosen:
        labels = ', '.join(p['label'] for _, p in presets)
        raise ConfigError(f"no preset label contains '{only}'. Labels: {labels}")
    return chosen


def complexity_table(only: Optional[str] = None, markdown: bool = False, size: int = 256, macs: bool = True) -> str:
    """The whole table of ``scripts/complexity.py``: the presets matching ``only`` measured at ``size``, and the
    registered architectures no preset covers (when every preset is measured). A bad ``only`` or ``size`` is a
    ``ConfigError``."""
    if size < 1:
        raise ConfigError(f'--size {size}: the input size must be a positive number of pixels')
    presets = select(collect_presets(), only)
    quiet_mmengine()
    table = render(rows_for(presets, size, macs), markdown, size)
    missing = uncovered_archs(collect_presets())
    if missing and not only:
        table += '\n\nRegistered architectures without a preset (not measured): ' + ', '.join(missing)
    return table
