"""Local (sliding-window) forms of global statistics, in O(H*W) for any window (TLC, Chu et al. 2022, Sec. 3.2).

Every operator returns, for each pixel, the statistic of the ``kh x kw`` window around it: computed at the valid
window positions, then padded back to ``H x W`` by replicating its border, centred (``expand_borders``), as in the
paper. A window larger than the map is clamped to it; one covering the whole map gives the exact global operator,
so a local op never differs from the op it replaces on training-size inputs.

Decisions:
- Window sums are separable prefix sums (``box_sum``), window maxima van Herk / Gil-Werman (``_sliding_max_rows``):
  O(H*W) whatever the window. ``benchmarks/tlc_overhead.py`` measures each op's time.
- Variances stay accurate where the release's float32 E[x^2] - E[x]^2 cancels: moments are taken relative to an
  offset, in float32 at least (``local_moments``).
- Fast mode (paper Appendix A) takes the statistics on a strided grid (``fast_stride``), expanded back by nearest
  neighbour; window maxima stay exact. ``benchmarks/tlc_overhead.py`` measures its error against the exact mode.
"""
import torch
from torch.nn import functional as F

# Fast mode: per axis, the first stride of FAST_STRIDES that divides the feature size and does not exceed the layer's
# cap (``max_stride``: 5 x feature size / training size, set at calibration, as in the release), keeping at least
# MIN_FAST_SAMPLES samples per window side, so the sampled variance cannot collapse to 0 (the release can divide by
# sqrt(eps) there).
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


def _box_sum_1d(x, k, dim, out=None, inplace=False):
    """Sums over the ``n - k + 1`` valid windows of length ``k`` along ``dim`` (one prefix sum), written into
    ``out`` when given (any strided view of the right shape). ``inplace``: ``x`` is a scratch tensor whose prefix
    sum may overwrite it (saves an allocation). Two memory passes: the prefix sum, then one subtraction straight
    into the result (its first entry is a copy)."""
    n = x.size(dim)
    c = x.cumsum_(dim) if inplace else x.cumsum(dim)
    m = n - k + 1
    if out is None:
        shape = list(x.shape)
        shape[dim] = m
        out = x.new_empty(shape)
    out.narrow(dim, 0, 1).copy_(c.narrow(dim, k - 1, 1))
    if m > 1:
        torch.sub(c.narrow(dim, k, m - 1), c.narrow(dim, 0, m - 1), out=out.narrow(dim, 1, m - 1))
    return out


def valid_shape(size, kernel):
    """(h', w') of the valid window positions, the window clamped to the map."""
    return size[0] - min(kernel[0], size[0]) + 1, size[1] - min(kernel[1], size[1]) + 1


CHUNK_ELEMENTS = 1 << 18  # planes per step of box_sum: ~1 MB of float32, so the prefix sums stay in cache


def box_sum(x, kernel, out=None):
    """Window sums at the valid positions of the last two axes; ``kernel`` is clamped to the map. Returns
    ``(sums, area)``; ``out`` receives the sums when given.

    Memory traffic is what costs here (a few flops per element), so the (N*C) planes are processed in chunks of
    about ``CHUNK_ELEMENTS``: the prefix sums of a chunk are written and re-read in cache, and the map itself is
    read once from memory. Along W first (the contiguous axis: the cheap prefix sum, and it shrinks the map for
    the other); a window spanning the whole height is a plain sum over H, done first.
    """
    h, w = x.shape[-2:]
    kh, kw = min(kernel[0], h), min(kernel[1], w)
    if out is None:
        out = x.new_empty((*x.shape[:-2], h - kh + 1, w - kw + 1))
    planes, sink = x.reshape(-1, h, w), out.view(-1, *out.shape[-2:])
    for rows in _chunks(planes):
        _box_sum_planes(planes[rows], kh, kw, sink[rows])
    return out, kh * kw


