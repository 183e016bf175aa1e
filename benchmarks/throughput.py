"""Training and inference throughput of every registered architecture, with each speed switch on and off.

    python benchmarks/throughput.py                          # CPU defaults: batch 1, 64x64, few repeats
    python benchmarks/throughput.py --batch 8 --size 256     # GPU (the defaults when CUDA is present)
    python benchmarks/throughput.py --archs HINet --switches fp32,bf16,bf16+channels_last+compile

What is measured, per architecture at its paper configuration and at 0.5x width, per switch set:
- train: one ``optimize_parameters`` step of ``MultiStageRestorationModel`` built from an options dict (the code
  path of real training: autocast, grad scaler, compile with fallback, checkpointing, PSNR loss, AdamW step);
- fwd: the evaluation forward (``restore`` under ``no_grad`` and the model's ``test_context``);
- peak memory of a step above what was held before it (CUDA: ``max_memory_allocated``; CPU: the process'
  peak resident set ``VmHWM`` after resetting it through ``/proc/self/clear_refs`` and trimming malloc's free
  lists); images/s = batch / fastest step time (best of ``--repeats``: on a shared machine, interference only
  ever adds time); ratios are against the plain fp32 run of the same network.
- "1st s": the first training step (compilation included for ``compile``).
The model compiles only the training forward (``train.compile``); the ``compile`` fwd column compiles the
evaluation network here, to show what compiled inference would give.

Architectures: every class that ``hinet_plugins.archs`` registers (TLC ``*Local`` builders are the same networks
at test time and are skipped). Paper configuration = the first ``COMPLEXITY_PRESETS`` entry of that type (else
the constructor defaults); 0.5x = a preset of that type labelled "0.5x", else every width argument halved
(``wf``, ``n_feat``, ``*feats``, ``width``, ``dim``, ``num_feat``, ``base_channels``).

Data loading: BasicSR's ``PairedImageDataset`` from a temporary LMDB (built from ``hinet_plugins.data.demo_data``
crops) with ``gt_size`` = ``--size``, flips and rotations, through basicsr's ``build_dataloader`` with
``--workers`` workers (default: ``datasets.train.num_worker_per_gpu`` of ``--opt``, else min(8, CPUs)); its
images/s is printed next to the fastest training consumption rate. On a CPU-only machine loader and training
compete for the same cores in a real run; here they are measured one after the other.
"""
import argparse
import contextlib
import ctypes
import gc
import importlib
import inspect
import io
import os
import pkgutil
import re
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hinet_plugins  # noqa: E402  (compat + registration)
from hinet_plugins import archs  # noqa: E402
from hinet_plugins.errors import ConfigError  # noqa: E402

SWITCHES = {
    'fp32': {},
    'bf16': {'amp': 'bf16'},
    'fp16': {'amp': 'fp16'},
    'channels_last': {'channels_last': True},
    'grad_checkpoint': {'train': {'grad_checkpoint': True}},
    'compile': {'train': {'compile': True}},
}
WIDTH_ARG = re.compile(r'^(wf|n_feat|width|dim|num_feat|base_channels)$|feats$')


# ------------------------------------------------------------------------------------------------ architectures
def registered_archs():
    from basicsr.utils.registry import ARCH_REGISTRY
    return sorted(name for name, obj in ARCH_REGISTRY
                  if inspect.isclass(obj) and obj.__module__.startswith(archs.__name__ + '.'))


def all_presets():
    found = []
    for info in sorted(pkgutil.iter_modules(archs.__path__), key=lambda m: m.name):
        found += getattr(importlib.import_module(f'{archs.__name__}.{info.name}'), 'COMPLEXITY_PRESETS', [])
    return found


