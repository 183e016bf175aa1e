"""A checkpoint alone is enough: scripts/inference.py and scripts/export.py with ``--checkpoint`` and neither
``-opt`` nor ``--arch`` read the architecture from the weights (``hinet_plugins.archs.detect``), in the release
wrappers, with TLC as before; ``--arch`` / ``--arch-opt`` still override; a checkpoint that fits none is one line,
exit code 2, nothing written; scripts/detect.py prints the release round-trip table."""
import importlib.util
import os

import cv2
import numpy as np
import pytest
import torch
from basicsr.archs import build_network

from conftest import PY, REPO, call_main, run_cli
from hinet_plugins.archs import spec_of
from hinet_plugins.restore import restore_image


def script(name):
    spec = importlib.util.spec_from_file_location(f'{name}_script', os.path.join(REPO, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


inference, export, detect_script = script('inference'), script('export'), script('detect')
WRAPPERS = {  # (network, how the release / basicsr / DDP files hold the weights)
    'HINet': lambda sd: {'params': sd},
    'MPRNet': lambda sd: {'epoch': 3, 'state_dict': {'module.' + k: v for k, v in sd.items()}, 'optimizer': {}},
    'NAFNet': lambda sd: dict(sd),
}


def run(module, argv):
    return call_main(module.main, argv)


def save(tmp_path, name, wrap=lambda sd: {'params': sd}, seed=0):
    torch.manual_seed(seed)
    net = build_network(spec_of(name).options()).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = str(tmp_path / f'{name}.pth')
    torch.save(wrap(net.state_dict()), path)
    return net, path


@pytest.fixture()
def photo(tmp_path):
    from skimage import data
    src = tmp_path / 'in'
    os.makedirs(src)
    cv2.imwrite(str(src / 'astronaut.png'), cv2.resize(data.astronaut(), (45, 37))[..., ::-1])
    return src


@pytest.mark.parametrize('name', list(WRAPPERS))
def test_inference_with_a_checkpoint_alone(tmp_path, photo, name):
    net, ckpt = save(tmp_path, name, WRAPPERS[name])
    code, log = run(inference, ['-i', str(photo), '-o', str(tmp_path / 'out'), '--checkpoint', ckpt,
                                '--device', 'cpu'])
    assert code == 0 and f'detected {name}(' in log, log
    img = cv2.imread(str(photo / 'astronaut.png'))
    got = cv2.imread(str(tmp_path / 'out' / 'astronaut.png'))
    assert np.array_equal(got, restore_image(net, img, channel_order='bgr'))
    # TLC as before: small windows change the result
    code, log = run(inference, ['-i', str(photo), '-o', str(tmp_path / 'tlc'), '--checkpoint', ckpt, '--tlc',
                                '--train-size', '8', '--device', 'cpu'])
    assert code == 0 and 'TLC:' in log and f'detected {name}(' in log, log
    assert np.abs(cv2.imread(str(tmp_path / 'tlc' / 'astronaut.png')).astype(int) - got).max() > 0


def test_assumed_keywords_are_printed_and_arch_options_override(tmp_path, photo):
    _, ckpt = save(tmp_path, 'DRCNet')
    out = ['-i', str(photo), '-o', str(tmp_path / 'o'), '--device', 'cpu', '--checkpoint', ckpt]
    code, log = run(inference, out)
    assert code == 0 and "assumed: preset 'paper'" in log, log
    code, log = run(inference, [*out, '--arch-opt', 'preset=release'])
    assert code == 0 and 'given: preset=release' in log and "preset 'paper'" not in log, log
    code, log = run(inference, [*out, '--arch', 'DRCNet', '--arch-opt', 'wf=8'])  # --arch: no detection
    assert code == 2 and 'does not fit DRCNet' in log, log


def test_export_with_a_checkpoint_alone(tmp_path):
    _, ckpt = save(tmp_path, 'HINet')
    code, log = run(export, ['--checkpoint', ckpt, '-o', str(tmp_path / 'hinet.onnx')])
    assert code == 0 and 'detected HINet(' in log and os.path.isfile(tmp_path / 'hinet.onnx'), log
    code, log = run(export, ['--checkpoint', ckpt, '-o', str(tmp_path / 'tlc.onnx'), '--tlc', '--train-size', '16'])
    assert code == 0 and 'TLC graph' in log, log


@pytest.mark.slow
def test_a_checkpoint_that_fits_nothing_is_one_line_exit_2(tmp_path, photo):
    net = build_network(spec_of('HINet').options())
    sd = net.state_dict()
    sd['last.weight'] = torch.zeros(3, 4, 5, 5)
    torch.save({'params': sd}, tmp_path / 'odd.pth')
    env = {'OMP_NUM_THREADS': '1', 'PYTHONPATH': REPO}
    proc = run_cli([PY, os.path.join(REPO, 'scripts', 'inference.py'), '-i', str(photo), '-o',
                    str(tmp_path / 'out'), '--checkpoint', str(tmp_path / 'odd.pth'), '--device', 'cpu'], tmp_path,
                   env_extra=env, check=False)
    lines = proc.stdout.strip().splitlines()  # stdout and stderr together
    assert proc.returncode == 2, proc.stdout
    assert len(lines) == 1 and lines[0].startswith('hinet_plugins: error:') and "closest: HINet: 'last.weight'" in \
        lines[0], lines
    assert not os.path.exists(tmp_path / 'out')


def test_detect_script_prints_the_release_round_trip_table(capsys):
    rows = detect_script.main(['--only', 'MPRNet derain', '--size', '16'])
    out = capsys.readouterr().out
    assert len(rows) == 1 and rows[0]['max_diff'] == 0 and rows[0]['params'] == 3_637_249
    assert '| MPRNet derain (Rain13k) | 3,637,249 |' in out and 'n_feat=40' in out


def test_detect_script_prints_a_checkpoints_network_g_as_yaml(tmp_path, capsys):
    import yaml
    _, ckpt = save(tmp_path, 'DRCNet', lambda sd: {'params_ema': sd})
    detect_script.main(['--checkpoint', ckpt])
    out = capsys.readouterr().out
    opt = yaml.safe_load(out)['network_g']
    assert opt == {'type': 'DRCNet', 'in_chn': 3, 'wf': 4, 'depth': 3, 'dfr_variant': 'full'}
    assert "# not in the weights, assumed: preset 'paper'" in out
    build_network(opt).load_state_dict(torch.load(ckpt, weights_only=True)['params_ema'], strict=True)
