"""Local (sliding-window) forms of global statistics, in O(H*W) for any window (TLC, Chu et al. 2022, Sec. 3.2).

Every operator returns, for each pixel, the statistic of the ``kh x kw`` window around it. As in the paper, the
statistic is computed for the valid window positions only (output ``(H-kh+1) x (W-kw+1)``) and then padded back to
``H x W`` by replicating its border, centred: ``(W - w') // 2`` columns on the left, the rest on the right (same
vertically). A window larger than the map is clamped to the map; when it covers the whole map the exact global
operator is returned, so a local op never differs from the op it replaces on training-size inputs.

Cost. Window sums use prefix sums (integral images), done separably: a cumulative sum along W, differences ``k``
apart, then the same along H. Two cumulative sums per map, whatever the window. Window maxima use the van Herk /
Gil-Werman algorithm (running maxima both ways inside blocks of ``k``), also O(H*W). The benchmark
``benchmarks/tlc_overhead.py`` prints each op's time at windows 64..512.

Precision (our choice; the release computes Var = E[x^2] - E[x]^2 on raw float32 features). We subtract a
per-(sample, group) offset (the mean of a coarse grid of the map) before forming x and x^2, and take prefix sums
along one axis at a time, so a prefix sum never spans more than one row or column of window sums. Statistics
are computed in float32 at least (half/bfloat16 inputs are upcast). With mean 1e3 and std 1 (16x16 windows) the
local variance matches a float64 brute force to 2e-7 relative; the release's formula is off by 50% there
(tests/test_tlc.py). What remains is the float32 cancellation when a window's variance is tiny next to its squared
distance from the offset (e.g. 3-pixel windows of noise: ~1e-3 relative).

Fast mode (paper Appendix A, "optimised implementation"). Statistics are taken on the grid ``x[..., ::r, ::r]``
with window ``k // r``, then expanded back with nearest-neighbour upsampling and the same centred replicate padding.
``r`` (per axis) is the first of 5, 4, 3, 2, 1 that divides the feature size and does not exceed the layer's cap
(``max_stride``: 5 x feature size / training size, computed at calibration, as in the release); we also keep at
least ``MIN_FAST_SAMPLES`` samples per window side, so the sampled variance cannot collapse to 0 (the release can
divide by sqrt(eps) there). Window maxima are always exact (they are O(H*W) already).
Error of the fast mode vs the exact one (``benchmarks/tlc_overhead.py``, natural-image features: three skimage
photos at 720x1280 and their horizontal gradients, r = 5): local mean off by 0.5-0.7% of the feature's std at
window 384 and 1.0-1.1% at window 192; local InstanceNorm output off by 0.009-0.014 (mean absolute, in units of
the normalised feature) at window 384 and 0.015-0.025 at 192.
"""
import torch
from torch.nn import functional as F

FAST_STRIDES = (5, 4, 3, 2, 1)
MIN_FAST_SAMPLES = 8


def pair(value, name='size'):
    """int or (h, w) -> (h, w) of ints."""
    if isinstance(value, int):
        return value, value
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f'{name} must be an int or (h, w), got {value}')
    return value


def covers(kernel, x):
    return kernel[0] >= x.shape[-2] and kernel[1] >= x.shape[-1]


def fast_stride(size, kernel, cap):
    """Sampling stride of the fast mode for one axis: first of FAST_STRIDES dividing ``size``, <= cap."""
    for r in FAST_STRIDES:
        if r <= cap and size % r == 0 and kernel // r >= MIN_FAST_SAMPLES:
            return r
    return 1


def _box_sum_1d(x, k, dim):
    """Sums over the ``n - k + 1`` valid windows of length ``k`` along ``dim`` (one prefix sum)."""
    n = x.size(dim)
    c = x.cumsum(dim)
    out = c.narrow(dim, k - 1, n - k + 1).clone()
    if n > k:
        out.narrow(dim, 1, n - k).sub_(c.narrow(dim, 0, n - k))
    return out


def box_sum(x, kernel):
    """Window sums at the valid positions of the last two axes; ``kernel`` is clamped to the map."""
    kh, kw = min(kernel[0], x.shape[-2]), min(kernel[1], x.shape[-1])
    # along W first: the prefix sum over the contiguous axis is the cheap one, and it shrinks the map for the other
    return _box_sum_1d(_box_sum_1d(x, kw, x.dim() - 1), kh, x.dim() - 2), kh * kw


def expand(valid, size, stride=(1, 1)):
    """Valid-position map (sampled with ``stride``) -> full ``size``: nearest upsampling, centred replicate pad."""
    if stride == (1, 1):
        ph, pw = size[0] - valid.shape[-2], size[1] - valid.shape[-1]
        if ph == 0 and pw == 0:
            return valid
        return F.pad(valid, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode='replicate')
    (h, w), (rh, rw) = valid.shape[-2:], stride
    up = valid[..., :, None, :, None].expand(*valid.shape[:-2], h, rh, w, rw).reshape(*valid.shape[:-2], h * rh, w * rw)
    return expand(up, size)


