"""Contrastive regularisation: Intra-CR (DRCNet Sec. 3.3, Eq. 13) and Extra-CR (AECR-Net, DRCNet's baseline).

    loss = loss_weight * (l1_weight * L1(X, J) + alpha * CR),
    CR   = sum_l w_l * d_l(X, J) / (sum_k c_k * d_l(X, J*_k) + 1e-7),   d_l = L1 of VGG19 features at layer l

with X the restored image, J the clean image, J*_k the negatives, G = a frozen VGG19 (basicsr's
``VGGFeatureExtractor``). Both losses need the degraded input I: they set ``needs_lq = True`` and the model calls
``loss(pred, gt, lq=lq)``.

Readings (paper vs the authors' release, leefly072/DRCNet):
- Negatives of Intra-CR: ``mixup='release'`` (default) mixes toward the degraded input, J*_k = lam_k I + (1 - lam_k) J,
  so lam = 1.00 is the degraded image itself. The paper's Eq. 11 read literally (``mixup='paper'``),
  J* = lam J + (1 - lam) I, makes the lam = 1.00 negative equal to the clean image (a constant ratio term).
  lam in {1.00, 0.95, 0.90} (paper Sec. 4.2 and release).
- Denominator weights c_k (``negative_weights``): release 1, 0.95, 0.90 (= the lam values; the default when not
  given). Eq. 13 has a single negative and no weights.
- Layers and weights (``layer_weights``): release relu1_1, relu2_1, relu3_1 with 1/16, 1/8, 1/4; the paper only says
  "VGG19". Input normalisation (``use_input_norm``): off in the release (images in [0, 1] go in unnormalised).
- Weight alpha: paper 0.04 (default), release 0.05. The L1 term is Eq. 13's l1 (``l1_weight: 0`` leaves the bare
  regulariser, to combine with another pixel loss).
- Extra-CR: the paper describes AECR-Net's CR as taking "other haze images ... from the same batch" as negatives:
  the negatives of sample i are the degraded inputs of samples i+1, ..., i+n of the batch (cyclic), n =
  ``num_negatives`` or fewer when the batch is smaller; weights c_k = 1.

VGG weights come only from a local file: ``vgg_weights`` = a torchvision vgg19 state_dict (e.g.
``experiments/pretrained_models/vgg19-dcbb9e9d.pth``). Nothing is ever downloaded: a missing option or file is a
``ConfigError`` naming ``train.<loss key>.vgg_weights`` (checked with the option file, before anything is built).
"""
import os
import threading
import warnings

import torch
from basicsr.archs import vgg_arch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

DEFAULT_LAYER_WEIGHTS = {'relu1_1': 1.0 / 16, 'relu2_1': 1.0 / 8, 'relu3_1': 1.0 / 4}
_VGG_LOCK = threading.Lock()


def vgg_weights_problem(path):
    """Why ``path`` cannot serve as the VGG weights file, or None."""
    if not path:
        return ('is not set; give a local torchvision vgg19 state_dict (e.g. '
                'experiments/pretrained_models/vgg19-dcbb9e9d.pth); weights are never downloaded')
    if not os.path.isfile(str(path)):
        return f"'{path}' does not exist (a local torchvision vgg19 state_dict is needed; nothing is downloaded)"
    return None


def build_vgg_extractor(vgg_weights, layers, use_input_norm=False, range_norm=False, owner='loss'):
    """basicsr's VGGFeatureExtractor (vgg19, frozen) with weights from ``vgg_weights``; never downloads.

    basicsr loads its module-level ``VGG_PRETRAIN_PATH`` when that file exists and downloads otherwise; the path is
    pointed at the (checked) local file for the construction only.
    """
    problem = vgg_weights_problem(vgg_weights)
    if problem:
        raise ConfigError(f'{owner}: vgg_weights {problem}')
    with _VGG_LOCK, warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # torchvision's 'pretrained' deprecation, raised inside basicsr
        saved = vgg_arch.VGG_PRETRAIN_PATH
        vgg_arch.VGG_PRETRAIN_PATH = os.path.abspath(vgg_weights)
        try:
            return vgg_arch.VGGFeatureExtractor(list(layers), vgg_type='vgg19', use_input_norm=use_input_norm,
                                                range_norm=range_norm, requires_grad=False)
        except Exception as err:  # noqa: BLE001  (any load failure means the same to the user)
            raise ConfigError(f"{owner}: vgg_weights '{vgg_weights}' is not a torchvision vgg19 state_dict "
                              f'({type(err).__name__}: {str(err)[:300]})') from None
        finally:
            vgg_arch.VGG_PRETRAIN_PATH = saved


