"""TLC: local operators vs brute force and global ops, converter on any module tree, registry names, validation."""
import functools
import os
import re
import sys

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F

from conftest import REPO, base_options, launch_selected, module_train, write_options
from hinet_plugins import tlc
from hinet_plugins.errors import ConfigError
from hinet_plugins.models.restoration_model import MultiStageRestorationModel
from hinet_plugins.tlc import local_ops as L


# ----------------------------------------------------------------------------- brute-force references (float64)
def _windows(x, kernel):
    """(N, C, kh*kw, H', W') float64 windows at the valid positions (kernel clamped to the map)."""
    n, c, h, w = x.shape
    kh, kw = min(kernel[0], h), min(kernel[1], w)
    return F.unfold(x.double(), (kh, kw)).view(n, c, kh * kw, h - kh + 1, w - kw + 1)


def _pad_centred(v, size):
    ph, pw = size[0] - v.shape[-2], size[1] - v.shape[-1]
    return F.pad(v, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode='replicate')


def ref_avg(x, k):
    return _pad_centred(_windows(x, k).mean(2), x.shape[-2:])


def ref_max(x, k):
    return _pad_centred(_windows(x, k).amax(2), x.shape[-2:])


def ref_group_norm(x, groups, k, weight=None, bias=None, eps=1e-5):
    n, c, h, w = x.shape
    win = _windows(x, k)  # statistics over the window and the channels of each group
    win = win.reshape(n, groups, -1, *win.shape[-2:])
    mean = _pad_centred(win.mean(2), (h, w))
    var = _pad_centred(win.var(2, unbiased=False), (h, w))
    xg = x.double().reshape(n, groups, c // groups, h, w)
    out = ((xg - mean[:, :, None]) / (var[:, :, None] + eps).sqrt()).reshape(n, c, h, w)
    if weight is not None:
        out = out * weight.double()[:, None, None] + bias.double()[:, None, None]
    return out


SHAPES_KERNELS = [((2, 4, 17, 23), (5, 7)), ((2, 4, 16, 16), (4, 4)), ((3, 6, 20, 9), (6, 12)),
                  ((1, 4, 31, 30), (1, 3)), ((2, 4, 12, 13), (12, 5))]


@pytest.mark.parametrize('shape,kernel', SHAPES_KERNELS)
def test_local_ops_match_unfold_brute_force(shape, kernel):
    torch.manual_seed(0)
    x = torch.randn(shape)
    c = shape[1]
    w, b = torch.randn(c), torch.randn(c)
    torch.testing.assert_close(L.local_avg_pool(x, kernel).double(), ref_avg(x, kernel), atol=1e-5, rtol=1e-5)
    assert torch.equal(L.local_max_pool(x, kernel).double(), ref_max(x, kernel))
    # normalised values carry float32 error / local std: a 1x3 window of noise can have a tiny variance
    tol = dict(atol=2e-4, rtol=1e-4) if min(kernel) >= 4 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(L.local_instance_norm(x, kernel).double(), ref_group_norm(x, c, kernel), **tol)
    torch.testing.assert_close(L.local_instance_norm(x, kernel, w, b).double(),
                               ref_group_norm(x, c, kernel, w, b), **tol)
    for groups in (2, 1):
        torch.testing.assert_close(L.local_group_norm(x, groups, kernel, w, b).double(),
                                   ref_group_norm(x, groups, kernel, w, b), **tol)


def test_window_covering_the_map_is_the_global_op():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 13, 18)
    w, b = torch.randn(4), torch.randn(4)
    for k in ((13, 18), (40, 40)):
        assert torch.equal(L.local_avg_pool(x, k), F.adaptive_avg_pool2d(x, 1))
        assert torch.equal(L.local_max_pool(x, k), F.adaptive_max_pool2d(x, 1))
        assert torch.equal(L.local_instance_norm(x, k, w, b), F.instance_norm(x, weight=w, bias=b))
        assert torch.equal(L.local_group_norm(x, 2, k, w, b), F.group_norm(x, 2, w, b))
    # one pixel short of the map: local, and its valid windows cover all but one row/column
    near = L.local_avg_pool(x, (12, 18))
    assert near.shape == x.shape and not torch.allclose(near, F.adaptive_avg_pool2d(x, 1).expand_as(x))


