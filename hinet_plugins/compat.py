"""The one place where upstream basicsr 1.4.2 is adapted to today's stack.

basicsr is used as installed from the package index; nothing in site-packages is edited. Each patch below
says what breaks upstream, since when, and how to drop it. This module must be imported before anything
imports ``basicsr`` (``hinet_plugins/__init__.py`` does so first).

Patches:

1. ``torchvision.transforms.functional_tensor`` (removed in torchvision 0.17) is imported by
   ``basicsr/data/degradations.py:8``, which ``import basicsr`` reaches. We alias the one name basicsr uses,
   ``rgb_to_grayscale``. Drop when basicsr > 1.4.2 is on the index with the fixed import.
2. ``basicsr.train.load_resume_state`` maps the resume state to ``torch.cuda.current_device()``, which fails on a
   CPU-only machine. Ours maps to CPU when ``num_gpu == 0`` or no CUDA is present, and picks the newest state by
   iteration. Drop when upstream maps with ``map_location`` from the options.
3. ``basicsr.utils.dist_util.init_dist`` always uses nccl and ``torch.cuda.set_device(rank % device_count())``
   (ZeroDivisionError without a GPU); ``options.py`` holds its own reference, so both names are replaced.
   Ours: nccl when CUDA is present, gloo otherwise (``BASICSR_DIST_BACKEND`` overrides), ``LOCAL_RANK`` for the
   device, and the ``spawn`` start method only on CUDA (on CPU it makes every DataLoader worker re-import torch).
4. ``BaseModel.model_to_device`` passes CUDA ``device_ids`` to DistributedDataParallel even for a CPU model.
   Ours omits them on CPU.
5. ``distutils`` is gone from the standard library on Python >= 3.12 but ``basicsr/archs/arch_util.py:6``
   imports ``distutils.version.LooseVersion``: we provide it from setuptools' copy or a tiny stand-in.
"""
import os
import sys
import types
import warnings

import torch


def _alias_functional_tensor():
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (torchvision < 0.17)
        return
    except ImportError:
        pass
    from torchvision.transforms import functional as tv_functional
    shim = types.ModuleType('torchvision.transforms.functional_tensor')
    shim.rgb_to_grayscale = tv_functional.rgb_to_grayscale
    sys.modules[shim.__name__] = shim


def _provide_distutils_version():
    try:
        from distutils.version import LooseVersion  # noqa: F401
        return
    except ImportError:
        pass
    from packaging.version import Version

    class LooseVersion:  # the only use upstream is a ``>=`` comparison of torch versions
        def __init__(self, v):
            self.v = Version(str(v).split('+')[0])

        def __ge__(self, other):
            return self.v >= LooseVersion(other).v if not isinstance(other, LooseVersion) else self.v >= other.v

        def __lt__(self, other):
            return not self.__ge__(other)

    pkg = sys.modules.get('distutils') or types.ModuleType('distutils')
    mod = types.ModuleType('distutils.version')
    mod.LooseVersion = LooseVersion
    pkg.version = mod
    sys.modules['distutils'] = pkg
    sys.modules['distutils.version'] = mod


_alias_functional_tensor()
_provide_distutils_version()
warnings.filterwarnings('ignore', category=DeprecationWarning, module=r'basicsr\..*')

import basicsr  # noqa: E402
import basicsr.test as _bsr_test  # noqa: E402
import basicsr.train as _bsr_train  # noqa: E402
import basicsr.utils.dist_util as _bsr_dist  # noqa: E402
import basicsr.utils.options as _bsr_options  # noqa: E402
from basicsr.models.base_model import BaseModel  # noqa: E402
from torch.nn.parallel import DataParallel, DistributedDataParallel  # noqa: E402


def cuda_present():
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def dist_backend():
    """nccl on CUDA, gloo on CPU; ``BASICSR_DIST_BACKEND`` wins when set."""
    return os.environ.get('BASICSR_DIST_BACKEND') or ('nccl' if cuda_present() else 'gloo')


def load_resume_state(opt):
    """Upstream's lookup (``experiments/<name>/training_states`` relative to the working directory), CPU-safe."""
    path = None
    if opt['auto_resume']:
        state_dir = os.path.join('experiments', opt['name'], 'training_states')
        if os.path.isdir(state_dir):
            iters = [int(f[:-len('.state')]) for f in os.listdir(state_dir)
                     if f.endswith('.state') and f[:-len('.state')].isdigit()]
            if iters:
                path = os.path.join(state_dir, f'{max(iters)}.state')
                opt['path']['resume_state'] = path
    else:
        path = opt['path'].get('resume_state')
    if not path:
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path.resume_state: no such file '{path}'")
    if opt.get('num_gpu', 0) and cuda_present():
        device_id = torch.cuda.current_device()
        location = lambda storage, loc: storage.cuda(device_id)  # noqa: E731
    else:
        location = 'cpu'
    state = torch.load(path, map_location=location, weights_only=False)
    _bsr_train.check_resume(opt, state['iter'])
    return state


_upstream_init_dist = _bsr_dist.init_dist


def init_dist(launcher, backend=None, **kwargs):
    if launcher != 'pytorch':
        return _upstream_init_dist(launcher, backend=backend or dist_backend(), **kwargs)
    import torch.distributed as dist
    import torch.multiprocessing as mp
    if cuda_present():
        if mp.get_start_method(allow_none=True) is None:
            mp.set_start_method('spawn')
        local_rank = int(os.environ.get('LOCAL_RANK', os.environ.get('RANK', 0)))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend or dist_backend(), **kwargs)


def model_to_device(self, net):
    net = net.to(self.device)
    if self.opt['dist']:
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(
            net, device_ids=device_ids, find_unused_parameters=self.opt.get('find_unused_parameters', False))
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


if not getattr(basicsr, '_hinet_plugins_patched', False):
    _bsr_train.load_resume_state = load_resume_state  # looked up as a module global by train_pipeline
    _bsr_dist.init_dist = _bsr_options.init_dist = init_dist
    BaseModel.model_to_device = model_to_device
    basicsr._hinet_plugins_patched = True

__all__ = ['cuda_present', 'dist_backend', 'load_resume_state', 'init_dist', 'model_to_device',
           '_bsr_train', '_bsr_test', '_bsr_options']
