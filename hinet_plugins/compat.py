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
5. ``--force_yml key=value`` (``options.py:58-79`` ``_postprocess_yml_value``) leaves negative numbers and
   scientific notation as strings (``train:warmup_iter=-1`` -> ``'-1'`` -> TypeError later). Ours parses the value
   as a YAML scalar when upstream would return a string. Drop when upstream parses numbers fully.
6. ``distutils`` is gone from the standard library on Python >= 3.12 but ``basicsr/archs/arch_util.py:6``
   imports ``distutils.version.LooseVersion``: we provide it from setuptools' copy or a tiny stand-in.
7. On resume, ``train_pipeline`` restarts the interrupted epoch from its first batch (the samples already trained
   in that epoch are seen twice, and after several resumes the run can even end before ``total_iter``), and the
   seeds are re-applied, so the data after a resume differ from an uninterrupted run. Ours skips the batches
   already trained in the interrupted epoch (the sampler's order is a function of the epoch) and, when the state
   holds them (``MultiStageRestorationModel`` saves them), restores each rank's python/numpy/torch random states
   at that point. With ``num_worker_per_gpu: 0`` the resumed losses then equal the uninterrupted run's; with
   workers the sample order is the same but the workers' augmentation draws restart (they are reseeded every
   epoch by basicsr's ``worker_init_fn``). Drop when upstream resumes mid-epoch.
"""
import os
import sys
import types
import warnings

import torch

from .utils.checkpoint import set_rng_states


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
from basicsr.data.data_sampler import EnlargedSampler  # noqa: E402
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
    _PENDING_RESUME['state'] = state  # read by create_train_val_dataloader (patch 7)
    return state


_PENDING_RESUME = {}
_upstream_create_loaders = _bsr_train.create_train_val_dataloader


def create_train_val_dataloader(opt, logger):
    """Upstream's loaders; after a resume, the train sampler continues the interrupted epoch (patch 7)."""
    result = _upstream_create_loaders(opt, logger)
    state = _PENDING_RESUME.pop('state', None)
    loader, sampler = result[0], result[1]
    if state is None or loader is None or not isinstance(sampler, EnlargedSampler):
        return result
    per_epoch = len(loader)
    done = state['iter'] - state['epoch'] * per_epoch
    rng = state.get('rng') or []
    plan = {'epoch': state['epoch'], 'skip': 0, 'rng': rng[opt['rank']] if len(rng) == opt['world_size'] else None}
    if 0 <= done <= per_epoch:
        plan['skip'] = done * loader.batch_size
        logger.info(f"Resume inside epoch {state['epoch']}: skipping its {done} batch(es) already trained"
                    + ('' if plan['rng'] else ' (the state holds no random states: augmentations will differ)'))
    else:
        logger.warning(f"Resume: iteration {state['iter']} is not inside epoch {state['epoch']} at {per_epoch} "
                       'batches per epoch (batch size or dataset changed?); that epoch restarts from its start')
    sampler.resume_plan = plan
    return result


_upstream_sampler_iter = EnlargedSampler.__iter__


def _sampler_iter(self):
    plan = self.__dict__.pop('resume_plan', None)
    indices = _upstream_sampler_iter(self)
    if plan is None or plan['epoch'] != self.epoch:
        return indices
    if plan['rng'] is not None:  # here, after the DataLoader iterator drew its base seed, as in the original run
        set_rng_states(plan['rng'])
    return iter(list(indices)[plan['skip']:])


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
    _bsr_train.create_train_val_dataloader = create_train_val_dataloader  # likewise
    EnlargedSampler.__iter__ = _sampler_iter
    _bsr_dist.init_dist = _bsr_options.init_dist = init_dist
    BaseModel.model_to_device = model_to_device
    basicsr._hinet_plugins_patched = True

__all__ = ['cuda_present', 'dist_backend', 'load_resume_state', 'init_dist', 'model_to_device',
           '_bsr_train', '_bsr_test', '_bsr_options']
