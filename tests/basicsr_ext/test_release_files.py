"""The authors' option files and commands, run unchanged through the literal launchers.

Each YAML below has the keys and values of a file of the HINet, TLC or DRCNet release (``options/...`` named in
the test); only dataset paths, network widths, patch/crop sizes, workers and iteration counts are changed. The
releases' ``num_gpu: 8`` / ``1`` stays in the files and is overridden as a CPU user would, with
``--force_yml num_gpu=0``. Checkpoints are keyed as the releases' are (MPRNet: ``{'epoch', 'state_dict',
'optimizer'}`` with ``module.`` prefixes; HINet/DRCNet: ``{'params'}``).
"""
import glob
import os
import re
import uuid

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, launch_batch, missing_run_folders, remove_repo_runs, run_launcher, selected_items

from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.utils import tensor2img


# megvii-model/HINet options/train/SIDD/HINet.yml
HINET_SIDD_TRAIN = '''
name: {name}
model_type: ImageRestorationModel
scale: 1
num_gpu: 8  # set num_gpu: 0 for cpu mode
manual_seed: 100
datasets:
  train:
    name: SIDD
    type: PairedImageDataset_SIDD
    dataroot_gt: {train_gt}
    dataroot_lq: {train_lq}
    filename_tmpl: '{{}}'
    io_backend:
      type: disk
    gt_size: 80
    use_flip: true
    use_rot: true
    use_shuffle: true
    num_worker_per_gpu: 0
    batch_size_per_gpu: 2
    dataset_enlarge_ratio: 1
    prefetch_mode: ~
  val:
    name: SIDD_val
    type: PairedImageDataset_SIDD
    dataroot_gt: {val_gt_lmdb}
    dataroot_lq: {val_lq_lmdb}
    io_backend:
      type: lmdb
network_g:
  type: HINet
  wf: 8
  hin_position_left: 0
  hin_position_right: 4
path:
  pretrain_network_g: ~
  strict_load_g: true
  resume_state: ~
train:
  optim_g:
    type: Adam
    lr: !!float 2e-4
    betas: [0.9, 0.999]
  scheduler:
    type: TrueCosineAnnealingLR
    T_max: 2
    eta_min: !!float 1e-6
  total_iter: 2
  warmup_iter: -1 # no warm up
  use_grad_clip: true
  pixel_opt:
    type: L1Loss
    loss_weight: 1
    reduction: mean
val:
  val_freq: !!float 2
  save_img: false
  rgb2bgr: true
  use_image: false
  max_minibatch: 8
  metrics:
    psnr: # metric name, can be arbitrary
      type: calculate_psnr
      crop_border: 0
      test_y_channel: false
logger:
  print_freq: 1
  save_checkpoint_freq: !!float 2
  use_tb_logger: true
  wandb:
    project: ~
    resume_id: ~
dist_params:
  backend: nccl
  port: 29500
'''

# megvii-model/HINet options/test/SIDD/HINet-SIDD-1x.yml
HINET_SIDD_TEST = '''
name: {name}
model_type: ImageRestorationModel
scale: 1
num_gpu: 1 # set num_gpu: 0 for cpu mode
manual_seed: 10
datasets:
  test:
    name: SIDD
    type: PairedImageDataset_SIDD
    dataroot_gt: {val_gt_lmdb}
    dataroot_lq: {val_lq_lmdb}
    io_backend:
      type: lmdb
network_g:
  type: HINet
  wf: 8
  hin_position_left: 0
  hin_position_right: 4
path:
  pretrain_network_g: {checkpoint}
  strict_load_g: true
  resume_state: ~
val:
  save_img: false
  rgb2bgr: true
  use_image: false
  metrics:
    psnr: # metric name, can be arbitrary
      type: calculate_psnr
      crop_border: 0
      test_y_channel: false
dist_params:
  backend: nccl
  port: 29500
'''

