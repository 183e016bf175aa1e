"""A local web page to restore images with the package's models (needs ``pip install -e '.[webui]'``).

    python scripts/webui.py [--models DIR] [-opt FILE ...] [--host 127.0.0.1 --port 7860] [--device auto|cpu|cuda]

Models offered: the option files given with -opt, the checkpoints under --models, and the option files under
options/test/ whose weights exist (``hinet_plugins.webui.models``). The page listens on --host only (default: this
machine) and never makes a public share link; nothing is fetched at run time. Ctrl+C stops it.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import hinet_plugins  # noqa: E402,F401  (compat + registration)
from hinet_plugins.cli import ArgumentParser  # noqa: E402
from hinet_plugins.errors import ConfigError  # noqa: E402


def build_parser():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', help='folder searched for checkpoints (*.pth, *.pt)')
    parser.add_argument('-opt', '--opt', action='append', default=[], help='option file with weights (repeatable)')
    parser.add_argument('--host', default='127.0.0.1', help='address to listen on (default: this machine only)')
    parser.add_argument('--port', type=int, default=7860)
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    parser.add_argument('--max-megapixels', type=float, default=64, help='larger uploads are refused')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("hinet_plugins: error: the web page needs gradio: pip install -e '.[webui]' (Python >= 3.10)",
              file=sys.stderr)
        sys.exit(2)
    import torch
    from hinet_plugins.webui import RestorePage, find_models
    try:
        if args.device == 'cuda' and not torch.cuda.is_available():
            raise ConfigError('--device cuda: no CUDA GPU is available (use --device cpu)')
        if args.max_megapixels <= 0:
            raise ConfigError(f'--max-megapixels must be positive, got {args.max_megapixels}')
        models, notes = find_models(args.opt, args.models)
        if not models:
            raise ConfigError('no model to offer: give -opt FILE (with existing weights) or --models DIR')
    except ConfigError as err:
        print(f'hinet_plugins: error: {err}', file=sys.stderr, flush=True)
        sys.exit(2)
    for note in notes:
        print(note, flush=True)
    device = args.device if args.device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
    print(f"{len(models)} model(s): {', '.join(m.label for m in models)}; device {device}", flush=True)
    page = RestorePage(models, device, max_pixels=int(args.max_megapixels * 1e6))
    try:
        page.launch(args.host, args.port)
    finally:
        page.close()
    return 0


if __name__ == '__main__':
    main()
