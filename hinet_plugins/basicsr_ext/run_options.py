"""A run's options, read safely: our replacement of basicsr 1.4.2's ``parse_options`` (same command line, result).

Upstream reads the option file with PyYAML's full loader (a ``!!python/object`` tag runs code), ``eval()``s a
``--force_yml`` value that starts with ``[`` and ``exec()``s the keys, and joins ``name`` (``../x``, ``/abs``)
into the paths it then archives and creates. Here the file is ``yaml.safe_load``ed, ``--force_yml`` values are
YAML literals and keys are walked (``key+=value`` adds a key; any other unknown last key is an error naming the
closest one), ``name`` must be a plain folder name, and every folder basicsr will create from ``path`` must lie
inside the run's folder under the root. The root is ``path.root`` when given, else the launcher's root: so
``experiments/``, ``results/``, ``tb_logger/`` and ``--auto_resume`` never depend on the current folder.
Other upstream behaviour is unchanged (``--debug``, ``num_gpu: auto``, seeds, dataset phases, path layout).
Drop when upstream parses safely (no release does as of basicsr 1.4.2).
"""
import difflib
import os
import random
from typing import Optional

import torch
import yaml
from basicsr.utils import set_random_seed
from basicsr.utils.dist_util import get_dist_info

from ..cli import ArgumentParser
from ..errors import ConfigError
from .options_check import check_num_gpu

# path.* keys that basicsr's make_exp_dirs does not create (files, flags, and our root)
NOT_FOLDERS = ('strict_load', 'pretrain_network', 'resume', 'param_key')


def load_yaml(path: str) -> dict:
    """Read an option file; missing file / malformed YAML -> ConfigError naming the file (and line)."""
    if not os.path.isfile(path):
        raise ConfigError(f"option file '{path}' does not exist")
    try:
        with open(path) as f:
            opt = yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, 'problem_mark', None)
        where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark else ''
        problem = getattr(err, 'problem', None) or str(err)
        raise ConfigError(f"option file '{path}' is not valid YAML{where}: {problem}") from None
    if not isinstance(opt, dict):
        raise ConfigError(f"option file '{path}' must hold a mapping of options, got {type(opt).__name__}")
    return opt


def command_line(argv=None):
    parser = ArgumentParser(prog='train.py/test.py')
    parser.add_argument('-opt', type=str, required=True, help='Path to option YAML file.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true')
    parser.add_argument('--debug', action='store_true')
    # torch.distributed.launch passes --local-rank since torch 2.0 (the value is unused: LOCAL_RANK is read)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    parser.add_argument('--force_yml', nargs='+', default=None,
                        help='update options: a:b=value (value: a YAML literal); a:b+=value adds a new key b')
    return parser.parse_args(argv)


def yaml_value(raw, entry):
    """A ``--force_yml`` value as a YAML literal (never evaluated): numbers (also ``1e-4`` and ``-1``), true/false,
    ``~``/none, ``[1, 2]``, ``{a: 1}``, or the text itself."""
    if raw.lower() == 'none':
        return None
    try:
        value = yaml.safe_load(raw) if raw else ''
    except yaml.YAMLError as err:
        raise ConfigError(f"--force_yml '{entry}': value '{raw}' is not a YAML literal "
                          f"({getattr(err, 'problem', None) or err})") from None
    if isinstance(value, str):
        try:
            return float(raw) if raw.strip().lower() not in ('nan', 'inf', '-inf', 'infinity') else value
        except ValueError:  # '1e-4': YAML 1.1 wants a dot in floats
            return value
    return value


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


KINDS = (('a number', _is_number), ('true or false', lambda v: isinstance(v, bool)),
         ('a list', lambda v: isinstance(v, (list, tuple))), ('a section (mapping)', lambda v: isinstance(v, dict)))


def apply_force_yml(opt: dict, entries: Optional[list]) -> dict:
    """Apply ``--force_yml`` entries to ``opt`` in place. ``a:b:c=value`` replaces an existing ``c``, keeping its
    kind (number, true/false, list, section); ``a:b:c+=value`` adds ``c``, which must not exist yet. Every section on
    the way must exist. Mistakes are ConfigErrors naming the entry (and the closest existing key)."""
    for entry in entries or []:
        if entry.count('=') != 1:
            raise ConfigError(f"--force_yml '{entry}': expected one 'key:key=value' (exactly one '=')")
        keys, raw = (part.strip() for part in entry.split('='))
        add = keys.endswith('+')
        keys = keys[:-1].strip() if add else keys
        keys = keys.split(':')
        if not all(keys):
            raise ConfigError(f"--force_yml '{entry}': empty key in '{':'.join(keys)}'")
        node = opt
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node.get(key), dict):
                where = ':'.join(keys[:depth]) or 'the option file'
                raise ConfigError(f"--force_yml '{entry}': {where} has no section '{key}' (it has: "
                                  f"{', '.join(sorted(map(str, node))) or 'nothing'})")
            node = node[key]
        last, value = keys[-1], yaml_value(raw, entry)
        where = ':'.join(keys)
        if add and last in node:
            raise ConfigError(f"--force_yml '{entry}': {where} exists already; replace it with '{where}={raw}'")
        if not add and last not in node:
            close = difflib.get_close_matches(last, list(map(str, node)), n=1)
            hint = f"did you mean '{':'.join(keys[:-1] + close)}'? " if close else ''
            raise ConfigError(f"--force_yml '{entry}': the option file has no '{where}'; {hint}"
                              f"(to add a new key on purpose, write '{where}+={raw}')")
        old = node.get(last)
        for kind, test in KINDS:
            if old is not None and test(old) and not test(value):
                raise ConfigError(f"--force_yml '{entry}': {where} must be {kind} like the option file's "
                                  f'{old!r}, got {value!r}')
        node[last] = value
    return opt