def test_local_norm_is_stable_for_large_means():
    """mean 1e3, std 1: our variance matches float64; the release's float32 E[x^2] - E[x]^2 does not."""
    torch.manual_seed(2)
    x = torch.randn(2, 3, 40, 40) + 1e3
    k = (16, 16)
    _, var = L.local_moments(x, 3, k)
    ref = _windows(x, k).var(2, unbiased=False)
    assert ((var.double() - ref).abs() / ref).max() < 1e-3
    naive = L.box_sum(x * x, k)[0] / 256 - (L.box_sum(x, k)[0] / 256) ** 2  # the release's formula, float32
    assert ((naive.double() - ref).abs() / ref).max() > 0.05
    torch.testing.assert_close(L.local_instance_norm(x, k).double(), ref_group_norm(x, 3, k), atol=2e-3, rtol=1e-3)


def test_fast_mode_strides_and_error():
    assert L.fast_stride(720, 384, 5) == 5 and L.fast_stride(1280, 384, 5) == 5
    assert L.fast_stride(368, 384, 5) == 4            # first of 5, 4, 3, 2, 1 dividing the size
    assert L.fast_stride(360, 192, 2) == 2            # capped
    assert L.fast_stride(361, 192, 5) == 1            # nothing divides: exact
    assert L.fast_stride(400, 20, 5) == 2             # keeps >= MIN_FAST_SAMPLES samples per window side
    # natural-image features (a photo and its horizontal gradient): sampled statistics stay close to exact ones
    from hinet_plugins.demo.data import load_photo
    img = torch.from_numpy(load_photo('chelsea')[:240, :400]).permute(2, 0, 1)[None].float() / 255
    x = torch.cat([img, F.pad(img[..., 1:] - img[..., :-1], (0, 1))], 1)
    exact, fast = L.local_instance_norm(x, (120, 120)), L.local_instance_norm(x, (120, 120), stride=(5, 5))
    assert fast.shape == exact.shape and not torch.equal(fast, exact)
    assert (fast - exact).abs().mean() < 0.05
    exact, fast = L.local_avg_pool(x, (120, 120)), L.local_avg_pool(x, (120, 120), stride=(4, 5))
    assert ((fast - exact).abs().mean((2, 3)) / x.std((2, 3))).max() < 0.03


# ----------------------------------------------------------------------------- converter on any module tree
class SimAM(nn.Module):
    """A parameter-free attention written with tensor reductions: a global op the converter cannot localise."""

    def forward(self, x):
        d = (x - x.mean(dim=[2, 3], keepdim=True)) ** 2
        return x * torch.sigmoid(d / (4 * (d.mean(dim=[2, 3], keepdim=True) + 1e-4)) + 0.5)


class Toy(nn.Module):
    """Conv trunk (two downsamplings) with every supported global op, BN (not global in eval) and SimAM."""

    def __init__(self, c=8):
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(c, affine=True)
        self.down1 = nn.Conv2d(c, c, 2, stride=2)
        self.gn = nn.GroupNorm(2, c)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1), nn.Sigmoid())
        self.down2 = nn.Conv2d(c, c, 2, stride=2)
        self.ln = nn.GroupNorm(1, c)
        self.max = nn.AdaptiveMaxPool2d(1)
        self.plain_in = nn.InstanceNorm2d(c)
        self.bn = nn.BatchNorm2d(c)
        self.simam = SimAM()
        self.pyramid = nn.AdaptiveAvgPool2d(2)
        self.strip = nn.AdaptiveAvgPool2d((1, None))

    def forward(self, x):
        x = self.inorm(self.head(x))
        x = self.gn(self.down1(x))
        x = x * self.se(x)
        x = self.ln(self.down2(x))
        x = x + self.strip(x)
        x = self.bn(self.plain_in(x + self.max(x)))
        return self.simam(x) + self.pyramid(x).mean() * 0


