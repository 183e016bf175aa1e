"""Multi-stage restoration model: basicsr's ``SRModel`` with losses summed over every stage output.

Reuses basicsr for what it already does (building and loading networks, EMA, validation loop, metrics, logging,
checkpoint layout, resume) and adds what multi-stage networks need, one concern per mixin module:
``train.pixel_opt`` / ``train.losses`` as one loss or a list, each applied to every stage and weighted by
``train.stage_weights``; the loss protocol (``needs_lq``: called with ``lq=``; ``multi_stage``: called once with
all stages; ``log_dict()``: extra scalars; trainable losses get their own param group, DDP averaging and a place
in the training state); ``train.loss_on_clamped``; ``train.accumulate_grad_batches``; gradient clipping
(``train.use_grad_clip``); logs per loss and ``l_pix`` for the total (the releases' name); a non-finite loss
stops the run. Elsewhere: validation, grids and TLC (``evaluation.py``), checkpoints and every rank's random
states (``checkpointing.py``), schedulers (``lr_schedulers.py``), per-iteration batch transforms
(``batch_augment.py``), speed switches (``speed.py``); DDP wrapping that also works on the CPU is basicsr's
``model_to_device`` as ``basicsr_ext.compat`` patches it.
``ImageRestorationModel`` / ``ImageCleanModel`` are the releases' names (gradient clipping on by default).
"""
from collections import OrderedDict
from typing import List, Sequence, Tuple, Union

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info
from basicsr.utils.registry import MODEL_REGISTRY
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError, TrainingDivergedError
from .batch_augment import build_batch_transforms
from .checkpointing import CheckpointMixin
from .evaluation import EvaluationMixin, _as_list
from .lr_schedulers import SCHEDULERS, build_scheduler
from .speed import SpeedSwitchesMixin, to_float

OPTIMIZERS = {
    'Adam': torch.optim.Adam, 'AdamW': torch.optim.AdamW, 'Adamax': torch.optim.Adamax, 'SGD': torch.optim.SGD,
    'RMSprop': torch.optim.RMSprop,
}


def accumulate_grad_batches(train_opt: dict) -> int:
    """``train.accumulate_grad_batches`` (default 1), checked."""
    n = train_opt.get('accumulate_grad_batches', 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f'train.accumulate_grad_batches: expected a positive integer, got {n!r}')
    return n


