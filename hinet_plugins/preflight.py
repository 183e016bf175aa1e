"""Everything a run builds from its options, built once before basicsr creates, renames or writes anything.

basicsr's ``train_pipeline`` archives an existing ``experiments/<name>`` (and ``tb_logger/<name>``) to
``*_archived_<time>``, creates the new run's folders and writes its log and option copy *before* it builds the
model; ``test_pipeline`` creates ``results/<name>`` first. An input error found while building would leave the
user with an archived run and no new one, and a later ``--auto_resume`` would silently start again at iteration 0.
So the launcher's ``parse_options`` hook calls ``preflight``, which, on the CPU and writing nothing:

1. checks the value types of the optimizer settings (``train.optim_*``: ``lr``, ``weight_decay``, ``eps``,
   ``momentum`` numbers, ``betas`` a pair of numbers);
2. builds ``network_g`` alone, then each loss of ``train.*_opt`` / ``train.losses`` alone: this is the one boundary
   where an arch's or a loss's ``ValueError`` / ``TypeError`` for a bad constructor argument becomes a one-line
   ``ConfigError`` naming the option key (``network_g``, ``train.pixel_opt``, ...); the archs and losses know
   nothing of option files;
3. builds the whole model as the run will (model class, EMA copy, ``path.pretrain_network_g`` loaded and fitted,
   the losses' own files, optimizers, schedulers), from a copy of the options with ``num_gpu: 0`` and no DDP;
4. in training, reads the state the run will resume from (``--auto_resume`` or ``path.resume_state``), builds the
   model with that iteration's network file as upstream's ``check_resume`` sets it, and loads the state into the
   model (optimizer, scheduler and loss states must fit);
5. runs the network once on a zero 64x64 input with the images' channels (3: basicsr decodes every image as
   colour; 1 with ``color: y``) and reports a mismatch of the network's input channels (``network_g.in_chn`` and
   the like); other forward errors are left to the run itself.

basicsr's console logger is kept quiet meanwhile and left uninitialised, so that the run's first
``get_root_logger`` call still attaches the log file, and the random generators are restored afterwards, so the
run draws the same initial weights as without the checks. Cost: one extra build of the model on the CPU
(seconds).
"""
import contextlib
import copy
import io
import logging
import re

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.models import build_model
from basicsr.utils import check_resume
from basicsr.utils.registry import DATASET_REGISTRY

from .compat import read_training_state, resume_state_path
from .errors import ConfigError
from .utils.checkpoint import rng_states, set_rng_states

OPTIMIZER_NUMBERS = ('lr', 'weight_decay', 'eps', 'momentum', 'alpha', 'dampening')
BUILD_ERRORS = (TypeError, ValueError, KeyError, IndexError)
CHANNEL_MISMATCH = re.compile(r'expected input\[[^\]]*\] to have (\d+) channels, but got (\d+) channels')


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _reason(err):
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


@contextlib.contextmanager
def quiet_basicsr_logger():
    """basicsr's 'basicsr' logger at ERROR level, and (if it was not yet) still uninitialised afterwards."""
    from basicsr.utils import logger as bsr_logger
    logger = logging.getLogger('basicsr')
    fresh = 'basicsr' not in bsr_logger.initialized_logger
    level = logger.level
    if fresh:
        bsr_logger.initialized_logger['basicsr'] = True  # get_root_logger() then adds no handler
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        if fresh:
            bsr_logger.initialized_logger.pop('basicsr', None)


def check_optimizer_values(opt, path):
    for key, spec in (opt.get('train') or {}).items():
        if not key.startswith('optim_') or not isinstance(spec, dict):
            continue
        for name in OPTIMIZER_NUMBERS:
            if name in spec and not _is_number(spec[name]):
                raise ConfigError(f'{path}: train.{key}.{name} must be a number, got {spec[name]!r}')
        betas = spec.get('betas')
        if betas is not None and not (isinstance(betas, (list, tuple)) and len(betas) == 2
                                      and all(_is_number(b) for b in betas)):
            raise ConfigError(f'{path}: train.{key}.betas must be two numbers like [0.9, 0.999], got {betas!r}')


def _loss_specs(train_opt):
    for key, value in train_opt.items():
        if key.endswith('_opt') or key == 'losses':
            specs = value if isinstance(value, list) else [value]
            for i, spec in enumerate(specs):
                if isinstance(spec, dict) and 'type' in spec:
                    yield f'train.{key}' + (f'[{i}]' if isinstance(value, list) else ''), spec


