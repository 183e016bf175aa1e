"""TLC converter: make a model's global aggregations local at test time (Chu et al., ECCV 2022, Secs. 3.2-4.2).

``convert(model, train_size, base_size=None, fast_imp=False)`` walks any ``nn.Module`` tree (it knows no
architecture) and swaps, in place, ``AdaptiveAvgPool2d(1)``, ``AdaptiveMaxPool2d(1)``, ``InstanceNorm2d``,
``GroupNorm`` and ``archs.blocks.TransposedAttention`` for local forms (``_local_class``); one forward of a
``train_size`` input then gives each layer the window of its feature size for a ``base_size`` input.

<<<<<<< HEAD
    nn.AdaptiveAvgPool2d(1)   -> LocalAvgPool2d      (squeeze of SE / channel attention, GE-theta-)
    nn.AdaptiveMaxPool2d(1)   -> LocalMaxPool2d      (CBAM's max branch)
    nn.InstanceNorm2d         -> LocalInstanceNorm2d (HIN; affine or not)
    nn.GroupNorm              -> LocalGroupNorm      (incl. GroupNorm(1, C) = LayerNorm over C, H, W)
    archs.blocks.TransposedAttention -> LocalTransposedAttention (Restormer's MDTA: attention per window, Sec. 3.3)

then calibrates every swapped layer by ONE forward pass of a ``train_size`` input (paper Sec. 4.2): a layer whose
feature map there is ``h x w`` gets the window ``(h * base_h // train_h, w * base_w // train_w)``, i.e. its feature
size for a ``base_size`` input. Default ``base_size`` = 1.5 x ``train_size`` (the authors' advice, 384 for 256).
``train_size`` is used for every layer (the authors' release forgets to pass it, so non-256 training sizes get
wrong windows there; tests/tlc/test_tlc.py checks 48).

Decisions (documented here because the paper does not settle them):
- Replacements reuse the replaced module's Parameter objects (same names: ``weight``, ``bias``), so the state_dict
  and the optimizer are untouched; the replaced module is kept outside the module tree and put back by
  ``restore()`` / on leaving the ``with`` block.
- TLC is test-time only: a local module in training mode (or not calibrated) computes the original global op.
- Not converted because not global at test time: BatchNorm (running statistics in eval mode) and InstanceNorm with
  ``track_running_stats=True`` (idem); ``nn.LayerNorm`` over channels (per pixel). A LayerNorm over trailing
  (C, H, W) is tied to one input size, so it cannot be localised: it is reported.
- Reported, not converted ("unsupported", with a warning and in ``TLCConversion.unsupported``): global
  aggregations met during the calibration pass that have no local form here, found by watching torch calls
  (``TorchFunctionMode``) inside every module: adaptive pooling to a size other than 1, functional
  instance/group norm, layer norm over space, batch norm with batch statistics, mean/sum/max/min/var/std
  reductions over both spatial axes of a 4-D tensor (e.g. SimAM), and matrix products (matmul, bmm, einsum,
  scaled_dot_product_attention) that sum over as many positions as a feature map entering a running module has
  (H*W): a transposed or spatial self-attention written without ``TransposedAttention``. Reductions after a
  reshape are not detected.
- Attention is localisable when it is built on the shared ``archs.blocks.TransposedAttention`` (a parameter-free
  module taking q, k, v of shape (N, heads, C_h, H, W) and the temperature): the converter swaps that module only,
  so the block's convolutions, its ``temperature`` and every state_dict key stay where they are. That is the whole
  protocol for a new attention block: compute q, k, v on the full map, call a ``TransposedAttention`` submodule.
- A module called at several feature sizes in one forward keeps the window of its first call (reported in
  ``notes``).
- Window maxima are exact even in fast mode; pooled maps are full size (N, C, H, W), so SE-like blocks must
  broadcast the pooled tensor (1x1-conv MLP), not ``view`` it to (N, C).
=======
Decisions (the paper does not settle them):
- ``train_size`` is honoured for every layer (the authors' release calibrates for 256 whatever it is given).
- Replacements reuse the replaced modules' Parameter objects (same names), so state_dict and optimizer are
  untouched; the originals stay outside the tree and are put back by ``restore()`` / on leaving the ``with`` block.
- Test time only: a local module in training mode (or not calibrated) computes the original global op.
- Global aggregations without a local form are reported (``TLCConversion.unsupported``, a warning), not converted.
- Attention is localisable when it computes q, k, v on the full map and calls a ``TransposedAttention`` submodule:
  the converter's whole protocol for a new attention block.
>>>>>>> docstrings
"""
import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..archs.blocks import TransposedAttention
from ..utils.nets import first_conv
from .global_ops import GlobalOpWatcher
from .local_attention import local_transposed_attention
from .local_ops import (FAST_STRIDES, covers, fast_stride, local_avg_pool, local_group_norm, local_instance_norm,
                        local_max_pool, pair)


