"""``type: Dataset_GaussianDenoising``: clean images in, (noisy, clean) pairs out, noise drawn on the fly.

The Restormer release's Gaussian denoising dataset (its option-file keys; our code). Only ``dataroot_gt`` is read
(a folder of clean images, an LMDB of them such as the ``gt.lmdb`` of ``prepare_data.py``, or a ``meta_info_file``);
``dataroot_lq`` is ignored (the release files say ``none``).

Decisions:
- Training noise is new at every read but reproducible: its draws come from python's ``random`` and torch's global
  generator, which ``resume.PositionSeeded`` seeds per sample, so ``--auto_resume`` draws the uninterrupted run's noise.
- Validation noise is fixed per image, seeded from its file name (the release reseeds numpy's global generator with
  0 for every image, which also resets the training draws): the same image gets the same noise in every run.
- Nothing is clipped, as in the release, unless ``quantize: true`` (our key).
"""
import os
import random
import zlib
from typing import List, Sequence

import cv2
import numpy as np
import torch
from basicsr.data.data_util import paths_from_lmdb
from basicsr.utils import img2tensor, scandir
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from ..errors import ConfigError
from .restormer_paired import file_client
from .sidd_dataset import dihedral, pad_to
from ..basicsr_ext import decode_image as decode

SIGMA_TYPES = ('constant', 'random', 'choice')
IMG_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def check_sigma(ds: dict, where: str) -> None:
    """ConfigError unless the noise options of ``ds`` (one phase) are complete and consistent."""
    if ds.get('phase') == 'train':
        kind, value = ds.get('sigma_type'), ds.get('sigma_range')
        if kind not in SIGMA_TYPES:
            raise ConfigError(f'{where}.sigma_type must be one of {list(SIGMA_TYPES)}, got {kind!r}')
        ok = {'constant': _number(value),
              'random': isinstance(value, list) and len(value) == 2 and all(map(_number, value))
              and value[0] <= value[1],
              'choice': isinstance(value, list) and len(value) > 0 and all(map(_number, value))}[kind]
        if not ok:
            expected = {'constant': 'a number >= 0 (sigma on the 0-255 scale)', 'random': '[low, high], 0 <= low '
                        '<= high', 'choice': 'a non-empty list of numbers >= 0'}[kind]
            raise ConfigError(f'{where}.sigma_range with sigma_type {kind} must be {expected}, got {value!r}')
        if not isinstance(ds.get('gt_size'), int) or ds['gt_size'] <= 0:
            raise ConfigError(f"{where}.gt_size must be a positive integer (the training patch), got "
                              f"{ds.get('gt_size')!r}")
    elif not _number(ds.get('sigma_test')):
        raise ConfigError(f"{where}.sigma_test must be a number >= 0 (sigma on the 0-255 scale), got "
                          f"{ds.get('sigma_test')!r}")
    if ds.get('in_ch', 3) not in (1, 3):
        raise ConfigError(f"{where}.in_ch must be 1 (grayscale) or 3 (colour), got {ds.get('in_ch')!r}")


def clean_image_paths(ds: dict) -> List[str]:
    """The clean images of ``ds``: LMDB keys, ``meta_info_file`` entries or the image files of the folder."""
    root, backend = ds['dataroot_gt'], ds['io_backend']['type']
    if backend == 'lmdb':
        return paths_from_lmdb(root)
    if ds.get('meta_info_file'):
        with open(ds['meta_info_file']) as f:
            return [os.path.join(root, line.split(' ')[0]) for line in f if line.strip()]
    return sorted(os.path.join(root, p) for p in scandir(root) if p.lower().endswith(IMG_EXTS))


def validation_noise(path: str, shape: Sequence[int], sigma: float) -> torch.Tensor:
    """The fixed noise of one validation image: N(0, (sigma/255)^2), seeded from its file name."""
    rng = np.random.default_rng(zlib.crc32(os.path.basename(str(path)).encode()))
    return torch.from_numpy(rng.standard_normal(shape) * (sigma / 255.0)).float()