def test_convert_any_module_tree_windows_params_restore_and_report():
    torch.manual_seed(4)
    net = Toy().eval()
    params_before = dict(net.named_parameters())
    modules_before = dict(net.named_modules())
    x, x_train = torch.rand(2, 3, 64, 80), torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        ref_out, ref_train = net(x), net(x_train)
    with pytest.warns(UserWarning, match=r'simam \(SimAM\): mean over H, W'):
        conv = tlc.convert(net, train_size=(24, 32), base_size=(36, 40))
    # every supported op swapped; windows = feature size at train_size x base / train, per layer
    assert conv.windows == {'inorm': (36, 40), 'gn': (18, 20), 'se.0': (18, 20), 'ln': (9, 10), 'max': (9, 10),
                            'plain_in': (9, 10)}
    assert isinstance(net.inorm, tlc.LocalInstanceNorm2d) and isinstance(net.se[0], tlc.LocalAvgPool2d)
    assert isinstance(net.max, tlc.LocalMaxPool2d) and isinstance(net.ln, tlc.LocalGroupNorm)
    assert isinstance(net.bn, nn.BatchNorm2d)
    # unsupported global ops are named, BN in eval is not among them
    assert any(u.startswith('simam (SimAM): mean over H, W') for u in conv.unsupported)
    assert any(u.startswith('pyramid (AdaptiveAvgPool2d): adaptive_avg_pool2d to (2, 2)') for u in conv.unsupported)
    assert any(u.startswith('strip (AdaptiveAvgPool2d): adaptive_avg_pool2d to (1, 8)') for u in conv.unsupported)
    assert not any('bn' in u.split()[0] for u in conv.unsupported)
    # the same Parameter objects, the same state_dict keys; arch code still sees the replaced module's attributes
    params = dict(net.named_parameters())
    assert params.keys() == params_before.keys() and all(params[n] is p for n, p in params_before.items())
    assert net.inorm.weight is modules_before['inorm'].weight and net.ln.num_groups == 1
    assert list(net.state_dict()) == list(Toy().state_dict())
    with torch.no_grad():
        assert torch.equal(net(x_train), ref_train)  # at the training size every window covers its map
        out = net(x)
        feat = net.head(x)
        torch.testing.assert_close(net.inorm(feat), L.local_instance_norm(feat, (36, 40), net.inorm.weight,
                                                                          net.inorm.bias))
    assert not torch.allclose(out, ref_out, atol=1e-3)  # 64x80 input > 36x40 window: local statistics differ
    conv.restore()
    assert dict(net.named_modules()) == modules_before
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref_out, atol=0, rtol=0)


def test_train_size_is_used_for_every_layer():
    """The release forgets train_size in its converter (windows assume 256); ours uses it everywhere."""
    net = build_network({'type': 'HINet', 'wf': 8, 'depth': 3})
    for train, windows in ((48, (72, 36, 18)), (64, (96, 48, 24)), (128, (192, 96, 48))):
        with tlc.converted(net, train) as conv:
            for s in (1, 2):
                assert [conv.windows[f'down_path_{s}.{i}.norm'] for i in range(3)] == [(w, w) for w in windows]
    with tlc.converted(net, (48, 64), base_size=(60, 100)) as conv:
        assert conv.windows['down_path_1.1.norm'] == (30, 50)


def test_converted_context_restores_and_training_mode_is_global():
    torch.manual_seed(5)
    net = build_network({'type': 'HINet', 'wf': 8, 'depth': 3})
    x = torch.rand(1, 3, 96, 112)
    before = dict(net.named_modules())
    net.train()
    with torch.no_grad():
        global_out = net(x)[-1]
        with tlc.converted(net, 32, fast_imp=True) as conv:
            assert len(conv.layers) == 6 and net.training  # calibration keeps the modes
            torch.testing.assert_close(net(x)[-1], global_out)  # training mode: the global op, as trained
            net.eval()
            assert not torch.allclose(net(x)[-1], global_out, atol=1e-4)
        net.train()
        torch.testing.assert_close(net(x)[-1], global_out)
    assert dict(net.named_modules()) == before
    with pytest.raises(RuntimeError):
        with tlc.converted(net, 32):
            raise RuntimeError('boom')
    assert dict(net.named_modules()) == before
    with pytest.raises(ValueError, match='train_size'):
        tlc.convert(net, 0)


