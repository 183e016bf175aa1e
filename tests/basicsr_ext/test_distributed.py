"""Distributed training through the literal launcher: ``torchrun --nproc_per_node=2 basicsr/train.py ... --launcher
pytorch`` on CPU (gloo), compared with one process training on the doubled batch.

What is checked, per network: both ranks train (the logged loss is basicsr's average over ranks, and it matches the
single-process loss on the union of both ranks' batches only if both contributed), validation runs on rank 0 only,
every checkpoint file is written once, by rank 0 (an audit hook in a ``sitecustomize`` on PYTHONPATH records each
rename into place and each validation image folder, with the writer's RANK). For HINet the 2-rank run is also
stopped at iteration 4 and continued with ``--auto_resume`` (CPU map location, per-rank random states gathered into
the state, the sampler continuing inside the epoch): its iterations 5-6 must still match the single process.

Why the losses can match: ``EnlargedSampler`` gives rank r the positions r, r+2, ... of the same per-epoch
permutation that the single process reads in order, so both see the same 8 images per iteration; for MPRNet and
DRCNet, ``gt_size`` equals the crop size and there are no flips/rotations, so the samples are deterministic; for
HINet, random crops, flips and rotations are drawn in one DataLoader worker per process: they are seeded from
(seed, epoch, position in the permutation) (``basicsr_ext.resume``), so each sample gets the same draws on 2
ranks, on 1 process, and after the resume; DDP starts every rank from rank 0's
weights (seeded like the single process) and averages the gradients, which equals the gradient of the batch mean.
Tolerance: losses that are batch means (PSNR, Charbonnier, edge) agree up to float32 reduction order; measured:
identical to the 5 significant digits basicsr logs for HINet and MPRNet (4 iterations), checked at relative 2e-4.
Intra-CR is a ratio of batch means (d_pos / d_neg per VGG layer), so the mean over ranks of per-rank ratios is not
the ratio over the whole batch: measured 4.4e-5 relative for DRCNet + Intra-CR, checked at 1e-3.
"""
import os
import re
import shutil
import subprocess
import uuid

import pytest
import torch
from conftest import PY, REPO, base_options, free_port, launch_batch, logged_iterations, selected_items, write_options

from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY

from hinet_plugins.basicsr_ext import compat

_TRACE_HOOK = '''import os, sys
_trace = os.environ.get('HINET_TEST_TRACE')
if _trace:
    def _hook(event, args):
        if event == 'os.rename' and str(args[1]).endswith(('.pth', '.state')):
            line = 'save ' + os.path.basename(str(args[1]))
        elif event == 'os.mkdir' and '/visualization/' in str(args[0]):
            line = 'val ' + os.path.basename(str(args[0]))
        else:
            return
        with open(_trace, 'a') as f:
            f.write(os.environ.get('RANK', '-') + ' ' + line + '\\n')
    sys.addaudithook(_hook)
'''


@pytest.fixture(scope='module')
def vgg19_file(tmp_path_factory):
    """Random torchvision-vgg19 weights for Intra-CR (only conv1_1..conv3_1 are used; the rest is stored as a
    broadcast zero, which keeps the file small). Never downloaded."""
    from torchvision.models import vgg19
    with torch.device('meta'):
        shapes = {k: v.shape for k, v in vgg19(weights=None).state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(s, generator=gen) * 0.1 if k.startswith('features.') and int(k.split('.')[1]) < 12
                 else torch.zeros(1).expand(s)) for k, s in shapes.items()}
    path = str(tmp_path_factory.mktemp('vgg') / 'vgg19.pth')
    torch.save(state, path)
    return path


CASES = {
    'HINet': ({'type': 'HINet', 'wf': 8, 'depth': 3}, None, 2e-4),
    'MPRNet': ({'type': 'MPRNet', 'n_feat': 8, 'scale_unetfeats': 4, 'scale_orsnetfeats': 4, 'num_cab': 1},
               [{'type': 'CharbonnierLoss', 'eps': 1e-3}, {'type': 'EdgeLoss', 'loss_weight': 0.05}], 2e-4),
    'DRCNet': ({'type': 'DRCNet', 'wf': 8, 'depth': 3}, [{'type': 'IntraCRLoss', 'vgg_weights': 'VGG'}], 1e-3),
}