@DATASET_REGISTRY.register()
class Dataset_GaussianDenoising(data.Dataset):  # noqa: N801  (the release's option-file name)
    """Clean image -> {'lq': noisy, 'gt': clean}; ``in_ch: 3`` reads colour (RGB tensors), ``in_ch: 1`` grayscale.

    Training: reflect-pad to ``gt_size`` if smaller, one random ``gt_size`` crop, with ``geometric_augs`` one of the
    8 flips/rotations, then ``lq = gt + sigma / 255 * N(0, 1)`` with ``sigma`` per sample from ``sigma_type``:
    ``constant`` (``sigma_range`` is the value), ``random`` (uniform in ``sigma_range: [lo, hi]``) or ``choice`` (one
    entry of the list). Validation / test: ``sigma_test`` noise (``validation_noise``). ``quantize: true`` clips the
    noisy image to [0, 1] and rounds it to 8-bit levels, as a noisy photo stored in an 8-bit file (both phases).
    """

    def __init__(self, opt: dict) -> None:
        super().__init__()
        self.opt = opt
        self.in_ch = opt.get('in_ch', 3)
        self.io_backend_opt = dict(opt['io_backend'])
        if self.io_backend_opt['type'] == 'lmdb':
            self.io_backend_opt.update(db_paths=[opt['dataroot_gt']], client_keys=['gt'])
        self.file_client = None
        self.paths = clean_image_paths(opt)

    @staticmethod
    def check_options(ds: dict, where: str) -> None:
        check_sigma(ds, where)
        root, backend = ds.get('dataroot_gt'), (ds.get('io_backend') or {}).get('type')
        if not root or not os.path.exists(root):
            raise ConfigError(f"{where}.dataroot_gt: {root!r} does not exist (a folder or LMDB of clean images)")
        if backend not in ('disk', 'lmdb'):
            raise ConfigError(f"{where}.io_backend.type must be disk or lmdb, got {backend!r}")
        if backend == 'lmdb' and not root.endswith('.lmdb'):
            raise ConfigError(f"{where}.dataroot_gt: io_backend is lmdb but '{root}' does not end in .lmdb")
        if backend == 'lmdb' and not os.path.isfile(os.path.join(root, 'meta_info.txt')):
            raise ConfigError(f"{where}.dataroot_gt: LMDB '{root}' has no meta_info.txt")
        if ds.get('meta_info_file') and not os.path.isfile(ds['meta_info_file']):
            raise ConfigError(f"{where}.meta_info_file: '{ds['meta_info_file']}' does not exist")
        if not clean_image_paths(ds):
            raise ConfigError(f"{where}.dataroot_gt: no images in '{root}'")

    @staticmethod
    def input_channels(ds: dict) -> int:
        return ds.get('in_ch', 3)

    def __len__(self) -> int:
        return len(self.paths)

    def sigma(self) -> float:
        kind, value = self.opt['sigma_type'], self.opt['sigma_range']
        if kind == 'constant':
            return float(value)
        if kind == 'random':
            return random.uniform(value[0], value[1])
        return float(random.choice(value))

    def __getitem__(self, index: int) -> dict:
        file_client(self)
        path = self.paths[index % len(self.paths)]
        flag = cv2.IMREAD_COLOR if self.in_ch == 3 else cv2.IMREAD_GRAYSCALE
        img = decode(self, path, 'gt', flag=flag)
        if self.opt['phase'] == 'train':
            size = self.opt['gt_size']
            img = pad_to(img, size)
            top, left = random.randint(0, img.shape[0] - size), random.randint(0, img.shape[1] - size)
            img = img[top:top + size, left:left + size]
            if self.opt.get('geometric_augs', False):
                img = dihedral(img, random.randint(0, 7))
        gt = img2tensor(np.ascontiguousarray(img), bgr2rgb=self.in_ch == 3, float32=True)
        if self.opt['phase'] == 'train':
            lq = gt + torch.randn(gt.shape) * (self.sigma() / 255.0)
        else:
            lq = gt + validation_noise(path, tuple(gt.shape), self.opt['sigma_test'])
        if self.opt.get('quantize', False):
            lq = torch.round(lq.clamp(0, 1) * 255) / 255
        return {'lq': lq, 'gt': gt, 'lq_path': path, 'gt_path': path}
