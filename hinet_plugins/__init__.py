"""hinet-plugins: multi-stage restoration networks, losses and TLC for upstream BasicSR.

Importing this package (1) adapts basicsr 1.4.2 to today's stack (``compat``, first), then (2) registers every
architecture, loss and model type of this package into basicsr's registries.
"""
from . import compat  # noqa: F401  (must stay first: it makes ``import basicsr`` work)
from . import archs, losses, models  # noqa: F401,E402
from . import tlc  # noqa: F401,E402  (registers HINetLocal, MPRNetLocal, ...)

__version__ = '0.1.0'
