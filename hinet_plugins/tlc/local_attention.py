"""Windowed form of transposed self-attention (Restormer's MDTA), for TLC (Chu et al. 2022, Sec. 3.3).

The layout of the windows is the TLC release's; how the overlapping outputs are combined is ours (same values,
the output computed once): see ``local_transposed_attention``.
"""
import torch
from torch.nn import functional as F

from .local_ops import _stat_dtype, pair


def window_starts(size, k):
    """Start offsets of the overlapping windows of length ``k`` (<= size) along one axis, as the TLC release lays
    them out: ``n = ceil(size / k)`` windows, a stride of ``ceil((size - k) / (n - 1))``, the last window flush with
    the border (no padding). One window when ``k >= size``."""
    if k >= size:
        return [0]
    n = -(-size // k)
    step = -(-(size - k) // (n - 1))
    starts = []
    s = 0
    while s + k < size:
        starts.append(s)
        s += step
    starts.append(size - k)
    return starts


def _cover_intervals(starts, k, size):
    """Split ``[0, size)`` into intervals covered by the same windows: [(a, b, [window indices])]."""
    cuts = sorted({0, size, *starts, *(s + k for s in starts)} & set(range(size + 1)))
    return [(a, b, [i for i, s in enumerate(starts) if s <= a and b <= s + k]) for a, b in zip(cuts, cuts[1:])]


def local_transposed_attention(q, k, v, temperature, kernel, stride=(1, 1)):
    """Local form of ``TransposedAttention`` (TLC paper Sec. 3.3: attention applied to each overlapping window
    independently, outputs averaged where windows overlap). Callers use the global attention when one window
    covers the map (``LocalTransposedAttention`` does), so training-size inputs give exactly the global result.

    q, k, v: (N, heads, C_h, H, W), already computed on the full map. Each window ``w`` of ``window_starts`` gets
    its own C_h x C_h attention ``A_w`` from its q, k. The release averages the window outputs ``A_w v(p)`` over the
    windows covering a pixel ``p``; since that is linear in ``v(p)``, it equals ``mean_w(A_w) v(p)``. So we average
    the (tiny) attention matrices per region of pixels covered by the same windows and apply each average once:
    the output costs one C_h x C_h product per pixel, as the global attention, instead of one per covering window.
    Any batch size (the release asserts batch 1).

    Fast mode (``stride`` > 1): each window's correlations q k^T and the L2 norms are taken on the strided grid
    of its positions ``[::r, ::r]`` (the sampled-statistics idea of paper Appendix A applied to the window's
    statistics); the attention is still applied to every pixel. Saves (1 - 1/r^2) of the q k^T products.
    """
    kernel = pair(kernel, 'kernel')
    h, w = q.shape[-2:]
    kh, kw = min(kernel[0], h), min(kernel[1], w)
    ys, xs = window_starts(h, kh), window_starts(w, kw)
    rh, rw = stride
    def window(t, y, x):
        return t[..., y:y + kh:rh, x:x + kw:rw].flatten(-2)

    mats = [[_attention_matrix(window(q, y, x), window(k, y, x), temperature) for x in xs] for y in ys]
    out = torch.empty(v.shape, dtype=mats[0][0].dtype, device=v.device)
    cols = _cover_intervals(xs, kw, w)
    for y0, y1, wy in _cover_intervals(ys, kh, h):
        for x0, x1, wx in cols:
            avg = sum(mats[i][j] for i in wy for j in wx) / (len(wy) * len(wx))
            part = v[..., y0:y1, x0:x1]
            out[..., y0:y1, x0:x1] = (avg @ part.flatten(-2).to(avg.dtype)).view(part.shape)
    return out.to(v.dtype)


def _attention_matrix(q, k, temperature):
    """softmax(normalize(q) normalize(k)^T * temperature) over the last axis, (N, heads, C_h, C_h), in fp32 at
    least (the softmax of a half-precision correlation loses the small weights)."""
    dt = _stat_dtype(q)
    q, k = F.normalize(q.to(dt), dim=-1), F.normalize(k.to(dt), dim=-1)
    return (q @ k.transpose(-2, -1) * temperature.to(dt)).softmax(dim=-1)
