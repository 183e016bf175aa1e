"""Shared fixtures and helpers: a tiny paired dataset (LMDB + folders) from skimage photos, option-file writers,
launchers, basicsr's logged iterations, free ports, and the small image trees of the data-preparation tests.
Test modules import helpers from here only (never from another test module)."""
import contextlib
import copy
import functools
import hashlib
import importlib.util
import io
import logging
import os
import re
import socket
import subprocess
import sys

WORKER = bool(os.environ.get('PYTEST_XDIST_WORKER'))  # one of scripts/run_tests.sh's pytest-xdist workers
if WORKER:  # one thread per worker (one worker per core), for this process and the launches it starts
    os.environ['OMP_NUM_THREADS'] = '1'

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def pytest_configure(config):
    """hinet_plugins (today's-stack patches + registration) before any test module imports basicsr. Not in the
    pytest-xdist controller, which runs no test: only its workers pay for torch and basicsr."""
    if WORKER or not getattr(config.option, 'numprocesses', None):
        import hinet_plugins  # noqa: F401


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    """40 training crops of 64x64 (rocket, astronaut) and one 128-px validation photo, noise sigma 25."""
    from hinet_plugins.demo.data import make_demo_dataset
    root = tmp_path_factory.mktemp('tiny_data')
    return make_demo_dataset(str(root), patch=64, stride=48, max_side=256, train_photos=('rocket', 'astronaut'),
                             val_photos=('chelsea',), val_max_side=128)


def base_options(data, name='tiny', network=None, lmdb=True, total_iter=6):
    """A minimal training option file as a dict (edit it, then write with ``write_options``)."""
    if lmdb:
        tr = dict(dataroot_gt=data['train_gt_lmdb'], dataroot_lq=data['train_lq_lmdb'], io_backend={'type': 'lmdb'})
        va = dict(dataroot_gt=data['val_gt_lmdb'], dataroot_lq=data['val_lq_lmdb'], io_backend={'type': 'lmdb'})
    else:
        tr = dict(dataroot_gt=data['train_gt'], dataroot_lq=data['train_lq'], io_backend={'type': 'disk'})
        va = dict(dataroot_gt=data['val_gt'], dataroot_lq=data['val_lq'], io_backend={'type': 'disk'})
    tr.update(name='tiny_train', type='PairedImageDataset', gt_size=48, use_hflip=True, use_rot=True,
              use_shuffle=True, num_worker_per_gpu=0, batch_size_per_gpu=4, dataset_enlarge_ratio=1,
              prefetch_mode=None)
    va.update(name='tiny_val', type='PairedImageDataset')
    return {
        'name': name, 'model_type': 'MultiStageRestorationModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 10,
        'datasets': {'train': tr, 'val': va},
        'network_g': copy.deepcopy(network) if network else {'type': 'HINet', 'wf': 8, 'depth': 3},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'optim_g': {'type': 'Adam', 'lr': 2e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'TrueCosineAnnealingLR', 'T_max': total_iter, 'eta_min': 1e-7},
            'total_iter': total_iter, 'warmup_iter': -1,
            'pixel_opt': {'type': 'PSNRLoss', 'loss_weight': 0.5, 'reduction': 'mean'},
        },
        'val': {'val_freq': total_iter, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': total_iter, 'use_tb_logger': False,
                   'wandb': {'project': None, 'resume_id': None}},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }


def write_options(opt, path):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return str(path)


def run_cli(args, cwd, env_extra=None, timeout=600, check=True):
    """Run a command line (list) with the test interpreter; returns CompletedProcess (stdout+stderr merged)."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1' if WORKER else '2')
    env.pop('BASICSR_DIST_BACKEND', None)
    env.update(env_extra or {})
    proc = subprocess.run(args, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'command failed ({proc.returncode}): {" ".join(map(str, args))}\n{proc.stdout[-6000:]}')
    return proc


# One interpreter for several launches: each run executes the literal launcher file (``runpy.run_path``) or module
# with its own sys.argv, working folder and output file, and a fresh basicsr logger; a crash is that run's exit 1.
LAUNCH_BATCH_DRIVER = r"""
import contextlib, json, logging, os, runpy, sys, traceback
import hinet_plugins  # what the launchers import first (today's-stack patches before basicsr)
from basicsr.utils import logger as basicsr_logger
for run in json.load(open(sys.argv[1])):
    os.chdir(run['cwd'])
    for name in ('basicsr', 'basicsr.metrics'):
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
    basicsr_logger.initialized_logger.clear()
    code = 0
    with open(run['out'], 'w') as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        sys.argv = list(run['argv'])
        try:
            if run['module']:
                runpy.run_module(run['module'], run_name='__main__', alter_sys=True)
            else:
                runpy.run_path(run['argv'][0], run_name='__main__')
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
    with open(run['out'] + '.code', 'w') as f:
        f.write(str(code))
