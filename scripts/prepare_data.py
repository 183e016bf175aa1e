"""Turn the official dataset archives, unpacked under ``datasets/``, into the LMDBs the option files read.

    python scripts/prepare_data.py sidd    [--root datasets/SIDD]    [--splits train,val]  [--crop-size 512 --step 384]
    python scripts/prepare_data.py gopro   [--root datasets/GoPro]   [--splits train,test] [--crop-size 512 --step 256]
    python scripts/prepare_data.py reds    [--root datasets/REDS]    [--splits train,val]  [--crop-size 512 --step 512]
    python scripts/prepare_data.py rain13k [--root datasets/Rain13k] [--splits train,test] [--sets Test100,Rain100H,..]

Add ``--force`` to rebuild outputs that already exist. The layouts expected and the outputs written are listed in
``hinet_plugins/data/prepare.py``. The layout is checked first: every problem is reported at once (exit status 2)
and nothing is written. Finished LMDBs are skipped on re-runs (same sources, same settings).
"""
import argparse
import sys

import hinet_plugins  # noqa: F401  (compat before basicsr)
from hinet_plugins.data import prepare
from hinet_plugins.errors import ConfigError

CROPS = {'sidd': (512, 384), 'gopro': (512, 256), 'reds': (512, 512)}
SPLITS = {'sidd': 'train,val', 'gopro': 'train,test', 'reds': 'train,val', 'rain13k': 'train,test'}
ROOTS = {'sidd': 'datasets/SIDD', 'gopro': 'datasets/GoPro', 'reds': 'datasets/REDS', 'rain13k': 'datasets/Rain13k'}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='dataset', required=True)
    for name in prepare.DATASETS:
        p = sub.add_parser(name, help=f'prepare {name} (default root {ROOTS[name]})')
        p.add_argument('--root', default=ROOTS[name], help='dataset folder holding the unpacked archive')
        p.add_argument('--splits', default=SPLITS[name], help=f'comma-separated subset of {SPLITS[name]}')
        p.add_argument('--force', action='store_true', help='rebuild outputs that already exist')
        p.add_argument('--no-progress', action='store_true', help='no tqdm progress bars')
        if name in CROPS:
            p.add_argument('--crop-size', type=int, default=CROPS[name][0], help='training crop size (pixels)')
            p.add_argument('--step', type=int, default=CROPS[name][1], help='distance between training crops')
        if name == 'gopro':
            p.add_argument('--blur-folder', default='blur', choices=('blur', 'blur_gamma'),
                           help='GOPRO_Large blurred set (HINet/MPRNet use blur)')
        if name == 'rain13k':
            p.add_argument('--sets', default=','.join(prepare.RAIN13K_TEST_SETS), help='test sets to convert')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    splits = tuple(s.strip() for s in args.splits.split(',') if s.strip())
    try:
        bad = [s for s in splits if s not in SPLITS[args.dataset].split(',')]
        if bad or not splits:
            raise ConfigError(f'--splits: {bad or splits} not among {SPLITS[args.dataset]}')
        kw = dict(root=args.root.rstrip('/'), splits=splits, force=args.force, progress=not args.no_progress)
        if args.dataset in CROPS:
            if not 0 < args.step <= args.crop_size:
                raise ConfigError(f'--step must be in 1..--crop-size ({args.crop_size}), got {args.step}')
            kw.update(crop_size=args.crop_size, step=args.step)
        if args.dataset == 'gopro':
            kw['blur_folder'] = args.blur_folder
        if args.dataset == 'rain13k':
            kw['test_sets'] = tuple(s.strip() for s in args.sets.split(',') if s.strip())
        return prepare.DATASETS[args.dataset](**kw)
    except ConfigError as err:
        print(f'prepare_data: error: {err}', file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == '__main__':
    main()