def unregistered(arch):
    """The network and loss types of ``CASES[arch]`` that this checkout does not register."""
    network, losses, _ = CASES[arch]
    return [spec['type'] for spec in [network] + (losses or [])
            if spec['type'] not in (ARCH_REGISTRY if spec is network else LOSS_REGISTRY)]


def schedule(arch):
    """(resumed?, total iterations): HINet also stops the 2-rank run at 4 and resumes it (--auto_resume) to 6."""
    return arch == 'HINet', 6 if arch == 'HINet' else 4


def case_options(tiny_data, vgg19_file, arch, folder):
    """The option files of one case: {'name': run name, 'dist': 2 ranks x 4, 'single': 1 process x 8}."""
    network, losses, _ = CASES[arch]
    losses = [dict(s, vgg_weights=vgg19_file) if 'vgg_weights' in s else s for s in losses or []]
    name = f'pytest_dist_{arch}_{uuid.uuid4().hex[:8]}'
    resume, total = schedule(arch)
    opts = {'name': name}
    for run, batch in (('dist', 4), ('single', 8)):
        opt = base_options(tiny_data, name=f'{name}_{run}', network=network, total_iter=total)
        opt['datasets']['train'].update(gt_size=64, use_hflip=False, use_rot=False, batch_size_per_gpu=batch)
        if resume:  # random crops, flips and rotations, drawn in a DataLoader worker
            opt['datasets']['train'].update(gt_size=48, use_hflip=True, use_rot=True, num_worker_per_gpu=1)
        if losses:
            del opt['train']['pixel_opt']
            opt['train']['losses'] = losses
        opt['logger']['save_checkpoint_freq'] = 2
        opt['val'].update(val_freq=4, save_img=True, suffix=None)
        opts[run] = write_options(opt, folder / f'{run}.yml')
    return opts


TORCHRUN_TEST = 'test_torchrun_two_ranks_on_cpu_matches_doubled_batch'


