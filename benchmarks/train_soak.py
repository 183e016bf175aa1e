"""Soak test of the demo training: iterations/s and memory (RSS) over a long run; prints markdown tables.

Runs ``python -m hinet_plugins.train`` on ``options/train/HINet-Demo.yml`` (the demo's network, data pipeline,
validation, checkpoints and TensorBoard logger) with only the iteration count, the logging/validation/checkpoint
intervals and the dataset paths changed; the data are the demo's (scikit-image photographs, sigma 25), built into
a temporary folder. While it trains, every log line of basicsr is timestamped and the resident memory of the
training process (and of its DataLoader worker processes, re-created every epoch) is read from /proc.

"Memory does not grow" is judged after a warm-up (the first ``--warmup`` fraction of the iterations, and at least
up to the first validation + checkpoint: allocator pools fill up there). The allocator's RSS moves by a few tens of
MiB from sample to sample, so the judgement compares medians: the median RSS of the last third of the samples
after the warm-up minus that of the first third must stay below ``max(3 %, 32 MiB)`` (a leak of 1 MiB/iteration
shows as ~200 MiB over the default 600 iterations). The least-squares slope is printed for information. Note the
baseline: ``import torch`` alone is ~0.7 GiB RSS with the CUDA wheels, ~1 GiB with basicsr and its imports.

    python benchmarks/train_soak.py --iters 600          # about 5-10 min on 2 CPU cores
    python benchmarks/train_soak.py --iters 100 --every 10   # a quick look
"""
import argparse
import contextlib
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from statistics import median

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITER_LINE = re.compile(r'\[epoch:\s*(\d+), iter:\s*([\d,]+),')
DATA_SETTINGS = dict(patch=96, stride=64, max_side=384, sigma=25.0, val_max_side=256)


def rss_kib(pid, field='VmRSS'):
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def slope_per_1000(points):
    """Least-squares slope of (iteration, MiB) points, in MiB per 1000 iterations."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return 1000 * sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--iters', type=int, default=600)
    ap.add_argument('--every', type=int, default=0, help='log/sample interval (default: iters // 15)')
    ap.add_argument('--warmup', type=float, default=0.2, help='fraction of iterations treated as warm-up')
    ap.add_argument('--threads', type=int, default=2, help='OMP_NUM_THREADS of the training process')
    ap.add_argument('--keep', action='store_true', help='keep the temporary work folder')
    args = ap.parse_args()
    every = args.every or max(1, args.iters // 15)

    sys.path.insert(0, ROOT)
    work = tempfile.mkdtemp(prefix='hinet_soak_')
    try:
        from hinet_plugins.demo.data import make_demo_dataset
        with open(os.devnull, 'w') as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            data = make_demo_dataset(os.path.join(work, 'data'), **DATA_SETTINGS)  # (LMDB writer's progress bars)
        with open(os.path.join(ROOT, 'options', 'train', 'HINet-Demo.yml')) as f:
            opt = yaml.safe_load(f)
        opt['name'] = 'soak'
        opt.pop('amp', None)  # fp32, as the README's soak figures were measured (the demo itself trains in bf16)
        (opt.get('val') or {}).pop('amp', None)
        for phase in ('train', 'val'):
            opt['datasets'][phase].update(dataroot_gt=data[f'{phase}_gt_lmdb'], dataroot_lq=data[f'{phase}_lq_lmdb'])
        opt['train']['total_iter'] = opt['train']['scheduler']['T_max'] = args.iters
        opt['train']['warmup_iter'] = min(opt['train'].get('warmup_iter', -1), args.iters // 10)
        opt['logger']['print_freq'] = every
        opt['val']['val_freq'] = opt['logger']['save_checkpoint_freq'] = max(every, args.iters // 4)
        opt_path = os.path.join(work, 'soak.yml')
        with open(opt_path, 'w') as f:
            yaml.safe_dump(opt, f, sort_keys=False)

        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED='1', OMP_NUM_THREADS=str(args.threads))
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, '-m', 'hinet_plugins.train', '-opt', opt_path], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        samples, tail = [], []
        for line in proc.stdout:
            tail = (tail + [line])[-30:]
            match = ITER_LINE.search(line)
            if match:
                workers = sum(rss_kib(c) for c in children(proc.pid))
                samples.append((int(match.group(2).replace(',', '')), time.time() - t0, rss_kib(proc.pid) / 1024,
                                workers / 1024, rss_kib(proc.pid, 'VmHWM') / 1024))
        proc.wait()
        wall = time.time() - t0
        peak_any = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0 or len(samples) < 3:
            sys.exit('training failed:\n' + ''.join(tail))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f'work folder kept: {work}')

    print(f'## Training soak: HINet-Demo ({opt["network_g"]}), {args.iters} iterations, batch '
          f'{opt["datasets"]["train"]["batch_size_per_gpu"]}x{opt["datasets"]["train"]["gt_size"]}px, '
          f'OMP_NUM_THREADS={args.threads}, validation + checkpoint every {opt["val"]["val_freq"]} iterations\n')
    print('| iteration | elapsed s | it/s since previous | RSS main MiB | RSS workers MiB | peak RSS main MiB |')
    print('|---:|---:|---:|---:|---:|---:|')
    prev = None
    for it, t, rss, workers, hwm in samples:
        speed = f'{(it - prev[0]) / (t - prev[1]):.2f}' if prev else '-'
        print(f'| {it} | {t:.1f} | {speed} | {rss:.1f} | {workers:.1f} | {hwm:.1f} |')
        prev = (it, t)

    first, last = samples[0], samples[-1]
    steady = (last[0] - first[0]) / (last[1] - first[1])
    warm = max(args.warmup * args.iters, opt['val']['val_freq'])
    after = [s for s in samples if s[0] > warm] or samples[-3:]
    third = max(1, len(after) // 3)
    early, late = median([s[2] for s in after[:third]]), median([s[2] for s in after[-third:]])
    growth = late - early
    slope = slope_per_1000([(s[0], s[2]) for s in after])
    limit = max(0.03 * early, 32.0)
    verdict = 'no growth' if growth < limit else 'GROWS'
    print('\n| measure | value |')
    print('|---|---:|')
    print(f'| iterations/s (iteration {first[0]}..{last[0]}, incl. validation and checkpoints) | {steady:.2f} |')
    print(f'| wall time incl. start-up and final validation | {wall:.1f} s |')
    print(f'| peak RSS, training process (VmHWM) | {last[4]:.1f} MiB |')
    print(f'| peak RSS, largest process over the whole run (getrusage, incl. final validation) | {peak_any:.1f} MiB |')
    print(f'| median RSS, first third after warm-up (iteration {after[0][0]}..{after[third - 1][0]}) | '
          f'{early:.1f} MiB |')
    print(f'| median RSS, last third (iteration {after[-third][0]}..{after[-1][0]}) | {late:.1f} MiB '
          f'({growth:+.1f}) |')
    print(f'| RSS slope after warm-up (least squares, information only) | {slope:+.1f} MiB / 1000 it |')
    print(f'| memory verdict (limit {limit:.1f} MiB) | {verdict} |')
    return 0 if verdict == 'no growth' else 1


if __name__ == '__main__':
    sys.exit(main())
