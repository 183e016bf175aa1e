"""What a user would pick instead of training a network: the classical denoisers the demo compares against.

- **Non-local means** (OpenCV's ``cv2.fastNlMeansDenoisingColored``, 7x7 patches, 21x21 search window). Its filter
  strength ``h`` (and ``hColor``, set equal to it) is tuned for the noise level by :func:`tune_nlm` on
  *training* photos degraded with the same sigma, never on the held-out ones, so the NLM column is what a user
  gets without peeking at the ground truth (an oracle choice per held-out photo would be ~0.1-0.3 dB higher).
- **BM3D** (the ``bm3d`` package of the package index, Makinen/Azzari/Foi's reference implementation,
  ``bm3d_rgb`` with its default profile) given the true sigma (25/255): the "known sigma" setting, the strongest
  classical baseline. Reading chosen: sigma is passed as is, although the demo's inputs are rounded and clipped to
  uint8 after adding the noise (a real user's photos are too), so its actual noise is slightly below sigma.

Both work on uint8 BGR arrays (the demo's cv2 images) and return uint8 BGR. BM3D costs about 30-45 s per
384-pixel photo on this 2-core CPU, so :func:`baseline_outputs` caches its results next to the dataset (keyed by
the photo's noisy pixels, sigma and the bm3d version); NLM takes a fraction of a second and is never cached.
"""
import hashlib
import json
import os
from typing import Callable, Dict, Iterable, Sequence, Tuple

import cv2
import numpy as np
from basicsr.metrics import calculate_psnr

from .data import _max_side, degrade, load_photo

NLM_GRID = tuple(range(8, 27, 2))
NLM_TUNING_PHOTOS = ('rocket', 'camera')  # from data.TRAIN_PHOTOS: tuning never sees a held-out photo


def nlm_denoise(noisy_bgr: np.ndarray, h: float) -> np.ndarray:
    """OpenCV's colour non-local means with luminance and colour strength ``h`` (7x7 patches, 21x21 search)."""
    return cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(noisy_bgr), None, float(h), float(h), 7, 21)


def tune_nlm(sigma: float, photos: Sequence[str] = NLM_TUNING_PHOTOS, grid: Sequence[int] = NLM_GRID,
             max_side: int = 384, seed: int = 77) -> int:
    """The ``h`` of :data:`NLM_GRID` with the best mean PSNR on ``photos`` degraded with ``sigma`` (0..255 scale)."""
    scores = {h: 0.0 for h in grid}
    for i, name in enumerate(photos):
        clean = cv2.cvtColor(_max_side(load_photo(name), max_side), cv2.COLOR_RGB2BGR)
        noisy = degrade(clean, sigma, seed=seed + i)
        for h in grid:
            scores[h] += calculate_psnr(nlm_denoise(noisy, h), clean, 0) / len(photos)
    return max(grid, key=lambda h: scores[h])


def bm3d_denoise(noisy_bgr: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D (``bm3d.bm3d_rgb``, default profile) with the known noise std ``sigma`` on the 0..255 scale."""
    import bm3d  # a dependency of hinet-plugins (setup.py); imported here because it loads scipy and PyWavelets

    rgb = cv2.cvtColor(noisy_bgr, cv2.COLOR_BGR2RGB).astype(np.float64) / 255.0
    out = bm3d.bm3d_rgb(rgb, sigma / 255.0)
    out = np.clip(np.round(np.asarray(out) * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_RGB2BGR)


def _bm3d_version():
    from importlib.metadata import version
    return version('bm3d')


def cached_bm3d(noisy_bgr: np.ndarray, sigma: float, cache_dir: str, name: str) -> Tuple[np.ndarray, bool]:
    """:func:`bm3d_denoise`, reusing ``cache_dir/<name>.png`` when it was made from the same input and settings."""
    key = hashlib.sha256(noisy_bgr.tobytes() + repr((noisy_bgr.shape, float(sigma), _bm3d_version())).encode())
    key = key.hexdigest()
    png, marker = os.path.join(cache_dir, f'{name}.png'), os.path.join(cache_dir, f'{name}.json')
    if os.path.isfile(png) and os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f).get('key') == key:
                cached = cv2.imread(png, cv2.IMREAD_COLOR)
                if cached is not None and cached.shape == noisy_bgr.shape:
                    return cached, True
    out = bm3d_denoise(noisy_bgr, sigma)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = os.path.join(cache_dir, f'.{name}.tmp.png')
    cv2.imwrite(tmp, out)
    os.replace(tmp, png)
    with open(marker, 'w') as f:
        json.dump({'key': key, 'sigma': float(sigma), 'bm3d': _bm3d_version()}, f)
    return out, False


def baseline_outputs(pairs: Iterable[Tuple[str, np.ndarray, np.ndarray]], sigma: float, cache_dir: str,
                     log: Callable[[str], None] = print) -> Tuple[Dict[str, Dict[str, np.ndarray]], int]:
    """``pairs``: list of (name, gt_bgr, lq_bgr). Returns ``({'NLM': {name: img}, 'BM3D': {...}}, nlm_h)``."""
    h = tune_nlm(sigma)
    log(f'[demo] non-local means: h = hColor = {h} (tuned for sigma {sigma:g} on training photos)')
    outs = {'NLM': {}, 'BM3D': {}}
    for name, _, lq in pairs:
        outs['NLM'][name] = nlm_denoise(lq, h)
        outs['BM3D'][name], hit = cached_bm3d(lq, sigma, cache_dir, name)
        log(f'[demo] BM3D {name}: ' + ('reused from ' + cache_dir if hit else 'computed'))
    return outs, h
