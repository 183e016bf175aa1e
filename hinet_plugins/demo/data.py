"""A small paired dataset from the photographs that ship inside scikit-image (no download).

Clean photos are degraded synthetically (Gaussian noise of a fixed seed, optionally a mild Gaussian blur first)
and written as image folders and/or LMDB with basicsr's own LMDB writer, in the layout BasicSR's
``PairedImageDataset`` reads. Used by the demo (``hinet_plugins.demo.run``) and by the tests.
"""
import os
import shutil
from typing import Iterable, Iterator, List, Sequence, Tuple

import cv2
import numpy as np
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

# Photographs of skimage.data (all bundled with the package). Validation photos are kept out of training.
TRAIN_PHOTOS = ('rocket', 'stereo_motorcycle', 'immunohistochemistry', 'retina', 'hubble_deep_field', 'camera',
                'brick', 'grass', 'gravel', 'moon', 'coins', 'page')
VAL_PHOTOS = ('astronaut', 'chelsea', 'coffee')


def load_photo(name: str) -> np.ndarray:
    """RGB uint8 HxWx3 photograph from skimage.data (grayscale ones are replicated to 3 channels)."""
    from skimage import data
    img = getattr(data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
        img = img[0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def degrade(img: np.ndarray, sigma: float = 25.0, blur_sigma: float = 0.0, seed: int = 0) -> np.ndarray:
    """Noise of std ``sigma`` (on the 0..255 scale) after an optional Gaussian blur; uint8 in, uint8 out."""
    rng = np.random.default_rng(seed)
    x = img.astype(np.float32)
    if blur_sigma > 0:
        x = cv2.GaussianBlur(x, (0, 0), blur_sigma)
    x = x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _max_side(img, max_side):
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return img
    return cv2.resize(img, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_AREA)


def crops(img: np.ndarray, size: int, stride: int) -> Iterator[Tuple[int, int, np.ndarray]]:
    h, w = img.shape[:2]
    for y in range(0, max(h - size, 0) + 1, stride):
        for x in range(0, max(w - size, 0) + 1, stride):
            yield y, x, img[y:y + size, x:x + size]


def write_pairs(pairs: Iterable[Tuple[str, np.ndarray, np.ndarray]], folder: str,
                subs: Sequence[str] = ('gt', 'lq')) -> List[str]:
    """pairs: iterable of (key, gt_rgb, lq_rgb). Writes ``folder/gt/<key>.png`` and ``folder/lq/<key>.png`` (only
    the folders named in ``subs``)."""
    keys = []
    for sub in subs:
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for key, gt, lq in pairs:
        for sub, img in (('gt', gt), ('lq', lq)):
            if sub in subs:
                cv2.imwrite(os.path.join(folder, sub, f'{key}.png'), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        keys.append(key)
    return keys


def folder_to_lmdb(folder: str, lmdb_path: str) -> None:
    """PNG folder -> LMDB with basicsr's writer (keys = file names without extension)."""
    if os.path.exists(lmdb_path):
        shutil.rmtree(lmdb_path)
    names = sorted(f for f in os.listdir(folder) if f.endswith('.png'))
    keys = [os.path.splitext(f)[0] for f in names]
    total = sum(os.path.getsize(os.path.join(folder, f)) for f in names)
    make_lmdb_from_imgs(folder, lmdb_path, names, keys, batch=1000, compress_level=1,
                        multiprocessing_read=False, map_size=max(total * 20, 1 << 24))


def make_demo_dataset(root: str, patch: int = 96, stride: int = 64, max_side: int = 512, sigma: float = 25.0,
                      blur_sigma: float = 0.0, train_photos: Sequence[str] = TRAIN_PHOTOS,
                      val_photos: Sequence[str] = VAL_PHOTOS, val_max_side: int = 384, lmdb: bool = True,
                      train_lq: bool = True) -> dict:
    """Build ``root/{train,val}/{gt,lq}`` PNG folders (+ ``*_gt.lmdb`` / ``*_lq.lmdb`` when ``lmdb``).

    Training pairs are ``patch``-sized crops (``stride`` apart) of the training photos resized to ``max_side``
    (``train_lq=False``: the clean crops only, for a dataset that adds the noise itself); validation pairs are
    whole photos resized to ``val_max_side``. Returns a dict of paths and counts.
    """
    def train_pairs():
        for i, name in enumerate(train_photos):
            clean = _max_side(load_photo(name), max_side)
            noisy = degrade(clean, sigma, blur_sigma, seed=1000 + i)
            for y, x, gt in crops(clean, patch, stride):
                yield f'{name}_{y:04d}_{x:04d}', gt, noisy[y:y + patch, x:x + patch]

    def val_pairs():
        for i, name in enumerate(val_photos):
            clean = _max_side(load_photo(name), val_max_side)
            h, w = clean.shape[:2]
            clean = clean[:h - h % 8, :w - w % 8]
            yield name, clean, degrade(clean, sigma, blur_sigma, seed=i)

    info = {'root': root}
    for split, pairs in (('train', train_pairs()), ('val', val_pairs())):
        folder = os.path.join(root, split)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        subs = ('gt', 'lq') if split == 'val' or train_lq else ('gt',)
        info[f'{split}_count'] = len(write_pairs(pairs, folder, subs))
        for sub in subs:
            info[f'{split}_{sub}'] = os.path.join(folder, sub)
        if lmdb:
            for sub in subs:
                path = os.path.join(root, f'{split}_{sub}.lmdb')
                folder_to_lmdb(os.path.join(folder, sub), path)
                info[f'{split}_{sub}_lmdb'] = path
    return info
