"""The user's own image pairs -> training and validation LMDBs (``scripts/prepare_data.py paired``).

Two flat folders, one of ground-truth (clean) images and one of degraded inputs, are paired by file name (the stem:
``0001.png`` pairs with ``0001.jpg``); every name must have its partner. The pairs go through the same checks and
the same all-or-nothing writer as the official datasets (``prepare.run_jobs``).

Outputs, under ``<root>/<name>/`` (default root ``datasets``): ``train/{gt,lq}.lmdb``, crops of ``crop_size``
every ``step`` (the SIDD recipe's 512/384 by default: each read of a 256 training patch stays cheap; 0: whole
images), and ``val/{gt,lq}.lmdb``, whole images from ``val_gt``/``val_lq`` or ``val_count`` pairs held out of the
training folders, spread over the sorted names so they do not all come from one scene (``held_out``; default 5 %
of the pairs, 1 to 20; ``val_count=0``: none). ``options/train/Custom-HINet.yml`` reads those of ``--name Custom``.
Images are stored as basicsr's LMDB reader decodes them (``cv2.IMREAD_COLOR``): 8-bit, 3 channels (gray
replicated, alpha dropped, 16-bit reduced to 8).
"""
import os
import re
from typing import Dict, List, Optional, Tuple

from ..errors import ConfigError
from .prepare import Job, Problems, is_output_dir, pair_folders, require_dir, run_jobs

NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')


def output_paths(root: str, name: str) -> Dict[str, Tuple[str, str]]:
    """{'train': (gt, lq), 'val': (gt, lq)} LMDB paths of dataset ``name``."""
    base = os.path.join(root, name)
    return {split: (os.path.join(base, split, 'gt.lmdb'), os.path.join(base, split, 'lq.lmdb'))
            for split in ('train', 'val')}


def default_val_count(n_pairs: int) -> int:
    return min(20, max(1, round(0.05 * n_pairs)))


def held_out(n_pairs: int, count: int) -> List[int]:
    """Indices of ``count`` pairs spread evenly over ``n_pairs`` sorted pairs."""
    return sorted({int((i + 0.5) * n_pairs / count) for i in range(count)})


def _check_arguments(gt_dir, lq_dir, name, crop_size, step, val_gt, val_lq, val_count):
    if not NAME.match(name or ''):
        raise ConfigError(f"--name must be a folder name (letters, digits, '_', '-', '.'), got {name!r}")
    if crop_size < 0 or (crop_size and not 0 < step <= crop_size):
        raise ConfigError(f'--crop must be 0 (whole images) or positive and --step in 1..--crop; got --crop '
                          f'{crop_size} --step {step}')
    if (val_gt is None) != (val_lq is None):
        raise ConfigError('--val-gt and --val-lq go together (a validation folder of each kind)')
    if val_gt is not None and val_count is not None:
        raise ConfigError('--val-count holds pairs out of --gt/--lq; it cannot be combined with --val-gt/--val-lq')
    if val_count is not None and val_count < 0:
        raise ConfigError(f'--val-count must be 0 or more, got {val_count}')
    dirs = [('--gt', gt_dir), ('--lq', lq_dir)] + ([('--val-gt', val_gt), ('--val-lq', val_lq)] if val_gt else [])
    for flag, path in dirs:
        if not os.path.isdir(path):
            raise ConfigError(f"{flag}: folder '{path}' does not exist")
        if is_output_dir(path):
            raise ConfigError(f"{flag}: '{path}' is an LMDB written by prepare_data, not a folder of images")
    for (flag_a, a), (flag_b, b) in zip(dirs[0::2], dirs[1::2]):
        if os.path.samefile(a, b):
            raise ConfigError(f"{flag_a} and {flag_b} are the same folder '{a}'")


def prepare_paired(gt_dir: str, lq_dir: str, name: str, root: str = 'datasets', crop_size: int = 512, step: int = 384,
                   val_gt: Optional[str] = None, val_lq: Optional[str] = None, val_count: Optional[int] = None,
                   force: bool = False, progress: bool = True) -> Dict[str, str]:
    """Check, then write the LMDBs of the module docstring. Returns {job name: 'written' | 'skipped'}."""
    _check_arguments(gt_dir, lq_dir, name, crop_size, step, val_gt, val_lq, val_count)
    problems, outs = Problems(name), output_paths(root, name)
    pairs = pair_folders(gt_dir, lq_dir, problems)
    val_pairs = []
    if val_gt is not None:
        if all([require_dir(val_gt, problems), require_dir(val_lq, problems)]):
            val_pairs = pair_folders(val_gt, val_lq, problems)
        train_keys = {p.key for p in pairs}
        clash = sorted(p.key for p in val_pairs if p.key in train_keys)
        if clash:
            problems.add(f'{len(clash)} validation name(s) are also training names (the same image in both sets?): '
                         f'{clash[:5]}')
    elif pairs:
        count = default_val_count(len(pairs)) if val_count is None else val_count
        if count >= len(pairs):
            problems.add(f'--val-count {count} would leave no training pair ({len(pairs)} pair(s) found); give '
                         '--val-gt/--val-lq, or --val-count 0 for no validation set')
        elif count:
            chosen = set(held_out(len(pairs), count))
            val_pairs = [p for i, p in enumerate(pairs) if i in chosen]
            pairs = [p for i, p in enumerate(pairs) if i not in chosen]
    jobs = [Job(f'{name} train', *outs['train'], pairs, crop=(crop_size, step) if crop_size else None)]
    if val_pairs or val_gt is not None:
        jobs.append(Job(f'{name} val', *outs['val'], val_pairs))
    return run_jobs(jobs, problems, force, progress)
