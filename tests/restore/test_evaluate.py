"""``scripts/evaluate.py``: its numbers equal basicsr's validation numbers on the images ``basicsr/test.py`` saved;
pairing, image formats, and user mistakes."""
import csv
import glob
import os
import re
import shutil
import subprocess
import uuid

import cv2
import numpy as np
import pytest
import torch

from conftest import PY, REPO, call_main, load_script, run_cli, write_options
from hinet_plugins.demo.data import degrade, load_photo

SCRIPT = os.path.join(REPO, 'scripts', 'evaluate.py')
SIZES = ((48, 64), (64, 56), (40, 40))


def make_pairs(root, sizes=SIZES, sigma=25):
    """gt/ and lq/ folders of PNG crops of a photo (BGR) and their noisy versions."""
    photo = cv2.cvtColor(load_photo('astronaut'), cv2.COLOR_RGB2BGR)
    for sub in ('gt', 'lq'):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        clean = np.ascontiguousarray(photo[30 * i:30 * i + h, 50 * i:50 * i + w])
        assert cv2.imwrite(os.path.join(root, 'gt', f'img{i}.png'), clean)
        assert cv2.imwrite(os.path.join(root, 'lq', f'img{i}.png'), degrade(clean, sigma=sigma, seed=i))
    return os.path.join(root, 'gt'), os.path.join(root, 'lq')


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def evaluate(cwd, *args, check=True):
    return run_cli([PY, SCRIPT, *args], cwd, check=check)


def evaluate_in_process(*args):
    """``scripts/evaluate.py ARGS`` through its main in this process, as a CompletedProcess (output merged)."""
    code, out = call_main(load_script(SCRIPT, 'evaluate_script').main, list(args))
    assert code == 0, out[-6000:]
    return subprocess.CompletedProcess(args, code, out)


METRICS = {
    'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
    'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': False},
    'psnr_y': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True},
    'ssim_y': {'type': 'calculate_ssim', 'crop_border': 4, 'test_y_channel': True},
}


