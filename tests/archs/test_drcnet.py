"""DRCNet: DFR block, DRCNet architecture, Intra-/Extra-CR losses, option files (issue 5)."""
import functools
import os
from types import SimpleNamespace

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.losses import build_loss
from torch import nn
from torch.nn import functional as F

from conftest import (REPO, base_options, launch_selected, load_option_file, module_train, on_tiny_data,
                      write_options)
from hinet_plugins.archs.drcnet_arch import (DFR, DFR_VARIANTS, RELEASE_DFR, EnergyAttention, MaskedRegionNorm,
                                             RegionNorm)
from hinet_plugins.errors import ConfigError
from hinet_plugins.losses.contrastive_loss import IntraCRLoss


def nparams(net):
    return sum(p.numel() for p in net.parameters())


@pytest.fixture(scope='module')
def vgg_file(tmp_path_factory):
    """A random-weight torchvision vgg19 state_dict (small file: layers past conv3_1 are stored as expanded zeros)."""
    from torchvision.models import vgg19
    with torch.device('meta'):
        shapes = {k: v.shape for k, v in vgg19(weights=None).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if key.startswith('features.') and int(key.split('.')[1]) < 12:  # conv1_1 .. conv3_1
            fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 1
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = torch.zeros(1).expand(shape)
    path = tmp_path_factory.mktemp('vgg') / 'vgg19_random.pth'
    torch.save(state, path)
    return str(path), state


# ----------------------------------------------------------------------------- architecture
def test_drcnet_release_parameter_count_and_names():
    net = build_network({'type': 'DRCNet'})
    assert nparams(net) == 18_975_798
    sd = net.state_dict()
    for stage in (1, 2):
        for level in range(4):
            half = 32 * 2 ** level
            pre = f'down_path_{stage}.{level}.'
            assert sd[pre + 'norm.sa.conv1.weight'].shape == (1, 2, 7, 7)
            assert pre + 'norm.sa.conv1.bias' not in sd
            assert sd[pre + 'norm.sa.gamma_conv.weight'].shape == (1, 1, 7, 7)
            assert pre + 'norm.sa.beta_conv.bias' in sd
            assert sd[pre + 'norm.rn.bn_norm.weight'].shape == (half,)
            assert sd[pre + 'conv_2.weight'].shape[1] == sd[pre + 'conv_1.weight'].shape[1]  # conv_2 on the input
            for key in ('identity.weight', 'conv_1.bias'):
                assert pre + key in sd
            assert (pre + 'downsample.weight' in sd) == (level < 3)
            assert (pre + 'csff_enc.weight' in sd) == (stage == 2 and level < 3)
    for key in ('conv_01.weight', 'conv_02.weight', 'up_path_2.2.conv_block.conv_2.weight', 'skip_conv_1.0.weight',
                'sam12.conv3.weight', 'cat12.weight', 'last.bias'):
        assert key in sd
    assert not any('up_path' in k and 'norm' in k for k in sd)  # decoders: plain HINet blocks


def test_region_norm_exists_outside_the_hin_range_but_is_skipped():
    net = build_network({'type': 'DRCNet', 'wf': 8, 'hin_position_left': 2})
    assert [b.use_norm for b in net.down_path_1] == [False, False, True, True]
    assert all(hasattr(b, 'norm') for b in net.down_path_1)
    assert nparams(net) == nparams(build_network({'type': 'DRCNet', 'wf': 8}))
    calls = []
    net.down_path_1[0].norm.register_forward_hook(lambda *a: calls.append(0))
    net.down_path_1[2].norm.register_forward_hook(lambda *a: calls.append(2))
    net(torch.rand(1, 3, 16, 16))
    assert calls == [2]


def test_table4_variants_from_network_options():
    full = build_network({'type': 'DRCNet', 'wf': 8})
    nets = {v: build_network({'type': 'DRCNet', 'wf': 8, 'dfr_variant': v}) for v in DFR_VARIANTS}
    x = torch.rand(1, 3, 16, 16)
    for variant, (sf, ea, identity) in DFR_VARIANTS.items():
        block = nets[variant].down_path_2[1]
        assert (hasattr(block, 'norm'), hasattr(block, 'conv_2'), hasattr(block, 'identity')) == (sf, ea, identity)
        assert nets[variant](x)[-1].shape == x.shape
    identity = sum(nparams(b.identity) for p in (full.down_path_1, full.down_path_2) for b in p)
    assert nparams(nets['full']) - nparams(nets['sf_ea']) == identity
    assert nparams(nets['sf_identity']) - nparams(nets['sf']) == identity
    with pytest.raises(ValueError, match='dfr_variant must be one of'):
        build_network({'type': 'DRCNet', 'dfr_variant': 'DFR'})
    with pytest.raises(ValueError, match='mask_mode must be one of'):
        build_network({'type': 'DRCNet', 'wf': 8, 'mask_mode': 'straight'})


# ----------------------------------------------------------------------------- DFR block
def test_dfr_plugin_shapes_and_gradients():
    torch.manual_seed(0)
    block = nn.Sequential(DFR(6, 10), DFR(10, 4, variant='sf_ea', mask_mode='soft'))
    x = torch.randn(3, 6, 9, 13, requires_grad=True)
    y = block(x)
    assert y.shape == (3, 4, 9, 13)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


def test_mask_threshold_semantics_and_modes():
    m_sr = torch.tensor([0.2, 0.7499, 0.75, 0.9]).view(1, 1, 2, 2).requires_grad_()
    hard = RegionNorm(4, mask_mode='hard').mask(m_sr)
    assert hard.flatten().tolist() == [0, 0, 1, 1] and not hard.requires_grad  # M_sr >= t
    assert RegionNorm(4, mask_threshold=0.8, mask_mode='hard').mask(m_sr).flatten().tolist() == [0, 0, 0, 1]
    ste = RegionNorm(4, mask_mode='ste').mask(m_sr)
    assert torch.equal(ste, hard)  # forward: the hard mask
    (grad,) = torch.autograd.grad((ste * torch.arange(4.).view(1, 1, 2, 2)).sum(), m_sr)
    assert grad.flatten().tolist() == [0, 1, 2, 3]  # backward: identity to M_sr
    soft = RegionNorm(4, mask_mode='soft').mask(m_sr).flatten()
    assert soft[2].item() == pytest.approx(0.5) and soft[0] < 1e-4 < soft[1] < 0.5 < soft[3] and soft.requires_grad


@pytest.mark.parametrize('mode', ['hard', 'ste'])
def test_ste_trains_the_response_map(mode):
    """With gamma/beta convs zeroed, the response conv only learns through the mask: STE yes, hard no."""
    torch.manual_seed(0)
    dfr = DFR(4, 8, mask_mode=mode, variant='sf')
    with torch.no_grad():
        dfr.norm.sa.conv1.weight.mul_(20)
        for conv in (dfr.norm.sa.gamma_conv, dfr.norm.sa.beta_conv):
            conv.weight.zero_()
            conv.bias.zero_()
    x = torch.randn(2, 4, 12, 12)
    m_sr = dfr.norm.sa(dfr.conv_1(x)[:, :4])[0]
    mask = m_sr >= 0.75
    assert 0 < mask.float().mean() < 1  # both regions present
    dfr(x).square().mean().backward()
    grad = dfr.norm.sa.conv1.weight.grad
    assert torch.isfinite(grad).all()
    assert (grad.abs().sum() > 0) == (mode == 'ste')


def test_region_norm_normalises_each_region_with_its_own_statistics():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7) * 3 + 1
    mask = (torch.rand(2, 1, 6, 7) > 0.6).float()
    rn = MaskedRegionNorm(3, 'sample', region_prior=0.0)
    with torch.no_grad():
        rn.bn_norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        rn.bn_norm.bias.copy_(torch.tensor([0.0, 0.3, -1.0]))
    out = rn(x, mask)
    ref = torch.empty_like(x)
    for n in range(2):
        for c in range(3):
            for region in (mask[n, 0] > 0, mask[n, 0] == 0):
                v = x[n, c][region]
                ref[n, c][region] = (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + 1e-5)
    ref = ref * rn.bn_norm.weight.view(1, 3, 1, 1) + rn.bn_norm.bias.view(1, 3, 1, 1)
    assert torch.allclose(out, ref, atol=1e-5)
    # an empty region (M_sr < t everywhere, e.g. at initialisation) falls back to instance-norm statistics
    empty = MaskedRegionNorm(3, 'sample')(x, torch.zeros(2, 1, 6, 7))
    assert torch.allclose(empty, nn.InstanceNorm2d(3)(x), atol=1e-4)


