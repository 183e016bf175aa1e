"""FCN: release-compatible parameters and checkpoints, stage 0 wiring, stage outputs, batch independence, TLC, and
the non-collapsing stage-ratio loss (FCN Eq. 1) through the shipped option files."""
import copy
import logging
import os
import re

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils import get_root_logger
from torch import nn

from conftest import PY, REPO, assert_stage_order, on_tiny_data, run_cli, write_options
from hinet_plugins import tlc
from hinet_plugins.archs.blocks import CAB, conv
from hinet_plugins.archs.mprnet_arch import MPRNet, SkipUpSample, cab_stack
from hinet_plugins.errors import ConfigError

TINY = dict(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1)
RELEASE_LOSSES = [{'type': 'CharbonnierLoss', 'loss_weight': 1.0, 'reduction': 'mean', 'eps': 1e-6},
                  {'type': 'EdgeLoss', 'loss_weight': 0.05, 'reduction': 'mean', 'eps': 1e-6}]


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """The tiny nets here run many small ops, for which a second OpenMP thread only adds spin-waiting on a busy
    machine (as in the subprocesses: OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fcn(**kw):
    return build_network({'type': 'FCN', **kw})


RATIOS = 'FCN-GoPro-StageRatio'  # the paper's stage ratios over the release's recipe (FCN-GoPro.yml)


def shipped(kind, name='FCN-GoPro'):
    with open(os.path.join(REPO, 'options', kind, f'{name}.yml')) as f:
        return yaml.safe_load(f)


def build_in_process(opt, is_train):
    from basicsr.models import build_model
    opt = copy.deepcopy(opt)
    opt.update(is_train=is_train, dist=False, num_gpu=0, rank=0, world_size=1)
    return build_model(opt)


def release_decoder1(net):
    """The release's ``stage1_decoder1`` (built, never called), laid out from the package's blocks; its CABs use
    the network's one shared PReLU, as in the release."""
    n, s = net.shallow_feat1[0].out_channels, net.stage1_encoder.down12.down[1].out_channels - \
        net.shallow_feat1[0].out_channels
    act = net.shallow_feat1[1].body[1]
    dec = nn.Module()
    dec.decoder_level1 = cab_stack(2, n, 3, 4, False, act)
    dec.decoder_level2 = nn.Sequential(conv(n, n + s, 3), conv(n, n + s, 3))
    dec.decoder_level3 = nn.Sequential(conv(n, n + 2 * s, 3), conv(n, n + 2 * s, 3))
    dec.skip_attn1 = CAB(n, 3, 4, False, act)
    dec.skip_attn2 = CAB(n + s, 3, 4, False, act)
    dec.up21, dec.up32 = SkipUpSample(n, s), SkipUpSample(n + s, s)
    return dec, act


# ----------------------------------------------------------------------------- release compatibility
def test_parameter_count_names_and_release_layout():
    net = fcn()  # the paper's width
    assert sum(p.numel() for p in net.parameters()) == 20_309_377
    sd = net.state_dict()
    mpr = MPRNet().state_dict()
    new = {k: tuple(v.shape) for k, v in sd.items() if k not in mpr}
    assert set(mpr) <= set(sd) and all(sd[k].shape == mpr[k].shape for k in mpr)
    assert new == {'shallow_feat0.0.weight': (96, 3, 3, 3), 'shallow_feat0.1.CA.conv_du.0.weight': (24, 96, 1, 1),
                   'shallow_feat0.1.CA.conv_du.2.weight': (96, 24, 1, 1),
                   'shallow_feat0.1.body.0.weight': (96, 96, 3, 3), 'shallow_feat0.1.body.2.weight': (96, 96, 3, 3),
                   'attention_down.weight': (48, 96, 1, 1), 'attention_up.weight': (96, 48, 1, 1)}
    assert isinstance(net.shallow_feat0[1].body[1], nn.SELU)  # processing block: its own SELU, not the PReLU
    # the release's model: + the unused decoder = 21,826,561 parameters, 1,517,184 of them in stage1_decoder1
    dec, act = release_decoder1(net)
    assert sum(p.numel() for p in dec.parameters() if p is not act.weight) == 1_517_184
    # width follows n_feat (the release hard-codes 96 -> 48 -> 96)
    small = fcn(**TINY).state_dict()
    assert small['attention_down.weight'].shape == (4, 8, 1, 1) and small['attention_up.weight'].shape == (8, 4, 1, 1)
    train, test = shipped('train', RATIOS)['network_g'], shipped('test')['network_g']
    assert train == test and {k: train[k] for k in ('n_feat', 'scale_unetfeats', 'scale_orsnetfeats', 'num_cab',
                                                    'reduction', 'bias')} == dict(
        n_feat=96, scale_unetfeats=48, scale_orsnetfeats=32, num_cab=8, reduction=4, bias=False)


