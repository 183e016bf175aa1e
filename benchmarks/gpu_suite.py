"""GPU suite: prove the package's CUDA paths and measure them, in one command (start it with gpu_suite.sh).

    bash benchmarks/gpu_suite.sh --out DIR                 # CUDA: about 8 minutes on one GPU (--budget)
    bash benchmarks/gpu_suite.sh --dry-run --out DIR       # CPU, tiny sizes, under a minute: the same code paths

Three parts, in this order; DIR/gpu_suite.md gets one table per part and is rewritten after each measurement, so
a run stopped at a time limit still leaves what it measured:

1. CUDA tests: ``pytest tests -m cuda`` (tests/models/test_cuda.py: fp16 + grad scaler and ``--auto_resume``, bf16,
   channels_last, ``train.compile``, a one-process nccl group through torchrun, TLC on CUDA vs CPU, inference
   with ``--amp fp16``); log and JUnit XML in DIR. Dry run: the tests are collected, not run (they need a GPU).
2. TLC overhead at 720x1280: every ``<Arch>Local`` whose conversion swaps at least one layer, at its paper
   configuration (first ``ArchSpec.configs`` entry), forward without TLC / exact / fast, batch 1, IEEE fp32
   (the paper's RTX 2080 Ti has no TF32), CUDA-synchronised, min over repeats, interleaved: the networks and
   timings come from ``benchmarks/tlc_overhead.py`` (``convert_modes``, ``time_modes``). Printed beside the
   paper's MPRNet figures (TLC paper Appendix, Table A1, 720x1280 on an RTX 2080 Ti: 1.60 s without TLC,
   2.03 s with the naive cumulative-sum TLC, +27 %,
   1.69 s with the strided-sampling speed-up, +5.6 %). Our "exact" is the paper's naive reading (integral images
   over every position), "fast" its optimised one (statistics on a strided grid).
3. Training throughput: ``benchmarks/throughput.py`` over every ``ArchSpec.configs`` entry (batch 8, 256x256;
   fp32, tf32, bf16, fp16, channels_last, compile), HINet 1x and MPRNet deblur first; what does not fit in the
   rest of ``--budget`` is listed as not measured.

The exit status is 1 when a CUDA test failed or a part raised (the table says which), 2 on a usage error.
"""
import argparse
import datetime
import functools
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import hinet_plugins  # noqa: E402,F401  (compat + registration)
from hinet_plugins.cli import ArgumentParser  # noqa: E402
from hinet_plugins.utils.nets import last_output  # noqa: E402

PAPER_TLC = {'none_s': 1.60, 'naive_s': 2.03, 'fast_s': 1.69, 'naive': '+27 %', 'fast': '+5.6 %'}
PAPER_CELL = f"{PAPER_TLC['naive']} / {PAPER_TLC['fast']}"


