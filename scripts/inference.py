"""Restore an image or a folder of images with any registered model.

    python scripts/inference.py -i noisy.png -o results/ -opt options/test/HINet-SIDD.yml
    python scripts/inference.py -i folder/ -o out/ --arch HINet --arch-opt wf=32 --checkpoint net_g.pth \\
        [--tlc --train-size 256 --base-size 384 [--tlc-fast]] [--tile 512 --tile-overlap 32] [--self-ensemble] \\
        [--device cpu|cuda]

Model: ``-opt`` takes ``network_g`` and ``path.pretrain_network_g`` (``param_key_g``, ``strict_load_g``) from an
option file, and its ``val.tlc`` section if there is one; ``--arch`` (+ ``--arch-opt key=value``, YAML values)
and ``--checkpoint`` build one directly and override the option file.

- ``--tlc``: test-time local converter (``hinet_plugins.tlc.convert``): global pooling/normalisation statistics
  become local windows sized ``base_size / train_size`` of each layer's feature map (default base 1.5 x train).
- ``--tile T --tile-overlap O``: images larger than memory are restored in overlapping TxT tiles whose seams are
  blended with linear weights (``hinet_plugins.utils.tiling.tiled_forward``).
- ``--self-ensemble``: the x8 test-time augmentation (4 rotations x horizontal flip); each prediction is mapped
  back and the eight are averaged.

Images (``cv2.IMREAD_UNCHANGED``): grayscale is restored as replicated RGB by a 3-channel net and saved gray (the
mean of the restored channels); RGBA keeps its alpha channel untouched; 16-bit images are restored at full
precision and saved 16-bit; float images (e.g. 32-bit TIFF) are taken as [0, 1]; any size works (the archs pad).
Outputs keep the input file names. Files that cannot be read are reported and skipped; the exit status is then 1.
"""
import argparse
import os
import sys

import cv2
import numpy as np
import torch
import yaml

import hinet_plugins  # noqa: F401  (compat + registration)
from hinet_plugins.errors import ConfigError
from hinet_plugins.utils.checkpoint import describe_state_dict_mismatch, unwrap_state_dict
from hinet_plugins.utils.tiling import tiled_forward

IMG_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


# ----------------------------------------------------------------------------------------------------- model
def parse_arch_opts(items):
    out = {}
    for item in items or []:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ConfigError(f"--arch-opt expects key=value, got '{item}'")
        out[key.strip()] = yaml.safe_load(value)
    return out


def model_spec(args):
    """(network options, checkpoint path, param key, strict, tlc options or None) from -opt and the flags."""
    net_opt, ckpt, param_key, strict, tlc = None, None, 'params', True, None
    if args.opt:
        from hinet_plugins.models.restoration_model import MultiStageRestorationModel
        from hinet_plugins.options_check import load_yaml
        opt = load_yaml(args.opt)
        if not isinstance(opt.get('network_g'), dict):
            raise ConfigError(f'{args.opt}: network_g is missing')
        net_opt = dict(opt['network_g'])
        path = opt.get('path') or {}
        ckpt, param_key = path.get('pretrain_network_g'), path.get('param_key_g', 'params')
        strict = path.get('strict_load_g', True)
        tlc = MultiStageRestorationModel.tlc_options(opt)
    if args.arch:
        net_opt = {'type': args.arch} if net_opt is None or net_opt.get('type') != args.arch else net_opt
    if net_opt is None:
        raise ConfigError('give the model: -opt OPTIONS.yml or --arch NAME (+ --checkpoint)')
    net_opt.update(parse_arch_opts(args.arch_opt))
    ckpt = args.checkpoint or ckpt
    if args.param_key:
        param_key = args.param_key
    if args.tlc:
        train_size = args.train_size or (tlc or {}).get('train_size')
        if not train_size:
            raise ConfigError('--tlc needs --train-size (the training patch size)')
        tlc = {'train_size': train_size, 'base_size': args.base_size or (tlc or {}).get('base_size'),
               'fast_imp': args.tlc_fast or (tlc or {}).get('fast_imp', False)}
    return net_opt, ckpt, param_key, strict, tlc