# ----------------------------------------------------------------------------- registry names
def test_hinet_local_builds_through_the_registry_and_loads_hinet_weights():
    torch.manual_seed(6)
    opt = {'wf': 8, 'depth': 3}
    base = build_network({'type': 'HINet', **opt}).eval()
    local = build_network({'type': 'HINetLocal', 'train_size': [1, 3, 48, 48], 'base_size': 72, **opt}).eval()
    assert isinstance(local, ARCH_REGISTRY.get('HINet'))
    local.load_state_dict(base.state_dict(), strict=True)
    x = torch.rand(1, 3, 112, 128)
    with torch.no_grad():
        with tlc.converted(base, 48, 72):
            expected = base(x)[-1]
        torch.testing.assert_close(local(x)[-1], expected)
        assert local.down_path_1[0].norm.kernel_size == (72, 72)
    fast = build_network({'type': 'HINetLocal', 'train_size': 48, 'fast_imp': True, **opt})
    assert fast.down_path_2[0].norm.fast_imp
    with pytest.raises(ConfigError, match='train_size'):
        build_network({'type': 'HINetLocal', 'train_size': 'big', **opt})


def test_mprnet_local_and_unregistered_bases():
    if 'MPRNet' in ARCH_REGISTRY:
        net = build_network({'type': 'MPRNetLocal', 'train_size': 32, 'n_feat': 8, 'scale_unetfeats': 4,
                             'scale_orsnetfeats': 4, 'num_cab': 1})
        pools = [m for m in net.modules() if isinstance(m, tlc.LocalAvgPool2d)]
        assert pools and all(m.kernel_size is not None for m in pools)
        assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in net.modules())
    for name in ('DRCNet', 'FCN'):
        assert f'{name}Local' in ARCH_REGISTRY
        if name not in ARCH_REGISTRY:
            with pytest.raises(ConfigError, match=f"'{name}Local' needs the architecture '{name}'"):
                build_network({'type': f'{name}Local'})


# ----------------------------------------------------------------------------- BasicSR integration
def test_tlc_option_errors():
    opt = {'val': {'tlc': {'enabled': True, 'base': 384}}}
    with pytest.raises(ConfigError, match=r"val.tlc: unknown key\(s\) \['base'\]"):
        MultiStageRestorationModel.tlc_options(opt)
    with pytest.raises(ConfigError, match='val.tlc.train_size is needed'):
        MultiStageRestorationModel.tlc_options({'val': {'tlc': {'enabled': True}}})
    with pytest.raises(ConfigError, match='val.tlc.base_size must be'):
        MultiStageRestorationModel.tlc_options({'val': {'tlc': {'train_size': 64, 'base_size': [1, 2, 3]}}})
    assert MultiStageRestorationModel.tlc_options({'val': {'tlc': {'enabled': False}}}) is None
    got = MultiStageRestorationModel.tlc_options({'datasets': {'train': {'gt_size': 48}}, 'val': {'tlc': {}}})
    assert got == {'train_size': 48, 'base_size': None, 'fast_imp': False, 'compare': False}


def _tlc_options(tiny_data, name, **tlc_opt):
    opt = base_options(tiny_data, name=name, total_iter=2)
    opt['val']['tlc'] = {'enabled': True, 'compare': True, **tlc_opt}
    return opt


def test_validation_in_process_restores_the_training_modules(tiny_data, tmp_path, monkeypatch):
    from basicsr.data import build_dataloader, build_dataset
    from basicsr.models import build_model
    from basicsr.utils.options import parse_options
    opt_path = write_options(_tlc_options(tiny_data, 'tlc_inproc'), tmp_path / 'tlc.yml')
    monkeypatch.setattr(sys, 'argv', ['train', '-opt', opt_path])
    opt, _ = parse_options(str(tmp_path), is_train=True)
    model = build_model(opt)
    loader = build_dataloader(build_dataset(opt['datasets']['val']), opt['datasets']['val'], num_gpu=0, dist=False)
    net = model.net_g
    before = dict(net.named_modules())
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        out_before = net(x)[-1]
    model.validation(loader, 1, None, False)
    assert dict(net.named_modules()) == before and net.training
    assert loader.dataset.opt['name'] == 'tiny_val'
    with torch.no_grad():
        torch.testing.assert_close(net(x)[-1], out_before, atol=0, rtol=0)
    best = model.best_metric_results
    assert set(best) == {'tiny_val', 'tiny_val_tlc'}
    assert best['tiny_val']['psnr']['val'] != best['tiny_val_tlc']['psnr']['val']  # 128-px image > 72 window


