"""Checkpoints of the restoration model: loading with clear errors, atomic saving, training states with random
states and loss parameters (``CheckpointMixin``, before basicsr's ``SRModel`` in the model's bases). A release's
training state (HINet/DRCNet: an extra, empty param group) resumes where its parameters match ours."""
import os
from collections import OrderedDict
from typing import List, Optional, Union

import torch
from basicsr.utils.dist_util import get_dist_info, master_only

from ..errors import ConfigError
from ..utils.checkpoint import atomic_torch_save, describe_state_dict_mismatch, received, rng_states

PER_GROUP_SCHEDULER_KEYS = ('base_lrs', '_last_lr', 'min_lrs')


class CheckpointMixin:
    # ------------------------------------------------------------------ checkpoints
    def load_network(self, net: torch.nn.Module, load_path: str, strict: bool = True,
                     param_key: Optional[str] = 'params') -> None:
        """basicsr's loading, plus: the releases' ``path.param_key`` (TLC/NAFNet's name for ``param_key_g``, used
        when ``param_key_g`` is not set; ``~`` = the file is the state_dict itself) and one-line errors naming the
        file: not a readable checkpoint, no entry under the chosen key (with the file's top-level keys), or keys and
        shapes that do not fit ``network_g``."""
        path_opt = self.opt.get('path') or {}
        if param_key == 'params' and 'param_key_g' not in path_opt and 'param_key' in path_opt:
            param_key = path_opt['param_key']
        source = received(load_path)  # sent by rank 0 (a node without shared storage)
        if source is None and not os.path.isfile(load_path):
            raise ConfigError(f"path.pretrain_network_g: checkpoint '{load_path}' does not exist")
        try:
            super().load_network(net, source if source is not None else load_path, strict, param_key)
        except Exception as err:  # noqa: BLE001  (diagnosed below; anything else is re-raised)
            raise self._checkpoint_error(net, load_path, param_key, err) from err

    def _checkpoint_error(self, net, load_path, param_key, err):
        where = f"path.pretrain_network_g: checkpoint '{load_path}'"
        try:
            loaded = torch.load(load_path, map_location='cpu', weights_only=True)
        except Exception as read_err:  # noqa: BLE001  (random bytes, text, a truncated file, an arbitrary pickle)
            text = str(read_err)
            if 'WeightsUnpickler error:' in text:  # torch's weights-only unpickler: the reason follows this marker
                text = text.split('WeightsUnpickler error:', 1)[1]
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            reason = f'{type(read_err).__name__}: {lines[0].split(". ")[0] if lines else "unreadable"}'
            return ConfigError(f'{where} is not a PyTorch checkpoint of weights that can be read ({reason[:200]})')
        if not isinstance(loaded, dict):
            return ConfigError(f'{where} holds a {type(loaded).__name__}, not a dict of weights')
        tensors_at_top = any(hasattr(v, 'shape') for v in loaded.values())
        if param_key is not None and param_key not in loaded and 'params' not in loaded:
            weights = [k for k, v in loaded.items() if isinstance(v, dict) and any(hasattr(t, 'shape')
                                                                                   for t in v.values())]
            hint = (f'path.param_key: {weights[0]}' if weights else 'path.param_key: ~ (the file is the state_dict)'
                    if tensors_at_top else 'path.param_key')
            keys = sorted(map(str, loaded))
            return ConfigError(f"{where} has no '{param_key}' entry; its top-level keys are "
                               f"{keys[:8]}{' ...' if len(keys) > 8 else ''}. Select the entry holding the weights "
                               f'with {hint} (or path.param_key_g)')
        bare = self.get_bare_model(net)
        if not isinstance(err, (RuntimeError, KeyError)):
            raise err
        return ConfigError(
            f'{where} does not fit network_g ({bare.__class__.__name__}): '
            + describe_state_dict_mismatch(bare.state_dict(), loaded, param_key,
                                           ignored_prefixes=getattr(bare, 'ignored_checkpoint_prefixes', ())))

    @master_only
    def save_network(self, net: Union[torch.nn.Module, List[torch.nn.Module]], net_label: str, current_iter: int,
                     param_key: Union[str, List[str]] = 'params') -> None:
        label = 'latest' if current_iter == -1 else current_iter
        save_path = os.path.join(self.opt['path']['models'], f'{net_label}_{label}.pth')
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            save_dict[key] = OrderedDict((k[7:] if k.startswith('module.') else k, v.cpu()) for k, v in state.items())
        atomic_torch_save(save_dict, save_path)

    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """Rank 0 writes; every rank contributes its random states (so a resume continues the same draws)."""
        if current_iter == -1:
            return
        rng = [rng_states()]
        if self.opt.get('dist'):
            rng = [None] * get_dist_info()[1]
            torch.distributed.all_gather_object(rng, rng_states())
        if get_dist_info()[0] != 0:
            return
        state = {'epoch': epoch, 'iter': current_iter,
                 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers],
                 'losses': {name: loss.state_dict() for name, loss in self.losses}, 'rng': rng}
        state.update(self.speed_state())  # fp16 grad-scaler state
        atomic_torch_save(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state: dict) -> None:
        resume_state = self.fit_release_param_groups(resume_state)
        super().resume_training(resume_state)
        self.load_speed_state(resume_state)
        for name, loss in self.losses:
            if name in resume_state.get('losses', {}):
                loss.load_state_dict(resume_state['losses'][name])

    def fit_release_param_groups(self, state: dict) -> dict:
        """A release's training state, fitted to this model's optimizer groups (a new dict; ``state`` unchanged).

        The HINet and DRCNet releases build Adam with two parameter groups: the network's parameters, and one for
        deformable-conv offsets at 0.1 x lr that is empty for every network they ship. A state of theirs has one
        group more than ours: where dropping its empty groups leaves as many as ours, they are dropped, with their
        per-group scheduler entries (``base_lrs``, ``_last_lr``). Anything else is passed on unchanged (torch's
        loading then names the mismatch)."""
        optimizers, schedulers = list(state.get('optimizers', [])), list(state.get('schedulers', []))
        for i, (optimizer, saved) in enumerate(zip(self.optimizers, optimizers)):
            groups = saved.get('param_groups', []) if isinstance(saved, dict) else []
            keep = [j for j, group in enumerate(groups) if group.get('params')]
            if len(groups) == len(optimizer.param_groups) or len(keep) != len(optimizer.param_groups):
                continue
            optimizers[i] = dict(saved, param_groups=[groups[j] for j in keep])
            if i < len(schedulers) and isinstance(schedulers[i], dict):
                schedulers[i] = {k: [v[j] for j in keep] if k in PER_GROUP_SCHEDULER_KEYS and isinstance(v, list)
                                 and len(v) == len(groups) else v for k, v in schedulers[i].items()}
        return dict(state, optimizers=optimizers, schedulers=schedulers)
