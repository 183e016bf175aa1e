"""The CUDA paths, on a GPU (every test here is marked ``cuda`` and skipped without one; ``bash
benchmarks/gpu_suite.sh`` runs them): fp16 with its grad scaler through ``--auto_resume``, bf16 / channels_last /
``train.compile`` against fp32, a one-process nccl group through torchrun and the literal launcher, TLC on CUDA
tensors against the CPU, inference with ``--amp fp16``.

Readings of "equal" chosen here. Launched trainings load a ``sitecustomize`` (first on PYTHONPATH, as in
tests/basicsr_ext/test_distributed.py) that makes a run reproducible: IEEE fp32 for cuDNN convolutions (torch's default is
TF32), deterministic algorithms, and cuDNN's benchmark mode kept off (basicsr's ``train_pipeline`` switches it on,
and its algorithm choice may differ between two runs). Under it a resumed fp16 run logs exactly the losses of the
uninterrupted one (basicsr's 5 significant digits), as on the CPU (tests/basicsr_ext/test_resume.py), and one nccl rank equals
one process. The same hook records what the process did (dist backend, DDP ``device_ids``, CUDA memory peak), so
the tests can tell that the GPU path ran. channels_last and compile change summation order only: loss within
2e-3, PSNR within 5e-3 dB of fp32; bf16 within 0.05 and not equal. TLC: CUDA vs CPU within 1e-4 of the output's
scale (CPU fp32 vs float64 measured at most 5e-6 on these nets) and far from the unconverted output.
"""
import contextlib
import copy
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import uuid

import cv2
import numpy as np
import pytest
import torch
from conftest import PY, REPO, base_options, write_options
from conftest import free_port, logged_iterations

from basicsr.archs import build_network

from hinet_plugins.archs import specs

from hinet_plugins import tlc
from hinet_plugins.tlc import local_ops as L

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]

NET = {'type': 'HINet', 'wf': 8, 'depth': 3}
HOOK = '''import atexit, json, os
if os.environ.get('HINET_CUDA_REPORT'):
    import torch
    import torch.backends.cudnn
    import torch.distributed as _dist
    from torch.nn.parallel import DistributedDataParallel as _DDP
    _info = {}
    if hasattr(torch.backends.cudnn, 'conv') and hasattr(torch.backends.cudnn.conv, 'fp32_precision'):
        torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = 'ieee'
    else:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    type(torch.backends.cudnn).benchmark = property(lambda self: False, lambda self, value: None)
    _init_pg, _init_ddp = _dist.init_process_group, _DDP.__init__
    def _record_pg(*args, **kwargs):
        _info['init_backend'] = kwargs.get('backend', args[0] if args else None)
        return _init_pg(*args, **kwargs)
    def _record_ddp(self, module, *args, **kwargs):
        _info['ddp_device_ids'] = kwargs.get('device_ids', args[0] if args else None)
        _info['ddp_module_device'] = str(next(module.parameters()).device)
        _init_ddp(self, module, *args, **kwargs)
    _dist.init_process_group, _DDP.__init__ = _record_pg, _record_ddp
    def _dump():
        if _dist.is_available() and _dist.is_initialized():
            _info['backend'] = _dist.get_backend()
        _info['cuda_peak_bytes'] = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else 0
        with open(os.environ['HINET_CUDA_REPORT'] + '.' + os.environ.get('RANK', 'main') + '.json', 'w') as f:
            json.dump(_info, f)
    atexit.register(_dump)
'''


@pytest.fixture(scope='module')
def hook_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp('cuda_hook')
    (path / 'sitecustomize.py').write_text(HOOK)
    return path


