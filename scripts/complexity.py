"""Parameters and MACs at 1x3x256x256 of every architecture preset, beside the papers' figures.

    python scripts/complexity.py [--markdown] [--only LABEL_SUBSTRING] [--size 256] [--no-macs]

Every network's description (``hinet_plugins.archs.specs()``, ``ArchSpec.configs``: label, keywords, reference
params, reference MACs in G, note) is measured. Params and MACs come from mmengine's
model-complexity analysis (``get_model_complexity_info``, one input tensor), which counts a multiply-add as one MAC,
charges normalisation layers ~5 MACs per element and ignores element-wise ops (add, activations, gating).

Why two MAC columns. A transposed convolution with a kxk kernel and stride s does Cin*Cout*k*k multiply-adds per
*input* pixel; mmengine (and fvcore) count exactly that. thop-style counters charge the same Cin*k*k per *output*
pixel and channel, as for a normal convolution, which is s^2 times more (4x for HINet's 2x2 stride-2 up-sampling).
The "thop convention" column is mmengine's total plus that extra for every transposed conv (measured with forward
hooks on the ``nn.ConvTranspose*d`` modules during mmengine's own trace). The HINet paper's Table 4 figures
(170.71 G for 1x, 42.88 G for 0.5x) follow the thop convention: mmengine gives 157.64 G / 39.56 G, the thop
convention 170.5 G / 42.8 G (the remaining ~0.1% is how each counter charges normalisation and activation layers).
"""
import argparse
import sys
import time

import torch
from torch import nn

import hinet_plugins  # noqa: F401  (compat + registration)
from hinet_plugins import archs
from hinet_plugins.archs.blocks import TransposedAttention

FOOTNOTE = ('MACs: multiply-accumulates at 1x3x{size}x{size}, mmengine `get_model_complexity_info`. "paper conv." '
            'is the counting behind the reference figure: by default thop\'s, which charges every stride-s '
            "transposed conv s^2 times over (per output instead of per input pixel), as in the HINet paper's "
            'Table 4 (mmengine gives HINet 157.64 G (1x) / 39.56 G (0.5x), the thop convention 170.5 G / 42.8 G vs '
            "the paper's 170.71 G / 42.88 G); marked (ptflops) where the reference was counted with ptflops, which "
            "leaves out matrix products: mmengine minus the transposed attention's q k^T and attn v products "
            '(Restormer). Δ = ours vs the reference.')


def quiet_mmengine():
    """mmengine warns once per element-wise op it does not count (add, leaky_relu, ...): keep the table readable."""
    from mmengine.logging import MMLogger
    MMLogger.get_instance('hinet_complexity', log_level='ERROR')


def uncovered_archs(presets):
    """Architectures registered by this package that no preset measures (e.g. converted TLC variants)."""
    from basicsr.utils.registry import ARCH_REGISTRY
    covered = {p['opt']['type'] for _, p in presets}
    return sorted(name for name, cls in ARCH_REGISTRY
                  if cls.__module__.startswith('hinet_plugins') and name not in covered)


def collect_presets():
    """[(network name, preset dict)] from every described network's configurations (``ArchSpec.configs``)."""
    return [(name, dict(label=c.label, opt=spec.options(c.kwargs), ref_params=c.params, ref_macs_g=c.macs_g,
                        note=c.note, macs_ref_counter=c.macs_counter))
            for name, spec in archs.specs().items() for c in spec.configs]


def build(opt):
    from basicsr.archs import build_network
    return build_network(dict(opt))


def transposed_conv_extra(module, inp, out):
    """thop-style MACs minus mmengine's for one transposed conv call (per output vs per input pixel)."""
    x, y = inp[0], out
    per_pixel = module.in_channels // module.groups * module.out_channels
    for k in module.kernel_size:
        per_pixel *= k
    return x.shape[0] * per_pixel * (y[0, 0].numel() - x[0, 0].numel())


def measure(net, size=256, macs=True):
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
        in_chn = next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels
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


def rows_for(presets, size=256, macs=True, log=print):
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


def render(rows, markdown=True, size=256):
    if markdown:
        lines = ['| ' + ' | '.join(HEADER) + ' |', '|' + '|'.join(['---'] + ['---:'] * 8 + ['---']) + '|']
        lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
        return '\n'.join(lines) + '\n\n' + FOOTNOTE.format(size=size)
    widths = [max(len(str(x)) for x in col) for col in zip(HEADER, *rows)]
    fmt = '  '.join('{:<%d}' % w for w in widths)
    return '\n'.join([fmt.format(*HEADER), fmt.format(*['-' * w for w in widths])] + [fmt.format(*r) for r in rows]) \
        + '\n\n' + FOOTNOTE.format(size=size)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', help='measure only presets whose label contains this (case-insensitive)')
    parser.add_argument('--markdown', action='store_true', help='markdown table (default: aligned text)')
    parser.add_argument('--size', type=int, default=256, help='input height/width (default 256)')
    parser.add_argument('--no-macs', action='store_true', help='parameters only (fast)')
    args = parser.parse_args(argv)
    presets = collect_presets()
    if args.only:
        presets = [(m, p) for m, p in presets if args.only.lower() in p['label'].lower()]
        if not presets:
            labels = ', '.join(p['label'] for _, p in collect_presets())
            print(f"complexity: error: no preset label contains '{args.only}'. Labels: {labels}", file=sys.stderr)
            sys.exit(2)
    quiet_mmengine()
    table = render(rows_for(presets, args.size, not args.no_macs), args.markdown, args.size)
    missing = uncovered_archs(collect_presets())
    if missing and not args.only:
        table += '\n\nRegistered architectures without a preset (not measured): ' + ', '.join(missing)
    print(table)
    return table


if __name__ == '__main__':
    main()
