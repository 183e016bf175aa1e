"""``bash benchmarks/gpu_suite.sh --dry-run``: the GPU suite's code paths on the CPU at tiny sizes, so the script
cannot rot between GPU loans. Checks the markdown file it writes (three tables: CUDA tests collected, TLC
overhead with the paper's MPRNet figures beside it, throughput with every switch) and its usage errors."""
import os
import re
import subprocess
import sys
import types

import pytest
from conftest import REPO, call_main, load_script

SCRIPT = os.path.join(REPO, 'benchmarks', 'gpu_suite.sh')


def suite(*args, timeout=240):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    return subprocess.run(['bash', SCRIPT, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def table(text, heading):
    """Rows (lists of cells) of the first markdown table after the line starting with ``heading``."""
    section = text[text.index(heading):]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith('|'):
            rows.append([c.strip() for c in line.strip('|').split('|')])
        elif rows:
            break
    assert len(rows) > 2, section[:2000]
    return rows[2:]  # without the header and the alignment row


@pytest.mark.slow
def test_dry_run_writes_the_three_tables(tmp_path):
    out = tmp_path / 'suite'
    proc = suite('--dry-run', '--out', str(out))
    assert proc.returncode == 0, proc.stdout[-5000:]
    text = (out / 'gpu_suite.md').read_text()
    assert text.startswith('# GPU suite: CPU') and 'dry run' in text and 'SOME PART FAILED' not in text

    tests = table(text, '## 1. CUDA tests')
    names = {row[0] for row in tests}
    assert {'test_fp16_grad_scaler_training_resumes_with_identical_losses', 'test_inference_with_amp_fp16_on_cuda',
            'test_one_process_nccl_group_through_torchrun_equals_one_process'} <= names
    assert all(row[1] == 'collected (dry run: not run)' for row in tests)
    assert (out / 'cuda_tests.log').is_file()

    tlc = {row[0].split(' /')[0]: row for row in table(text, '## 2. TLC overhead')}
    for net in ('HINet 1x', 'MPRNet deblur (GoPro)'):
        row = tlc[net]
        assert int(row[1]) > 0 and all(float(v) > 0 for v in row[2:5])
        assert re.fullmatch(r'[+-]\d+\.\d%', row[5]) and re.fullmatch(r'[+-]\d+\.\d%', row[6])
        assert row[7] == '+27 % / +5.6 %'
    assert '1.60 s without TLC, 2.03 s naive (+27 %), 1.69 s optimised (+5.6 %)' in text

    rows = table(text, '## 3. Training throughput')
    simple = {row[1]: row for row in rows if row[0].startswith('HINet Simple')}
    assert set(simple) == {'fp32', 'tf32', 'bf16', 'fp16', 'channels_last', 'compile'}
    for switch in ('fp32', 'tf32', 'bf16', 'channels_last', 'compile'):
        assert float(simple[switch][2]) > 0, simple[switch]  # measured: train ms
    assert simple['fp16'][-1] == 'amp: fp16 needs a GPU'
    for row in rows:  # every planned measurement either ran or was left out by the 10 s budget (machine speed)
        assert row[1] == 'fp16' or row[-1] == 'not measured: over the 10 s time budget' or float(row[2]) > 0, row


@pytest.mark.slow
def test_usage_errors_are_one_line_and_write_nothing(tmp_path):
    for i, (args, message) in enumerate(((['--dry-run'], 'the following arguments are required: --out'),
                                         (['--dry-run', '--out', str(tmp_path / 'x'), '--parts', 'tests,speed'],
                                          "--parts: unknown ['speed']"))):
        if i == 0:  # the literal command once, the other through the script's main in-process (output merged)
            proc = suite(*args, timeout=120)
            code, output = proc.returncode, proc.stdout
        else:
            code, output = call_main(load_script(os.path.join(REPO, 'benchmarks', 'gpu_suite.py'), 'gpu_suite').main,
                                     args)
        assert code == 2, output
        lines = output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('hinet_plugins: error: gpu_suite: ') and message in lines[0]
    assert not (tmp_path / 'x').exists()


def test_time_budget_leaves_out_what_would_end_past_it(monkeypatch):
    """``run_plan`` under ``--time-budget``: a measurement whose estimate (the same configuration's last one) would
    end past the budget is recorded as not measured, and so is everything after it in the plan. The clock is a
    fake one that each measurement moves on by 0.2 s, so the outcome does not depend on the machine's load."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('throughput_bench', os.path.join(REPO, 'benchmarks', 'throughput.py'))
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)

    clock = [1000.0]

    def fake_measure(net_opt, switch, args, device, workdir):
        clock[0] += 0.2
        return {'measured': switch}
    monkeypatch.setattr(throughput, 'measure', fake_measure)
    monkeypatch.setattr(throughput, 'time', types.SimpleNamespace(time=lambda: clock[0]))
    args = throughput.parse_args(['--device', 'cpu', '--time-budget', '0.5', '--no-data'])
    plan = [('net', {'type': 'HINetSimple'}, sw) for sw in ('fp32', 'bf16', 'channels_last', 'tf32')]
    rows = throughput.run_plan(plan, args, 'cpu', '/tmp', log=open(os.devnull, 'w'))['net']
    assert rows['fp32'] == {'measured': 'fp32'}
    assert rows['tf32']['skipped'].startswith('not measured: over the ')
    kinds = ['measured' in rows[sw] for sw in ('fp32', 'bf16', 'channels_last', 'tf32')]
    assert kinds == [True, True, False, False]  # at 0.4 s, one more 0.2 s measurement would end past 0.5 s