"""


def launch_batch(runs, folder, timeout=900, env_extra=None):
    """Several launches in one subprocess (one interpreter start instead of one per run): ``runs`` is a list of
    ``(argv, cwd)`` where ``argv[0]`` is a launcher file (``basicsr/train.py``, relative to ``cwd``) or
    ``-m <module>``; returns one ``subprocess.CompletedProcess`` (returncode, merged output) per run."""
    import json
    plan = []
    for i, (argv, cwd) in enumerate(runs):
        argv = [str(a) for a in argv]
        module = argv[1] if argv[0] == '-m' else None
        plan.append({'argv': [module] + argv[2:] if module else argv, 'module': module, 'cwd': str(cwd),
                     'out': os.path.join(str(folder), f'launch_{i}.txt')})
    plan_path = os.path.join(str(folder), 'launch_plan.json')
    with open(plan_path, 'w') as f:
        json.dump(plan, f)
    driver = run_cli([PY, '-c', LAUNCH_BATCH_DRIVER, plan_path], folder,
                     env_extra=dict(env_extra or {}, PYTHONPATH=REPO), timeout=timeout, check=False)
    results = []
    for run in plan:
        if not os.path.exists(run['out'] + '.code'):
            raise AssertionError(f'the launch batch stopped before {run["argv"]}:\n{driver.stdout[-6000:]}')
        with open(run['out']) as f, open(run['out'] + '.code') as c:
            results.append(subprocess.CompletedProcess(run['argv'], int(c.read()), f.read()))
    return results


def selected_items(request):
    """The tests of the requesting module that this session runs (for a module fixture that prepares only theirs)."""
    return [item for item in request.session.items if item.module is request.module]


def launch_selected(request, plans, tmp_path_factory, env_extra=None, requires=None):
    """For a module-scoped fixture: the plans (test node name -> ``plan(folder) -> (argv, cwd)``) of the module's
    selected tests, launched in one interpreter (``launch_batch``) in the order of ``plans``; ``requires`` maps a
    test to another test's plan it needs too (e.g. a test file run on the checkpoint of a training). Returns
    {node name: (folder, completed run)}."""
    requires = requires or {}
    chosen = {item.name for item in selected_items(request)}
    chosen |= {requires[name] for name in chosen if name in requires}
    names = [name for name in plans if name in chosen]
    folders = {name: tmp_path_factory.mktemp('run') for name in names}
    runs = [plans[name](folders[name]) for name in names]
    done = launch_batch(runs, tmp_path_factory.mktemp('batch'), timeout=300 + 120 * len(runs), env_extra=env_extra)
    return {name: (folders[name], proc) for name, proc in zip(names, done)}


def module_train(opt_path):
    """``python -m hinet_plugins.train -opt OPT`` as ``launch_batch`` argv."""
    return ['-m', 'hinet_plugins.train', '-opt', str(opt_path)]


def run_launcher(root, opt_path, *flags, mode='train', monkeypatch):
    """``python basicsr/<mode>.py -opt OPT flags`` in-process, from ``root``; returns (exit code, stderr text)."""
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, 'argv', [f'basicsr/{mode}.py', '-opt', str(opt_path), *flags])
    err = io.StringIO()
    code = 0
    # basicsr's logger is a process-wide singleton: its console handler may still hold the stream of an earlier
    # test (closed by now); point it at this test's stderr for the duration of the call
    for handler in logging.getLogger('basicsr').handlers:
        if type(handler) is logging.StreamHandler:
            monkeypatch.setattr(handler, 'stream', err)
    with contextlib.redirect_stderr(err):
        try:
            from hinet_plugins.basicsr_ext import launch
            launch.run(mode, str(root))
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue()


def expect_error(root, opt, monkeypatch, *fragments, flags=()):
    opt_path = write_options(opt, os.path.join(str(root), 'opt.yml'))
    code, err = run_launcher(root, opt_path, *flags, monkeypatch=monkeypatch)
    lines = [line for line in err.splitlines() if line.startswith('hinet_plugins: error:')]
    assert code == 2 and len(lines) == 1, f'exit {code}, stderr:\n{err}'
    assert 'Traceback' not in err
    for fragment in fragments:
        assert fragment in lines[0], f'{fragment!r} not in {lines[0]!r}'
    return lines[0]



def save_model(folder, name, seed=0, opt=None, built=None):
    """A checkpoint ``<name>.pth`` with random weights of ``built`` and an option file ``<name>.yml`` whose
    ``network_g`` is ``opt`` (each defaults to a tiny HINet, so a different ``opt`` alone makes weights that do not
    fit); returns the option file's path."""
    import torch
    from basicsr.archs import build_network
    tiny = {'type': 'HINet', 'wf': 4, 'depth': 3}
    opt, built = opt or tiny, built or tiny
    torch.manual_seed(seed)
    ckpt = os.path.join(folder, f'{name}.pth')
    torch.save({'params': build_network(dict(built)).state_dict()}, ckpt)
    path = os.path.join(folder, f'{name}.yml')
    with open(path, 'w') as f:
        yaml.safe_dump({'network_g': dict(opt), 'path': {'pretrain_network_g': ckpt}}, f)
    return path


