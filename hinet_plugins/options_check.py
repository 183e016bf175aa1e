"""Transitional (issue 28): the old import path of names that moved. ``data/prepare.py``,
``restore/loading.py`` and ``benchmarks/throughput.py`` still import them from here; remove this file once they
import ``hinet_plugins.utils.images`` (``IMG_EXTS``, ``image_header``) and ``hinet_plugins.basicsr_ext``
(``load_yaml``)."""
from .basicsr_ext import load_yaml  # noqa: F401
from .utils.images import IMG_EXTS, image_header  # noqa: F401
