"""Restore image arrays and tensors with a loaded network: tiling, x8 self-ensemble, amp.

``restore_image`` takes and returns gray, gray + alpha, RGB (or BGR) and RGBA arrays of uint8, uint16 or float
(details: ``Restorer``); ``restore_tensor`` works on N x C x H x W tensors; ``Restorer`` holds a net and settings.

Decisions:
- ``tile``: overlapping crops merged with linear blending weights (``utils.tiling.tiled_forward``); instance-
  normalised nets see per-tile statistics, so tiles are close to, not equal to, the whole-image result.
  ``Restorer(tile='auto')`` picks per image the whole image or the largest tile that fits ``memory_budget``
  (``autotile``), and on an out-of-memory error retries with half the tile.
- ``self_ensemble``: the x8 geometric ensemble (4 rotations x horizontal flip), mapped back and averaged
  (arithmetic mean, as in the HINet/MPRNet-era test scripts).
- ``amp``: 'bf16' (CPU or GPU) or 'fp16' (GPU only) autocast of the forward; outputs are cast back to float32
  before the ensemble average and the clamp. Anything else (or fp16 without a GPU) is a ConfigError.
"""
import sys
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..errors import ConfigError
from ..utils.amp import amp_dtype, autocast  # noqa: F401  (amp_dtype: part of this module's API)
from ..utils.nets import input_channels, last_output  # noqa: F401  (last_output: part of this module's API)
from ..utils.tiling import tile_boxes, tiled_forward
from . import autotile
from .loading import load_network

SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def check_tile(tile: Optional[Union[int, str]], overlap: int, names: Sequence[str] = ('tile', 'tile overlap'),
               allow_auto: bool = False) -> None:
    """``tile`` None (whole image), a positive size (or 'auto' if ``allow_auto``); ``overlap`` in 0..tile - 1."""
    if tile is None:
        return
    if allow_auto and tile == 'auto':
        if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0:
            raise ConfigError(f'{names[1]} must be a non-negative number of pixels, got {overlap!r}')
        return
    if not isinstance(tile, int) or isinstance(tile, bool) or tile <= 0:
        raise ConfigError(f'{names[0]}: the tile size must be positive, got {tile!r}'
                          + (" (or 'auto')" if allow_auto else ''))
    if not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise ConfigError(f'{names[1]} must be in 0..{tile - 1} (smaller than the tile size), got {overlap!r}')


def ensemble_transforms() -> List[Tuple[Callable[[torch.Tensor], torch.Tensor],
                                        Callable[[torch.Tensor], torch.Tensor]]]:
    """(forward, inverse) pairs of the 8 dihedral transforms of the image plane (identity first)."""
    def make(k, flip):
        def fwd(t):
            return torch.rot90(t.flip(-1) if flip else t, k, (-2, -1))

        def inv(t):
            t = torch.rot90(t, -k, (-2, -1))
            return t.flip(-1) if flip else t
        return fwd, inv
    return [make(k, flip) for k in range(4) for flip in (False, True)]


def restore_tensor(net: nn.Module, x: torch.Tensor, tile: Optional[int] = None, overlap: int = 32,
                   self_ensemble: bool = False, amp: Optional[torch.dtype] = None, batch: int = 8,
                   progress: bool = False) -> torch.Tensor:
    """N x C x H x W in [0, 1] -> the last stage's output (float32), tiled and/or x8 self-ensembled.

    ``amp`` is a torch dtype (see ``amp_dtype``) or None; ``batch`` crops run at once; ``progress`` shows a tqdm
    bar over the crops when the image is cut into several."""
    check_tile(tile, overlap)
    crops = len(tile_boxes(x.shape[-2], x.shape[-1], tile, overlap)[2]) if tile else 1
    bar = tqdm(total=crops * (8 if self_ensemble else 1), unit='tile', desc=f'tiles {tile}x{tile}', leave=False,
               file=sys.stderr) if progress and crops > 1 else None

    def forward(t):
        with autocast(t.device.type, amp):
            out = (tiled_forward(net, t, tile, overlap=overlap, batch=batch, on_batch=bar and bar.update) if tile
                   else last_output(net(t)))
        return out.float()

    try:
        with torch.no_grad():
            if not self_ensemble:
                return forward(x)
            total = None
            for fwd, inv in ensemble_transforms():
                y = inv(forward(fwd(x)))
                total = y if total is None else total.add_(y)
                del y
            return total.div_(8)
    finally:
        if bar is not None:
            bar.close()


