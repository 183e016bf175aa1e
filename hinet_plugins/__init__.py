"""hinet-plugins: multi-stage restoration networks, losses and TLC for upstream BasicSR.

Importing this package (1) adapts basicsr 1.4.2 to today's stack (``compat``, first), (2) installs the exact
mid-epoch resume (``resume``), then (3) registers every architecture, loss, dataset and model type of this package
into basicsr's registries.
"""
from . import compat  # noqa: F401  (must stay first: it makes ``import basicsr`` work)
from . import resume  # noqa: F401,E402
from . import archs, losses, models  # noqa: F401,E402
from . import tlc  # noqa: F401,E402  (registers HINetLocal, MPRNetLocal, ...)
from .data import sidd_dataset, unreadable_images  # noqa: F401,E402  (PairedImageDataset_SIDD; named decode errors)
from .data import dual_pixel, gaussian_denoising, restormer_paired  # noqa: F401,E402  (Restormer's dataset types)

__version__ = '0.1.0'
