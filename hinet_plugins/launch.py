"""Entry points behind ``basicsr/train.py``, ``basicsr/test.py`` and ``python -m hinet_plugins.train|test``.

They hand over to basicsr's own ``train_pipeline`` / ``test_pipeline`` (same CLI: ``-opt``, ``--launcher``,
``--auto_resume``, ``--debug``, ``--force_yml``) after registering this package, with two additions:
the option file is checked first (clear one-line errors, see ``options_check``), and after training a PNG of the
training curves is written next to the log (TensorBoard events are written by basicsr when
``logger.use_tb_logger`` is on).
"""
import os
import sys

import hinet_plugins  # noqa: F401  (compat + registration; must precede basicsr.train)
from hinet_plugins.compat import _bsr_test, _bsr_train
from hinet_plugins.errors import ConfigError, TrainingDivergedError
from hinet_plugins.options_check import check_num_gpu, check_options, load_yaml
from hinet_plugins.utils.checkpoint import CheckpointWriteError


def _option_path(argv):
    for flag in ('-opt', '--opt'):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            return argv[argv.index(flag) + 1]
    return None


_parsed = {}  # the options of the current run, as basicsr parsed them (for the curves written after training)


def _checked_parse_options(upstream):
    def parse_options(root_path, is_train=True):
        opt, args = upstream(root_path, is_train)
        check_options(opt, args.opt)
        _parsed['opt'] = opt
        return opt, args
    parse_options.upstream = upstream
    return parse_options


def _install_option_checks():
    for module in (_bsr_train, _bsr_test):
        if not hasattr(module.parse_options, 'upstream'):
            module.parse_options = _checked_parse_options(module.parse_options)


def _write_curves():
    from hinet_plugins.utils.curves import find_train_log, plot_training_curves
    exp_dir = _parsed.get('opt', {}).get('path', {}).get('experiments_root')
    if not exp_dir or not os.path.isdir(exp_dir):
        return
    try:
        png = plot_training_curves(find_train_log(exp_dir), os.path.join(exp_dir, 'training_curves.png'))
        print(f'Training curves: {png}', flush=True)
    except Exception as err:  # noqa: BLE001  (a plot must never fail a finished training)
        print(f'(training curves not written: {err})', flush=True)


def run(mode, root_path):
    """``mode`` is 'train' or 'test'; ``root_path`` holds experiments/, results/ and tb_logger/."""
    opt_path = _option_path(sys.argv)
    try:
        if opt_path is not None:
            check_num_gpu(load_yaml(opt_path), opt_path)
        _install_option_checks()
        if mode == 'train':
            _bsr_train.train_pipeline(root_path)
            if int(os.environ.get('RANK', '0')) == 0:
                _write_curves()
        else:
            _bsr_test.test_pipeline(root_path)
    except (ConfigError, TrainingDivergedError, CheckpointWriteError) as err:
        print(f'hinet_plugins: error: {err}', file=sys.stderr, flush=True)
        sys.exit(2)