def test_release_region_stats_reproduce_region_normalization():
    """'batch' = the release: fill with the batch-wide region mean, affine IN, x sqrt(fraction), regions summed."""
    torch.manual_seed(1)
    x = torch.randn(3, 4, 5, 6) + 2
    mask = (torch.rand(3, 1, 5, 6) > 0.5).float()
    mask[1] = 0  # a sample without the region: the batch-wide mean still fills it
    rn = MaskedRegionNorm(4, 'batch')
    inorm = nn.InstanceNorm2d(4, affine=True)
    with torch.no_grad():
        inorm.weight.uniform_(0.5, 2)
        inorm.bias.uniform_(-1, 1)
        rn.bn_norm.weight.copy_(inorm.weight)
        rn.bn_norm.bias.copy_(inorm.bias)
    ref = 0
    for r in (mask, 1 - mask):
        count = r.sum() * torch.ones(4)
        mu = (x * r).sum(dim=(0, 2, 3)) / count
        ref = ref + inorm(x * r + (1 - r) * mu.view(1, 4, 1, 1)) * torch.sqrt(count / (3 * 5 * 6)).view(1, 4, 1, 1)
    assert torch.allclose(rn(x, mask), ref, atol=1e-4)  # sample 1: IN of a constant map amplifies rounding
    # samples influence each other in the release reading, not in ours
    x2 = x.clone()
    x2[2] += 5
    assert not torch.allclose(rn(x2, mask)[0], rn(x, mask)[0], atol=1e-3)
    ours = MaskedRegionNorm(4, 'sample')
    assert torch.allclose(ours(x2, mask)[0], ours(x, mask)[0], atol=1e-6)


