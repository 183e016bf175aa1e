"""Stage-ratio loss: FCN's "loss calculation adjustment" (FCN paper Sec. 3.6, Eq. 1) in a form that cannot collapse.

Eq. 1 reads  Loss = sum_s r_s * ||P_s - G||  with trainable ratios r_s "limited between 0 and 1". Readings: the
sum (printed as s = 0..4) runs over the stages that output an image, i.e. FCN's three supervised outputs (stage 0
outputs none); the ratios are trained from the start, together with the network (the paper's "in the later stage
of training" gives no schedule). The authors' release does not contain it: it trains with Charbonnier + 0.05 x edge
loss summed over the stages. Taken literally it collapses: every L_s = ||P_s - G|| is positive, so
d Loss / d r_s = L_s > 0 and gradient descent lowers every ratio until r_s -> 0 (for r_s = sigmoid(theta_s):
theta_s -> -inf). The loss then goes to 0 without the network improving, and the network's gradients, scaled by
r_s, vanish with it. The ratios need a counterweight; two are offered (``mode``):

- ``'softmax'`` (default): r = softmax(theta), so sum_s r_s = 1 and no ratio can be lowered without raising another.
  The network is trained on  S * sum_s r_s L_s  (S stages; uniform ratios give the plain sum, i.e. the release's
  loss, which is where training starts). A bare softmax still drifts to winner-take-all (d/d theta_s =
  S r_s (L_s - sum_k r_k L_k): the stage with the smallest loss takes all the weight and the others decay to 0,
  only slower), so an entropy term is added:  + tau * S * Lbar * KL(r || uniform) = tau * S * Lbar *
  (sum_s r_s log r_s + log S),  Lbar = mean_s L_s (detached); it is >= 0 and 0 at uniform ratios. Its minimum over
  theta is  r_s = softmax(-L_s / (tau * Lbar)):  every ratio stays in (0, 1), stages with a lower loss get more
  weight, and the result does not depend on the scale of the loss. ``tau: 0`` is the bare softmax.
- ``'uncertainty'``: learned uncertainty weighting (Kendall et al., CVPR 2018: L / sigma^2 + log sigma^2) with the
  weights bounded as the paper asks, r_s = sigmoid(theta_s) in (0, 1):  sum_s r_s L_s - lam * Lbar * sum_s log r_s.
  The log-penalty makes small ratios expensive; the minimum is  r_s = min(1, lam * Lbar / L_s),  so every stage
  contributes about lam * Lbar to the loss.

The penalties depend on theta only (Lbar is detached), so the network's gradient is that of sum_s r_s L_s (times
S in softmax mode): the ratios re-weight the stages, nothing else. ``loss_weight`` scales everything.

The per-stage loss L_s is the sum of the ``base`` losses (built from LOSS_REGISTRY; default: the release's
Charbonnier with eps 1e-6 + 0.05 x MPRNet edge loss). Model protocol (``models/restoration_model.py``):
``multi_stage = True`` (called once with the list of stage outputs), own trainable parameter ``logits`` (optimised
in a separate param group, ``train.optim_loss`` may set its lr; gradients all-reduced under DDP; saved in the
training state under ``losses``), ``log_dict()`` -> the current ratios ``r_stage1 .. r_stageS`` (stage order, final
last) for the training log.
"""
import math

import torch
from basicsr.losses import build_loss
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

MODES = ('softmax', 'uncertainty')
RELEASE_BASE = ({'type': 'CharbonnierLoss', 'loss_weight': 1.0, 'reduction': 'mean', 'eps': 1e-6},
                {'type': 'EdgeLoss', 'loss_weight': 0.05, 'reduction': 'mean', 'eps': 1e-6})


