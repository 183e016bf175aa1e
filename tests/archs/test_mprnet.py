"""MPRNet: release-compatible parameters, stage outputs, losses, option files, checkpoint loading, MACs."""
import copy
import functools
import os
import re

import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.losses import build_loss
from scipy.ndimage import correlate

from conftest import (REPO, assert_stage_order, base_options, launch_selected, module_train, on_tiny_data,
                      write_options)
from hinet_plugins.errors import ConfigError

PRESETS = {'GoPro': (96, 48, 32, 20_127_073), 'SIDD': (80, 48, 32, 15_741_025), 'Rain13k': (40, 20, 16, 3_637_249)}
TINY = dict(n_feat=16, scale_unetfeats=8, scale_orsnetfeats=8, num_cab=2)


def mprnet(**kw):
    return build_network({'type': 'MPRNet', **kw})


def shipped(kind, task):
    with open(os.path.join(REPO, 'options', kind, f'MPRNet-{task}.yml')) as f:
        return yaml.safe_load(f)


def build_in_process(opt, is_train):
    from basicsr.models import build_model
    opt = copy.deepcopy(opt)
    opt.update(is_train=is_train, dist=False, num_gpu=0, rank=0, world_size=1)
    return build_model(opt)


# ----------------------------------------------------------------------------- release compatibility
@pytest.mark.parametrize('task', PRESETS)
def test_preset_parameter_counts(task):
    n_feat, unet, ors, count = PRESETS[task]
    net = mprnet(n_feat=n_feat, scale_unetfeats=unet, scale_orsnetfeats=ors)
    assert sum(p.numel() for p in net.parameters()) == count
    assert {k: v for k, v in shipped('train', task)['network_g'].items() if k.startswith(('n_feat', 'scale'))} == \
        dict(n_feat=n_feat, scale_unetfeats=unet, scale_orsnetfeats=ors)


