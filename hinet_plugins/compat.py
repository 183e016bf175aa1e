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
   iteration; a file that is not a training state is a one-line ConfigError naming it (upstream: an unpickling
   traceback). Drop when upstream maps with ``map_location`` from the options.
3. ``basicsr.utils.dist_util.init_dist`` always uses nccl and ``torch.cuda.set_device(rank % device_count())``
   (ZeroDivisionError without a GPU); ``options.py`` holds its own reference, so both names are replaced.
   Ours: nccl when CUDA is present, gloo otherwise (``BASICSR_DIST_BACKEND`` overrides), ``LOCAL_RANK`` for the
   device, and the ``spawn`` start method only on CUDA (on CPU it makes every DataLoader worker re-import torch).
4. ``--force_yml key=value`` (``options.py:58-79`` ``_postprocess_yml_value``) leaves negative numbers and
   scientific notation as strings (``train:warmup_iter=-1`` -> ``'-1'`` -> TypeError later). Ours parses the value
   as a YAML scalar when upstream would return a string. Drop when upstream parses numbers fully.
5. ``distutils`` is gone from the standard library on Python >= 3.12 but ``basicsr/archs/arch_util.py:6``
   imports ``distutils.version.LooseVersion``: we provide it from setuptools' copy or a tiny stand-in.

Not here (they are features or launcher behaviour of this package, not adaptations): the exact mid-epoch resume
(``hinet_plugins/resume.py``), the launcher hooks (``hinet_plugins/launch.py``: option checks, ``--local-rank``)
and the CPU-safe DDP wrapping (``MultiStageRestorationModel.model_to_device``).
"""
import os
import sys
import types
import warnings

import torch

from .errors import ConfigError


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


def cuda_present():
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def dist_backend():
    """nccl on CUDA, gloo on CPU; ``BASICSR_DIST_BACKEND`` wins when set."""
    return os.environ.get('BASICSR_DIST_BACKEND') or ('nccl' if cuda_present() else 'gloo')


def resume_state_path(opt):
    """The state file a run resumes from, as upstream finds it: with ``--auto_resume`` the newest
    ``experiments/<name>/training_states/<iter>.state`` relative to the working directory, else
    ``path.resume_state``; None when there is none."""
    if opt.get('auto_resume'):
        state_dir = os.path.join('experiments', opt['name'], 'training_states')
        if os.path.isdir(state_dir):
            iters = [int(f[:-len('.state')]) for f in os.listdir(state_dir)
                     if f.endswith('.state') and f[:-len('.state')].isdigit()]
            if iters:
                return os.path.join(state_dir, f'{max(iters)}.state')
        return None
    return (opt.get('path') or {}).get('resume_state') or None


def load_resume_state(opt):
    """Upstream's ``load_resume_state`` (same lookup, ``resume_state_path``), CPU-safe."""
    path = resume_state_path(opt)
    if not path:
        return None
    if opt.get('auto_resume'):
        opt['path']['resume_state'] = path
    if not os.path.isfile(path):
        raise ConfigError(f"path.resume_state: '{path}' does not exist")
    if opt.get('num_gpu', 0) and cuda_present():
        device_id = torch.cuda.current_device()
        location = lambda storage, loc: storage.cuda(device_id)  # noqa: E731
    else:
        location = 'cpu'
    state = read_training_state(path, location)
    _bsr_train.check_resume(opt, state['iter'])
    return state


TRAINING_STATE_KEYS = ('epoch', 'iter', 'optimizers', 'schedulers')


def read_training_state(path, map_location='cpu'):
    """A basicsr training state (``experiments/<name>/training_states/<iter>.state``), or ConfigError naming the
    file when it is not one (not a pickle, truncated, another kind of file)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001  (unpickling raises many types; all mean "not a state file")
        raise ConfigError(f"path.resume_state: '{path}' is not a training state ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else 'unreadable'})") from None
    missing = [k for k in TRAINING_STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        found = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"path.resume_state: '{path}' is not a training state (no {missing}; it holds {found}); "
                          'training states are the .state files under experiments/<name>/training_states')
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


_upstream_yml_value = _bsr_options._postprocess_yml_value


def postprocess_yml_value(value):
    parsed = _upstream_yml_value(value)
    if isinstance(parsed, str):
        import yaml
        try:
            scalar = yaml.safe_load(value)
        except yaml.YAMLError:
            return parsed
        if isinstance(scalar, (int, float)) and not isinstance(scalar, bool):
            return scalar
        try:
            return float(value)  # '1e-4': YAML 1.1 wants a dot in floats
        except ValueError:
            return parsed
    return parsed


if not getattr(basicsr, '_hinet_plugins_patched', False):
    _bsr_options._postprocess_yml_value = postprocess_yml_value
    _bsr_train.load_resume_state = load_resume_state  # looked up as a module global by train_pipeline
    _bsr_dist.init_dist = _bsr_options.init_dist = init_dist
    basicsr._hinet_plugins_patched = True

__all__ = ['cuda_present', 'dist_backend', 'load_resume_state', 'resume_state_path', 'init_dist', 'read_training_state',
           '_bsr_train', '_bsr_test', '_bsr_options']
