"""A local web page to restore images with any model of the package (``python scripts/webui.py``).

- ``models``: the models offered (option files with weights, checkpoints under a folder) -> ``Restorer``;
- ``jobs``: uploads checked, decoded, restored, written in their own format, previews and PSNR/SSIM (no gradio);
- ``page``: the gradio page over them (gradio is an optional extra: ``pip install -e '.[webui]'``, Python >= 3.10).
"""
from .jobs import MAX_PIXELS, UploadError, read_upload, restore_file  # noqa: F401
from .models import Model, find_models, load_restorer  # noqa: F401
from .page import RestorePage, parse_tile  # noqa: F401
