"""MPRNet's edge loss (MPRNet Eq. 3): Charbonnier between the Laplacians of output and target.

MPRNet's loss (Eq. 1) is sum_s L_char(X_s, Y) + 0.05 L_edge(X_s, Y): an option file lists BasicSR's
``CharbonnierLoss`` and this ``EdgeLoss`` (``loss_weight: 0.05``) in ``train.losses``, summed over the stages by the
model. BasicSR's Charbonnier computes mean(sqrt(d^2 + eps)) (eps not squared), so the paper's eps = 1e-3 is
``eps: 1e-6`` there; ``EdgeLoss.eps`` has the same meaning. Laplacian (the release's reading; the paper gives no
formula): one level of a Laplacian pyramid, lap(x) = x - G(up(down(G(x)))), G the 5x5 Gaussian from
[.05, .25, .4, .25, .05] per channel with replicate padding, down keeping even rows/columns and up putting them
back with zeros between, times 4.
"""
from typing import Optional

import torch
from basicsr.losses.basic_loss import charbonnier_loss
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn
from torch.nn import functional as F

_GAUSS_1D = (0.05, 0.25, 0.4, 0.25, 0.05)


@LOSS_REGISTRY.register()
class EdgeLoss(nn.Module):
    """Charbonnier loss between Laplacians (see the module docstring)."""

    def __init__(self, loss_weight: float = 0.05, reduction: str = 'mean', eps: float = 1e-6) -> None:
        super().__init__()
        if reduction not in ('none', 'mean', 'sum'):
            raise ValueError(f"EdgeLoss: reduction must be 'none', 'mean' or 'sum', got '{reduction}'")
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.eps = eps
        k = torch.tensor(_GAUSS_1D, dtype=torch.float64)  # cast to the input dtype when used
        self.register_buffer('kernel', torch.outer(k, k)[None, None], persistent=False)

    def gauss(self, img: torch.Tensor) -> torch.Tensor:
        c = img.shape[1]
        pad = self.kernel.shape[-1] // 2
        kernel = self.kernel.to(img.dtype).expand(c, 1, -1, -1)
        return F.conv2d(F.pad(img, (pad, pad, pad, pad), mode='replicate'), kernel, groups=c)

    def laplacian(self, img: torch.Tensor) -> torch.Tensor:
        blurred = self.gauss(img)
        keep = torch.zeros_like(blurred[:1, :1])
        keep[..., ::2, ::2] = 4.0
        return img - self.gauss(blurred * keep)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                **kwargs) -> torch.Tensor:
        return self.loss_weight * charbonnier_loss(self.laplacian(pred), self.laplacian(target), weight,
                                                   eps=self.eps, reduction=self.reduction)