def test_release_state_dict_layout():
    sd = mprnet().state_dict()  # deblurring defaults
    assert len(sd) == 316
    assert len({v.data_ptr() for v in sd.values()}) == 262
    prelu = [k for k in sd if k.endswith('body.1.weight') and sd[k].numel() == 1]
    assert len(prelu) == 55 and len({sd[k].data_ptr() for k in prelu}) == 1  # one PReLU behind 55 keys
    assert not [k for k in sd if k.endswith('.bias')] and 'act.weight' not in sd
    per_module = {}
    for k in sd:
        per_module[k.split('.')[0]] = per_module.get(k.split('.')[0], 0) + 1
    assert per_module == {'shallow_feat1': 6, 'shallow_feat2': 6, 'shallow_feat3': 6, 'stage1_encoder': 32,
                          'stage1_decoder': 42, 'stage2_encoder': 38, 'stage2_decoder': 42, 'stage3_orsnet': 135,
                          'sam12': 3, 'sam23': 3, 'concat12': 1, 'concat23': 1, 'tail': 1}
    shapes = {
        'shallow_feat1.0.weight': (96, 3, 3, 3),
        'stage1_encoder.encoder_level1.0.CA.conv_du.0.weight': (24, 96, 1, 1),
        'stage1_encoder.encoder_level3.1.body.2.weight': (192, 192, 3, 3),
        'stage1_encoder.down12.down.1.weight': (144, 96, 1, 1),
        'stage2_encoder.csff_dec2.weight': (144, 144, 1, 1),
        'stage1_decoder.skip_attn2.CA.conv_du.2.weight': (144, 36, 1, 1),
        'stage1_decoder.up32.up.1.weight': (144, 192, 1, 1),
        'stage3_orsnet.orb1.body.0.body.0.weight': (128, 128, 3, 3),
        'stage3_orsnet.orb3.body.8.weight': (128, 128, 3, 3),
        'stage3_orsnet.up_enc2.0.up.1.weight': (144, 192, 1, 1),
        'stage3_orsnet.up_dec1.up.1.weight': (96, 144, 1, 1),
        'stage3_orsnet.conv_enc3.weight': (128, 96, 1, 1),
        'sam12.conv1.weight': (96, 96, 1, 1), 'sam23.conv2.weight': (3, 96, 1, 1), 'sam23.conv3.weight': (96, 3, 1, 1),
        'concat12.weight': (96, 192, 3, 3), 'concat23.weight': (128, 192, 3, 3), 'tail.weight': (3, 128, 3, 3),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    keys = list(sd)
    assert keys.index('shallow_feat1.1.CA.conv_du.0.weight') < keys.index('shallow_feat1.1.body.0.weight')
    # a release checkpoint: all 316 keys, the 55 PReLU keys holding one value; it loads strictly
    release = {k: v.clone() for k, v in sd.items()}
    for k in prelu:
        release[k] = torch.full((1,), 0.123)
    net = mprnet()
    net.load_state_dict(release, strict=True)
    assert float(net.state_dict()['shallow_feat1.1.body.1.weight']) == pytest.approx(0.123)


# ----------------------------------------------------------------------------- forward
def test_outputs_in_stage_order_final_last():
    assert_stage_order(lambda: mprnet(**TINY), ['sam12.conv2', 'sam23.conv2', 'tail'])


def test_multi_patch_hierarchy():
    """Stage 1 sees the top and bottom halves separately; stage 2 decodes (and stage 3 sees) the whole image."""
    torch.manual_seed(0)
    net = mprnet(**TINY).eval()
    x = torch.rand(1, 3, 32, 32)
    y = x.clone()
    y[:, :, 16:] = torch.rand(1, 3, 16, 32)
    with torch.no_grad():
        a, b = net(x), net(y)
    assert torch.equal(a[0][:, :, :16], b[0][:, :, :16])
    assert not torch.allclose(a[1][:, :, :16], b[1][:, :, :16]) and not torch.allclose(a[2][:, :, :16], b[2][:, :, :16])


@pytest.mark.parametrize('size', [(37, 53), (5, 7), (24, 17)])
def test_any_input_size(size):
    torch.manual_seed(0)
    net = mprnet(**TINY).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        outs = net(x)
        assert [tuple(o.shape) for o in outs] == [(2, 3, *size)] * 3
        if size[0] > 8 and size[1] > 8:  # equals the release way: reflect-pad to a multiple of 8, crop back
            ph, pw = (-size[0]) % 8, (-size[1]) % 8
            ref = net(torch.nn.functional.pad(x, (0, pw, 0, ph), mode='reflect'))
            assert torch.allclose(outs[-1], ref[-1][..., :size[0], :size[1]], atol=1e-6)


def test_in_out_channels_must_match():
    with pytest.raises(ValueError, match='in_c'):
        mprnet(in_c=3, out_c=1, **TINY)


# ----------------------------------------------------------------------------- losses
G1 = np.array([0.05, 0.25, 0.4, 0.25, 0.05])


def laplacian_np(img):
    """One Laplacian-pyramid level by hand (scipy, float64): x - G(4 * zero-filled even samples of G(x))."""
    g = np.outer(G1, G1)
    out = np.empty_like(img)
    for n in range(img.shape[0]):
        for c in range(img.shape[1]):
            blurred = correlate(img[n, c], g, mode='nearest')  # 'nearest' = replicate padding
            up = np.zeros_like(blurred)
            up[::2, ::2] = 4 * blurred[::2, ::2]
            out[n, c] = img[n, c] - correlate(up, g, mode='nearest')
    return out


def charbonnier_np(a, b):
    return np.mean(np.sqrt((a - b) ** 2 + 1e-3 ** 2))  # paper Eq. 2, eps = 1e-3 (squared inside)


def test_charbonnier_and_edge_loss_values():
    torch.manual_seed(0)
    pred, gt = torch.rand(2, 3, 19, 22, dtype=torch.float64), torch.rand(2, 3, 19, 22, dtype=torch.float64)
    char = build_loss({'type': 'CharbonnierLoss', 'loss_weight': 1.0, 'reduction': 'mean', 'eps': 1e-6})
    edge = build_loss({'type': 'EdgeLoss', 'loss_weight': 0.05, 'reduction': 'mean', 'eps': 1e-6})
    p, g = pred.numpy(), gt.numpy()
    assert float(char(pred, gt)) == pytest.approx(charbonnier_np(p, g), rel=1e-12)
    assert np.allclose(edge.laplacian(pred).numpy(), laplacian_np(p), atol=1e-12)
    assert float(edge(pred, gt)) == pytest.approx(0.05 * charbonnier_np(laplacian_np(p), laplacian_np(g)), rel=1e-10)
    flat = edge.laplacian(torch.full((1, 1, 16, 16), 0.7, dtype=torch.float64))
    assert flat[..., 2:-2, 2:-2].abs().max() < 1e-12  # no edges, no Laplacian (interior)
    pred.requires_grad_(True)
    edge(pred, gt).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


@pytest.mark.parametrize('task', ['GoPro', 'SIDD'])
def test_model_loss_from_option_file_equals_hand_computation(task):
    opt = shipped('train', task)
    opt['network_g'].update(TINY)
    model = build_in_process(opt, is_train=True)
    torch.manual_seed(1)
    gt = torch.rand(2, 3, 16, 24, dtype=torch.float64)
    preds = [torch.rand(2, 3, 16, 24, dtype=torch.float64) * 1.6 - 0.3 for _ in range(3)]  # outside [0, 1]
    model.lq = gt
    total, log = model.compute_losses(preds, gt)
    g = gt.numpy()
    if task == 'GoPro':  # Charbonnier + 0.05 x edge on every stage
        expect = sum(charbonnier_np(p.numpy(), g) + 0.05 * charbonnier_np(laplacian_np(p.numpy()), laplacian_np(g))
                     for p in preds)
        assert set(log) == {'l_charbonnier', 'l_edge'}
    else:  # denoising recipe: Charbonnier only, on the clamped outputs
        expect = sum(charbonnier_np(np.clip(p.numpy(), 0, 1), g) for p in preds)
        assert set(log) == {'l_charbonnier'}
        assert expect != pytest.approx(sum(charbonnier_np(p.numpy(), g) for p in preds), rel=1e-3)
    assert float(total) == pytest.approx(expect, rel=1e-10)


# ----------------------------------------------------------------------------- option files
def tiny_options(opt, data, total_iter=2):
    return on_tiny_data(opt, data, total_iter, gt_size=48, network=TINY)


# The launches of this module (``python -m hinet_plugins.train`` on each shipped file, ``python -m hinet_plugins.test``
# on a release checkpoint) run in one interpreter (conftest.launch_batch), with one intra-op thread: the tiny nets
# here run many small convs, for which a second OpenMP thread only adds spin-waiting (30x slower on a busy 2-core
# machine). Each test asserts on its own run (exit code and merged output).


@pytest.fixture(scope='module')
def launches(request, tiny_data, tmp_path_factory):
    """The launches of this module's selected tests, all in one interpreter."""
    plans = {f'test_shipped_option_files_train[{task}]': functools.partial(_plan_shipped, tiny_data, task)
             for task in PRESETS}
    plans['test_release_checkpoint_through_test_cli'] = functools.partial(_plan_test_cli, tiny_data)
    return launch_selected(request, plans, tmp_path_factory, env_extra={'OMP_NUM_THREADS': '1'})


def _plan_shipped(tiny_data, task, folder):
    return module_train(write_options(tiny_options(shipped('train', task), tiny_data), folder / 'o.yml')), folder


@pytest.mark.slow
@pytest.mark.parametrize('task', PRESETS)
def test_shipped_option_files_train(launches, request, task):
    opt = shipped('train', task)
    train = opt['train']
    ds = opt['datasets']['train']  # the recipe itself (the release's) is checked in test_recipes.py
    assert ds['batch_size_per_gpu'] * 8 == 16 and ds['use_hflip'] and ds['use_rot']
    assert opt['val']['metrics']['psnr']['test_y_channel'] == (task == 'Rain13k')
    assert bool(train.get('loss_on_clamped')) == (task == 'SIDD')
    folder, proc = launches[request.node.name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert (folder / 'experiments' / f'MPRNet-{task}' / 'models' / 'net_g_latest.pth').is_file()
    assert 'l_charbonnier' in proc.stdout and ('l_edge' in proc.stdout) == (task != 'SIDD')
    assert '# psnr' in proc.stdout
    test_opt = shipped('test', task)
    assert test_opt['network_g'] == shipped('train', task)['network_g']
    assert test_opt['path']['param_key_g'] == 'state_dict' and test_opt['path']['strict_load_g'] is True


def release_checkpoint(path, **net_kw):
    """A file laid out like the release's: {'epoch', 'state_dict' (DataParallel 'module.' keys), 'optimizer'}."""
    torch.manual_seed(5)
    net = mprnet(**net_kw)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5).add_(0.01)
        net.state_dict()['shallow_feat1.1.body.1.weight'].fill_(0.37)  # the shared PReLU slope
    state = {'module.' + k: v for k, v in net.state_dict().items()}
    torch.save({'epoch': 120, 'state_dict': state, 'optimizer': {}}, path)
    return net.state_dict()


def test_release_checkpoint_through_test_option_file_in_process(tiny_data, tmp_path):
    expected = release_checkpoint(tmp_path / 'model_denoising.pth', **TINY)
    opt = shipped('test', 'SIDD')
    opt['network_g'].update(TINY)
    opt['path']['pretrain_network_g'] = str(tmp_path / 'model_denoising.pth')
    net = build_in_process(opt, is_train=False).net_g
    got = net.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in got)
    assert float(got['stage3_orsnet.orb2.body.1.body.1.weight']) == pytest.approx(0.37)
    # a file with the 262 distinct tensors only (aliases dropped) is not a release checkpoint: clear error
    dedup = {k: v for k, v in expected.items() if not k.endswith('body.1.weight') or k.startswith('shallow_feat1.')}
    torch.save({'epoch': 1, 'state_dict': dedup, 'optimizer': {}}, tmp_path / 'dedup.pth')
    opt['path']['pretrain_network_g'] = str(tmp_path / 'dedup.pth')
    with pytest.raises(ConfigError, match='missing in checkpoint: .*body.1.weight'):
        build_in_process(opt, is_train=False)


