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
The measuring is ``hinet_plugins.utils.complexity``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hinet_plugins  # noqa: E402,F401  (compat + registration)
from hinet_plugins.cli import ArgumentParser  # noqa: E402
from hinet_plugins.utils.complexity import complexity_table  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(prog='complexity', description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', help='measure only presets whose label contains this (case-insensitive)')
    parser.add_argument('--markdown', action='store_true', help='markdown table (default: aligned text)')
    parser.add_argument('--size', type=int, default=256, help='input height/width (default 256)')
    parser.add_argument('--no-macs', action='store_true', help='parameters only (fast)')
    args = parser.parse_args(argv)
    try:
        table = complexity_table(args.only, args.markdown, args.size, macs=not args.no_macs)
    except ValueError as err:  # ConfigError included: a bad --only or --size
        print(f'hinet_plugins: error: complexity: {err}', file=sys.stderr, flush=True)
        sys.exit(2)
    print(table)
    return table


if __name__ == '__main__':
    main()