class StandIn(nn.Module):
    """A module standing in for ``original``, which is kept outside the module tree (so state_dict and
    parameters() stay as they were); attributes it lacks (num_features, num_groups, ... that the arch's code
    reads) come from ``original``. Base of the local ops here and of their ONNX graph forms."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.__dict__['original'] = original

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if 'original' not in self.__dict__:
                raise
            return getattr(self.__dict__['original'], name)


class LocalOp(StandIn):
    """Base of the local replacements: window calibration, fast-mode stride, global fallback.

    ``calibrate``: a layer whose map is ``h x w`` in the calibration pass gets the window ``(h * base_h // train_h,
    w * base_w // train_w)``, its feature size for a ``base_size`` input (paper Sec. 4.2); a module called at several
    feature sizes keeps the first's window (a note says so). Pooled outputs are full-size (N, C, H, W) maps, so
    SE-like blocks must broadcast them (1x1-conv MLP), not ``view`` them to (N, C). Window maxima (``LocalMaxPool2d``,
    CBAM's max branch) are exact, also in fast mode.
    """

    def __init__(self, original: nn.Module, fast_imp: bool = False) -> None:
        super().__init__(original)
        self.fast_imp = bool(fast_imp)
        self.kernel_size = None
        self.max_stride = (1, 1)
        self._seen = None  # feature sizes recorded during calibration

    def calibrate(self, train_size: Tuple[int, int], base_size: Tuple[int, int]) -> Optional[Tuple[int, int]]:
        """Window from the first feature size seen during the calibration pass (None if never reached)."""
        if not self._seen:
            return None
        (h, w), (th, tw), (bh, bw) = self._seen[0], train_size, base_size
        self.kernel_size = (max(1, h * bh // th), max(1, w * bw // tw))
        self.max_stride = (max(1, FAST_STRIDES[0] * h // th), max(1, FAST_STRIDES[0] * w // tw))
        return self.kernel_size

    def stride(self, x: torch.Tensor) -> Tuple[int, ...]:
        if not self.fast_imp:
            return (1, 1)
        return tuple(fast_stride(n, k, cap) for n, k, cap in zip(x.shape[-2:], self.kernel_size, self.max_stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._seen is not None:
            self._seen.append(tuple(x.shape[-2:]))
        if self.training or self.kernel_size is None:
            return self.original(x)
        if x.dim() == 3:  # unbatched (C, H, W), as the norm layers accept
            return self.local(x[None])[0]
        return self.local(x)

    def extra_repr(self) -> str:
        return f'kernel_size={self.kernel_size}, fast_imp={self.fast_imp}, replaces={type(self.original).__name__}'


class LocalAvgPool2d(LocalOp):
    def local(self, x: torch.Tensor) -> torch.Tensor:
        return local_avg_pool(x, self.kernel_size, self.stride(x))


class LocalMaxPool2d(LocalOp):
    def local(self, x: torch.Tensor) -> torch.Tensor:
        return local_max_pool(x, self.kernel_size)


class _LocalNorm(LocalOp):
    def __init__(self, original, fast_imp=False):
        super().__init__(original, fast_imp)
        self.eps = original.eps
        for name in ('weight', 'bias'):  # the same Parameter objects (or None): nothing is copied
            self._parameters[name] = getattr(original, name)


class LocalInstanceNorm2d(_LocalNorm):
    def local(self, x: torch.Tensor) -> torch.Tensor:
        return local_instance_norm(x, self.kernel_size, self.weight, self.bias, self.eps, self.stride(x))


class LocalGroupNorm(_LocalNorm):
    def local(self, x: torch.Tensor) -> torch.Tensor:
        return local_group_norm(x, self.num_groups, self.kernel_size, self.weight, self.bias, self.eps,
                                self.stride(x))


class LocalTransposedAttention(LocalOp):
    """Replaces ``archs.blocks.TransposedAttention`` (Restormer's MDTA core, a parameter-free module taking q, k, v
    of shape (N, heads, C_h, H, W) and the temperature): windowed attention, see
    ``local_attention.local_transposed_attention``. Only this module is swapped, so the block's convolutions, its
    ``temperature`` and every state_dict key stay where they are. The window is calibrated on the size of q (the
    attention block's input size: the 1x1 and depthwise convs that make q, k, v keep it and run on the full map, as
    in the release). Fast mode samples each window's correlations on a strided grid."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        if self._seen is not None:
            self._seen.append(tuple(q.shape[-2:]))
        if self.training or self.kernel_size is None or covers(self.kernel_size, q):
            return self.original(q, k, v, temperature)
        return local_transposed_attention(q, k, v, temperature, self.kernel_size, self.stride(q))


def _local_class(module):
    """The local replacement for a module, or None if it is not a supported global op."""
    if isinstance(module, LocalOp):
        return None
    to_one = getattr(module, 'output_size', None) in (1, (1, 1), [1, 1])
    if isinstance(module, nn.AdaptiveAvgPool2d) and to_one:
        return LocalAvgPool2d
    if isinstance(module, nn.AdaptiveMaxPool2d) and to_one and not module.return_indices:
        return LocalMaxPool2d
    if isinstance(module, nn.InstanceNorm2d) and not module.track_running_stats:
        return LocalInstanceNorm2d
    if isinstance(module, nn.GroupNorm):
        return LocalGroupNorm
    if isinstance(module, TransposedAttention):
        return LocalTransposedAttention
    return None


# ---------------------------------------------------------------- conversion
class TLCConversion:
    """Result of ``convert``: what was swapped, the windows, what could not be converted. A context manager:
    leaving the ``with`` block (or calling ``restore()``) puts the original modules back. ``unsupported``: the
    global aggregations ``global_ops.GlobalOpWatcher`` saw during the calibration pass (also warned about)."""

    def __init__(self, model: nn.Module, train_size: Tuple[int, int], base_size: Tuple[int, int],
                 fast_imp: bool) -> None:
        self.model, self.train_size, self.base_size, self.fast_imp = model, train_size, base_size, fast_imp
        self.layers = {}       # name -> LocalOp
        self.windows = {}      # name -> (kh, kw)
        self.unsupported = []  # 'name (Class): what' of global ops left as they are
        self.notes = []        # other remarks (already local, uncalibrated layers, several feature sizes)
        self._swaps = []       # (parent, attribute, original, local)

    def restore(self) -> None:
        for parent, attr, original, local in reversed(self._swaps):
            if getattr(parent, attr) is local:
                setattr(parent, attr, original)
        self._swaps.clear()

    def summary(self) -> str:
        kinds = {}
        for m in self.layers.values():
            kinds[type(m.original).__name__] = kinds.get(type(m.original).__name__, 0) + 1
        text = (f'TLC: {len(self.layers)} layer(s) made local ({", ".join(f"{n} {k}" for k, n in kinds.items())}; '
                f'train_size={self.train_size}, base_size={self.base_size}, fast_imp={self.fast_imp})')
        for line in self.unsupported:
            text += f'\n  unsupported global op left as is: {line}'
        for line in self.notes:
            text += f'\n  note: {line}'
        return text

    def __enter__(self) -> 'TLCConversion':
        return self

    def __exit__(self, *exc) -> bool:
        self.restore()
        return False


def _size(value, name):
    """int, (h, w), or the release's (N, C, H, W) -> (h, w) of positive ints."""
    if isinstance(value, (list, tuple)) and len(value) == 4:
        value = value[-2:]
    try:
        size = pair(value, name)
    except (TypeError, ValueError):
        raise ValueError(f'TLC {name} must be an int or [h, w], got {value!r}') from None
    if min(size) <= 0:
        raise ValueError(f'TLC {name} must be positive, got {value!r}')
    return size


def _calibration_input(model, train_size):
    ref = next(iter(model.parameters()), None)
    conv = first_conv(model)
    if conv is None:
        raise ValueError('TLC calibration: the model has no convolution to infer the input channels from; '
                         'pass calib_input=')
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, conv.in_channels, *train_size, generator=gen)
    return x.to(device=ref.device, dtype=ref.dtype) if ref is not None else x


def convert(model: nn.Module, train_size: Union[int, Sequence[int]],
            base_size: Optional[Union[int, Sequence[int]]] = None, fast_imp: bool = False,
            calib_input: Optional[torch.Tensor] = None, warn: bool = True) -> TLCConversion:
    """Swap the supported global ops of ``model`` (in place) for local ones and calibrate their windows.

    Args:
        model: any nn.Module; its supported modules are replaced in place.
        train_size: training patch size, int or (h, w) (the release's (N, C, H, W) is accepted too).
        base_size: size whose feature maps give the windows; default 1.5 x ``train_size``.
        fast_imp: use the sampled-grid statistics of paper Appendix A.
        calib_input: calibration tensor; default a (1, C, *train_size) uniform tensor, C = first conv's inputs.
        warn: emit a warning listing unsupported global ops.
    Returns a ``TLCConversion`` (a context manager restoring the original modules on exit).

    Swapped (``_local_class``): ``AdaptiveAvgPool2d(1)``, ``AdaptiveMaxPool2d(1)`` (without indices),
    ``InstanceNorm2d`` (affine or not; HIN), ``GroupNorm`` (GroupNorm(1, C) = LayerNorm over C, H, W),
    ``TransposedAttention``. Not global at test time, so left alone: BatchNorm and InstanceNorm with
    ``track_running_stats=True`` (running statistics in eval), ``nn.LayerNorm`` over channels (per pixel). A
    LayerNorm over trailing (C, H, W) is tied to one input size and cannot be localised: it is reported.
    """
    train_size = _size(train_size, 'train_size')
    base_size = (int(train_size[0] * 1.5), int(train_size[1] * 1.5)) if base_size is None else _size(
        base_size, 'base_size')
    conv = TLCConversion(model, train_size, base_size, fast_imp)
    already = []
    for name, module in list(model.named_modules()):
        if isinstance(module, LocalOp):
            already.append(name)
        cls = _local_class(module)
        if cls is None:
            continue
        if not name:
            raise ValueError(f'TLC: the model itself is a {type(module).__name__}; convert a model that contains it')
        parent_name, _, attr = name.rpartition('.')
        parent = model.get_submodule(parent_name)
        local = cls(module, fast_imp)
        local._seen = []
        local.train(module.training)
        setattr(parent, attr, local)
        conv._swaps.append((parent, attr, module, local))
        conv.layers[name] = local
    if already:
        conv.notes.append(f'{len(already)} layer(s) were already local and were left as they are')
    try:
        _calibrate(model, conv, calib_input)
    except BaseException:
        conv.restore()
        raise
    if conv.unsupported and warn:
        warnings.warn('TLC: global operations without a local form were left as they are: '
                      + '; '.join(conv.unsupported), stacklevel=2)
    return conv


def _calibrate(model, conv, calib_input):
    x = calib_input if calib_input is not None else _calibration_input(model, conv.train_size)
    modes = {m: m.training for m in model.modules()}
    watcher = GlobalOpWatcher(model, skip=(LocalOp,))
    try:
        model.eval()
        with torch.no_grad(), watcher:
            model(x)
    finally:
        watcher.remove()
        for m, mode in modes.items():
            m.training = mode
    conv.unsupported = list(watcher.found)
    for name, local in conv.layers.items():
        seen, window = local._seen, local.calibrate(conv.train_size, conv.base_size)
        local._seen = None
        if window is None:
            conv.notes.append(f'{name} was not reached by the calibration pass: it stays global')
            continue
        conv.windows[name] = window
        if len(set(seen)) > 1:
            conv.notes.append(f'{name} is called at feature sizes {sorted(set(seen))}; its window {window} '
                              f'comes from the first, {seen[0]}')


def converted(model: nn.Module, train_size: Union[int, Sequence[int]],
              base_size: Optional[Union[int, Sequence[int]]] = None, fast_imp: bool = False,
              **kwargs) -> TLCConversion:
    """``with converted(net, 256, 384): ...`` -- the model is local inside the block, restored after it."""
    return convert(model, train_size, base_size, fast_imp, **kwargs)