def release_checkpoint(path, net, extra=None, drop=None):
    """A file laid out like the release's: {'epoch', 'state_dict' ('module.' keys, with stage1_decoder1), ...}."""
    dec, _ = release_decoder1(net)
    state = dict(net.state_dict())
    state.update({f'stage1_decoder1.{k}': v for k, v in dec.state_dict().items()})
    state.update(extra or {})
    for key in drop or ():
        state.pop(key)
    torch.save({'epoch': 3000, 'state_dict': {'module.' + k: v for k, v in state.items()}, 'optimizer': {}}, path)


def test_release_checkpoint_through_test_option_file(tmp_path):
    torch.manual_seed(5)
    src = fcn(**TINY)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01)
    release_checkpoint(tmp_path / 'release.pth', src)
    opt = shipped('test')
    opt['network_g'].update(TINY)
    opt['path']['pretrain_network_g'] = str(tmp_path / 'release.pth')
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = get_root_logger()  # no log file in process: its level is unset (WARNING); runs log at INFO
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        net = build_in_process(opt, is_train=False).net_g
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    got, expected = net.state_dict(), src.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in got)
    notes = [r.getMessage() for r in records if r.getMessage().startswith('FCN: dropped')]
    assert len(notes) == 1 and re.search(r'dropped 26 checkpoint keys stage1_decoder1\.\*', notes[0])
    # everything else stays strict: a missing key or an unknown one is a clear error
    for name, kw in (('missing', {'drop': ['attention_up.weight']}),
                     ('unknown', {'extra': {'attention_mid.weight': torch.zeros(1)}})):
        release_checkpoint(tmp_path / f'{name}.pth', src, **kw)
        opt['path']['pretrain_network_g'] = str(tmp_path / f'{name}.pth')
        with pytest.raises(ConfigError, match='attention_up.weight' if name == 'missing' else 'attention_mid'):
            build_in_process(opt, is_train=False)


def test_release_checkpoint_alone_is_detected_as_fcn_never_mprnet(tmp_path):
    """The release layout (with its unused decoder) at the paper's width, no option file: FCN; the same file
    without stage 0 is an MPRNet; loaded through ``Restorer.load(checkpoint=...)`` it computes what the source does."""
    from hinet_plugins.archs import detect
    from hinet_plugins.restore import Restorer
    with torch.device('meta'):
        big = fcn()
    dec, _ = release_decoder1(big)
    state = {**big.state_dict(), **{f'stage1_decoder1.{k}': v for k, v in dec.state_dict().items()}}
    found = detect({'epoch': 1, 'state_dict': {'module.' + k: v for k, v in state.items()}})
    assert found == {'type': 'FCN', 'in_c': 3, 'out_c': 3, 'n_feat': 96, 'scale_unetfeats': 48,
                     'scale_orsnetfeats': 32, 'num_cab': 8, 'kernel_size': 3, 'reduction': 4, 'bias': False}
    mpr = {k: v for k, v in state.items() if not k.startswith(('shallow_feat0', 'attention_', 'stage1_decoder1'))}
    assert detect(mpr)['type'] == 'MPRNet'
    torch.manual_seed(2)
    src = fcn(**TINY).eval()
    release_checkpoint(tmp_path / 'release.pth', src)
    restorer = Restorer.load(checkpoint=str(tmp_path / 'release.pth'))
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        assert torch.equal(restorer.net(x)[-1], src(x)[-1]) and 'detected FCN(' in restorer.description