def load_model(args, device):
    """The network in eval mode on ``device`` (weights loaded, TLC applied), and a one-line description."""
    from basicsr.archs import build_network
    from basicsr.utils.registry import ARCH_REGISTRY
    net_opt, ckpt, param_key, strict, tlc = model_spec(args)
    if net_opt.get('type') not in ARCH_REGISTRY:
        names = ', '.join(sorted(name for name, _ in ARCH_REGISTRY))
        raise ConfigError(f"network type '{net_opt.get('type')}' is not registered. Registered: {names}")
    try:
        net = build_network(dict(net_opt))
    except TypeError as err:
        raise ConfigError(f"cannot build {net_opt['type']} with {net_opt}: {err}") from None
    if not ckpt:
        raise ConfigError('no checkpoint: give --checkpoint or path.pretrain_network_g in the option file')
    if not os.path.isfile(ckpt):
        raise ConfigError(f"checkpoint '{ckpt}' does not exist")
    try:
        loaded = torch.load(ckpt, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"checkpoint '{ckpt}' cannot be loaded: {err}") from None
    state = unwrap_state_dict(loaded, param_key)
    try:
        net.load_state_dict(state, strict=strict)
    except RuntimeError:
        raise ConfigError(f"checkpoint '{ckpt}' does not fit {net_opt['type']} {net_opt}: "
                          + describe_state_dict_mismatch(net.state_dict(), loaded, param_key, ignored_prefixes=getattr(
                              net, 'ignored_checkpoint_prefixes', ()))) from None
    net.eval().to(device)
    desc = f"{net_opt['type']} from '{ckpt}'"
    if tlc:
        from hinet_plugins.tlc import convert
        conversion = convert(net, tlc['train_size'], tlc.get('base_size'), bool(tlc.get('fast_imp')), warn=False)
        desc += '; ' + conversion.summary().splitlines()[0]
    return net, desc


