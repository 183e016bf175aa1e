"""Every described network (``hinet_plugins.archs.specs()``: read from the registry, no list here) passes the same
checks at its tiny configuration: its description is complete and its release configurations have their parameter
counts; any odd input size; the final image is the last output; gradient checkpointing gives the same gradients;
TLC at the training size equals the plain network; batch independence; strict state-dict round trip; ONNX parity;
detection round trip (tiny, random other configurations, every release configuration on the meta device).
The last test adds a network by one new file in a copy of the package and runs this module on it."""
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from basicsr.archs import build_network
from torch.nn import functional as F
from basicsr.utils.registry import ARCH_REGISTRY

from conftest import REPO
from hinet_plugins.archs import detect, detection, specs
from hinet_plugins.errors import ConfigError
from hinet_plugins.export import export_onnx, run_onnx
from hinet_plugins.models.speed import enable_grad_checkpoint
from hinet_plugins.tlc import convert

SPECS = specs()
NAMES = list(SPECS)
WRAPPERS = {
    'params': lambda sd: {'params': sd},
    'params_ema': lambda sd: {'params_ema': sd},
    'state_dict+module.': lambda sd: {'epoch': 1, 'state_dict': {'module.' + k: v for k, v in sd.items()}},
    'model': lambda sd: {'model': sd},
    'bare': lambda sd: dict(sd),
}


def build(name, kwargs=None, seed=0):
    """The network with random weights (perturbed: NAFNet's zero layer scales would hide its blocks)."""
    torch.manual_seed(seed)
    net = build_network(SPECS[name].options(kwargs)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def image(name, n, h, w, kwargs=None, seed=1):
    cin = SPECS[name].channels(SPECS[name].tiny if kwargs is None else kwargs)[0]
    return torch.rand(n, cin, h, w, generator=torch.Generator().manual_seed(seed))


def outputs(net, x):
    out = net(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def same_outputs(a, b, x):
    with torch.no_grad():
        return max((p - q).abs().max().item() for p, q in zip(outputs(a, x), outputs(b, x)))


def test_every_network_of_the_package_is_described():
    ours = {n for n, obj in ARCH_REGISTRY if getattr(obj, '__module__', '').startswith('hinet_plugins.archs.')}
    assert ours == set(NAMES)
    assert {'HINet', 'HINetSimple', 'MPRNet', 'FCN', 'DRCNet', 'NAFNet', 'Baseline', 'Restormer'} <= set(NAMES)


@pytest.mark.parametrize('name', NAMES)
def test_description_and_release_configurations(name):
    spec = SPECS[name]
    net = build(name)
    assert spec.purpose and f'{name}Local' in ARCH_REGISTRY
    assert hasattr(dict(net.named_modules())[spec.final_layer], 'weight')
    assert spec.size_multiple(spec.tiny) >= 1 and all(c >= 1 for c in spec.channels(spec.tiny))
    for config in spec.configs:
        with torch.device('meta'):
            big = spec.cls(**config.kwargs)
        if config.release and config.params is not None:
            assert sum(p.numel() for p in big.parameters()) == config.params, config.label
        found = detect(big.state_dict())  # detection at the release size, shapes only
        assert found['type'] == name and all(found[k] == (list(v) if isinstance(v, tuple) else v)
                                             for k, v in config.kwargs.items()), (config.label, found)


@pytest.mark.parametrize('name', NAMES)
def test_any_odd_input_size_by_the_declared_padding(name):
    spec, net = SPECS[name], build(name)
    cout = spec.channels(spec.tiny)[1]
    for h, w in [(37, 29), (5, 7)]:
        with torch.no_grad():
            outs = outputs(net, image(name, 2, h, w))
        assert all(o.shape == (2, cout, h, w) and torch.isfinite(o).all() for o in outs), (h, w)
    # = the network on the input padded bottom/right to its multiple as declared, cropped back
    m, x = spec.size_multiple(spec.tiny), image(name, 1, 37, 29)
    padded = F.pad(x, (0, (-29) % m, 0, (-37) % m), mode='reflect' if spec.pad_mode == 'reflect' else 'constant')
    with torch.no_grad():
        assert (outputs(net, x)[-1] - outputs(net, padded)[-1][..., :37, :29]).abs().max() <= 1e-5


@pytest.mark.parametrize('name', NAMES)
def test_final_output_is_last(name):
    """Changing the final layer changes the last output only."""
    net = build(name)
    x = image(name, 1, 24, 32)
    with torch.no_grad():
        before = outputs(net, x)
        dict(net.named_modules())[SPECS[name].final_layer].weight.add_(0.5)
        after = outputs(net, x)
    assert (after[-1] - before[-1]).abs().max() > 1e-3
    assert all(torch.equal(a, b) for a, b in zip(before[:-1], after[:-1]))


@pytest.mark.parametrize('name', NAMES)
def test_grad_checkpoint_same_gradients_fewer_saved_activations(name):
    net = build(name).train()
    x = image(name, 2, 32, 32)

    def run():
        saved = []
        net.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            outs = outputs(net, x)
        sum(o.square().mean() for o in outs).backward()
        return sum(saved), [p.grad.clone() for p in net.parameters() if p.grad is not None]

    plain_saved, plain_grads = run()
    enable_grad_checkpoint(net)
    ckpt_saved, ckpt_grads = run()
    assert ckpt_saved < 0.5 * plain_saved and len(ckpt_grads) == len(plain_grads) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_grads, ckpt_grads))