def _test_cli_options(tiny_data, tmp_path):
    opt = shipped('test', 'SIDD')
    opt['network_g'].update(TINY)
    opt['num_gpu'] = 0
    opt['path']['pretrain_network_g'] = str(tmp_path / 'model_denoising.pth')
    tiny_val = base_options(tiny_data)['datasets']['val']
    for key in ('dataroot_gt', 'dataroot_lq', 'io_backend'):
        opt['datasets']['test'][key] = tiny_val[key]
    opt['val']['save_img'] = False
    return opt


def _plan_test_cli(tiny_data, tmp_path):
    release_checkpoint(tmp_path / 'model_denoising.pth', **TINY)
    opt_path = write_options(_test_cli_options(tiny_data, tmp_path), tmp_path / 't.yml')
    return ['-m', 'hinet_plugins.test', '-opt', opt_path], tmp_path


@pytest.mark.slow
def test_release_checkpoint_through_test_cli(tiny_data, launches, request):
    from basicsr.data import build_dataset
    from basicsr.metrics import calculate_psnr
    from basicsr.utils import tensor2img
    tmp_path, proc = launches[request.node.name]
    opt = _test_cli_options(tiny_data, tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:]
    logged = float(re.search(r'# psnr: ([0-9.]+)', proc.stdout).group(1))
    # the same PSNR computed here from the checkpoint's weights
    net = build_in_process(opt, is_train=False).net_g.eval()
    ds_opt = dict(opt['datasets']['test'], phase='test', scale=1)
    psnrs = []
    for item in build_dataset(ds_opt):
        with torch.no_grad():
            out = net(item['lq'][None])[-1]
        psnrs.append(calculate_psnr(tensor2img(out), tensor2img(item['gt'][None]), crop_border=0))
    assert logged == pytest.approx(float(np.mean(psnrs)), abs=1e-3)


