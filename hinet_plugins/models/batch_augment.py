"""Per-iteration batch transforms of the training loop: progressive patch sizes and mixup (Restormer's recipe).

One implementation for every architecture, with the Restormer release's keys. Progressive learning
(``datasets.train.gt_sizes / mini_batch_sizes / iters``): iteration ``t`` (1-based) is in the first stage whose
cumulative count reaches it; each iteration keeps ``mini_batch_size`` samples of the loaded batch (drawn without
replacement, in drawn order as the release) and crops the same random window from all of them. Mixup
(``train.mixing_augs: {mixup, mixup_beta, use_identity}``): ``lam * x + (1 - lam) * x[perm]`` for input and
target, ``lam ~ Beta(beta, beta)``; ``use_identity`` leaves the batch as it is half of the time (as the release);
MPRNet's recipe adds ``per_sample`` and ``after_iter``. Draws come from Python's and torch's global generators,
which basicsr seeds and the training state restores, so resumed runs draw the same.
"""
import random
from typing import List, Tuple, Union

import torch
from basicsr.utils import get_root_logger

from ..errors import ConfigError

PROGRESSIVE_KEYS = ('gt_sizes', 'mini_batch_sizes', 'iters')
MIXING_KEYS = ('mixup', 'mixup_beta', 'use_identity', 'per_sample', 'after_iter')


def _positive_ints(value, key):
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ConfigError(f'{key} must be a non-empty list of positive integers, got {value!r}')
    return list(value)


class ProgressivePatches:
    """Patch size and batch size that grow over training (see module docstring)."""

    def __init__(self, ds_opt: dict, scale: int = 1) -> None:
        where = 'datasets.train'
        given = [k for k in PROGRESSIVE_KEYS if ds_opt.get(k) is not None]
        if given and len(given) != len(PROGRESSIVE_KEYS):
            missing = sorted(set(PROGRESSIVE_KEYS) - set(given))
            raise ConfigError(f'{where}: progressive patches need {list(PROGRESSIVE_KEYS)} together; missing {missing}')
        self.sizes = _positive_ints(ds_opt['gt_sizes'], f'{where}.gt_sizes')
        self.batches = _positive_ints(ds_opt['mini_batch_sizes'], f'{where}.mini_batch_sizes')
        iters = _positive_ints(ds_opt['iters'], f'{where}.iters')
        if not len(self.sizes) == len(self.batches) == len(iters):
            raise ConfigError(f'{where}: gt_sizes, mini_batch_sizes and iters need one entry per stage, got '
                              f'{len(self.sizes)}, {len(self.batches)} and {len(iters)}')
        gt_size, batch = ds_opt.get('gt_size'), ds_opt.get('batch_size_per_gpu')
        if not isinstance(gt_size, int) or max(self.sizes) > gt_size:
            raise ConfigError(f'{where}.gt_size ({gt_size!r}) must be an integer >= every entry of gt_sizes '
                              f'{self.sizes}: the dataset crops gt_size and each stage crops inside it')
        if not isinstance(batch, int) or max(self.batches) > batch:
            raise ConfigError(f'{where}.batch_size_per_gpu ({batch!r}) must be >= every entry of mini_batch_sizes '
                              f'{self.batches}')
        self.ends = [sum(iters[:i + 1]) for i in range(len(iters))]
        self.scale = scale
        self.stage = None

    @staticmethod
    def enabled(ds_opt: dict) -> bool:
        return any(ds_opt.get(k) is not None for k in PROGRESSIVE_KEYS)

    def stage_at(self, current_iter: int) -> int:
        return next((i for i, end in enumerate(self.ends) if current_iter <= end), len(self.ends) - 1)

    def __call__(self, current_iter: int, lq: torch.Tensor, gt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        j = self.stage_at(current_iter)
        size, batch = self.sizes[j], self.batches[j]
        if j != self.stage:
            self.stage = j
            get_root_logger().info(f'Progressive patches: stage {j + 1}/{len(self.sizes)} from iteration '
                                   f'{current_iter}: patch {size}, batch {batch} per GPU')
        if batch < lq.shape[0]:
            # the drawn order, as Restormer's train.py: mixup then pairs the same samples as the release
            keep = torch.tensor(random.sample(range(lq.shape[0]), k=batch), device=lq.device)
            lq, gt = lq.index_select(0, keep), gt.index_select(0, keep)
        h, w = lq.shape[-2:]
        if size < h or size < w:
            y0, x0 = int((h - min(size, h)) * random.random()), int((w - min(size, w)) * random.random())
            s = self.scale
            lq = lq[..., y0:y0 + size, x0:x0 + size]
            gt = gt[..., y0 * s:(y0 + size) * s, x0 * s:(x0 + size) * s]
        return lq, gt


class Mixup:
    """``lam * x + (1 - lam) * x[perm]`` on input and target (see module docstring)."""

    def __init__(self, opt: dict) -> None:
        unknown = sorted(set(opt) - set(MIXING_KEYS))
        if unknown:
            raise ConfigError(f'train.mixing_augs: unknown key(s) {unknown}; expected {list(MIXING_KEYS)}')
        beta = opt.get('mixup_beta', 1.2)
        if not isinstance(beta, (int, float)) or isinstance(beta, bool) or beta <= 0:
            raise ConfigError(f'train.mixing_augs.mixup_beta must be a positive number, got {beta!r}')
        after = opt.get('after_iter', 0)
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ConfigError(f'train.mixing_augs.after_iter must be a non-negative integer, got {after!r}')
        self.beta = float(beta)
        self.use_identity = bool(opt.get('use_identity', False))
        self.per_sample = bool(opt.get('per_sample', False))
        self.after_iter = after

    def __call__(self, current_iter: int, lq: torch.Tensor, gt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if current_iter <= self.after_iter:
            return lq, gt
        choices = 2 if self.use_identity else 1  # 0: mixup, 1: identity
        if random.randrange(choices) == 1 or lq.shape[0] < 2:
            return lq, gt
        beta = torch.distributions.Beta(self.beta, self.beta)
        lam = beta.sample((lq.shape[0], 1, 1, 1)).to(lq) if self.per_sample else float(beta.sample())
        perm = torch.randperm(lq.shape[0]).to(lq.device)
        return lam * lq + (1 - lam) * lq[perm], lam * gt + (1 - lam) * gt[perm]


def build_batch_transforms(opt: dict) -> List[Union[ProgressivePatches, Mixup]]:
    """The transforms the options ask for, in order (progressive crop, then mixup); [] when none."""
    transforms = []
    ds_opt = (opt.get('datasets') or {}).get('train') or {}
    if ProgressivePatches.enabled(ds_opt):
        transforms.append(ProgressivePatches(ds_opt, opt.get('scale', 1)))
    mixing = (opt.get('train') or {}).get('mixing_augs')
    if mixing:
        if not isinstance(mixing, dict):
            raise ConfigError(f'train.mixing_augs must be a mapping with keys {list(MIXING_KEYS)}, got {mixing!r}')
        if mixing.get('mixup', False):
            transforms.append(Mixup(mixing))
    return transforms