@LOSS_REGISTRY.register()
class StageRatioLoss(nn.Module):
    """Trainable stage ratios over a per-stage loss (see the module docstring).

    Args:
        base: loss spec or list of specs (``{type: ..., ...}``) summed into each stage's loss L_s.
        num_stages: number of stage outputs of the network (FCN, MPRNet: 3).
        mode: 'softmax' or 'uncertainty'.
        tau: entropy weight of the softmax mode (relative to the mean stage loss).
        lam: log-penalty weight of the uncertainty mode (relative to the mean stage loss).
        init_ratios: initial ratios (default: uniform 1/S for softmax, 0.5 for uncertainty); each in (0, 1).
        loss_weight: overall factor.
    """

    multi_stage = True

    def __init__(self, base=RELEASE_BASE, num_stages=3, mode='softmax', tau=1.0, lam=0.5, init_ratios=None,
                 loss_weight=1.0):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f'StageRatioLoss.mode: must be one of {list(MODES)}, got {mode!r}')
        if not isinstance(num_stages, int) or num_stages < 1:
            raise ConfigError(f'StageRatioLoss.num_stages: must be a positive int, got {num_stages!r}')
        tau, lam = float(tau), float(lam)
        if tau < 0 or lam <= 0:
            raise ConfigError(f'StageRatioLoss: tau must be >= 0 and lam > 0, got tau={tau}, lam={lam}')
        specs = [base] if isinstance(base, dict) else list(base or [])
        if not specs or not all(isinstance(s, dict) and 'type' in s for s in specs):
            raise ConfigError(f'StageRatioLoss.base: a loss spec {{type: ...}} or a list of them is needed, '
                              f'got {base!r}')
        self.base = nn.ModuleList(build_loss(dict(s)) for s in specs)
        self.needs_lq = any(getattr(loss, 'needs_lq', False) for loss in self.base)
        self.num_stages, self.mode, self.tau, self.lam, self.loss_weight = num_stages, mode, tau, lam, loss_weight
        self.logits = nn.Parameter(self._initial_logits(init_ratios))

    def _initial_logits(self, init):
        n = self.num_stages
        if init is None:
            return torch.zeros(n)
        init = [float(r) for r in (init if isinstance(init, (list, tuple)) else [init] * n)]
        if len(init) != n or not all(0 < r < 1 for r in init):
            raise ConfigError(f'StageRatioLoss.init_ratios: {n} values in (0, 1) are needed, got {init}')
        if self.mode == 'softmax':
            return torch.tensor([math.log(r / sum(init)) for r in init])
        return torch.tensor([math.log(r / (1 - r)) for r in init])

    def log_ratios(self):
        return F.log_softmax(self.logits, 0) if self.mode == 'softmax' else F.logsigmoid(self.logits)

    def ratios(self):
        return self.log_ratios().exp()

    def stage_losses(self, preds, target, **kwargs):
        return torch.stack([sum(loss(p, target, **kwargs) for loss in self.base) for p in preds])

    def forward(self, preds, target, **kwargs):
        preds = list(preds) if isinstance(preds, (list, tuple)) else [preds]
        if len(preds) != self.num_stages:
            raise ConfigError(f'StageRatioLoss.num_stages is {self.num_stages} but the network returns '
                              f'{len(preds)} stage output(s): set num_stages: {len(preds)} in the loss options')
        losses = self.stage_losses(preds, target, **kwargs).float()
        log_r = self.log_ratios()
        r = log_r.exp()
        scale = losses.detach().mean()
        if self.mode == 'softmax':
            n = self.num_stages
            total = n * (r * losses).sum() + self.tau * n * scale * ((r * log_r).sum() + math.log(n))
        else:
            total = (r * losses).sum() - self.lam * scale * log_r.sum()
        return self.loss_weight * total

    def log_dict(self):
        r = self.ratios().detach()
        return {f'r_stage{i + 1}': r[i] for i in range(self.num_stages)}

    def extra_repr(self):
        return f'mode={self.mode}, num_stages={self.num_stages}, ratios={[round(float(v), 4) for v in self.ratios()]}'
