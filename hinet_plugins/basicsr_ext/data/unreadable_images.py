"""A training or validation image whose header reads but whose pixels do not stops the run with the file's path.

A PNG cut short keeps a valid header, so the option checks (``options_check``, headers only: decoding every image
up front would cost a full pass over the data) accept it. basicsr's ``imfrombytes`` then returns ``cv2.imdecode``'s
None and ``PairedImageDataset.__getitem__`` fails mid-training with "AttributeError: 'NoneType' object has no
attribute 'astype'", naming no file. ``install()`` wraps ``__getitem__`` of basicsr's ``PairedImageDataset``: when it
fails, the sample's GT and LQ files are decoded again and the one that does not decode is named in a ConfigError
(the launcher prints it as one line, exit code 2; the checkpoints already written are kept; from a DataLoader
worker the error arrives wrapped and ``errors.one_line`` unwraps it). ``PairedImageDataset_SIDD`` reads through
``decode`` directly. Drop when basicsr names the file itself.
"""
import cv2
import numpy as np
from basicsr.data.paired_image_dataset import PairedImageDataset

from ...errors import ConfigError


def _where(dataset):
    return f"datasets.{dataset.opt.get('phase', '?')} ({dataset.opt.get('name', '?')})"


def undecodable_error(dataset, path):
    return ConfigError(f"{_where(dataset)}: image '{path}' cannot be decoded (cut short or corrupted); replace or "
                       'remove the pair, then resume with --auto_resume')


def decode(dataset, path: str, client_key: str, flag: int = cv2.IMREAD_COLOR, peak: float = 255.0) -> np.ndarray:
    """The image at ``path`` as basicsr reads it (HWC, BGR, float32 in [0, 1]), or ConfigError naming the file.
    ``flag``: OpenCV's read mode (grayscale -> HxWx1); ``peak``: the value read as 1 (65535 for 16-bit files)."""
    content = dataset.file_client.get(path, client_key)
    img = cv2.imdecode(np.frombuffer(content, np.uint8), flag)
    if img is None:
        raise undecodable_error(dataset, path)
    if img.ndim == 2:
        img = img[..., None]
    return img.astype(np.float32) / peak


def _naming_the_file(getitem):
    def __getitem__(self, index):
        try:
            return getitem(self, index)
        except (AttributeError, cv2.error):
            if self.file_client is None:
                raise
            paths = self.paths[index % len(self.paths)]
            for key in ('gt', 'lq'):
                decode(self, paths[f'{key}_path'], key)  # raises for the file that does not decode
            raise
    __getitem__.upstream = getitem
    return __getitem__


def install() -> None:
    """Idempotent; ``basicsr_ext.install`` calls it."""
    if not hasattr(PairedImageDataset.__getitem__, 'upstream'):
        PairedImageDataset.__getitem__ = _naming_the_file(PairedImageDataset.__getitem__)
