"""Every shipped training file carries its release's recipe.

The values below are facts read off the authors' public files (named per entry): optimizer, scheduler, iterations,
warm-up, gradient clipping, losses, patch size, total batch, flips/rotations, progressive patches, mixup, EMA.
Epoch-based releases (MPRNet, FCN) are converted at their data sizes, as the option files explain. A file that
gives a paper's reading instead names its release file and the keys in which it differs. Files without a release
counterpart are listed as such, so a new training file must be registered here.
"""
import glob
import os
import re

import pytest
import yaml
from basicsr.utils.registry import MODEL_REGISTRY
from conftest import REPO

import hinet_plugins  # noqa: F401  (registration)


def optim(type_, lr, wd=0.0, betas=(0.9, 0.999)):
    return {'type': type_, 'lr': lr, 'weight_decay': wd, 'betas': betas}


def cosine(t_max, eta_min):
    return {'type': 'TrueCosineAnnealingLR', 'T_max': t_max, 'eta_min': eta_min}


def recipe(opt_, sched, total, losses, gt_size, batch, warmup=-1, clip=0.01, flips=(True, True), progressive=None,
           mixup=None, clamped=False, ema=0.0):
    return {'optim': opt_, 'scheduler': sched, 'total_iter': total, 'warmup_iter': warmup, 'grad_clip': clip,
            'losses': losses, 'loss_on_clamped': clamped, 'gt_size': gt_size, 'total_batch': batch, 'flips': flips,
            'progressive': progressive, 'mixup': mixup, 'ema_decay': ema}


def mix(beta, identity, per_sample=False, after=0):
    return {'beta': beta, 'use_identity': identity, 'per_sample': per_sample, 'after_iter': after}


# The HINet release (megvii-model/HINet): num_gpu 8, batch_size_per_gpu 8, gt_size 256, Adam 2e-4, 400k
# iterations; its model clips gradients at max-norm 0.01 unless use_grad_clip is false.
HINET_PSNR = recipe(optim('Adam', 2e-4, 0.0, (0.9, 0.99)), cosine(400000, 1e-7), 400000,
                    [{'type': 'PSNRLoss', 'loss_weight': 0.5}], 256, 64)
# The NAFNet release (megvii-research/NAFNet), width-64 files: num_gpu 8, batch 8 per GPU, 256 patches.
NAFNET = recipe(optim('AdamW', 1e-3, 1e-3, (0.9, 0.9)), cosine(400000, 1e-7), 400000,
                [{'type': 'PSNRLoss', 'loss_weight': 1}], 256, 64)
# The Restormer release (swz30/Restormer): num_gpu 8, progressive patches, cyclic cosine, AdamW, clipping on.
RESTORMER = recipe(optim('AdamW', 3e-4, 1e-4, (0.9, 0.999)),
                   {'type': 'CosineAnnealingRestartCyclicLR', 'periods': [92000, 208000], 'restart_weights': [1, 1],
                    'eta_mins': [3e-4, 1e-6]}, 300000, [{'type': 'L1Loss', 'loss_weight': 1}], 384, 64,
                   progressive={'gt_sizes': [128, 160, 192, 256, 320, 384], 'mini_batch_sizes': [8, 5, 4, 2, 1, 1],
                                'iters': [92000, 64000, 48000, 36000, 36000, 24000]})
# MPRNet's training.yml + train.py (swz30/MPRNet): batch 16, Adam 2e-4 betas (0.9, 0.999), 3-epoch warm-up, cosine
# to 1e-6, no clipping; Charbonnier (eps 1e-3: basicsr's eps 1e-6) + 0.05 x edge loss (deblurring, deraining).
CHARB = {'type': 'CharbonnierLoss', 'loss_weight': 1.0, 'eps': 1e-6}
EDGE = {'type': 'EdgeLoss', 'loss_weight': 0.05, 'eps': 1e-6}
MPRNET_DEBLUR = recipe(optim('Adam', 2e-4), cosine(3000 * 132, 1e-6), 3000 * 132, [CHARB, EDGE], 256, 16,
                       warmup=3 * 132, clip=None)  # GoPro: 2103 pairs, ceil(2103 / 16) = 132 iterations an epoch