def _chunks(planes):
    """Slices of about CHUNK_ELEMENTS elements over the first axis of (P, H, W) planes."""
    step = max(1, CHUNK_ELEMENTS // (planes.shape[-2] * planes.shape[-1]))
    return [slice(i, i + step) for i in range(0, planes.shape[0], step)]


def _box_sum_planes(chunk, kh, kw, dest, scratch=False):
    """Valid window sums of (P, H, W) planes into ``dest`` (P, h', w'); ``scratch``: ``chunk`` may be overwritten."""
    if kh == chunk.shape[-2]:
        _box_sum_1d(chunk.sum(-2, keepdim=True), kw, 2, out=dest, inplace=True)
    else:
        _box_sum_1d(_box_sum_1d(chunk, kw, 2, inplace=scratch), kh, 1, out=dest, inplace=True)


def full_like_valid(x, valid_hw):
    """An empty full-size tensor like ``x`` and the view of its centred valid region (``expand_borders`` fills
    the rest), so the valid statistics can be written in place instead of padded into a new tensor."""
    h, w = x.shape[-2:]
    top, left = (h - valid_hw[0]) // 2, (w - valid_hw[1]) // 2
    full = torch.empty(x.shape, dtype=_stat_dtype(x), device=x.device)
    return full, full[..., top:top + valid_hw[0], left:left + valid_hw[1]]


def expand_borders(full, valid_hw):
    """Fill the border of ``full`` around its centred valid region by replicating the region's edge (the
    centred replicate padding of the paper: ``(W - w') // 2`` columns on the left, the rest on the right)."""
    (h, w), (vh, vw) = full.shape[-2:], valid_hw
    top, left = (h - vh) // 2, (w - vw) // 2
    bottom, right = top + vh, left + vw
    rows = full[..., top:bottom, :]
    if left:
        rows[..., :left].copy_(rows[..., left:left + 1].expand_as(rows[..., :left]))
    if right < w:
        rows[..., right:].copy_(rows[..., right - 1:right].expand_as(rows[..., right:]))
    if top:
        full[..., :top, :].copy_(full[..., top:top + 1, :].expand_as(full[..., :top, :]))
    if bottom < h:
        full[..., bottom:, :].copy_(full[..., bottom - 1:bottom, :].expand_as(full[..., bottom:, :]))
    return full


def expand(valid, size, stride=(1, 1)):
    """Valid-position map (sampled with ``stride``) -> full ``size``: nearest upsampling, centred replicate pad."""
    if stride == (1, 1):
        if tuple(valid.shape[-2:]) == tuple(size):
            return valid
        full = valid.new_empty((*valid.shape[:-2], *size))
        h, w = valid.shape[-2:]
        top, left = (size[0] - h) // 2, (size[1] - w) // 2
        full[..., top:top + h, left:left + w] = valid
        return expand_borders(full, (h, w))
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
    if stride != (1, 1):
        xs, k = _sample(x.to(_stat_dtype(x)), kernel, stride)
        sums, area = box_sum(xs, k)
        return expand(sums.div_(area), x.shape[-2:], stride).to(x.dtype)
    hw = valid_shape(x.shape[-2:], kernel)
    full, valid = full_like_valid(x, hw)
    _, area = box_sum(x.to(full.dtype), kernel, out=valid)
    valid.mul_(1.0 / area)
    return expand_borders(full, hw).to(x.dtype)


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

    Returns ``mean, var`` of shape (N, G, h', w') in float32 (or the input's dtype if wider). Precision (our choice;
    the release forms E[x^2] - E[x]^2 on raw float32 features): a per-(sample, group) offset, the mean of a coarse
    grid of the map, is subtracted before forming x and x^2, and prefix sums run along one axis at a time. What
    remains is float32 cancellation when a window's variance is tiny next to its squared distance from the offset.
    """
    n, c = x.shape[:2]
    xs, k = _sample(x, kernel, stride)
    xs = xs.to(_stat_dtype(x)).reshape(n, num_groups, c // num_groups, *xs.shape[-2:])
    coarse = x[..., ::8, ::8] if min(x.shape[-2:]) > 64 else x
    offset = coarse.to(xs.dtype).reshape(n, num_groups, -1).mean(-1)[..., None, None, None]
    kh, kw = min(k[0], xs.shape[-2]), min(k[1], xs.shape[-1])
    area = kh * kw * (c // num_groups)
    if c // num_groups == 1:  # instance norm: x - offset and its square per cache-sized chunk, never full size
        planes, off = xs.reshape(-1, *xs.shape[-2:]), offset.reshape(-1, 1, 1)
        s1 = xs.new_empty((n, num_groups, xs.shape[-2] - kh + 1, xs.shape[-1] - kw + 1))
        s2 = torch.empty_like(s1)
        sink1, sink2 = s1.view(-1, *s1.shape[-2:]), s2.view(-1, *s2.shape[-2:])
        for rows in _chunks(planes):
            d = planes[rows] - off[rows]
            _box_sum_planes(d, kh, kw, sink1[rows])
            _box_sum_planes(d.mul_(d), kh, kw, sink2[rows], scratch=True)
    else:
        d = xs - offset
        s1, s2 = d.sum(2), d.mul_(d).sum(2)
        s1, _ = box_sum(s1, k)
        s2, _ = box_sum(s2, k)
    mean = s1.div_(area)
    var = s2.div_(area).addcmul_(mean, mean, value=-1).clamp_(min=0)
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
        if stride == (1, 1):  # written straight into full-size maps whose borders are then replicated
            hw = rstd.shape[-2:]
            scale, scale_valid = full_like_valid(x, hw)
            shift, shift_valid = full_like_valid(x, hw)
            torch.mul(rstd, 1 if weight is None else weight.to(rstd.dtype)[:, None, None], out=scale_valid)
            torch.mul(mean, scale_valid, out=shift_valid).neg_()
            if bias is not None:
                shift_valid.add_(bias.to(rstd.dtype)[:, None, None])
            scale, shift = expand_borders(scale, hw), expand_borders(shift, hw)
        else:
            scale = rstd if weight is None else rstd * weight.to(rstd.dtype)[:, None, None]
            shift = -mean * scale
            if bias is not None:
                shift += bias.to(rstd.dtype)[:, None, None]
            scale, shift = expand(scale, (h, w), stride), expand(shift, (h, w), stride)
        return torch.addcmul(shift, x.to(scale.dtype), scale, out=shift).to(x.dtype)
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
