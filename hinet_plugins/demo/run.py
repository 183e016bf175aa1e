"""The demo's flow, run by ``scripts/demo.py``: build the data, train through the literal launcher, restore, report.

Every path is under the repository root given to :func:`run_demo` (the script passes its own checkout's root):
``datasets/demo`` (data and the BM3D cache), ``experiments/<name>`` (removed before each training: a fresh run,
else basicsr would archive the old folder) and the output folder. The training is ``python basicsr/train.py -opt
options/train/HINet-Demo.yml`` in a subprocess, so the demo exercises exactly what a user runs. ``quick`` trains
a few iterations only (a smoke run; no gain is required then); otherwise the exit status is 1 when a network's
mean gain over the noisy input is below :data:`MIN_GAIN_DB`.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, Iterator, List, Sequence, Tuple

import cv2
import numpy as np
import yaml
from torch import nn

from ..restore import load_network, restore_image
from ..utils.curves import find_train_log, plot_training_curves
from . import report
from .baselines import baseline_outputs
from .data import make_demo_dataset

OPTIONS = ('options/train/HINet-Demo.yml',)
QUICK_ITERS = 4
DATA_SETTINGS = dict(patch=96, stride=64, max_side=384, sigma=25.0, val_max_side=384, train_lq=False)
MIN_GAIN_DB = 2.0

Pair = Tuple[str, np.ndarray, np.ndarray]


def build_data(root: str) -> None:
    """The demo's dataset in ``root``, skipped when already built with :data:`DATA_SETTINGS`."""
    marker = os.path.join(root, 'settings.json')
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == DATA_SETTINGS:
                print(f'[demo] dataset already built in {root}', flush=True)
                return
    print(f'[demo] building the dataset from skimage.data photographs in {root} ...', flush=True)
    info = make_demo_dataset(root, **DATA_SETTINGS)
    with open(marker, 'w') as f:
        json.dump(DATA_SETTINGS, f)
    print(f"[demo] {info['train_count']} training crops, {info['val_count']} validation photos", flush=True)


def train(options: str, quick: bool, repo: str) -> float:
    """Runs the literal launcher on one option file from ``repo``; returns its wall time in seconds."""
    cmd = [sys.executable, 'basicsr/train.py', '-opt', options]
    if quick:
        n = QUICK_ITERS
        cmd += ['--force_yml', f'train:total_iter={n}', f'val:val_freq={n}', 'logger:print_freq=1',
                f'logger:save_checkpoint_freq={n}', f'train:scheduler:T_max={n}', 'train:warmup_iter=-1']
    print('[demo] ' + ' '.join(cmd), flush=True)
    start = time.monotonic()
    subprocess.run(cmd, cwd=repo, check=True)
    return time.monotonic() - start


def load_pairs(data_root: str) -> Iterator[Pair]:
    """(photo name, clean BGR, noisy BGR) of every validation photo."""
    gt_dir, lq_dir = os.path.join(data_root, 'val', 'gt'), os.path.join(data_root, 'val', 'lq')
    for name in sorted(os.listdir(gt_dir)):
        gt = cv2.imread(os.path.join(gt_dir, name), cv2.IMREAD_COLOR)
        lq = cv2.imread(os.path.join(lq_dir, name), cv2.IMREAD_COLOR)
        yield os.path.splitext(name)[0], gt, lq


def restore(net: nn.Module, lq_bgr: np.ndarray) -> np.ndarray:
    return restore_image(net, lq_bgr, channel_order='bgr')


def restore_all(opt: dict, pairs: Sequence[Pair], repo: str) -> Tuple[Dict[str, Dict[str, np.ndarray]], int]:
    """``{network: {photo: img}, network+TLC: {...}}`` for one trained network, and its parameter count."""
    from ..tlc import converted

    exp = os.path.join(repo, 'experiments', opt['name'])
    net, _ = load_network(arch=opt['network_g']['type'], arch_opt=opt['network_g'],
                          checkpoint=os.path.join(exp, 'models', 'net_g_latest.pth'))
    train_size = opt['datasets']['train']['gt_size']
    arch = opt['network_g']['type']
    outs = {arch: {}, f'{arch}+TLC': {}}
    for name, _, lq in pairs:
        outs[arch][name] = restore(net, lq)
        with converted(net, train_size=train_size):
            outs[f'{arch}+TLC'][name] = restore(net, lq)
    return outs, sum(p.numel() for p in net.parameters())


