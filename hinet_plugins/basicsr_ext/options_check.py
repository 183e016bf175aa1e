"""Checks of an option file before basicsr builds anything, so user mistakes read as one clear sentence.

Every message names the option file and the key (``datasets.train.dataroot_gt``, ``network_g.type``, ...) and
says what was expected. Cheap checks only: file existence, registry names, LMDB ``meta_info.txt`` (pair keys,
image sizes vs ``gt_size``; every listed key present in the database) and, for disk folders, image headers.
Image channels: basicsr decodes every image as 3-channel colour, so grayscale or RGBA pairs train (gray
replicated, alpha dropped) with a warning; a grayscale image paired with a colour one is an error.
"""
import os
import warnings

import torch
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from ..errors import ConfigError
from ..utils.images import IMG_EXTS, image_header

PADDING_DATASETS = ('PairedImageDataset_SIDD', 'Dataset_PairedImage')  # reflect-pad pairs smaller than gt_size


def check_num_gpu(raw_opt, path):
    """``num_gpu: auto`` -> CPU with a warning when no GPU; more GPUs than present -> ConfigError."""
    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    value = raw_opt.get('num_gpu', 'auto')
    if value == 'auto':
        if present == 0:
            warnings.warn(f"{path}: num_gpu is 'auto' and no GPU is present: training on the CPU", stacklevel=2)
        return
    if not isinstance(value, int) or value < 0:
        raise ConfigError(f"{path}: num_gpu must be 'auto' or a non-negative integer, got {value!r}")
    if value > present:
        raise ConfigError(f'{path}: num_gpu is {value} but {present} GPU(s) are present; set num_gpu: 0 for the '
                          "CPU or 'auto' to use what is there")


def _check_registered(registry, kind, type_name, key, path):
    if type_name is None:
        raise ConfigError(f'{path}: {key} is missing')
    if type_name not in registry:
        names = ', '.join(sorted(name for name, _ in registry))
        raise ConfigError(f"{path}: {key} '{type_name}' is not a registered {kind}. Registered: {names}")


def loss_specs(train_opt: dict):
    """(where, spec) for each loss spec of ``train``: every ``*_opt`` section and each item of a ``train.losses``
    or ``train.<key>_opt`` list with a ``type`` (``where`` like ``train.pixel_opt`` or ``train.losses[1]``)."""
    for key, value in train_opt.items():
        if key.endswith('_opt') or key == 'losses':
            specs = value if isinstance(value, list) else [value]
            for i, spec in enumerate(specs):
                if isinstance(spec, dict) and 'type' in spec:
                    yield f'train.{key}' + (f'[{i}]' if isinstance(value, list) else ''), spec


def check_types(opt: dict, path: str) -> None:
    _check_registered(MODEL_REGISTRY, 'model', opt.get('model_type', 'SRModel'), 'model_type', path)
    for net_key in ('network_g', 'network_d'):
        if net_key in opt:
            _check_registered(ARCH_REGISTRY, 'architecture', (opt[net_key] or {}).get('type'),
                              f'{net_key}.type', path)
    for where, spec in loss_specs(opt.get('train') or {}):
        _check_registered(LOSS_REGISTRY, 'loss', spec['type'], f'{where}.type', path)
        own_check = getattr(LOSS_REGISTRY.get(spec['type']), 'check_options', None)
        if own_check is not None:  # a loss may check its own options (e.g. a local weights file): ValueError
            try:
                own_check(spec)
            except ValueError as err:
                raise ConfigError(f'{path}: {where}.{err}') from None
    for phase, ds in (opt.get('datasets') or {}).items():
        _check_registered(DATASET_REGISTRY, 'dataset', (ds or {}).get('type'), f'datasets.{phase}.type', path)
    for name, metric in ((opt.get('val') or {}).get('metrics') or {}).items():
        _check_registered(METRIC_REGISTRY, 'metric', (metric or {}).get('type'), f'val.metrics.{name}.type', path)


