"""Launcher: ``python basicsr/test.py -opt options/test/X.yml`` from the repository root.

This folder has no ``__init__.py`` on purpose: ``import basicsr`` keeps resolving to the installed package.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = ROOT  # the repository root instead of this folder, so hinet_plugins imports without installing

from hinet_plugins.basicsr_ext.launch import run  # noqa: E402

if __name__ == '__main__':
    run('test', ROOT)