@pytest.mark.parametrize('name', NAMES)
def test_tlc_at_the_training_size_equals_the_plain_network(name):
    plain, local = build(name), build(name)
    conversion = convert(local, 32, warn=False)
    x = image(name, 1, 32, 32)
    assert same_outputs(plain, local, x) <= 1e-5, conversion.summary()


@pytest.mark.parametrize('name', NAMES)
def test_batch_independence(name):
    net = build(name)
    x = image(name, 3, 24, 20)
    with torch.no_grad():
        together = outputs(net, x)[-1]
        alone = torch.cat([outputs(net, x[i:i + 1])[-1] for i in range(3)])
    assert (together - alone).abs().max() <= 1e-5


@pytest.mark.parametrize('name', NAMES)
def test_strict_state_dict_round_trip(name, tmp_path):
    net = build(name)
    torch.save({'params': net.state_dict()}, tmp_path / 'net.pth')
    other = build(name, seed=1)
    other.load_state_dict(torch.load(tmp_path / 'net.pth', weights_only=True)['params'], strict=True)
    assert same_outputs(net, other, image(name, 1, 21, 19)) == 0


@pytest.mark.parametrize('name', NAMES)
def test_onnx_parity_at_tiny_size(name, tmp_path):
    net = build(name)
    path = str(tmp_path / f'{name}.onnx')
    report = export_onnx(net, path)
    assert len(report['diffs']) == 2 and all(d <= 1e-4 for d in report['diffs'].values()), report
    x = image(name, 1, 37, 51)  # not a multiple of anything: the padding runs inside the graph
    with torch.no_grad():
        want = outputs(net, x)[-1].numpy()
    got = run_onnx(path, x)[0]
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4
    print(f'{name}: max |ONNX - PyTorch| ' + ', '.join(f'{s}: {d:.2e}' for s, d in report['diffs'].items())
          + f', (37, 51): {np.abs(got - want).max():.2e}')


@pytest.mark.parametrize('name', NAMES)
def test_detection_round_trip(name):
    """Tiny and three random configurations, each in another checkpoint wrapper: detect, build, load strictly,
    same outputs (exactly)."""
    rng = random.Random(name)
    configs = [SPECS[name].tiny] + [SPECS[name].sample(rng) for _ in range(3)]
    for i, kwargs in enumerate(configs):
        net = build(name, kwargs, seed=i)
        wrapper = list(WRAPPERS)[(i + len(name)) % len(WRAPPERS)]
        found = detection(WRAPPERS[wrapper](net.state_dict()))
        assert found.network_g['type'] == name, (kwargs, found)
        rebuilt = build_network(dict(found.network_g)).eval()
        rebuilt.load_state_dict(net.state_dict(), strict=True)
        assert same_outputs(net, rebuilt, image(name, 2, 19, 23, kwargs)) == 0, (kwargs, found.network_g)


