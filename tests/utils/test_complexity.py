"""scripts/complexity.py and hinet_plugins.utils.complexity: HINet's parameter counts and MACs (mmengine and thop
convention) at 1x3x256x256, and the script's one-line errors."""
import os

import pytest
import torch
from torch import nn

from conftest import REPO, call_main, load_script
from hinet_plugins.utils import complexity

script = load_script(os.path.join(REPO, 'scripts', 'complexity.py'), 'complexity_script')


def _row(table, label):
    return next(line for line in table.splitlines() if line.startswith(f'| {label} |')).split(' | ')


def test_hinet_half_width_params_and_macs(capsys):
    table = script.main(['--only', 'HINet 0.5x', '--markdown'])
    assert torch.is_grad_enabled()  # the script must not switch autograd off for the rest of the process
    row = _row(table, 'HINet 0.5x')
    # columns: label, params (M), ref params, Δ params, MACs mmengine, MACs thop conv., paper MACs, Δ, Δ, note
    assert row[1] == '22.177' and row[3] == '+0.00%'
    assert abs(float(row[4]) - 39.56) / 39.56 < 1e-3, row
    assert abs(float(row[5]) - 42.8) / 42.8 < 2e-3, row
    assert row[6] == '42.88'
    assert '170.5 G / 42.8 G' in table and capsys.readouterr().out.startswith('| Model |')


def test_presets_are_collected_from_every_described_network():
    from hinet_plugins.archs import specs
    names = {m for m, _ in complexity.collect_presets()}
    assert names == {n for n, s in specs().items() if s.configs} and {'HINet', 'MPRNet'} <= names


def test_thop_convention_charges_transposed_convs_stride_squared():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ConvTranspose2d(4, 6, 2, stride=2),
                        nn.ConvTranspose2d(6, 3, 3, stride=3))
    r = complexity.measure(net, size=8)
    conv = 3 * 4 * 9 * 8 * 8
    up2 = 4 * 6 * 2 * 2 * 8 * 8          # per input pixel (mmengine)
    up3 = 6 * 3 * 3 * 3 * 16 * 16
    assert r['macs'] == conv + up2 + up3
    assert r['macs_thop'] == conv + 4 * up2 + 9 * up3


def test_unknown_label_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        script.main(['--only', 'NoSuchNet', '--no-macs'])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no preset label contains 'NoSuchNet'" in err
    assert err.startswith('hinet_plugins: error: complexity: ') and len(err.splitlines()) == 1


@pytest.mark.parametrize('argv', [['--no-such-flag'], ['--size', 'big'], ['--size', '0', '--no-macs']])
def test_usage_mistakes_are_one_line(argv):
    code, out = call_main(script.main, argv)
    assert code == 2 and len(out.splitlines()) == 1, out
    assert out.startswith('hinet_plugins: error: complexity: ') and 'Traceback' not in out
