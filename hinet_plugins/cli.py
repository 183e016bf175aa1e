"""What the command-line scripts share: an argument parser whose mistakes are the usual one line."""
import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors print ``hinet_plugins: error: <prog>: <message> (see --help)``
    on one line and exit with status 2, as every other user mistake in this package."""

    def error(self, message):
        print(f'hinet_plugins: error: {self.prog}: {message} (see --help)', file=sys.stderr, flush=True)
        sys.exit(2)


def add_model_arguments(parser, tlc_help='test-time local converter'):
    """The options that say which network to build and load (``hinet_plugins.restore.load_network``) and how
    TLC converts it: shared by ``scripts/inference.py`` and ``scripts/export.py``."""
    parser.add_argument('-opt', '--opt', help='option file (network_g, path.pretrain_network_g, val.tlc)')
    parser.add_argument('--arch', help='registered architecture name (overrides network_g.type)')
    parser.add_argument('--arch-opt', action='append', metavar='KEY=VALUE', help='architecture keyword (repeatable)')
    parser.add_argument('--checkpoint', help='weights file (overrides path.pretrain_network_g)')
    parser.add_argument('--param-key', help="key of the state_dict in the checkpoint (default 'params')")
    parser.add_argument('--tlc', action='store_true', help=tlc_help)
    parser.add_argument('--train-size', type=int, help='TLC: training patch size')
    parser.add_argument('--base-size', type=int, help='TLC: base size (default 1.5 x train size)')
    return parser
