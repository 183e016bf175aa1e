"""Architectures; importing this package registers them in basicsr's ARCH_REGISTRY."""
from . import hinet_arch  # noqa: F401
from . import mprnet_arch  # noqa: F401
from . import drcnet_arch  # noqa: F401
from . import fcn_arch  # noqa: F401
from . import nafnet_arch  # noqa: F401
from . import restormer_arch  # noqa: F401
