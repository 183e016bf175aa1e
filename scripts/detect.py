"""Detection from a state dict: what a checkpoint holds, or the round-trip table of every release configuration.

    python scripts/detect.py --checkpoint net_g.pth          # network_g (YAML) + what the weights cannot show
    python scripts/detect.py [--only LABEL] [--size 48] [--random 2]   # round-trip table (markdown)

Table: for every configuration of every described network (``hinet_plugins.archs.specs()``, ``ArchSpec.configs``;
``--random N`` adds N random small configurations per network, ``ArchSpec.sample``): the network with random
weights, its state dict through ``hinet_plugins.archs.detect``, the detected network loaded strictly, and the
largest difference of any output on one (size+1) x (size+3) image (0 = exact). Release-size networks are built
on the CPU (seconds each; ``--only`` narrows the list).
"""
import argparse
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import yaml  # noqa: E402

import hinet_plugins  # noqa: E402,F401  (compat + registration)
from hinet_plugins.archs import detection, specs  # noqa: E402
from hinet_plugins.archs.autodetect import round_trip  # noqa: E402
from hinet_plugins.cli import ArgumentParser  # noqa: E402
from hinet_plugins.errors import ConfigError  # noqa: E402
from hinet_plugins.restore import read_checkpoint  # noqa: E402


def configurations(only=None, n_random=0):
    """[(label, spec, kwargs)]: every described configuration, then ``n_random`` random ones per network."""
    rows = [(c.label, s, c.kwargs) for s in specs().values() for c in s.configs]
    for name, s in specs().items():
        rng = random.Random(name)
        rows += [(f'{name} random #{i + 1}', s, s.sample(rng)) for i in range(n_random)]
    return [r for r in rows if not only or only.lower() in r[0].lower()]


def table(rows, size, log=print):
    results = []
    log('| configuration | parameters | detected arguments | max abs output difference |')
    log('|---|---:|---|---:|')
    for label, spec, kwargs in rows:
        start = time.time()
        r = round_trip(spec, kwargs, size=size)
        args = ', '.join(f'{k}={v}' for k, v in r['detection'].network_g.items() if k != 'type')
        log(f"| {label} | {r['params']:,} | {r['detection'].network_g['type']}({args}) | {r['max_diff']:.1e} |")
        print(f'  {label}: {time.time() - start:.1f} s', file=sys.stderr)
        results.append({'label': label, 'params': r['params'], 'network_g': r['detection'].network_g,
                        'max_diff': r['max_diff']})
    return results


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', help='print the detected network_g of this checkpoint file')
    parser.add_argument('--param-key', help="key of the state_dict in the checkpoint (default: 'params', ...)")
    parser.add_argument('--only', help='table: configurations whose label contains this (case-insensitive)')
    parser.add_argument('--size', type=int, default=48, help='table: input size (default 48)')
    parser.add_argument('--random', type=int, default=0, help='table: random configurations per network')
    args = parser.parse_args(argv)
    try:
        if args.checkpoint:
            found = detection(read_checkpoint(args.checkpoint), source=f"checkpoint '{args.checkpoint}'")
            print(yaml.safe_dump({'network_g': found.network_g}, sort_keys=False), end='')
            for key, why in found.assumed.items():
                print(f'# not in the weights, assumed: {key} {why}')
            return found
        rows = configurations(args.only, args.random)
        if not rows:
            raise ConfigError(f"--only {args.only}: no configuration label contains it")
        return table(rows, args.size)
    except ConfigError as err:
        print(f'hinet_plugins: error: {err}', file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == '__main__':
    main()