@pytest.mark.parametrize('unbiased,lam', [(False, 1e-6), (True, 1e-4)])
def test_energy_attention_is_simam(unbiased, lam):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7) * 2 + 3
    d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
    n = 5 * 7 - (1 if unbiased else 0)
    ref = x * torch.sigmoid(d / (4 * (d.sum(dim=(2, 3), keepdim=True) / n + lam)) + 0.5)
    assert torch.allclose(EnergyAttention(lam, unbiased)(x), ref, atol=1e-5)


def test_global_statistics_go_through_pool_modules():
    """Every spatial statistic uses an AdaptiveAvgPool2d module: pools returning full-size maps of the same global
    means (what a TLC converter's local pool returns when its window covers the map) give the same output."""
    torch.manual_seed(0)
    for kwargs in ({}, dict(RELEASE_DFR, mask_mode='hard')):
        net = build_network({'type': 'DRCNet', 'wf': 8, **kwargs}).eval()
        pools = [m for m in net.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
        assert len(pools) == 2 * 4 * 2  # per encoder block: region-norm pool + energy pool
        x = torch.rand(2, 3, 24, 24)
        with torch.no_grad():
            ref = net(x)[-1]
            for p in pools:
                p.forward = (lambda t, _p=p: nn.AdaptiveAvgPool2d.forward(_p, t).expand_as(t).clone())
            assert torch.allclose(net(x)[-1], ref, atol=1e-5)
            for p in pools:  # and a different statistic changes the output: the pools are really used
                p.forward = (lambda t: F.avg_pool2d(t, 3, 1, 1, count_include_pad=False))
            assert not torch.allclose(net(x)[-1], ref, atol=1e-3)


@pytest.mark.parametrize('release', [False, True], ids=['paper', 'release'])
def test_tlc_localises_every_dfr_statistic(release):
    """DRCNetLocal (TLC converter through the registry) swaps the 16 DFR pools and finds no other global op; it
    equals DRCNet when the windows cover the map, is local otherwise, and runs on larger inputs."""
    from hinet_plugins.tlc import LocalAvgPool2d, convert
    extra = dict(RELEASE_DFR) if release else {}
    torch.manual_seed(0)
    net = build_network({'type': 'DRCNet', 'wf': 8, **extra}).eval()
    local = build_network({'type': 'DRCNetLocal', 'wf': 8, 'train_size': 32, 'base_size': 64, **extra}).eval()
    local.load_state_dict(net.state_dict(), strict=True)
    pools = {n for n, m in local.named_modules() if isinstance(m, LocalAvgPool2d)}
    assert len(pools) == 16 and all(n.endswith(('.energy.pool', '.norm.rn.pool')) for n in pools)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)[-1]
        assert torch.allclose(local(x)[-1], ref, atol=1e-5)  # windows = feature sizes of a 64 input: global
        with convert(net, 32, 48) as conv:
            assert conv.unsupported == [] and len(conv.layers) == 16
            assert not torch.allclose(net(x)[-1], ref, atol=1e-4)
            big = net(torch.rand(1, 3, 96, 80))[-1]
            assert big.shape == (1, 3, 96, 80) and torch.isfinite(big).all()
        assert torch.equal(net(x)[-1], ref)  # restored

