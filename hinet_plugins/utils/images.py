"""Image files as the option checks and data tools see them: extensions, and sizes read from the header only."""
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

IMG_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def pil_channels(im: 'Image.Image') -> int:
    """Channels as basicsr's LMDB writer records them (cv2 IMREAD_UNCHANGED): 1 gray, 2 gray+alpha, 3, 4 +alpha."""
    gray = im.mode in ('1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'F')
    alpha = 'A' in im.mode or 'a' in im.mode or (im.mode == 'P' and 'transparency' in im.info)
    return (1 if gray else 3) + (1 if alpha else 0)


def image_header(path: str) -> tuple:
    """(h, w, channels) from the file header without decoding the pixels (fast even for large folders);
    ConfigError naming the file when it cannot be read."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
            return h, w, pil_channels(im)
    except Exception as err:  # noqa: BLE001  (any decoder error means the same to the user)
        raise ConfigError(f"image '{path}' cannot be read: {err}") from None
