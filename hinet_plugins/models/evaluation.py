"""Validation and test of the restoration model: the evaluated network, grids, TLC, metrics and saved images.

``EvaluationMixin`` sits before basicsr's ``SRModel`` in ``MultiStageRestorationModel``'s bases and overrides:

- ``test``: the last stage output of the evaluated net (EMA copy if present), under the evaluation autocast of
  ``amp`` / ``val.amp``. ``val.grids: true`` (+ ``crop_size``, ``crop_overlap``, ``max_minibatch``; the HINet
  release's option names) restores by overlapping crops blended with linear ramps (``utils/tiling.py``), where
  the release averages the overlaps.
- ``validation``: with ``val.tlc: {enabled, train_size, base_size, fast_imp, compare}`` the evaluated net is
  TLC-converted (``hinet_plugins.tlc``) for validation/test only and restored after; ``compare: true`` also
  validates without it (metrics of the TLC pass are logged as dataset ``<name>_tlc``).
- ``nondist_validation``: the releases' ``val.use_image`` (``false``: metrics on the float outputs, not the 8-bit
  images) and ``val.rgb2bgr``; ``val.suffix`` optional.
"""
import os
from typing import Any, ContextManager, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from basicsr.metrics import calculate_metric
from basicsr.utils import get_root_logger, imwrite, tensor2img

from ..errors import ConfigError
from ..utils.tiling import tiled_forward


# the keys of ``val.tlc``: TLC's own (those of ``tlc.convert``: train_size, base_size, fast_imp) and the switches
VAL_TLC_KEYS = ('enabled', 'train_size', 'base_size', 'fast_imp', 'compare')


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _float_image(tensor, rgb2bgr):
    """(1, C, H, W) float tensor in [0, 1] -> (H, W, C) float64 array in [0, 255] (not rounded, not clamped)."""
    img = tensor[0].detach().cpu().double().permute(1, 2, 0).numpy() * 255.0
    return np.ascontiguousarray(img[..., ::-1]) if rgb2bgr and img.shape[2] == 3 else img


class EvaluationMixin:
    # ------------------------------------------------------------------ inference
    def eval_network(self) -> nn.Module:
        """The module that validation/test runs (EMA copy if present, else the bare net)."""
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)

    def restore(self, lq: torch.Tensor, net: Optional[nn.Module] = None) -> torch.Tensor:
        """Forward one batch for evaluation; returns the last stage output (grids if ``val.grids``)."""
        net = net or self.eval_network()
        val_opt = self.opt.get('val') or {}
        if val_opt.get('grids'):
            crop = int(val_opt.get('crop_size', 256))
            return tiled_forward(net, lq, crop, overlap=int(val_opt.get('crop_overlap', crop // 8)),
                                 batch=int(val_opt.get('max_minibatch', 8)))
        return _as_list(net(lq))[-1]

    def test(self) -> None:
        net = self.eval_network()
        was_training = net.training
        net.eval()
        with torch.no_grad(), self.test_context():
            self.output = self.restore(self.lq, net)
        net.train(was_training)

    def test_context(self) -> ContextManager:
        """Context of evaluation forward passes: autocast with ``amp`` / ``val.amp`` (outputs cast back to float)."""
        return self.eval_autocast()

    # ------------------------------------------------------------------ TLC at validation/test

    @staticmethod
    def tlc_options(opt: dict) -> Optional[dict]:
        """``val.tlc`` checked and completed, or None when off. Keys: enabled (default true once the section
        exists), train_size (default datasets.train.gt_size), base_size (default 1.5 x train_size), fast_imp,
        compare (also validate without TLC; the TLC metrics are then logged as dataset '<name>_tlc')."""
        tlc = (opt.get('val') or {}).get('tlc')
        if tlc is None or tlc is False:
            return None
        tlc = {} if tlc is True else tlc
        if not isinstance(tlc, dict):
            raise ConfigError(f'val.tlc must be a mapping with keys {list(VAL_TLC_KEYS)}, '
                              f'got {tlc!r}')
        unknown = sorted(set(tlc) - set(list(VAL_TLC_KEYS)))
        if unknown:
            raise ConfigError(f'val.tlc: unknown key(s) {unknown}; expected {list(VAL_TLC_KEYS)}')
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

    def validation(self, dataloader: DataLoader, current_iter: int, tb_logger: Any, save_img: bool = False) -> None:
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
    def nondist_validation(self, dataloader: DataLoader, current_iter: int, tb_logger: Any, save_img: bool) -> None:
        """basicsr's validation loop with the HINet/DRCNet releases' ``val`` keys:

        - ``use_image`` (default true, as in basicsr and the releases): metrics on the 8-bit images that are saved.
          ``false``: on the float output and GT (x 255, neither rounded nor clamped), which is how the releases'
          SIDD PSNRs were computed (no rounding: a little higher; no clamping: lower where outputs leave [0, 1]).
          The peak is always 1 here; the release's PSNR switches to peak 255 when an output value exceeds 1 (about
          48 dB too high then), so the two agree whenever the output stays <= 1.
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
