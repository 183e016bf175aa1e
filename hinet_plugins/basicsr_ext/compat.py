"""basicsr 1.4.2 adapted to today's stack (torchvision, Python 3.12, wandb, CPU-only and slurm nodes).

basicsr is used as installed from the package index; nothing in site-packages is edited. Importing this module
applies the two import shims that ``import basicsr`` needs (so it must be imported before anything imports
basicsr: ``hinet_plugins.basicsr_ext`` does so first); ``install()`` then replaces three upstream functions and
one method. Each patch's docstring says what breaks upstream and when to drop it:

- ``_alias_functional_tensor``, ``_provide_distutils_version``: import shims;
- ``load_resume_state``: CPU-safe, code-free training states, looked up in the run's own folder;
- ``init_dist``: gloo without a GPU, ``LOCAL_RANK`` for the device, slurm's variables;
- ``init_wandb_logger``: today's wandb, files under the run folder;
- ``model_to_device`` (``BaseModel``'s): DDP wrapping that also works on the CPU.
"""
import collections
import io
import os
import sys
import types
import warnings
from typing import Optional

import torch

from ..errors import ConfigError, first_line


def _alias_functional_tensor():
    """``torchvision.transforms.functional_tensor`` (removed in torchvision 0.17) is imported by
    ``basicsr/data/degradations.py:8``, which ``import basicsr`` reaches: the one name basicsr uses,
    ``rgb_to_grayscale``, is aliased. Drop when a basicsr > 1.4.2 with the fixed import is on the index."""
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
    """``distutils`` is gone from the standard library on Python >= 3.12, but ``basicsr/archs/arch_util.py:6``
    imports ``distutils.version.LooseVersion``: setuptools' copy, or a tiny stand-in. Drop with the same release."""
    try:
        import distutils.version  # noqa: F401  (setuptools' copy, with LooseVersion)
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
import basicsr.models.base_model as _bsr_base_model  # noqa: E402
import basicsr.test as _bsr_test  # noqa: E402,F401  (launch.py uses it)
import basicsr.train as _bsr_train  # noqa: E402
import basicsr.utils.dist_util as _bsr_dist  # noqa: E402
import basicsr.utils.options as _bsr_options  # noqa: E402


def cuda_present():
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def dist_backend():
    """nccl on CUDA, gloo on CPU; ``BASICSR_DIST_BACKEND`` wins when set."""
    return os.environ.get('BASICSR_DIST_BACKEND') or ('nccl' if cuda_present() else 'gloo')


def resume_state_path(opt: dict) -> Optional[str]:
    """The state file a run resumes from: with ``--auto_resume`` the newest ``<iter>.state`` in the run's
    ``training_states`` folder under its root (upstream looks in ``experiments/`` of the current folder), else
    ``path.resume_state``; None when there is none."""
    if opt.get('auto_resume'):
        state_dir = opt['path'].get('training_states') or os.path.join('experiments', opt['name'], 'training_states')
        if os.path.isdir(state_dir):
            iters = [int(f[:-len('.state')]) for f in os.listdir(state_dir)
                     if f.endswith('.state') and f[:-len('.state')].isdigit()]
            if iters:
                return os.path.join(state_dir, f'{max(iters)}.state')
        return None
    return (opt.get('path') or {}).get('resume_state') or None


def load_resume_state(opt: dict) -> Optional[dict]:
    """Upstream's ``basicsr.train.load_resume_state`` maps the state to ``torch.cuda.current_device()`` (fails on a
    CPU-only machine), unpickles it with ``weights_only=False`` (a crafted ``.state`` runs code) and looks for
    ``experiments/`` in the current folder. Ours: the same lookup (``resume_state_path``), the CPU when there is no
    GPU, ``weights_only=True``, and a file that is not a training state is a ConfigError naming it. Drop when
    upstream loads states safely with ``map_location``."""
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
# What a training state may hold besides tensors and plain containers: basicsr's MultiStepRestartLR keeps its
# milestones in a Counter (rebuilt from a dict: no code of the file runs).
STATE_GLOBALS = [collections.Counter]


