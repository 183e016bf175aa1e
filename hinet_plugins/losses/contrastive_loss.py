"""Contrastive regularisation: Intra-CR (DRCNet Sec. 3.3, Eq. 13) and Extra-CR (AECR-Net, DRCNet's baseline).

    loss = loss_weight * (l1_weight * L1(X, J) + alpha * sum_l w_l d_l(X, J) / (sum_k c_k d_l(X, J*_k) + 1e-7))

X restored, J clean, J*_k the negatives, d_l the L1 of frozen VGG19 features at layer l. Both need the degraded
input I (``needs_lq``: the model calls ``loss(pred, gt, lq=lq)``). Readings (paper vs release, leefly072/DRCNet):
Intra-CR's negatives mix toward I, J*_k = lam_k I + (1 - lam_k) J (``mixup='release'``, default; ``'paper'`` reads
Eq. 11 literally), lam and c_k = 1, 0.95, 0.90; layers relu1_1..relu3_1 weighted 1/16, 1/8, 1/4, inputs not
normalised (release); alpha 0.04 (paper; release 0.05). Extra-CR: the negatives of sample i are the degraded
inputs of the next ``num_negatives`` samples of the batch (cyclic), c_k = 1.
Errors: constructor arguments raise ValueError naming the argument (the option layer names the key); the VGG
weights come only from a local file (``vgg_weights``, checked with the option file; nothing is downloaded).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn
from torch.nn import functional as F

from ..basicsr_ext import build_vgg_extractor, vgg_weights_problem
from ..errors import ConfigError

DEFAULT_LAYER_WEIGHTS = {'relu1_1': 1.0 / 16, 'relu2_1': 1.0 / 8, 'relu3_1': 1.0 / 4}


class _ContrastiveRegularization(nn.Module):
    """L1 + alpha * sum_l w_l d(X, J) / (sum_k c_k d(X, J*_k) + eps); subclasses choose the negatives."""

    needs_lq = True

    def __init__(self, loss_weight: float = 1.0, alpha: float = 0.04, l1_weight: float = 1.0,
                 vgg_weights: Optional[str] = None, layer_weights: Optional[Dict[str, float]] = None,
                 negative_weights: Optional[Sequence[float]] = None, use_input_norm: bool = False,
                 range_norm: bool = False, eps: float = 1e-7, reduction: str = 'mean') -> None:
        super().__init__()
        name = type(self).__name__
        if reduction != 'mean':
            raise ValueError(f"{name}: reduction must be 'mean', got {reduction!r}")
        self.loss_weight = float(loss_weight)
        self.alpha = float(alpha)
        self.l1_weight = float(l1_weight)
        self.eps = float(eps)
        self.layer_weights = dict(layer_weights or DEFAULT_LAYER_WEIGHTS)
        self.negative_weights = None if negative_weights is None else [float(c) for c in negative_weights]
        self.vgg = build_vgg_extractor(vgg_weights, self.layer_weights, use_input_norm, range_norm, owner=name)

    @classmethod
    def check_options(cls, spec: dict) -> None:
        """Checked with the option file, before anything is built: the VGG weights file must exist."""
        problem = vgg_weights_problem(spec.get('vgg_weights'))
        if problem:
            raise ValueError(f'vgg_weights {problem}')

    def negatives(self, gt: torch.Tensor, lq: torch.Tensor) -> List[Tuple[torch.Tensor, float]]:
        """List of (negative images, weight c_k)."""
        raise NotImplementedError

    def contrastive(self, pred: torch.Tensor, gt: torch.Tensor, lq: torch.Tensor) -> Union[torch.Tensor, float]:
        negatives = self.negatives(gt, lq)
        with torch.no_grad():  # positives and negatives are constants; one VGG pass for all of them
            targets = self.vgg(torch.cat([gt] + [img for img, _ in negatives], dim=0).detach())
        feats = self.vgg(pred)
        total = 0
        for layer, w in self.layer_weights.items():
            fx = feats[layer]
            chunks = targets[layer].split(gt.shape[0], dim=0)
            d_pos = F.l1_loss(fx, chunks[0])
            d_neg = sum(c * F.l1_loss(fx, f) for (_, c), f in zip(negatives, chunks[1:]))
            total = total + w * d_pos / (d_neg + self.eps)
        return total

    def forward(self, pred: torch.Tensor, target: torch.Tensor, lq: Optional[torch.Tensor] = None,
                **kwargs) -> torch.Tensor:
        if lq is None:
            raise ValueError(f'{type(self).__name__} needs the degraded input: call loss(pred, gt, lq=lq)')
        loss = self.alpha * self.contrastive(pred, target, lq) if self.alpha else 0
        if self.l1_weight:
            loss = loss + self.l1_weight * F.l1_loss(pred, target)
        return self.loss_weight * loss


@LOSS_REGISTRY.register()
class IntraCRLoss(_ContrastiveRegularization):
    """Intra-class contrastive regularisation (DRCNet): negatives are mixups of the clean and degraded images.

    Options: ``alpha`` (0.04), ``lambdas`` ([1.0, 0.95, 0.9]), ``negative_weights`` (default = lambdas),
    ``mixup`` ('release' | 'paper'), ``layer_weights``, ``use_input_norm``, ``l1_weight``, ``vgg_weights``.
    """

    def __init__(self, loss_weight: float = 1.0, alpha: float = 0.04, vgg_weights: Optional[str] = None,
                 lambdas: Sequence[float] = (1.0, 0.95, 0.90), negative_weights: Optional[Sequence[float]] = None,
                 mixup: str = 'release', l1_weight: float = 1.0, layer_weights: Optional[Dict[str, float]] = None,
                 use_input_norm: bool = False, range_norm: bool = False, eps: float = 1e-7,
                 reduction: str = 'mean') -> None:
        if mixup not in ('release', 'paper'):
            raise ValueError(f"IntraCRLoss: mixup must be 'release' or 'paper', got {mixup!r}")
        lambdas = [float(v) for v in lambdas]
        negative_weights = lambdas if negative_weights is None else negative_weights
        if len(negative_weights) != len(lambdas) or not lambdas:
            raise ValueError(f'IntraCRLoss: negative_weights ({len(negative_weights)}) must have one entry per '
                              f'lambda ({len(lambdas)})')
        super().__init__(loss_weight, alpha, l1_weight, vgg_weights, layer_weights, negative_weights, use_input_norm,
                         range_norm, eps, reduction)
        self.lambdas = lambdas
        self.mixup = mixup

    def negatives(self, gt: torch.Tensor, lq: torch.Tensor) -> List[Tuple[torch.Tensor, float]]:
        towards, other = (lq, gt) if self.mixup == 'release' else (gt, lq)
        return [(lam * towards + (1 - lam) * other, c) for lam, c in zip(self.lambdas, self.negative_weights)]


@LOSS_REGISTRY.register()
class ExtraCRLoss(_ContrastiveRegularization):
    """Extra-class contrastive regularisation (AECR-Net as described by DRCNet): other degraded images of the batch.

    Options: ``alpha`` (0.04), ``num_negatives`` (3), ``negative_weights`` (1 each), and those of IntraCRLoss.
    """

    def __init__(self, loss_weight: float = 1.0, alpha: float = 0.04, vgg_weights: Optional[str] = None,
                 num_negatives: int = 3, negative_weights: Optional[Sequence[float]] = None, l1_weight: float = 1.0,
                 layer_weights: Optional[Dict[str, float]] = None, use_input_norm: bool = False,
                 range_norm: bool = False, eps: float = 1e-7, reduction: str = 'mean') -> None:
        negative_weights = [1.0] * int(num_negatives) if negative_weights is None else negative_weights
        if int(num_negatives) < 1 or len(negative_weights) != int(num_negatives):
            raise ValueError(f'ExtraCRLoss: num_negatives must be >= 1 with one negative_weight each, got '
                              f'{num_negatives} and {len(negative_weights)} weights')
        super().__init__(loss_weight, alpha, l1_weight, vgg_weights, layer_weights, negative_weights, use_input_norm,
                         range_norm, eps, reduction)

    def negatives(self, gt: torch.Tensor, lq: torch.Tensor) -> List[Tuple[torch.Tensor, float]]:
        n = lq.shape[0]
        if n < 2:
            raise ConfigError('ExtraCRLoss takes its negatives from the other images of the batch: '
                              'datasets.train.batch_size_per_gpu must be >= 2')
        count = min(len(self.negative_weights), n - 1)
        return [(lq.roll(shifts=-k, dims=0), self.negative_weights[k - 1]) for k in range(1, count + 1)]
