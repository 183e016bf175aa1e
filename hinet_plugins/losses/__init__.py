"""Losses; importing this package registers them in basicsr's LOSS_REGISTRY."""
from . import psnr_loss  # noqa: F401
from . import mprnet_loss  # noqa: F401
from . import contrastive_loss  # noqa: F401
from . import stage_ratio_loss  # noqa: F401