def evaluate(opts: List[dict], train_times: List[float], out_dir: str, repo: str) -> float:
    """Scores every method on the held-out photos, prints the tables, writes the PNGs; returns the smallest gain."""
    pairs = list(load_pairs(os.path.join(repo, 'datasets', 'demo')))
    outputs, nlm_h = baseline_outputs(pairs, DATA_SETTINGS['sigma'],
                                      os.path.join(repo, 'datasets', 'demo', 'baselines'),
                                      log=lambda msg: print(msg, flush=True))
    networks = []
    for opt, seconds in zip(opts, train_times):
        outs, params = restore_all(opt, pairs, repo)
        outputs.update(outs)
        networks.append({'name': opt['name'], 'arch': opt['network_g']['type'], 'params': params,
                         'iterations': opt['train']['total_iter'], 'train_s': seconds})
    rows = [report.score_photo(name, gt, lq, {m: outputs[m][name] for m in outputs}) for name, gt, lq in pairs]
    mean = report.mean_scores(rows)
    for n in networks:
        n['psnr'] = mean[n['arch']][0]
        n['gain'] = mean[n['arch']][0] - mean[report.INPUT][0]

    print(f"\nPSNR (dB) / SSIM on the held-out photos (noise sigma {DATA_SETTINGS['sigma']:g}; NLM h = {nlm_h}, "
          'BM3D with the known sigma; +TLC: the same network converted by TLC):\n')
    print(report.results_table(rows) + '\n')
    print(report.networks_table(networks) + '\n')
    print(report.verdict(mean, [n['arch'] for n in networks]) + '\n', flush=True)

    os.makedirs(out_dir, exist_ok=True)
    columns = list(outputs)  # NLM, BM3D, then each network without and with TLC
    titles = report.column_titles([report.INPUT] + columns, mean, extra=['clean'])
    sheet = report.contact_sheet([[lq] + [outputs[m][name] for m in columns] + [gt] for name, gt, lq in pairs],
                                 titles=titles)
    cv2.imwrite(os.path.join(out_dir, 'side_by_side.png'), sheet)
    curves = []
    for i, opt in enumerate(opts):
        curves.append('training_curves.png' if i == 0 else f"training_curves_{opt['network_g']['type']}.png")
        plot_training_curves(find_train_log(os.path.join(repo, 'experiments', opt['name'])),
                             os.path.join(out_dir, curves[-1]))
    with open(os.path.join(out_dir, 'results.json'), 'w') as f:
        json.dump({'rows': rows, 'mean': mean, 'networks': networks, 'nlm_h': nlm_h}, f, indent=1)
    print(f"[demo] wrote {out_dir}/side_by_side.png (noisy | {' | '.join(columns)} | clean), "
          f"{', '.join(out_dir + '/' + c for c in curves)}, {out_dir}/results.json; "
          'TensorBoard: tensorboard --logdir tb_logger', flush=True)
    return min(n['gain'] for n in networks)


def run_demo(repo: str, out_dir: str, quick: bool = False) -> int:
    """The whole demo from the checkout ``repo``; returns the exit status (1: a gain below the target)."""
    opts = []
    for path in OPTIONS:
        with open(os.path.join(repo, path)) as f:
            opts.append(yaml.safe_load(f))
        if quick:
            opts[-1]['train']['total_iter'] = QUICK_ITERS
    build_data(os.path.join(repo, 'datasets', 'demo'))
    start, train_times = time.monotonic(), []
    for path, opt in zip(OPTIONS, opts):
        exp = os.path.join(repo, 'experiments', opt['name'])
        if os.path.isdir(exp):
            shutil.rmtree(exp)  # a fresh run each time (basicsr would otherwise archive the old folder)
        train_times.append(train(path, quick, repo))
    gain = evaluate(opts, train_times, out_dir, repo)
    print(f'[demo] trainings + report: {time.monotonic() - start:.0f} s', flush=True)
    if not quick and gain < MIN_GAIN_DB:
        print(f"[demo] FAILED: a network's mean gain ({gain:.2f} dB) is below the {MIN_GAIN_DB:g} dB target",
              flush=True)
        return 1
    print(f'[demo] smallest mean PSNR gain of a network over the noisy input: {gain:+.2f} dB', flush=True)
    return 0