# ----------------------------------------------------------------------------- complexity
@pytest.mark.slow
def test_derain_macs_match_hinet_paper():
    """mmengine's counter (the one behind get_model_complexity_info) at 1x3x256x256 vs HINet Table 4."""
    from mmengine.analysis import FlopAnalyzer

    from hinet_plugins.archs import spec_of
    spec = spec_of('MPRNet')
    preset = next(c for c in spec.configs if 'derain' in c.label)
    net = build_network(spec.options(preset.kwargs)).eval()
    assert sum(p.numel() for p in net.parameters()) == preset.params
    counter = FlopAnalyzer(net, (torch.randn(1, 3, 256, 256),))
    counter.unsupported_ops_warnings(False)
    counter.uncalled_modules_warnings(False)
    with torch.no_grad():
        macs_g = counter.total() / 1e9
    assert preset.macs_g == 141.28
    assert abs(macs_g / preset.macs_g - 1) < 0.005


def test_sidd_file_mixes_up_per_sample_after_five_release_epochs(tiny_data):
    """MPRNet-SIDD.yml's MixUp, model built from the shipped file: none up to ``after_iter`` (5 release epochs), then
    every batch mixed with its permutation, one Beta(0.6, 0.6) lam per sample (the release's MixUp_AUG)."""
    import random
    opt = tiny_options(shipped('train', 'SIDD'), tiny_data)
    mixing = opt['train']['mixing_augs']
    assert mixing == {'mixup': True, 'mixup_beta': 0.6, 'per_sample': True, 'use_identity': False,
                      'after_iter': 30000}
    model = build_in_process(opt, is_train=True)
    torch.manual_seed(0)
    lq, gt = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    model.feed_data({'lq': lq, 'gt': gt})
    model.optimize_parameters(30000)
    assert torch.equal(model.lq, lq) and torch.equal(model.gt, gt)
    random.seed(3)
    torch.manual_seed(3)
    model.feed_data({'lq': lq, 'gt': gt})
    model.optimize_parameters(30001)
    random.seed(3)
    torch.manual_seed(3)
    random.randrange(1)
    lam = torch.distributions.Beta(0.6, 0.6).sample((4, 1, 1, 1))
    perm = torch.randperm(4)
    assert len(set(lam.flatten().tolist())) == 4  # one lam per sample
    assert torch.allclose(model.lq, lam * lq + (1 - lam) * lq[perm], atol=1e-6)
    assert torch.allclose(model.gt, lam * gt + (1 - lam) * gt[perm], atol=1e-6)
