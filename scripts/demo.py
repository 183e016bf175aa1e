"""The main job: train HINet to denoise scikit-image's photographs through BasicSR, then report the gain.

1. Builds ``datasets/demo``: crops of the training photos and whole validation photos, degraded with Gaussian
   noise (sigma 25/255), written as LMDB with basicsr's writer (skipped when already built with these settings).
2. Runs ``python basicsr/train.py -opt options/train/HINet-Demo.yml`` (BasicSR's own training loop, logger,
   validation, checkpoints and TensorBoard) — progress is printed as it trains.
3. Restores each full-resolution validation photo with the trained network, without and with TLC, and prints a
   table of PSNR/SSIM (input vs restored) and the mean gain; writes ``demo_output/side_by_side.png`` (noisy |
   restored | clean) and ``demo_output/training_curves.png``. Exits non-zero if the mean gain is below 2 dB.

``--quick`` trains for a few iterations only (a smoke run, used by the tests; no gain is required then).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import hinet_plugins  # noqa: E402,F401
from basicsr.archs import build_network  # noqa: E402
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils import img2tensor, tensor2img  # noqa: E402

from hinet_plugins.data.demo_data import make_demo_dataset  # noqa: E402
from hinet_plugins.utils.checkpoint import unwrap_state_dict  # noqa: E402
from hinet_plugins.utils.curves import find_train_log, plot_training_curves  # noqa: E402

OPTIONS = 'options/train/HINet-Demo.yml'
DATA_SETTINGS = dict(patch=96, stride=64, max_side=384, sigma=25.0, val_max_side=384)


def build_data(root):
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


def train(opt, quick):
    cmd = [sys.executable, 'basicsr/train.py', '-opt', OPTIONS]
    if quick:
        cmd += ['--force_yml', 'train:total_iter=4', 'val:val_freq=4', 'logger:print_freq=1',
                'logger:save_checkpoint_freq=4', 'train:scheduler:T_max=4', 'train:warmup_iter=-1']
    print('[demo] ' + ' '.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def load_pairs(data_root):
    gt_dir, lq_dir = os.path.join(data_root, 'val', 'gt'), os.path.join(data_root, 'val', 'lq')
    for name in sorted(os.listdir(gt_dir)):
        gt = cv2.imread(os.path.join(gt_dir, name), cv2.IMREAD_COLOR)
        lq = cv2.imread(os.path.join(lq_dir, name), cv2.IMREAD_COLOR)
        yield os.path.splitext(name)[0], gt, lq


def restore(net, lq_bgr):
    x = img2tensor(lq_bgr.astype(np.float32) / 255.0, bgr2rgb=True, float32=True).unsqueeze(0)
    with torch.no_grad():
        out = net(x)
    return tensor2img(out[-1] if isinstance(out, (list, tuple)) else out)


def evaluate(opt, out_dir):
    exp = os.path.join(ROOT, 'experiments', opt['name'])
    net = build_network(dict(opt['network_g'])).eval()
    ckpt = torch.load(os.path.join(exp, 'models', 'net_g_latest.pth'), map_location='cpu')
    net.load_state_dict(unwrap_state_dict(ckpt, 'params'), strict=True)
    train_size = opt['datasets']['train']['gt_size']
    try:
        from hinet_plugins.tlc import converted
    except ImportError:
        converted = None

    rows, panels = [], []
    for name, gt, lq in load_pairs(os.path.join(ROOT, 'datasets', 'demo')):
        out = restore(net, lq)
        row = {'photo': f'{name} {gt.shape[1]}x{gt.shape[0]}',
               'in_psnr': calculate_psnr(lq, gt, 0), 'in_ssim': calculate_ssim(lq, gt, 0),
               'out_psnr': calculate_psnr(out, gt, 0), 'out_ssim': calculate_ssim(out, gt, 0)}
        if converted is not None:
            with converted(net, train_size=train_size):
                row['tlc_psnr'] = calculate_psnr(restore(net, lq), gt, 0)
        rows.append(row)
        panels.append(np.concatenate([lq, out, gt], axis=1))

    tlc = converted is not None
    head = '| photo | input PSNR | input SSIM | restored PSNR | restored SSIM | gain (dB) |' + \
        (' restored+TLC PSNR |' if tlc else '')
    print('\n' + head)
    print('|' + '---|' * (head.count('|') - 1))
    for r in rows:
        line = (f"| {r['photo']} | {r['in_psnr']:.2f} | {r['in_ssim']:.4f} | {r['out_psnr']:.2f} | "
                f"{r['out_ssim']:.4f} | {r['out_psnr'] - r['in_psnr']:+.2f} |")
        print(line + (f" {r['tlc_psnr']:.2f} |" if tlc else ''))
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != 'photo'}
    line = (f"| **mean** | {mean['in_psnr']:.2f} | {mean['in_ssim']:.4f} | {mean['out_psnr']:.2f} | "
            f"{mean['out_ssim']:.4f} | **{mean['out_psnr'] - mean['in_psnr']:+.2f}** |")
    print(line + (f" {mean['tlc_psnr']:.2f} |" if tlc else '') + '\n')

    os.makedirs(out_dir, exist_ok=True)
    width = max(p.shape[1] for p in panels)
    sheet = np.concatenate([np.pad(p, ((0, 8), (0, width - p.shape[1]), (0, 0)), constant_values=255)
                            for p in panels], axis=0)
    cv2.imwrite(os.path.join(out_dir, 'side_by_side.png'), sheet)
    plot_training_curves(find_train_log(exp), os.path.join(out_dir, 'training_curves.png'))
    with open(os.path.join(out_dir, 'results.json'), 'w') as f:
        json.dump({'rows': rows, 'mean': mean}, f, indent=1)
    print(f'[demo] wrote {out_dir}/side_by_side.png (noisy | restored | clean), {out_dir}/training_curves.png, '
          f'{out_dir}/results.json; TensorBoard: tensorboard --logdir tb_logger', flush=True)
    return mean['out_psnr'] - mean['in_psnr']


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='a few iterations only (smoke run)')
    parser.add_argument('--out', default=os.path.join(ROOT, 'demo_output'), help='folder for PNGs and results')
    args = parser.parse_args()
    with open(os.path.join(ROOT, OPTIONS)) as f:
        opt = yaml.safe_load(f)
    build_data(os.path.join(ROOT, 'datasets', 'demo'))
    exp = os.path.join(ROOT, 'experiments', opt['name'])
    if os.path.isdir(exp):
        shutil.rmtree(exp)  # a fresh run each time (basicsr would otherwise archive the old folder)
    train(opt, args.quick)
    gain = evaluate(opt, args.out)
    if not args.quick and gain < 2.0:
        print(f'[demo] FAILED: mean gain {gain:.2f} dB is below the 2 dB target', flush=True)
        sys.exit(1)
    print(f'[demo] mean PSNR gain over the noisy input: {gain:+.2f} dB', flush=True)


if __name__ == '__main__':
    main()
