"""Multi-stage restoration model: basicsr's ``SRModel`` with losses summed over every stage output.

Reuses basicsr for everything it already does (network building and loading, EMA, validation loop, metrics,
logging, checkpoint layout, resume); overrides only what multi-stage networks need:

- ``train.pixel_opt`` may be one loss or a list of losses (``train.losses`` is an alias for the list). Each loss
  is applied to every stage output and summed with ``train.stage_weights`` (default: 1 for every stage).
  Loss protocol (duck-typed attributes on the loss module):
  ``needs_lq = True``    -> called as ``loss(pred, gt, lq=lq)`` (e.g. contrastive losses that use the input);
  ``multi_stage = True`` -> called once with the whole list of stage outputs (it weights stages itself);
  ``log_dict()``         -> extra scalars to log (e.g. learned stage ratios).
  Loss modules with parameters are optimised in their own param group (``train.optim_loss`` overrides lr etc.),
  averaged across ranks under DDP, and saved in the training state so ``--auto_resume`` restores them.
- Gradient clipping: ``train.use_grad_clip`` (max-norm ``train.grad_clip_norm``, 0.01 as in the HINet release).
- A non-finite loss stops training with a clear message; checkpoints are written atomically (temporary file,
  then rename), so an interrupted save never replaces the last good checkpoint.
- Validation/test: metrics and images use the last stage. ``val.grids: true`` (+ ``crop_size``, ``crop_overlap``,
  ``max_minibatch``) restores large images by overlapping crops, as the HINet release does.
- Schedulers: basicsr's plus ``TrueCosineAnnealingLR`` (the HINet release's name for torch's cosine annealing).
"""
import os
from collections import OrderedDict
from contextlib import nullcontext

import torch
from basicsr.archs import build_network  # noqa: F401  (kept visible: the net is built by SRModel)
from basicsr.losses import build_loss
from basicsr.models import lr_scheduler as bsr_lr_scheduler
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info, master_only
from basicsr.utils.registry import MODEL_REGISTRY

from ..errors import ConfigError, TrainingDivergedError
from ..utils.checkpoint import atomic_torch_save, describe_state_dict_mismatch
from ..utils.tiling import tiled_forward

OPTIMIZERS = {
    'Adam': torch.optim.Adam, 'AdamW': torch.optim.AdamW, 'Adamax': torch.optim.Adamax, 'SGD': torch.optim.SGD,
    'RMSprop': torch.optim.RMSprop,
}


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


