"""ONNX export (``hinet_plugins.export``, scripts/export.py): dynamic batch, TLC-converted graphs checked with
onnxruntime against PyTorch (max |diff| <= 1e-4, fp32) on sizes other than the trace size; modules that cannot be
exported are named; nothing is written then. Every described network at its tiny size: tests/archs/test_every_arch.py."""
import importlib.util
import os

import numpy as np
import pytest
import torch
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from conftest import REPO, call_main, write_options
from hinet_plugins.errors import ConfigError
from hinet_plugins.archs import spec_of
from hinet_plugins.export import export_onnx, graph_forms, run_onnx
from hinet_plugins.tlc import convert

SCRIPT = os.path.join(REPO, 'scripts', 'export.py')
spec = importlib.util.spec_from_file_location('export_script', SCRIPT)
export_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export_script)

def tiny(name, seed=0):
    torch.manual_seed(seed)
    return build_network(spec_of(name).options()).eval()


def forward(net, x):
    with torch.no_grad():
        out = net(x)
    return (out[-1] if isinstance(out, (list, tuple)) else out).numpy()


def test_dynamic_batch(tmp_path):
    net = tiny('HINet')
    path = str(tmp_path / 'hinet.onnx')
    export_onnx(net, path)
    x = torch.rand(3, 3, 35, 42)
    assert np.abs(run_onnx(path, x)[0] - forward(net, x)).max() <= 1e-4


# InstanceNorm (HIN) | GroupNorm + channel attention pools; FCN's larger graph is left to the full run
@pytest.mark.parametrize('name', ['HINet', pytest.param('FCN', marks=pytest.mark.slow)])
def test_tlc_converted_export(tmp_path, name):
    """The TLC graph matches PyTorch's local layers on sizes where they are really local (they change the
    output there), and the net given to the export keeps its own local layers."""
    net = tiny(name)
    plain = tiny(name)
    convert(net, 16, 24, warn=False)
    path = str(tmp_path / 'tlc.onnx')
    report = export_onnx(net, path)
    assert all(d <= 1e-4 for d in report['diffs'].values()), report
    side = report['min_input_size']
    assert 0 < side <= 48
    for h, w in [(side, side + 9), (side + 20, side + 3)]:
        x = torch.rand(1, 3, h, w)
        want = forward(net, x)
        assert np.abs(run_onnx(path, x)[0] - want).max() <= 1e-4
        assert np.abs(want - forward(plain, x)).max() > 1e-3, 'TLC is active at this size'
    assert any(type(m).__name__.startswith('Local') for m in net.modules())
    print(f'{name}+TLC: max |ONNX - PyTorch| ' + ', '.join(f'{s}: {d:.2e}' for s, d in report['diffs'].items()))


def test_tlc_graph_forms_equal_local_ops():
    """Each graph form computes what its local layer computes (max pool included, which no arch here uses)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True), nn.GroupNorm(2, 8),
                        nn.AdaptiveMaxPool2d(1), nn.AdaptiveAvgPool2d(1)).eval()
    for m in net.modules():
        if isinstance(m, (nn.InstanceNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    convert(net, (12, 14), (17, 19), warn=False)
    forms, left = graph_forms(net)
    assert not left and not any(type(m).__name__.startswith('Local') for m in forms.modules())
    x = torch.rand(2, 3, 31, 26) * 4 + 10
    for i in range(1, 5):
        with torch.no_grad():
            want, got = net[:i + 1](x), forms[:i + 1](x)
        assert torch.allclose(got, want, atol=2e-5, rtol=1e-5), (i, (got - want).abs().max())


class ExportProbeNet(nn.Module):
    """A net with one operator ONNX has no translation for (a running max along the width)."""

    def __init__(self, width=4):
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), _CumMax())
        self.tail = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        return self.tail(self.body(self.head(x))) + x


class _CumMax(nn.Module):
    def forward(self, x):
        return torch.cummax(x, dim=-1)[0]


if 'ExportProbeNet' not in ARCH_REGISTRY:
    ARCH_REGISTRY.register(ExportProbeNet)


def run(argv):
    return call_main(export_script.main, argv)


def test_script_plain_tlc_and_errors(tmp_path):
    torch.manual_seed(0)
    net = build_network({'type': 'HINet', **spec_of('HINet').tiny})
    ckpt = str(tmp_path / 'net.pth')
    torch.save({'params': net.state_dict()}, ckpt)
    opt = write_options({'name': 'x', 'network_g': {'type': 'HINet', **spec_of('HINet').tiny},
                         'path': {'pretrain_network_g': ckpt}}, tmp_path / 'opt.yml')
    code, log = run(['-opt', opt, '-o', str(tmp_path / 'plain.onnx'), '--size', '39', '45',
                     '--check-size', '33', '50', '--check-size', '61', '35'])
    assert code == 0 and 'traced at 39x45' in log and '33x50: ' in log and '61x35: ' in log, log
    code, log = run(['-opt', opt, '-o', str(tmp_path / 'tlc.onnx'), '--tlc', '--train-size', '16'])
    assert code == 0 and 'TLC: ' in log and 'TLC graph: valid for inputs of at least' in log, log
    assert sorted(os.listdir(tmp_path)) == ['net.pth', 'opt.yml', 'plain.onnx', 'tlc.onnx']

    # one line each, exit 2, nothing written
    probe_ckpt = str(tmp_path / 'probe.pth')
    torch.save({'params': ExportProbeNet().state_dict()}, probe_ckpt)
    fast = write_options({'name': 'x', 'network_g': {'type': 'HINet', **spec_of('HINet').tiny},
                          'path': {'pretrain_network_g': ckpt}, 'val': {'tlc': {'train_size': 16, 'fast_imp': True}}},
                         tmp_path / 'fast.yml')
    before = sorted(os.listdir(tmp_path))
    for argv, message in (
            (['--arch', 'ExportProbeNet', '--checkpoint', probe_ckpt],
             "cannot export ExportProbeNet to ONNX: module 'body.1' (_CumMax): Exporting the operator 'aten::cummax'"),
            (['-opt', fast], 'TLC fast mode (fast_imp) cannot be exported'),
            (['-opt', opt, '--size', '40', '40', '--check-size', '40', '40'], 'must differ from the export size'),
            (['-opt', opt, '--size', '0', '40'], '--size: sizes must be positive'),
            (['-opt', opt, '--tlc', '--train-size', '16', '--size', '21', '23'], 'with TLC the graph is valid for')):
        code, log = run([*argv, '-o', str(tmp_path / 'bad.onnx')])
        lines = [line for line in log.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith('hinet_plugins: error: '), (argv, log)
        assert message in lines[0], (argv, lines[0])
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.slow  # exports, then bisects the graph to name the module (seconds)
def test_restormer_tlc_export_is_refused_naming_the_local_attention(tmp_path):
    """Windowed attention lays its windows out in Python from the map size, which a traced graph freezes: the
    export is refused (nothing written) with the module's name rather than written wrong for other sizes."""
    net = tiny('Restormer')
    convert(net, 16, 24, warn=False)
    path = tmp_path / 'restormer_tlc.onnx'
    with pytest.raises(ConfigError, match=r"attn\.attend' \(LocalTransposedAttention\)"):
        export_onnx(net, str(path))
    assert not path.exists()