@MODEL_REGISTRY.register()
class MultiStageRestorationModel(EvaluationMixin, CheckpointMixin, SpeedSwitchesMixin, SRModel):
    """See the module docstring. ``model_type: MultiStageRestorationModel``."""

    default_grad_clip = False

    # ------------------------------------------------------------------ training set-up
    def init_training_settings(self) -> None:
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
        self.batch_transforms = build_batch_transforms(self.opt)  # progressive patches, mixup (Restormer)
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

    def loss_parameters(self) -> List[torch.nn.Parameter]:
        return [p for _, loss in self.losses for p in loss.parameters() if p.requires_grad]

    def get_optimizer(self, optim_type: str, params: list, lr: float, **kwargs) -> torch.optim.Optimizer:
        if optim_type not in OPTIMIZERS:
            raise ConfigError(f"train.optim_g.type: unknown optimizer '{optim_type}', choose from {sorted(OPTIMIZERS)}")
        return OPTIMIZERS[optim_type](params, lr, **kwargs)

    def setup_optimizers(self) -> None:
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

    def setup_schedulers(self) -> None:
        for optimizer in self.optimizers:
            self.schedulers.append(build_scheduler(optimizer, self.opt['train']['scheduler']))

    # ------------------------------------------------------------------ training step
    def compute_losses(self, preds: Union[torch.Tensor, Sequence[torch.Tensor]],
                       gt: torch.Tensor) -> Tuple[torch.Tensor, OrderedDict]:
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

    def optimize_parameters(self, current_iter: int) -> None:
        for transform in self.batch_transforms:
            self.lq, self.gt = transform(current_iter, self.lq, self.gt)
        self.optimizer_g.zero_grad(set_to_none=True)
        l_total, loss_dict = self.with_compile_fallback(lambda: self._forward_backward(current_iter), self.optimizer_g)
        self._sync_loss_grads()
        self.optimizer_step(self.optimizer_g, self.net_g.parameters() if self.use_grad_clip else None,
                            self.grad_clip_norm)
        self.log_dict = self.reduce_loss_dict(self.release_log_names(l_total, loss_dict))
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    @staticmethod
    def release_log_names(l_total: Union[torch.Tensor, float], loss_dict: OrderedDict) -> OrderedDict:
        """The logged losses under the releases' name too: HINet, NAFNet, Restormer and DRCNet log their summed
        pixel loss as ``l_pix``; here ``l_pix`` is the total loss (= that term with one loss), after ours."""
        if 'l_pix' in loss_dict:
            return loss_dict
        return OrderedDict([*loss_dict.items(), ('l_pix', l_total.detach() if torch.is_tensor(l_total) else l_total)])

    def _forward_backward(self, current_iter):
        """Forward (``amp`` autocast; compiled with ``train.compile``), losses in fp32, (scaled) backward.

        ``train.accumulate_grad_batches: N`` (default 1) splits the loaded batch (``batch_size_per_gpu``) into N
        micro-batches run one after the other, each loss weighted by its share of the batch, and the optimizer
        steps once: for losses that are means over samples and a network without batch statistics the gradient
        is the whole batch's (only activation memory shrinks). So iterations, schedulers, logging, checkpoints and
        resume count optimizer steps as without it. Under DDP the gradients are synchronised on the last
        micro-batch only (``no_sync`` before). Returns the batch's losses (share-weighted sums)."""
        from contextlib import nullcontext
        n = accumulate_grad_batches(self.opt['train'])
        lq, gt = self.lq, self.gt
        parts = [(a, b) for a, b in zip(torch.tensor_split(lq, n), torch.tensor_split(gt, n)) if len(a)]
        total, logs = 0, OrderedDict()
        try:
            for i, (self.lq, self.gt) in enumerate(parts):
                share = len(self.lq) / len(lq)
                last = i == len(parts) - 1
                no_sync = self.net_g.no_sync() if isinstance(self.net_g, DistributedDataParallel) and not last \
                    else nullcontext()
                with no_sync:
                    l_total, loss_dict = self._micro_batch(current_iter)
                    self.backward(l_total * share if len(parts) > 1 else l_total)
                total = total + l_total.detach() * share
                for k, v in loss_dict.items():
                    logs[k] = logs.get(k, 0) + (v.detach() if torch.is_tensor(v) else v) * share
        finally:
            self.lq, self.gt = lq, gt
        return (total, logs) if len(parts) > 1 else (l_total, loss_dict)

    def _micro_batch(self, current_iter):
        """Forward and losses of ``self.lq`` / ``self.gt``; a non-finite loss stops training with a message."""
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

    @classmethod
    def check_options(cls, opt: dict) -> None:
        """Checks of this model's own options, run by the launchers before basicsr creates anything."""
        cls.tlc_options(opt)
        if opt.get('is_train'):
            build_batch_transforms(opt)
            accumulate_grad_batches(opt.get('train') or {})
            sched_type = ((opt.get('train') or {}).get('scheduler') or {}).get('type')
            if sched_type not in SCHEDULERS:
                raise ConfigError(f"train.scheduler.type: unknown scheduler '{sched_type}', choose from "
                                  + ', '.join(SCHEDULERS))


@MODEL_REGISTRY.register()
class ImageRestorationModel(MultiStageRestorationModel):
    """The HINet/TLC/NAFNet releases' model name, so their option files run unchanged.

    Same behaviour as ``MultiStageRestorationModel`` except that gradient clipping defaults to on
    (max-norm 0.01), as in the releases.
    """

    default_grad_clip = True


@MODEL_REGISTRY.register()
class ImageCleanModel(ImageRestorationModel):
    """The Restormer release's model name (its option files say ``model_type: ImageCleanModel``); the same model,
    with gradient clipping on by default as there (``train.use_grad_clip``, max-norm 0.01)."""
