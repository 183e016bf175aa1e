"""Overlapping-tile forward for images larger than a patch (validation ``grids`` and ``scripts/inference.py``)."""
import math
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch


def tile_origins(length: int, tile: int, stride: int) -> List[int]:
    """Tile (or crop) origins every ``stride`` pixels covering [0, length), the last one flush with the border."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    starts = [i * stride for i in range(n - 1)] + [length - tile]
    return sorted(set(starts))


def _blend_window(tile_h, tile_w, overlap, device, dtype):
    """Weights that fall off linearly inside the overlap band, so seams blend instead of showing an edge."""
    def ramp(n):
        w = torch.ones(n, device=device, dtype=dtype)
        if overlap > 0:
            k = min(overlap, n // 2)
            r = torch.arange(1, k + 1, device=device, dtype=dtype) / (k + 1)
            w[:k] = r
            w[n - k:] = r.flip(0)
        return w
    return ramp(tile_h)[:, None] * ramp(tile_w)[None, :]


def tile_boxes(h: int, w: int, tile: int, overlap: int) -> Tuple[int, int, List[Tuple[int, int]]]:
    """(tile height, tile width, [(y, x) origins]) of the crops ``tiled_forward`` runs on an h x w image."""
    th, tw = min(tile, h), min(tile, w)
    stride_h, stride_w = max(th - overlap, 1), max(tw - overlap, 1)
    return th, tw, [(y, x) for y in tile_origins(h, th, stride_h) for x in tile_origins(w, tw, stride_w)]


def tiled_forward(fn: Callable[[torch.Tensor], Union[torch.Tensor, Sequence[torch.Tensor]]], img: torch.Tensor,
                  tile: int, overlap: int = 32, batch: int = 8, blend: bool = True,
                  on_batch: Optional[Callable[[int], Any]] = None) -> torch.Tensor:
    """Apply ``fn`` (N,C,h,w -> N,C,h,w) to overlapping ``tile``x``tile`` crops of ``img`` and merge them.

    ``fn`` may return a list of stage outputs; the last is used. Crops are run ``batch`` at a time. With
    ``blend=False`` overlapping predictions are averaged uniformly (what HINet's release ``grids`` does).
    ``on_batch(k)`` is called after each batch of ``k`` crops (progress bars).
    """
    if overlap >= tile:
        raise ValueError(f'tile overlap ({overlap}) must be smaller than the tile size ({tile})')
    n, c, h, w = img.shape
    th, tw, boxes = tile_boxes(h, w, tile, overlap)
    out = None
    weight = torch.zeros(1, 1, h, w, device=img.device, dtype=torch.float32)
    win = (_blend_window(th, tw, overlap, img.device, torch.float32) if blend
           else torch.ones(th, tw, device=img.device))
    for i in range(0, len(boxes), batch):
        chunk = boxes[i:i + batch]
        crops = torch.cat([img[:, :, y:y + th, x:x + tw] for y, x in chunk], dim=0)
        pred = fn(crops)
        if isinstance(pred, (list, tuple)):
            pred = pred[-1]
        pred = pred.float()
        if out is None:
            out = torch.zeros(n, pred.shape[1], h, w, device=img.device, dtype=torch.float32)
        for j, (y, x) in enumerate(chunk):
            out[:, :, y:y + th, x:x + tw] += pred[j * n:(j + 1) * n] * win
            weight[:, :, y:y + th, x:x + tw] += win
        if on_batch is not None:
            on_batch(len(chunk))
    return out.div_(weight).to(img.dtype)
