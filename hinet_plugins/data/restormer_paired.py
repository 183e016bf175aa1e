"""``type: Dataset_PairedImage``: the Restormer release's paired dataset, so its option files run as they are.

Our implementation of the semantics of the release's class (its code is not used). Pairing and storage are
basicsr's ``PairedImageDataset``'s (LMDB, ``meta_info_file`` or folders paired through ``filename_tmpl``); training
crops and augments (``crop_and_augment``, shared with the other Restormer datasets); validation / test images are
whole and unchanged.

Decisions:
- ``gt_size`` is the largest patch: the model's progressive learning (``gt_sizes`` / ``mini_batch_sizes`` /
  ``iters``, ``models/batch_augment.py``) crops each stage's patch inside it, as in the release.
- Random draws use python's ``random`` (seeded per sample by ``resume.PositionSeeded``). An image that does not
  decode stops the run with its path. ``check_options`` replaces the generic option check (pairs smaller than
  ``gt_size`` are allowed: they are padded).
"""
import random
from typing import List, Tuple

import numpy as np
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.data.transforms import paired_random_crop
from basicsr.utils import FileClient, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data
from torchvision.transforms.functional import normalize

from .sidd_dataset import dihedral, pad_to
from ..basicsr_ext import decode_image as decode


def file_client(dataset: data.Dataset) -> FileClient:
    """The dataset's FileClient, created on first use (in the DataLoader worker), the options left unchanged."""
    if dataset.file_client is None:
        backend = dict(dataset.io_backend_opt)
        dataset.file_client = FileClient(backend.pop('type'), **backend)
    return dataset.file_client


def crop_and_augment(dataset: data.Dataset, gts: List[np.ndarray], lqs: List[np.ndarray],
                     gt_path: str) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Training transforms shared by Restormer's datasets: pad to ``gt_size``, one random crop at the same place
    in every image, then (``geometric_augs``) one of the 8 flips/rotations, drawn uniformly, for all. Padding:
    reflection at the bottom/right (``sidd_dataset.pad_to``, OpenCV's ``BORDER_REFLECT``). Lists in, lists out."""
    opt = dataset.opt
    gt_size, scale = opt['gt_size'], opt.get('scale', 1)
    gts = [pad_to(img, gt_size) for img in gts]
    lqs = [pad_to(img, gt_size // scale) for img in lqs]
    gts, lqs = paired_random_crop(gts, lqs, gt_size, scale, gt_path)
    gts, lqs = (gts if isinstance(gts, list) else [gts]), (lqs if isinstance(lqs, list) else [lqs])
    if opt.get('geometric_augs', False):
        mode = random.randint(0, 7)
        gts, lqs = [dihedral(img, mode) for img in gts], [dihedral(img, mode) for img in lqs]
    return gts, lqs


@DATASET_REGISTRY.register()
class Dataset_PairedImage(PairedImageDataset):  # noqa: N801  (the release's option-file name)
    """Options: basicsr's ``PairedImageDataset`` ones (optional ``mean`` / ``std`` normalisation of both images)
    plus ``geometric_augs``. Length: the number of pairs (``dataset_enlarge_ratio`` applies)."""

    def __getitem__(self, index: int) -> dict:
        file_client(self)
        paths = self.paths[index % len(self.paths)]
        img_gt, img_lq = decode(self, paths['gt_path'], 'gt'), decode(self, paths['lq_path'], 'lq')
        if self.opt['phase'] == 'train':
            (img_gt,), (img_lq,) = crop_and_augment(self, [img_gt], [img_lq], paths['gt_path'])
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            normalize(img_lq, self.mean, self.std, inplace=True)
            normalize(img_gt, self.mean, self.std, inplace=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': paths['lq_path'], 'gt_path': paths['gt_path']}
