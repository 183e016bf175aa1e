"""Restore an image or a folder of images with any registered model.

    python scripts/inference.py -i noisy.png -o results/ -opt options/test/HINet-SIDD.yml
    python scripts/inference.py -i folder/ -o out/ --arch HINet --arch-opt wf=32 --checkpoint net_g.pth \\
        [--tlc --train-size 256 --base-size 384 [--tlc-fast]] [--tile 512|auto --tile-overlap 32] \\
        [--memory-budget 4GB] [--self-ensemble] [--amp bf16|fp16] [--device cpu|cuda]

Model: ``-opt`` takes ``network_g`` and ``path.pretrain_network_g`` (``param_key_g``, ``strict_load_g``) from an
option file, and its ``val.tlc`` section if there is one; ``--arch`` (+ ``--arch-opt key=value``, YAML values)
and ``--checkpoint`` build one directly and override the option file; ``--checkpoint`` alone reads the
architecture from the weights (``hinet_plugins.archs.detect``; ``--arch-opt`` on top), or hands a checkpoint of
another architecture to spandrel when that optional extra is installed.

    python scripts/inference.py -i photo.png -o out/ --checkpoint net_g_latest.pth

- ``--tlc``: test-time local converter (``hinet_plugins.tlc.convert``): global pooling/normalisation statistics
  become local windows sized ``base_size / train_size`` of each layer's feature map (default base 1.5 x train).
- ``--tile T --tile-overlap O``: images larger than memory are restored in overlapping TxT tiles whose seams are
  blended with linear weights (``hinet_plugins.utils.tiling.tiled_forward``). ``--tile auto``: per image, the
  whole image or the largest tile that fits the memory budget (half the available RAM on the CPU, 90 % of the free
  GPU memory on CUDA, or ``--memory-budget``), from the network's measured memory per pixel
  (``hinet_plugins.restore.autotile``); on a CUDA out-of-memory error the tile is halved and the run goes on.
- ``--self-ensemble``: the x8 test-time augmentation (4 rotations x horizontal flip); each prediction is mapped
  back and the eight are averaged.
- ``--amp bf16|fp16``: autocast of the forward (bf16 on the CPU or a GPU, fp16 on a GPU only).

Everything here is ``hinet_plugins.restore`` (the Python API: ``Restorer.load(...)(image)``); this file only reads
and writes the files.

Images (``hinet_plugins.restore.imagefiles``): grayscale is restored as replicated RGB by a 3-channel net and
saved gray (the mean of the restored channels); RGBA and gray + alpha keep their alpha channel untouched; 16-bit
images are restored at full precision and saved 16-bit; float images (e.g. 32-bit TIFF) are taken as [0, 1] and
refused when a pixel is NaN or infinite; the EXIF orientation is applied (the output shows as the input shows);
any size works (the archs pad). Outputs keep the input file names and are written atomically; an output folder
that would write over an input (also through a symbolic link or '..') is refused. Files that cannot be read are
reported and skipped; the exit status is then 1.
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import hinet_plugins  # noqa: E402,F401  (compat + registration)
from hinet_plugins.errors import ConfigError  # noqa: E402
from hinet_plugins.cli import ArgumentParser, add_model_arguments  # noqa: E402
from hinet_plugins.restore import (IMG_EXTS, Restorer, amp_dtype, check_tile, parse_budget,  # noqa: E402
                                   parse_key_values, read_image, write_image)
from hinet_plugins.restore.autotile import format_bytes  # noqa: E402


def list_inputs(path):
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.lower().endswith(IMG_EXTS)]
        if not files:
            raise ConfigError(f"no images ({', '.join(IMG_EXTS)}) in '{path}'")
        return files
    raise ConfigError(f"input '{path}' does not exist")


def check_output_folder(output, files):
    """The output folder (absolute): not a file, and never one where an input would be written over (compared
    after resolving symbolic links and '..')."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"-o/--output '{output}' is a file; give a folder (created if missing)")
    out_dir = os.path.realpath(output)
    inputs = {os.path.realpath(f) for f in files}
    if any(os.path.realpath(os.path.join(out_dir, os.path.basename(f))) in inputs for f in files):
        raise ConfigError(f"-o/--output '{output}' is the input folder (resolved: '{out_dir}'): the inputs would be "
                          'overwritten; give another folder')
    return out_dir