def read_training_state(path: str, map_location='cpu', source: Optional[bytes] = None) -> dict:
    """A basicsr training state (``experiments/<name>/training_states/<iter>.state``), read with
    ``weights_only=True`` (tensors, numbers, strings and containers only: nothing in the file can run code), or
    ConfigError naming the file when it is not one (not a pickle, truncated, another kind of file, or a pickle of
    other objects, e.g. a state written by code that stored numpy arrays). ``source``: the file's bytes, when
    they came from another rank (``path`` then only names it)."""
    try:
        with torch.serialization.safe_globals(STATE_GLOBALS):
            state = torch.load(io.BytesIO(source) if source is not None else path, map_location=map_location,
                               weights_only=True)
    except Exception as err:  # noqa: BLE001  (unpickling raises many types; all mean "not a state file")
        text = str(err)
        if text.startswith('Weights only load failed'):  # refused by the weights-only unpickler: say what
            lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
            reason = lines[0] if lines else 'unsupported object'
            raise ConfigError(f"path.resume_state: '{path}' holds objects other than tensors, numbers and "
                              f'containers ({reason[:160]}); it is not loaded, since unpickling them could run '
                              'code. Resume from a state written by this version, or start from the weights '
                              '(path.pretrain_network_g)') from None
        raise ConfigError(f"path.resume_state: '{path}' is not a training state "
                          f"({first_line(err) if text else type(err).__name__ + ': unreadable'})") from None
    missing = [k for k in TRAINING_STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        found = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"path.resume_state: '{path}' is not a training state (no {missing}; it holds {found}); "
                          'training states are the .state files under experiments/<name>/training_states')
    return state


def choose_backend(wanted=None):
    """``BASICSR_DIST_BACKEND`` when set; else ``wanted`` (``dist_params.backend``) unless it is nccl without a
    GPU (gloo then, with a warning); else nccl on CUDA, gloo on the CPU."""
    if os.environ.get('BASICSR_DIST_BACKEND'):
        return os.environ['BASICSR_DIST_BACKEND']
    if wanted == 'nccl' and not cuda_present():
        warnings.warn('dist_params.backend is nccl but no GPU is present: using gloo', stacklevel=3)
        return 'gloo'
    return wanted or dist_backend()


def _first_slurm_host(node_list):
    import shutil
    import subprocess
    scontrol = shutil.which('scontrol')
    if scontrol is None:
        raise ConfigError('--launcher slurm: scontrol is not on PATH (needed to find the first node of '
                          f"SLURM_NODELIST '{node_list}'); set MASTER_ADDR instead")
    out = subprocess.run([scontrol, 'show', 'hostnames', node_list], capture_output=True, text=True, timeout=60)
    hosts = out.stdout.split()
    if out.returncode != 0 or not hosts:
        raise ConfigError(f"--launcher slurm: 'scontrol show hostnames {node_list}' failed: "
                          f'{(out.stderr or out.stdout).strip()[:200]}')
    return hosts[0]


def slurm_environment(dist_params):
    """torch.distributed's variables from slurm's (``srun``): RANK = SLURM_PROCID, WORLD_SIZE = SLURM_NTASKS,
    LOCAL_RANK = SLURM_LOCALID, MASTER_ADDR = the first node (``scontrol``) unless set, MASTER_PORT from the
    environment, else ``dist_params.port``, else 29500."""
    need = ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')
    missing = [k for k in need if k not in os.environ]
    if missing:
        raise ConfigError(f'--launcher slurm: {", ".join(missing)} not set (start the command with srun)')
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
    if not os.environ.get('MASTER_ADDR'):
        os.environ['MASTER_ADDR'] = _first_slurm_host(os.environ['SLURM_NODELIST'])
    if not os.environ.get('MASTER_PORT'):
        os.environ['MASTER_PORT'] = str(dist_params.get('port') or 29500)