def _psnr_lines(log):
    return dict(re.findall(r'Validation (\S+)\n\s+# psnr: ([\d.]+)', log))


# The two launches of this module (``python -m hinet_plugins.train`` and ``python -m hinet_plugins.test``) run in one
# interpreter (conftest.launch_batch); each test asserts on its own run (exit code and merged output).


@pytest.fixture(scope='module')
def launches(request, tiny_data, tmp_path_factory):
    """The launches of this module's selected tests, all in one interpreter."""
    plans = {'test_training_logs_psnr_with_and_without_tlc': functools.partial(_plan_training, tiny_data),
             'test_test_pipeline_with_shipped_tlc_option_file': functools.partial(_plan_test_pipeline, tiny_data)}
    return launch_selected(request, plans, tmp_path_factory)


def _plan_training(tiny_data, tmp_path):
    opt_path = write_options(_tlc_options(tiny_data, 'tlc_train', fast_imp=True), tmp_path / 'tlc.yml')
    return module_train(opt_path), tmp_path


@pytest.mark.slow
def test_training_logs_psnr_with_and_without_tlc(launches, request):
    _, proc = launches[request.node.name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    out = proc.stdout
    psnr = _psnr_lines(out)
    assert set(psnr) == {'tiny_val', 'tiny_val_tlc'}, out[-3000:]
    assert 'TLC: 6 layer(s) made local (6 InstanceNorm2d; train_size=(48, 48), base_size=(72, 72)' in out


def _shipped_tlc_test_options(tiny_data):
    with open(os.path.join(REPO, 'options/test/HINet-SIDD-TLC.yml')) as f:
        opt = yaml.safe_load(f)
    net_opt = {**opt['network_g'], 'wf': 8, 'depth': 3}
    opt['network_g'] = net_opt
    opt['val']['tlc']['train_size'] = 48
    opt['num_gpu'] = 0
    ds = opt['datasets']['test']
    ds.update(dataroot_gt=tiny_data['val_gt_lmdb'], dataroot_lq=tiny_data['val_lq_lmdb'])
    return opt


def _plan_test_pipeline(tiny_data, tmp_path):
    opt = _shipped_tlc_test_options(tiny_data)
    torch.save({'params': build_network(dict(opt['network_g'])).state_dict()}, tmp_path / 'tiny.pth')
    opt['path']['pretrain_network_g'] = str(tmp_path / 'tiny.pth')
    opt_path = write_options(opt, tmp_path / 'test_tlc.yml')
    return ['-m', 'hinet_plugins.test', '-opt', opt_path], tmp_path


@pytest.mark.slow
def test_test_pipeline_with_shipped_tlc_option_file(tiny_data, launches, request):
    """options/test/HINet-SIDD-TLC.yml with the data, width and checkpoint swapped for tiny ones."""
    with open(os.path.join(REPO, 'options/test/HINet-SIDD-TLC.yml')) as f:
        opt = yaml.safe_load(f)
    assert opt['val']['tlc']['enabled'] and opt['val']['tlc']['train_size'] == 256
    opt = _shipped_tlc_test_options(tiny_data)
    ds = opt['datasets']['test']
    tmp_path, proc = launches[request.node.name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    out = proc.stdout
    psnr = _psnr_lines(out)
    assert set(psnr) == {ds['name'], ds['name'] + '_tlc'}, out[-3000:]
    assert os.path.isdir(tmp_path / 'results' / opt['name'] / 'visualization' / (ds['name'] + '_tlc'))


def test_shipped_tlc_option_files_parse():
    for name in ('HINet-GoPro-TLC', 'HINet-SIDD-TLC', 'MPRNet-GoPro-TLC'):
        path = os.path.join(REPO, 'options/test', f'{name}.yml')
        if name.startswith('MPRNet') and 'MPRNet' not in ARCH_REGISTRY:
            continue
        with open(path) as f:
            opt = yaml.safe_load(f)
        assert opt['network_g']['type'] in ARCH_REGISTRY
        tlc_opt = MultiStageRestorationModel.tlc_options(opt)
        assert tlc_opt['train_size'] == 256 and tlc_opt['base_size'] == 384 and tlc_opt['compare']
        assert not opt['val'].get('grids')
