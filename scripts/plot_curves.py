"""Training curves to PNG: loss and validation metrics (PSNR, SSIM, ...) vs iteration.

    python scripts/plot_curves.py experiments/HINet-SIDD                 # newest train_*.log of the experiment
    python scripts/plot_curves.py experiments/HINet-SIDD/train_x.log -o curves.png
    python scripts/plot_curves.py tb_logger/HINet-SIDD                   # TensorBoard events (use_tb_logger)

Reads the text log that basicsr's logger writes (``hinet_plugins.utils.curves``) or, when given a folder of
TensorBoard event files, the scalars basicsr writes there (``losses/<name>``, ``metrics/<dataset>/<metric>``).
Default output: ``training_curves.png`` next to the log / in the events folder. Prints one line per series.
"""
import argparse
import glob
import os
import sys
from collections import defaultdict

from hinet_plugins.utils.curves import find_train_log, parse_training_log, plot_series


def read_tensorboard(folder):
    """({loss: [(iter, value)]}, {dataset/metric: [(iter, value)]}) from the event files under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train, val = defaultdict(list), defaultdict(list)
    for events in sorted(glob.glob(os.path.join(folder, '**', 'events.out.tfevents.*'), recursive=True)):
        acc = EventAccumulator(events, size_guidance={'scalars': 0})
        acc.Reload()
        for tag in acc.Tags().get('scalars', []):
            points = [(e.step, e.value) for e in acc.Scalars(tag)]
            if tag.startswith('metrics/'):
                val[tag[len('metrics/'):]] += points
            else:
                train[tag.split('/', 1)[-1]] += points
    return ({k: sorted(v) for k, v in train.items()}, {k: sorted(v) for k, v in val.items()})


def load_series(path):
    """(train, val, source file or folder, default PNG path) for a log file, an experiment dir or an events dir."""
    if os.path.isdir(path):
        logs = glob.glob(os.path.join(path, 'train_*.log'))
        if logs:
            path = find_train_log(path)
        elif glob.glob(os.path.join(path, '**', 'events.out.tfevents.*'), recursive=True):
            train, val = read_tensorboard(path)
            return train, val, path, os.path.join(path, 'training_curves.png')
        else:
            raise FileNotFoundError(f"'{path}' holds neither train_*.log nor TensorBoard event files")
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"'{path}' does not exist")
    train, val = parse_training_log(path)
    return train, val, path, os.path.join(os.path.dirname(os.path.abspath(path)), 'training_curves.png')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('path', help='train_*.log, an experiment folder, or a TensorBoard log folder')
    parser.add_argument('-o', '--output', help='PNG to write (default: training_curves.png beside the source)')
    args = parser.parse_args(argv)
    try:
        train, val, source, default_png = load_series(args.path)
    except FileNotFoundError as err:
        print(f'plot_curves: error: {err}', file=sys.stderr)
        sys.exit(2)
    if not train and not val:
        print(f"plot_curves: error: no training or validation values found in '{source}'", file=sys.stderr)
        sys.exit(2)
    for kind, series in (('train', train), ('val', val)):
        for name, points in series.items():
            print(f'{kind} {name}: {len(points)} points, last {points[-1][1]:.4g} at iter {points[-1][0]}')
    png = plot_series(train, val, args.output or default_png)
    print(f'wrote {png}')
    return png


if __name__ == '__main__':
    main()