def test_a_state_dict_that_fits_nothing_or_two_networks_is_one_line(monkeypatch):
    sd = build('HINet').state_dict()
    sd['down_path_1.1.conv_2.weight'] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(ConfigError) as err:
        detect(sd)
    msg = str(err.value)
    assert '\n' not in msg and 'fits no registered network' in msg and "closest: HINet: 'down_path_1.1.conv_2.weight'" \
        in msg, msg
    with pytest.raises(ConfigError, match='fits no registered network.*closest'):
        detect({'foo.weight': torch.zeros(2, 2)})
    twin = {**SPECS, 'HINetTwin': SPECS['HINet']}
    monkeypatch.setattr('hinet_plugins.archs.autodetect.specs', lambda: twin)
    with pytest.raises(ConfigError, match=r'the weights fit HINet\(.*\) and HINet\('):
        detect(build('HINet').state_dict())


NEW_ARCH_CHECK = r'''
import sys, torch
import hinet_plugins
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY
from hinet_plugins.archs import detect, specs
assert hinet_plugins.__file__.startswith(sys.argv[1]), hinet_plugins.__file__
assert 'StemFormer' in specs() and 'StemFormerLocal' in ARCH_REGISTRY
net = build_network({'type': 'StemFormer', **specs()['StemFormer'].tiny})
assert detect(net.state_dict())['type'] == 'StemFormer'
assert detect(build_network({'type': 'Restormer', **specs()['Restormer'].tiny}).state_dict())['type'] == 'Restormer'
local = build_network({'type': 'StemFormerLocal', 'train_size': 32, **specs()['StemFormer'].tiny})
print('new arch ok:', sorted(specs()), type(local).__name__)
'''
TESTS_FOLLOW = '--- the tests of this module on the copy ---'
NEW_ARCH_TESTS = f'''
import pytest
print({TESTS_FOLLOW!r}, flush=True)
sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-k', 'StemFormer and not one_new_arch', sys.argv[2]]))
'''


@pytest.mark.slow
def test_one_new_arch_file_is_enough(tmp_path):
    """A copy of restormer_arch.py under a new class name (and a renamed first layer, so that its checkpoints are
    its own) dropped into a copy of the package: registry, description, ``*Local`` name, detection, and this
    module's checks, without touching any other file."""
    shutil.copytree(os.path.join(REPO, 'hinet_plugins'), tmp_path / 'hinet_plugins',
                    ignore=shutil.ignore_patterns('__pycache__'))
    here = os.path.relpath(os.path.abspath(__file__), REPO)  # tests/archs/test_every_arch.py
    os.makedirs(tmp_path / os.path.dirname(here))
    for f in ('pytest.ini', os.path.join('tests', 'conftest.py'), here):
        shutil.copy(os.path.join(REPO, f), tmp_path / f)
    archs = tmp_path / 'hinet_plugins' / 'archs'
    source = (archs / 'restormer_arch.py').read_text()
    new = source.replace('class Restormer(nn.Module)', 'class StemFormer(nn.Module)').replace(
        'describe(Restormer,', 'describe(StemFormer,').replace('patch_embed', 'stem_embed')
    assert new.count('StemFormer') == 2 and 'stem_embed' in new
    (archs / 'stemformer_arch.py').write_text(new)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS='1')
    # one fresh interpreter on the user's PYTHONPATH for both steps: the check above, then this module's tests on the
    # copy through ``pytest.main`` (as ``python -m pytest``); the output before TESTS_FOLLOW is the check's
    run = subprocess.run([sys.executable, '-c', NEW_ARCH_CHECK + NEW_ARCH_TESTS, str(tmp_path), here], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    check_out, marker, tests_out = run.stdout.partition(TESTS_FOLLOW)
    assert marker and 'new arch ok' in check_out, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.returncode == 0, tests_out[-3000:] + run.stderr[-2000:]
    assert '9 passed' in tests_out, tests_out[-2000:]