@pytest.fixture(scope='module')
def single_runs(request, tiny_data, vgg19_file, tmp_path_factory):
    """The single-process references of the selected cases (``python basicsr/train.py -opt single.yml`` from the
    repository root, one thread), all in one interpreter (``launch_batch``: one start-up instead of one per case),
    before any 2-rank run: {arch: (option files, completed run)}; their experiment folders are removed afterwards."""
    selected = [item.callspec.params['arch'] for item in selected_items(request) if item.originalname == TORCHRUN_TEST]
    cases = {}
    for arch in selected:
        if not unregistered(arch):
            cases[arch] = case_options(tiny_data, vgg19_file, arch, tmp_path_factory.mktemp(f'dist_{arch}'))
    try:
        done = launch_batch([(['basicsr/train.py', '-opt', opts['single']], REPO) for opts in cases.values()],
                            tmp_path_factory.mktemp('single_runs'), timeout=500 * max(len(cases), 1),
                            env_extra={'OMP_NUM_THREADS': '1'}) if cases else []
        yield {arch: (cases[arch], proc) for arch, proc in zip(cases, done)}
    finally:
        for opts in cases.values():
            shutil.rmtree(os.path.join(REPO, 'experiments', f"{opts['name']}_single"), ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize('arch', list(CASES))
def test_torchrun_two_ranks_on_cpu_matches_doubled_batch(tmp_path, single_runs, arch):
    rtol = CASES[arch][2]
    if unregistered(arch):
        pytest.skip(f"{unregistered(arch)[0]} is not registered (yet) in this checkout")
    # the single process on the doubled batch ran beforehand (``single_runs``, one interpreter for every case)
    opts, single = single_runs[arch]
    name = opts['name']
    resume, total = schedule(arch)

    hook_dir = tmp_path / 'hook'
    hook_dir.mkdir()
    (hook_dir / 'sitecustomize.py').write_text(_TRACE_HOOK)
    trace = tmp_path / 'trace.txt'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', HINET_TEST_TRACE=str(trace),
               PYTHONPATH=str(hook_dir))
    env.pop('BASICSR_DIST_BACKEND', None)
    def torchrun(*flags):
        cmd = [PY, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
               'basicsr/train.py', '-opt', opts['dist'], '--launcher', 'pytorch', *flags]
        return subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=500)

    single_out = single.stdout
    try:
        dists = [torchrun('--force_yml', 'train:total_iter=4') if resume else torchrun()]
        if resume and dists[0].returncode == 0:
            dists.append(torchrun('--auto_resume'))
        exp_dir = os.path.join(REPO, 'experiments', f'{name}_dist')
        log = ''.join(open(os.path.join(exp_dir, f)).read() for f in sorted(os.listdir(exp_dir))
                      if f.startswith('train_') and f.endswith('.log'))
    finally:
        for run in ('dist', 'single'):
            shutil.rmtree(os.path.join(REPO, 'experiments', f'{name}_{run}'), ignore_errors=True)
    for dist in dists:
        assert dist.returncode == 0, dist.stdout[-5000:]
        assert 'Traceback' not in dist.stdout
    assert single.returncode == 0, single_out[-5000:]
    assert 'World size (gpu number): 2' in log and 'Batch size per gpu: 4' in log

    events = open(trace).read().split('\n')
    saves = sorted(e for e in events if ' save ' in e)
    expected = ['net_g_2.pth', 'net_g_4.pth', 'net_g_latest.pth', '2.state', '4.state']
    if resume:
        expected += ['net_g_6.pth', '6.state', 'net_g_latest.pth']
        assert 'Resuming training from epoch: 0, iter: 4.' in log and 'skipping its 4 batch(es)' in log
    assert saves == sorted(f'0 save {f}' for f in expected), saves  # each file once per save, by rank 0
    vals = [e for e in events if ' val ' in e]
    assert vals == ['0 val chelsea'] * (3 if resume else 2), vals  # at 4 and after each run; rank 0 only
    assert len(re.findall(r'Validation tiny_val', log)) == len(vals)

    got, want = logged_iterations(log), logged_iterations(single_out)
    assert sorted(got) == sorted(want) == list(range(1, total + 1))
    worst = 0.0
    for it in want:
        terms = [k for k in want[it] if k.startswith('l_')]
        assert terms and sorted(terms) == sorted(k for k in got[it] if k.startswith('l_'))
        for k in terms:
            a, b = float(got[it][k]), float(want[it][k])
            worst = max(worst, abs(a - b) / max(abs(b), 1e-3))
            assert abs(a - b) <= rtol * max(abs(b), 1e-3), (arch, it, k, a, b)
    print(f'{arch}: 2 ranks x 4 vs 1 x 8, largest relative loss difference over {total} iterations: {worst:.1e}')


@pytest.mark.slow
def test_torch_distributed_launch_command_of_the_release_readmes(tiny_data, tmp_path):
    """``python -m torch.distributed.launch --nproc_per_node=2 --master_port=P basicsr/train.py -opt ... --launcher
    pytorch`` (the HINet/DRCNet READMEs' command). Today's launcher passes ``--local-rank=N``, which basicsr 1.4.2's
    parser rejected (``run_options.command_line`` accepts both spellings); both ranks must train (gloo on CPU)."""
    name = f'pytest_dlaunch_{uuid.uuid4().hex[:8]}'
    opt = base_options(tiny_data, name=name, total_iter=2)
    opt['datasets']['train'].update(batch_size_per_gpu=2, gt_size=32)
    opt_path = write_options(opt, tmp_path / 'opt.yml')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    env.pop('BASICSR_DIST_BACKEND', None)
    cmd = [PY, '-m', 'torch.distributed.launch', '--nproc_per_node=2', f'--master_port={free_port()}',
           'basicsr/train.py', '-opt', opt_path, '--launcher', 'pytorch']
    exp_dir = os.path.join(REPO, 'experiments', name)
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=500)
        log = ''.join(open(os.path.join(exp_dir, f)).read() for f in sorted(os.listdir(exp_dir))
                      if f.startswith('train_') and f.endswith('.log')) if os.path.isdir(exp_dir) else ''
        models = sorted(os.listdir(os.path.join(exp_dir, 'models'))) if os.path.isdir(exp_dir) else []
    finally:
        shutil.rmtree(exp_dir, ignore_errors=True)
    assert proc.returncode == 0 and 'Traceback' not in proc.stdout, proc.stdout[-5000:]
    assert 'unrecognized arguments' not in proc.stdout
    assert 'World size (gpu number): 2' in log and sorted(logged_iterations(log)) == [1, 2]
    assert models == ['net_g_2.pth', 'net_g_latest.pth']