# DRCNet's release (leefly072/DRCNet): loss_weight x (L1 + 0.05 x Intra-CR), VGG19 relu1_1..3_1 at 1/16, 1/8, 1/4,
# negatives lam x input + (1 - lam) x clean for lam 1, 0.95, 0.9, unnormalised VGG input.
INTRA_CR = {'type': 'IntraCRLoss', 'l1_weight': 1.0, 'alpha': 0.05, 'lambdas': [1.0, 0.95, 0.9], 'mixup': 'release',
            'layer_weights': {'relu1_1': 0.0625, 'relu2_1': 0.125, 'relu3_1': 0.25}, 'use_input_norm': False}

RELEASES = {
    'HINet-GoPro': ('megvii-model/HINet options/train/GoPro/HINet.yml', HINET_PSNR),
    'HINet-REDS': ('megvii-model/HINet options/train/REDS/HINet.yml', HINET_PSNR),
    'HINet-Rain13k': ('megvii-model/HINet options/train/Rain13k/HINet.yml', {**HINET_PSNR, 'warmup_iter': 10000}),
    'HINet-SIDD': ('megvii-model/HINet options/train/SIDD/HINet.yml',
                   {**HINET_PSNR, 'optim': optim('Adam', 2e-4, 0.0, (0.9, 0.999)), 'scheduler': cosine(400000, 1e-6),
                    'losses': [{'type': 'L1Loss', 'loss_weight': 1}]}),
    'NAFNet-GoPro': ('megvii-research/NAFNet options/train/GoPro/NAFNet-width64.yml', NAFNET),
    'NAFNet-SIDD': ('megvii-research/NAFNet options/train/SIDD/NAFNet-width64.yml',
                    {**NAFNET, 'optim': optim('AdamW', 1e-3, 0.0, (0.9, 0.9)), 'flips': (False, False)}),
    'Restormer-GoPro': ('swz30/Restormer Motion_Deblurring/Options/Deblurring_Restormer.yml', RESTORMER),
    'Restormer-SIDD': ('swz30/Restormer Denoising/Options/RealDenoising_Restormer.yml',
                       {**RESTORMER, 'mixup': mix(1.2, True)}),
    'MPRNet-GoPro': ('swz30/MPRNet Deblurring/training.yml + train.py', MPRNET_DEBLUR),
    # Rain13k: 13,712 pairs, ceil(13712 / 16) = 857 iterations an epoch, 250 epochs
    'MPRNet-Rain13k': ('swz30/MPRNet Deraining/training.yml + train.py',
                       {**MPRNET_DEBLUR, 'scheduler': cosine(250 * 857, 1e-6), 'total_iter': 250 * 857,
                        'warmup_iter': 3 * 857}),
    # SIDD: 320 pairs x 300 patches = 96,000, 6,000 iterations an epoch, 80 epochs, cosine set for 117 + 3 epochs,
    # 128 patches, weight decay 1e-8, Charbonnier of the clamped outputs only, MixUp Beta(0.6) per sample after 5 epochs
    'MPRNet-SIDD': ('swz30/MPRNet Denoising/training.yml + train.py',
                    {**MPRNET_DEBLUR, 'optim': optim('Adam', 2e-4, 1e-8), 'scheduler': cosine(120 * 6000, 1e-6),
                     'total_iter': 80 * 6000, 'warmup_iter': 3 * 6000, 'losses': [CHARB], 'loss_on_clamped': True,
                     'gt_size': 128, 'mixup': mix(0.6, False, per_sample=True, after=5 * 6000)}),
    'FCN-GoPro': ('XinyueZhangqdu/FCN training.yml + train.py (MPRNet deblurring recipe)', MPRNET_DEBLUR),
    'DRCNet-GoPro': ('leefly072/DRCNet options/train/GoPro/DRCNet.yml',
                     recipe(optim('Adam', 1.6e-5, 0.0, (0.9, 0.99)), cosine(800000, 1e-8), 400000,
                            [{**INTRA_CR, 'loss_weight': 0.5}], 256, 32)),
    'DRCNet-Rain13k': ('leefly072/DRCNet options/train/Rain13k/DRCNet.yml',
                       recipe(optim('Adam', 5.95e-5, 0.0, (0.9, 0.99)), cosine(400000, 1e-7), 400000,
                              [{**INTRA_CR, 'loss_weight': 0.5}], 256, 64, warmup=1000)),
    'DRCNet-SIDD': ('leefly072/DRCNet options/train/SIDD/DRCNet.yml (num_gpu 1)',
                    recipe(optim('Adam', 1e-6, 0.0, (0.9, 0.999)), cosine(400000, 1e-6), 400000,
                           [{**INTRA_CR, 'loss_weight': 1.0}], 256, 4)),
}
# A paper's reading: (the release-following file, the recipe keys in which it differs)
PAPER_READINGS = {
    'HINet-SIDD-paper': ('HINet-SIDD', {'optim', 'scheduler', 'losses'}),
    'FCN-GoPro-StageRatio': ('FCN-GoPro', {'losses'}),
}
NO_RELEASE = {'Custom-HINet', 'Custom-Denoise-NAFNet', 'HINet-Demo', 'NAFNet-Demo'}  # ours: templates, the demo

