"""Training curves: read basicsr's text log or TensorBoard events, plot to PNG (losses and validation metrics vs
iteration). Used after every training by the launcher and by ``scripts/plot_curves.py``."""
import glob
import os
import re
from collections import defaultdict
from typing import Tuple

from ..errors import ConfigError

_ITER = re.compile(r'\[epoch:\s*\d+, iter:\s*([\d,]+), lr:\(([^)]*)\)\]')
_TERM = re.compile(r'\b([A-Za-z][\w]*):\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)')
_VAL_HEAD = re.compile(r'Validation (\S+)')
_VAL_METRIC = re.compile(r'#\s*(\S+):\s*(-?\d+(?:\.\d+)?)')


def parse_training_log(path: str) -> Tuple[dict, dict]:
    """Returns ({term: [(iter, value)]} of training losses, {dataset/metric: [(iter, value)]} of validation)."""
    train, val = defaultdict(list), defaultdict(list)
    last_iter, val_name = 0, None
    with open(path, errors='replace') as f:
        for line in f:
            m = _ITER.search(line)
            if m:
                last_iter = int(m.group(1).replace(',', ''))
                tail = line[m.end():]
                tail = tail.split(']', 2)[-1] if 'eta:' in tail else tail  # skip "[eta: .., time (data): ..]"
                for name, value in _TERM.findall(tail):
                    train[name].append((last_iter, float(value)))
                val_name = None
                continue
            m = _VAL_HEAD.search(line)
            if m:
                val_name = m.group(1)
                continue
            if val_name:
                m = _VAL_METRIC.search(line)
                if m:
                    val[f'{val_name}/{m.group(1)}'].append((last_iter, float(m.group(2))))
                else:
                    val_name = None
    return dict(train), dict(val)


def find_train_log(experiment_dir: str) -> str:
    logs = sorted(glob.glob(os.path.join(experiment_dir, 'train_*.log')), key=os.path.getmtime)
    if not logs:
        raise FileNotFoundError(f"no train_*.log in '{experiment_dir}'")
    return logs[-1]


def plot_training_curves(log_path: str, out_png: str) -> str:
    """Write a PNG with one panel for training losses and one per validation metric; returns the path."""
    train, val = parse_training_log(log_path)
    return plot_series(train, val, out_png)


def plot_series(train: dict, val: dict, out_png: str) -> str:
    """The PNG of ``plot_training_curves`` from already-read series ({name: [(iter, value)]}, e.g. TensorBoard)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = 1 + len(val)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    for name, points in train.items():
        if points:
            ax.plot(*zip(*points), label=name)
    ax.set_title('training loss')
    ax.set_xlabel('iteration')
    if train:
        ax.legend(fontsize=8)
    for ax, (name, points) in zip(axes[0][1:], val.items()):
        ax.plot(*zip(*points), marker='o')
        ax.set_title(f'validation {name}')
        ax.set_xlabel('iteration')
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def read_tensorboard(folder: str) -> Tuple[dict, dict]:
    """({loss: [(iter, value)]}, {dataset/metric: [(iter, value)]}) from the event files under ``folder``: the
    scalars basicsr writes (``losses/<name>``, ``metrics/<dataset>/<metric>``)."""
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


def load_series(path: str) -> Tuple[dict, dict, str, str]:
    """(train, val, source, default PNG path) for a ``train_*.log``, an experiment folder (its newest log) or a
    folder of TensorBoard events; ConfigError naming ``path`` when it holds none or no values."""
    if os.path.isdir(path):
        if glob.glob(os.path.join(path, 'train_*.log')):
            path = find_train_log(path)
        elif glob.glob(os.path.join(path, '**', 'events.out.tfevents.*'), recursive=True):
            train, val = read_tensorboard(path)
            if not train and not val:
                raise ConfigError(f"no training or validation values found in '{path}'")
            return train, val, path, os.path.join(path, 'training_curves.png')
        else:
            raise ConfigError(f"'{path}' holds neither train_*.log nor TensorBoard event files")
    elif not os.path.isfile(path):
        raise ConfigError(f"'{path}' does not exist (expected a train_*.log, an experiment folder or a "
                          'TensorBoard log folder)')
    train, val = parse_training_log(path)
    if not train and not val:
        raise ConfigError(f"no training or validation values found in '{path}'")
    return train, val, path, os.path.join(os.path.dirname(os.path.abspath(path)), 'training_curves.png')
