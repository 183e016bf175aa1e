"""Export a registered restoration network to ONNX (dynamic batch, height and width), checked with onnxruntime.

    python scripts/export.py -opt options/test/HINet-SIDD.yml -o hinet_sidd.onnx
    python scripts/export.py --arch MPRNet --arch-opt n_feat=40 --checkpoint net_g.pth -o mprnet.onnx \\
        [--tlc --train-size 256 [--base-size 384]] [--size H W] [--check-size H W --check-size H W] [--opset 17]

The model comes from an option file, ``--arch/--arch-opt/--checkpoint`` or ``--checkpoint`` alone (architecture
read from the weights) exactly as in ``scripts/inference.py`` (release checkpoint formats, ``--param-key``).
The graph takes an N x C x H x W float32 image in [0, 1] and returns the last stage's output; the padding to the network's multiple is inside the graph. After the export, onnxruntime
runs the file on two sizes different from the export size and the script prints max |ONNX - PyTorch| for each;
above ``--atol`` (1e-4) nothing is written and the module responsible is named. With ``--tlc`` the graph is valid
for inputs at least the printed minimum size (about ``--base-size``) in both dimensions.
See ``hinet_plugins.export`` for the details.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import hinet_plugins  # noqa: E402,F401  (compat + registration)
from hinet_plugins.errors import ConfigError  # noqa: E402
from hinet_plugins.export import ATOL, OPSET, export_onnx  # noqa: E402
from hinet_plugins.cli import ArgumentParser, add_model_arguments  # noqa: E402
from hinet_plugins.restore import load_network, parse_key_values  # noqa: E402


def build_parser():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-o', '--output', required=True, help='ONNX file to write')
    add_model_arguments(parser, 'export the TLC-converted network')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), help='trace size (default: odd, automatic)')
    parser.add_argument('--check-size', type=int, nargs=2, action='append', metavar=('H', 'W'),
                        help='onnxruntime check size (repeatable; default: two sizes around the trace size)')
    parser.add_argument('--opset', type=int, default=OPSET, help=f'ONNX opset (default {OPSET})')
    parser.add_argument('--atol', type=float, default=ATOL, help=f'largest accepted |ONNX - PyTorch| ({ATOL:g})')
    return parser


def check_sizes(args):
    for flag, sizes in (('--size', [args.size] if args.size else []), ('--check-size', args.check_size or [])):
        for h, w in sizes:
            if h <= 0 or w <= 0:
                raise ConfigError(f'{flag}: sizes must be positive, got {h} {w}')
    if args.size and any(tuple(s) == tuple(args.size) for s in args.check_size or []):
        raise ConfigError('--check-size: the check sizes must differ from the export size (--size)')
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise ConfigError(f"-o {args.output}: the folder '{folder}' does not exist")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        check_sizes(args)
        tlc = {'train_size': args.train_size, 'base_size': args.base_size} if args.tlc else None
        net, desc = load_network(args.opt, args.arch, parse_key_values(args.arch_opt), args.checkpoint,
                                 args.param_key, tlc)
        report = export_onnx(net, args.output, size=args.size, check_sizes=args.check_size, opset=args.opset,
                             atol=args.atol, metadata={'network': desc})
    except ConfigError as err:
        print(f'hinet_plugins: error: {err}', file=sys.stderr, flush=True)
        sys.exit(2)
    h, w = report['size']
    print(f'{desc} -> {args.output} (opset {args.opset}; dynamic batch, height, width; traced at {h}x{w})')
    checks = ', '.join(f'{s[0]}x{s[1]}: {d:.2e}' for s, d in report['diffs'].items())
    print(f'onnxruntime check, max |ONNX - PyTorch| (fp32, tolerance {args.atol:g}): {checks}')
    if report['min_input_size']:
        side = report['min_input_size']
        print(f'TLC graph: valid for inputs of at least {side}x{side}')
    return 0


if __name__ == '__main__':
    main()
