"""The measurements of ``benchmarks/throughput.py`` (see its docstring): one training step and one evaluation
forward of ``MultiStageRestorationModel`` per switch set, their peak memory, and the LMDB data loader's rate."""
import contextlib
import ctypes
import gc
import io
import os
import time

import torch

from hinet_plugins.utils.nets import input_channels, last_output

SWITCHES = {
    'fp32': {},
    'tf32': {},  # a backend setting, applied by fp32_precision() around the measurement
    'bf16': {'amp': 'bf16'},
    'fp16': {'amp': 'fp16'},
    'channels_last': {'channels_last': True},
    'grad_checkpoint': {'train': {'grad_checkpoint': True}},
    'compile': {'train': {'compile': True}},
}


# ------------------------------------------------------------------------------------------------ measurement
class Memory:
    """Peak memory of a code region above what was in use when it started (bytes)."""

    def __init__(self, device):
        self.device = device
        self._libc = None
        if device.type == 'cpu':
            try:
                self._libc = ctypes.CDLL('libc.so.6')
            except OSError:
                pass

    @staticmethod
    def _status(key):
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return 0

    def start(self):
        gc.collect()
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        if self._libc is not None:
            self._libc.malloc_trim(0)
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # resets VmHWM to the current resident size
            self.ok = True
        except OSError:
            self.ok = False
        self.base = self._status('VmRSS:')

    def peak(self):
        if self.device.type == 'cuda':
            return torch.cuda.max_memory_allocated() - self.base
        return self._status('VmHWM:') - self.base if self.ok else float('nan')


@contextlib.contextmanager
def fp32_precision(tf32):
    """cuDNN convolutions and cuBLAS matmuls in TF32 (``tf32``) or IEEE fp32, restored afterwards."""
    targets = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    if all(hasattr(t, 'fp32_precision') for t in targets):  # torch >= 2.9: the legacy allow_tf32 flags must not mix
        saved = [t.fp32_precision for t in targets]
        for t in targets:
            t.fp32_precision = 'tf32' if tf32 else 'ieee'
        try:
            yield
        finally:
            for t, value in zip(targets, saved):
                t.fp32_precision = value
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def timed(fn, device):
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def merge(*changes):
    opt = {}
    for change in changes:
        for key, value in change.items():
            opt[key] = dict(opt.get(key, {}), **value) if isinstance(value, dict) else value
    return opt


def build_model(net_opt, switch_opt, device, workdir):
    from basicsr.models import build_model as bsr_build_model
    opt = merge({
        'name': 'throughput', 'model_type': 'MultiStageRestorationModel', 'scale': 1, 'is_train': True,
        'dist': False, 'rank': 0, 'world_size': 1, 'num_gpu': 1 if device.type == 'cuda' else 0,
        'network_g': dict(net_opt),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'models': workdir, 'training_states': workdir},
        'train': {'optim_g': {'type': 'AdamW', 'lr': 2e-4, 'weight_decay': 1e-4, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'TrueCosineAnnealingLR', 'T_max': 1000, 'eta_min': 1e-7},
                  'pixel_opt': {'type': 'PSNRLoss', 'loss_weight': 0.5, 'reduction': 'mean'}},
    }, switch_opt)
    return bsr_build_model(opt)


def io_channels(net, device):
    """(input, output) channels of a network (grey or dual-pixel presets differ from 3/3): the first conv's input
    channels, and the last stage output's channels from a 32x32 probe forward."""
    c_in = input_channels(net)
    with torch.no_grad():
        out = net(torch.rand(1, c_in, 32, 32, device=device))
    return c_in, last_output(out).shape[1]


def switch_options(switch, compile_backend=None):
    """Model options of a switch set ('bf16+channels_last+compile'); ``compile_backend`` replaces inductor."""
    opt = merge(*(SWITCHES[s] for s in switch.split('+')))
    if compile_backend and 'train' in opt and opt['train'].get('compile'):
        opt['train']['compile'] = {'backend': compile_backend}
    return opt


def measure(net_opt, switch, args, device, workdir):
    """{'train': s, 'train_mem': bytes, 'first': s, 'fwd': s, 'fwd_mem': bytes, 'note': str} for one switch set."""
    with fp32_precision('tf32' in switch.split('+')):
        res = _measure(net_opt, switch, args, device, workdir)
    # the model of _measure is out of scope now: free it (and its compiled graphs) before the next switch set
    if 'compile' in switch:
        torch._dynamo.reset()
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    if 'tf32' in switch.split('+') and device.type != 'cuda':
        res['note'] = (res['note'] + ' TF32 is a CUDA setting: fp32 here').strip()
    return res