# megvii-research/TLC options/test/GoPro/MPRNetLocal-GoPro.yml
MPRNET_LOCAL_TEST = '''
name: {name}
model_type: ImageRestorationModel
scale: 1
num_gpu: 1 # set num_gpu: 0 for cpu mode
manual_seed: 10
datasets:
  test:
    name: gopro-test
    type: PairedImageDataset
    dataroot_gt: {val_gt}
    dataroot_lq: {val_lq}
    io_backend:
      type: disk
network_g:
  type: MPRNetLocal
  base_size: 96
  n_feat: 8
  scale_unetfeats: 4
  scale_orsnetfeats: 4
  num_cab: 1
path:
  pretrain_network_g: {checkpoint}
  strict_load_g: true
  resume_state: ~
  param_key: state_dict
val:
  save_img: false
  grids: false
  metrics:
    psnr: # metric name, can be arbitrary
      type: calculate_psnr
      crop_border: 0
      test_y_channel: false
    ssim:
      type: calculate_ssim
      crop_border: 0
      test_y_channel: false
dist_params:
  backend: nccl
  port: 29500
'''

# leefly072/DRCNet options/test/SIDD/DRCNet.yml (+ the one line ``preset`` for the release's numerics); its
# options/test/GoPro/DRCNet-GoPro.yml has the same ``val.save_img: true`` without ``suffix``
DRCNET_SIDD_TEST = '''
name: {name}
model_type: ImageRestorationModel
scale: 1
num_gpu: 1 # set num_gpu: 0 for cpu mode
manual_seed: 10
datasets:
  test:
    name: SIDD
    type: PairedImageDataset_SIDD
    dataroot_gt: {val_gt_lmdb}
    dataroot_lq: {val_lq_lmdb}
    io_backend:
      type: lmdb
network_g:
  type: DRCNet
  wf: 8
  hin_position_left: 0
  hin_position_right: 4{preset}
path:
  pretrain_network_g: {checkpoint}
  strict_load_g: true
  resume_state: ~
val:
  save_img: true
  rgb2bgr: true
  use_image: false
  metrics:
    psnr: # metric name, can be arbitrary
      type: calculate_psnr
      crop_border: 0
      test_y_channel: false
    ssim:
      type: calculate_ssim
      crop_border: 0
      test_y_channel: false
dist_params:
  backend: nccl
  port: 29500
'''


def write(tmp_path, text, **fields):
    path = tmp_path / f'{uuid.uuid4().hex[:6]}.yml'
    path.write_text(text.format(**fields))
    return str(path)


def logged_metrics(out, dataset):
    block = out.split(f'Validation {dataset}')[-1]
    return {k: float(v) for k, v in re.findall(r'# (\w+): ([-\d.]+)', block)}


def val_pair(data):
    ds = build_dataset({'name': 'v', 'type': 'PairedImageDataset', 'phase': 'val', 'scale': 1,
                        'dataroot_gt': data['val_gt_lmdb'], 'dataroot_lq': data['val_lq_lmdb'],
                        'io_backend': {'type': 'lmdb'}})
    return ds[0]['lq'][None], ds[0]['gt'][None]


def psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def mprnet_release_checkpoint(path):
    """An MPRNet release-style file: {'epoch', 'state_dict' (``module.``-prefixed), 'optimizer'}."""
    torch.manual_seed(3)
    net = build_network({'type': 'MPRNet', 'n_feat': 8, 'scale_unetfeats': 4, 'scale_orsnetfeats': 4,
                         'num_cab': 1})
    state = {'module.' + k: v for k, v in net.state_dict().items()}
    torch.save({'epoch': 3000, 'state_dict': state, 'optimizer': {'state': {}, 'param_groups': [{'lr': 2e-4}]}},
               path)
    return net


DRCNET_ARCH = {'type': 'DRCNet', 'wf': 8, 'hin_position_left': 0, 'hin_position_right': 4}


def drcnet_scaled_weights():
    """Random DRCNet weights with the response-map convs (x30) and the last conv (x10) scaled up."""
    torch.manual_seed(5)
    return {k: v * 30 if k.endswith('norm.sa.conv1.weight') else v * 10 if k == 'last.weight' else v
            for k, v in build_network(DRCNET_ARCH).state_dict().items()}


