"""Everything that adapts or hooks upstream basicsr 1.4.2; a basicsr upgrade touches this folder only.

Importing it applies the import shims ``import basicsr`` needs on today's stack (``compat``, first: import this
package before anything imports basicsr); ``install()`` then puts every hook in place (``hinet_plugins`` calls
it once): ``compat`` (resume states, process groups, wandb, DDP on the CPU), ``resume`` (exact resume, one rank
decides), ``data.unreadable_images`` (the undecodable file named) and ``launch`` (our safe ``parse_options``,
followed by ``options_check`` and ``preflight``, so a rejected command changes nothing on disk). ``vgg`` builds
basicsr's VGG from a local file without the download.

The rest of the package uses only this surface (plus ``hinet_plugins.errors``):
``install()``; ``load_yaml(path)`` (an option file read safely, ConfigError naming it); ``decode_image(dataset,
path, key)`` (an image as basicsr reads it, or ConfigError naming the file); ``build_vgg_extractor`` and
``vgg_weights_problem`` (the contrastive losses' VGG19). The launchers import ``basicsr_ext.launch.run``.
"""
from . import compat  # noqa: F401  (first: the import shims basicsr needs)
from .data.unreadable_images import decode as decode_image
from .run_options import load_yaml
from .vgg import build_vgg_extractor, vgg_weights_problem

__all__ = ['install', 'load_yaml', 'decode_image', 'build_vgg_extractor', 'vgg_weights_problem']


def install() -> None:
    """Put every hook into basicsr (idempotent): the order matters, ``resume`` wraps ``compat``'s functions."""
    from . import launch, resume
    from .data import unreadable_images
    compat.install()
    resume.install()
    unreadable_images.install()
    launch.install()