IGNORED_LOSS_KEYS = ('reduction', 'toY', 'vgg_weights')


def shipped(name):
    with open(os.path.join(REPO, 'options', 'train', f'{name}.yml')) as f:
        text = f.read()
    return yaml.safe_load(text), text


def floats(value):
    """Numbers as floats (YAML's 1 and 1.0 are the same value), lists and tuples alike."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [floats(v) for v in value]
    if isinstance(value, dict):
        return {k: floats(v) for k, v in value.items()}
    return value


def effective_recipe(opt, text):
    """The recipe a shipped file trains with, defaults resolved as the model does."""
    tr, ds = opt['train'], opt['datasets']['train']
    optim_g = dict(tr['optim_g'])
    gpus = int(re.search(r'Assumes (\d+) GPU', text).group(1))
    losses = []
    for key in ('pixel_opt', 'losses'):
        value = tr.get(key) or []
        losses += value if isinstance(value, list) else [value]
    clip = tr.get('use_grad_clip', MODEL_REGISTRY.get(opt['model_type']).default_grad_clip)
    mixing = tr.get('mixing_augs') or {}
    progressive = {k: ds[k] for k in ('gt_sizes', 'mini_batch_sizes', 'iters')} if ds.get('gt_sizes') else None
    return floats({
        'optim': {'type': optim_g['type'], 'lr': optim_g['lr'], 'weight_decay': optim_g.get('weight_decay', 0),
                  'betas': optim_g.get('betas', (0.9, 0.999))},
        'scheduler': tr['scheduler'], 'total_iter': tr['total_iter'], 'warmup_iter': tr.get('warmup_iter', -1),
        'grad_clip': tr.get('grad_clip_norm', 0.01) if clip else None,
        'losses': [{k: v for k, v in spec.items() if k not in IGNORED_LOSS_KEYS} for spec in losses],
        'loss_on_clamped': bool(tr.get('loss_on_clamped', False)),
        'gt_size': ds['gt_size'], 'total_batch': ds['batch_size_per_gpu'] * gpus,
        'flips': (ds.get('use_hflip', False), ds.get('use_rot', False)), 'progressive': progressive,
        'mixup': {'beta': mixing.get('mixup_beta', 1.2), 'use_identity': mixing.get('use_identity', False),
                  'per_sample': mixing.get('per_sample', False), 'after_iter': mixing.get('after_iter', 0)}
        if mixing.get('mixup') else None,
        'ema_decay': tr.get('ema_decay', 0),
    })


def test_every_shipped_training_file_is_registered_here():
    names = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(REPO, 'options', 'train', '*.yml'))}
    assert names == set(RELEASES) | set(PAPER_READINGS) | NO_RELEASE


@pytest.mark.parametrize('name', sorted(RELEASES))
def test_shipped_training_file_carries_the_release_recipe(name):
    source, expected = RELEASES[name]
    opt, text = shipped(name)
    ours = effective_recipe(opt, text)
    expected = floats(expected)
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert not wrong, f'{name} departs from {source} in (ours, release): {wrong}'
    assert set(ours) == set(expected)


@pytest.mark.parametrize('name', sorted(PAPER_READINGS))
def test_paper_reading_files_differ_from_the_release_file_only_where_they_say(name):
    release_name, differing = PAPER_READINGS[name]
    ours = effective_recipe(*shipped(name))
    release = effective_recipe(*shipped(release_name))
    assert {k for k in ours if ours[k] != release[k]} == differing
    assert f'options/train/{release_name}.yml' in shipped(name)[1]  # and it names the release-following file
