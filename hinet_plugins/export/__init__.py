"""Deployment export: ONNX graphs with dynamic batch, height and width (``scripts/export.py``).

- ``onnx_export``: ``export_onnx(net, path)`` traces, checks with onnxruntime against PyTorch, names the module
  that cannot be exported; ``registered_archs()`` lists this package's architectures.
- ``tlc_forms``: graph forms of TLC's local layers (same values, exportable).
"""
from .locate import locate_problem  # noqa: F401
from .onnx_export import LastStage, export_onnx, registered_archs  # noqa: F401
from .trace import ATOL, OPSET, run_onnx  # noqa: F401
from .tlc_forms import graph_forms  # noqa: F401

__all__ = ['export_onnx', 'registered_archs', 'run_onnx', 'locate_problem', 'LastStage', 'graph_forms', 'OPSET',
           'ATOL']
