"""The literal launchers (``python basicsr/train.py`` / ``basicsr/test.py`` with upstream's flags) and resume.

Resume after SIGKILL: the resumed run's logged losses equal those of an uninterrupted run with the same seed,
exactly, to the 5 significant digits basicsr logs, with and without DataLoader workers. What makes them equal
(``basicsr_ext.resume``): the training state holds the network, optimizer, scheduler, iteration, the trainable
loss parameters (FCN's stage ratios) and every rank's random states; the sampler continues the interrupted epoch
instead of restarting it (upstream restarts it, and re-seeds: measured -18.603 vs -18.480 at the first resumed
iteration of this tiny run); and each sample's crop/flip/rotation draws are seeded from (seed, epoch, position),
not from the worker that serves it (before that, with 2 workers every resumed loss differed). Both runs use the
same thread count (OMP_NUM_THREADS=1).
"""
import glob
import os
import re
import signal
import time
import uuid

import pytest
import torch
from conftest import (PY, REPO, base_options, finish, launch_batch, logged_iterations, missing_run_folders,
                      remove_repo_runs, start, write_options)

import basicsr

# ---------------------------------------------------------------------------------------------- literal launchers
@pytest.fixture(scope='module')
def launcher_runs(tiny_data, tmp_path_factory):
    """Four literal launches from the repository root:
    1. ``python -v basicsr/train.py -opt lmdb.yml --force_yml train:total_iter=4`` (yml says 6; -v lists imports),
       a process of its own (``-v`` is an interpreter flag);
    then, in one interpreter (``launch_batch``: the literal launcher file per run, in this order):
    2. ``python basicsr/train.py -opt disk.yml --debug`` (disk folders, ``num_gpu: auto``, print_freq 100 in the yml)
    3. ``python basicsr/train.py -opt lmdb.yml --auto_resume`` (continues run 1 from iteration 4 to 6)
    4. ``python basicsr/test.py -opt test.yml`` (evaluates run 1's checkpoint)
    """
    tmp = tmp_path_factory.mktemp('launchers')
    name = f'pytest_launch_{uuid.uuid4().hex[:8]}'
    lmdb_opt = base_options(tiny_data, name=name, total_iter=6)
    lmdb_opt['logger']['save_checkpoint_freq'] = 2
    lmdb_opt['val']['val_freq'] = 4
    disk_opt = base_options(tiny_data, name=name + '_disk', lmdb=False, total_iter=3)
    disk_opt['num_gpu'] = 'auto'
    disk_opt['logger']['print_freq'] = 100
    test_opt = {k: lmdb_opt[k] for k in ('model_type', 'scale', 'num_gpu', 'manual_seed', 'network_g')}
    test_opt.update(name=name + '_test', datasets={'test_1': dict(lmdb_opt['datasets']['val'], name='tiny_test')},
                    path={'pretrain_network_g': f'experiments/{name}/models/net_g_4.pth', 'strict_load_g': True},
                    val={'save_img': False, 'suffix': None, 'metrics': lmdb_opt['val']['metrics']})
    paths = {k: write_options(o, tmp / f'{k}.yml') for k, o in
             (('lmdb', lmdb_opt), ('disk', disk_opt), ('test', test_opt))}
    created = missing_run_folders()
    runs = {'name': name}
    try:
        first = start([PY, '-v', 'basicsr/train.py', '-opt', paths['lmdb'], '--force_yml', 'train:total_iter=4'],
                      REPO, tmp / 'first')
        runs['first'] = finish(first)
        done = launch_batch([(['basicsr/train.py', '-opt', paths['disk'], '--debug'], REPO),
                             (['basicsr/train.py', '-opt', paths['lmdb'], '--auto_resume'], REPO),
                             (['basicsr/test.py', '-opt', paths['test']], REPO)], tmp, timeout=1200,
                            env_extra={'OMP_NUM_THREADS': '1'})
        runs['debug'], runs['resumed'], runs['tested'] = map(_batched, done)
        runs['exp'] = os.path.join(REPO, 'experiments', name)
        runs['debug_exp'] = os.path.join(REPO, 'experiments', f'debug_{name}_disk')
        runs['results'] = os.path.join(REPO, 'results', name + '_test')
        runs['exp_files'] = sorted(os.path.relpath(p, runs['exp']) for p in
                                   glob.glob(os.path.join(runs['exp'], '**', '*'), recursive=True))
        yield runs
    finally:
        remove_repo_runs(name, created)


def _batched(proc):
    """A ``launch_batch`` run as ``finish`` gives a process: (exit code, stdout, stderr); the batch merges both
    streams, so all of it is read as stderr (where basicsr logs)."""
    return proc.returncode, '', proc.stdout


def _ok(run):
    """(stdout + stderr, stderr) of a finished run that must have succeeded; basicsr logs to stderr."""
    code, out, err = run
    assert code == 0, out[-3000:] + err[-3000:]
    assert 'Traceback' not in out + err
    return out + err, err


@pytest.mark.slow
def test_literal_train_on_lmdb_with_force_yml(launcher_runs):
    out, _ = _ok(launcher_runs['first'])
    iters = logged_iterations(out)
    assert sorted(iters) == [1, 2, 3, 4]  # --force_yml train:total_iter=4 beat the yml's 6
    assert all(float(v['l_psnr']) < 0 for v in iters.values())
    assert 'Validation tiny_val' in out
    for f in ('models/net_g_2.pth', 'models/net_g_4.pth', 'models/net_g_latest.pth', 'training_states/2.state',
              'training_states/4.state'):
        assert f in launcher_runs['exp_files']


