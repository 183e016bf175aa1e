"""Two facts about any restoration network that tools read without knowing its architecture.

Multi-stage networks (HINet, MPRNet, FCN, DRCNet) return a list of stage outputs, the last one being the
restored image; single-stage ones return a tensor. The channels a network takes are those of its first
convolution. Restore, export, TLC calibration, spandrel and the benchmarks use these two rules from here.
"""
from typing import Optional, Sequence, Union

import torch
from torch import nn


def last_output(out: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
    """The restored image of a forward pass: the last stage's output, or the output itself."""
    return out[-1] if isinstance(out, (list, tuple)) else out


def first_conv(net: nn.Module) -> Optional[nn.modules.conv._ConvNd]:
    """The network's first convolution in module order, or None when it has none."""
    return next((m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)


def input_channels(net: nn.Module, default: int = 3) -> int:
    """Channels the network takes: those of its first convolution (``default`` when it has none)."""
    conv = first_conv(net)
    return conv.in_channels if conv is not None else default