# ----------------------------------------------------------------------------- forward
def test_outputs_in_stage_order_final_last():
    assert_stage_order(lambda: fcn(**TINY), ['sam12.conv2', 'sam23.conv2', 'tail'])


def stage0_by_hand(net, half):
    """The 4 patches of a half as one batch of (H/2) x (W/4) images (so each patch's channel attention pools over
    that patch only), back to a (H/2) x W map."""
    n, c, h, w = half.shape
    patches = half.reshape(n, c, h, 4, w // 4).permute(3, 0, 1, 2, 4).reshape(4 * n, c, h, w // 4)
    feats = net.shallow_feat0(patches)
    return feats.reshape(4, n, -1, h, w // 4).permute(1, 2, 3, 0, 4).reshape(n, -1, h, w)


def test_stage0_is_added_to_level1_features_gated_on_top():
    torch.manual_seed(0)
    net = fcn(**TINY).eval()
    x = torch.rand(2, 3, 16, 32)
    halves = [x[:, :, :8], x[:, :, 8:]]
    with torch.no_grad():
        got = net.stage1_encode(halves)
        base = MPRNet.stage1_encode(net, halves)
        top, bottom = stage0_by_hand(net, halves[0]), stage0_by_hand(net, halves[1])
        mean = top.mean(dim=(1, 2, 3), keepdim=True)
        var = top.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        normed = (top - mean) / torch.sqrt(var + 1e-5)  # LayerNorm of each sample over (C, H, W), no affine
        gate = torch.sigmoid(nn.functional.conv2d(nn.functional.conv2d(normed, net.attention_down.weight),
                                                  net.attention_up.weight))
    assert top.shape == base[0][0].shape == (2, 8, 8, 32)
    assert torch.allclose(got[0][0], base[0][0] + gate * top, atol=1e-6)
    assert torch.allclose(got[1][0], base[1][0] + bottom, atol=1e-6)
    for half in (0, 1):  # levels 2 and 3 are MPRNet's
        assert all(torch.equal(got[half][lvl], base[half][lvl]) for lvl in (1, 2))


def test_without_stage0_it_is_mprnet_and_stage0_reaches_every_stage():
    torch.manual_seed(0)
    net = fcn(**TINY).eval()
    mpr = MPRNet(**TINY).eval()
    mpr.load_state_dict({k: v for k, v in net.state_dict().items() if k in mpr.state_dict()}, strict=True)
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        ref, with_stage0 = mpr(x), net(x)
        nn.init.zeros_(net.shallow_feat0[0].weight)  # stage-0 features are 0 (bias-free): nothing is added
        without = net(x)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(without, ref))
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(with_stage0, ref))  # stage 1, 2 (CSFF) and 3 see it


def test_layernorm_scope_sample_is_batch_independent_batch_is_the_release():
    torch.manual_seed(0)
    per_sample = fcn(**TINY).eval()
    batch_wide = fcn(layernorm_scope='batch', **TINY).eval()
    batch_wide.load_state_dict(per_sample.state_dict(), strict=True)  # the scope adds no parameter
    a, b = torch.rand(1, 3, 16, 24), torch.rand(1, 3, 16, 24) * 3
    with torch.no_grad():
        alone = [o for o in per_sample(a)]
        together = per_sample(torch.cat([a, b]))
        assert all(torch.allclose(o[:1], r, atol=1e-6) for o, r in zip(together, alone))
        assert all(torch.allclose(o, r, atol=1e-6) for o, r in zip(batch_wide(a), alone))  # same for one sample
        mixed = batch_wide(torch.cat([a, b]))
    assert (mixed[0][:1, :, :8] - alone[0][:, :, :8]).abs().max() > 1e-4  # top half of stage 1: gated, mixed
    assert torch.allclose(mixed[0][:1, :, 8:], alone[0][:, :, 8:], atol=1e-6)  # bottom half: not gated
    with pytest.raises(ValueError, match='layernorm_scope must be one of'):
        fcn(layernorm_scope='global', **TINY)