def _sample(x, kernel, stride):
    if stride == (1, 1):
        return x, kernel
    return x[..., ::stride[0], ::stride[1]], (kernel[0] // stride[0], kernel[1] // stride[1])


def _stat_dtype(x):
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def local_avg_pool(x, kernel, stride=(1, 1)):
    """Local form of ``AdaptiveAvgPool2d(1)``: per-pixel mean of the window around it (N, C, H, W)."""
    kernel = pair(kernel, 'kernel')
    if covers(kernel, x):
        return F.adaptive_avg_pool2d(x, 1)
    xs, k = _sample(x.to(_stat_dtype(x)), kernel, stride)
    sums, area = box_sum(xs, k)
    return expand(sums.div_(area), x.shape[-2:], stride).to(x.dtype)


def _sliding_max_rows(x, k):
    """Valid sliding-window max along the rows (dim -2), van Herk / Gil-Werman: O(n) for any ``k``.

    Rows are split in blocks of ``k`` (the last one may be shorter); a running max from the top and one from the
    bottom of every block give any window's max as the max of two values. Each scan step handles row ``j`` of every
    block at once (a strided view, contiguous along the row), so there are ``k`` vectorised steps of ``n / k`` rows.
    """
    n = x.shape[-2]
    if k >= n:
        return x.amax(-2, keepdim=True)
    if k == 1:
        return x
    down, up = torch.empty_like(x), torch.empty_like(x)
    down[..., 0::k, :] = x[..., 0::k, :]
    up[..., k - 1::k, :] = x[..., k - 1::k, :]
    for j in range(1, k):
        rows = x[..., j::k, :]
        torch.maximum(down[..., j - 1::k, :][..., :rows.shape[-2], :], rows, out=down[..., j::k, :])
        i = k - 1 - j  # bottom-up: rows i of every block, from their successors i + 1
        rows, nxt = x[..., i::k, :], up[..., i + 1::k, :]
        c = nxt.shape[-2]
        torch.maximum(nxt, rows[..., :c, :], out=up[..., i::k, :][..., :c, :])
        if rows.shape[-2] > c:  # the last rows of a short final block start its running max
            up[..., i::k, :][..., c:, :] = rows[..., c:, :]
    # window [i, i + k - 1] = (rest of i's block, bottom-up max) + (next block up to i + k - 1, top-down max)
    return torch.maximum(up[..., :n - k + 1, :], down[..., k - 1:, :])


def local_max_pool(x, kernel):
    """Local form of ``AdaptiveMaxPool2d(1)``: per-pixel max of the window around it (always exact)."""
    kernel = pair(kernel, 'kernel')
    if covers(kernel, x):
        return F.adaptive_max_pool2d(x, 1)
    kh, kw = min(kernel[0], x.shape[-2]), min(kernel[1], x.shape[-1])
    cols = _sliding_max_rows(x.transpose(-1, -2).contiguous(), kw)  # along W, on the transposed map
    valid = _sliding_max_rows(cols.transpose(-1, -2).contiguous(), kh)
    return expand(valid, x.shape[-2:])


def local_moments(x, num_groups, kernel, stride=(1, 1)):
    """Window mean and (biased) variance per group of channels, at the valid positions of the sampled grid.

    Returns ``mean, var`` of shape (N, G, h', w') in float32 (or the input's dtype if wider).
    """
    n, c = x.shape[:2]
    xs, k = _sample(x, kernel, stride)
    xs = xs.to(_stat_dtype(x)).reshape(n, num_groups, c // num_groups, *xs.shape[-2:])
    coarse = x[..., ::8, ::8] if min(x.shape[-2:]) > 64 else x
    offset = coarse.to(xs.dtype).reshape(n, num_groups, -1).mean(-1)[..., None, None, None]
    d = xs - offset
    if d.shape[2] > 1:
        s1, s2 = d.sum(2), d.mul_(d).sum(2)
    else:
        s1 = d[:, :, 0]
        s2 = s1 * s1
    s1, area = box_sum(s1, k)
    s2, _ = box_sum(s2, k)
    area *= c // num_groups
    mean = s1.div_(area)
    var = s2.div_(area).sub_(mean.square()).clamp_(min=0)
    return mean.add_(offset[:, :, 0]), var


def local_group_norm(x, num_groups, kernel, weight=None, bias=None, eps=1e-5, stride=(1, 1)):
    """Local form of ``GroupNorm`` (``num_groups=C``: InstanceNorm; ``1``: LayerNorm over C, H, W)."""
    kernel = pair(kernel, 'kernel')
    if covers(kernel, x):
        return F.group_norm(x, num_groups, weight, bias, eps)
    n, c, h, w = x.shape
    mean, var = local_moments(x, num_groups, kernel, stride)
    rstd = var.add_(eps).rsqrt_()
    if num_groups == c:  # fold the affine into one scale/shift per channel, then one fused pass at full size
        scale = rstd if weight is None else rstd * weight.to(rstd.dtype)[:, None, None]
        shift = -mean * scale
        if bias is not None:
            shift += bias.to(rstd.dtype)[:, None, None]
        scale, shift = expand(scale, (h, w), stride), expand(shift, (h, w), stride)
        return torch.addcmul(shift, x.to(scale.dtype), scale).to(x.dtype)
    mean, rstd = expand(mean, (h, w), stride)[:, :, None], expand(rstd, (h, w), stride)[:, :, None]
    out = ((x.to(mean.dtype).reshape(n, num_groups, c // num_groups, h, w) - mean) * rstd).reshape(n, c, h, w)
    if weight is not None:
        out = out * weight.to(out.dtype)[:, None, None]
    if bias is not None:
        out = out + bias.to(out.dtype)[:, None, None]
    return out.to(x.dtype)


def local_instance_norm(x, kernel, weight=None, bias=None, eps=1e-5, stride=(1, 1)):
    """Local form of ``InstanceNorm2d`` (affine or not)."""
    kernel = pair(kernel, 'kernel')
    if covers(kernel, x):
        return F.instance_norm(x, weight=weight, bias=bias, eps=eps)
    return local_group_norm(x, x.shape[1], kernel, weight, bias, eps, stride)