def _read_meta_info(lmdb_path):
    meta = os.path.join(lmdb_path, 'meta_info.txt')
    if not os.path.isfile(meta):
        raise ConfigError(f"LMDB '{lmdb_path}' has no meta_info.txt (basicsr's LMDB writer creates it)")
    shapes = {}
    with open(meta) as f:
        for n, line in enumerate(f, 1):
            parts = line.split(' ')
            if len(parts) < 2:
                raise ConfigError(f"{meta}: line {n} is malformed, expected '<key>.png (h,w,c) <level>'")
            key = parts[0].split('.')[0]
            try:
                shapes[key] = tuple(int(v) for v in parts[1].strip('()').split(','))
            except ValueError:
                raise ConfigError(f"{meta}: line {n} has no '(h,w,c)' image shape") from None
    return shapes


def _folder_shapes(folder):
    return {os.path.splitext(name)[0]: image_header(os.path.join(folder, name))
            for name in sorted(os.listdir(folder)) if name.lower().endswith(IMG_EXTS)}


def _check_lmdb_keys(lmdb_path, meta_keys):
    """Every key of meta_info.txt must be in the database (basicsr would otherwise fail mid-training)."""
    import lmdb
    try:
        env = lmdb.open(lmdb_path, readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as err:
        raise ConfigError(f"LMDB '{lmdb_path}' cannot be opened: {err}") from None
    with env.begin(write=False) as txn:
        stored = {k.decode('ascii', 'replace') for k in txn.cursor().iternext(keys=True, values=False)}
    env.close()
    missing = sorted(set(meta_keys) - stored)
    if missing:
        raise ConfigError(f"LMDB '{lmdb_path}': meta_info.txt lists {len(missing)} key(s) that are not in the "
                          f"database, e.g. {missing[:3]} (keys must not contain '.'; rebuild the LMDB)")


def _check_channels(where, gt, lq):
    """basicsr decodes every image as 3-channel BGR: gray is replicated, alpha dropped. Gray vs colour = error."""
    for key in sorted(gt):
        cg, cl = (gt[key][2] if len(gt[key]) > 2 else 3), (lq[key][2] if len(lq[key]) > 2 else 3)
        if (cg <= 2) != (cl <= 2):
            raise ConfigError(f"{where}: pair '{key}' has a {'grayscale' if cg <= 2 else 'colour'} GT but a "
                              f"{'grayscale' if cl <= 2 else 'colour'} LQ image; convert both to RGB")
    for kind, test in (('are grayscale', lambda c: c <= 2), ('have an alpha channel', lambda c: c in (2, 4))):
        odd = [k for k in sorted(gt) if any(len(s[k]) > 2 and test(s[k][2]) for s in (gt, lq))]
        if odd:
            warnings.warn(f"{where}: {len(odd)} image pair(s) {kind}, e.g. '{odd[0]}'; basicsr reads every "
                          'image as 3-channel colour (gray is replicated, alpha is dropped, not composited)',
                          stacklevel=3)


def check_dataset(name: str, ds: dict, path: str, scale: int = 1) -> None:
    where = f'{path}: datasets.{name}'
    own_check = getattr(DATASET_REGISTRY.get(ds['type']) if ds.get('type') in DATASET_REGISTRY else None,
                        'check_options', None)
    if own_check is not None:  # a dataset with other roots than a GT/LQ pair checks its own options
        return own_check(ds, where)
    backend = (ds.get('io_backend') or {}).get('type', 'disk')
    roots = {k: ds.get(k) for k in ('dataroot_gt', 'dataroot_lq') if k in ds}
    for key, root in roots.items():
        if root is None:
            raise ConfigError(f'{where}.{key} is empty; expected a folder or .lmdb path')
        if not os.path.exists(root):
            raise ConfigError(f"{where}.{key}: '{root}' does not exist (prepare the data first, see "
                              'scripts/prepare_data.py, or fix the path)')
    if len(roots) != 2 or backend not in ('disk', 'lmdb'):
        return
    if backend == 'lmdb':
        for key, root in roots.items():
            if not root.endswith('.lmdb'):
                raise ConfigError(f"{where}.{key}: io_backend is lmdb but '{root}' does not end in .lmdb")
        gt, lq = _read_meta_info(roots['dataroot_gt']), _read_meta_info(roots['dataroot_lq'])
        _check_lmdb_keys(roots['dataroot_gt'], gt)
        _check_lmdb_keys(roots['dataroot_lq'], lq)
    else:
        if ds.get('meta_info_file') or ds.get('filename_tmpl', '{}') != '{}':
            return
        gt, lq = _folder_shapes(roots['dataroot_gt']), _folder_shapes(roots['dataroot_lq'])
    if not gt:
        raise ConfigError(f"{where}.dataroot_gt: no images in '{roots['dataroot_gt']}'")
    if set(gt) != set(lq):
        only_gt, only_lq = sorted(set(gt) - set(lq))[:5], sorted(set(lq) - set(gt))[:5]
        raise ConfigError(f'{where}: GT and LQ images are not paired by name; only in GT: {only_gt}, '
                          f'only in LQ: {only_lq}')
    for key in sorted(gt):
        (hg, wg), (hl, wl) = gt[key][:2], lq[key][:2]
        if (hg, wg) != (hl * scale, wl * scale):
            raise ConfigError(f"{where}: pair '{key}' has GT size {hg}x{wg} but LQ size {hl}x{wl}"
                              + (f' (scale {scale})' if scale != 1 else '') + '; pairs must have the same size')
    _check_channels(where, gt, lq)
    gt_size = ds.get('gt_size')
    pads_small_images = ds.get('type') in PADDING_DATASETS
    if ds.get('phase', name.split('_')[0]) == 'train' and gt_size and not pads_small_images:
        small = [k for k, s in gt.items() if s[0] < gt_size or s[1] < gt_size]
        if small:
            raise ConfigError(f"{where}.gt_size is {gt_size} but {len(small)} GT image(s) are smaller, e.g. "
                              f"'{small[0]}' is {gt[small[0]][0]}x{gt[small[0]][1]}; lower gt_size or remove them")


def normalize_release_options(opt):
    """Accept the HINet/TLC releases' option files as they are.

    Their BasicSR fork called the horizontal-flip switch ``use_flip``; basicsr 1.4.2's PairedImageDataset reads
    ``use_hflip`` (KeyError otherwise).
    """
    for ds in (opt.get('datasets') or {}).values():
        if isinstance(ds, dict) and 'use_flip' in ds and 'use_hflip' not in ds:
            ds['use_hflip'] = ds['use_flip']


def check_options(opt: dict, path: str) -> None:
    """All checks that need the parsed options (after basicsr's parse_options)."""
    normalize_release_options(opt)
    check_types(opt, path)
    model_cls = MODEL_REGISTRY.get(opt.get('model_type', 'SRModel'))
    if hasattr(model_cls, 'check_options'):  # the model's own options (val.tlc, schedules, ...) checked now
        try:
            model_cls.check_options(opt)
        except ConfigError as err:
            raise ConfigError(f'{path}: {err}') from None
    for name, ds in (opt.get('datasets') or {}).items():
        check_dataset(name, ds, path, scale=opt.get('scale', 1))
    if opt.get('dist') and opt.get('rank', 0) != 0:
        return  # rank 0 reads the checkpoints and sends them (basicsr_ext.resume): other nodes need not have them
    for key in ('pretrain_network_g', 'resume_state'):
        value = (opt.get('path') or {}).get(key)
        if value and not os.path.isfile(value):
            raise ConfigError(f"{path}: path.{key}: '{value}' does not exist")