# ---------------------------------------------------------------------------------------------- backend choice
@pytest.mark.parametrize('cuda, expected', [(True, 'nccl'), (False, 'gloo')])
def test_backend_follows_the_device(monkeypatch, cuda, expected):
    import torch.distributed as dist
    import torch.multiprocessing as mp
    monkeypatch.delenv('BASICSR_DIST_BACKEND', raising=False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2 if cuda else 0)
    calls = {}
    monkeypatch.setattr(torch.cuda, 'set_device', lambda d: calls.setdefault('device', d))
    monkeypatch.setattr(mp, 'get_start_method', lambda allow_none=False: 'fork')
    monkeypatch.setattr(dist, 'init_process_group', lambda backend=None, **kw: calls.setdefault('backend', backend))
    monkeypatch.setenv('RANK', '3')
    monkeypatch.setenv('LOCAL_RANK', '1')
    assert compat.dist_backend() == expected
    import basicsr.utils.options as bsr_options
    bsr_options.init_dist('pytorch')  # the reference basicsr's parse_options calls
    assert calls['backend'] == expected
    assert calls.get('device') == (1 if cuda else None)  # LOCAL_RANK % device_count; no CUDA call on CPU
    monkeypatch.setenv('BASICSR_DIST_BACKEND', 'gloo')
    assert compat.dist_backend() == 'gloo'  # explicit override wins


# ---------------------------------------------------------------------------------------------- DDP wrapping
@pytest.mark.parametrize('device', ['cpu', 'cuda'])
def test_ddp_wrapping_names_a_cuda_device_only_on_cuda(monkeypatch, device):
    """basicsr's ``BaseModel.model_to_device`` is ``basicsr_ext.compat``'s (every model type wraps that way), and our
    model's own hook (the speed switches) prepares the net before it, through ``super()``."""
    import types

    import torch.nn.parallel
    from basicsr.models.base_model import BaseModel

    from hinet_plugins.models.restoration_model import MultiStageRestorationModel
    from hinet_plugins.models.speed import SpeedSwitchesMixin
    assert BaseModel.model_to_device is compat.model_to_device
    assert MultiStageRestorationModel.model_to_device is SpeedSwitchesMixin.model_to_device
    mro = MultiStageRestorationModel.__mro__
    assert mro.index(SpeedSwitchesMixin) < mro.index(BaseModel)

    wrapped = {}
    monkeypatch.setattr(torch.nn.parallel, 'DistributedDataParallel',
                        lambda net, device_ids, find_unused_parameters: wrapped.update(
                            device_ids=device_ids, find_unused=find_unused_parameters) or net)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 1)
    net = torch.nn.Conv2d(1, 1, 1)
    monkeypatch.setattr(net, 'to', lambda device: net)
    model = types.SimpleNamespace(device=torch.device(device), opt={'dist': True, 'num_gpu': 1,
                                                                     'find_unused_parameters': True})
    assert compat.model_to_device(model, net) is net
    assert wrapped == {'device_ids': [1] if device == 'cuda' else None, 'find_unused': True}
