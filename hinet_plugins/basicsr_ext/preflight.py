"""Everything a run builds from its options, built once on the CPU before basicsr creates, renames or writes anything.

basicsr's ``train_pipeline`` archives an existing ``experiments/<name>`` and writes the new run's folders *before*
it builds the model, so an input error found while building would leave an archived run and no new one (and a
later ``--auto_resume`` would start again at iteration 0). The launcher's ``parse_options`` hook therefore calls
``preflight``, which writes nothing and: checks the optimizer values; builds ``network_g`` and each loss alone
(``errors.built_from_options``: the one boundary where an arch's or a loss's ``ValueError`` becomes a one-line
``ConfigError`` naming the option key); builds the whole model as the run will (``num_gpu: 0``, no DDP) and, in
training, loads the state it will resume from; runs the network once on a zero 64x64 input with the images'
channels to report an input-channel mismatch. basicsr's logger stays quiet and uninitialised meanwhile, and the
random generators are restored, so the run draws the same initial weights as without the checks.
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

from ..errors import BUILD_ERRORS, ConfigError, built_from_options, first_line
from ..utils.checkpoint import rng_states, set_rng_states
from .compat import read_training_state, resume_state_path
from .options_check import loss_specs

OPTIMIZER_NUMBERS = ('lr', 'weight_decay', 'eps', 'momentum', 'alpha', 'dampening')
CHANNEL_MISMATCH = re.compile(r'expected input\[[^\]]*\] to have (\d+) channels, but got (\d+) channels')


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


def check_optimizer_values(opt: dict, path: str) -> None:
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


def check_parts(opt: dict, path: str) -> None:
    """``network_g`` and each loss built alone, so that an error names its key."""
    built_from_options(build_network, opt['network_g'], 'network_g', path)
    if not opt.get('is_train'):
        return
    for where, spec in loss_specs(opt.get('train') or {}):
        built_from_options(build_loss, spec, where, path)


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
                          f'optimizer or scheduler?): {first_line(err)}') from None


def preflight(opt: dict, path: str) -> None:
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
    if opt.get('dist') and opt.get('rank', 0) != 0:  # checkpoints and states are rank 0's (basicsr_ext.resume)
        dry.update(auto_resume=False)
        dry['path'].update({k: None for k in dry['path'] if k.startswith('pretrain_network') or k == 'resume_state'})
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
                              f'{first_line(err)}') from None
        if state is not None:
            _check_resume(model, state_path, state, path)
        check_input_channels(model, opt, path)
    del model
