"""Entry points behind ``basicsr/train.py``, ``basicsr/test.py`` and ``python -m hinet_plugins.train|test``.

They hand over to basicsr's own ``train_pipeline`` / ``test_pipeline`` (same CLI: ``-opt``, ``--launcher``,
``--auto_resume``, ``--debug``, ``--force_yml``; also the ``--local-rank`` of today's ``torch.distributed.launch``)
after registering this package. A user mistake ends as one line ``hinet_plugins: error: ...`` with exit code 2.
After training, a PNG of the training curves is written next to the log.

The launcher hooks, all installed here (the stack adaptations of basicsr are in ``compat``, the exact resume in
``resume``); each says what it changes and when to drop it:

1. ``local_rank_spelling`` -- ``python -m torch.distributed.launch`` (the HINet/DRCNet READMEs' command) passes
   ``--local-rank=N`` since torch 2.0; basicsr 1.4.2's parser only knows ``--local_rank`` and stops with
   "unrecognized arguments". The dashed spelling is rewritten to the underscored one in ``sys.argv`` (the value is
   not used: the rank comes from ``LOCAL_RANK``, see ``compat.init_dist``). Drop when basicsr accepts both.
2. ``checked_parse_options`` -- wraps basicsr's ``parse_options`` (looked up as a module global by both
   pipelines). Before upstream parses, the option file is read and ``--force_yml`` applied to it exactly as
   upstream will (``effective_options``: unknown keys and values of the wrong type are errors here, upstream would
   raise ``KeyError`` from its ``exec`` or a ``TypeError`` much later), and ``num_gpu`` is checked on that result
   (``--force_yml num_gpu=0`` counts). After upstream parses (``--debug``, ``--auto_resume``, ``auto`` GPUs, the
   paths), ``options_check.check_options`` checks the options basicsr will use and ``preflight`` builds what the
   run will build (network, losses, checkpoint, optimizer, scheduler, resume state, input channels). All of it
   runs before basicsr creates, renames or writes anything under ``experiments/``, ``results/`` or
   ``tb_logger/``, so a rejected command changes nothing on disk. Keep as long as the checks are wanted
   (upstream has none).
"""
import argparse
import os
import sys

import hinet_plugins  # noqa: F401  (compat + registration; must precede basicsr.train)
from hinet_plugins.compat import _bsr_options, _bsr_test, _bsr_train
from hinet_plugins.errors import ConfigError, TrainingDivergedError, one_line
from hinet_plugins.options_check import check_num_gpu, check_options, load_yaml
from hinet_plugins.preflight import preflight
from hinet_plugins.utils.checkpoint import CheckpointWriteError


# ---------------------------------------------------------------------------------------------- hook 1
def local_rank_spelling(argv):
    """``--local-rank=N`` / ``--local-rank N`` -> ``--local_rank=N`` / ``--local_rank N`` (a new list)."""
    out = []
    for arg in argv:
        if arg == '--local-rank' or arg.startswith('--local-rank='):
            arg = '--local_rank' + arg[len('--local-rank'):]
        out.append(arg)
    return out


# ---------------------------------------------------------------------------------------------- hook 2
def _cli_args(argv):
    """The two flags of basicsr's parser that change the options (``-opt``, ``--force_yml``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', '--opt', dest='opt')
    parser.add_argument('--force_yml', nargs='+', default=None)
    return parser.parse_known_args(argv)[0]


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def apply_force_yml(opt, entries):
    """Apply ``--force_yml`` entries (``a:b:c=value``) to ``opt`` in place, as basicsr's ``parse_options`` does
    (same value parsing; a new last key may be created, as upstream allows), but every key on the way must exist,
    and a value must keep the kind of the value it replaces (number, true/false, list) -> ConfigError."""
    for entry in entries or []:
        if entry.count('=') != 1:
            raise ConfigError(f"--force_yml '{entry}': expected one 'key:key=value' (exactly one '=')")
        keys, raw = (part.strip() for part in entry.split('='))
        keys = keys.split(':')
        node, walked = opt, []
        for key in keys[:-1]:
            walked.append(key)
            if not isinstance(node, dict) or key not in node or not isinstance(node[key], dict):
                where = ':'.join(walked[:-1]) or 'the option file'
                choices = sorted(map(str, node)) if isinstance(node, dict) else []
                raise ConfigError(f"--force_yml '{entry}': {where} has no section '{key}' (it has: "
                                  f"{', '.join(choices) or 'nothing'})")
            node = node[key]
        try:
            value = _bsr_options._postprocess_yml_value(raw)
        except Exception as err:  # noqa: BLE001  (upstream eval()s lists)
            raise ConfigError(f"--force_yml '{entry}': value '{raw}' cannot be read ({err})") from None
        old = node.get(keys[-1])
        kinds = (('a number', _is_number), ('true or false', lambda v: isinstance(v, bool)),
                 ('a list', lambda v: isinstance(v, (list, tuple))))
        for kind, test in kinds:
            if old is not None and test(old) and not test(value):
                raise ConfigError(f"--force_yml '{entry}': {':'.join(keys)} must be {kind} like the option "
                                  f"file's {old!r}, got {value!r}")
        node[keys[-1]] = value
    return opt


def effective_options(argv):
    """(option file path, the raw options with ``--force_yml`` applied) -- what basicsr will read."""
    args = _cli_args(argv)
    if args.opt is None:
        return None, None
    return args.opt, apply_force_yml(load_yaml(args.opt), args.force_yml)


_parsed = {}  # the options of the current run, as basicsr parsed them (for the curves written after training)


def checked_parse_options(upstream):
    def parse_options(root_path, is_train=True):
        path, raw = effective_options(sys.argv[1:])
        if raw is not None:
            check_num_gpu(raw, path)
        opt, args = upstream(root_path, is_train)
        check_options(opt, args.opt)
        preflight(opt, args.opt)
        _parsed['opt'] = opt
        return opt, args
    parse_options.upstream = upstream
    return parse_options


def _install_hooks():
    sys.argv[1:] = local_rank_spelling(sys.argv[1:])
    for module in (_bsr_train, _bsr_test):
        if not hasattr(module.parse_options, 'upstream'):
            module.parse_options = checked_parse_options(module.parse_options)


# ---------------------------------------------------------------------------------------------- entry point
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
    try:
        _install_hooks()
        if mode == 'train':
            _bsr_train.train_pipeline(root_path)
            if int(os.environ.get('RANK', '0')) == 0:
                _write_curves()
        else:
            _bsr_test.test_pipeline(root_path)
    except (ConfigError, TrainingDivergedError, CheckpointWriteError) as err:
        print(f'hinet_plugins: error: {one_line(err)}', file=sys.stderr, flush=True)
        sys.exit(2)