def input_channels(net):
    conv = next((m for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


# ----------------------------------------------------------------------------------------------------- restore
def _ensemble_transforms():
    """(forward, inverse) pairs of the 8 dihedral transforms of the image plane."""
    def make(k, flip):
        def fwd(t):
            return torch.rot90(t.flip(-1) if flip else t, k, (-2, -1))

        def inv(t):
            t = torch.rot90(t, -k, (-2, -1))
            return t.flip(-1) if flip else t
        return fwd, inv
    return [make(k, flip) for k in range(4) for flip in (False, True)]


def restore_tensor(net, x, tile=None, overlap=32, self_ensemble=False):
    """N x C x H x W in [0, 1] -> last stage output, optionally tiled and/or x8 self-ensembled."""
    def forward(t):
        if tile:
            return tiled_forward(net, t, tile, overlap=overlap)
        out = net(t)
        return out[-1] if isinstance(out, (list, tuple)) else out

    with torch.no_grad():
        if not self_ensemble:
            return forward(x)
        return sum(inv(forward(fwd(x))) for fwd, inv in _ensemble_transforms()) / 8


def restore_image(net, img, device='cpu', **kw):
    """An image as cv2 reads it (gray / BGR / BGRA; uint8, uint16 or float) -> the restored image, same layout."""
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    elif img.dtype.kind == 'f':
        scale = 1.0
    else:
        raise ValueError(f'unsupported pixel type {img.dtype}')
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    alpha = img[..., 3] if img.ndim == 3 and img.shape[2] == 4 else None
    gray = img.ndim == 2
    color = np.repeat(img[..., None], 3, axis=2) if gray else img[..., :3]
    rgb = torch.from_numpy(np.ascontiguousarray(color[..., ::-1].transpose(2, 0, 1)).astype(np.float32) / scale)
    n_in = input_channels(net)
    if n_in == 3:
        x = rgb[None]
    elif n_in == 1:  # a grayscale net: gray as it is, colour channel by channel
        x = rgb[:1, None] if gray else rgb[:, None]
    else:
        raise ValueError(f'the network takes {n_in} input channels; only 1 or 3 are supported here')
    y = restore_tensor(net, x.to(device), **kw).float().clamp_(0, 1).cpu()
    y = y[0] if n_in == 3 else y[:, 0]
    if gray:
        out = y.mean(0).numpy()
    else:
        out = y.numpy().transpose(1, 2, 0)[..., ::-1]
    out = np.round(out * scale).astype(img.dtype) if scale > 1 else out.astype(img.dtype)
    if alpha is not None:
        out = np.concatenate([out, alpha[..., None]], axis=2)
    return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------------------------------- CLI
def list_inputs(path):
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.lower().endswith(IMG_EXTS)]
        if not files:
            raise ConfigError(f"no images ({', '.join(IMG_EXTS)}) in '{path}'")
        return files
    raise ConfigError(f"input '{path}' does not exist")


def pick_device(name):
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise ConfigError('--device cuda: no CUDA GPU is available (use --device cpu)')
    return name


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-i', '--input', required=True, help='image file or folder')
    parser.add_argument('-o', '--output', required=True, help='output folder (file names are kept)')
    parser.add_argument('-opt', '--opt', help='option file (network_g, path.pretrain_network_g, val.tlc)')
    parser.add_argument('--arch', help='registered architecture name (overrides network_g.type)')
    parser.add_argument('--arch-opt', action='append', metavar='KEY=VALUE', help='architecture keyword (repeatable)')
    parser.add_argument('--checkpoint', help='weights file (overrides path.pretrain_network_g)')
    parser.add_argument('--param-key', help="key of the state_dict in the checkpoint (default 'params')")
    parser.add_argument('--tlc', action='store_true', help='test-time local converter')
    parser.add_argument('--train-size', type=int, help='TLC: training patch size')
    parser.add_argument('--base-size', type=int, help='TLC: base size (default 1.5 x train size)')
    parser.add_argument('--tlc-fast', action='store_true', help='TLC: fast (sampled-grid) statistics')
    parser.add_argument('--tile', type=int, help='tile size for large images')
    parser.add_argument('--tile-overlap', type=int, default=32, help='overlap of neighbouring tiles (pixels)')
    parser.add_argument('--self-ensemble', action='store_true', help='x8 flip/rotation test-time augmentation')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    return parser


def main(argv=None):
    """Returns the number of files that failed; exits 2 on a usage/model error, 1 if some file failed."""
    from tqdm import tqdm
    args = build_parser().parse_args(argv)
    try:
        if args.tile is not None and not 0 <= args.tile_overlap < args.tile:
            raise ConfigError(f'--tile-overlap must be in 0..--tile - 1 ({args.tile - 1}), got {args.tile_overlap}')
        files = list_inputs(args.input)
        out_dir = os.path.abspath(args.output)
        if any(os.path.dirname(os.path.abspath(f)) == out_dir for f in files):
            raise ConfigError(f"output folder '{args.output}' is the input folder: the inputs would be overwritten")
        device = pick_device(args.device)
        net, desc = load_model(args, device)
    except ConfigError as err:
        print(f'inference: error: {err}', file=sys.stderr, flush=True)
        sys.exit(2)
    print(f'{desc}; {len(files)} image(s) -> {args.output} on {device}', flush=True)
    os.makedirs(out_dir, exist_ok=True)
    failed = []
    for path in tqdm(files, unit='img', desc='restore'):
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            failed.append(path)
            tqdm.write(f"skipped '{path}': not a readable image", file=sys.stderr)
            continue
        try:
            out = restore_image(net, img, device, tile=args.tile, overlap=args.tile_overlap,
                                self_ensemble=args.self_ensemble)
        except (ValueError, RuntimeError) as err:
            failed.append(path)
            tqdm.write(f"skipped '{path}': {err}", file=sys.stderr)
            continue
        target = os.path.join(out_dir, os.path.basename(path))
        if not cv2.imwrite(target, out):
            failed.append(path)
            tqdm.write(f"could not write '{target}'", file=sys.stderr)
    print(f'done: {len(files) - len(failed)} restored, {len(failed)} failed', flush=True)
    if failed:
        sys.exit(1)
    return 0


if __name__ == '__main__':
    main()