@pytest.fixture(scope='module')
def release_runs(request, tiny_data, tmp_path_factory):
    """The literal launches of the selected tests below, all in one interpreter (``launch_batch``, in this order;
    one start-up instead of one per launch): HINet-SIDD train, then its test file twice on the trained checkpoint;
    TLC's MPRNetLocal test file; DRCNet-SIDD's test file without and with ``preset: release``. Each launch is
    ``basicsr/<script>.py -opt FILE --force_yml num_gpu=0 ...`` from the repository root, as before.
    Returns {test: {...}} with each launch's output; the runs' folders under the repository root are removed
    afterwards."""
    wanted = {item.originalname for item in selected_items(request)}
    tmp = tmp_path_factory.mktemp('release_files')
    base = f'pytest_release_{uuid.uuid4().hex[:8]}'
    plan, runs = [], {}  # plan: (test, key, (script, opt_path, *flags))
    if 'test_hinet_sidd_train_and_test_files' in wanted:
        name = base + '_hinet'
        fields = dict(tiny_data, name=name)
        ckpt = os.path.join(REPO, 'experiments', name, 'models', 'net_g_latest.pth')
        runs['hinet'] = {'name': name, 'ckpt': ckpt}
        plan += [('hinet', 'train', ('train', write(tmp, HINET_SIDD_TRAIN, **fields), '--force_yml', 'num_gpu=0')),
                 ('hinet', 'tested', ('test', write(tmp, HINET_SIDD_TEST, **dict(fields, name=name + '_test',
                                                                                 checkpoint=ckpt)),
                                      '--force_yml', 'num_gpu=0')),
                 ('hinet', 'as_images', ('test', write(tmp, HINET_SIDD_TEST, **dict(fields, name=name + '_img',
                                                                                    checkpoint=ckpt)),
                                         '--force_yml', 'num_gpu=0', 'val:use_image=true'))]
    if 'test_tlc_mprnet_local_file_with_param_key_state_dict' in wanted:
        ckpt = str(tmp / 'MPRNet-GoPro.pth')
        mprnet_release_checkpoint(ckpt)
        fields = dict(tiny_data, name=base + '_mprnet', checkpoint=ckpt)
        runs['mprnet'] = {'ckpt': ckpt, 'fields': fields}
        plan.append(('mprnet', 'out', ('test', write(tmp, MPRNET_LOCAL_TEST, **fields), '--force_yml', 'num_gpu=0')))
    if 'test_drcnet_sidd_file_saves_images_without_suffix_and_preset_release' in wanted:
        weights = drcnet_scaled_weights()
        ckpt = str(tmp / 'DRCNet-SIDD.pth')
        torch.save({'params': weights}, ckpt)
        runs['drcnet'] = {'weights': weights, 'names': {}}
        for preset in ('paper', 'release'):
            name = runs['drcnet']['names'][preset] = f'{base}_drcnet_{preset}'
            plan.append(('drcnet', preset, ('test', write(tmp, DRCNET_SIDD_TEST, **dict(
                tiny_data, name=name, checkpoint=ckpt,
                preset='\n  preset: release' if preset == 'release' else '')), '--force_yml', 'num_gpu=0')))
    created = missing_run_folders()
    try:
        if plan:
            done = launch_batch([([f'basicsr/{script}.py', '-opt', opt_path, *flags], REPO)
                                 for _, _, (script, opt_path, *flags) in plan], tmp)
            for (test, key, _), proc in zip(plan, done):
                runs[test][key] = proc
        yield runs
    finally:
        remove_repo_runs(base, created)


def succeeded(proc):
    """The output of a batched launch that must have succeeded (exit 0, no traceback), as ``launch`` checked."""
    assert proc.returncode == 0 and 'Traceback' not in proc.stdout, proc.stdout[-5000:]
    return proc.stdout