# ----------------------------------------------------------------------------- losses
@pytest.fixture(scope='module')
def intra_loss(vgg_file):
    return build_loss({'type': 'IntraCRLoss', 'vgg_weights': vgg_file[0]})


def _reference_features(state, img):
    """relu1_1, relu2_1, relu3_1 of a torchvision vgg19 with the random weights, computed directly."""
    from torchvision.models.vgg import cfgs, make_layers
    features = make_layers(cfgs['E'])[:12]
    features.load_state_dict({k[len('features.'):]: v for k, v in state.items()
                              if k.startswith('features.') and int(k.split('.')[1]) < 12})
    return [features[:end](img) for end in (2, 7, 12)]


def test_intra_cr_matches_hand_computation(intra_loss, vgg_file):
    torch.manual_seed(0)
    gt, lq = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    pred = (0.7 * gt + 0.3 * lq).requires_grad_()
    with torch.no_grad():
        fx = _reference_features(vgg_file[1], pred)
        fj = _reference_features(vgg_file[1], gt)
        fneg = [_reference_features(vgg_file[1], lam * lq + (1 - lam) * gt) for lam in (1.0, 0.95, 0.90)]
    cr = 0
    for layer, w in enumerate((1 / 16, 1 / 8, 1 / 4)):
        d = lambda f: (fx[layer] - f[layer]).abs().mean()  # noqa: E731
        cr += w * d(fj) / (d(fneg[0]) + 0.95 * d(fneg[1]) + 0.90 * d(fneg[2]) + 1e-7)
    expected = (pred - gt).abs().mean() + 0.04 * cr
    value = intra_loss(pred, gt, lq=lq)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert IntraCRLoss.needs_lq and intra_loss(gt, gt, lq=lq).item() == 0.0  # X = J: both terms vanish
    with pytest.raises(ValueError, match='lq'):
        intra_loss(pred, gt)


def test_intra_cr_mixup_readings():
    gt, lq = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    cfg = dict(lambdas=[1.0, 0.9], negative_weights=[1.0, 0.9])
    release = IntraCRLoss.negatives(SimpleNamespace(mixup='release', **cfg), gt, lq)
    paper = IntraCRLoss.negatives(SimpleNamespace(mixup='paper', **cfg), gt, lq)
    assert torch.equal(release[0][0], lq) and release[1][0].mean().item() == pytest.approx(0.9)
    assert torch.equal(paper[0][0], gt) and paper[1][0].mean().item() == pytest.approx(0.1)  # Eq. 11 literal


def test_extra_cr_uses_other_images_of_the_batch(vgg_file):
    loss = build_loss({'type': 'ExtraCRLoss', 'vgg_weights': vgg_file[0], 'alpha': 0.1, 'l1_weight': 0})
    torch.manual_seed(0)
    gt, lq = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    pred = torch.rand(3, 3, 8, 8)
    negs = loss.negatives(gt, lq)
    assert len(negs) == 2  # three requested, a batch of 3 has two other images
    assert torch.equal(negs[0][0][0], lq[1]) and torch.equal(negs[1][0][0], lq[2])
    with torch.no_grad():
        fx, fj = _reference_features(vgg_file[1], pred), _reference_features(vgg_file[1], gt)
        fn = [_reference_features(vgg_file[1], lq.roll(-k, 0)) for k in (1, 2)]
    expected = 0.1 * sum(w * (fx[i] - fj[i]).abs().mean() / (sum((fx[i] - f[i]).abs().mean() for f in fn) + 1e-7)
                         for i, w in enumerate((1 / 16, 1 / 8, 1 / 4)))
    assert loss(pred, gt, lq=lq).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ConfigError, match='batch_size_per_gpu'):
        loss(pred[:1], gt[:1], lq=lq[:1])