def launch(args, hook_dir, report, cwd=REPO):
    """Start a training process with the reproducibility hook; it writes ``<report>.<RANK|main>.json``."""
    extra = [os.environ['PYTHONPATH']] if os.environ.get('PYTHONPATH') else []  # the GPU suite's site folder
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='2', CUBLAS_WORKSPACE_CONFIG=':4096:8',
               PYTHONPATH=os.pathsep.join([str(hook_dir), REPO] + extra), HINET_CUDA_REPORT=str(report))
    env.pop('BASICSR_DIST_BACKEND', None)
    return subprocess.Popen([str(a) for a in args], cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=600):
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, out[-5000:]
    assert 'Traceback' not in out, out[-5000:]
    return out


def recorded(report, rank='main'):
    with open(f'{report}.{rank}.json') as f:
        return json.load(f)


def cuda_options(data, name, total_iter, **top):
    opt = base_options(data, name=name, network=NET, total_iter=total_iter)
    opt['num_gpu'] = 1
    opt.update(top)
    return opt


@contextlib.contextmanager
def experiments(*names):
    """Remove ``experiments/<name>`` of the literal launcher's runs (under the repository) afterwards."""
    try:
        yield [os.path.join(REPO, 'experiments', n) for n in names]
    finally:
        for n in names:
            shutil.rmtree(os.path.join(REPO, 'experiments', n), ignore_errors=True)


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.slow
def test_fp16_grad_scaler_training_resumes_with_identical_losses(tiny_data, tmp_path, hook_dir):
    """``python basicsr/train.py`` with ``amp: fp16``: 6 iterations straight vs 4 + ``--auto_resume`` to 6."""
    tag = uuid.uuid4().hex[:8]
    names = (f'pytest_cuda_fp16_{tag}', f'pytest_cuda_fp16_resumed_{tag}')
    paths = []
    for name in names:
        opt = cuda_options(tiny_data, name, total_iter=6, amp='fp16')
        opt['logger']['save_checkpoint_freq'] = 2
        paths.append(write_options(opt, tmp_path / f'{name}.yml'))
    with experiments(*names) as (straight_dir, resumed_dir):
        straight = launch([PY, 'basicsr/train.py', '-opt', paths[0]], hook_dir, tmp_path / 'straight')
        first = launch([PY, 'basicsr/train.py', '-opt', paths[1], '--force_yml', 'train:total_iter=4'], hook_dir,
                       tmp_path / 'first')
        out_straight, _ = finish(straight), finish(first)
        out_resumed = finish(launch([PY, 'basicsr/train.py', '-opt', paths[1], '--auto_resume'], hook_dir,
                                    tmp_path / 'resumed'))
        states = [torch.load(os.path.join(d, 'training_states', '6.state'), map_location='cpu', weights_only=False)
                  for d in (straight_dir, resumed_dir)]
        weights = [torch.load(os.path.join(d, 'models', 'net_g_6.pth'), map_location='cpu', weights_only=True)
                   ['params'] for d in (straight_dir, resumed_dir)]
    assert 'amp=fp16 (eval fp16)' in out_straight
    assert 'Resuming training from epoch: 0, iter: 4.' in out_resumed
    want, got = logged_iterations(out_straight), logged_iterations(out_resumed)
    assert sorted(want) == [1, 2, 3, 4, 5, 6] and sorted(got) == [5, 6]
    for it in (5, 6):
        assert got[it] == want[it], (it, got[it], want[it])
    for state in states:
        assert 'grad_scaler' in state and 'cuda' in state['rng'][0]  # scaler and CUDA random states are kept
    assert states[0]['grad_scaler'] == states[1]['grad_scaler']
    assert all(torch.allclose(weights[0][k], weights[1][k], rtol=1e-5, atol=1e-7) for k in weights[0])
    assert all(recorded(tmp_path / r)['cuda_peak_bytes'] > 0 for r in ('straight', 'first', 'resumed'))


SWITCH_RUNS = {'fp32': {}, 'bf16': {'amp': 'bf16'}, 'channels_last': {'channels_last': True},
               'compile': {'train': {'compile': True}}}
ITER = re.compile(r'iter:\s*([\d,]+), lr:.*\]\s*l_psnr: (\S+)')
VAL = re.compile(r'Validation (\S+)\s*\n\s*# psnr: (\S+)')


