"""hinet-plugins: multi-stage restoration networks, losses and TLC for upstream BasicSR.

Importing this package (1) adapts and hooks basicsr 1.4.2 (``basicsr_ext``: first, it makes ``import basicsr``
work on today's stack), then (2) registers every architecture, loss, dataset and model type of this package into
basicsr's registries.
"""
from . import basicsr_ext  # must stay first: it makes ``import basicsr`` work

basicsr_ext.install()
from . import archs, losses, models  # noqa: F401,E402
from . import tlc  # noqa: F401,E402  (registers HINetLocal, MPRNetLocal, ...)
from .data import sidd_dataset  # noqa: F401,E402  (PairedImageDataset_SIDD)
from .data import dual_pixel, gaussian_denoising, restormer_paired  # noqa: F401,E402  (Restormer's dataset types)

__version__ = '0.1.0'
