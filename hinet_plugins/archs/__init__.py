"""Architectures: importing this package imports every ``*_arch.py`` in it (each registers its network in
basicsr's ARCH_REGISTRY and describes it with ``spec.describe``), so a new network is one new file.

``detect(state_dict)`` -> the ``network_g`` of the registered network whose weights these are (``detection``).
"""
import importlib
import pkgutil

from .spec import ArchSpec, Config, describe, spec_of, specs  # noqa: F401

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.endswith('_arch'):
        importlib.import_module(f'{__name__}.{_info.name}')

from .autodetect import Detection, detect, detection  # noqa: E402,F401