@pytest.fixture(scope='module')
def switch_runs(tiny_data, tmp_path_factory, hook_dir):
    """{name: (log, {iteration: loss}, {dataset: psnr}, recorded)}: the four runs, in parallel on the GPU."""
    root = tmp_path_factory.mktemp('cuda_switches')
    procs = {}
    for name, change in SWITCH_RUNS.items():
        opt = cuda_options(tiny_data, name, total_iter=4, **{k: v for k, v in change.items() if k != 'train'})
        opt['train'].update(change.get('train', {}))
        opt['val']['tlc'] = {'train_size': 48, 'compare': True}
        path = write_options(opt, root / name / f'{name}.yml')
        procs[name] = launch([PY, '-m', 'hinet_plugins.train', '-opt', path], hook_dir, root / name / 'report',
                             cwd=root / name)
    runs = {}
    for name, proc in procs.items():
        out = finish(proc)
        losses = {int(i.replace(',', '')): float(v) for i, v in ITER.findall(out)}
        runs[name] = (out, losses, {k: float(v) for k, v in VAL.findall(out)}, recorded(root / name / 'report'))
    return runs


def _compare(runs, name, loss_tol, psnr_tol):
    _, ref_losses, ref_psnr, _ = runs['fp32']
    out, losses, psnr, info = runs[name]
    assert info['cuda_peak_bytes'] > 0
    assert sorted(losses) == sorted(ref_losses) == [1, 2, 3, 4]
    assert set(psnr) == set(ref_psnr) == {'tiny_val', 'tiny_val_tlc'}
    for i in ref_losses:
        assert abs(losses[i] - ref_losses[i]) <= loss_tol, (name, i, losses[i], ref_losses[i])
    for ds in ref_psnr:
        assert abs(psnr[ds] - ref_psnr[ds]) <= psnr_tol, (name, ds, psnr[ds], ref_psnr[ds])
    return [losses[i] - ref_losses[i] for i in ref_losses] + [psnr[d] - ref_psnr[d] for d in psnr]


@pytest.mark.slow
def test_bf16_on_cuda_is_close_to_fp32_and_acts(switch_runs):
    assert 'amp=bf16 (eval bf16)' in switch_runs['bf16'][0]
    assert any(d != 0 for d in _compare(switch_runs, 'bf16', loss_tol=0.05, psnr_tol=0.05))


@pytest.mark.slow
def test_channels_last_on_cuda_reproduces_fp32(switch_runs):
    assert 'channels_last=True' in switch_runs['channels_last'][0]
    _compare(switch_runs, 'channels_last', loss_tol=2e-3, psnr_tol=5e-3)


@pytest.mark.slow
def test_compile_on_cuda_compiles_and_reproduces_fp32(switch_runs):
    out = switch_runs['compile'][0]
    assert 'first compiled training step done' in out and 'torch.compile failed' not in out
    _compare(switch_runs, 'compile', loss_tol=2e-3, psnr_tol=5e-3)