# ----------------------------------------------------------------------------- TLC
def test_tlc_makes_channel_attention_and_layernorm_local():
    torch.manual_seed(0)
    ref = fcn(**TINY).eval()
    n_pools = sum(isinstance(m, nn.AdaptiveAvgPool2d) for m in ref.modules())
    # train_size = base_size: every window is the map size at 32x32, i.e. the global op there
    net = build_network({'type': 'FCNLocal', 'train_size': 32, 'base_size': 32, **TINY}).eval()
    net.load_state_dict(ref.state_dict(), strict=True)
    assert isinstance(net, type(ref))
    pools = [m for m in net.modules() if isinstance(m, tlc.LocalAvgPool2d)]
    assert len(pools) == n_pools and isinstance(net.shallow_feat0[1].CA.avg_pool, tlc.LocalAvgPool2d)
    assert isinstance(net.attention_norm, tlc.LocalGroupNorm) and net.attention_norm.kernel_size == (16, 32)
    assert net.shallow_feat0[1].CA.avg_pool.kernel_size == (16, 8)  # a (H/2) x (W/4) stage-0 patch
    x, big = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(net(x), ref(x)))
        assert (net(big)[-1] - ref(big)[-1]).abs().max() > 1e-4  # local windows on a larger image
    batch_scope = fcn(layernorm_scope='batch', **TINY)
    with pytest.warns(UserWarning, match='attention_norm'):
        conversion = tlc.convert(batch_scope, 32)
    assert any('attention_norm' in line and 'layer_norm' in line for line in conversion.unsupported)


# ----------------------------------------------------------------------------- stage-ratio loss
def test_stage_ratio_loss_reaches_its_optimum_where_the_literal_form_collapses():
    torch.manual_seed(0)
    gt = torch.rand(1, 3, 8, 8)
    preds = [gt + s * torch.randn_like(gt) for s in (0.3, 0.2, 0.15)]
    base = {'type': 'L1Loss', 'loss_weight': 1.0}
    L = torch.stack([(p - gt).abs().mean() for p in preds])

    def train(loss, steps=300):
        optim = torch.optim.Adam(loss.parameters(), lr=0.1)
        for _ in range(steps):
            optim.zero_grad()
            loss(preds, gt).backward()
            optim.step()
        return loss.ratios().detach()

    class Literal(nn.Module):  # Eq. 1 as written: sum_s r_s L_s, r_s = sigmoid(theta_s) in (0, 1)
        def __init__(self):
            super().__init__()
            self.logits = nn.Parameter(torch.zeros(3))

        def ratios(self):
            return torch.sigmoid(self.logits)

        def forward(self, preds, gt):
            return (self.ratios() * torch.stack([(p - gt).abs().mean() for p in preds])).sum()

    assert train(Literal()).max() < 1e-2  # every ratio goes to 0
    soft = train(build_loss({'type': 'StageRatioLoss', 'base': base, 'mode': 'softmax', 'tau': 1.0}))
    assert torch.allclose(soft, torch.softmax(-L / L.mean(), 0), atol=2e-3) and soft.min() > 0.2
    unc = train(build_loss({'type': 'StageRatioLoss', 'base': base, 'mode': 'uncertainty', 'lam': 0.5}))
    assert torch.allclose(unc, 0.5 * L.mean() / L, atol=3e-3) and unc.min() > 0.3
    # uniform softmax ratios = the plain sum over stages; the log carries the ratios
    loss = build_loss({'type': 'StageRatioLoss', 'base': base})
    assert loss(preds, gt).detach().item() == pytest.approx(float(L.sum()), rel=1e-6)
    assert list(loss.log_dict()) == ['r_stage1', 'r_stage2', 'r_stage3']
    init = build_loss({'type': 'StageRatioLoss', 'base': base, 'mode': 'uncertainty', 'init_ratios': [0.2, 0.5, 0.9]})
    assert torch.allclose(init.ratios(), torch.tensor([0.2, 0.5, 0.9]))
    for bad, match in (({'mode': 'literal'}, 'StageRatioLoss.mode'), ({'init_ratios': [0.5, 1.0, 0.2]}, 'init_ratios'),
                       ({'base': []}, 'StageRatioLoss.base')):
        with pytest.raises(ValueError, match=match) as info:  # the option layer names the key (preflight)
            build_loss({'type': 'StageRatioLoss', 'base': base, **bad})
        assert type(info.value) is ValueError
    with pytest.raises(ConfigError, match='num_stages: 2'):
        loss(preds[:2], gt)