class _ContrastiveRegularization(nn.Module):
    """L1 + alpha * sum_l w_l d(X, J) / (sum_k c_k d(X, J*_k) + eps); subclasses choose the negatives."""

    needs_lq = True

    def __init__(self, loss_weight=1.0, alpha=0.04, l1_weight=1.0, vgg_weights=None, layer_weights=None,
                 negative_weights=None, use_input_norm=False, range_norm=False, eps=1e-7, reduction='mean'):
        super().__init__()
        name = type(self).__name__
        if reduction != 'mean':
            raise ConfigError(f"{name}: reduction must be 'mean', got {reduction!r}")
        self.loss_weight = float(loss_weight)
        self.alpha = float(alpha)
        self.l1_weight = float(l1_weight)
        self.eps = float(eps)
        self.layer_weights = dict(layer_weights or DEFAULT_LAYER_WEIGHTS)
        self.negative_weights = None if negative_weights is None else [float(c) for c in negative_weights]
        self.vgg = build_vgg_extractor(vgg_weights, self.layer_weights, use_input_norm, range_norm, owner=name)

    @classmethod
    def check_options(cls, spec, where):
        """Option-file check (``where`` = '<file>: train.<loss key>'): the VGG weights file must exist."""
        problem = vgg_weights_problem(spec.get('vgg_weights'))
        if problem:
            raise ConfigError(f'{where}.vgg_weights {problem}')

    def negatives(self, gt, lq):
        """List of (negative images, weight c_k)."""
        raise NotImplementedError

    def contrastive(self, pred, gt, lq):
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

    def forward(self, pred, target, lq=None, **kwargs):
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

    def __init__(self, loss_weight=1.0, alpha=0.04, vgg_weights=None, lambdas=(1.0, 0.95, 0.90),
                 negative_weights=None, mixup='release', l1_weight=1.0, layer_weights=None, use_input_norm=False,
                 range_norm=False, eps=1e-7, reduction='mean'):
        if mixup not in ('release', 'paper'):
            raise ConfigError(f"IntraCRLoss: mixup must be 'release' or 'paper', got {mixup!r}")
        lambdas = [float(v) for v in lambdas]
        negative_weights = lambdas if negative_weights is None else negative_weights
        if len(negative_weights) != len(lambdas) or not lambdas:
            raise ConfigError(f'IntraCRLoss: negative_weights ({len(negative_weights)}) must have one entry per '
                              f'lambda ({len(lambdas)})')
        super().__init__(loss_weight, alpha, l1_weight, vgg_weights, layer_weights, negative_weights, use_input_norm,
                         range_norm, eps, reduction)
        self.lambdas = lambdas
        self.mixup = mixup

    def negatives(self, gt, lq):
        towards, other = (lq, gt) if self.mixup == 'release' else (gt, lq)
        return [(lam * towards + (1 - lam) * other, c) for lam, c in zip(self.lambdas, self.negative_weights)]


@LOSS_REGISTRY.register()
class ExtraCRLoss(_ContrastiveRegularization):
    """Extra-class contrastive regularisation (AECR-Net as described by DRCNet): other degraded images of the batch.

    Options: ``alpha`` (0.04), ``num_negatives`` (3), ``negative_weights`` (1 each), and those of IntraCRLoss.
    """

    def __init__(self, loss_weight=1.0, alpha=0.04, vgg_weights=None, num_negatives=3, negative_weights=None,
                 l1_weight=1.0, layer_weights=None, use_input_norm=False, range_norm=False, eps=1e-7,
                 reduction='mean'):
        negative_weights = [1.0] * int(num_negatives) if negative_weights is None else negative_weights
        if int(num_negatives) < 1 or len(negative_weights) != int(num_negatives):
            raise ConfigError(f'ExtraCRLoss: num_negatives must be >= 1 with one negative_weight each, got '
                              f'{num_negatives} and {len(negative_weights)} weights')
        super().__init__(loss_weight, alpha, l1_weight, vgg_weights, layer_weights, negative_weights, use_input_norm,
                         range_norm, eps, reduction)

    def negatives(self, gt, lq):
        n = lq.shape[0]
        if n < 2:
            raise ConfigError('ExtraCRLoss takes its negatives from the other images of the batch: '
                              'datasets.train.batch_size_per_gpu must be >= 2')
        count = min(len(self.negative_weights), n - 1)
        return [(lq.roll(shifts=-k, dims=0), self.negative_weights[k - 1]) for k in range(1, count + 1)]
