"""Transitional (issue 28): moved to ``hinet_plugins/basicsr_ext/data/unreadable_images.py``. ``sidd_dataset``
still imports ``decode`` from here; remove this file once it imports ``basicsr_ext.decode_image``."""
from ..basicsr_ext import decode_image as decode  # noqa: F401
