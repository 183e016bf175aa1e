"""TLC overhead: forward without TLC, with exact TLC and with fast TLC; local ops alone vs window size.

    python benchmarks/tlc_overhead.py                          # CPU default: HINet 1x and Restormer at 360x640
    python benchmarks/tlc_overhead.py --archs HINet,MPRNet --sizes 720x1280 --device cuda --repeats 5

Prints four markdown tables:
Times are CPU process time on the CPU (summed over threads; robust to other jobs on a shared machine) and wall
time with CUDA synchronisation on a GPU.
1. Each local op alone on a (1, C, H, W) map (default 1x96x368x640) at windows 64..512, next to the same op done
   the TLC release's way (2-D prefix sums of the whole map, four-corner window sums of the valid positions, then
   replicate padding; variance as E[x^2] - E[x]^2), written here from that description: ours / release per window
   (target <= 0.5), and how close ours is to the memory-bandwidth bound: the op must read its input once and
   write its output once, so "bound" = that many bytes moved at the copy bandwidth measured in the same run
   (``x.clone()``); "x bound" = our time / that time (1.0 = as fast as a copy).
2. Error of the fast mode vs the exact one on natural-image features (skimage photos resized to 720x1280 and their
   horizontal gradients), window 384 and 192.
3. Forward time per architecture and input size for the three modes and their ratios (targets: exact <= 1.10,
   fast <= 1.03). "module estimate" = (time inside the local modules - time inside the global ones they replace)
   / forward time, measured with hooks in the same runs (CPU only): less sensitive to other load on the machine
   than the end-to-end ratio of two separate forwards.
Each network runs its first described configuration (``hinet_plugins.archs.specs()``, ``ArchSpec.configs``):
HINet 1x is the SIDD setting (HIN in every encoder level, the most InstanceNorms), Restormer the official one (its
44 transposed attentions become local); ``--arch-opt key=value`` changes it (e.g. ``hin_position_left=3``).
"""

import argparse
import copy
import os
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hinet_plugins  # noqa: E402,F401
from basicsr.archs import build_network  # noqa: E402

from hinet_plugins import tlc  # noqa: E402
from hinet_plugins.tlc import local_ops as L  # noqa: E402

from hinet_plugins.archs.blocks import TransposedAttention  # noqa: E402

GLOBAL_TYPES = (nn.InstanceNorm2d, nn.GroupNorm, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, TransposedAttention)


def arch_options(arch, args):
    """``network_g`` of ``arch``: its first described configuration (else its defaults) + ``--arch-opt``."""
    from hinet_plugins.archs import specs
    from hinet_plugins.restore import parse_key_values
    spec = specs().get(arch)
    if spec is None:
        sys.exit(f'tlc_overhead: error: --archs {arch}: not a described network ({", ".join(specs())})')
    return {**spec.options(spec.configs[0].kwargs if spec.configs else {}), **parse_key_values(args.arch_opt)}


def size_arg(text):
    h, w = text.lower().split('x')
    return int(h), int(w)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def clock(device):
    """CPU: process time (all threads), so other jobs on a shared machine barely move the ratios; GPU: wall."""
    return time.process_time() if device.type == 'cpu' else time.perf_counter()


def timed(fn, device):
    sync(device)
    t0 = clock(device)
    fn()
    sync(device)
    return clock(device) - t0


class ModuleClock:
    """Wall time spent inside the modules of the given types during forward passes (CPU)."""

    def __init__(self, net, types):
        self.total, self.handles, self.t0 = 0.0, [], {}
        for m in net.modules():
            if isinstance(m, types):
                self.handles.append(m.register_forward_pre_hook(self.start))
                self.handles.append(m.register_forward_hook(self.stop))

    def start(self, module, _):
        self.t0[module] = time.process_time()

    def stop(self, module, *_):
        self.total += time.process_time() - self.t0.pop(module)

    def remove(self):
        for h in self.handles:
            h.remove()


def convert_modes(net, train_size, base_size):
    """{'none', 'exact', 'fast'} copies of ``net`` and the exact conversion (for its summary)."""
    nets = {'none': net, 'exact': copy.deepcopy(net)}
    conversion = tlc.convert(nets['exact'], train_size, base_size)
    nets['fast'] = copy.deepcopy(nets['exact'])
    for m in nets['fast'].modules():
        if isinstance(m, tlc.LocalOp):
            m.fast_imp = True
    return nets, conversion