def check_plain_name(value, key, path):
    """A folder name of one component: no separators, not '.'/'..', not absolute, not empty."""
    bad = (not isinstance(value, str) or not value.strip() or value in ('.', '..') or '\0' in value
           or any(sep in value for sep in ('/', '\\', os.sep, os.altsep or '/')) or os.path.isabs(value))
    if bad:
        raise ConfigError(f'{path}: {key} must be a plain folder name (no /, \\ or .., not absolute), got {value!r}')


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_run_paths(opt, path):
    """Every folder basicsr creates from ``opt['path']`` must lie inside the run's folder (after symlinks)."""
    run_dir = opt['path']['experiments_root' if opt['is_train'] else 'results_root']
    top = os.path.dirname(run_dir)
    if not _inside(run_dir, top) or os.path.realpath(run_dir) == os.path.realpath(top):
        raise ConfigError(f"{path}: the run folder '{run_dir}' resolves outside '{top}' (a symbolic link?)")
    for key, value in opt['path'].items():
        if key == 'root' or any(word in key for word in NOT_FOLDERS) or value is None:
            continue
        if not isinstance(value, str) or not _inside(value, run_dir):
            raise ConfigError(f"{path}: path.{key} '{value}' is outside the run folder '{run_dir}'; basicsr "
                              'creates every path.* folder, so only the run folder is allowed')


def run_root(opt, root_path, path):
    """``path.root`` (absolute, ``~`` expanded) when given, else the launcher's ``root_path``."""
    root = (opt.get('path') or {}).get('root')
    if root is None:
        return os.path.abspath(root_path)
    if not isinstance(root, str) or not root.strip():
        raise ConfigError(f'{path}: path.root must be a folder path, got {root!r}')
    return os.path.abspath(os.path.expanduser(root))


def check_names(opt, path):
    check_plain_name(opt.get('name'), 'name', path)
    for phase, ds in (opt.get('datasets') or {}).items():
        if isinstance(ds, dict) and ds.get('name') is not None:  # results/<name>/visualization/<dataset name>/
            check_plain_name(str(ds['name']), f'datasets.{phase}.name', path)
    suffix = (opt.get('val') or {}).get('suffix')
    if suffix:  # <image>_<suffix>.png
        check_plain_name(str(suffix), 'val.suffix', path)


def parse_options(root_path: str, is_train: bool = True, argv: Optional[list] = None, init_dist=None) -> tuple:
    """Upstream's ``parse_options(root_path, is_train)``: (options, command-line args), read as the module doc
    says. ``init_dist(launcher, opt)`` starts the process group (the launcher passes ours)."""
    args = command_line(argv)
    opt = apply_force_yml(load_yaml(args.opt), args.force_yml)
    path = args.opt
    check_num_gpu(opt, path)
    for section in ('datasets', 'path'):
        if not isinstance(opt.get(section) or {}, dict):
            raise ConfigError(f'{path}: {section} must be a mapping, got {opt[section]!r}')
    opt.setdefault('datasets', {})
    opt['path'] = opt.get('path') or {}
    opt['auto_resume'], opt['is_train'] = args.auto_resume, is_train
    if args.debug and isinstance(opt.get('name'), str) and not opt['name'].startswith('debug'):
        opt['name'] = 'debug_' + opt['name']
    check_names(opt, path)
    root = run_root(opt, root_path, path)

    if args.launcher == 'none':
        opt['dist'] = False
        print('Disable distributed.', flush=True)
    else:
        opt['dist'] = True
        init_dist(args.launcher, opt)
    opt['rank'], opt['world_size'] = get_dist_info()
    seed = opt.get('manual_seed')
    if seed is None:
        opt['manual_seed'] = seed = random.randint(1, 10000)
    set_random_seed(seed + opt['rank'])

    if opt.get('num_gpu', 'auto') == 'auto':
        opt['num_gpu'] = torch.cuda.device_count()
    for phase, dataset in opt['datasets'].items():
        dataset['phase'] = phase.split('_')[0]
        if 'scale' in opt:
            dataset['scale'] = opt['scale']
        for key in ('dataroot_gt', 'dataroot_lq'):
            if isinstance(dataset.get(key), str):
                dataset[key] = os.path.expanduser(dataset[key])
    for key, val in opt['path'].items():
        if isinstance(val, str) and ('resume_state' in key or 'pretrain_network' in key):
            opt['path'][key] = os.path.expanduser(val)
    _run_folders(opt, root, is_train)
    check_run_paths(opt, path)
    return opt, args


def _run_folders(opt, root, is_train):
    opt['root_path'] = root  # basicsr's train_pipeline sets it too (tb_logger/<name>); the same root here
    if is_train:
        run = os.path.join(root, 'experiments', opt['name'])
        opt['path'].update(experiments_root=run, models=os.path.join(run, 'models'), log=run,
                           training_states=os.path.join(run, 'training_states'),
                           visualization=os.path.join(run, 'visualization'))
        if 'debug' in opt['name']:
            if 'val' in opt:
                opt['val']['val_freq'] = 8
            opt.setdefault('logger', {}).update(print_freq=1, save_checkpoint_freq=8)
    else:
        run = os.path.join(root, 'results', opt['name'])
        opt['path'].update(results_root=run, log=run, visualization=os.path.join(run, 'visualization'))
