"""What the web page does with uploaded files, without gradio: check and decode them, restore them with a
``Restorer``, write the restored files (the input's format, 16-bit and alpha kept) and the 8-bit previews, and
PSNR/SSIM against a ground truth (basicsr's ``calculate_psnr`` / ``calculate_ssim`` on the colour channels,
16-bit scaled to 0..255). Every problem with one file is an ``UploadError`` whose message is one line.

A ground truth belongs to the image with the same file name stem (``a_gt.png`` or ``a.png`` for ``a.png``), or,
with one image and one ground truth, to that image.
"""
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..restore import IMG_EXTS, decode_image, write_image

MAX_PIXELS = 64 * 10**6  # larger uploads are refused (64 megapixels)


class UploadError(ValueError):
    """One uploaded file cannot be used; the message names it and says why on one line."""


def header_size(path: str) -> Optional[Tuple[int, int]]:
    """(width, height) read from the file header without decoding the pixels, or None when PIL cannot tell."""
    try:
        from PIL import Image
        Image.MAX_IMAGE_PIXELS = None  # the caller decides what is too large
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001  (not an image PIL knows: cv2 decides below)
        return None


def read_upload(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image array of an uploaded file (as cv2 reads it: BGR(A) or gray, 8/16-bit, float); UploadError when the
    file is empty, not an image or larger than ``max_pixels``."""
    name = os.path.basename(path)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise UploadError(f'{name}: the file is empty')
    size = header_size(path)
    if size and size[0] * size[1] > max_pixels:
        raise UploadError(f'{name}: {size[0]}x{size[1]} is too large (at most {max_pixels / 1e6:g} megapixels)')
    with open(path, 'rb') as f:
        img = decode_image(f.read())
    if img is None:
        raise UploadError(f'{name}: not an image ({", ".join(IMG_EXTS)})')
    if img.shape[0] * img.shape[1] > max_pixels:
        raise UploadError(f'{name}: {img.shape[1]}x{img.shape[0]} is too large '
                          f'(at most {max_pixels / 1e6:g} megapixels)')
    if img.ndim == 3 and img.shape[2] not in (1, 3, 4):
        raise UploadError(f'{name}: {img.shape[2]} channels (expected gray, RGB or RGBA)')
    return img


def preview(img: np.ndarray) -> np.ndarray:
    """An 8-bit copy of a cv2 image for the page, channel order kept (16-bit shifted, float scaled from [0, 1])."""
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if img.dtype.kind == 'f':
        return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return img


def _colour_255(img):
    img = img[..., :3] if img.ndim == 3 else img
    scale = 255.0 / (65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0)
    return img.astype(np.float64) * scale


def metrics(restored: np.ndarray, gt: np.ndarray, name: str = 'ground truth') -> Tuple[float, float]:
    """(PSNR, SSIM) of ``restored`` against ``gt`` (cv2 arrays of the same size)."""
    from basicsr.metrics import calculate_psnr, calculate_ssim
    if gt.shape[:2] != restored.shape[:2]:
        raise UploadError(f'{name}: {gt.shape[1]}x{gt.shape[0]}, but the image is '
                          f'{restored.shape[1]}x{restored.shape[0]}')
    a, b = _colour_255(restored), _colour_255(gt)
    if a.ndim != b.ndim:  # gray against colour: compare the gray mean
        a, b = (x.mean(axis=2) if x.ndim == 3 else x for x in (a, b))
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    return calculate_psnr(a, b, 0), calculate_ssim(a, b, 0)


def pair_ground_truths(images: Sequence[str], truths: Sequence[str]) -> Dict[str, str]:
    """{image path: ground-truth path} (see the module doc)."""
    def stem(p):
        s = os.path.splitext(os.path.basename(p))[0]
        return s[:-3] if s.endswith('_gt') else s
    by_stem = {stem(t): t for t in truths}
    pairs = {i: by_stem[stem(i)] for i in images if stem(i) in by_stem}
    if not pairs and len(images) == 1 and len(truths) == 1:
        pairs = {images[0]: truths[0]}
    return pairs


def output_name(path: str) -> str:
    """``a.png`` -> ``a_restored.png``; a name cv2 cannot write (no or odd extension) -> ``..._restored.png``."""
    stem, ext = os.path.splitext(os.path.basename(path))
    return f'{stem}_restored{ext.lower() if ext.lower() in IMG_EXTS else ".png"}'


def restore_file(restorer: Callable[[np.ndarray], np.ndarray], path: str, out_dir: str, gt_path: Optional[str] = None,
                 max_pixels: int = MAX_PIXELS) -> dict:
    """Restore one upload into ``out_dir``: {'name', 'input', 'restored' (preview PNGs), 'file' (the download),
    'psnr', 'ssim' (None without a usable ground truth), 'note' (why the ground truth was not used, or None)}.
    UploadError for a bad image file; model errors are the caller's."""
    img = read_upload(path, max_pixels)
    out = restorer(img)
    name = output_name(path)
    target = os.path.join(out_dir, name)
    try:
        write_image(target, out)
    except ValueError as err:
        raise UploadError(f'{os.path.basename(path)}: {err}') from None
    stem = os.path.splitext(name)[0]
    shown = {}
    for key, arr in (('input', img), ('restored', out)):
        shown[key] = os.path.join(out_dir, f'.{stem}.{key}.png')
        write_image(shown[key], preview(arr))
    psnr = ssim = note = None
    if gt_path:
        try:
            psnr, ssim = metrics(out, read_upload(gt_path, max_pixels), os.path.basename(gt_path))
        except UploadError as err:
            note = f'{err} (no PSNR/SSIM for {os.path.basename(path)})'
    return {'name': os.path.basename(path), 'file': target, 'psnr': psnr, 'ssim': ssim, 'note': note, **shown}
