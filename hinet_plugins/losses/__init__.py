"""Losses; importing this package registers them in basicsr's LOSS_REGISTRY."""
from . import psnr_loss  # noqa: F401