def half_width(name, opt):
    from basicsr.utils.registry import ARCH_REGISTRY
    defaults = {k: p.default for k, p in inspect.signature(ARCH_REGISTRY.get(name).__init__).parameters.items()
                if isinstance(p.default, int) and not isinstance(p.default, bool)}
    full = dict(defaults, **{k: v for k, v in opt.items() if k != 'type'})
    halved = {k: max(1, v // 2) for k, v in full.items() if WIDTH_ARG.search(k) and isinstance(v, int)}
    return dict(opt, **halved) if halved else None


def configurations(names):
    """[(label, network options)]: paper configuration and 0.5x width of each architecture."""
    presets = all_presets()
    configs = []
    for name in names:
        own = [p for p in presets if p['opt']['type'] == name]
        paper = dict(own[0]['opt']) if own else {'type': name}
        half = next((dict(p['opt']) for p in own if '0.5x' in p['label']), None) or half_width(name, paper)
        configs.append((f'{name} 1x', paper))
        if half is not None:
            configs.append((f'{name} 0.5x', half))
    return configs


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


def measure(net_opt, switch, args, device, workdir):
    """{'train': s, 'train_mem': bytes, 'first': s, 'fwd': s, 'fwd_mem': bytes, 'note': str} for one switch set."""
    torch.manual_seed(0)
    model = build_model(net_opt, merge(*(SWITCHES[s] for s in switch.split('+'))), device, workdir)
    lq = torch.rand(args.batch, 3, args.size, args.size, device=device)
    model.feed_data({'lq': lq, 'gt': (lq * 0.9 + 0.05).clamp(0, 1)})
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
    del model
    if 'compile' in switch:
        torch._dynamo.reset()
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return res


# ------------------------------------------------------------------------------------------------ data loading
def loader_throughput(args, workers, tmp):
    """Images/s of basicsr's LMDB PairedImageDataset (+ flips, rotations) through its own dataloader builder."""
    from basicsr.data import build_dataloader, build_dataset
    from hinet_plugins.data.demo_data import TRAIN_PHOTOS, load_photo, make_demo_dataset
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


# ------------------------------------------------------------------------------------------------ report
def fmt_ratio(value, ref):
    return f'{value / ref:.2f}x' if value == value and ref == ref and ref else '-'


def report(results, switches, args, device):
    print(f'\n### Throughput on {device_name(device)}: batch {args.batch}, {args.size}x{args.size}, '
          f'best of {args.repeats} after {args.warmup} warm-up step(s)\n')
    print('| network | switch | train ms | train img/s | train speed-up | train peak MB | mem ratio | 1st s '
          '| fwd ms | fwd img/s | fwd speed-up | fwd peak MB | note |')
    print('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|')
    for label, rows in results.items():
        ref = rows.get('fp32')
        for switch in switches:
            if switch not in rows:
                continue
            r = rows[switch]
            if 'skipped' in r:
                print(f"| {label} | {switch} |" + ' |' * 10 + f" {r['skipped']} |")
                continue
            tr, fw = r['train'], r.get('fwd', float('nan'))
            mb = r['train_mem'] / 2 ** 20
            fmb = r.get('fwd_mem', float('nan')) / 2 ** 20
            print(f"| {label} | {switch} | {tr * 1e3:.0f} | {args.batch / tr:.2f} | "
                  f"{fmt_ratio(ref['train'], tr) if ref else '-'} | {mb:.0f} | "
                  f"{fmt_ratio(r['train_mem'], ref['train_mem']) if ref else '-'} | {r['first']:.1f} | "
                  + (f"{fw * 1e3:.0f} | {args.batch / fw:.2f} | {fmt_ratio(ref.get('fwd', float('nan')), fw)} | "
                     f'{fmb:.0f}' if fw == fw else '= fp32 (no grads) | | | ')
                  + f" | {r['note'].strip()} |")


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({torch.get_num_threads()} threads)'


def main():
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--device', default='cuda' if cuda else 'cpu', choices=['cpu', 'cuda'])
    p.add_argument('--batch', type=int, default=None, help='default: 8 on CUDA, 1 on CPU')
    p.add_argument('--size', type=int, default=None, help='square patch side; default: 256 on CUDA, 64 on CPU')
    p.add_argument('--repeats', type=int, default=None, help='timed steps (best of); default: 10 CUDA, 3 CPU')
    p.add_argument('--warmup', type=int, default=None, help='untimed steps first; default: 3 CUDA, 1 CPU')
    p.add_argument('--archs', default='all', help='comma-separated registered names, or all')
    p.add_argument('--widths', default='1x,0.5x', help='1x, 0.5x or both')
    p.add_argument('--switches', default=None,
                   help="comma-separated; '+' combines (e.g. bf16+channels_last+compile). Default: fp32, bf16, "
                        'fp16 (CUDA), channels_last, grad_checkpoint, compile (+ bf16+channels_last+compile on CUDA)')
    p.add_argument('--compile-archs', default=None,
                   help='architectures measured with compile: all or a comma list. Default: all on CUDA, '
                        'HINetSimple on CPU (the smallest network: inductor spends minutes per network and mode '
                        'compiling on a small CPU)')
    p.add_argument('--workers', type=int, default=None, help='data-loader workers (default: --opt, else min(8, CPUs))')
    p.add_argument('--opt', default=None, help='training option file to read num_worker_per_gpu from')
    p.add_argument('--data-images', type=int, default=128, help='images drawn to time the data loader')
    p.add_argument('--no-data', action='store_true', help='skip the data-loading measurement')
    args = p.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == 'cuda'
    args.batch = args.batch or (8 if on_gpu else 1)
    args.size = args.size or (256 if on_gpu else 64)
    args.repeats = args.repeats or (10 if on_gpu else 3)
    args.warmup = max(1, args.warmup or (3 if on_gpu else 1))
    switches = (args.switches.split(',') if args.switches else
                ['fp32', 'bf16'] + (['fp16'] if on_gpu else []) + ['channels_last', 'grad_checkpoint', 'compile']
                + (['bf16+channels_last+compile'] if on_gpu else []))
    for s in switches:
        unknown = [part for part in s.split('+') if part not in SWITCHES]
        if unknown:
            p.error(f'--switches: unknown {unknown}; choose from {sorted(SWITCHES)}')
    if 'fp32' not in switches:
        switches.insert(0, 'fp32')
    names = registered_archs() if args.archs == 'all' else args.archs.split(',')
    unknown = sorted(set(names) - set(registered_archs()))
    if unknown:
        p.error(f'--archs: {unknown} not registered; registered: {registered_archs()}')
    compile_archs = args.compile_archs or ('all' if on_gpu else 'HINetSimple')
    compile_archs = set(names) if compile_archs == 'all' else set(compile_archs.split(','))
    widths = args.widths.split(',')

    warnings.filterwarnings('ignore', message='.*TF32.*')
    results = {}
    with tempfile.TemporaryDirectory(prefix='throughput_') as tmp:
        t0 = time.time()
        for label, net_opt in configurations(names):
            if label.rsplit(' ', 1)[1] not in widths:
                continue
            arch = net_opt['type']
            results[label] = {}
            for switch in switches:
                if 'compile' in switch and arch not in compile_archs:
                    continue
                print(f'[{time.time() - t0:6.0f}s] {label} {net_opt} {switch}', file=sys.stderr, flush=True)
                try:
                    results[label][switch] = measure(net_opt, switch, args, device, tmp)
                except ConfigError as err:  # e.g. grad_checkpoint on an architecture that has not opted in
                    results[label][switch] = {'skipped': str(err).split(' (')[0]}
        report(results, switches, args, device)
        if not args.no_data:
            workers = args.workers
            if workers is None and args.opt:
                from hinet_plugins.options_check import load_yaml
                workers = load_yaml(args.opt)['datasets']['train'].get('num_worker_per_gpu')
            workers = min(8, os.cpu_count() or 1) if workers is None else workers
            rate, count = loader_throughput(args, workers, tmp)
            print(f'\n### Data loading vs training consumption\n\nBasicSR `PairedImageDataset`, LMDB ({count} '
                  f'crops), gt_size {args.size}, hflip + rot, batch {args.batch}, {workers} worker(s): '
                  f'**{rate:.1f} img/s**\n')
            print('| network | plain fp32 train img/s | fastest switch | its train img/s | loader / fastest |')
            print('|---|---:|---|---:|---:|')
            for label, rows in results.items():
                rows = {s: r for s, r in rows.items() if 'train' in r}
                fastest = min(rows, key=lambda s: rows[s]['train'])
                best = args.batch / rows[fastest]['train']
                print(f"| {label} | {args.batch / rows['fp32']['train']:.2f} | {fastest} | {best:.2f} | "
                      f'{rate / best:.1f}x |')
        print(f'\n(total {time.time() - t0:.0f} s; command: python benchmarks/throughput.py {" ".join(sys.argv[1:])})')


if __name__ == '__main__':
    main()
