"""Training and inference throughput of every registered architecture, with each speed switch on and off.

    python benchmarks/throughput.py                          # CPU defaults: batch 1, 64x64, few repeats
    python benchmarks/throughput.py --batch 8 --size 256     # GPU (the defaults when CUDA is present)
    python benchmarks/throughput.py --archs HINet --switches fp32,bf16,bf16+channels_last+compile
    python benchmarks/throughput.py --presets all --switches fp32,tf32,bf16,fp16,channels_last,compile \
        --time-budget 240                                    # every ArchSpec.configs entry (GPU suite)

What is measured, per architecture at its paper configuration and at 0.5x width, per switch set:
- train: one ``optimize_parameters`` step of ``MultiStageRestorationModel`` built from an options dict (the code
  path of real training: autocast, grad scaler, compile with fallback, checkpointing, PSNR loss, AdamW step);
- fwd: the evaluation forward (``restore`` under ``no_grad`` and the model's ``test_context``);
- peak memory of a step above what was held before it (CUDA: ``max_memory_allocated``; CPU: the process'
  peak resident set ``VmHWM`` after resetting it through ``/proc/self/clear_refs`` and trimming malloc's free
  lists); images/s = batch / fastest step time (best of ``--repeats``: on a shared machine, interference only
  ever adds time); ratios are against the plain fp32 run of the same network.
- "1st s": the first training step (compilation included for ``compile``).
The model compiles only the training forward (``train.compile``); the ``compile`` fwd column compiles the
evaluation network here, to show what compiled inference would give.

Architectures: every class that ``hinet_plugins.archs`` registers (TLC ``*Local`` builders are the same networks
at test time and are skipped). Paper configuration = the first ``ArchSpec.configs`` entry of that type (else
the constructor defaults); 0.5x = a preset of that type labelled "0.5x", else every width argument halved
(``wf``, ``n_feat``, ``*feats``, ``width``, ``dim``, ``num_feat``, ``base_channels``).
``--presets all`` (or label substrings) measures the ``ArchSpec.configs`` entries themselves, each under its
label, read through ``hinet_plugins.utils.complexity.collect_presets``: an architecture file that lands with a
preset list (Restormer, NAFNet, ...) is measured without a change here. ``--width-divisor`` shrinks every width
argument (dry runs).

Precision: on CUDA every switch set runs in IEEE fp32 except where it names ``tf32`` (cuDNN convolutions and
cuBLAS matmuls in TF32; torch's own default is TF32 for convolutions only). TF32 is a CUDA setting: on the CPU
the ``tf32`` row is the fp32 computation again. ``--time-budget S`` measures in the order: ``--first``
configurations and the first configuration of every other architecture, eager switches first, then their
compiled ones, then the remaining configurations likewise, and leaves out (and lists) what would end past S
seconds (estimate: the same configuration's last measurement; for compile, the longest compile measured so far,
``--compile-estimate`` before the first).

Data loading: BasicSR's ``PairedImageDataset`` from a temporary LMDB (built from ``hinet_plugins.demo.data``
crops) with ``gt_size`` = ``--size``, flips and rotations, through basicsr's ``build_dataloader`` with
``--workers`` workers (default: ``datasets.train.num_worker_per_gpu`` of ``--opt``, else min(8, CPUs)); its
images/s is printed next to the fastest training consumption rate. On a CPU-only machine loader and training
compete for the same cores in a real run; here they are measured one after the other.

The measurements themselves live in ``benchmarks/throughput_measure.py``; ``benchmarks/gpu_suite.py`` drives the
functions below (``parse_args``, ``measurement_plan``, ``run_plan``, ``report``) for its throughput table.
"""
import argparse
import gc
import inspect
import os
import re
import sys
import tempfile
import time
import warnings

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import hinet_plugins  # noqa: E402,F401  (compat + registration)
from hinet_plugins import archs  # noqa: E402
from hinet_plugins.errors import ConfigError  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput_measure import (SWITCHES, fp32_precision, io_channels, loader_throughput, measure,  # noqa: E402,F401
                                timed)

WIDTH_ARG = re.compile(r'^(wf|n_feat|width|dim|num_feat|base_channels)$|feats$')


# ------------------------------------------------------------------------------------------------ architectures
def registered_archs():
    return list(archs.specs())


def all_presets():
    """Every configuration of every network's description (``ArchSpec.configs``, via ``utils.complexity``)."""
    from hinet_plugins.utils.complexity import collect_presets
    return [preset for _, preset in collect_presets()]


