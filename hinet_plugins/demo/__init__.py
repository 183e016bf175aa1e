"""The demo (``scripts/demo.py``): HINet trained through BasicSR to denoise scikit-image's photographs, beside the
classical denoisers.

``data`` builds the paired dataset from the bundled photographs (also used by the tests and benchmarks),
``baselines`` the non-local means and BM3D columns, ``report`` the scores, tables and side-by-side picture, and
``run`` the flow (data, training through ``basicsr/train.py``, restoration with and without TLC, report).
"""
