"""``type: Dataset_DefocusDeblur_DualPixel_16bit``: the Restormer release's dual-pixel defocus dataset (DPDD).

Three folders of 16-bit PNGs: ``dataroot_lqL`` and ``dataroot_lqR`` (the two dual-pixel views) and
``dataroot_gt`` (the all-in-focus target). Read unchanged and divided by 65535, as in the release (an 8-bit
file would read 257x too dark: the option check rejects one). A GT file ``<stem>.<ext>`` pairs with the files
of stem ``filename_tmpl.format(stem)`` (default ``'{}'``) in both view folders, whatever their extension; a
missing partner is an error naming it. Disk backend only, as in the release.

The sample is ``lq`` = the two views (RGB) concatenated into 6 channels (left first), ``gt`` 3 channels; the
network takes ``inp_channels: 6`` (Restormer's ``dual_pixel_task``). Training: the three images padded to
``gt_size`` by reflection if smaller, one random crop at the same place, with ``geometric_augs`` one of the 8
flips/rotations for all three (``restormer_paired.crop_and_augment``). Optional ``mean`` / ``std``.
"""
import os
from typing import Dict, List

import cv2
import torch
from basicsr.utils import img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data
from torchvision.transforms.functional import normalize

from ..errors import ConfigError
from .restormer_paired import crop_and_augment, file_client
from ..basicsr_ext import decode_image as decode

ROOTS = ('dataroot_gt', 'dataroot_lqL', 'dataroot_lqR')
IMG_EXTS = ('.png', '.tif', '.tiff')


def _by_stem(folder):
    return {os.path.splitext(n)[0]: os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if n.lower().endswith(IMG_EXTS)}


def dual_pixel_triplets(ds: dict, where: str = 'dataset') -> List[Dict[str, str]]:
    """[{'gt_path', 'lqL_path', 'lqR_path'}] in GT name order; ConfigError naming a missing partner."""
    tmpl = ds.get('filename_tmpl', '{}')
    gt, left, right = (_by_stem(ds[k]) for k in ROOTS)
    triplets = []
    for stem, gt_path in gt.items():
        item = {'gt_path': gt_path}
        for key, views in (('lqL', left), ('lqR', right)):
            name = tmpl.format(stem)
            if name not in views:
                raise ConfigError(f"{where}.dataroot_{key}: no image named '{name}.*' in '{ds[f'dataroot_{key}']}' "
                                  f"for the GT image '{gt_path}'")
            item[f'{key}_path'] = views[name]
        triplets.append(item)
    return triplets


@DATASET_REGISTRY.register()
class Dataset_DefocusDeblur_DualPixel_16bit(data.Dataset):  # noqa: N801  (the release's option-file name)
    """See the module docstring."""

    def __init__(self, opt: dict) -> None:
        super().__init__()
        self.opt = opt
        self.io_backend_opt = dict(opt['io_backend'])
        self.file_client = None
        self.mean, self.std = opt.get('mean'), opt.get('std')
        self.paths = dual_pixel_triplets(opt)

    @staticmethod
    def check_options(ds: dict, where: str) -> None:
        for key in ROOTS:
            root = ds.get(key)
            if not root or not os.path.isdir(root):
                raise ConfigError(f'{where}.{key}: {root!r} is not a folder (16-bit PNGs of the dual-pixel set)')
        backend = (ds.get('io_backend') or {}).get('type')
        if backend != 'disk':
            raise ConfigError(f'{where}.io_backend.type must be disk for this dataset, got {backend!r}')
        triplets = dual_pixel_triplets(ds, where)
        if not triplets:
            raise ConfigError(f"{where}.dataroot_gt: no images in '{ds['dataroot_gt']}'")
        for key in ('gt_path', 'lqL_path'):  # the first triplet is enough to catch an 8-bit set
            img = cv2.imread(triplets[0][key], cv2.IMREAD_UNCHANGED)
            if img is not None and img.dtype != 'uint16':
                raise ConfigError(f"{where}: '{triplets[0][key]}' is {img.dtype.name}; this dataset reads 16-bit "
                                  'images (divided by 65535)')
        if ds.get('phase') == 'train' and (not isinstance(ds.get('gt_size'), int) or ds['gt_size'] <= 0):
            raise ConfigError(f"{where}.gt_size must be a positive integer, got {ds.get('gt_size')!r}")

    @staticmethod
    def input_channels(ds: dict) -> int:
        return 6  # the two views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        file_client(self)
        paths = self.paths[index % len(self.paths)]
        read = {k: decode(self, paths[f'{k}_path'], k, flag=cv2.IMREAD_UNCHANGED, peak=65535.0)
                for k in ('gt', 'lqL', 'lqR')}
        gt, left, right = read['gt'], read['lqL'], read['lqR']
        if self.opt['phase'] == 'train':
            (gt,), (left, right) = crop_and_augment(self, [gt], [left, right], paths['gt_path'])
        gt, left, right = img2tensor([gt, left, right], bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            for img in (gt, left, right):
                normalize(img, self.mean, self.std, inplace=True)
        return {'lq': torch.cat([left, right], 0), 'gt': gt, 'lq_path': paths['lqL_path'],
                'gt_path': paths['gt_path']}