def time_modes(nets, sizes, repeats, device):
    """[(size, best time per mode, module estimate per mode)], modes interleaved, min over repeats."""
    rows = []
    with torch.no_grad():
        for n in nets.values():  # warm-up (kernel/primitive creation)
            n(torch.rand(1, 3, 64, 64, device=device))
        for size in sizes:
            x = torch.rand(1, 3, *size, device=device)
            t = {m: [] for m in nets}
            mod = {m: [] for m in nets}
            for _ in range(repeats):
                for mode, n in nets.items():
                    modules = ModuleClock(n, (tlc.LocalOp,) + GLOBAL_TYPES) if device.type == 'cpu' else None
                    t[mode].append(timed(lambda: n(x), device))
                    if modules:
                        mod[mode].append(modules.total)
                        modules.remove()
            best = {m: min(v) for m, v in t.items()}
            est = {m: (min(mod[m]) - min(mod['none'])) / best['none'] if mod[m] else float('nan')
                   for m in ('exact', 'fast')}
            rows.append((size, best, est))
    return rows


def bench_model(args, device):
    print('| network | input | no TLC (s) | exact TLC (s) | fast TLC (s) | exact / none | fast / none '
          '| exact: module estimate | fast: module estimate |')
    print('|---|---|---|---|---|---|---|---|---|')
    notes = []
    for arch in args.archs:
        net = build_network(arch_options(arch, args)).to(device).eval()
        nets, conversion = convert_modes(net, args.train_size, args.base_size)
        notes.append(f'{arch}: {conversion.summary().splitlines()[0]}')
        for (h, w), b, est in time_modes(nets, args.sizes, args.repeats, device):
            print(f"| {arch} | {h}x{w} | {b['none']:.3f} | {b['exact']:.3f} | {b['fast']:.3f} "
                  f"| {b['exact'] / b['none']:.3f} | {b['fast'] / b['none']:.3f} | {est['exact']:+.1%} "
                  f"| {est['fast']:+.1%} |")
    print(f'\n({device}, {torch.get_num_threads()} threads) ' + '; '.join(notes) + '\n')


