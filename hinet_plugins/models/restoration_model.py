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
  (``hinet_plugins.resume``).
- ``train.loss_on_clamped: true`` computes the losses on outputs clamped to [0, 1] (MPRNet's denoising recipe).
- Gradient clipping: ``train.use_grad_clip`` (max-norm ``train.grad_clip_norm``, 0.01 as in the HINet release).
- A non-finite loss stops training with a clear message; checkpoints are written atomically (temporary file,
  then rename), so an interrupted save never replaces the last good checkpoint.
- Validation/test: metrics and images use the last stage. ``val.grids: true`` (+ ``crop_size``, ``crop_overlap``,
  ``max_minibatch``) restores large images by overlapping crops, as the HINet release does.
  ``val.tlc: {enabled, train_size, base_size, fast_imp, compare}`` applies TLC (``hinet_plugins.tlc``) to the
  evaluated net for validation/test only; ``compare: true`` also logs the metrics without it.
- Schedulers (``models/lr_schedulers.py``): basicsr's plus ``TrueCosineAnnealingLR`` (the HINet release's name for
  torch's cosine annealing) and Restormer's ``CosineAnnealingRestartCyclicLR``.
- Per-iteration batch transforms (``models/batch_augment.py``): Restormer's progressive patch/batch sizes
  (``datasets.train.gt_sizes / mini_batch_sizes / iters``) and mixup (``train.mixing_augs``), for every arch.
- Speed switches (``models/speed.py``, all off by default): ``amp: bf16|fp16`` (top level; ``val.amp`` overrides it
  for validation/test), ``channels_last: true`` (top level), ``train.compile: true|{backend, mode, ...}``,
  ``train.grad_checkpoint: true``. Top-level keys act in training and test; ``train.*`` ones in training only.
"""
import os
from collections import OrderedDict

import numpy as np
import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.models.sr_model import SRModel
from basicsr.metrics import calculate_metric
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import get_dist_info, master_only
from basicsr.utils.registry import MODEL_REGISTRY
from torch.nn.parallel import DataParallel, DistributedDataParallel

from ..errors import ConfigError, TrainingDivergedError
from ..utils.checkpoint import atomic_torch_save, describe_state_dict_mismatch, rng_states
from ..utils.tiling import tiled_forward
from .batch_augment import build_batch_transforms
from .lr_schedulers import SCHEDULERS, build_scheduler
from .speed import SpeedSwitchesMixin, to_float

OPTIMIZERS = {
    'Adam': torch.optim.Adam, 'AdamW': torch.optim.AdamW, 'Adamax': torch.optim.Adamax, 'SGD': torch.optim.SGD,
    'RMSprop': torch.optim.RMSprop,
}


def _float_image(tensor, rgb2bgr):
    """(1, C, H, W) float tensor in [0, 1] -> (H, W, C) float64 array in [0, 255] (not rounded, not clamped)."""
    img = tensor[0].detach().cpu().double().permute(1, 2, 0).numpy() * 255.0
    return np.ascontiguousarray(img[..., ::-1]) if rgb2bgr and img.shape[2] == 3 else img


def accumulate_grad_batches(train_opt):
    """``train.accumulate_grad_batches`` (default 1), checked."""
    n = train_opt.get('accumulate_grad_batches', 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f'train.accumulate_grad_batches: expected a positive integer, got {n!r}')
    return n


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


class DeviceSafeSRModel(SRModel):
    """basicsr's ``SRModel`` whose ``model_to_device`` also works on the CPU under DDP.

    Upstream's ``BaseModel.model_to_device`` passes ``device_ids=[torch.cuda.current_device()]`` to
    DistributedDataParallel even for a CPU model (gloo), which fails without CUDA. Here ``device_ids`` is given only
    on CUDA. Sits below ``SpeedSwitchesMixin`` in the MRO, so the speed switches prepare the net before wrapping.
    Drop when upstream omits ``device_ids`` for CPU models.
    """

    def model_to_device(self, net):
        net = net.to(self.device)
        if self.opt['dist']:
            device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            net = DistributedDataParallel(
                net, device_ids=device_ids, find_unused_parameters=self.opt.get('find_unused_parameters', False))
        elif self.opt['num_gpu'] > 1:
            net = DataParallel(net)
        return net


@MODEL_REGISTRY.register()
class MultiStageRestorationModel(SpeedSwitchesMixin, DeviceSafeSRModel):
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
        for optimizer in self.optimizers:
            self.schedulers.append(build_scheduler(optimizer, self.opt['train']['scheduler']))

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
        for transform in self.batch_transforms:
            self.lq, self.gt = transform(current_iter, self.lq, self.gt)
        self.optimizer_g.zero_grad(set_to_none=True)
        l_total, loss_dict = self.with_compile_fallback(lambda: self._forward_backward(current_iter), self.optimizer_g)
        self._sync_loss_grads()
        self.optimizer_step(self.optimizer_g, self.net_g.parameters() if self.use_grad_clip else None,
                            self.grad_clip_norm)
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

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

    @classmethod
    def check_options(cls, opt):
        """Checks of this model's own options, run by the launchers before basicsr creates anything."""
        cls.tlc_options(opt)
        if opt.get('is_train'):
            build_batch_transforms(opt)
            accumulate_grad_batches(opt.get('train') or {})
            sched_type = ((opt.get('train') or {}).get('scheduler') or {}).get('type')
            if sched_type not in SCHEDULERS:
                raise ConfigError(f"train.scheduler.type: unknown scheduler '{sched_type}', choose from "
                                  + ', '.join(SCHEDULERS))

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

    # ------------------------------------------------------------------ metrics and saved images
    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """basicsr's validation loop with the HINet/DRCNet releases' ``val`` keys:

        - ``use_image`` (default true, as in basicsr and the releases): metrics on the 8-bit images that are saved.
          ``false``: on the float output and GT (x 255, neither rounded nor clamped), which is how the releases'
          SIDD PSNRs were computed; it reports a higher PSNR than the 8-bit images.
        - ``rgb2bgr`` (default true): channel order of the images written and of the metric inputs (it matters
          for ``test_y_channel``). We apply it to the float inputs too; the release passes its RGB float tensors
          as they are.
        - ``suffix``: file names in test as basicsr (``<img>_<suffix>.png``; ``suffix: ~`` -> ``<img>_<name>.png``);
          when the key is absent, ``<img>.png`` as in the releases (basicsr would stop with ``KeyError``).
        """
        val_opt = self.opt['val']
        rgb2bgr, use_image = val_opt.get('rgb2bgr', True), val_opt.get('use_image', True)
        dataset_name = dataloader.dataset.opt['name']
        metrics = val_opt.get('metrics')
        if metrics is not None:
            self._initialize_best_metric_results(dataset_name)
            self.metric_results = {name: 0 for name in metrics}
        count = 0
        for count, val_data in enumerate(dataloader, 1):
            img_name = os.path.splitext(os.path.basename(val_data['lq_path'][0]))[0]
            self.feed_data(val_data)
            self.test()
            visuals = self.get_current_visuals()
            floats = None  # computed before tensor2img, which clamps its input in place
            if not use_image and metrics is not None and 'gt' in visuals:
                floats = {k: _float_image(visuals[v], rgb2bgr) for k, v in (('img', 'result'), ('img2', 'gt'))}
            images = {'img': tensor2img([visuals['result']], rgb2bgr=rgb2bgr)}
            if 'gt' in visuals:
                images['img2'] = tensor2img([visuals['gt']], rgb2bgr=rgb2bgr)
                del self.gt
            del self.lq, self.output
            torch.cuda.empty_cache()  # as upstream (a no-op without CUDA)
            if save_img:
                imwrite(images['img'], self._visualization_path(dataset_name, img_name, current_iter))
            if metrics is not None:
                for name, metric_opt in metrics.items():
                    self.metric_results[name] += calculate_metric(floats or images, metric_opt)
        if metrics is not None and count:
            for name in self.metric_results:
                self.metric_results[name] /= count
                self._update_best_metric_result(dataset_name, name, self.metric_results[name], current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)

    def _visualization_path(self, dataset_name, img_name, current_iter):
        root, val_opt = self.opt['path']['visualization'], self.opt['val']
        if self.opt['is_train']:
            return os.path.join(root, img_name, f'{img_name}_{current_iter}.png')
        if 'suffix' not in val_opt:
            return os.path.join(root, dataset_name, f'{img_name}.png')
        return os.path.join(root, dataset_name, f"{img_name}_{val_opt['suffix'] or self.opt['name']}.png")

    # ------------------------------------------------------------------ checkpoints
    def load_network(self, net, load_path, strict=True, param_key='params'):
        """basicsr's loading, plus: the releases' ``path.param_key`` (TLC/NAFNet's name for ``param_key_g``, used
        when ``param_key_g`` is not set; ``~`` = the file is the state_dict itself) and one-line errors naming the
        file: not a readable checkpoint, no entry under the chosen key (with the file's top-level keys), or keys and
        shapes that do not fit ``network_g``."""
        path_opt = self.opt.get('path') or {}
        if param_key == 'params' and 'param_key_g' not in path_opt and 'param_key' in path_opt:
            param_key = path_opt['param_key']
        if not os.path.isfile(load_path):
            raise ConfigError(f"path.pretrain_network_g: checkpoint '{load_path}' does not exist")
        try:
            super().load_network(net, load_path, strict, param_key)
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


@MODEL_REGISTRY.register()
class ImageCleanModel(ImageRestorationModel):
    """The Restormer release's model name (its option files say ``model_type: ImageCleanModel``); the same model,
    with gradient clipping on by default as there (``train.use_grad_clip``, max-norm 0.01)."""
