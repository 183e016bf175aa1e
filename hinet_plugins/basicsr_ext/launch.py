"""Entry points behind ``basicsr/train.py``, ``basicsr/test.py`` and ``python -m hinet_plugins.train|test``.

They hand over to basicsr's own ``train_pipeline`` / ``test_pipeline`` (same command line: ``-opt``,
``--launcher``, ``--auto_resume``, ``--debug``, ``--force_yml``; also the ``--local-rank`` of today's
``torch.distributed.launch``) after registering this package. A user mistake ends as one line
``hinet_plugins: error: ...`` (with ``[rank N]`` on ranks other than 0) and exit code 2. After training, a PNG of
the training curves is written next to the log.

The one hook (``install``): basicsr's ``parse_options`` (a module global of both pipelines) becomes ours:
``run_options.parse_options`` (safe reading, ``--force_yml`` walked, plain run names, one root), then
``options_check.check_options`` and ``preflight`` on the options basicsr will use. All of it runs before basicsr
creates, renames or writes anything under ``experiments/``, ``results/`` or ``tb_logger/``, so a rejected command
changes nothing on disk. Keep as long as the checks are wanted (upstream has none).
"""
import os
import sys
from typing import Optional

from ..errors import ConfigError, TrainingDivergedError, one_line
from ..utils.checkpoint import CheckpointWriteError
from . import compat, run_options
from .compat import _bsr_options, _bsr_test, _bsr_train
from .options_check import check_options
from .preflight import preflight


_parsed = {}  # the options of the current run, as parsed (for the curves written after training)


def parse_options(root_path: str, is_train: bool = True) -> tuple:
    """basicsr's ``parse_options(root_path, is_train)``, safe and checked (module docstring)."""
    opt, args = run_options.parse_options(root_path, is_train, sys.argv[1:], init_dist=compat.init_dist)
    error = None
    try:
        check_options(opt, args.opt)
        preflight(opt, args.opt)
    except ConfigError as err:
        error = err
    agree(opt, error)
    _parsed['opt'] = opt
    return opt, args


AGREED_OPTIONS = ('name', 'model_type', 'manual_seed', 'network_g', 'train', 'scale')


def agree(opt: dict, error: Optional[ConfigError]) -> None:
    """With several ranks, every rank learns whether any rank's checks failed or its options differ from rank
    0's (another file on another node), and then all stop with one line, instead of the others waiting for it."""
    if not opt.get('dist'):
        if error is not None:
            raise error
        return
    import json

    import torch.distributed as dist
    mine = json.dumps({k: opt.get(k) for k in AGREED_OPTIONS}, sort_keys=True, default=str)
    reports = [None] * opt['world_size']
    dist.all_gather_object(reports, (one_line(error) if error is not None else None, mine))
    if error is not None:
        raise error
    failed = [(rank, message) for rank, (message, _) in enumerate(reports) if message]
    if failed:
        raise ConfigError(f'rank {failed[0][0]} stopped: {failed[0][1]}')
    differ = [rank for rank, (_, theirs) in enumerate(reports) if theirs != reports[0][1]]
    if differ:
        keys = [k for k in AGREED_OPTIONS if json.loads(reports[differ[0]][1])[k] != json.loads(reports[0][1])[k]]
        raise ConfigError(f"rank {differ[0]}'s options differ from rank 0's in {', '.join(keys)}: every rank must "
                          'run the same option file and --force_yml')


def install() -> None:
    """Idempotent; ``basicsr_ext.install`` calls it."""
    for module in (_bsr_train, _bsr_test, _bsr_options):
        module.parse_options = parse_options


def run_root(argv: list, root_path: str) -> str:
    """The folder that holds ``experiments/``, ``results/``, ``tb_logger/``: ``path.root`` of the option file
    (after ``--force_yml``) when given, else ``root_path``. Errors are left to ``parse_options``."""
    try:
        args = run_options.command_line(argv)
        opt = run_options.apply_force_yml(run_options.load_yaml(args.opt), args.force_yml)
        return run_options.run_root(opt, root_path, args.opt)
    except ConfigError:  # reported by parse_options
        return root_path


# ---------------------------------------------------------------------------------------------- entry point
def _write_curves():
    from ..utils.curves import find_train_log, plot_training_curves
    exp_dir = _parsed.get('opt', {}).get('path', {}).get('experiments_root')
    if not exp_dir or not os.path.isdir(exp_dir):
        return
    try:
        png = plot_training_curves(find_train_log(exp_dir), os.path.join(exp_dir, 'training_curves.png'))
        print(f'Training curves: {png}', flush=True)
    except Exception as err:  # noqa: BLE001  (a plot must never fail a finished training)
        print(f'(training curves not written: {err})', flush=True)


def _rank_prefix():
    rank = int(os.environ.get('RANK', '0') or 0)
    return f'[rank {rank}] ' if rank else ''


def run(mode: str, root_path: str) -> None:
    """``mode`` is 'train' or 'test'; ``root_path`` holds experiments/, results/ and tb_logger/ unless the
    option file's ``path.root`` says otherwise."""
    try:
        install()
        root_path = run_root(sys.argv[1:], root_path)
        if mode == 'train':
            _bsr_train.train_pipeline(root_path)
            if int(os.environ.get('RANK', '0')) == 0:
                _write_curves()
        else:
            _bsr_test.test_pipeline(root_path)
    except (ConfigError, TrainingDivergedError, CheckpointWriteError) as err:
        print(f'hinet_plugins: error: {_rank_prefix()}{one_line(err)}', file=sys.stderr, flush=True)
        sys.exit(2)
