"""Architectures; importing this package registers them in basicsr's ARCH_REGISTRY."""
from . import hinet_arch  # noqa: F401
