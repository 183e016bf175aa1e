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
  averaged across ranks under DDP, and saved in the training state so ``--auto_resume`` restores them. The training
  state also holds every rank's random states, so a resumed run continues the same draws
  (``compat.create_train_val_dataloader``).
- ``train.loss_on_clamped: true`` computes the losses on outputs clamped to [0, 1] (MPRNet's denoising recipe).
- Gradient clipping: ``train.use_grad_clip`` (max-norm ``train.grad_clip_norm``, 0.01 as in the HINet release).
- A non-finite loss stops training with a clear message; checkpoints are written atomically (temporary file,
  then rename), so an interrupted save never replaces the last good checkpoint.
- Validation/test: metrics and images use the last stage. ``val.grids: true`` (+ ``crop_size``, ``crop_overlap``,
  ``max_minibatch``) restores large images by overlapping crops, as the HINet release does.
  ``val.tlc: {enabled, train_size, base_size, fast_imp, compare}`` applies TLC (``hinet_plugins.tlc``) to the
  evaluated net for validation/test only; ``compare: true`` also logs the metrics without it.
- Schedulers: basicsr's plus ``TrueCosineAnnealingLR`` (the HINet release's name for torch's cosine annealing).
- Speed switches (``models/speed.py``, all off by default): ``amp: bf16|fp16`` (top level; ``val.amp`` overrides it
  for validation/test), ``channels_last: true`` (top level), ``train.compile: true|{backend, mode, ...}``,
  ``train.grad_checkpoint: true``. Top-level keys act in training and test; ``train.*`` ones in training only.
"""
import os
from collections import OrderedDict

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.models import lr_scheduler as bsr_lr_scheduler
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info, master_only
from basicsr.utils.registry import MODEL_REGISTRY

from ..errors import ConfigError, TrainingDivergedError
from ..utils.checkpoint import atomic_torch_save, describe_state_dict_mismatch, rng_states
from ..utils.tiling import tiled_forward
from .speed import SpeedSwitchesMixin, to_float

OPTIMIZERS = {
    'Adam': torch.optim.Adam, 'AdamW': torch.optim.AdamW, 'Adamax': torch.optim.Adamax, 'SGD': torch.optim.SGD,
    'RMSprop': torch.optim.RMSprop,
}


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


@MODEL_REGISTRY.register()
class MultiStageRestorationModel(SpeedSwitchesMixin, SRModel):
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
        if self.opt['train'].get('loss_on_clamped'):  # MPRNet's denoising recipe: loss of clamp(output, 0, 1)
            preds = [p.clamp(0, 1) for p in preds]
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
        l_total, loss_dict = self.with_compile_fallback(lambda: self._forward_backward(current_iter), self.optimizer_g)
        self._sync_loss_grads()
        self.optimizer_step(self.optimizer_g, self.net_g.parameters() if self.use_grad_clip else None,
                            self.grad_clip_norm)
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def _forward_backward(self, current_iter):
        """Forward (``amp`` autocast; compiled with ``train.compile``), losses in fp32, (scaled) backward."""
        with self.train_autocast():
            self.output = to_float(self.train_network()(self.lq))
        l_total, loss_dict = self.compute_losses(self.output, self.gt)
        if not torch.isfinite(l_total).all():
            terms = ', '.join(f'{k}={float(torch.as_tensor(v).detach()):.4g}' for k, v in loss_dict.items())
            hint = ' (with amp: fp16 the forward may overflow: try amp: bf16)' if self.grad_scaler else ''
            raise TrainingDivergedError(
                f'Non-finite loss at iteration {current_iter} ({terms}). Training stopped; the last saved '
                f"checkpoint in {self.opt['path'].get('models')} is intact. Lower train.optim_g.lr or enable "
                f'train.use_grad_clip{hint}, then resume with --auto_resume.')
        self.backward(l_total)
        return l_total, loss_dict

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
        """Context of evaluation forward passes: autocast with ``amp`` / ``val.amp`` (outputs cast back to float)."""
        return self.eval_autocast()

    # ------------------------------------------------------------------ TLC at validation/test
    TLC_KEYS = ('enabled', 'train_size', 'base_size', 'fast_imp', 'compare')

    @staticmethod
    def tlc_options(opt):
        """``val.tlc`` checked and completed, or None when off. Keys: enabled (default true once the section
        exists), train_size (default datasets.train.gt_size), base_size (default 1.5 x train_size), fast_imp,
        compare (also validate without TLC; the TLC metrics are then logged as dataset '<name>_tlc')."""
        tlc = (opt.get('val') or {}).get('tlc')
        if tlc is None or tlc is False:
            return None
        tlc = {} if tlc is True else tlc
        if not isinstance(tlc, dict):
            raise ConfigError(f'val.tlc must be a mapping with keys {MultiStageRestorationModel.TLC_KEYS}, '
                              f'got {tlc!r}')
        unknown = sorted(set(tlc) - set(MultiStageRestorationModel.TLC_KEYS))
        if unknown:
            raise ConfigError(f'val.tlc: unknown key(s) {unknown}; expected {MultiStageRestorationModel.TLC_KEYS}')
        if not tlc.get('enabled', True):
            return None
        train_size = tlc.get('train_size') or ((opt.get('datasets') or {}).get('train') or {}).get('gt_size')
        if not train_size:
            raise ConfigError('val.tlc.train_size is needed (the training patch size; there is no '
                              'datasets.train.gt_size to default to)')
        for key, value in (('train_size', train_size), ('base_size', tlc.get('base_size'))):
            ok = value is None or isinstance(value, int) or (
                isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value))
            if not ok or (value is not None and min([value] if isinstance(value, int) else value) <= 0):
                raise ConfigError(f'val.tlc.{key} must be a positive int or [h, w], got {value!r}')
        return {'train_size': train_size, 'base_size': tlc.get('base_size'), 'fast_imp': bool(tlc.get('fast_imp')),
                'compare': bool(tlc.get('compare'))}

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        """basicsr's validation; with ``val.tlc`` the evaluated net is TLC-converted for it and restored after
        (``finally``), so training continues with the original modules. With ``compare`` the net is validated
        first as it is (in training, its images are not saved: the TLC pass would overwrite them)."""
        tlc = self.tlc_options(self.opt)
        if tlc is None:
            return super().validation(dataloader, current_iter, tb_logger, save_img)
        from ..tlc import convert
        if tlc['compare']:
            super().validation(dataloader, current_iter, tb_logger, save_img and not self.opt['is_train'])
        ds_opt = dataloader.dataset.opt
        name = ds_opt['name']
        conversion = convert(self.eval_network(), tlc['train_size'], tlc['base_size'], tlc['fast_imp'], warn=False)
        try:
            self._log_tlc_once(conversion)
            if tlc['compare']:
                ds_opt['name'] = f'{name}_tlc'
            super().validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            ds_opt['name'] = name
            conversion.restore()

    def _log_tlc_once(self, conversion):
        if getattr(self, '_tlc_logged', False):
            return
        self._tlc_logged = True
        logger = get_root_logger()
        logger.info(f'val.tlc: {conversion.summary()}')
        if not conversion.layers:
            logger.warning('val.tlc: no global operation left to make local (none in network_g, or it is already '
                           'a *Local network): metrics with and without TLC are the same')
        if (self.opt.get('val') or {}).get('grids'):
            logger.warning('val.tlc with val.grids: each crop is restored separately, so TLC changes little; '
                           'set grids: false to restore whole images with TLC')

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
                + describe_state_dict_mismatch(self.get_bare_model(net).state_dict(), loaded, param_key,
                                               ignored_prefixes=getattr(self.get_bare_model(net),
                                                                        'ignored_checkpoint_prefixes', ()))) from err

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

    def save_training_state(self, epoch, current_iter):
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

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        self.load_speed_state(resume_state)
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
