"""MPRNet's edge loss (MPRNet Eq. 3): Charbonnier between the Laplacians of output and target.

MPRNet's total loss (Eq. 1) is  sum over stages of  L_char(X_s, Y) + 0.05 * L_edge(X_s, Y). The model sums every
loss of ``train.losses`` over the stage outputs, so an option file lists:

    losses:
      - {type: CharbonnierLoss, loss_weight: 1.0, reduction: mean, eps: !!float 1e-6}
      - {type: EdgeLoss, loss_weight: 0.05, reduction: mean, eps: !!float 1e-6}

Charbonnier: the paper writes sqrt(||X - Y||^2 + eps^2) with eps = 1e-3; the release (and we) compute it per
element and average, mean(sqrt(d^2 + eps^2)). BasicSR's own ``CharbonnierLoss`` computes mean(sqrt(d^2 + eps)),
eps *not* squared, so the paper's loss is BasicSR's with ``eps: 1e-6`` (= (1e-3)^2); we reuse it rather than
register a copy. ``EdgeLoss.eps`` has the same BasicSR meaning (added inside the square root) for consistency.

The model adds the per-stage values as tensors (the release's ``torch.sum`` over a Python list of losses fails
on current PyTorch), so Eq. 1 is exactly ``sum_s [char_s + 0.05 * edge_s]``.

Laplacian (the release's reading of the paper's "Laplacian operator"; the paper gives no formula): one level of
a Laplacian pyramid. G = 5x5 Gaussian, outer product of [.05, .25, .4, .25, .05], applied per channel with
replicate padding; lap(x) = x - G(up(down(G(x)))), where down keeps every second pixel (even rows/columns) and
up puts them back in place with zeros in between, times 4 (the kernel's mass on the even sub-grid is 1/4).
The edge loss is then Charbonnier(lap(pred), lap(target)). ``loss_weight`` carries the paper's lambda = 0.05.
"""
import torch
from basicsr.losses.basic_loss import charbonnier_loss
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn
from torch.nn import functional as F

_GAUSS_1D = (0.05, 0.25, 0.4, 0.25, 0.05)


@LOSS_REGISTRY.register()
class EdgeLoss(nn.Module):
    """Charbonnier loss between Laplacians (see the module docstring)."""

    def __init__(self, loss_weight=0.05, reduction='mean', eps=1e-6):
        super().__init__()
        if reduction not in ('none', 'mean', 'sum'):
            raise ValueError(f"EdgeLoss: reduction must be 'none', 'mean' or 'sum', got '{reduction}'")
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.eps = eps
        k = torch.tensor(_GAUSS_1D, dtype=torch.float64)  # cast to the input dtype when used
        self.register_buffer('kernel', torch.outer(k, k)[None, None], persistent=False)

    def gauss(self, img):
        c = img.shape[1]
        pad = self.kernel.shape[-1] // 2
        kernel = self.kernel.to(img.dtype).expand(c, 1, -1, -1)
        return F.conv2d(F.pad(img, (pad, pad, pad, pad), mode='replicate'), kernel, groups=c)

    def laplacian(self, img):
        blurred = self.gauss(img)
        keep = torch.zeros_like(blurred[:1, :1])
        keep[..., ::2, ::2] = 4.0
        return img - self.gauss(blurred * keep)

    def forward(self, pred, target, weight=None, **kwargs):
        return self.loss_weight * charbonnier_loss(self.laplacian(pred), self.laplacian(target), weight,
                                                   eps=self.eps, reduction=self.reduction)
