"""Graph forms of TLC's local layers for ONNX export: the same values as ``hinet_plugins.tlc.local_ops``, written
with fixed-kernel pooling instead of prefix sums written into views.

Why a second form: ``local_ops`` writes in place into strided views (``out=`` arguments, ``copy_`` into slices), the
fastest form in PyTorch, but the TorchScript ONNX exporter drops an in-place write into a ``narrow`` view (wrong
values, no error) and crashes on ``out=`` views. Here each calibrated layer becomes stride-1 ``avg_pool2d`` /
``max_pool2d`` over its window (ONNX AveragePool / MaxPool) at the valid positions, then the paper's centred
replicate padding back to full size (``_pad_back``: ``(k - 1) // 2`` before, the rest after, as
``local_ops.expand``); normalisations: ``GraphGroupNorm``.

Limits (checked by ``onnx_export``, which compares every export with PyTorch): a window must be smaller than its
feature map at the export size, and the graph is then valid for inputs at least that large; the fast mode's
size-dependent strides are not expressible; layers of other types (e.g. a local attention) are exported as they
are and must trace by themselves.
"""
import copy
from typing import List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..tlc.converter import StandIn


def _pad_back(valid, kernel):
    kh, kw = kernel
    return F.pad(valid, ((kw - 1) // 2, kw - 1 - (kw - 1) // 2, (kh - 1) // 2, kh - 1 - (kh - 1) // 2),
                 mode='replicate')


class _GraphLocal(StandIn):
    def __init__(self, local):
        super().__init__(local.original)  # not a submodule (no duplicate parameters)
        self.kernel = tuple(int(k) for k in local.kernel_size)

    def forward(self, x):
        return self.local(x[None])[0] if x.dim() == 3 else self.local(x)


class GraphAvgPool(_GraphLocal):
    def local(self, x: torch.Tensor) -> torch.Tensor:
        return _pad_back(F.avg_pool2d(x, self.kernel, stride=1), self.kernel)


class GraphMaxPool(_GraphLocal):
    def local(self, x: torch.Tensor) -> torch.Tensor:
        return _pad_back(F.max_pool2d(x, self.kernel, stride=1), self.kernel)


class GraphGroupNorm(_GraphLocal):
    """Local GroupNorm (``num_groups = C``: InstanceNorm) with the layer's own weight and bias.

    Window moments come from the pooled per-pixel group means of ``x - offset`` and ``(x - offset)^2``, the offset
    being each (sample, group)'s mean over the map (computed in the graph), as ``local_ops`` centres its sums.
    """

    def __init__(self, local: StandIn, num_groups: int) -> None:
        super().__init__(local)
        self.num_groups, self.eps = num_groups, local.eps
        for name in ('weight', 'bias'):  # the layer's Parameter objects (or None)
            self._parameters[name] = getattr(local, name)

    def local(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        g = self.num_groups
        grouped = x.reshape(n, g, c // g, x.shape[-2], x.shape[-1])
        offset = grouped.mean(dim=(2, 3, 4), keepdim=True)
        d = grouped - offset
        mean = F.avg_pool2d(d.mean(2), self.kernel, stride=1)
        var = (F.avg_pool2d((d * d).mean(2), self.kernel, stride=1) - mean * mean).clamp(min=0)
        mean = _pad_back(mean, self.kernel)[:, :, None] + offset
        rstd = _pad_back(torch.rsqrt(var + self.eps), self.kernel)[:, :, None]
        out = ((grouped - mean) * rstd).reshape(x.shape)
        if self.weight is not None:
            out = out * self.weight[:, None, None]
        if self.bias is not None:
            out = out + self.bias[:, None, None]
        return out


def graph_forms(net: nn.Module) -> Tuple[nn.Module, List[str]]:
    """A deep copy of ``net`` whose calibrated TLC layers are replaced by their graph forms (``net`` untouched).

    Returns (copy, names of local layers left as they are: uncalibrated ones stay global, unknown types)."""
    from ..tlc import LocalAvgPool2d, LocalGroupNorm, LocalInstanceNorm2d, LocalMaxPool2d, LocalOp
    net = copy.deepcopy(net)
    left = []
    for name, module in list(net.named_modules()):
        if not isinstance(module, LocalOp):
            continue
        if module.kernel_size is None:
            form = module.original
        elif isinstance(module, LocalAvgPool2d):
            form = GraphAvgPool(module)
        elif isinstance(module, LocalMaxPool2d):
            form = GraphMaxPool(module)
        elif isinstance(module, LocalInstanceNorm2d):
            form = GraphGroupNorm(module, module.original.num_features)
        elif isinstance(module, LocalGroupNorm):
            form = GraphGroupNorm(module, module.original.num_groups)
        else:
            left.append(name)
            continue
        parent, _, attr = name.rpartition('.')
        setattr(net.get_submodule(parent), attr, form)
    return net, left
