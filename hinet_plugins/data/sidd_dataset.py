"""``type: PairedImageDataset_SIDD``: the HINet/DRCNet releases' SIDD dataset name, so their option files run.

Our implementation of the semantics the HINet release documents for that class (the class itself is not used).
Pairing and storage exactly as basicsr's ``PairedImageDataset`` (LMDB, ``meta_info_file`` or folders with
``filename_tmpl``); training pads, crops and augments (``PairedImageDataset_SIDD``).

Decisions:
- As in the release, training always augments with all 8 flips/rotations: ``use_flip`` / ``use_hflip`` /
  ``use_rot`` of the release files are accepted and change nothing.
- A training epoch is ``320,000`` samples (the release's ``32 * 10000``), whatever the number of files.
- Random draws use python's ``random`` module, like basicsr's own ``paired_random_crop`` / ``augment``. An image
  that does not decode stops the run with its path (``basicsr_ext.decode_image``). ``pad_to`` and ``dihedral``
  are shared with the other datasets.
"""
import random

import numpy as np
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.data.transforms import paired_random_crop
from basicsr.utils import FileClient, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torchvision.transforms.functional import normalize

from ..basicsr_ext import decode_image as decode

TRAIN_LENGTH = 32 * 10000


def pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad an HWC image at the bottom/right to at least ``size`` x ``size`` (unchanged when large enough)."""
    h, w = img.shape[:2]
    pad_h, pad_w = max(0, size - h), max(0, size - w)
    if not pad_h and not pad_w:
        return img
    return np.pad(img, ((0, pad_h), (0, pad_w)) + ((0, 0),) * (img.ndim - 2), mode='symmetric')


def dihedral(img: np.ndarray, mode: int) -> np.ndarray:
    """One of the 8 flips/rotations of an HWC image: ``mode // 2`` quarter turns, then a vertical flip if odd."""
    out = np.rot90(img, mode // 2)
    if mode % 2:
        out = out[::-1]
    return np.ascontiguousarray(out)


@DATASET_REGISTRY.register()
class PairedImageDataset_SIDD(PairedImageDataset):  # noqa: N801  (the releases' option-file name)
    """Options: those of basicsr's ``PairedImageDataset`` (flip/rotation keys ignored; optional ``mean`` / ``std``).

    Training (``phase: train``): a pair smaller than ``gt_size`` is reflect-padded at the bottom/right (``pad_to``:
    edge pixel repeated, OpenCV's ``BORDER_REFLECT``), one random ``gt_size`` crop is taken at the same place in both
    images, then one of the 8 flip/rotation combinations (``dihedral``) is drawn uniformly and applied to both.
    Length: ``TRAIN_LENGTH`` in training (sample ``i`` is file ``i mod n``), the number of files otherwise.
    """

    def __len__(self) -> int:
        return TRAIN_LENGTH if self.opt['phase'] == 'train' else len(self.paths)

    def __getitem__(self, index: int) -> dict:
        if self.file_client is None:
            self.file_client = FileClient(self.io_backend_opt.pop('type'), **self.io_backend_opt)
        paths = self.paths[index % len(self.paths)]
        img_gt, img_lq = decode(self, paths['gt_path'], 'gt'), decode(self, paths['lq_path'], 'lq')
        if self.opt['phase'] == 'train':
            gt_size, scale = self.opt['gt_size'], self.opt.get('scale', 1)
            img_gt, img_lq = pad_to(img_gt, gt_size), pad_to(img_lq, gt_size // scale)
            img_gt, img_lq = paired_random_crop(img_gt, img_lq, gt_size, scale, paths['gt_path'])
            mode = random.randint(0, 7)
            img_gt, img_lq = dihedral(img_gt, mode), dihedral(img_lq, mode)
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            normalize(img_lq, self.mean, self.std, inplace=True)
            normalize(img_gt, self.mean, self.std, inplace=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': paths['lq_path'], 'gt_path': paths['gt_path']}
