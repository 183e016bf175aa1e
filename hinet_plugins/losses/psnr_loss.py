"""PSNR loss (HINet Eq. 1): the negative PSNR of each image, averaged over the batch.

loss = loss_weight * 10/ln(10) * mean_n log(MSE_n + 1e-8)  =  -loss_weight * mean_n PSNR_n  (data range 1).

With ``toY`` the PSNR is measured on the BT.601 luma (Y of YCbCr, 16..235 scaled by 1/255), as the deraining
benchmarks do. The HINet release option files use ``loss_weight: 0.5`` (its model sums the loss over both
stages), ``reduction: mean``.
"""
import math

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

_Y_COEF = (65.481, 128.553, 24.966)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> BT.601 luma in [16/255, 235/255], shape (N, 1, H, W)."""
    coef = img.new_tensor(_Y_COEF).view(1, 3, 1, 1)
    return ((img * coef).sum(dim=1, keepdim=True) + 16.0) / 255.0


@LOSS_REGISTRY.register()
class PSNRLoss(nn.Module):

    def __init__(self, loss_weight: float = 1.0, reduction: str = 'mean',
                 toY: bool = False, eps: float = 1e-8) -> None:  # noqa: N803 (release keyword)
        super().__init__()
        if reduction != 'mean':
            raise ValueError(f"PSNRLoss: reduction must be 'mean' (PSNR is averaged over images), got '{reduction}'")
        self.loss_weight = loss_weight
        self.toY = toY
        self.eps = eps
        self.scale = 10.0 / math.log(10.0)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, **kwargs) -> torch.Tensor:
        if pred.dim() != 4:
            raise ValueError(f'PSNRLoss expects (N, C, H, W) tensors, got shape {tuple(pred.shape)}')
        if self.toY:
            pred, target = rgb_to_y(pred), rgb_to_y(target)
        mse = (pred - target).pow(2).flatten(1).mean(dim=1)
        return self.loss_weight * self.scale * torch.log(mse + self.eps).mean()