def train_module(opt_path, cwd, *extra, **kw):
    """``python -m hinet_plugins.train -opt ...`` in ``cwd`` (experiments/ lands there)."""
    return run_cli([PY, '-m', 'hinet_plugins.train', '-opt', opt_path, *extra], cwd,
                   env_extra={'PYTHONPATH': REPO}, **kw)


def load_option_file(kind, name):
    """A shipped option file, ``options/<kind>/<name>.yml``, as a dict."""
    with open(os.path.join(REPO, 'options', kind, f'{name}.yml')) as f:
        return yaml.safe_load(f)


def on_tiny_data(opt, data, total_iter=2, gt_size=48, network=None):
    """A shipped training option file shrunk for a test: its datasets swapped for the tiny ones (same keys
    otherwise), CPU, no workers, ``total_iter`` iterations, validation and a checkpoint at the end."""
    tiny = base_options(data)
    for split in ('train', 'val'):
        for key in ('dataroot_gt', 'dataroot_lq', 'io_backend'):
            opt['datasets'][split][key] = tiny['datasets'][split][key]
    opt['datasets']['train'].update(gt_size=gt_size, batch_size_per_gpu=2, num_worker_per_gpu=0)
    opt['network_g'].update(network or {})
    opt['num_gpu'] = 0
    opt['train']['total_iter'] = total_iter
    opt['train']['scheduler']['T_max'] = total_iter
    opt['val']['val_freq'] = total_iter
    opt['logger'].update(print_freq=1, save_checkpoint_freq=total_iter, use_tb_logger=False)
    return opt


def assert_stage_order(make_net, residual_convs, size=(32, 40)):
    """Zeroing the weight of stage s's residual conv (``residual_convs[s]``) makes output s, and only it, equal the
    input: the network returns its stage outputs in stage order, final last."""
    import torch
    torch.manual_seed(0)
    x = torch.rand(1, 3, *size)
    for i, module in enumerate(residual_convs):
        net = make_net().eval()
        torch.nn.init.zeros_(net.get_submodule(module).weight)
        with torch.no_grad():
            outs = net(x)
        assert len(outs) == len(residual_convs)
        for j, out in enumerate(outs):
            assert torch.equal(out, x) == (i == j), (module, j)


RUN_FOLDERS = ('experiments', 'results', 'tb_logger')


def missing_run_folders():
    """The top folders of basicsr's runs that the repository root does not have yet (for ``remove_repo_runs``)."""
    return [d for d in RUN_FOLDERS if not os.path.isdir(os.path.join(REPO, d))]


def remove_repo_runs(name, created=()):
    """Remove what the literal launchers (``basicsr/train.py``, which write under the repository root) wrote for
    the run ``name``; the top folders listed in ``created`` go too once they are empty."""
    import glob
    import shutil
    for folder in RUN_FOLDERS:
        for path in glob.glob(os.path.join(REPO, folder, f'*{name}*')):
            shutil.rmtree(path, ignore_errors=True)
        top = os.path.join(REPO, folder)
        if folder in created and os.path.isdir(top) and not os.listdir(top):
            with contextlib.suppress(OSError):  # a launcher still running may have just written there
                os.rmdir(top)