def init_dist(launcher, opt=None, backend=None, **kwargs):
    """Start the process group for ``--launcher pytorch`` (torchrun's variables) or ``slurm`` (``srun``'s).
    Replaces ``basicsr.utils.dist_util.init_dist`` (and ``options.py``'s own reference to it). Upstream always
    takes nccl and calls ``torch.cuda.set_device(rank % device_count())`` (ZeroDivisionError on a CPU node), and
    applies ``--force_yml`` only after this point. Here: ``choose_backend``, the device from
    ``LOCAL_RANK`` on CUDA only, ``spawn`` only on CUDA (on the CPU it makes every DataLoader worker re-import
    torch). Drop when upstream starts a process group on CPU nodes."""
    import torch.distributed as dist
    import torch.multiprocessing as mp
    dist_params = dict((opt or {}).get('dist_params') or {})
    if launcher == 'slurm':
        slurm_environment(dist_params)
    elif launcher != 'pytorch':
        raise ConfigError(f"--launcher must be none, pytorch or slurm, got '{launcher}'")
    if cuda_present():
        if mp.get_start_method(allow_none=True) is None:
            mp.set_start_method('spawn')
        local_rank = int(os.environ.get('LOCAL_RANK', os.environ.get('RANK', 0)))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=choose_backend(backend or dist_params.get('backend')), **kwargs)


@_bsr_dist.master_only
def init_wandb_logger(opt):
    """basicsr's wandb start (it only syncs the TensorBoard events), for today's wandb. Upstream's
    ``init_wandb_logger`` calls ``wandb.util.generate_id``, removed in wandb 0.28.2 (AttributeError after the run
    folder exists), and lets wandb write ``./wandb`` in the current folder. Ours makes the id itself and writes
    under the run folder (``WANDB_MODE=offline`` works without a network). Drop when basicsr's logger works with
    current wandb."""
    import secrets

    import wandb
    from basicsr.utils import get_root_logger
    settings = opt['logger']['wandb']
    run_id = settings.get('resume_id') or secrets.token_hex(4)
    folder = opt['path'].get('experiments_root') or opt['path']['log']
    wandb.init(id=run_id, resume='allow' if settings.get('resume_id') else 'never', name=opt['name'], config=opt,
               project=settings['project'], sync_tensorboard=True, dir=folder)
    get_root_logger().info(f"Use wandb logger with id={run_id}; project={settings['project']}; files in {folder}.")


def model_to_device(self, net: torch.nn.Module) -> torch.nn.Module:
    """The model's network on its device, wrapped for DDP (``dist``) or DataParallel (several GPUs). Upstream's
    ``BaseModel.model_to_device`` passes ``device_ids=[torch.cuda.current_device()]`` to DistributedDataParallel
    even for a CPU model (gloo), which fails without CUDA; here ``device_ids`` is given on CUDA only. Installed as
    the method of ``basicsr.models.base_model.BaseModel``, so every model type wraps this way; a model's own
    ``model_to_device`` (``SpeedSwitchesMixin``: channels_last, checkpointing) prepares the net first and then
    calls it through ``super()``. Drop when upstream omits ``device_ids`` for CPU models."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    net = net.to(self.device)
    if self.opt['dist']:
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(
            net, device_ids=device_ids, find_unused_parameters=self.opt.get('find_unused_parameters', False))
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


def install() -> None:
    """Replace upstream's functions by the ones above (idempotent); ``basicsr_ext.install`` calls it."""
    if getattr(basicsr, '_hinet_plugins_patched', False):
        return
    _bsr_train.init_wandb_logger = init_wandb_logger  # a module global of train_pipeline's init_tb_loggers
    _bsr_train.load_resume_state = load_resume_state  # looked up as a module global by train_pipeline
    _bsr_dist.init_dist = _bsr_options.init_dist = init_dist
    _bsr_base_model.BaseModel.model_to_device = model_to_device
    basicsr._hinet_plugins_patched = True
