"""TLC, the Test-time Local Converter (Chu et al., "Improving Image Restoration by Revisiting Global Information
Aggregation", ECCV 2022).

- ``local_ops``: local (sliding-window) mean / max / instance norm / group norm in O(H*W) with integral images;
  ``local_attention``: transposed self-attention on overlapping windows (Restormer's MDTA).
- ``global_ops``: spots the global operations without a local form during the calibration pass (reported).
- ``converter``: ``convert(model, train_size, base_size=None, fast_imp=False)`` swaps a model's global
  aggregations for local ones (any nn.Module tree) and calibrates their windows; ``converted(...)`` is the same,
  used as a context manager that restores the original modules.
- ``local_archs``: ``HINetLocal``, ``MPRNetLocal``, ... in ARCH_REGISTRY (build the registered base arch by name,
  then convert), so option files of the TLC release run unchanged.

TLC knows no architecture: it sees modules only. Validation/test use it through ``val.tlc`` (see
``hinet_plugins.models.restoration_model``).
"""
from . import local_archs  # noqa: F401  (registers the *Local arch names)
from .converter import (LocalAvgPool2d, LocalGroupNorm, LocalInstanceNorm2d, LocalMaxPool2d, LocalOp,  # noqa: F401
                        LocalTransposedAttention, TLCConversion, convert, converted)

__all__ = ['convert', 'converted', 'TLCConversion', 'LocalOp', 'LocalAvgPool2d', 'LocalMaxPool2d',
           'LocalInstanceNorm2d', 'LocalGroupNorm', 'LocalTransposedAttention']