def release_local_mean(x, k):
    """The TLC release's method as described in ../shared/notes (re-written here): zero-padded 2-D prefix sums of
    the whole map, four-corner sums of the valid windows, divided by the area, centred replicate padding."""
    h, w = x.shape[-2:]
    kh, kw = min(h, k), min(w, k)
    s = F.pad(x.cumsum(2).cumsum(3), (1, 0, 1, 0))
    out = (s[..., kh:, kw:] + s[..., :-kh, :-kw] - s[..., :-kh, kw:] - s[..., kh:, :-kw]) / (kh * kw)
    vh, vw = out.shape[-2:]
    return F.pad(out, ((w - vw) // 2, (w - vw + 1) // 2, (h - vh) // 2, (h - vh + 1) // 2), mode='replicate')


def release_instance_norm(x, k, weight, bias, eps=1e-5):
    mean = release_local_mean(x, k)
    var = release_local_mean(x * x, k) - mean * mean
    return (x - mean) / (var + eps).sqrt() * weight[:, None, None] + bias[:, None, None]


def bench_ops(args, device):
    c, (h, w) = args.op_channels, args.op_size
    x = torch.randn(1, c, h, w, device=device)
    wgt, bias = torch.ones(c, device=device), torch.zeros(c, device=device)

    def fast(k):
        return L.fast_stride(h, k, 5), L.fast_stride(w, k, 5)

    ops = {  # name: (ours, the release's way or None, global op)
        'avg pool (exact)': (lambda k: L.local_avg_pool(x, k), lambda k: release_local_mean(x, k),
                             lambda: F.adaptive_avg_pool2d(x, 1)),
        'instance norm (exact)': (lambda k: L.local_instance_norm(x, k, wgt, bias),
                                  lambda k: release_instance_norm(x, k, wgt, bias),
                                  lambda: F.instance_norm(x, weight=wgt, bias=bias)),
        'avg pool (fast, r=5,4)': (lambda k: L.local_avg_pool(x, k, fast(k)), None,
                                   lambda: F.adaptive_avg_pool2d(x, 1)),
        'instance norm (fast)': (lambda k: L.local_instance_norm(x, k, wgt, bias, stride=fast(k)), None,
                                 lambda: F.instance_norm(x, weight=wgt, bias=bias)),
        'group norm, 4 groups (exact)': (lambda k: L.local_group_norm(x, 4, k, wgt, bias), None,
                                         lambda: F.group_norm(x, 4, wgt, bias)),
        'max pool (van Herk)': (lambda k: L.local_max_pool(x, k), None, lambda: F.adaptive_max_pool2d(x, 1)),
    }

    def best(fn):
        fn()  # warm-up
        return min(timed(fn, device) for _ in range(args.repeats)) * 1e3

    copy_ms = best(lambda: x.clone())
    bound_ms = copy_ms  # an op that reads the map once and writes a map of the same size moves what a copy moves
    unit = 'CPU' if device.type == 'cpu' else 'wall'
    print(f'Local ops alone on a 1x{c}x{h}x{w} map ({unit} ms, min of {args.repeats}; "global" = the op replaced; '
          f'"release" = the TLC release\'s method; copy of the map: {copy_ms:.1f} ms = '
          f'{2 * x.numel() * x.element_size() / copy_ms / 1e6:.1f} GB/s)\n')
    print('| op | global | ' + ' | '.join(f'window {k}' for k in args.windows) + ' | max / min over windows |')
    print('|---|---|' + '---|' * len(args.windows) + '---|')
    with torch.no_grad():
        for name, (local, release, glob) in ops.items():
            ts = [best(lambda: local(k)) for k in args.windows]
            print(f'| {name} | {best(glob):.1f} | ' + ' | '.join(f'{t:.1f}' for t in ts)
                  + f' | {max(ts) / min(ts):.2f} |')
            if release is None:
                continue
            rs = [best(lambda: release(k)) for k in args.windows]
            print(f'| {name}: release | | ' + ' | '.join(f'{r:.1f}' for r in rs) + ' | |')
            print(f'| {name}: **ours / release** | | ' + ' | '.join(f'**{t / r:.2f}**' for t, r in zip(ts, rs))
                  + ' | |')
            print(f'| {name}: ours x bound | | ' + ' | '.join(f'{t / bound_ms:.1f}' for t in ts) + ' | |')
    print()


def fast_error(args):
    import cv2
    from hinet_plugins.demo.data import load_photo
    print('Fast vs exact TLC on natural-image features (photo + horizontal gradient, 720x1280): mean |difference| '
          'of the local instance norm output, and of the local mean / feature std\n')
    print('| photo | window | stride r | IN output: mean abs diff | IN output: 99.9th pct | local mean: diff / std |')
    print('|---|---|---|---|---|---|')
    with torch.no_grad():
        for name in ('astronaut', 'chelsea', 'coffee'):
            img = cv2.resize(load_photo(name), (1280, 720), interpolation=cv2.INTER_CUBIC)
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
            x = torch.cat([x, F.pad(x[..., 1:] - x[..., :-1], (0, 1))], 1)
            for k in (384, 192):
                r = (L.fast_stride(720, k, 5), L.fast_stride(1280, k, 5))
                d = (L.local_instance_norm(x, k, stride=r) - L.local_instance_norm(x, k)).abs()
                m = (L.local_avg_pool(x, k, r) - L.local_avg_pool(x, k)).abs().mean((2, 3)) / x.std((2, 3))
                p999 = d.flatten().kthvalue(int(d.numel() * 0.999)).values
                print(f'| {name} | {k} | {r[0]} | {d.mean():.4f} | {p999:.3f} | {m.mean():.2%} |')
    print()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', type=lambda s: [size_arg(v) for v in s.split(',')], default=[(360, 640)],
                   help='input sizes, e.g. 256x256,360x640,720x1280')
    p.add_argument('--archs', type=lambda s: s.split(','), default=['HINet', 'Restormer'],
                   help='comma list of described networks (hinet_plugins.archs.specs())')
    p.add_argument('--arch-opt', action='append', default=[], metavar='KEY=VALUE',
                   help='constructor keyword for the networks (repeatable; YAML values)')
    p.add_argument('--train-size', type=int, default=256)
    p.add_argument('--base-size', type=int, default=None)
    p.add_argument('--repeats', type=int, default=2, help='timed forwards per mode and size (min is kept)')
    p.add_argument('--op-size', type=size_arg, default=(368, 640))
    p.add_argument('--op-channels', type=int, default=96)
    p.add_argument('--windows', type=lambda s: [int(v) for v in s.split(',')], default=[64, 128, 256, 384, 512])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--skip', default='', help='comma list of parts to skip: model, ops, error')
    args = p.parse_args()
    device = torch.device(args.device)
    skip = set(filter(None, args.skip.split(',')))
    t0 = time.time()
    if 'ops' not in skip:
        bench_ops(args, device)
    if 'error' not in skip:
        fast_error(args)
    if 'model' not in skip:
        bench_model(args, device)
    print(f'(total {time.time() - t0:.0f} s)')


if __name__ == '__main__':
    main()