def pick_device(name):
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise ConfigError('--device cuda: no CUDA GPU is available (use --device cpu)')
    return name


def tile_size(value):
    if value == 'auto':
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels or 'auto', got {value!r}") from None


def build_parser():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-i', '--input', required=True, help='image file or folder')
    parser.add_argument('-o', '--output', required=True, help='output folder (file names are kept)')
    add_model_arguments(parser, 'test-time local converter')
    parser.add_argument('--tlc-fast', action='store_true', help='TLC: fast (sampled-grid) statistics')
    parser.add_argument('--tile', type=tile_size, help="tile size for large images, or 'auto' (fits the memory)")
    parser.add_argument('--memory-budget', metavar='SIZE', help="--tile auto: memory to fit (e.g. 4GB, 512MB); "
                        'default: half the available RAM (CPU), 90%% of the free GPU memory (CUDA)')
    parser.add_argument('--tile-overlap', type=int, default=32, help='overlap of neighbouring tiles (pixels)')
    parser.add_argument('--self-ensemble', action='store_true', help='x8 flip/rotation test-time augmentation')
    parser.add_argument('--amp', choices=('bf16', 'fp16'), help='autocast: bf16 (CPU/GPU) or fp16 (GPU)')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    return parser


def load(args):
    """Everything checked before anything is written: inputs, output folder, device, settings, the model."""
    check_tile(args.tile, args.tile_overlap, names=('--tile', '--tile-overlap'), allow_auto=True)
    parse_budget(args.memory_budget, key='--memory-budget')
    if args.memory_budget and args.tile != 'auto':
        raise ConfigError('--memory-budget is used by --tile auto only; add --tile auto')
    files = list_inputs(args.input)
    out_dir = check_output_folder(args.output, files)
    device = pick_device(args.device)
    amp_dtype(args.amp, device, key='--amp')
    tlc = None
    if args.tlc:
        tlc = {'train_size': args.train_size, 'base_size': args.base_size, 'fast_imp': args.tlc_fast or None}
    restorer = Restorer.load(args.opt, args.arch, parse_key_values(args.arch_opt), args.checkpoint, args.param_key,
                             tlc, device, tile=args.tile, overlap=args.tile_overlap,
                             self_ensemble=args.self_ensemble, amp=args.amp, channel_order='bgr',
                             memory_budget=args.memory_budget)
    return files, out_dir, device, restorer


def main(argv=None):
    """Exits 2 on a usage/model error (one line, nothing written), 1 if some file failed, else returns 0."""
    from tqdm import tqdm
    args = build_parser().parse_args(argv)
    try:
        files, out_dir, device, restorer = load(args)
    except ConfigError as err:
        print(f'hinet_plugins: error: {err}', file=sys.stderr, flush=True)
        sys.exit(2)
    print(f'{restorer.description}; {len(files)} image(s) -> {args.output} on {device}'
          + (f' (amp {args.amp})' if args.amp else ''), flush=True)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        print(f"hinet_plugins: error: -o/--output '{args.output}' cannot be created: {err.strerror or err}",
              file=sys.stderr, flush=True)
        sys.exit(2)
    failed = []
    for path in tqdm(files, unit='img', desc='restore'):
        img = read_image(path)
        if img is None:
            failed.append(path)
            tqdm.write(f"skipped '{path}': not a readable image", file=sys.stderr)
            continue
        try:
            out = restorer(img)
        except (ValueError, RuntimeError) as err:
            failed.append(path)
            tqdm.write(f"skipped '{path}': {err}", file=sys.stderr)
            continue
        plan = restorer.last_plan if restorer.tile == 'auto' else None
        if plan:
            tqdm.write(f"{os.path.basename(path)}: {img.shape[1]}x{img.shape[0]}, "
                       + (f"tile {plan['tile']}" if plan['tile'] else 'whole image')
                       + f" (estimated {format_bytes(plan['estimate'])} of a {format_bytes(plan['budget'])} budget)")
        target = os.path.join(out_dir, os.path.basename(path))
        try:
            write_image(target, out)
        except (ValueError, OSError) as err:
            failed.append(path)
            tqdm.write(f"could not write '{target}': {err}", file=sys.stderr)
    print(f'done: {len(files) - len(failed)} restored, {len(failed)} failed', flush=True)
    if failed:
        sys.exit(1)
    return 0


if __name__ == '__main__':
    main()