def check_parts(opt, path):
    """``network_g`` and each loss built alone, so that an error names its key."""
    try:
        build_network(copy.deepcopy(opt['network_g']))
    except ConfigError as err:
        raise ConfigError(f'{path}: {err}') from None
    except BUILD_ERRORS as err:
        raise ConfigError(f"{path}: network_g ({opt['network_g'].get('type')}) cannot be built: "
                          f'{_reason(err)}') from None
    if not opt.get('is_train'):
        return
    for where, spec in _loss_specs(opt.get('train') or {}):
        try:
            build_loss(copy.deepcopy(spec))
        except ConfigError as err:
            raise ConfigError(f'{path}: {where}: {err}') from None
        except BUILD_ERRORS as err:
            raise ConfigError(f"{path}: {where} ({spec['type']}) cannot be built: {_reason(err)}") from None


def _data_channels(opt):
    for ds in (opt.get('datasets') or {}).values():  # a dataset type may say what it feeds (e.g. 1 or 6 channels)
        own = getattr(DATASET_REGISTRY.get(ds['type']) if (ds or {}).get('type') in DATASET_REGISTRY else None,
                      'input_channels', None)
        if own is not None:
            return own(ds)
    colors = {(ds or {}).get('color') for ds in (opt.get('datasets') or {}).values()}
    return 1 if colors == {'y'} else 3


def check_input_channels(model, opt, path):
    net = model.get_bare_model(model.net_g)
    channels = _data_channels(opt)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, channels, 64, 64))
    except RuntimeError as err:
        match = CHANNEL_MISMATCH.search(str(err))
        if match and match.group(2) == str(channels):
            raise ConfigError(f"{path}: network_g ({opt['network_g'].get('type')}) takes {match.group(1)}-channel "
                              f'input but the images have {channels} channels (basicsr reads every image as '
                              'colour); set network_g.in_chn (or the arch\'s input-channel option) to '
                              f'{channels}') from None
    except Exception:  # noqa: BLE001  (only a channel mismatch is reported here; the run reports the rest)
        pass
    finally:
        net.train(was_training)


def _resume_state(dry):
    """The state the run resumes from (or None); like upstream, ``dry``'s ``pretrain_network_*`` then point at
    that iteration's ``experiments/<name>/models/net_*_<iter>.pth`` (``check_resume``)."""
    state_path = resume_state_path(dry) if dry.get('is_train') else None
    if not state_path:
        return None, None
    state = read_training_state(state_path)
    dry['path']['resume_state'] = state_path
    with contextlib.redirect_stdout(io.StringIO()):  # upstream prints what it sets; the run prints it again
        check_resume(dry, state['iter'])
    return state_path, state


def _check_resume(model, state_path, state, path):
    try:
        model.resume_training(state)
    except ConfigError as err:
        raise ConfigError(f"{path}: path.resume_state '{state_path}': {err}") from None
    except (*BUILD_ERRORS, RuntimeError, AssertionError) as err:
        raise ConfigError(f"{path}: path.resume_state '{state_path}' does not fit these options (another network, "
                          f'optimizer or scheduler?): {_reason(err)}') from None


def preflight(opt, path):
    """Build and load everything ``opt`` (basicsr's parsed options) asks for; ConfigError on an input error.

    The random states (python, numpy, torch) are restored afterwards: building networks draws their initial
    weights, and the run must start from the generators exactly as basicsr seeded them."""
    states = rng_states()
    try:
        _preflight(opt, path)
    finally:
        set_rng_states(states)


def _preflight(opt, path):
    check_optimizer_values(opt, path)
    dry = copy.deepcopy(opt)
    dry.update(num_gpu=0, dist=False)
    with quiet_basicsr_logger():
        check_parts(dry, path)
        state_path, state = _resume_state(dry)
        try:
            model = build_model(dry)
        except ConfigError as err:
            raise ConfigError(str(err) if str(err).startswith(path) else f'{path}: {err}') from None
        except BUILD_ERRORS as err:
            raise ConfigError(f"{path}: the options do not build model_type {opt.get('model_type')}: "
                              f'{_reason(err)}') from None
        if state is not None:
            _check_resume(model, state_path, state, path)
        check_input_channels(model, opt, path)
    del model