def _pixel_scale(img):
    if img.dtype in SCALES:
        return SCALES[img.dtype]
    if img.dtype.kind == 'f':
        return 1.0
    raise ValueError(f'unsupported pixel type {img.dtype} (uint8, uint16 or float)')


def restore_image(net: nn.Module, img: np.ndarray, device: Union[str, torch.device] = 'cpu',
                  channel_order: str = 'rgb', **kw) -> np.ndarray:
    """Restore an image array (see the module doc); ``kw``: tile, overlap, self_ensemble, amp (a dtype)."""
    if channel_order not in ('rgb', 'bgr'):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    img = np.asarray(img)
    scale = _pixel_scale(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (2, 3, 4)):
        raise ValueError(f'expected an H x W, H x W x 2, H x W x 3 or H x W x 4 image, got shape {img.shape}')
    if img.dtype.kind == 'f' and not np.isfinite(img).all():
        bad = int(img.size - np.isfinite(img).sum())
        raise ValueError(f'{bad} pixel value(s) are NaN or infinite; replace them (e.g. with 0) before restoring')
    alpha = img[..., -1] if img.ndim == 3 and img.shape[2] in (2, 4) else None
    gray = img.ndim == 2 or img.shape[2] == 2
    plain = img[..., 0] if gray and img.ndim == 3 else img
    color = np.repeat(plain[..., None], 3, axis=2) if gray else img[..., :3]
    if channel_order == 'bgr':
        color = color[..., ::-1]
    rgb = torch.from_numpy(np.ascontiguousarray(color.transpose(2, 0, 1)).astype(np.float32) / scale)
    n_in = input_channels(net)
    if n_in == 3:
        x = rgb[None]
    elif n_in == 1:  # a grayscale net: gray as it is, colour channel by channel
        x = rgb[:1, None] if gray else rgb[:, None]
    else:
        raise ValueError(f'the network takes {n_in} input channels; only 1 or 3 are supported here')
    y = restore_tensor(net, x.to(device), **kw)
    if not torch.isfinite(y).all():
        raise ValueError('the network produced NaN or infinite values (is the input in range? try without amp)')
    y = y.clamp_(0, 1).cpu()
    y = y[0] if n_in == 3 else y[:, 0]
    if gray:
        out = y.mean(0).numpy()
    else:
        out = y.numpy().transpose(1, 2, 0)
        if channel_order == 'bgr':
            out = out[..., ::-1]
    out = np.round(out * scale).astype(img.dtype) if scale > 1 else out.astype(img.dtype)
    if alpha is not None:
        out = np.concatenate([out.reshape(*out.shape[:2], -1), alpha[..., None]], axis=2)
    return np.ascontiguousarray(out)


