"""Stage-ratio loss: FCN's "loss calculation adjustment" (FCN paper Sec. 3.6, Eq. 1) in a form that cannot collapse.

Eq. 1, Loss = sum_s r_s ||P_s - G|| with trainable ratios r_s in (0, 1), over FCN's three supervised outputs. The
authors' release does not contain it (it trains Charbonnier + 0.05 x edge loss summed over the stages). Taken
literally it collapses (d Loss / d r_s = L_s > 0 drives every ratio to 0), so the ratios get a counterweight
(``mode``, derivations in the class docstring): ``'softmax'`` (default, ratios sum to 1, plus an entropy term) or
``'uncertainty'`` (sigmoid ratios with a log-penalty, after Kendall et al. 2018). The penalties act on the ratios
only: the network's gradient is that of sum_s r_s L_s. L_s sums the ``base`` losses (default: the release's).
Model protocol: ``multi_stage``, own parameter ``logits`` (own param group, saved in the training state),
``log_dict()`` -> ``r_stage1 .. r_stageS``. Errors: constructor arguments raise ValueError (the option layer names
the key); a stage count that does not match the network is found at the first step, a ConfigError.
"""
import math
from typing import Dict, Optional, Sequence, Union

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
    """Trainable stage ratios over a per-stage loss.

    Readings of Eq. 1: the sum (printed as s = 0..4) runs over the stages that output an image (FCN's stage 0
    outputs none); the ratios train from the start (the paper's "later stage of training" gives no schedule).
    Taken literally, every L_s > 0 and gradient descent lowers every ratio to 0: the loss vanishes without the
    network improving. Counterweights (``mode``):

    - ``'softmax'`` (default): r = softmax(theta), sum_s r_s = 1; the network trains on S * sum_s r_s L_s (uniform
      ratios give the release's plain sum, where training starts). A bare softmax drifts to winner-take-all
      (d/d theta_s = S r_s (L_s - sum_k r_k L_k)), so an entropy term is added, tau * S * Lbar * KL(r || uniform)
      = tau * S * Lbar * (sum_s r_s log r_s + log S), Lbar = mean_s L_s detached: its minimum is
      r_s = softmax(-L_s / (tau * Lbar)), every ratio in (0, 1), independent of the loss scale (``tau: 0``: bare).
    - ``'uncertainty'``: Kendall et al. (CVPR 2018) with bounded weights r_s = sigmoid(theta_s):
      sum_s r_s L_s - lam * Lbar * sum_s log r_s, minimum r_s = min(1, lam * Lbar / L_s).

    The per-stage loss L_s sums the ``base`` losses (default: Charbonnier eps 1e-6 + 0.05 x MPRNet edge loss);
    ``logits`` gradients are all-reduced under DDP and saved in the training state under ``losses``.

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

    def __init__(self, base: Union[dict, Sequence[dict]] = RELEASE_BASE, num_stages: int = 3, mode: str = 'softmax',
                 tau: float = 1.0, lam: float = 0.5, init_ratios: Optional[Union[float, Sequence[float]]] = None,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f'StageRatioLoss.mode: must be one of {list(MODES)}, got {mode!r}')
        if not isinstance(num_stages, int) or num_stages < 1:
            raise ValueError(f'StageRatioLoss.num_stages: must be a positive int, got {num_stages!r}')
        tau, lam = float(tau), float(lam)
        if tau < 0 or lam <= 0:
            raise ValueError(f'StageRatioLoss: tau must be >= 0 and lam > 0, got tau={tau}, lam={lam}')
        specs = [base] if isinstance(base, dict) else list(base or [])
        if not specs or not all(isinstance(s, dict) and 'type' in s for s in specs):
            raise ValueError(f'StageRatioLoss.base: a loss spec {{type: ...}} or a list of them is needed, '
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
            raise ValueError(f'StageRatioLoss.init_ratios: {n} values in (0, 1) are needed, got {init}')
        if self.mode == 'softmax':
            return torch.tensor([math.log(r / sum(init)) for r in init])
        return torch.tensor([math.log(r / (1 - r)) for r in init])

    def log_ratios(self) -> torch.Tensor:
        return F.log_softmax(self.logits, 0) if self.mode == 'softmax' else F.logsigmoid(self.logits)

    def ratios(self) -> torch.Tensor:
        return self.log_ratios().exp()

    def stage_losses(self, preds: Sequence[torch.Tensor], target: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.stack([sum(loss(p, target, **kwargs) for loss in self.base) for p in preds])

    def forward(self, preds: Union[torch.Tensor, Sequence[torch.Tensor]], target: torch.Tensor,
                **kwargs) -> torch.Tensor:
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

    def log_dict(self) -> Dict[str, torch.Tensor]:
        r = self.ratios().detach()
        return {f'r_stage{i + 1}': r[i] for i in range(self.num_stages)}

    def extra_repr(self) -> str:
        return f'mode={self.mode}, num_stages={self.num_stages}, ratios={[round(float(v), 4) for v in self.ratios()]}'
