"""Peak memory of ``Restorer(tile='auto')`` on the CPU against its budget: a table, one row per image size.

    python benchmarks/autotile_memory.py [--sizes 256 4096] [--budget 2GB] [--arch HINet --arch-opt wf=32 ...]

Each size restores a photo (skimage.data.astronaut resized, + noise) with random weights of the network. The
added memory is the peak RSS of the process while restoring (VmHWM, reset through /proc/self/clear_refs before
each image) minus the RSS before it (libraries, weights, the input array): what the budget bounds
(``hinet_plugins.restore.autotile``). The process's own peak (ru_maxrss) is printed too. Linux only.
"""
import argparse
import os
import resource
import sys
import time

import cv2
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import hinet_plugins  # noqa: E402,F401
from hinet_plugins.restore import Restorer, load_network, parse_key_values  # noqa: E402
from hinet_plugins.restore.autotile import format_bytes  # noqa: E402


def status(field):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ':'))


def photo(side, seed=0):
    from skimage import data
    img = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(seed).normal(0, 15, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[256, 4096])
    parser.add_argument('--budget', help='memory_budget (default: half the available RAM)')
    parser.add_argument('--arch', default='HINet')
    parser.add_argument('--arch-opt', action='append', default=None, help="default: wf=32 hin_position_left=0 "
                        'hin_position_right=4 (HINet-SIDD-0.5x)')
    args = parser.parse_args(argv)
    arch_opt = parse_key_values(args.arch_opt or ['wf=32', 'hin_position_left=0', 'hin_position_right=4'])
    torch.manual_seed(0)
    net, _ = load_network(arch=args.arch, arch_opt=arch_opt, require_checkpoint=False)  # random weights
    restorer = Restorer(net, tile='auto', memory_budget=args.budget, progress=False)
    print(f'{args.arch} {arch_opt}, {torch.get_num_threads()} thread(s)')
    print('| image | budget | tile | estimated | RSS before | peak RSS | added | within budget | seconds |')
    print('|---|---|---|---|---|---|---|---|---|')
    for side in args.sizes:
        img = photo(side)
        before = status('VmRSS')
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        start = time.time()
        restorer(img)
        seconds = time.time() - start
        peak = status('VmHWM')
        plan = restorer.last_plan
        print(f"| {side}x{side} | {format_bytes(plan['budget'])} | {plan['tile'] or 'whole image'} | "
              f"{format_bytes(plan['estimate'])} | {format_bytes(before)} | {format_bytes(peak)} | "
              f"{format_bytes(peak - before)} | {'yes' if peak - before <= plan['budget'] else 'NO'} | "
              f'{seconds:.0f} |', flush=True)
    print(f'process peak RSS (ru_maxrss): {format_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}')


if __name__ == '__main__':
    main()
