"""Restormer's dataset types through basicsr's registry: Dataset_PairedImage, Dataset_GaussianDenoising and
Dataset_DefocusDeblur_DualPixel_16bit (the release's semantics; see their module docstrings)."""
import random

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataset

from hinet_plugins.errors import ConfigError
from hinet_plugins.basicsr_ext.options_check import check_dataset
from hinet_plugins.basicsr_ext.resume import PositionSeeded, SampleIndex


def dihedral_candidates(img):
    return [np.rot90(img, k)[::-1] if flip else np.rot90(img, k) for k in range(4) for flip in (0, 1)]


def test_paired_image_pads_crops_and_applies_one_of_8_transforms_to_both(tmp_path):
    gt_dir, lq_dir = tmp_path / 'gt', tmp_path / 'lq'
    gt_dir.mkdir()
    lq_dir.mkdir()
    gt = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(gt_dir / 'a.png'), gt)
    cv2.imwrite(str(lq_dir / 'a_blur.png'), 255 - gt)  # paired through filename_tmpl
    base = {'name': 'p', 'type': 'Dataset_PairedImage', 'scale': 1, 'dataroot_gt': str(gt_dir),
            'dataroot_lq': str(lq_dir), 'filename_tmpl': '{}_blur', 'io_backend': {'type': 'disk'}}
    train = build_dataset(dict(base, phase='train', gt_size=32, geometric_augs=True))
    assert len(train) == 1
    padded = np.pad(gt[..., ::-1] / 255.0, ((0, 12), (0, 2), (0, 0)), mode='symmetric')  # RGB, 32 x 32
    candidates = dihedral_candidates(padded)
    random.seed(0)
    seen = set()
    for _ in range(80):
        item = train[0]
        out_gt, out_lq = item['gt'].permute(1, 2, 0).numpy(), item['lq'].permute(1, 2, 0).numpy()
        matches = [i for i, c in enumerate(candidates) if np.allclose(out_gt, c, atol=1e-6)]
        assert len(matches) == 1 and np.allclose(out_lq, 1 - out_gt, atol=1e-6)
        seen.add(matches[0])
    assert seen == set(range(8))
    plain = build_dataset(dict(base, phase='train', gt_size=32, geometric_augs=False))
    assert all(np.allclose(plain[0]['gt'].permute(1, 2, 0).numpy(), padded, atol=1e-6) for _ in range(5))
    val = build_dataset(dict(base, phase='val'))
    assert val[0]['gt'].shape == (3, 20, 30) and val[0]['lq_path'].endswith('a_blur.png')


def test_paired_image_reads_lmdb_like_folders(tiny_data):
    def opt(kind):
        suffix = '_lmdb' if kind == 'lmdb' else ''
        return {'name': 'p', 'type': 'Dataset_PairedImage', 'phase': 'val', 'scale': 1, 'io_backend': {'type': kind},
                'dataroot_gt': tiny_data['val_gt' + suffix], 'dataroot_lq': tiny_data['val_lq' + suffix]}
    disk, lmdb = build_dataset(opt('disk'))[0], build_dataset(opt('lmdb'))[0]
    assert torch.equal(disk['gt'], lmdb['gt']) and torch.equal(disk['lq'], lmdb['lq'])


def gaussian(root, phase='train', backend='disk', **extra):
    opt = {'name': 'g', 'type': 'Dataset_GaussianDenoising', 'phase': phase, 'scale': 1, 'dataroot_gt': root,
           'dataroot_lq': 'none', 'io_backend': {'type': backend}, 'in_ch': 3}
    if phase == 'train':
        opt.update(sigma_type='constant', sigma_range=25, gt_size=48, geometric_augs=True)
    else:
        opt.update(sigma_test=25)
    opt.update(extra)
    return build_dataset(opt)