def scaled_width(name, opt, divisor):
    """``opt`` with every width argument (explicit or constructor default) divided by ``divisor``; None if none."""
    from basicsr.utils.registry import ARCH_REGISTRY
    defaults = {k: p.default for k, p in inspect.signature(ARCH_REGISTRY.get(name).__init__).parameters.items()
                if isinstance(p.default, int) and not isinstance(p.default, bool)}
    full = dict(defaults, **{k: v for k, v in opt.items() if k != 'type'})
    scaled = {k: max(1, v // divisor) for k, v in full.items() if WIDTH_ARG.search(k) and isinstance(v, int)}
    return dict(opt, **scaled) if scaled else None


def half_width(name, opt):
    return scaled_width(name, opt, 2)


def configurations(names):
    """[(label, network options)]: paper configuration and 0.5x width of each architecture."""
    presets = all_presets()
    configs = []
    for name in names:
        own = [p for p in presets if p['opt']['type'] == name]
        paper = dict(own[0]['opt']) if own else {'type': name}
        half = next((dict(p['opt']) for p in own if '0.5x' in p['label']), None) or half_width(name, paper)
        configs.append((f'{name} 1x', paper))
        if half is not None:
            configs.append((f'{name} 0.5x', half))
    return configs


def preset_configurations(names, selectors):
    """[(label, network options)] of the presets of the architectures ``names`` whose label contains one of
    ``selectors`` (case-insensitive; ``['all']``: every preset), in preset order; an architecture without any
    preset is measured at its constructor defaults when ``all`` is asked for."""
    presets = [p for p in all_presets() if p['opt']['type'] in names]
    if selectors == ['all']:
        chosen = presets + [{'label': f'{n} (defaults)', 'opt': {'type': n}}
                            for n in names if not any(p['opt']['type'] == n for p in presets)]
    else:
        missing = [s for s in selectors if not any(s.lower() in p['label'].lower() for p in presets)]
        if missing:
            raise ConfigError(f"--presets: no preset label contains {missing}; labels: "
                              + ', '.join(p['label'] for p in presets))
        chosen = [p for p in presets if any(s.lower() in p['label'].lower() for s in selectors)]
    return [(p['label'], dict(p['opt'])) for p in chosen]


# ------------------------------------------------------------------------------------------------ plan
def measurement_plan(configs, switches, compile_archs, first=()):
    """[(label, network options, switch)] in measuring order, so that a time budget leaves out the least wanted
    measurements: eager switches of the configurations whose label is in ``first``, then of the first
    configuration of every other architecture; the compiled switches (the slowest) of both; then the remaining
    configurations, eager before compiled."""
    seen, tiers = set(), ([], [], [])
    for label, opt in configs:
        tiers[0 if label in first else 1 if opt['type'] not in seen else 2].append((label, opt))
        seen.add(opt['type'])

    def items(tier, compiled):
        return [(label, opt, s) for label, opt in tier for s in switches
                if ('compile' in s) == compiled and (not compiled or opt['type'] in compile_archs)]
    head = tiers[0] + tiers[1]
    return items(head, False) + items(head, True) + items(tiers[2], False) + items(tiers[2], True)


def run_plan(plan, args, device, workdir, log=sys.stderr, on_result=None):
    """{label: {switch: result}} in plan order (``on_result(results)`` after each). Under ``args.time_budget`` a
    measurement is left out (recorded as skipped) when its estimate would end it past the budget: the same
    configuration's last measurement; for compile, the longest compile so far (``args.compile_estimate`` before)."""
    results, last, compile_cost = {}, {}, None
    gc.collect()
    gc.freeze()  # the imports' objects: later collections (before each memory reading) skip them, ~1 s each less
    t0 = time.time()  # the budget counts the measurements, not this one-off collection (~0.5 s on a CPU)
    for label, net_opt, switch in plan:
        rows = results.setdefault(label, {})
        elapsed = time.time() - t0
        estimate = (args.compile_estimate if compile_cost is None else compile_cost) if 'compile' in switch \
            else last.get(label, 0)
        if args.time_budget and elapsed + estimate > args.time_budget:
            rows[switch] = {'skipped': f'not measured: over the {args.time_budget:.0f} s time budget'}
            continue
        print(f'[{elapsed:6.0f}s] {label} {net_opt} {switch}', file=log, flush=True)
        start = time.time()
        try:
            rows[switch] = measure(net_opt, switch, args, device, workdir)
        except ConfigError as err:  # e.g. grad_checkpoint on an architecture that has not opted in
            rows[switch] = {'skipped': str(err).split(' (')[0]}
        spent = time.time() - start
        if 'compile' in switch:
            compile_cost = max(compile_cost or 0.0, spent)
        else:
            last[label] = spent
        if on_result is not None:
            on_result(results)
    return results


# ------------------------------------------------------------------------------------------------ report
def fmt_ratio(value, ref):
    return f'{value / ref:.2f}x' if value == value and ref == ref and ref else '-'


def report(results, switches, args, device):
    """The throughput table (markdown) of ``results``."""
    lines = [f'### Throughput on {device_name(device)}: batch {args.batch}, {args.size}x{args.size}, '
             f'best of {args.repeats} after {args.warmup} warm-up step(s)', '',
             '| network | switch | train ms | train img/s | train speed-up | train peak MB | mem ratio | 1st s '
             '| fwd ms | fwd img/s | fwd speed-up | fwd peak MB | note |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|']
    for label, rows in results.items():
        ref = rows.get('fp32')
        ref = ref if ref and 'train' in ref else None
        reasons = {r.get('skipped') for r in rows.values()}
        if len(reasons) == 1 and None not in reasons:  # nothing of this configuration was measured: one row
            lines.append(f"| {label} | {', '.join(s for s in switches if s in rows)} |" + ' |' * 10
                         + f' {reasons.pop()} |')
            continue
        for switch in switches:
            if switch not in rows:
                continue
            r = rows[switch]
            if 'skipped' in r:
                lines.append(f"| {label} | {switch} |" + ' |' * 10 + f" {r['skipped']} |")
                continue
            tr, fw = r['train'], r.get('fwd', float('nan'))
            mb = r['train_mem'] / 2 ** 20
            fmb = r.get('fwd_mem', float('nan')) / 2 ** 20
            lines.append(
                f"| {label} | {switch} | {tr * 1e3:.0f} | {args.batch / tr:.2f} | "
                f"{fmt_ratio(ref['train'], tr) if ref else '-'} | {mb:.0f} | "
                f"{fmt_ratio(r['train_mem'], ref['train_mem']) if ref else '-'} | {r['first']:.1f} | "
                + (f"{fw * 1e3:.0f} | {args.batch / fw:.2f} | "
                   f"{fmt_ratio(ref.get('fwd', float('nan')), fw) if ref else '-'} | {fmb:.0f}"
                   if fw == fw else '= fp32 (no grads) | | | ')
                + f" | {r['note'].strip()} |")
    return '\n'.join(lines) + '\n'


def loader_report(results, args, workers, rate, count):
    lines = ['### Data loading vs training consumption', '',
             f'BasicSR `PairedImageDataset`, LMDB ({count} crops), gt_size {args.size}, hflip + rot, batch '
             f'{args.batch}, {workers} worker(s): **{rate:.1f} img/s**', '',
             '| network | plain fp32 train img/s | fastest switch | its train img/s | loader / fastest |',
             '|---|---:|---|---:|---:|']
    for label, rows in results.items():
        rows = {s: r for s, r in rows.items() if 'train' in r}
        if 'fp32' not in rows:
            continue
        fastest = min(rows, key=lambda s: rows[s]['train'])
        best = args.batch / rows[fastest]['train']
        lines.append(f"| {label} | {args.batch / rows['fp32']['train']:.2f} | {fastest} | {best:.2f} | "
                     f'{rate / best:.1f}x |')
    return '\n'.join(lines) + '\n'


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({torch.get_num_threads()} threads)'


# ------------------------------------------------------------------------------------------------ command line
def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--device', default='cuda' if cuda else 'cpu', choices=['cpu', 'cuda'])
    p.add_argument('--batch', type=int, default=None, help='default: 8 on CUDA, 1 on CPU')
    p.add_argument('--size', type=int, default=None, help='square patch side; default: 256 on CUDA, 64 on CPU')
    p.add_argument('--repeats', type=int, default=None, help='timed steps (best of); default: 10 CUDA, 3 CPU')
    p.add_argument('--warmup', type=int, default=None, help='untimed steps first; default: 3 CUDA, 1 CPU')
    p.add_argument('--archs', default='all', help='comma-separated registered names, or all')
    p.add_argument('--widths', default='1x,0.5x', help='1x, 0.5x or both (without --presets)')
    p.add_argument('--presets', default=None,
                   help='measure ArchSpec.configs entries instead: all, or comma-separated label substrings')
    p.add_argument('--first', default='',
                   help='comma-separated configuration labels measured first with every switch (--time-budget)')
    p.add_argument('--width-divisor', type=int, default=1, help='divide every width argument by this (dry runs)')
    p.add_argument('--switches', default=None,
                   help="comma-separated; '+' combines (e.g. bf16+channels_last+compile). Default: fp32, bf16, "
                        'fp16 (CUDA), channels_last, grad_checkpoint, compile (+ bf16+channels_last+compile on CUDA)')
    p.add_argument('--compile-archs', default=None,
                   help='architectures measured with compile: all or a comma list. Default: all on CUDA, '
                        'HINetSimple on CPU (the smallest network: inductor spends minutes per network and mode '
                        'compiling on a small CPU)')
    p.add_argument('--compile-backend', default=None, help='torch.compile backend (default: inductor)')
    p.add_argument('--time-budget', type=float, default=None, help='seconds; see the module docstring')
    p.add_argument('--compile-estimate', type=float, default=60.0,
                   help='seconds a compiled measurement is assumed to take before one was measured (--time-budget)')
    p.add_argument('--workers', type=int, default=None, help='data-loader workers (default: --opt, else min(8, CPUs))')
    p.add_argument('--opt', default=None, help='training option file to read num_worker_per_gpu from')
    p.add_argument('--data-images', type=int, default=128, help='images drawn to time the data loader')
    p.add_argument('--no-data', action='store_true', help='skip the data-loading measurement')
    args = p.parse_args(argv)
    on_gpu = args.device == 'cuda'
    args.batch = args.batch or (8 if on_gpu else 1)
    args.size = args.size or (256 if on_gpu else 64)
    args.repeats = args.repeats or (10 if on_gpu else 3)
    args.warmup = max(1, args.warmup or (3 if on_gpu else 1))
    args.switches = (args.switches.split(',') if args.switches else
                     ['fp32', 'bf16'] + (['fp16'] if on_gpu else []) + ['channels_last', 'grad_checkpoint', 'compile']
                     + (['bf16+channels_last+compile'] if on_gpu else []))
    for s in args.switches:
        unknown = [part for part in s.split('+') if part not in SWITCHES]
        if unknown:
            p.error(f'--switches: unknown {unknown}; choose from {sorted(SWITCHES)}')
    if 'fp32' not in args.switches:
        args.switches.insert(0, 'fp32')
    registered = registered_archs()
    args.names = registered if args.archs == 'all' else args.archs.split(',')
    unknown = sorted(set(args.names) - set(registered))
    if unknown:
        p.error(f'--archs: {unknown} not registered; registered: {registered}')
    compile_archs = args.compile_archs or ('all' if on_gpu else 'HINetSimple')
    args.compile_archs = set(args.names) if compile_archs == 'all' else set(compile_archs.split(','))
    if args.width_divisor < 1:
        p.error('--width-divisor: must be >= 1')
    try:
        args.configs = select_configs(args)
    except ConfigError as err:
        p.error(str(err))
    return args


def select_configs(args):
    if args.presets:
        configs = preset_configurations(args.names, args.presets.split(','))
    else:
        widths = args.widths.split(',')
        configs = [(label, opt) for label, opt in configurations(args.names) if label.rsplit(' ', 1)[1] in widths]
    if args.width_divisor > 1:
        configs = [(f'{label} /{args.width_divisor}', scaled_width(opt['type'], opt, args.width_divisor) or opt)
                   for label, opt in configs]
    return configs


def first_labels(args):
    """Labels of the configurations that ``--first`` names (label prefixes, case-insensitive)."""
    return {label for label, _ in args.configs
            if any(f and label.lower().startswith(f.lower()) for f in args.first.split(','))}


def main(argv=None):
    """Measure, print the tables and return them (markdown)."""
    args = parse_args(argv)
    device = torch.device(args.device)
    warnings.filterwarnings('ignore', message='.*TF32.*')
    plan = measurement_plan(args.configs, args.switches, args.compile_archs, first_labels(args))
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix='throughput_') as tmp:
        results = run_plan(plan, args, device, tmp)
        tables = [report(results, args.switches, args, device)]
        if not args.no_data:
            workers = args.workers
            if workers is None and args.opt:
                from hinet_plugins.basicsr_ext import load_yaml
                workers = load_yaml(args.opt)['datasets']['train'].get('num_worker_per_gpu')
            workers = min(8, os.cpu_count() or 1) if workers is None else workers
            rate, count = loader_throughput(args, workers, tmp)
            tables.append(loader_report(results, args, workers, rate, count))
    text = '\n'.join(tables) + (f'\n(total {time.time() - t0:.0f} s; command: python benchmarks/throughput.py '
                                f'{" ".join(sys.argv[1:] if argv is None else argv)})\n')
    print('\n' + text)
    return text


if __name__ == '__main__':
    main()