def test_vgg_weights_errors_without_download(tmp_path, monkeypatch):
    import torchvision.models._api as tv_api
    monkeypatch.setattr(tv_api, 'load_state_dict_from_url', lambda *a, **k: pytest.fail('a download was attempted'))
    with pytest.raises(ValueError, match='vgg_weights is not set') as info:  # the option layer names the key
        build_loss({'type': 'IntraCRLoss'})
    assert type(info.value) is ValueError
    with pytest.raises(ValueError, match='does not exist'):
        build_loss({'type': 'ExtraCRLoss', 'vgg_weights': str(tmp_path / 'nope.pth')})
    bad = tmp_path / 'bad.pth'
    torch.save({'features.0.weight': torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match='not a torchvision vgg19 state_dict'):
        build_loss({'type': 'IntraCRLoss', 'vgg_weights': str(bad)})


# The two launches of this module (``python -m hinet_plugins.train``: a training, a rejected command) run in one
# interpreter (conftest.launch_batch); each test asserts on its own run (exit code and merged output).


@pytest.fixture(scope='module')
def launches(request, tiny_data, tmp_path_factory, vgg_file):
    """The launches of this module's selected tests, in one interpreter (the rejected one last)."""
    plans = {'test_drcnet_trains_with_intra_cr_from_the_shipped_option_file':
             functools.partial(_plan_intra_cr_training, tiny_data, vgg_file),
             'test_missing_vgg_weights_through_the_launcher': functools.partial(_plan_missing_vgg, tiny_data)}
    return launch_selected(request, plans, tmp_path_factory)


def _plan_missing_vgg(tiny_data, tmp_path):
    opt = base_options(tiny_data, name='drc_novgg', network={'type': 'DRCNet', 'wf': 8})
    opt['train'].pop('pixel_opt')
    opt['train']['losses'] = [{'type': 'L1Loss', 'loss_weight': 1.0},
                              {'type': 'IntraCRLoss', 'vgg_weights': 'experiments/pretrained_models/vgg19.pth'}]
    return module_train(write_options(opt, tmp_path / 'o.yml')), tmp_path


@pytest.mark.slow
def test_missing_vgg_weights_through_the_launcher(launches, request):
    _, proc = launches[request.node.name]  # its exit code and output, as a process of its own gives them
    assert proc.returncode != 0
    assert 'train.losses[1].vgg_weights' in proc.stdout and 'does not exist' in proc.stdout
    assert 'Traceback' not in proc.stdout


# ----------------------------------------------------------------------------- option files
@pytest.mark.parametrize('name', ['SIDD', 'GoPro', 'Rain13k'])
def test_shipped_drcnet_option_files_pair_with_their_test_files(name):
    with open(os.path.join(REPO, 'options', 'train', f'DRCNet-{name}.yml')) as f:
        opt = yaml.safe_load(f)
    tr = opt['train']  # the recipe (the release's) is checked in test_recipes.py
    assert tr['pixel_opt']['type'] == 'IntraCRLoss'
    assert tr['pixel_opt']['vgg_weights'] == 'experiments/pretrained_models/vgg19-dcbb9e9d.pth'
    net = opt['network_g']
    assert net['type'] == 'DRCNet' and net['mask_threshold'] == 0.75 and net['energy_lambda'] == 1e-6
    with open(os.path.join(REPO, 'options', 'test', f'DRCNet-{name}.yml')) as f:
        test_opt = yaml.safe_load(f)
    assert test_opt['network_g'] == net and 'test' in test_opt['datasets']


def _plan_intra_cr_training(tiny_data, vgg_file, tmp_path):
    opt = on_tiny_data(load_option_file('train', 'DRCNet-SIDD'), tiny_data, 2, gt_size=32, network={'wf': 8})
    opt['train']['pixel_opt']['vgg_weights'] = vgg_file[0]
    return module_train(write_options(opt, tmp_path / 'o.yml')), tmp_path


@pytest.mark.slow
def test_drcnet_trains_with_intra_cr_from_the_shipped_option_file(launches, request):
    tmp_path, proc = launches[request.node.name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert 'l_intracr' in proc.stdout and '# psnr' in proc.stdout
    ckpt = tmp_path / 'experiments' / 'DRCNet-SIDD' / 'models' / 'net_g_latest.pth'
    assert ckpt.is_file()
    # the shipped test option file's network takes that checkpoint with strict loading
    with open(os.path.join(REPO, 'options', 'test', 'DRCNet-SIDD.yml')) as f:
        test_net = dict(yaml.safe_load(f)['network_g'], wf=8)
    net = build_network(test_net)
    net.load_state_dict(torch.load(ckpt, map_location='cpu')['params'], strict=True)
    assert torch.isfinite(net(torch.rand(1, 3, 20, 20))[-1]).all()
