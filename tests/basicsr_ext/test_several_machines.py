"""Several machines, simulated on localhost: two torchrun "nodes" (``--nnodes 2 --node_rank 0|1``), each started in
its own folder (no shared filesystem: each writes under its own working folder, ``python -m hinet_plugins.train``),
slurm's variables with a stand-in ``scontrol``, a run started from another folder, offline wandb. Every command
has a time bound and must end by itself within it."""
import glob
import importlib.util
import os
import shutil
import signal
import stat
import struct
import subprocess
import time

import pytest

from conftest import (PY, REPO, base_options, free_port, launch_batch, logged_iterations, remove_repo_runs,
                      selected_items, write_options)

pytestmark = pytest.mark.slow
BOUND = 240  # seconds any one command may take here


def env_for(**extra):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', PYTHONPATH=REPO, **extra)
    env.pop('BASICSR_DIST_BACKEND', None)
    return env


def start_nodes(folders, opt_paths, port, *flags):
    """One torchrun per folder (node_rank = index), one process each, static rendezvous on 127.0.0.1:port."""
    procs = []
    for rank, (folder, opt_path) in enumerate(zip(folders, opt_paths)):
        cmd = [PY, '-m', 'torch.distributed.run', '--nnodes=2', f'--node_rank={rank}', '--nproc_per_node=1',
               '--master_addr=127.0.0.1', f'--master_port={port}', '-m', 'hinet_plugins.train', '-opt', opt_path,
               '--launcher', 'pytorch', *flags]
        out = open(os.path.join(folder, f'node{rank}.out'), 'w')
        procs.append(subprocess.Popen(cmd, cwd=folder, env=env_for(), stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    return procs


def kill_tree(pid):
    """SIGKILL ``pid`` and all its descendants (torchrun's workers run in sessions of their own)."""
    children = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    todo, found = [pid], []
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    for victim in found:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_all(procs, bound=BOUND):
    codes = []
    deadline = time.time() + bound
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for p in procs:
                kill_tree(p.pid)
            raise AssertionError(f'a node did not end within {bound} s')
    return codes


def output(folder, rank):
    with open(os.path.join(folder, f'node{rank}.out')) as f:
        return f.read()


def run_log(folder, name):
    files = sorted(glob.glob(os.path.join(folder, 'experiments', name, 'train_*.log')))
    return ''.join(open(f).read() for f in files)


def options(tiny_data, folder, batch, total_iter, name='multi'):
    opt = base_options(tiny_data, name=name, total_iter=total_iter)
    opt['datasets']['train'].update(batch_size_per_gpu=batch, gt_size=48, num_worker_per_gpu=0)
    opt['logger']['save_checkpoint_freq'] = 2
    opt['val']['val_freq'] = 10 ** 6
    return write_options(opt, os.path.join(folder, 'opt.yml'))


def assert_same_losses(got, want, iters):
    for it in iters:
        for key in [k for k in want[it] if k.startswith('l_')]:
            a, b = float(got[it][key]), float(want[it][key])
            assert abs(a - b) <= 2e-4 * max(abs(b), 1e-3), (it, key, a, b)


@pytest.fixture(scope='module')
def single_runs(request, tiny_data, tmp_path_factory):
    """The one-process launches of the selected tests below, all in one interpreter (``launch_batch``: one start-up
    instead of four; each run with its own argv and working folder, one thread, in this order): the two-node
    test's reference, the two launches of the run started from another folder, the offline-wandb run (last: wandb
    flushes its file at the interpreter's exit at the latest). The batch as a whole gets BOUND per launch.
    Returns {key: (folder, completed run)}; the run written under the repository root is removed afterwards."""
    wanted = {item.originalname for item in selected_items(request)}
    plan = []  # (key, folder, argv)
    if 'test_two_nodes_without_shared_storage' in wanted:
        reference = tmp_path_factory.mktemp('reference')
        plan.append(('reference', reference, ['-m', 'hinet_plugins.train', '-opt',
                                              options(tiny_data, reference, 8, 400), '--force_yml',
                                              'train:total_iter=6']))
    name = f'pytest_elsewhere_{os.getpid()}'
    if 'test_auto_resume_from_another_folder' in wanted:
        folder = tmp_path_factory.mktemp('elsewhere')
        opt = base_options(tiny_data, name=name, total_iter=4)
        opt['logger']['save_checkpoint_freq'] = 2
        train = [os.path.join(REPO, 'basicsr', 'train.py'), '-opt', write_options(opt, folder / 'opt.yml')]
        elsewhere = folder / 'job_dir'
        elsewhere.mkdir()
        plan += [('first', folder, train + ['--force_yml', 'train:total_iter=2']),
                 ('second', elsewhere, train + ['--auto_resume'])]
    if 'test_offline_wandb_holds_the_losses' in wanted and importlib.util.find_spec('wandb'):
        folder = tmp_path_factory.mktemp('wandb')
        opt = base_options(tiny_data, name='wb', total_iter=3)
        opt['logger'].update(use_tb_logger=True, wandb={'project': 'hinet-test', 'resume_id': None})
        plan.append(('wandb', folder, ['-m', 'hinet_plugins.train', '-opt', write_options(opt, folder / 'opt.yml')]))
    try:
        done = launch_batch([(argv, folder) for _, folder, argv in plan], tmp_path_factory.mktemp('single_batch'),
                            timeout=BOUND * len(plan), env_extra={'OMP_NUM_THREADS': '1', 'WANDB_MODE': 'offline',
                                                                  'WANDB_SILENT': 'true'}) if plan else []
        yield dict(zip([key for key, _, _ in plan], zip([folder for _, folder, _ in plan], done)), name=name)
    finally:
        remove_repo_runs(name)


def test_two_nodes_without_shared_storage(tiny_data, tmp_path, single_runs):
    """Fresh run = one process on the doubled batch; kill -9, then --auto_resume on both nodes continues with the
    uninterrupted run's losses, whether node 1 has no files or a stale copy of the states."""
    reference, proc = single_runs['reference']  # (``python -m hinet_plugins.train``, run in the batch)
    assert proc.returncode == 0, proc.stdout[-3000:]
    want = logged_iterations(run_log(reference, 'multi'))

    nodes = [tmp_path / 'node0', tmp_path / 'node1']
    for node in nodes:
        node.mkdir()
    paths = [options(tiny_data, node, 4, 400) for node in nodes]
    procs = start_nodes(nodes, paths, free_port())
    states = nodes[0] / 'experiments' / 'multi' / 'training_states'
    deadline = time.time() + BOUND
    while not (states / '4.state').exists() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:  # a node fails: every process on it dies at once
        kill_tree(p.pid)
    wait_all(procs)
    assert (states / '4.state').exists(), output(nodes[0], 0)[-3000:]
    later = sorted(int(f.name.split('.')[0]) for f in states.glob('*.state'))
    for extra in later[2:]:  # the kill came a little after 4: keep the states up to 4, as if it came right then
        (states / f'{extra}.state').unlink()
    assert not (nodes[1] / 'experiments').exists()  # rank 1 wrote nothing
    got = logged_iterations(run_log(nodes[0], 'multi'))
    assert_same_losses(got, want, [it for it in range(1, 7) if it in got])

    for case in ('no files', 'stale copy'):
        trial = [tmp_path / case.replace(' ', '_') / f'node{i}' for i in range(2)]
        shutil.copytree(nodes[0], trial[0])
        trial[1].mkdir(parents=True)
        shutil.copy(paths[1], trial[1] / 'opt.yml')
        if case == 'stale copy':  # node 1 holds an older state than rank 0
            shutil.copytree(nodes[0] / 'experiments', trial[1] / 'experiments')
            for later in glob.glob(str(trial[1] / 'experiments' / 'multi' / 'training_states' / '*.state')):
                if not later.endswith('/2.state'):
                    os.remove(later)
        for node in trial:
            for log in glob.glob(str(node / 'experiments' / 'multi' / 'train_*.log')):
                os.remove(log)
        procs = start_nodes(trial, [str(t / 'opt.yml') for t in trial], free_port(), '--auto_resume',
                            '--force_yml', 'train:total_iter=6')
        assert wait_all(procs) == [0, 0], output(trial[0], 0)[-3000:] + output(trial[1], 1)[-3000:]
        log = run_log(trial[0], 'multi')
        assert 'Resuming training from epoch: 0, iter: 4.' in log, case
        resumed = logged_iterations(log)
        assert sorted(resumed) == [5, 6], case
        assert_same_losses(resumed, want, [5, 6])


def test_an_error_on_one_node_stops_both(tiny_data, tmp_path):
    """Node 1's option file points at missing data: node 1 says so with its rank, node 0 names rank 1, both exit 2
    within the bound (no rank waits for the other)."""
    nodes = [tmp_path / 'node0', tmp_path / 'node1']
    for node in nodes:
        node.mkdir()
    paths = [options(tiny_data, node, 4, 2) for node in nodes]
    opt = base_options(tiny_data, name='multi', total_iter=2)
    opt['datasets']['train']['dataroot_gt'] = str(tmp_path / 'not_copied_to_this_node.lmdb')
    paths[1] = write_options(opt, nodes[1] / 'opt.yml')
    started = time.time()
    codes = wait_all(start_nodes(nodes, paths, free_port()), bound=BOUND)
    assert time.time() - started < BOUND
    assert codes[0] != 0 and codes[1] != 0
    line0 = [x for x in output(nodes[0], 0).splitlines() if x.startswith('hinet_plugins: error:')]
    line1 = [x for x in output(nodes[1], 1).splitlines() if x.startswith('hinet_plugins: error:')]
    assert line1 and line1[0].startswith('hinet_plugins: error: [rank 1]') and 'not_copied_to_this_node' in line1[0]
    assert line0 and 'rank 1 stopped' in line0[0] and 'not_copied_to_this_node' in line0[0]
    assert not (nodes[0] / 'experiments').exists() and not (nodes[1] / 'experiments').exists()


def test_slurm_launcher_on_cpu_nodes(tiny_data, tmp_path):
    """``srun``'s variables, a stand-in ``scontrol``, the shipped files' ``dist_params: {backend: nccl}``: both tasks
    train with gloo (a warning says so) on the port given with --force_yml."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    scontrol = bin_dir / 'scontrol'
    scontrol.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 1\necho 127.0.0.1\necho 127.0.0.2\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    port = free_port()
    procs, folders = [], []
    for task in range(2):
        folder = tmp_path / f'task{task}'
        folder.mkdir()
        folders.append(folder)
        env = env_for(SLURM_PROCID=str(task), SLURM_NTASKS='2', SLURM_NODELIST='cpu[01-02]', SLURM_LOCALID='0',
                      PATH=f"{bin_dir}:{os.environ['PATH']}")
        env.pop('MASTER_PORT', None)
        env.pop('MASTER_ADDR', None)
        out = open(folder / f'node{task}.out', 'w')
        procs.append(subprocess.Popen([PY, '-m', 'hinet_plugins.train', '-opt', options(tiny_data, folder, 2, 2),
                                       '--launcher', 'slurm', '--force_yml', f'dist_params:port={port}'],
                                      cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    assert wait_all(procs) == [0, 0], output(folders[0], 0)[-3000:] + output(folders[1], 1)[-3000:]
    assert 'no GPU is present: using gloo' in output(folders[0], 0)
    log = run_log(folders[0], 'multi')
    assert 'World size (gpu number): 2' in log and sorted(logged_iterations(log)) == [1, 2]
    assert (folders[0] / 'experiments' / 'multi' / 'models' / 'net_g_2.pth').is_file()
    assert not (folders[1] / 'experiments').exists()


def test_auto_resume_from_another_folder(single_runs):
    """``cd elsewhere && python /repo/basicsr/train.py -opt … --auto_resume`` finds the run under the repository
    root (where it writes), instead of archiving it and starting again."""
    name = single_runs['name']
    # both launches ran in the batch: the first from the option file's folder, the second from job_dir
    _, first = single_runs['first']
    elsewhere, second = single_runs['second']
    assert first.returncode == 0, first.stdout[-3000:]
    assert second.returncode == 0, second.stdout[-3000:]
    log = run_log(REPO, name)
    archived = glob.glob(os.path.join(REPO, 'experiments', f'{name}_archived_*'))
    assert 'Resuming training from epoch: 0, iter: 2.' in log and not archived
    assert not os.listdir(elsewhere)


def _wandb_records(path):
    """The records of a ``.wandb`` file (LevelDB log format: 7-byte header, 32 KiB blocks, chunks of CRC32 +
    length + type)."""
    from wandb.proto import wandb_internal_pb2
    with open(path, 'rb') as f:
        data = f.read()
    pos, block, records, pending = 7, 32768, [], b''
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        length, kind = struct.unpack('<HB', data[pos + 4:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b''
        if length == 0 and kind == 0:
            break
    return records


def test_offline_wandb_holds_the_losses(single_runs):
    pytest.importorskip('wandb', reason='wandb is an optional extra (pip install wandb)')
    tmp_path, proc = single_runs['wandb']  # (``python -m hinet_plugins.train``, run in the batch, WANDB_MODE=offline)
    assert proc.returncode == 0, proc.stdout[-3000:]
    logged = logged_iterations(run_log(tmp_path, 'wb'))
    files = glob.glob(str(tmp_path / 'experiments' / 'wb' / 'wandb' / 'offline-run-*' / 'run-*.wandb'))
    assert len(files) == 1 and not (tmp_path / 'wandb').exists()
    losses = {}
    for record in _wandb_records(files[0]):
        if record.WhichOneof('record_type') == 'history':
            items = {item.key or '/'.join(item.nested_key): item.value_json for item in record.history.item}
            step = items.get('global_step') or items.get('_step')
            for key, value in items.items():
                if key.endswith('l_psnr'):
                    losses[int(float(step))] = float(value)
    assert sorted(losses) == [1, 2, 3]
    for it, value in losses.items():
        assert abs(value - float(logged[it]['l_psnr'])) <= 1e-3 * abs(value)
