"""Image files in and out, as cv2 reads them (``IMREAD_UNCHANGED``: BGR(A), gray, 8/16-bit, float): shared by
``scripts/inference.py`` and the web page, so both keep 16-bit depth and alpha the same way.

Writes are atomic (encoded in memory, written to a hidden temporary file next to the target, then renamed): an
interrupted run never leaves a truncated image under the final name.
"""
import os
import tempfile

import cv2
import numpy as np

IMG_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def read_image(path):
    """The image array of ``path`` (BGR(A) / gray, its own depth) or None when it is not a readable image."""
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


def decode_image(data):
    """The image array encoded in ``data`` (bytes) or None when the bytes are not an image cv2 can read."""
    if not data:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def encode_image(img, ext):
    """``img`` encoded in the format of the extension ``ext`` ('.png', ...); ValueError when it cannot be."""
    try:
        ok, buf = cv2.imencode(ext, img)
    except cv2.error as err:
        raise ValueError(f'cannot encode a {img.dtype} image of shape {img.shape} as {ext}: {err}') from None
    if not ok:
        raise ValueError(f'cannot encode a {img.dtype} image of shape {img.shape} as {ext}')
    return buf.tobytes()


def write_image(path, img):
    """Write ``img`` to ``path`` (format from its extension) atomically; ValueError when it cannot be encoded."""
    data = encode_image(img, os.path.splitext(path)[1].lower())
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path), suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