@pytest.mark.slow
def test_literal_launcher_imports_the_installed_basicsr(launcher_runs):
    """``python -v`` prints where each module is loaded from: basicsr must come from site-packages, never from the
    repository's ``basicsr/`` launcher folder (which has no ``__init__.py`` for that reason)."""
    _, err = _ok(launcher_runs['first'])
    installed = os.path.dirname(os.path.realpath(basicsr.__file__))
    assert 'site-packages' in installed and not installed.startswith(os.path.realpath(REPO) + os.sep + 'basicsr')
    loaded = {os.path.dirname(os.path.realpath(m)) for m in re.findall(r"(/\S+/basicsr/__init__\.py)\b", err)}
    assert loaded == {installed}, loaded
    assert not os.path.exists(os.path.join(REPO, 'basicsr', '__init__.py'))


@pytest.mark.slow
def test_literal_train_on_disk_folders_with_debug_and_num_gpu_auto(launcher_runs):
    out, err = _ok(launcher_runs['debug'])
    assert os.path.isdir(launcher_runs['debug_exp'])  # --debug prefixed the experiment name
    assert sorted(logged_iterations(out)) == [1, 2, 3]  # --debug forced print_freq 1 (the yml says 100)
    assert os.path.isfile(os.path.join(launcher_runs['debug_exp'], 'models', 'net_g_latest.pth'))
    assert 'Validation tiny_val' in out
    if not torch.cuda.is_available():
        assert "num_gpu is 'auto' and no GPU is present: training on the CPU" in err


@pytest.mark.slow
def test_literal_auto_resume(launcher_runs):
    out, _ = _ok(launcher_runs['resumed'])
    assert 'Resuming training from epoch: 0, iter: 4.' in out
    assert 'skipping its 4 batch(es) already trained' in out
    assert sorted(logged_iterations(out)) == [5, 6]
    assert os.path.isfile(os.path.join(launcher_runs['exp'], 'models', 'net_g_6.pth'))


@pytest.mark.slow
def test_literal_test_launcher(launcher_runs):
    out, _ = _ok(launcher_runs['tested'])
    assert os.path.isdir(launcher_runs['results'])
    psnr = float(re.search(r'# psnr: ([\d.]+)', out).group(1))
    assert 10 < psnr < 60
    assert glob.glob(os.path.join(launcher_runs['results'], 'test_*.log'))


# ---------------------------------------------------------------------------------------------- kill -9 and resume
@pytest.mark.slow
@pytest.mark.parametrize('workers', [0, 2])
def test_sigkill_then_auto_resume_matches_uninterrupted_run(tiny_data, tmp_path, workers):
    """FCN's StageRatioLoss brings trainable stage ratios (own param group, saved under 'losses' in the state);
    random 48-px crops of the 64-px pairs with flips and rotations, drawn in the main process or in 2 workers."""
    opt = base_options(tiny_data, name='killed', total_iter=400)
    opt['datasets']['train']['num_worker_per_gpu'] = workers
    opt['train']['scheduler']['T_max'] = 12
    opt['train']['losses'] = [{'type': 'StageRatioLoss', 'num_stages': 2, 'tau': 0.1}]
    opt['train']['optim_loss'] = {'lr': 0.05}
    opt['logger']['save_checkpoint_freq'] = 3
    opt['val']['val_freq'] = 10000
    killed_yml = write_options(opt, tmp_path / 'killed.yml')
    reference_yml = write_options(dict(opt, name='reference'), tmp_path / 'reference.yml')
    states = tmp_path / 'experiments' / 'killed' / 'training_states'

    train = [PY, '-m', 'hinet_plugins.train', '-opt']
    victim = start(train + [killed_yml], tmp_path, tmp_path / 'victim')
    deadline = time.time() + 300
    while not (states / '3.state').exists():  # written atomically: it exists only once complete
        assert victim.poll() is None and time.time() < deadline, open(str(tmp_path / 'victim.err')).read()[-3000:]
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    code, victim_out, victim_err = finish(victim)
    assert code == -signal.SIGKILL
    saved = max(int(f[:-6]) for f in os.listdir(states) if f.endswith('.state'))
    stop = saved + 4  # compare the four iterations after the resume point

    # the resume and the uninterrupted reference run one after the other in one interpreter (``launch_batch``),
    # with the victim's thread count
    batch = tmp_path / 'batch'
    batch.mkdir()
    resumed, reference = launch_batch([
        (train[1:] + [killed_yml, '--auto_resume', '--force_yml', f'train:total_iter={stop}'], tmp_path),
        (train[1:] + [reference_yml, '--force_yml', f'train:total_iter={stop}'], tmp_path)], batch, timeout=600,
        env_extra={'OMP_NUM_THREADS': '1'})
    resumed_out, reference_out = _ok(_batched(resumed))[0], _ok(_batched(reference))[0]

    assert f'Resuming training from epoch: {(saved - 1) // 10}, iter: {saved}.' in resumed_out
    after, expected = logged_iterations(resumed_out), logged_iterations(reference_out)
    assert sorted(after) == list(range(saved + 1, stop + 1))
    assert {'l_psnr', 'l_stageratio', 'r_stage1', 'r_stage2'} <= set(after[saved + 1])
    for it in after:  # network, optimizer, scheduler, loss parameter and data all continue exactly
        assert after[it] == expected[it], (it, after[it], expected[it])
    assert abs(float(after[saved + 1]['r_stage1']) - 0.5) > 1e-3  # the ratios had moved from 0.5 and were restored
    before = logged_iterations(victim_out + victim_err)
    assert all(before[it] == expected[it] for it in before if it <= stop)  # same seed, same run before the kill
