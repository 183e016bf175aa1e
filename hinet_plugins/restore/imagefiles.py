"""Image files in and out of ``Restorer`` as the user's viewer shows them, never written over an input; shared by
``scripts/inference.py`` and the web page.

Reading: cv2 ``IMREAD_UNCHANGED`` (8/16-bit, float TIFF, alpha kept), then the EXIF orientation is applied, so
the restored file (written without EXIF) shows the way the input shows. Gray + alpha files, which cv2 expands to
4 channels, come back as H x W x 2 (``restore_image`` restores the gray part as for plain gray). Writing goes
through a temporary file in the target folder and a rename; gray + alpha is written with PIL (8-bit) or as a
16-bit gray + alpha PNG by ``_png_gray_alpha_16`` (neither cv2 nor PIL writes that).
"""
import os
import struct
import tempfile
import zlib
from typing import Optional, Union

import cv2
import numpy as np

IMG_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
EXIF_ORIENTATION = 0x0112
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _opened(source):
    """A path, or the file's bytes, for PIL."""
    import io
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source


def _orientation(path):
    from PIL import Image
    try:
        with Image.open(_opened(path)) as im:
            return int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001  (no EXIF, or a format PIL cannot open: cv2 decoded it, keep it as is)
        return 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """The array as shown by a viewer that honours EXIF ``orientation`` (1..8; PIL's ``exif_transpose``)."""
    if orientation == 2:
        return img[:, ::-1]
    if orientation == 3:
        return img[::-1, ::-1]
    if orientation == 4:
        return img[::-1]
    if orientation == 5:
        return img.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(img, -1)
    if orientation == 7:
        return img.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(img, 1)
    return img


def _is_gray_alpha(path):
    """True for a gray + alpha PNG (IHDR colour type 4) or another file PIL reads as 'LA'."""
    try:
        if isinstance(path, (bytes, bytearray)):
            head = bytes(path[:26])
        else:
            with open(path, 'rb') as f:
                head = f.read(26)
        if head[:8] == PNG_SIGNATURE:
            return head[25] == 4
        from PIL import Image
        with Image.open(_opened(path)) as im:
            return im.mode in ('LA', 'La')
    except Exception:  # noqa: BLE001
        return False


def read_image(path: str) -> Optional[np.ndarray]:
    """H x W (gray), H x W x 2 (gray + alpha), H x W x 3 (BGR) or H x W x 4 (BGRA) in the file's dtype, turned
    upright by its EXIF orientation; None when cv2 cannot decode the file."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    return _as_shown(img, path)


def decode_image(data: Optional[Union[bytes, bytearray, memoryview]]) -> Optional[np.ndarray]:
    """``read_image`` for the bytes of a file (an upload); None when they are not an image cv2 can read."""
    if not data:
        return None
    return _as_shown(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), bytes(data))


def _as_shown(img, path):
    if img is None:
        return None
    if img.ndim == 3 and img.shape[2] == 4 and _is_gray_alpha(path):
        img = img[..., [0, 3]]
    return np.ascontiguousarray(apply_orientation(img, _orientation(path)))


def _png_chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)


def _png_gray_alpha_16(img):
    """A 16-bit gray + alpha PNG file's bytes (colour type 4, filter 0 on every row)."""
    h, w = img.shape[:2]
    rows = np.ascontiguousarray(img.astype('>u2')).reshape(h, w * 2).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    header = struct.pack('>IIBBBBB', w, h, 16, 4, 0, 0, 0)
    return PNG_SIGNATURE + _png_chunk(b'IHDR', header) + _png_chunk(b'IDAT', zlib.compress(raw, 6)) + \
        _png_chunk(b'IEND', b'')


def encode_image(img: np.ndarray, ext: str) -> bytes:
    """``img`` (as ``read_image`` returns) encoded in the format of ``ext`` ('.png', ...); ValueError if it cannot."""
    if img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        if img.dtype == np.uint16 and ext == '.png':
            return _png_gray_alpha_16(img)
        if img.dtype != np.uint8:
            raise ValueError(f'a {img.dtype} gray + alpha image can only be written as PNG (16-bit) or 8-bit')
        import io
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img), 'LA').save(buf, format=Image.registered_extensions().get(ext, 'PNG'))
        return buf.getvalue()
    try:
        ok, buf = cv2.imencode(ext, img)
    except cv2.error as err:
        raise ValueError(f'cannot encode a {img.dtype} image of shape {img.shape} as {ext}: {err}') from None
    if not ok:
        raise ValueError(f'cannot encode a {img.dtype} image of shape {img.shape} as {ext}')
    return buf.tobytes()


def write_image(path: str, img: np.ndarray) -> None:
    """Write ``img`` (as ``read_image`` returns) to ``path`` atomically; the format comes from the extension."""
    data = encode_image(img, os.path.splitext(path)[1].lower() or '.png')
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
