"""Turn the official dataset archives, unpacked under ``datasets/``, or your own image pairs into the LMDBs the
option files read.

    python scripts/prepare_data.py sidd    [--root datasets/SIDD]    [--splits train,val]  [--crop 512 --step 384]
    python scripts/prepare_data.py gopro   [--root datasets/GoPro]   [--splits train,test] [--crop 512 --step 256]
    python scripts/prepare_data.py reds    [--root datasets/REDS]    [--splits train,val]  [--crop 512 --step 512]
    python scripts/prepare_data.py rain13k [--root datasets/Rain13k] [--splits train,test] [--sets Test100,Rain100H,..]
    python scripts/prepare_data.py paired  --gt CLEAN_DIR --lq DEGRADED_DIR --name NAME [--root datasets]
                                           [--crop 512 --step 384] [--val-gt DIR --val-lq DIR | --val-count K]

``paired`` pairs the two folders by file name and writes ``<root>/<NAME>/train/{gt,lq}.lmdb`` (crops; ``--crop 0``
keeps whole images) and ``<root>/<NAME>/val/{gt,lq}.lmdb`` (whole images: the --val-* folders, or K pairs held out,
5 % by default); ``options/train/Custom-HINet.yml`` reads ``--name Custom``. Add ``--force`` to rebuild outputs
that already exist. The layouts expected and the outputs written are listed in ``hinet_plugins/data/
official_datasets.py`` and ``paired_folders.py``. Everything is checked first (layout, pairs, sizes, the pixels of
every image): every problem is reported at once (exit status 2) and nothing is written. A dataset's LMDBs are
written together: all of them, or none and no new folder. Finished LMDBs are skipped on re-runs.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's package first

import hinet_plugins  # noqa: E402,F401  (compat before basicsr)
from hinet_plugins.cli import ArgumentParser  # noqa: E402
from hinet_plugins.data import official_datasets  # noqa: E402
from hinet_plugins.data.paired_folders import prepare_paired  # noqa: E402
from hinet_plugins.errors import ConfigError  # noqa: E402

CROPS = {'sidd': (512, 384), 'gopro': (512, 256), 'reds': (512, 512), 'paired': (512, 384)}
SPLITS = {'sidd': 'train,val', 'gopro': 'train,test', 'reds': 'train,val', 'rain13k': 'train,test'}
ROOTS = {'sidd': 'datasets/SIDD', 'gopro': 'datasets/GoPro', 'reds': 'datasets/REDS', 'rain13k': 'datasets/Rain13k',
         'paired': 'datasets'}


def build_parser():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='dataset', required=True)
    for name in (*official_datasets.DATASETS, 'paired'):
        p = sub.add_parser(name, help=f'prepare {name} (default root {ROOTS[name]})')
        p.add_argument('--root', default=ROOTS[name], help='dataset folder holding the unpacked archive' if
                       name != 'paired' else 'the LMDBs go to ROOT/NAME/')
        if name in SPLITS:
            p.add_argument('--splits', default=SPLITS[name], help=f'comma-separated subset of {SPLITS[name]}')
        p.add_argument('--force', action='store_true', help='rebuild outputs that already exist')
        p.add_argument('--no-progress', action='store_true', help='no tqdm progress bars')
        if name in CROPS:
            p.add_argument('--crop', '--crop-size', dest='crop_size', type=int, default=CROPS[name][0],
                           help='training crop size (pixels)' + (', 0 for whole images' if name == 'paired' else ''))
            p.add_argument('--step', type=int, default=CROPS[name][1], help='distance between training crops')
        if name == 'gopro':
            p.add_argument('--blur-folder', default='blur', choices=('blur', 'blur_gamma'),
                           help='GOPRO_Large blurred set (HINet/MPRNet use blur)')
        if name == 'rain13k':
            p.add_argument('--sets', default=','.join(official_datasets.RAIN13K_TEST_SETS), help='test sets')
        if name == 'paired':
            p.add_argument('--gt', required=True, help='folder of ground-truth (clean) images')
            p.add_argument('--lq', required=True, help='folder of degraded inputs, same file names (any extension)')
            p.add_argument('--name', required=True, help='dataset name: the LMDBs go to ROOT/NAME/{train,val}/')
            p.add_argument('--val-gt', help='validation ground truth (instead of holding pairs out)')
            p.add_argument('--val-lq', help='validation inputs, paired with --val-gt by name')
            p.add_argument('--val-count', type=int, help='pairs held out for validation (default 5 %%, 1..20; 0: none)')
    return parser


def _official_kwargs(args):
    splits = tuple(s.strip() for s in args.splits.split(',') if s.strip())
    bad = [s for s in splits if s not in SPLITS[args.dataset].split(',')]
    if bad or not splits:
        raise ConfigError(f'--splits: {bad or splits} not among {SPLITS[args.dataset]}')
    kw = dict(root=args.root.rstrip('/'), splits=splits, force=args.force, progress=not args.no_progress)
    if args.dataset in CROPS:
        if args.crop_size <= 0 or not 0 < args.step <= args.crop_size:
            raise ConfigError(f'--crop must be positive and --step in 1..--crop ({args.crop_size}), got --crop '
                              f'{args.crop_size} --step {args.step}')
        kw.update(crop_size=args.crop_size, step=args.step)
    if args.dataset == 'gopro':
        kw['blur_folder'] = args.blur_folder
    if args.dataset == 'rain13k':
        kw['test_sets'] = tuple(s.strip() for s in args.sets.split(',') if s.strip())
    return kw


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.dataset == 'paired':
            return prepare_paired(args.gt, args.lq, args.name, root=args.root.rstrip('/'), crop_size=args.crop_size,
                                  step=args.step, val_gt=args.val_gt, val_lq=args.val_lq, val_count=args.val_count,
                                  force=args.force, progress=not args.no_progress)
        return official_datasets.DATASETS[args.dataset](**_official_kwargs(args))
    except ConfigError as err:
        print(f'hinet_plugins: error: {err}', file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == '__main__':
    main()