def test_gaussian_training_noise_is_fresh_at_every_read(tiny_data):
    ds = gaussian(tiny_data['train_gt'], geometric_augs=False, gt_size=64)  # 64 = whole crop: same gt every read
    first, second = ds[3], ds[3]
    assert torch.equal(first['gt'], second['gt'])
    noise1, noise2 = first['lq'] - first['gt'], second['lq'] - second['gt']
    assert not torch.allclose(noise1, noise2)
    for noise in (noise1, noise2):
        assert abs(float(noise.std()) - 25 / 255) < 0.004 and abs(float(noise.mean())) < 0.004
    assert len(ds) == tiny_data['train_count'] and first['gt'].shape == (3, 64, 64)


@pytest.mark.parametrize('sigma_type, sigma_range, allowed', [
    ('random', [0, 50], lambda s: 0 <= s <= 50), ('choice', [15, 50], lambda s: s in (15, 50)),
    ('constant', 15, lambda s: s == 15)])
def test_gaussian_sigma_types(tiny_data, sigma_type, sigma_range, allowed):
    ds = gaussian(tiny_data['train_gt'], sigma_type=sigma_type, sigma_range=sigma_range)
    random.seed(1)
    sigmas = {round(float((item['lq'] - item['gt']).std()) * 255) for item in (ds[i % 5] for i in range(30))}
    assert all(allowed(s) or allowed(s - 1) or allowed(s + 1) for s in sigmas), sigmas  # within 1 grey level
    assert len(sigmas) > (1 if sigma_type != 'constant' else 0)
    assert len(sigmas) == 1 or sigma_type != 'constant'


def test_gaussian_quantize_clips_and_rounds_to_8_bits(tiny_data):
    ds = gaussian(tiny_data['train_gt'], quantize=True, sigma_range=50)
    lq = ds[0]['lq']
    assert float(lq.min()) == 0.0 and float(lq.max()) == 1.0  # sigma 50: some pixels clipped at both ends
    assert torch.allclose(lq * 255, torch.round(lq * 255), atol=1e-4)
    val = gaussian(tiny_data['train_gt'], phase='val', quantize=True)[0]['lq']
    assert torch.allclose(val * 255, torch.round(val * 255), atol=1e-4) and 0 <= float(val.min())


def test_gaussian_grayscale_and_lmdb_of_clean_images(tiny_data):
    gray = gaussian(tiny_data['train_gt_lmdb'], backend='lmdb', in_ch=1)
    item = gray[0]
    assert item['gt'].shape == item['lq'].shape == (1, 48, 48)
    assert len(gray) == tiny_data['train_count']
    disk = gaussian(tiny_data['train_gt'], phase='val', in_ch=1)[0]['gt']  # the same image from the folder
    gray.file_client.client._client['gt'].close()  # (one LMDB environment per process)
    val = gaussian(tiny_data['train_gt_lmdb'], phase='val', backend='lmdb', in_ch=1)[0]['gt']
    assert torch.equal(val, disk) and val.shape == (1, 64, 64)


def test_gaussian_training_noise_follows_the_position_seed(tiny_data):
    """What exact resume relies on: the draws of a sample depend only on (seed, epoch, position)."""
    ds = PositionSeeded(gaussian(tiny_data['train_gt'], sigma_type='random', sigma_range=[0, 50]))
    a, b = ds[SampleIndex(4, 10, 2, 7)], ds[SampleIndex(4, 10, 2, 7)]
    assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])
    assert not torch.equal(a['lq'], ds[SampleIndex(4, 10, 3, 7)]['lq'])  # another epoch: other noise and crop


def test_gaussian_validation_noise_is_fixed_per_image_and_leaves_global_generators_alone(tiny_data):
    torch.manual_seed(0)
    np.random.seed(0)
    before = torch.rand(3), np.random.rand(3)
    torch.manual_seed(0)
    np.random.seed(0)
    one, two = gaussian(tiny_data['train_gt'], phase='val'), gaussian(tiny_data['train_gt'], phase='val')
    first = one[0]
    assert torch.equal(first['lq'], one[0]['lq']) and torch.equal(first['lq'], two[0]['lq'])
    after = torch.rand(3), np.random.rand(3)
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    noise = first['lq'] - first['gt']
    assert abs(float(noise.std()) - 25 / 255) < 0.005
    assert not torch.allclose(noise, one[1]['lq'] - one[1]['gt'])  # another image, other noise
    assert first['gt'].shape == (3, 64, 64)  # whole image