# ---------------------------------------------------------------------------------------------- logs and processes
ITER_LINE = re.compile(r'\[epoch:\s*(\d+), iter:\s*([\d,]+), lr:\(([^)]*)\)\].*?\]\s*(.*)$')


def logged_iterations(text):
    """{iteration: {'lr': str, 'epoch': int, <loss name>: str}} from basicsr's MessageLogger lines."""
    found = {}
    for line in text.splitlines():
        match = ITER_LINE.search(line)
        if match:
            values = dict(re.findall(r'(\S+): (\S+)', match.group(4)))
            found[int(match.group(2).replace(',', ''))] = dict(values, lr=match.group(3), epoch=int(match.group(1)))
    return found


def start(args, cwd, log_path):
    """Start ``args`` in ``cwd`` with this checkout first on the path; stdout/stderr to ``log_path``.out/.err."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    env.pop('BASICSR_DIST_BACKEND', None)
    out = open(str(log_path) + '.out', 'w')
    err = open(str(log_path) + '.err', 'w')
    proc = subprocess.Popen([str(a) for a in args], cwd=str(cwd), env=env, stdout=out, stderr=err, text=True)
    proc.files = (out, err, str(log_path))
    return proc


def finish(proc, timeout=400):
    """Wait for a ``start``ed process; (exit code, stdout, stderr)."""
    proc.wait(timeout=timeout)
    for f in proc.files[:2]:
        f.close()
    out, err = (open(proc.files[2] + suffix).read() for suffix in ('.out', '.err'))
    return proc.returncode, out, err


def free_port():
    """A TCP port free on this machine now (for a process group's master)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- data preparation
PREPARE_SCRIPT = os.path.join(REPO, 'scripts', 'prepare_data.py')


@functools.lru_cache(None)
def _photo():
    from hinet_plugins.demo.data import load_photo
    return load_photo('astronaut')


def photo_pair(h, w, seed):
    """(clean, noisy) BGR uint8 crops of h x w from skimage's astronaut, placed by ``seed``."""
    import cv2
    import numpy as np
    from hinet_plugins.demo.data import degrade
    photo = _photo()
    y, x = 17 * seed % (photo.shape[0] - h), 29 * seed % (photo.shape[1] - w)
    clean = cv2.cvtColor(np.ascontiguousarray(photo[y:y + h, x:x + w]), cv2.COLOR_RGB2BGR)
    return clean, degrade(clean, sigma=20, seed=seed)


def write_image(path, img):
    import cv2
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, img)


def load_script(path, name):
    """A script of the repository as a module (its ``main`` then runs in-process)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_main(main, argv):
    """``main(argv)`` of a script in-process, stdout and stderr captured together; returns (exit code, output)."""
    out, code = io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue()


@functools.lru_cache(None)
def prepare_script():
    return load_script(PREPARE_SCRIPT, 'prepare_data_script')


def prepare(cwd, *args, check=True):
    """``scripts/prepare_data.py ARGS`` run in-process in ``cwd`` (imports paid once); returns (exit code, output)."""
    here = os.getcwd()
    try:
        os.chdir(cwd)
        code, out = call_main(prepare_script().main, [*args, '--no-progress'])
    finally:
        os.chdir(here)
    if check and code:
        raise AssertionError(f'prepare_data {args} failed ({code}):\n{out}')
    return code, out


def lmdb_keys(path):
    """The keys of an LMDB written by the preparation, checked against its meta_info.txt."""
    import lmdb
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        keys = sorted(k.decode() for k in txn.cursor().iternext(values=False))
    env.close()
    with open(os.path.join(path, 'meta_info.txt')) as f:
        meta = sorted(line.split('.png ')[0] for line in f)
    assert keys == meta, 'meta_info.txt lists exactly the LMDB keys'
    assert not any('.' in k for k in keys)
    return keys


def tree(root):
    """{relative path: sha256 of the file, or 'dir'} of everything under ``root``."""
    out = {}
    for top, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(top, d), root)] = 'dir'
        for f in files:
            with open(os.path.join(top, f), 'rb') as fh:
                out[os.path.relpath(os.path.join(top, f), root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def cut_short(path, keep=0.6):
    """Truncate an image file: its header still reads, its pixels do not."""
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * keep)])
