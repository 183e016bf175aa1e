"""Training curves to PNG: loss and validation metrics (PSNR, SSIM, ...) vs iteration.

    python scripts/plot_curves.py experiments/HINet-SIDD                 # newest train_*.log of the experiment
    python scripts/plot_curves.py experiments/HINet-SIDD/train_x.log -o curves.png
    python scripts/plot_curves.py tb_logger/HINet-SIDD                   # TensorBoard events (use_tb_logger)

Reads basicsr's text log or its TensorBoard scalars (``hinet_plugins.utils.curves``). Default output:
``training_curves.png`` next to the log / in the events folder. Prints one line per series.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's package first

from hinet_plugins.cli import ArgumentParser  # noqa: E402
from hinet_plugins.errors import ConfigError  # noqa: E402
from hinet_plugins.utils.curves import load_series, plot_series  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(prog='plot_curves', description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('path', help='train_*.log, an experiment folder, or a TensorBoard log folder')
    parser.add_argument('-o', '--output', help='PNG to write (default: training_curves.png beside the source)')
    args = parser.parse_args(argv)
    try:
        train, val, _, default_png = load_series(args.path)
    except ConfigError as err:
        print(f'hinet_plugins: error: plot_curves: {err}', file=sys.stderr, flush=True)
        sys.exit(2)
    for kind, series in (('train', train), ('val', val)):
        for name, points in series.items():
            print(f'{kind} {name}: {len(points)} points, last {points[-1][1]:.4g} at iter {points[-1][0]}')
    png = plot_series(train, val, args.output or default_png)
    print(f'wrote {png}')
    return png


if __name__ == '__main__':
    main()