@pytest.mark.parametrize('change, message', [
    ({'sigma_type': 'uniform'}, "sigma_type must be one of ['constant', 'random', 'choice']"),
    ({'sigma_type': 'random', 'sigma_range': 25}, 'sigma_range with sigma_type random must be [low, high]'),
    ({'in_ch': 2}, 'in_ch must be 1 (grayscale) or 3 (colour)'),
    ({'dataroot_gt': '/nonexistent/clean'}, "dataroot_gt: '/nonexistent/clean' does not exist"),
    ({'io_backend': {'type': 'lmdb'}}, 'io_backend is lmdb but')])
def test_gaussian_option_errors_name_the_key(tiny_data, change, message):
    ds = {'name': 'g', 'type': 'Dataset_GaussianDenoising', 'phase': 'train', 'dataroot_gt': tiny_data['train_gt'],
          'dataroot_lq': 'none', 'io_backend': {'type': 'disk'}, 'sigma_type': 'constant', 'sigma_range': 25,
          'gt_size': 48, 'in_ch': 3}
    with pytest.raises(ConfigError) as err:
        check_dataset('train', dict(ds, **change), 'opt.yml')
    assert message in str(err.value) and 'opt.yml: datasets.train.' in str(err.value)


def write_dual_pixel(root, names, dtype=np.uint16):
    rng = np.random.default_rng(0)
    top = np.iinfo(dtype).max
    for name in names:
        for kind in ('gt', 'L', 'R'):
            (root / kind).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / kind / f'{name}.png'), rng.integers(0, top + 1, (24, 28, 3), dtype=dtype))


def dual_pixel_opt(root, phase='val', **extra):
    return dict({'name': 'dp', 'type': 'Dataset_DefocusDeblur_DualPixel_16bit', 'phase': phase, 'scale': 1,
                 'dataroot_gt': str(root / 'gt'), 'dataroot_lqL': str(root / 'L'), 'dataroot_lqR': str(root / 'R'),
                 'io_backend': {'type': 'disk'}}, **extra)


def test_dual_pixel_16bit_reads_six_channels_over_65535(tmp_path):
    write_dual_pixel(tmp_path, ['a', 'b'])
    val = build_dataset(dual_pixel_opt(tmp_path))
    item = val[1]
    assert item['lq'].shape == (6, 24, 28) and item['gt'].shape == (3, 24, 28)
    left = cv2.imread(str(tmp_path / 'L' / 'b.png'), cv2.IMREAD_UNCHANGED)[..., ::-1] / 65535.0
    right = cv2.imread(str(tmp_path / 'R' / 'b.png'), cv2.IMREAD_UNCHANGED)[..., ::-1] / 65535.0
    assert np.allclose(item['lq'][:3].permute(1, 2, 0).numpy(), left, atol=1e-6)
    assert np.allclose(item['lq'][3:].permute(1, 2, 0).numpy(), right, atol=1e-6)
    train = build_dataset(dual_pixel_opt(tmp_path, phase='train', gt_size=32, geometric_augs=True))
    assert train[0]['lq'].shape == (6, 32, 32)  # padded from 24 x 28
    check_dataset('val', dual_pixel_opt(tmp_path), 'opt.yml')


def test_dual_pixel_errors_name_the_missing_view_and_8bit_files(tmp_path):
    write_dual_pixel(tmp_path / 'ok', ['a', 'b'])
    (tmp_path / 'ok' / 'R' / 'b.png').unlink()
    with pytest.raises(ConfigError, match=r"datasets.val.dataroot_lqR: no image named 'b\.\*'"):
        check_dataset('val', dual_pixel_opt(tmp_path / 'ok'), 'opt.yml')
    write_dual_pixel(tmp_path / 'eight', ['a'], dtype=np.uint8)
    with pytest.raises(ConfigError, match='is uint8; this dataset reads 16-bit images'):
        check_dataset('val', dual_pixel_opt(tmp_path / 'eight'), 'opt.yml')