@pytest.mark.slow
def test_one_process_nccl_group_through_torchrun_equals_one_process(tiny_data, tmp_path, hook_dir):
    """``torchrun --nproc_per_node=1 basicsr/train.py -opt ... --launcher pytorch``: nccl, DDP on cuda:0 with
    ``device_ids``, and the same losses as ``python basicsr/train.py`` on the same options."""
    tag = uuid.uuid4().hex[:8]
    names = (f'pytest_cuda_nccl_{tag}', f'pytest_cuda_single_{tag}')
    paths = [write_options(cuda_options(tiny_data, n, total_iter=4), tmp_path / f'{n}.yml') for n in names]
    with experiments(*names) as (dist_dir, _):
        dist = launch([PY, '-m', 'torch.distributed.run', '--nproc_per_node=1', f'--master_port={free_port()}',
                       'basicsr/train.py', '-opt', paths[0], '--launcher', 'pytorch'], hook_dir, tmp_path / 'dist')
        single = launch([PY, 'basicsr/train.py', '-opt', paths[1]], hook_dir, tmp_path / 'single')
        out_dist, out_single = finish(dist), finish(single)
        log = ''.join(open(os.path.join(dist_dir, f)).read() for f in sorted(os.listdir(dist_dir))
                      if f.startswith('train_') and f.endswith('.log'))
        ckpt = torch.load(os.path.join(dist_dir, 'models', 'net_g_latest.pth'), map_location='cpu', weights_only=True)
    info = recorded(tmp_path / 'dist', rank='0')
    assert info['init_backend'] == 'nccl' and info.get('backend', 'nccl') == 'nccl'
    assert info['ddp_device_ids'] == [0] and info['ddp_module_device'] == 'cuda:0'
    assert 'World size (gpu number): 1' in log
    got, want = logged_iterations(out_dist), logged_iterations(out_single)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]
    for it in want:
        a, b = float(got[it]['l_psnr']), float(want[it]['l_psnr'])
        assert abs(a - b) <= 1e-5 * abs(b), (it, a, b)
    assert not any(k.startswith('module.') for k in ckpt['params'])
    build_network(dict(NET)).load_state_dict(ckpt['params'], strict=True)


# ------------------------------------------------------------------------------------------------ TLC
@contextlib.contextmanager
def ieee_fp32():
    targets = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    saved = [t.fp32_precision for t in targets]
    for t in targets:
        t.fp32_precision = 'ieee'
    try:
        yield
    finally:
        for t, value in zip(targets, saved):
            t.fp32_precision = value


def _last(out):
    return out[-1] if isinstance(out, (list, tuple)) else out


@pytest.mark.parametrize('name', list(specs()))
def test_tlc_on_cuda_equals_cpu(name):
    """Exact and fast TLC of every described network (tiny configuration) on CUDA and on the CPU: same windows,
    same output."""
    torch.manual_seed(0)
    cpu = build_network(specs()[name].options()).eval()
    with torch.no_grad():  # random weights everywhere (NAFNet's layer scales start at zero: TLC would show nothing)
        for p in cpu.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.rand(1, 3, 72, 104)
    with ieee_fp32(), torch.no_grad():
        plain = _last(gpu(x.cuda())).cpu()
        for fast in (False, True):
            on_cpu, on_gpu = (tlc.convert(n, 32, fast_imp=fast, warn=False) for n in (cpu, gpu))
            assert on_cpu.layers and on_cpu.windows == on_gpu.windows
            want, got = _last(cpu(x)), _last(gpu(x.cuda())).cpu()
            on_cpu.restore()
            on_gpu.restore()
            err = (got - want).abs().max().item()
            assert err <= 1e-4 * max(1.0, want.abs().max().item()), (name, fast, err)
            assert (got - plain).abs().max().item() > max(20 * err, 1e-5), (name, fast, 'TLC changed nothing')


