"""Score every restored image of a folder against the ground truth of the same name with basicsr's PSNR and SSIM.

    python scripts/evaluate.py --restored results/HINet-SIDD-test/visualization/SIDD_val --gt DIR \\
        [--y] [--crop-border N] [--suffix _HINet-SIDD-test] [--csv metrics.csv]

``--y`` scores the Y channel (BT.601, basicsr's ``test_y_channel``), ``--crop-border N`` leaves N pixels out on each
side. basicsr's test names its images ``<name>_<suffix>.png``; the suffix is found and stripped (``--suffix`` sets
it). Writes a CSV (one line per image and the mean; default ``metrics.csv`` in the restored folder) and prints a
markdown table. The numbers equal basicsr's validation on the same images (see ``hinet_plugins/restore/evaluation.py``).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's package first

import hinet_plugins  # noqa: E402,F401  (compat before basicsr)
from hinet_plugins.cli import ArgumentParser  # noqa: E402
from hinet_plugins.errors import ConfigError  # noqa: E402
from hinet_plugins.restore import evaluation  # noqa: E402


def build_parser():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--restored', required=True, help='folder of restored images')
    parser.add_argument('--gt', required=True, help='folder of ground-truth images (same stems)')
    parser.add_argument('--y', action='store_true', help='score the Y channel only')
    parser.add_argument('--crop-border', type=int, default=0, help='pixels left out on each side')
    parser.add_argument('--suffix', help="suffix of the restored names to strip (default: found, e.g. '_name')")
    parser.add_argument('--csv', help='output CSV (default: RESTORED/metrics.csv)')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        rows, suffix = evaluation.evaluate_folders(args.restored, args.gt, y=args.y, crop_border=args.crop_border,
                                                   suffix=args.suffix)
        path = evaluation.write_csv(rows, args.csv or os.path.join(args.restored, 'metrics.csv'))
    except ConfigError as err:
        print(f'hinet_plugins: error: {err}', file=sys.stderr, flush=True)
        sys.exit(2)
    if suffix:
        print(f"(restored names paired with the ground truth after stripping '{suffix}')")
    print(evaluation.markdown_table(rows, y=args.y, crop_border=args.crop_border))
    print(f'CSV: {path}')
    return rows


if __name__ == '__main__':
    main()