def _measure(net_opt, switch, args, device, workdir):
    torch.manual_seed(0)
    model = build_model(net_opt, switch_options(switch, args.compile_backend), device, workdir)
    c_in, c_out = io_channels(model.net_g, device)
    lq = torch.rand(args.batch, c_in, args.size, args.size, device=device)
    model.feed_data({'lq': lq, 'gt': (lq[:, :c_out] * 0.9 + 0.05).clamp(0, 1)})
    res, mem = {'note': ''}, Memory(device)
    step = iter(range(1, 10 ** 9))
    res['first'] = timed(lambda: model.optimize_parameters(next(step)), device)
    if 'compile' in switch and model.compiled_net_g is None:
        res['note'] = 'compile failed: eager'
    for _ in range(args.warmup - 1):
        timed(lambda: model.optimize_parameters(next(step)), device)
    mem.start()
    res['train'] = min(timed(lambda: model.optimize_parameters(next(step)), device) for _ in range(args.repeats))
    res['train_mem'] = mem.peak()
    model.optimizer_g.zero_grad(set_to_none=True)
    if switch != 'grad_checkpoint':  # no grads in a forward-only pass: same as fp32
        net = model.eval_network()
        net.eval()
        fwd = net
        if 'compile' in switch:
            from hinet_plugins.models.speed import compile_network
            compiled = compile_network(net, model.speed.compile)
            if compiled is not None:
                fwd = lambda x: compiled(x)  # noqa: E731  (restore() tests ``net or ...``: no len() on compiled)

        def forward():
            with torch.no_grad(), model.test_context():
                model.output = model.restore(model.lq, fwd)
        try:
            for _ in range(args.warmup):
                timed(forward, device)
        except Exception as err:  # noqa: BLE001  (compiled inference failing is a result to report)
            res['note'] += f' fwd compile failed ({type(err).__name__})'
            fwd = net
            for _ in range(args.warmup):
                timed(forward, device)
        mem.start()
        res['fwd'] = min(timed(forward, device) for _ in range(args.repeats))
        res['fwd_mem'] = mem.peak()
    return res


# ------------------------------------------------------------------------------------------------ data loading
def loader_throughput(args, workers, tmp):
    """Images/s of basicsr's LMDB PairedImageDataset (+ flips, rotations) through its own dataloader builder."""
    from basicsr.data import build_dataloader, build_dataset
    from hinet_plugins.demo.data import TRAIN_PHOTOS, load_photo, make_demo_dataset
    patch = args.size + args.size // 4  # stored crops larger than gt_size, as in prepared SIDD/GoPro LMDBs
    max_side = max(512, 2 * patch)
    photos = tuple(p for p in TRAIN_PHOTOS if min(load_photo(p).shape[:2]) >= patch)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # writer's chatter
        info = make_demo_dataset(os.path.join(tmp, 'data'), patch=patch, stride=max(patch // 2, max_side // 4),
                                 max_side=max_side, train_photos=photos, val_photos=('chelsea',), val_max_side=64)
    ds_opt = {'name': 'bench', 'type': 'PairedImageDataset', 'phase': 'train', 'scale': 1,
              'dataroot_gt': info['train_gt_lmdb'], 'dataroot_lq': info['train_lq_lmdb'],
              'io_backend': {'type': 'lmdb'}, 'gt_size': args.size, 'use_hflip': True, 'use_rot': True,
              'use_shuffle': True, 'num_worker_per_gpu': workers, 'batch_size_per_gpu': args.batch,
              'persistent_workers': workers > 0, 'pin_memory': torch.cuda.is_available()}
    loader = build_dataloader(build_dataset(ds_opt), ds_opt, num_gpu=0, dist=False, seed=0)
    target = max(args.data_images, 4 * args.batch * max(workers, 1))
    seen, start = -1, None
    while seen < target:
        for batch in loader:
            if start is None:  # the first batch pays for the workers' start-up
                seen, start = 0, time.perf_counter()
                continue
            seen += batch['gt'].shape[0]
            if seen >= target:
                break
    return seen / (time.perf_counter() - start), info['train_count']