def test_local_ops_on_cuda_equal_float64_cpu():
    """Each local op on a CUDA float32 map with a large mean vs the same op in float64 on the CPU."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 90, 130, dtype=torch.float64) * 0.5 + 40
    w, b = torch.rand(8, dtype=torch.float64) + 0.5, torch.rand(8, dtype=torch.float64)
    g = x.float().cuda()
    ops = {
        'avg': lambda t, wt, bs: L.local_avg_pool(t, (33, 47)),
        'avg strided': lambda t, wt, bs: L.local_avg_pool(t, (33, 47), (3, 4)),
        'max': lambda t, wt, bs: L.local_max_pool(t, (33, 47)),
        'instance norm': lambda t, wt, bs: L.local_instance_norm(t, (33, 47), wt, bs),
        'instance norm strided': lambda t, wt, bs: L.local_instance_norm(t, (33, 47), wt, bs, stride=(3, 4)),
        'group norm': lambda t, wt, bs: L.local_group_norm(t, 4, (33, 47), wt, bs),
    }
    for name, op in ops.items():
        want = op(x, w, b)
        got = op(g, w.float().cuda(), b.float().cuda()).double().cpu()
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err < 2e-5, (name, err)


# ------------------------------------------------------------------------------------------------ inference
def test_inference_with_amp_fp16_on_cuda(tmp_path):
    """``scripts/inference.py --device cuda --amp fp16`` on a 16-bit image: close to the CPU, and not the fp32
    CUDA output (autocast acted)."""
    spec = importlib.util.spec_from_file_location('inference_script', os.path.join(REPO, 'scripts', 'inference.py'))
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    torch.manual_seed(0)
    net = build_network(dict(NET))
    torch.save({'params': net.state_dict()}, tmp_path / 'net.pth')
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 65536, (12, 15, 3)).astype(np.uint16), (90, 70), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / 'in.png'), img)
    outs = {}
    for run, extra in (('cpu', ['--device', 'cpu']), ('cuda', ['--device', 'cuda']),
                       ('fp16', ['--device', 'cuda', '--amp', 'fp16'])):
        buf = io.StringIO()
        with ieee_fp32(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = inference.main(['-i', str(tmp_path / 'in.png'), '-o', str(tmp_path / run), '--arch', 'HINet',
                                   '--arch-opt', 'wf=8', '--arch-opt', 'depth=3', '--checkpoint',
                                   str(tmp_path / 'net.pth'), *extra])
        assert code == 0, buf.getvalue()
        if run == 'fp16':
            assert '(amp fp16)' in buf.getvalue()
        outs[run] = cv2.imread(str(tmp_path / run / 'in.png'), cv2.IMREAD_UNCHANGED).astype(np.float64) / 65535
    assert outs['fp16'].shape == img.shape
    assert np.abs(outs['cuda'] - outs['cpu']).max() <= 1e-4
    diff = np.abs(outs['fp16'] - outs['cpu'])
    assert diff.mean() <= 2e-3 and diff.max() <= 2e-2, (diff.mean(), diff.max())
    assert not np.array_equal(outs['fp16'], outs['cuda'])


def test_auto_tile_on_cuda_fits_the_budget_and_halves_after_out_of_memory():
    """``Restorer(tile='auto')`` on CUDA: with a 512 MB budget a 2048x2048 image is tiled and the memory it adds
    (``max_memory_allocated``) stays within the budget; with a budget far above the GPU's memory the whole image
    is tried, runs out of memory, and the tile is halved until it fits (said on stderr and in ``last_plan``)."""
    from hinet_plugins.restore import Restorer
    torch.manual_seed(0)
    net = build_network(dict(NET, wf=32)).eval().cuda()  # ~ 2 KB per pixel: the large image below stays < 16k
    img = np.random.default_rng(0).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    r = Restorer(net, 'cuda', tile='auto', memory_budget='512MB', progress=False)
    r(img[:256, :256])  # measures the network (and pays the one-off costs) before the peak is reset
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = r(img)
    added = torch.cuda.max_memory_allocated() - base
    assert r.last_plan['tile'] is not None and out.shape == img.shape
    assert added <= 512 * 10**6, (added, r.last_plan)
    # a side whose whole-image forward needs about twice the GPU's memory
    per_pixel = r._costs[(3, 1)][1]
    total = torch.cuda.get_device_properties(0).total_memory
    side = min(int((2 * total / per_pixel) ** 0.5) // 64 * 64, 24576)
    big = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    r.memory_budget = 100 * total
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        out = r(big)
    assert out.shape == big.shape and r.last_plan['retries'], (side, r.last_plan)
    assert r.last_plan['retries'][0].startswith(f'CUDA out of memory with the whole image ({side}x{side}); '
                                                f'retrying with tile {side // 2 // 32 * 32}'), r.last_plan
    assert 'hinet_plugins: CUDA out of memory with the whole image' in buf.getvalue()