@pytest.mark.slow
def test_hinet_sidd_train_and_test_files(tiny_data, release_runs):
    """PairedImageDataset_SIDD (disk train set smaller than gt_size -> padded; LMDB val), ``use_image: false``,
    ``--force_yml num_gpu=0`` on a ``num_gpu: 8`` file, then the test file on the trained checkpoint."""
    run = release_runs['hinet']
    out = succeeded(run['train'])
    assert 'Number of train images: 320000' in out  # the release's fixed length (32 * 10000), not 40 files
    assert 'Require iter number per epoch: 160000' in out
    assert os.path.isdir(os.path.join(REPO, 'tb_logger', run['name']))
    ckpt = run['ckpt']
    trained = logged_metrics(out, 'SIDD_val')['psnr']

    # use_image: false = PSNR of the float output (x 255, not rounded, not clamped) -- not of the 8-bit image
    net = build_network({'type': 'HINet', 'wf': 8, 'hin_position_left': 0, 'hin_position_right': 4}).eval()
    net.load_state_dict(torch.load(ckpt, map_location='cpu', weights_only=True)['params'])
    lq, gt = val_pair(tiny_data)
    with torch.no_grad():
        output = net(lq)[-1]
    on_floats, on_images = psnr(output, gt), psnr(tensor2img(output) / 255.0, tensor2img(gt) / 255.0)
    assert abs(on_floats - on_images) > 0.01  # the two readings differ on this run, so the check below can fail
    assert abs(trained - on_floats) < 2e-3, (trained, on_floats, on_images)

    # the test file as it is, and with --force_yml val:use_image=true (metrics on the saved 8-bit images instead)
    tested, as_images = succeeded(run['tested']), succeeded(run['as_images'])
    assert 'Number of test images in SIDD: 1' in tested
    assert logged_metrics(tested, 'SIDD')['psnr'] == pytest.approx(trained, abs=2e-4)
    assert logged_metrics(as_images, 'SIDD')['psnr'] == pytest.approx(on_images, abs=2e-3)


@pytest.mark.slow
def test_tlc_mprnet_local_file_with_param_key_state_dict(tmp_path, release_runs, monkeypatch):
    run = release_runs['mprnet']
    ckpt, fields = run['ckpt'], run['fields']
    out = succeeded(run['out'])
    assert 'with param key: [state_dict]' in out
    metrics = logged_metrics(out, 'gopro-test')
    assert set(metrics) == {'psnr', 'ssim'} and 5 < metrics['psnr'] < 60

    # without path.param_key the message says what is wrong (in-process launcher, a scratch root)
    text = MPRNET_LOCAL_TEST.replace('  param_key: state_dict\n', '')
    code, err = run_launcher(tmp_path, write(tmp_path, text, **fields), '--force_yml', 'num_gpu=0', mode='test',
                             monkeypatch=monkeypatch)
    line = [x for x in err.splitlines() if x.startswith('hinet_plugins: error:')]
    assert code == 2 and len(line) == 1 and 'Traceback' not in err, err
    for fragment in (ckpt, "has no 'params' entry", "['epoch', 'optimizer', 'state_dict']",
                     'path.param_key: state_dict'):
        assert fragment in line[0], line[0]


@pytest.mark.slow
def test_drcnet_sidd_file_saves_images_without_suffix_and_preset_release(tiny_data, release_runs):
    """``save_img: true`` without ``suffix`` writes ``<img>.png``; ``preset: release`` gives the release's DFR
    numerics, the file as released the paper's: each saved image matches ``DRCNet(preset=...)`` run in the test on
    the same ``{'params'}`` checkpoint. The checkpoint's response-map convs (x30) and last conv (x10) are scaled so
    that the two readings differ by several grey levels (random weights alone hardly use the DFR statistics)."""
    run = release_runs['drcnet']
    weights = run['weights']  # (saved by the fixture as the {'params'} checkpoint of both launches)
    lq, _ = val_pair(tiny_data)
    expected = {}
    for preset in ('paper', 'release'):
        net = build_network(dict(DRCNET_ARCH, preset=preset)).eval()
        net.load_state_dict(weights)
        with torch.no_grad():
            expected[preset] = tensor2img(net(lq)[-1]).astype(int)
    assert np.abs(expected['paper'] - expected['release']).max() >= 3  # so that the checks below can fail
    presets = ('paper', 'release')
    for preset in presets:
        succeeded(run[preset])
    for preset in presets:
        name = run['names'][preset]
        saved = glob.glob(os.path.join(REPO, 'results', name, 'visualization', 'SIDD', '*.png'))
        assert [os.path.basename(p) for p in saved] == ['chelsea.png'], saved
        assert np.abs(cv2.imread(saved[0]).astype(int) - expected[preset]).max() <= 1, preset