@pytest.mark.slow
def test_evaluate_equals_basicsr_validation_on_the_saved_images(tmp_path, monkeypatch):
    """``python basicsr/test.py`` (save_img) on three pairs logs the mean metrics; ``scripts/evaluate.py`` on the
    PNGs it saved gives the same means (RGB without crop, and Y with a 4-pixel border)."""
    from basicsr.archs import build_network
    gt_dir, lq_dir = make_pairs(tmp_path / 'data')
    net_opt = {'type': 'HINet', 'wf': 8, 'depth': 3}
    torch.manual_seed(0)
    ckpt = tmp_path / 'net.pth'
    torch.save({'params': build_network(dict(net_opt)).state_dict()}, ckpt)
    name = f'pytest_evaluate_{uuid.uuid4().hex[:8]}'
    opt = {'name': name, 'model_type': 'MultiStageRestorationModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 10,
           'datasets': {'test_1': {'name': 'evalset', 'type': 'PairedImageDataset', 'dataroot_gt': gt_dir,
                                   'dataroot_lq': lq_dir, 'io_backend': {'type': 'disk'}}},
           'network_g': net_opt, 'path': {'pretrain_network_g': str(ckpt), 'strict_load_g': True},
           'val': {'save_img': True, 'suffix': None, 'metrics': METRICS}}
    results = os.path.join(REPO, 'results', name)
    created = not os.path.isdir(os.path.join(REPO, 'results'))
    try:
        proc = run_cli([PY, 'basicsr/test.py', '-opt', write_options(opt, tmp_path / 'test.yml')], REPO)
        logged = {k: float(v) for k, v in re.findall(r'# (\w+): ([-\d.]+)', proc.stdout)}
        assert set(logged) == set(METRICS), proc.stdout[-3000:]
        restored = os.path.join(results, 'visualization', 'evalset')
        assert sorted(os.listdir(restored)) == [f'img{i}_{name}.png' for i in range(3)]
        shutil.copytree(restored, tmp_path / 'restored')  # before the cleanup below
    finally:
        shutil.rmtree(results, ignore_errors=True)
        if created and os.path.isdir(os.path.join(REPO, 'results')) and not os.listdir(os.path.join(REPO, 'results')):
            os.rmdir(os.path.join(REPO, 'results'))

    # evaluate.py's main in-process (test_mistake_through_the_command_line runs the literal command)
    monkeypatch.chdir(tmp_path)
    rgb = evaluate_in_process('--restored', 'restored', '--gt', gt_dir, '--csv', 'rgb.csv')
    y = evaluate_in_process('--restored', 'restored', '--gt', gt_dir, '--y', '--crop-border', '4', '--csv', 'y.csv')
    for out, csv_name, psnr_key, ssim_key in ((rgb, 'rgb.csv', 'psnr', 'ssim'), (y, 'y.csv', 'psnr_y', 'ssim_y')):
        rows = read_csv(tmp_path / csv_name)
        assert [r['name'] for r in rows] == ['img0', 'img1', 'img2', 'mean']
        assert [(int(r['height']), int(r['width'])) for r in rows[:3]] == list(SIZES)
        mean = rows[-1]
        print(f"{csv_name}: evaluate.py psnr {mean['psnr']} ssim {mean['ssim']}; basicsr logged {psnr_key} "
              f'{logged[psnr_key]} {ssim_key} {logged[ssim_key]}')
        # basicsr logs 4 decimals: the same value rounds to the same string
        assert abs(float(mean['psnr']) - logged[psnr_key]) <= 5.001e-5, (mean, logged)
        assert abs(float(mean['ssim']) - logged[ssim_key]) <= 5.001e-5, (mean, logged)
        assert f"**{logged[psnr_key]:.4f}**" in out.stdout and f"**{logged[ssim_key]:.4f}**" in out.stdout
        assert f"stripping '_{name}'" in out.stdout
        # per image, the values are basicsr's functions on those files
        from basicsr.metrics import calculate_psnr
        r0 = rows[0]
        ref = calculate_psnr(cv2.imread(str(tmp_path / r0['restored'])), cv2.imread(r0['gt']), crop_border=4 if '_y' in psnr_key
                             else 0, test_y_channel='_y' in psnr_key)
        assert float(r0['psnr']) == ref
    assert float(read_csv(tmp_path / 'rgb.csv')[-1]['psnr']) != float(read_csv(tmp_path / 'y.csv')[-1]['psnr'])