@MODEL_REGISTRY.register()
class MultiStageRestorationModel(SRModel):
    """See the module docstring. ``model_type: MultiStageRestorationModel``."""

    default_grad_clip = False

    # ------------------------------------------------------------------ training set-up
    def init_training_settings(self):
        self.net_g.train()
        train_opt = self.opt['train']
        self.ema_decay = train_opt.get('ema_decay', 0)
        if self.ema_decay > 0:
            get_root_logger().info(f'Use Exponential Moving Average with decay: {self.ema_decay}')
            self.net_g_ema = build_network(self.opt['network_g']).to(self.device)
            load_path = self.opt['path'].get('pretrain_network_g')
            if load_path is not None:
                self.load_network(self.net_g_ema, load_path, self.opt['path'].get('strict_load_g', True), 'params_ema')
            else:
                self.model_ema(0)
            self.net_g_ema.eval()

        self.losses = self._build_losses(train_opt)
        self.stage_weights = train_opt.get('stage_weights')
        self.use_grad_clip = train_opt.get('use_grad_clip', self.default_grad_clip)
        self.grad_clip_norm = float(train_opt.get('grad_clip_norm', 0.01))
        self.setup_optimizers()
        self.setup_schedulers()

    def _build_losses(self, train_opt):
        specs = []
        for key in ('pixel_opt', 'losses'):
            value = train_opt.get(key)
            if value:
                specs += value if isinstance(value, list) else [value]
        if not specs:
            raise ConfigError("train.pixel_opt (or train.losses): at least one loss is needed, e.g. "
                             "'pixel_opt: {type: PSNRLoss, loss_weight: 0.5}'")
        losses = []
        for spec in specs:
            spec = dict(spec)
            name = spec.pop('name', None) or 'l_' + spec['type'].replace('Loss', '').lower()
            if name in dict(losses):
                name = f'{name}_{len(losses)}'
            losses.append((name, build_loss(spec).to(self.device)))
        return losses

    def loss_parameters(self):
        return [p for _, loss in self.losses for p in loss.parameters() if p.requires_grad]

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        if optim_type not in OPTIMIZERS:
            raise ConfigError(f"train.optim_g.type: unknown optimizer '{optim_type}', choose from {sorted(OPTIMIZERS)}")
        return OPTIMIZERS[optim_type](params, lr, **kwargs)

    def setup_optimizers(self):
        train_opt = self.opt['train']
        params = [v for v in self.net_g.parameters() if v.requires_grad]
        optim_opt = dict(train_opt['optim_g'])
        optim_type = optim_opt.pop('type')
        groups = [{'params': params}]
        loss_params = self.loss_parameters()
        if loss_params:
            loss_group = {'params': loss_params}
            loss_group.update(train_opt.get('optim_loss') or {})
            groups.append(loss_group)
        self.optimizer_g = self.get_optimizer(optim_type, groups, **optim_opt)
        self.optimizers.append(self.optimizer_g)

    def setup_schedulers(self):
        sched_opt = dict(self.opt['train']['scheduler'])
        sched_type = sched_opt.pop('type')
        for optimizer in self.optimizers:
            if sched_type in ('MultiStepLR', 'MultiStepRestartLR'):
                sched = bsr_lr_scheduler.MultiStepRestartLR(optimizer, **sched_opt)
            elif sched_type == 'CosineAnnealingRestartLR':
                sched = bsr_lr_scheduler.CosineAnnealingRestartLR(optimizer, **sched_opt)
            elif sched_type in ('TrueCosineAnnealingLR', 'CosineAnnealingLR'):
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **sched_opt)
            else:
                raise ConfigError(f"train.scheduler.type: unknown scheduler '{sched_type}', choose from "
                                 "MultiStepLR, MultiStepRestartLR, CosineAnnealingRestartLR, TrueCosineAnnealingLR")
            self.schedulers.append(sched)

    # ------------------------------------------------------------------ training step
    def compute_losses(self, preds, gt):
        """Sum of every loss over every stage; returns (total, OrderedDict of logged terms)."""
        preds = _as_list(preds)
        weights = self.stage_weights or [1.0] * len(preds)
        if len(weights) != len(preds):
            raise ConfigError(f'train.stage_weights has {len(weights)} entries but the network returns '
                             f'{len(preds)} stage outputs')
        total = 0
        log = OrderedDict()
        for name, loss in self.losses:
            extra = {'lq': self.lq} if getattr(loss, 'needs_lq', False) else {}
            if getattr(loss, 'multi_stage', False):
                value = self._loss_value(loss(preds, gt, **extra))
            else:
                value = sum(w * self._loss_value(loss(p, gt, **extra)) for w, p in zip(weights, preds) if w)
            total = total + value
            log[name] = value
            if hasattr(loss, 'log_dict'):
                log.update(loss.log_dict())
        return total, log

    @staticmethod
    def _loss_value(value):
        if isinstance(value, (list, tuple)):  # e.g. basicsr's PerceptualLoss returns (percep, style)
            return sum(v for v in value if v is not None)
        return value

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad(set_to_none=True)
        self.output = self.net_g(self.lq)
        l_total, loss_dict = self.compute_losses(self.output, self.gt)
        if not torch.isfinite(l_total).all():
            terms = ', '.join(f'{k}={float(v):.4g}' for k, v in loss_dict.items())
            raise TrainingDivergedError(
                f'Non-finite loss at iteration {current_iter} ({terms}). Training stopped; the last saved '
                f"checkpoint in {self.opt['path'].get('models')} is intact. Lower train.optim_g.lr or enable "
                'train.use_grad_clip, then resume with --auto_resume.')
        l_total.backward()
        self._sync_loss_grads()
        if self.use_grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net_g.parameters(), self.grad_clip_norm)
        self.optimizer_g.step()
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def _sync_loss_grads(self):
        """DDP averages the network's gradients only; average the loss modules' own parameters too."""
        if not self.opt.get('dist'):
            return
        _, world_size = get_dist_info()
        for p in self.loss_parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(world_size)

    # ------------------------------------------------------------------ inference
    def eval_network(self):
        """The module that validation/test runs (EMA copy if present, else the bare net)."""
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)

    def restore(self, lq, net=None):
        """Forward one batch for evaluation; returns the last stage output (grids if ``val.grids``)."""
        net = net or self.eval_network()
        val_opt = self.opt.get('val') or {}
        if val_opt.get('grids'):
            crop = int(val_opt.get('crop_size', 256))
            return tiled_forward(net, lq, crop, overlap=int(val_opt.get('crop_overlap', crop // 8)),
                                 batch=int(val_opt.get('max_minibatch', 8)))
        return _as_list(net(lq))[-1]

    def test(self):
        net = self.eval_network()
        was_training = net.training
        net.eval()
        with torch.no_grad(), self.test_context():
            self.output = self.restore(self.lq, net)
        net.train(was_training)

    def test_context(self):
        """Hook for wrappers around evaluation forward passes (e.g. autocast); nothing by default."""
        return nullcontext()

    # ------------------------------------------------------------------ checkpoints
    def load_network(self, net, load_path, strict=True, param_key='params'):
        if not os.path.isfile(load_path):
            raise ConfigError(f"path.pretrain_network_g: checkpoint '{load_path}' does not exist")
        try:
            super().load_network(net, load_path, strict, param_key)
        except (RuntimeError, KeyError) as err:
            loaded = torch.load(load_path, map_location='cpu', weights_only=False)
            raise ConfigError(
                f"Checkpoint '{load_path}' does not fit network_g "
                f"({self.get_bare_model(net).__class__.__name__}): "
                + describe_state_dict_mismatch(self.get_bare_model(net).state_dict(), loaded, param_key)) from err

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        label = 'latest' if current_iter == -1 else current_iter
        save_path = os.path.join(self.opt['path']['models'], f'{net_label}_{label}.pth')
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            save_dict[key] = OrderedDict((k[7:] if k.startswith('module.') else k, v.cpu()) for k, v in state.items())
        atomic_torch_save(save_dict, save_path)

    @master_only
    def save_training_state(self, epoch, current_iter):
        if current_iter == -1:
            return
        state = {'epoch': epoch, 'iter': current_iter,
                 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers],
                 'losses': {name: loss.state_dict() for name, loss in self.losses}}
        atomic_torch_save(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        for name, loss in self.losses:
            if name in resume_state.get('losses', {}):
                loss.load_state_dict(resume_state['losses'][name])


@MODEL_REGISTRY.register()
class ImageRestorationModel(MultiStageRestorationModel):
    """The HINet/TLC/NAFNet releases' model name, so their option files run unchanged.

    Same behaviour as ``MultiStageRestorationModel`` except that gradient clipping defaults to on
    (max-norm 0.01), as in the releases.
    """

    default_grad_clip = True