def test_sidd_dataset_semantics(tiny_data, tmp_path):
    """``PairedImageDataset_SIDD`` from the registry: fixed training length, small pairs reflect-padded, one of
    the 8 flips/rotations applied to both images alike (all 8 occur), mean/std normalisation; validation length =
    number of files, images unchanged."""
    import random
    gt_dir, lq_dir = tmp_path / 'gt', tmp_path / 'lq'
    gt_dir.mkdir()
    lq_dir.mkdir()
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(gt_dir / 'a.png'), gt)
    cv2.imwrite(str(lq_dir / 'a.png'), 255 - gt)
    base = {'name': 's', 'type': 'PairedImageDataset_SIDD', 'scale': 1, 'dataroot_gt': str(gt_dir),
            'dataroot_lq': str(lq_dir), 'filename_tmpl': '{}', 'io_backend': {'type': 'disk'}}
    train = build_dataset(dict(base, phase='train', gt_size=32, use_flip=False, use_rot=False))
    assert len(train) == 320000
    padded = np.pad(gt[..., ::-1] / 255.0, ((0, 12), (0, 2), (0, 0)), mode='symmetric')  # RGB, 32 x 32
    candidates = [np.rot90(padded, k)[::-1] if flip else np.rot90(padded, k) for k in range(4) for flip in (0, 1)]
    random.seed(0)
    seen = set()
    for index in (0, 5, 319999) + tuple(range(80)):
        item = train[index]
        out_gt, out_lq = item['gt'].permute(1, 2, 0).numpy(), item['lq'].permute(1, 2, 0).numpy()
        matches = [i for i, c in enumerate(candidates) if np.allclose(out_gt, c, atol=1e-6)]
        assert len(matches) == 1 and np.allclose(out_lq, 1 - out_gt, atol=1e-6)  # the same transform for both
        seen.add(matches[0])
    assert seen == set(range(8))
    val = build_dataset(dict(base, phase='val', mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]))
    assert len(val) == 1
    assert np.allclose(val[0]['gt'].permute(1, 2, 0).numpy(), (gt[..., ::-1] / 255.0 - 0.5) / 0.25, atol=1e-5)


def test_rgb2bgr_false_keeps_rgb_order_in_saved_images_and_metrics(tiny_data, tmp_path, monkeypatch):
    """``val.rgb2bgr: false`` (in-process test launcher): the saved PNG holds the channels in RGB order (so it
    reads back reversed), and the metric inputs too (Y of YCbCr, which assumes BGR, then changes)."""
    import logging
    from basicsr.utils.registry import ARCH_REGISTRY
    # an earlier in-process build_network may have set up basicsr's logger without a level: INFO is needed here
    logger = logging.getLogger('basicsr')
    monkeypatch.setattr(logger, 'level', logger.level)  # restored after the test
    logger.setLevel(logging.INFO)
    torch.manual_seed(2)
    ckpt = str(tmp_path / 'net.pth')  # (build_network would set up basicsr's logger before the run: no log file)
    torch.save({'params': ARCH_REGISTRY.get('HINet')(wf=8, depth=3).state_dict()}, ckpt)
    saved, psnrs = {}, {}
    for rgb2bgr in (True, False):
        opt = {'name': f'rgb_{rgb2bgr}', 'model_type': 'ImageRestorationModel', 'scale': 1, 'num_gpu': 0,
               'manual_seed': 10, 'network_g': {'type': 'HINet', 'wf': 8, 'depth': 3},
               'datasets': {'test': {'name': 'v', 'type': 'PairedImageDataset', 'dataroot_gt': tiny_data['val_gt'],
                                     'dataroot_lq': tiny_data['val_lq'], 'io_backend': {'type': 'disk'}}},
               'path': {'pretrain_network_g': ckpt, 'strict_load_g': True},
               'val': {'save_img': True, 'suffix': 'x', 'rgb2bgr': rgb2bgr, 'metrics': {
                   'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': True}}}}
        path = tmp_path / f'{rgb2bgr}.yml'
        path.write_text(__import__('yaml').safe_dump(opt))
        code, err = run_launcher(tmp_path, str(path), mode='test', monkeypatch=monkeypatch)
        assert code == 0, err
        saved[rgb2bgr] = cv2.imread(str(tmp_path / 'results' / f'rgb_{rgb2bgr}' / 'visualization' / 'v' /
                                        'chelsea_x.png'))
        psnrs[rgb2bgr] = logged_metrics(err, 'v')['psnr']
    assert np.array_equal(saved[False], saved[True][..., ::-1]) and not np.array_equal(saved[False], saved[True])
    assert abs(psnrs[True] - psnrs[False]) > 1e-3