def tiny_options(opt, data, total_iter):
    opt = on_tiny_data(opt, data, total_iter, gt_size=32, network=TINY)
    opt['train']['warmup_iter'] = 2
    return opt


def test_shipped_loss_starts_as_the_release_loss_which_stays_available(tiny_data):
    opt = tiny_options(shipped('train', RATIOS), tiny_data, 2)
    train = shipped('train', RATIOS)['train']
    assert train['total_iter'] == train['scheduler']['T_max'] == 3000 * 132 and train['warmup_iter'] == 3 * 132
    assert train['optim_g']['lr'] == 2e-4 and train['scheduler']['eta_min'] == 1e-6
    ds = shipped('train', RATIOS)['datasets']['train']
    assert ds['gt_size'] == 256 and ds['batch_size_per_gpu'] * 4 == 16
    model = build_in_process(opt, is_train=True)
    release = copy.deepcopy(opt)
    release['train']['losses'] = RELEASE_LOSSES
    release_model = build_in_process(release, is_train=True)
    torch.manual_seed(1)
    gt = torch.rand(2, 3, 16, 24)
    preds = [torch.rand(2, 3, 16, 24) for _ in range(3)]
    model.lq = release_model.lq = gt
    total, log = model.compute_losses(preds, gt)
    total_release, log_release = release_model.compute_losses(preds, gt)
    assert set(log) == {'l_stageratio', 'r_stage1', 'r_stage2', 'r_stage3'}
    assert set(log_release) == {'l_charbonnier', 'l_edge'}
    assert float(total.detach()) == pytest.approx(float(total_release), rel=1e-6)
    assert len(model.optimizer_g.param_groups) == 2 and len(release_model.optimizer_g.param_groups) == 1


@pytest.mark.slow
def test_training_keeps_ratios_away_from_zero_and_resume_restores_them(tiny_data, tmp_path):
    opt = tiny_options(shipped('train', RATIOS), tiny_data, total_iter=6)
    opt['train']['optim_loss'] = {'lr': 0.5}  # large on purpose: the literal Eq. 1 would be near 0 in 6 steps
    path = write_options(opt, tmp_path / 'o.yml')
    proc = run_cli([PY, '-m', 'hinet_plugins.train', '-opt', path], tmp_path,
                   env_extra={'PYTHONPATH': REPO, 'OMP_NUM_THREADS': '1'})
    exp = tmp_path / 'experiments' / RATIOS
    assert (exp / 'models' / 'net_g_latest.pth').is_file() and '# psnr' in proc.stdout
    logged = [[float(v) for v in re.findall(r'r_stage\d: ([0-9.e+-]+)', line)]
              for line in proc.stdout.splitlines() if 'l_stageratio' in line]
    assert len(logged) == 6 and all(len(r) == 3 and sum(r) == pytest.approx(1, abs=1e-3) for r in logged)
    state = torch.load(exp / 'training_states' / '6.state', map_location='cpu', weights_only=False)
    logits = state['losses']['l_stageratio']['logits']
    ratios = torch.softmax(logits, 0)
    assert ratios.min() > 0.1 and (ratios - 1 / 3).abs().max() > 1e-3  # trained, and away from 0
    assert min(min(r) for r in logged) > 0.1
    assert len(state['optimizers'][0]['param_groups']) == 2
    # resume: the ratios come back from the training state
    opt['path']['resume_state'] = str(exp / 'training_states' / '6.state')
    model = build_in_process(opt, is_train=True)
    loss = dict(model.losses)['l_stageratio']
    assert torch.allclose(loss.ratios(), torch.full((3,), 1 / 3))
    model.resume_training(state)
    assert torch.equal(loss.logits.detach(), logits)