def _main(argv):
    import importlib.util
    spec = importlib.util.spec_from_file_location('evaluate_script', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_formats_sixteen_bit_gray_alpha_and_identical_images(tmp_path, capsys):
    gt_dir, lq_dir = make_pairs(tmp_path / 'a')
    rows8 = _main(['--restored', lq_dir, '--gt', gt_dir])
    # the same images at 16 bits (x * 257) score the same; RGBA scores as its colour; identical images: inf / 1
    for sub in ('gt16', 'lq16', 'lq_rgba'):
        os.makedirs(tmp_path / sub)
    for i in range(3):
        for src, dst in ((gt_dir, 'gt16'), (lq_dir, 'lq16')):
            img = cv2.imread(os.path.join(src, f'img{i}.png'))
            cv2.imwrite(str(tmp_path / dst / f'img{i}.png'), img.astype(np.uint16) * 257)
        lq = cv2.imread(os.path.join(lq_dir, f'img{i}.png'))
        cv2.imwrite(str(tmp_path / 'lq_rgba' / f'img{i}.png'), np.dstack([lq, np.full(lq.shape[:2], 7, np.uint8)]))
    rows16 = _main(['--restored', str(tmp_path / 'lq16'), '--gt', str(tmp_path / 'gt16'), '--csv', str(tmp_path / 'x')])
    rows_rgba = _main(['--restored', str(tmp_path / 'lq_rgba'), '--gt', gt_dir, '--csv', str(tmp_path / 'r.csv')])
    for a, b, c in zip(rows8, rows16, rows_rgba):
        assert abs(a['psnr'] - b['psnr']) < 1e-9 and abs(a['ssim'] - b['ssim']) < 1e-9
        assert a['psnr'] == c['psnr'] and a['ssim'] == c['ssim']
    assert 20 < rows8[0]['psnr'] < 25 and 0.2 < rows8[0]['ssim'] < 0.8  # sigma 25 noise
    same = _main(['--restored', gt_dir, '--gt', gt_dir, '--csv', str(tmp_path / 's.csv')])
    assert all(r['psnr'] == float('inf') and abs(r['ssim'] - 1) < 1e-12 for r in same)
    # gray images: one channel, Y of a gray image is the image
    for sub, src in (('g_gt', gt_dir), ('g_lq', lq_dir)):
        os.makedirs(tmp_path / sub)
        for i in range(3):
            cv2.imwrite(str(tmp_path / sub / f'img{i}.png'), cv2.imread(os.path.join(src, f'img{i}.png'), 0))
    gray = _main(['--restored', str(tmp_path / 'g_lq'), '--gt', str(tmp_path / 'g_gt'), '--csv', str(tmp_path / 'g')])
    assert all(np.isfinite(r['psnr']) for r in gray)
    assert 'metrics.csv' in os.listdir(lq_dir), 'the default CSV goes to the restored folder'
    capsys.readouterr()


def test_mistakes_are_one_error_and_write_nothing(tmp_path, capsys):
    gt_dir, lq_dir = make_pairs(tmp_path / 'a')
    other = tmp_path / 'other'
    shutil.copytree(lq_dir, other)
    os.rename(other / 'img2.png', other / 'zzz.png')
    os.makedirs(tmp_path / 'small')
    for i, (h, w) in enumerate(SIZES):
        cv2.imwrite(str(tmp_path / 'small' / f'img{i}.png'), np.zeros((h, w - 1 if i == 1 else w, 3), np.uint8))
    broken = tmp_path / 'broken'
    shutil.copytree(lq_dir, broken)
    with open(broken / 'img0.png', 'r+b') as f:
        f.truncate(200)
    cases = ((['--gt', gt_dir], 'the following arguments are required: --restored'),
             (['--restored', str(tmp_path / 'nope'), '--gt', gt_dir], "--restored: folder '"),
             (['--restored', str(other), '--gt', gt_dir], "without ground truth in '"),
             (['--restored', str(tmp_path / 'small'), '--gt', gt_dir], 'the restored image is 64x55x3 but the ground'),
             (['--restored', str(broken), '--gt', gt_dir], 'img0.png\' cannot be read or decoded'),
             (['--restored', lq_dir, '--gt', gt_dir, '--crop-border', '15'], "--crop-border 15 leaves 10x10 of 40x40 pixels"),
             (['--restored', lq_dir, '--gt', gt_dir, '--crop-border', 'x'], "invalid int value: 'x'"),
             (['--restored', lq_dir, '--gt', gt_dir, '--csv', str(tmp_path / 'no' / 'm.csv')], "--csv: folder '"))
    for args, words in cases:
        before = sorted(glob.glob(str(tmp_path / '**'), recursive=True))
        with pytest.raises(SystemExit) as exc:
            _main(args)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith('hinet_plugins: error: ') and words in err, (args, err)
        assert len(err.strip().splitlines()) in (1, 2), err  # the line, or the count + one listed pair
        assert sorted(glob.glob(str(tmp_path / '**'), recursive=True)) == before


@pytest.mark.slow
def test_mistake_through_the_command_line(tmp_path):
    gt_dir, lq_dir = make_pairs(tmp_path / 'a')
    os.remove(os.path.join(lq_dir, 'img1.png'))
    proc = evaluate(tmp_path, '--restored', lq_dir, '--gt', gt_dir, check=False)
    assert proc.returncode == 2 and 'Traceback' not in proc.stdout
    assert proc.stdout.strip().splitlines() == [proc.stdout.strip()] and "image(s) without a restored image" in \
        proc.stdout and "['img1']" in proc.stdout
    assert not os.path.exists(os.path.join(lq_dir, 'metrics.csv'))