@functools.lru_cache(maxsize=None)
def load_benchmark(name):
    """A script of benchmarks/ as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f'bench_{name}', os.path.join(REPO, 'benchmarks', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Report:
    """The markdown file: a header and one section per part, rewritten whenever a section changes."""

    def __init__(self, path, header):
        self.path, self.header, self.sections = path, header, {}

    def set(self, key, text):
        self.sections[key] = text.rstrip() + '\n'
        with open(self.path + '.tmp', 'w') as f:
            f.write(self.header + '\n' + '\n'.join(self.sections[k] for k in sorted(self.sections)))
        os.replace(self.path + '.tmp', self.path)


# ------------------------------------------------------------------------------------------------ 1. CUDA tests
def start_cuda_tests(args, log):
    """``pytest tests -m cuda`` (dry run: ``--collect-only``) started in a subprocess; ``cuda_tests`` collects it."""
    cmd = [sys.executable, '-m', 'pytest', 'tests', '-m', 'cuda', '-p', 'no:cacheprovider', '-rA', '-q']
    cmd += ['--collect-only'] if args.dry_run else [f"--junitxml={os.path.join(args.out, 'cuda_tests.xml')}"]
    print(f"[suite] {' '.join(cmd[1:])}", file=log, flush=True)
    return time.time(), subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         env=dict(os.environ, PYTHONUNBUFFERED='1'), start_new_session=True)


def cuda_tests(args, started):
    """(markdown, ok) of the pytest run ``started`` (JUnit XML; dry run: the collected test ids)."""
    start, proc = started
    try:
        output, timed_out = proc.communicate(timeout=args.tests_timeout)[0], False
    except subprocess.TimeoutExpired:  # a hung launch (e.g. a collective that never completes): stop its group
        os.killpg(proc.pid, signal.SIGKILL)
        output, timed_out = proc.communicate()[0], True
    xml = os.path.join(args.out, 'cuda_tests.xml')
    with open(os.path.join(args.out, 'cuda_tests.log'), 'w') as f:
        f.write(output)
    lines = ['| test | outcome | s | detail |', '|---|---|---:|---|']
    if args.dry_run:
        ids = re.findall(r'^(tests/\S+::\S+)$', output, re.M)
        lines += [f'| {i.split("::", 1)[1]} | collected (dry run: not run) | | {i.split("::")[0]} |' for i in ids]
        ok = proc.returncode == 0 and bool(ids)
        summary = f'{len(ids)} CUDA test(s) collected in {time.time() - start:.0f} s (pytest exit {proc.returncode})'
    else:
        counts, ok = {}, proc.returncode == 0
        cases = ET.parse(xml).getroot().iter('testcase') if os.path.isfile(xml) else []
        for case in cases:
            outcome, detail = 'passed', ''
            for tag in ('failure', 'error', 'skipped'):
                node = case.find(tag)
                if node is not None:
                    outcome = {'failure': 'FAILED', 'error': 'ERROR', 'skipped': 'skipped'}[tag]
                    detail = (node.get('message') or '').strip().splitlines()[:1]
                    detail = detail[0][:160].replace('|', '/') if detail else ''
            counts[outcome] = counts.get(outcome, 0) + 1
            lines.append(f"| {case.get('name')} | {outcome} | {float(case.get('time', 0)):.1f} | {detail} |")
        summary = (', '.join(f'{n} {k}' for k, n in sorted(counts.items())) or 'no test ran'
                   ) + f' in {time.time() - start:.0f} s (pytest exit {proc.returncode}; log: cuda_tests.log)'
        ok = ok and bool(counts) and counts.get('skipped', 0) < sum(counts.values())
    if timed_out:
        summary += f'; STOPPED after the {args.tests_timeout:.0f} s limit (--tests-timeout)'
        ok = False
    title = '## 1. CUDA tests (`pytest tests -m cuda`)'
    return f'{title}\n\n' + '\n'.join(lines) + f'\n\n{summary}\n', ok


# ------------------------------------------------------------------------------------------------ 2. TLC overhead
def tlc_networks(width_divisor):
    """[(label, network options)]: the paper configuration of every registered base of an ``<Arch>Local`` name."""
    from basicsr.utils.registry import ARCH_REGISTRY
    from hinet_plugins.archs import specs
    throughput = load_benchmark('throughput')
    presets = throughput.all_presets()
    nets = []
    for base in specs():
        if base not in ARCH_REGISTRY or f'{base}Local' not in ARCH_REGISTRY:
            continue
        own = [p for p in presets if p['opt']['type'] == base]
        label, opt = (own[0]['label'], dict(own[0]['opt'])) if own else (f'{base} (defaults)', {'type': base})
        if width_divisor > 1:
            opt = throughput.scaled_width(base, opt, width_divisor) or opt
            label += f' /{width_divisor}'
        nets.append((label, opt))
    return nets


def tlc_overhead(args, device, report, log):
    """Markdown of the TLC overhead table (rows appear in ``report`` as they are measured)."""
    bench = load_benchmark('tlc_overhead')  # its convert_modes / time_modes (CUDA-synchronised, interleaved)
    throughput = load_benchmark('throughput')
    (h, w), train = args.tlc_size, args.tlc_train_size
    title = (f'## 2. TLC overhead at {h}x{w} (forward, batch 1, IEEE fp32, train size {train}, base '
             f'{int(train * 1.5)}, {"CUDA-synchronised wall" if device.type == "cuda" else "CPU process"} time, '
             f'min of {args.tlc_repeats}, on {throughput.device_name(device)})')
    lines = ['| network | layers made local | no TLC ms | exact TLC ms | fast TLC ms | exact overhead '
             '| fast overhead | paper, MPRNet (naive / optimised) | max abs(exact - none) |',
             '|---|---:|---:|---:|---:|---:|---:|---|---:|']
    notes = []
    foot = (f"\nPaper (TLC Appendix, Table A1): MPRNet at 720x1280 on an RTX 2080 Ti, {PAPER_TLC['none_s']:.2f} s "
            f"without TLC, {PAPER_TLC['naive_s']} s naive ({PAPER_TLC['naive']}), {PAPER_TLC['fast_s']} s optimised "
            f"({PAPER_TLC['fast']}). Exact = integral images over every position (the paper's naive reading), "
            'fast = statistics on a strided grid (its optimised one). Overhead = (TLC - none) / none. '
            'max abs(exact - none) is on random initial weights (0: the swapped layers do not reach the output yet, '
            "e.g. NAFNet's layer scales start at zero).\n")
    for label, opt in tlc_networks(args.width_divisor):
        print(f'[suite] TLC {label} {opt}', file=log, flush=True)
        with throughput.fp32_precision(False), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # unsupported global ops are listed in the notes below instead
            torch.manual_seed(0)
            from basicsr.archs import build_network
            nets, conversion = bench.convert_modes(build_network(dict(opt)).to(device).eval(), train, None)
            if not conversion.layers:
                notes.append(f'{label}: nothing to convert' + (f' ({"; ".join(conversion.unsupported)})'
                                                                 if conversion.unsupported else ''))
                continue
            with torch.no_grad():
                x = torch.rand(1, 3, h, w, device=device)
                last = [last_output(o) for o in (nets['exact'](x), nets['none'](x))]
                diff = (last[0] - last[1]).abs().max().item()
                del last, x
            (_, best, _), = bench.time_modes(nets, [(h, w)], args.tlc_repeats, device)
        lines.append(f"| {label} | {len(conversion.layers)} | {best['none'] * 1e3:.1f} | {best['exact'] * 1e3:.1f} | "
                     f"{best['fast'] * 1e3:.1f} | {best['exact'] / best['none'] - 1:+.1%} | "
                     f"{best['fast'] / best['none'] - 1:+.1%} | {PAPER_CELL} | {diff:.2e} |")
        del nets
        if device.type == 'cuda':
            torch.cuda.empty_cache()
        report.set('2', f'{title}\n\n' + '\n'.join(lines) + '\n' + foot)
    text = f'{title}\n\n' + '\n'.join(lines) + '\n' + foot + ''.join(f'\n- {n}' for n in notes)
    report.set('2', text)
    return text


# ------------------------------------------------------------------------------------------------ 3. throughput
def training_throughput(args, device, report, log, seconds_left):
    throughput = load_benchmark('throughput')
    if args.dry_run:
        argv = ['--device', 'cpu', '--batch', '1', '--size', '32', '--repeats', '1', '--warmup', '1',
                '--width-divisor', '8', '--archs', 'HINetSimple,MPRNet', '--first', 'HINet Simple',
                '--compile-archs', 'HINetSimple', '--compile-backend', 'eager', '--compile-estimate', '3']
    else:
        argv = ['--device', device.type, '--batch', '8', '--size', '256', '--repeats', '3', '--warmup', '2',
                '--first', 'HINet 1x,MPRNet deblur', '--compile-estimate', '90']
    argv += ['--presets', args.presets, '--switches', 'fp32,tf32,bf16,fp16,channels_last,compile', '--no-data',
             '--time-budget', f'{max(seconds_left, 1.0):.0f}']
    targs = throughput.parse_args(argv)
    title = f'## 3. Training throughput (`python benchmarks/throughput.py {shlex.join(argv)}`)'
    plan = throughput.measurement_plan(targs.configs, targs.switches, targs.compile_archs,
                                       throughput.first_labels(targs))

    def show(results):
        report.set('3', f'{title}\n\n' + throughput.report(results, targs.switches, targs, device))

    with tempfile.TemporaryDirectory(prefix='gpu_suite_') as tmp:
        show(throughput.run_plan(plan, targs, device, tmp, log=log, on_result=show))


# ------------------------------------------------------------------------------------------------ driver
def parse_args(argv=None):
    p = ArgumentParser(prog='gpu_suite', description=__doc__.split('\n\n')[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', required=True, help='output folder (created): gpu_suite.md, cuda_tests.log/.xml')
    p.add_argument('--dry-run', action='store_true', help='CPU, tiny sizes: the same code paths in under a minute')
    p.add_argument('--budget', type=float, default=480.0,
                   help='seconds for the whole suite on the GPU; the throughput part gets what is left (dry run: 600 s)')
    p.add_argument('--parts', default='tests,tlc,throughput', help='comma list of tests, tlc, throughput')
    p.add_argument('--tests-timeout', type=float, default=360.0, help='seconds before the CUDA tests are stopped')
    p.add_argument('--presets', default='all', help='throughput configurations: all or label substrings')
    args = p.parse_args(argv)
    parts = args.parts.split(',')
    unknown = sorted(set(parts) - {'tests', 'tlc', 'throughput'})
    if unknown:
        p.error(f'--parts: unknown {unknown}; choose from tests, tlc, throughput')
    args.parts = parts
    if not args.dry_run and not torch.cuda.is_available():
        p.error('no CUDA GPU is visible to torch here; run with --dry-run for the CPU check')
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"--out: '{args.out}' exists and is not a folder")
    args.tlc_size = (48, 64) if args.dry_run else (720, 1280)
    args.tlc_train_size = 24 if args.dry_run else 256
    args.tlc_repeats = 1 if args.dry_run else 3
    args.width_divisor = 4 if args.dry_run else 1
    return args


def run_part(report, key, name, run, log):
    """Run one part; a part that raises is a result: its traceback goes into its section. True if it passed."""
    try:
        text, passed = run()
        if text:
            report.set(key, text)
        return passed
    except Exception:  # noqa: BLE001
        report.set(key, f'## {key}. {name}: FAILED\n\n```\n{traceback.format_exc()[-3000:]}```\n')
        print(traceback.format_exc(), file=log)
        return False


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    device = torch.device('cpu' if args.dry_run else 'cuda')
    log = sys.stderr
    where = (f'{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}' if device.type == 'cuda'
             else f'CPU ({torch.get_num_threads()} threads), dry run')
    header = (f'# GPU suite: {where}\n\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch '
              f'{torch.__version__}, Python {sys.version.split()[0]}; command: `bash benchmarks/gpu_suite.sh '
              f'{" ".join(sys.argv[1:] if argv is None else argv)}`\n')
    report = Report(os.path.join(args.out, 'gpu_suite.md'), header)
    ok = True
    tests = start_cuda_tests(args, log) if 'tests' in args.parts else None
    if tests and not args.dry_run:  # on the GPU nothing else runs beside the tests (timings below)
        ok = run_part(report, '1', 'tests', lambda: cuda_tests(args, tests), log) and ok
    if 'tlc' in args.parts:
        ok = run_part(report, '2', 'tlc', lambda: (tlc_overhead(args, device, report, log), True), log) and ok
    if 'throughput' in args.parts:
        # dry run: a budget that a slow or busy CPU never reaches, so every switch is measured (the budget rule itself is
        # tested on a fake clock)
        budget = 600.0 if args.dry_run else args.budget - (time.time() - t0) - 10
        ok = run_part(report, '3', 'throughput',
                      lambda: (training_throughput(args, device, report, log, budget), True), log) and ok
    if tests and args.dry_run:  # the collection ran beside the dry run's measurements
        ok = run_part(report, '1', 'tests', lambda: cuda_tests(args, tests), log) and ok
    report.set('9', f'(suite total {time.time() - t0:.0f} s; {"all parts passed" if ok else "SOME PART FAILED"})')
    print(open(report.path).read())
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
