"""The models the web page offers, and loading them as ``Restorer`` objects.

Sources, in the order listed: option files given with ``-opt`` (their weights must exist: a missing file is a
ConfigError naming it), every checkpoint (``*.pth``, ``*.pt``) under ``--models``, and the option files under
``options/test/`` whose ``path.pretrain_network_g`` exists. A checkpoint is built from its state dict when
``hinet_plugins.archs.detect`` exists (``Restorer.load(checkpoint=...)``); without it, from the option file of the
same name beside it (``X.yml`` next to ``X.pth``); a checkpoint with neither is listed in the notes, not offered.
Paths in option files are read relative to the working directory, then to the repository root.
"""
import os
from collections import namedtuple
from typing import List, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..basicsr_ext import load_yaml
from ..restore import Restorer

CHECKPOINT_EXTS = ('.pth', '.pt')
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

Model = namedtuple('Model', 'label opt checkpoint')  # opt: option file or None (detected from the checkpoint)


def can_detect() -> bool:
    from .. import archs
    return hasattr(archs, 'detect')


def _weights_of(opt_path):
    """The existing weights file of an option file, or None."""
    try:
        opt = load_yaml(opt_path)
    except ConfigError:
        return None
    path = ((opt.get('path') or {}) if isinstance(opt, dict) else {}).get('pretrain_network_g')
    if not isinstance(path, str) or not isinstance(opt.get('network_g'), dict):
        return None
    for candidate in (path, os.path.join(REPO, path)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    return None


def _unique(label, taken):
    name, i = label, 2
    while name in taken:
        name, i = f'{label} ({i})', i + 1
    taken.add(name)
    return name


def find_models(option_files: Sequence[str] = (), models_dir: Optional[str] = None,
                test_options: Optional[str] = os.path.join(REPO, 'options', 'test')) -> Tuple[List[Model], List[str]]:
    """([Model], [note]): what the page offers (see the module doc) and one line per checkpoint left out."""
    found, notes, taken = [], [], set()
    for path in option_files:
        if not os.path.isfile(path):
            raise ConfigError(f"-opt '{path}' does not exist")
        weights = _weights_of(path)
        if weights is None:
            raise ConfigError(f"-opt '{path}': path.pretrain_network_g must name an existing weights file "
                              '(and network_g a network)')
        found.append(Model(_unique(os.path.splitext(os.path.basename(path))[0], taken), os.path.abspath(path),
                           weights))
    if models_dir is not None:
        if not os.path.isdir(models_dir):
            raise ConfigError(f"--models '{models_dir}' is not a folder")
        for root, dirs, files in os.walk(models_dir):
            dirs.sort()
            for name in sorted(files):
                stem, ext = os.path.splitext(name)
                if ext.lower() not in CHECKPOINT_EXTS:
                    continue
                path = os.path.abspath(os.path.join(root, name))
                label = _unique(os.path.relpath(path, models_dir), taken)
                beside = next((os.path.join(root, stem + e) for e in ('.yml', '.yaml')
                               if os.path.isfile(os.path.join(root, stem + e))), None)
                if beside:
                    found.append(Model(label, os.path.abspath(beside), path))
                elif can_detect():
                    found.append(Model(label, None, path))
                else:
                    notes.append(f"{path}: left out (no {stem}.yml beside it, and no architecture detection here)")
    if test_options and os.path.isdir(test_options):
        for name in sorted(os.listdir(test_options)):
            path = os.path.join(test_options, name)
            if name.endswith(('.yml', '.yaml')) and (weights := _weights_of(path)):
                found.append(Model(_unique(os.path.splitext(name)[0], taken), path, weights))
    return found, notes


def load_restorer(model: Model, device: str = 'cpu', tlc: bool = False, train_size: Optional[int] = None,
                  **settings) -> Restorer:
    """``model`` as a ``Restorer`` on ``device`` with ``settings`` (tile, self_ensemble, amp, channel_order, ...).

    ``tlc``: False, or True with the option file's ``val.tlc`` (``train_size`` overrides its training size)."""
    tlc_opt = False
    if tlc:
        tlc_opt = {'train_size': int(train_size)} if train_size else True
    return Restorer.load(opt=model.opt, checkpoint=model.checkpoint, tlc=tlc_opt, device=device, **settings)