class Restorer:
    """A loaded network with its restoring settings; ``restorer(image)`` restores an array (``restore_image``).

    Images: H x W (gray), H x W x 2 (gray + alpha), H x W x 3 (RGB, or BGR with ``channel_order='bgr'`` as cv2 reads
    it) or H x W x 4 (the same + alpha), uint8, uint16 or float (taken as [0, 1]; NaN or infinite values are refused
    with a ValueError); the result has the same shape and dtype. Gray is restored as replicated RGB by a 3-channel
    net and returned as the mean of the restored channels; a 1-channel net restores gray as it is and colour
    channel by channel; alpha is passed through untouched. Integer outputs are ``round(clamp(y, 0, 1) * max)``
    (basicsr's ``tensor2img`` for uint8).

    ``tile='auto'``: see ``autotile`` (``memory_budget``, bytes once parsed and free to change between images,
    overrides the free memory); ``last_plan`` then holds the last image's {'tile', 'budget', 'estimate',
    'retries'}. ``progress``: a tqdm bar over the tiles.

    >>> r = Restorer.load(opt='options/test/HINet-SIDD.yml', tile='auto', amp='bf16')   # doctest: +SKIP
    >>> clean = r(noisy_rgb_uint8)                                                      # doctest: +SKIP
    """

    def __init__(self, net: nn.Module, device: Union[str, torch.device] = 'cpu', tile: Optional[Union[int, str]] = None,
                 overlap: int = 32, self_ensemble: bool = False, amp: Optional[Union[str, bool]] = None,
                 channel_order: str = 'rgb', description: Optional[str] = None,
                 memory_budget: Optional[Union[int, float, str]] = None, progress: bool = True) -> None:
        self.net, self.device = net, torch.device(device)
        self.amp = amp_dtype(amp, self.device)
        check_tile(tile, overlap, allow_auto=True)
        self.memory_budget = autotile.parse_budget(memory_budget)
        self.tile, self.overlap, self.self_ensemble = tile, overlap, self_ensemble
        self.channel_order, self.progress = channel_order, progress
        self.description = description or type(net).__name__
        self.last_plan, self._costs = None, {}

    @classmethod
    def load(cls, opt: Optional[Union[str, dict]] = None, arch: Optional[str] = None, arch_opt: Optional[dict] = None,
             checkpoint: Optional[str] = None, param_key: Optional[str] = None,
             tlc: Optional[Union[bool, Mapping[str, Any]]] = None, device: Union[str, torch.device] = 'cpu',
             **settings) -> 'Restorer':
        """Build + load (``loading.load_network``), then wrap with ``settings`` (tile, overlap, self_ensemble,
        amp, channel_order, memory_budget, progress)."""
        if 'amp' in settings:  # bad settings fail before the network is built
            amp_dtype(settings['amp'], device)
        check_tile(settings.get('tile'), settings.get('overlap', 32), allow_auto=True)
        autotile.parse_budget(settings.get('memory_budget'))
        net, desc = load_network(opt, arch, arch_opt, checkpoint, param_key, tlc, device)
        return cls(net, device, description=desc, **settings)

    def plan(self, h: int, w: int, batch: int = 1) -> Optional[int]:
        """The tile for ``batch`` h x w images: the fixed one, or with 'auto' the whole image (None) or a side."""
        if self.tile != 'auto':
            return self.tile
        key = (input_channels(self.net), batch)
        if key not in self._costs:
            self._costs[key] = autotile.measure_forward(self.net, self.device, key[0], self.amp, batch)
        budget = self.memory_budget or autotile.available_memory(self.device)
        tile, estimate = autotile.plan_tile(h, w, self._costs[key], budget, self.overlap, self.self_ensemble)
        self.last_plan = {'tile': tile, 'budget': budget, 'estimate': estimate, 'retries': []}
        return tile

    def _run(self, h, w, batch, call):
        """``call(tile, crops_at_once)`` with the planned tile; with 'auto', out of memory -> half the tile."""
        tile = self.plan(h, w, batch)
        while True:
            try:
                return call(tile, 1 if self.tile == 'auto' else 8)
            except torch.OutOfMemoryError:
                smaller = autotile.halve_tile(tile, h, w, self.overlap) if self.tile == 'auto' else None
                if smaller is None:
                    raise
            # out of the except block: the failed attempt's frames (and their tensors) are released
            if self.device.type == 'cuda':
                torch.cuda.empty_cache()
            tried = f'tile {tile}' if tile else 'the whole image'
            message = (f'{self.device.type.upper()} out of memory with {tried} ({w}x{h}); '
                       f'retrying with tile {smaller}')
            tqdm.write(f'hinet_plugins: {message}', file=sys.stderr)
            self.last_plan['retries'].append(message)
            self.last_plan['tile'] = tile = smaller

    def restore_tensor(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return self._run(x.shape[-2], x.shape[-1], x.shape[0], lambda tile, batch: restore_tensor(
            self.net, x, tile, self.overlap, self.self_ensemble, self.amp, batch, self.progress))

    def __call__(self, img: np.ndarray) -> np.ndarray:
        img = np.asarray(img)
        colour = img.ndim == 3 and img.shape[2] > 1
        batch = 3 if colour and self.tile == 'auto' and input_channels(self.net) == 1 else 1
        return self._run(img.shape[0], img.shape[1], batch, lambda tile, crops: restore_image(
            self.net, img, self.device, self.channel_order, tile=tile, overlap=self.overlap,
            self_ensemble=self.self_ensemble, amp=self.amp, batch=crops, progress=self.progress))
