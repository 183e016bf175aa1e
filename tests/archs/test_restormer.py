"""Restormer and TLC for transposed self-attention (RestormerLocal), through the registry and option files.

The output fixture is an independent functional implementation of Restormer written from the paper and the facts
of its public code (../shared/notes/public-releases.md): it reads a release-keyed state_dict by name and computes
the forward with explicit formulas (einsum attention, hand-written LayerNorms), so a renamed key, a missing bias
switch or a different normalisation fails the comparison.
"""
import functools
import math
import re
import os
import uuid

import pytest
import torch
import yaml
from conftest import REPO, base_options, launch_selected, missing_run_folders, remove_repo_runs, write_options
from torch.nn import functional as F

from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY

from hinet_plugins import tlc
from hinet_plugins.tlc.local_attention import local_transposed_attention, window_starts

TINY = {'type': 'Restormer', 'dim': 8, 'num_blocks': [1, 2, 1, 1], 'num_refinement_blocks': 1,
        'heads': [1, 2, 2, 4], 'ffn_expansion_factor': 2.66}


# ---------------------------------------------------------------- independent reference
def _ref_ln(x, sd, prefix, bias_free):
    mu = x.mean(1, keepdim=True)
    var = ((x - mu) ** 2).mean(1, keepdim=True)
    w = sd[prefix + '.body.weight'][:, None, None]
    if bias_free:
        return x / torch.sqrt(var + 1e-5) * w
    return (x - mu) / torch.sqrt(var + 1e-5) * w + sd[prefix + '.body.bias'][:, None, None]


def _conv(x, sd, prefix, groups=1):
    w = sd[prefix + '.weight']
    return F.conv2d(x, w, sd.get(prefix + '.bias'), padding=w.shape[-1] // 2, groups=groups)


def _ref_block(x, sd, p, heads, bias_free):
    n, c, h, w = x.shape
    y = _ref_ln(x, sd, p + '.norm1', bias_free)
    qkv = _conv(_conv(y, sd, p + '.attn.qkv'), sd, p + '.attn.qkv_dwconv', groups=3 * c)
    q, k, v = [t.reshape(n, heads, c // heads, h * w) for t in qkv.chunk(3, 1)]
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    logits = torch.einsum('bhil,bhjl->bhij', q, k) * sd[p + '.attn.temperature']
    out = torch.einsum('bhij,bhjl->bhil', logits.softmax(-1), v).reshape(n, c, h, w)
    x = x + _conv(out, sd, p + '.attn.project_out')
    y = _conv(_ref_ln(x, sd, p + '.norm2', bias_free), sd, p + '.ffn.project_in')
    y = _conv(y, sd, p + '.ffn.dwconv', groups=y.shape[1])
    a, b = y.chunk(2, 1)
    gelu = 0.5 * a * (1 + torch.erf(a / math.sqrt(2)))
    return x + _conv(gelu * b, sd, p + '.ffn.project_out')


def _ref_level(x, sd, name, count, heads, bias_free):
    for i in range(count):
        x = _ref_block(x, sd, f'{name}.{i}', heads, bias_free)
    return x


def reference_restormer(x, sd, num_blocks, num_refinement_blocks, heads, bias_free=False, dual_pixel=False):
    nb, hd = num_blocks, heads
    emb = _conv(x, sd, 'patch_embed.proj')
    e1 = _ref_level(emb, sd, 'encoder_level1', nb[0], hd[0], bias_free)
    e2 = _ref_level(F.pixel_unshuffle(_conv(e1, sd, 'down1_2.body.0'), 2), sd, 'encoder_level2', nb[1], hd[1],
                    bias_free)
    e3 = _ref_level(F.pixel_unshuffle(_conv(e2, sd, 'down2_3.body.0'), 2), sd, 'encoder_level3', nb[2], hd[2],
                    bias_free)
    lat = _ref_level(F.pixel_unshuffle(_conv(e3, sd, 'down3_4.body.0'), 2), sd, 'latent', nb[3], hd[3], bias_free)
    d3 = _conv(torch.cat([F.pixel_shuffle(_conv(lat, sd, 'up4_3.body.0'), 2), e3], 1), sd, 'reduce_chan_level3')
    d3 = _ref_level(d3, sd, 'decoder_level3', nb[2], hd[2], bias_free)
    d2 = _conv(torch.cat([F.pixel_shuffle(_conv(d3, sd, 'up3_2.body.0'), 2), e2], 1), sd, 'reduce_chan_level2')
    d2 = _ref_level(d2, sd, 'decoder_level2', nb[1], hd[1], bias_free)
    d1 = _ref_level(torch.cat([F.pixel_shuffle(_conv(d2, sd, 'up2_1.body.0'), 2), e1], 1), sd, 'decoder_level1',
                    nb[0], hd[0], bias_free)
    d1 = _ref_level(d1, sd, 'refinement', num_refinement_blocks, hd[0], bias_free)
    if dual_pixel:
        return _conv(d1 + _conv(emb, sd, 'skip_conv'), sd, 'output')
    return _conv(d1, sd, 'output') + x


def _random_release_state(net, seed=0):
    """Random values under the release's names (biases and temperatures too, so every key matters)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * (0.3 if v.dim() > 1 else 0.5) + (1 if k.endswith(
        ('norm1.body.weight', 'norm2.body.weight', 'temperature')) else 0) for k, v in net.state_dict().items()}


@pytest.mark.parametrize('variant', [{}, {'LayerNorm_type': 'BiasFree'}, {'bias': True},
                                     {'inp_channels': 6, 'dual_pixel_task': True}])
def test_strict_release_keys_and_outputs_match_the_reference(tmp_path, variant):
    opt = {**TINY, **variant}
    net = build_network(dict(opt)).eval()
    sd = _random_release_state(net)
    path = tmp_path / 'release.pth'
    torch.save({'params': sd}, path)
    net.load_state_dict(torch.load(path)['params'], strict=True)
    assert 'encoder_level1.0.attn.temperature' in sd and 'encoder_level1.0.norm1.body.weight' in sd
    assert ('encoder_level1.0.norm1.body.bias' in sd) == (variant.get('LayerNorm_type') != 'BiasFree')
    assert ('encoder_level1.0.attn.qkv.bias' in sd) == bool(variant.get('bias'))
    assert 'patch_embed.proj.bias' not in sd and 'down1_2.body.0.bias' not in sd
    # float64: random weights amplify activations through the residual stack, so float32 rounding would dominate
    x = torch.rand(2, opt.get('inp_channels', 3), 32, 40, generator=torch.Generator().manual_seed(1)).double()
    net, sd = net.double(), {k: v.double() for k, v in sd.items()}
    with torch.no_grad():
        ours = net(x)
        ref = reference_restormer(x, sd, opt['num_blocks'], opt['num_refinement_blocks'], opt['heads'],
                                  bias_free=variant.get('LayerNorm_type') == 'BiasFree',
                                  dual_pixel=variant.get('dual_pixel_task', False))
    assert ours.shape == (2, 3, 32, 40)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('size', [(21, 35), (8, 8), (5, 70)])
def test_any_input_size_reflect_pads_to_a_multiple_of_8(size):
    torch.manual_seed(0)
    net = build_network(dict(TINY)).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        out = net(x)
        assert out.shape == x.shape
        h, w = size
        ph, pw = (-h) % 8, (-w) % 8
        if ph < h and pw < w and (ph or pw):
            padded = net(F.pad(x, (0, pw, 0, ph), mode='reflect'))[..., :h, :w]
            torch.testing.assert_close(out, padded)
            zeros = build_network({**TINY, 'pad_mode': 'zeros'}).eval()
            zeros.load_state_dict(net.state_dict())
            assert not torch.allclose(zeros(x), out)


def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match='heads'):
        build_network({**TINY, 'heads': [3, 2, 2, 4]})
    with pytest.raises(ValueError, match='pad_mode'):
        build_network({**TINY, 'pad_mode': 'wrap'})


# ---------------------------------------------------------------- TLC for transposed attention
def _qkv(n=2, heads=2, c=3, h=11, w=14, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, heads, c, h, w, generator=gen, dtype=torch.float64) for _ in range(3)] + [
        torch.rand(heads, 1, 1, generator=gen, dtype=torch.float64) * 3 + 0.5]


def _global_attention(q, k, v, t):
    n, hd, c, h, w = q.shape
    qf, kf, vf = (a.reshape(n, hd, c, h * w) for a in (q, k, v))
    qf, kf = F.normalize(qf, dim=-1), F.normalize(kf, dim=-1)
    return (torch.softmax(qf @ kf.transpose(-1, -2) * t, -1) @ vf).reshape(q.shape)


def test_window_layout_is_the_releases():
    assert window_starts(10, 4) == [0, 3, 6]       # n = 3 windows, stride ceil(6 / 2) = 3, last flush
    assert window_starts(720, 384) == [0, 336]
    assert window_starts(1280, 384) == [0, 299, 598, 896]
    assert window_starts(5, 8) == [0] and window_starts(8, 8) == [0]


def test_local_attention_equals_a_per_pixel_brute_force_reference():
    """For each pixel: the mean, over the windows containing it, of that window's own attention output."""
    q, k, v, t = _qkv()
    kernel = (5, 6)
    ours = local_transposed_attention(q, k, v, t, kernel)
    h, w = q.shape[-2:]
    ys, xs = window_starts(h, kernel[0]), window_starts(w, kernel[1])
    window_out = {(y, x): _global_attention(*(a[..., y:y + kernel[0], x:x + kernel[1]] for a in (q, k, v)), t)
                  for y in ys for x in xs}
    ref = torch.empty_like(v)
    for i in range(h):
        for j in range(w):
            outs = [o[..., i - y, j - x] for (y, x), o in window_out.items()
                    if y <= i < y + kernel[0] and x <= j < x + kernel[1]]
            ref[..., i, j] = sum(outs) / len(outs)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(ours, _global_attention(q, k, v, t))


def test_one_window_covering_the_map_is_exactly_global_and_batch_is_independent():
    torch.manual_seed(0)
    net = build_network(dict(TINY)).eval()
    x, small = torch.rand(2, 3, 40, 56), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        plain, small_plain = net(x), net(small)
        with tlc.converted(net, 32, 48) as conv:
            assert len(conv.layers) == 10 and not conv.unsupported
            assert conv.windows['encoder_level1.0.attn.attend'] == (48, 48)
            assert conv.windows['latent.0.attn.attend'] == (6, 6)
            assert torch.equal(net(small), small_plain)  # training size: every window covers its map
            local = net(x)
            one_by_one = torch.cat([net(x[:1]), net(x[1:])])
    torch.testing.assert_close(local, one_by_one, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(local, plain, atol=1e-4)


def test_fast_mode_samples_the_window_statistics():
    torch.manual_seed(0)
    net = build_network(dict(TINY)).eval()
    x = torch.rand(1, 3, 80, 120)
    with torch.no_grad():
        with tlc.converted(net, 32, 48):
            exact = net(x)
        with tlc.converted(net, 32, 48, fast_imp=True) as conv:
            assert conv.layers['encoder_level1.0.attn.attend'].stride(torch.zeros(1, 1, 1, 80, 120)) != (1, 1)
            fast = net(x)
    assert not torch.equal(fast, exact)
    assert (fast - exact).abs().mean() < 0.1 * (exact - x).abs().mean()


def test_unsupported_report_sees_products_over_positions():
    class HandWrittenAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Conv2d(3, 9, 1)

        def forward(self, x):
            q, k, v = self.qkv(x).flatten(-2).chunk(3, 1)
            return (torch.einsum('bcl,bdl->bcd', q, k).softmax(-1) @ v).view(x.shape)

    conv = tlc.convert(HandWrittenAttention(), 16, warn=False)
    assert conv.unsupported == ['<root> (HandWrittenAttention): einsum summing over H*W = 256 positions']
    net = build_network(dict(TINY))
    assert not tlc.convert(net, 32, warn=False).unsupported  # Restormer's own attention is converted


def test_restormer_local_in_the_registry_loads_restormer_weights():
    assert 'RestormerLocal' in ARCH_REGISTRY
    torch.manual_seed(0)
    sd = build_network(dict(TINY)).state_dict()
    local = build_network({**TINY, 'type': 'RestormerLocal', 'base_size': 48, 'train_size': [1, 3, 32, 32]})
    local.load_state_dict(sd, strict=True)
    assert type(local).__name__ == 'Restormer'
    kinds = {type(m).__name__ for m in local.modules()}
    assert 'LocalTransposedAttention' in kinds and 'TransposedAttention' not in kinds


# ---------------------------------------------------------------- training and testing from option files
# The launches of this module (``basicsr/train.py`` and ``basicsr/test.py`` from the repository root, ``python -m
# hinet_plugins.train|test``, ``scripts/inference.py``) run in one interpreter (conftest.launch_batch): the
# ``launches`` fixture writes the files of each selected test with its ``_plan_*`` function and launches them all;
# each test then asserts on its own run (exit code and merged output).
RUN = f'test_restormer_{uuid.uuid4().hex[:8]}'  # the name of the literal launchers' runs under the repository root


@pytest.fixture(scope='module')
def launches(request, tiny_data, tmp_path_factory):
    """The launches of this module's selected tests, all in one interpreter (the rejected one last); what the
    literal launchers wrote under the repository root is removed afterwards."""
    plans = {
        'test_progressive_patches_mixup_and_cyclic_schedule_from_the_shipped_file':
            functools.partial(_plan_progressive, tiny_data),
        'test_release_restormer_local_test_file_runs_through_basicsr_test':
            functools.partial(_plan_release_test_file, tiny_data),
        'test_val_tlc_on_restormer_through_the_shipped_test_file': functools.partial(_plan_val_tlc, tiny_data),
        'test_inference_script_tlc_on_restormer': _plan_inference_tlc,
        'test_progressive_and_mixup_option_errors_are_one_line': functools.partial(_plan_option_errors, tiny_data),
    }
    created = missing_run_folders()
    try:
        yield launch_selected(request, plans, tmp_path_factory)
    finally:
        remove_repo_runs(RUN, created)


def _plan_progressive(tiny_data, tmp_path):
    """``python basicsr/train.py -opt`` from the repository root, on the shipped file shrunk."""
    with open(os.path.join(REPO, 'options/train/Restormer-SIDD.yml')) as f:
        opt = yaml.safe_load(f)
    tiny = base_options(tiny_data)
    for split in ('train', 'val'):
        for key in ('dataroot_gt', 'dataroot_lq', 'io_backend'):
            opt['datasets'][split][key] = tiny['datasets'][split][key]
    opt['datasets']['train'].update(gt_size=48, gt_sizes=[16, 32, 48], mini_batch_sizes=[4, 2, 1], iters=[2, 2, 1],
                                    batch_size_per_gpu=4, num_worker_per_gpu=0)
    opt['network_g'].update(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    opt['num_gpu'] = 0
    opt['train'].update(total_iter=5)
    opt['train']['scheduler'].update(periods=[2, 3])
    opt['val']['val_freq'] = 5
    opt['logger'].update(print_freq=1, save_checkpoint_freq=5, use_tb_logger=False)
    opt['name'] = f'{RUN}_train'
    return ['basicsr/train.py', '-opt', write_options(opt, tmp_path / 'o.yml')], REPO


@pytest.mark.slow
def test_progressive_patches_mixup_and_cyclic_schedule_from_the_shipped_file(launches, request):
    with open(os.path.join(REPO, 'options/train/Restormer-SIDD.yml')) as f:
        opt = yaml.safe_load(f)
    assert opt['datasets']['train']['gt_sizes'] == [128, 160, 192, 256, 320, 384]
    assert opt['train']['scheduler']['periods'] == [92000, 208000] and opt['train']['mixing_augs']['mixup']
    _, proc = launches[request.node.name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    out = proc.stdout
    for stage, (size, batch, it) in enumerate([(16, 4, 1), (32, 2, 3), (48, 1, 5)], 1):
        assert f'Progressive patches: stage {stage}/3 from iteration {it}: patch {size}, batch {batch}' in out
    assert 'lr:(3.000e-04' in out and '# psnr' in out, out[-3000:]


def test_progressive_mini_batch_keeps_the_drawn_order_under_mixup(tiny_data):
    """The shipped progressive + mixup recipe (Restormer-SIDD.yml, shrunk), model built from the options: one
    training step's mini-batch is the release's, i.e. Restormer's train.py draws (``random.sample`` order kept,
    then the crop) followed by its mixup (identity-or-mixup choice, Beta lam, permutation), replayed here."""
    import random
    from basicsr.models import build_model
    with open(os.path.join(REPO, 'options/train/Restormer-SIDD.yml')) as f:
        opt = yaml.safe_load(f)
    mixing = opt['train']['mixing_augs']
    assert mixing['mixup'] and mixing['use_identity'] and opt['datasets']['train']['mini_batch_sizes'][0] == 8
    opt['datasets']['train'].update(gt_size=32, gt_sizes=[16, 24, 32], mini_batch_sizes=[6, 4, 1], iters=[1, 1, 1],
                                    batch_size_per_gpu=6)
    opt['network_g'].update(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    opt.update(is_train=True, dist=False, num_gpu=0, rank=0, world_size=1)
    opt['path'].update(experiments_root='unused', models='unused', training_states='unused', log='unused')
    model = build_model(opt)
    torch.manual_seed(0)
    lq, gt = torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32)

    def release_draws(seed):
        random.seed(seed)
        torch.manual_seed(seed)
        keep = random.sample(range(6), k=4)
        y0, x0 = int(8 * random.random()), int(8 * random.random())
        mix = random.randint(0, 1) == 0
        lam = float(torch.distributions.Beta(torch.tensor([1.2]), torch.tensor([1.2])).rsample((1, 1)).item()) \
            if mix else None
        perm = torch.randperm(4) if mix else None
        return keep, y0, x0, lam, perm

    # a seed where the draw is not in sorted order and the mixup branch is taken (so sorting would change pairs)
    seed = next(s for s in range(1000) if (lambda d: d[0] != sorted(d[0]) and d[3] is not None)(release_draws(s)))
    keep, y0, x0, lam, perm = release_draws(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    model.feed_data({'lq': lq, 'gt': gt})
    model.optimize_parameters(2)  # stage 2: patch 24, batch 4
    for ours, full in ((model.lq, lq), (model.gt, gt)):
        mini = full[keep][..., y0:y0 + 24, x0:x0 + 24]
        expected = lam * mini + (1 - lam) * mini[perm]
        assert ours.shape == (4, 3, 24, 24)
        assert torch.allclose(ours, expected, atol=1e-6)
        in_sorted_order = full[sorted(keep)][..., y0:y0 + 24, x0:x0 + 24]
        assert not torch.allclose(ours, lam * in_sorted_order + (1 - lam) * in_sorted_order[perm], atol=1e-3)


def _plan_option_errors(tiny_data, tmp_path):
    opt = base_options(tiny_data, network=dict(TINY))
    opt['datasets']['train'].update(gt_sizes=[32, 64], mini_batch_sizes=[4, 2], iters=[1, 1])
    return ['-m', 'hinet_plugins.train', '-opt', write_options(opt, tmp_path / 'o.yml')], tmp_path


@pytest.mark.slow
def test_progressive_and_mixup_option_errors_are_one_line(launches, request):
    tmp_path, proc = launches[request.node.name]  # its exit code and output, as a process of its own gives them
    assert proc.returncode == 2 and 'datasets.train.gt_size (48) must be an integer >= every entry' in proc.stdout
    assert 'Traceback' not in proc.stdout and not (tmp_path / 'experiments').exists()


def _plan_release_test_file(tiny_data, tmp_path):
    """``python basicsr/test.py -opt`` from the repository root."""
    torch.manual_seed(0)
    net_opt = {k: v for k, v in TINY.items() if k != 'type'}
    ckpt = tmp_path / 'Restormer-GoPro.pth'
    torch.save({'params': build_network(dict(TINY)).state_dict()}, ckpt)
    text = f"""
name: RestormerLocal-GoPro
model_type: ImageRestorationModel
scale: 1
num_gpu: 0
manual_seed: 10
datasets:
  test:
    name: gopro-test
    type: PairedImageDataset
    dataroot_gt: {tiny_data['val_gt_lmdb']}
    dataroot_lq: {tiny_data['val_lq_lmdb']}
    io_backend:
      type: lmdb
network_g:
  type: RestormerLocal
  base_size: 48
{''.join(f'  {k}: {v}{chr(10)}' for k, v in net_opt.items())}
path:
  pretrain_network_g: {ckpt}
  strict_load_g: true
  resume_state: ~
  param_key: params
val:
  save_img: true
  grids: false
  metrics:
    psnr:
      type: calculate_psnr
      crop_border: 0
      test_y_channel: false
    ssim:
      type: calculate_ssim
      crop_border: 0
      test_y_channel: false
dist_params:
  backend: nccl
  port: 29500
"""
    opt = yaml.safe_load(text)
    opt['name'] = f'{RUN}_test'
    return ['basicsr/test.py', '-opt', write_options(opt, tmp_path / 'o.yml')], REPO


@pytest.mark.slow
def test_release_restormer_local_test_file_runs_through_basicsr_test(launches, request):
    """The TLC release's options/test/GoPro/RestormerLocal-GoPro.yml keys and values; only the dataset paths, the
    device, the network width (tiny) and the checkpoint path changed."""
    _, proc = launches[request.node.name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    out = proc.stdout
    assert 'RestormerLocal = Restormer + TLC: 10 layer(s) made local (10 TransposedAttention' in out
    assert '# psnr' in out and '# ssim' in out, out[-3000:]


def test_shipped_restormer_files_hold_the_release_recipe():
    from hinet_plugins.models.restoration_model import MultiStageRestorationModel
    for name in ('GoPro', 'SIDD'):
        with open(os.path.join(REPO, f'options/train/Restormer-{name}.yml')) as f:
            opt = yaml.safe_load(f)
        tr = opt['datasets']['train']
        assert tr['mini_batch_sizes'] == [8, 5, 4, 2, 1, 1] and sum(tr['iters']) == opt['train']['total_iter'] == 300000
        assert opt['train']['optim_g'] == {'type': 'AdamW', 'lr': 3e-4, 'weight_decay': 1e-4, 'betas': [0.9, 0.999]}
        assert opt['train']['scheduler']['eta_mins'] == [3e-4, 1e-6] and opt['train']['use_grad_clip']
        assert opt['network_g']['LayerNorm_type'] == ('BiasFree' if name == 'SIDD' else 'WithBias')
        assert ('mixing_augs' in opt['train']) == (name == 'SIDD')
        net = build_network(dict(opt['network_g']))
        assert sum(p.numel() for p in net.parameters()) == (26_111_668 if name == 'SIDD' else 26_126_644)
    with open(os.path.join(REPO, 'options/test/Restormer-GoPro-TLC.yml')) as f:
        opt = yaml.safe_load(f)
    tlc_opt = MultiStageRestorationModel.tlc_options(opt)
    assert tlc_opt['train_size'] == 256 and tlc_opt['base_size'] == 384 and tlc_opt['compare']


def _plan_val_tlc(tiny_data, tmp_path):
    with open(os.path.join(REPO, 'options/test/Restormer-GoPro-TLC.yml')) as f:
        opt = yaml.safe_load(f)
    torch.manual_seed(0)
    opt['network_g'].update({k: v for k, v in TINY.items() if k != 'type'})
    ckpt = tmp_path / 'tiny.pth'
    torch.save({'params': build_network(dict(opt['network_g'])).state_dict()}, ckpt)
    opt['path']['pretrain_network_g'] = str(ckpt)
    opt['val']['tlc']['train_size'] = 32
    opt['val']['tlc']['base_size'] = 48
    opt['num_gpu'] = 0
    opt['datasets']['test'].update(dataroot_gt=tiny_data['val_gt_lmdb'], dataroot_lq=tiny_data['val_lq_lmdb'])
    return ['-m', 'hinet_plugins.test', '-opt', write_options(opt, tmp_path / 't.yml')], tmp_path


@pytest.mark.slow
def test_val_tlc_on_restormer_through_the_shipped_test_file(launches, request):
    """options/test/Restormer-GoPro-TLC.yml with the data, width and checkpoint swapped for tiny ones: metrics
    without and with TLC, images of both passes."""
    _, proc = launches[request.node.name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    out = proc.stdout
    assert 'TLC: 10 layer(s) made local (10 TransposedAttention' in out
    psnr = dict(re.findall(r'Validation (\S+)\n\s+# psnr: ([\d.]+)', out))
    assert set(psnr) == {'GoPro_test', 'GoPro_test_tlc'} and psnr['GoPro_test'] != psnr['GoPro_test_tlc'], out[-2000:]


def _plan_inference_tlc(tmp_path):
    import cv2
    from skimage import data as skdata
    torch.manual_seed(0)
    ckpt = tmp_path / 'r.pth'
    torch.save({'params': build_network(dict(TINY)).state_dict()}, ckpt)
    src = tmp_path / 'in.png'
    cv2.imwrite(str(src), cv2.resize(skdata.astronaut(), (80, 64))[..., ::-1])
    arch = ['--arch', 'Restormer', *sum((['--arch-opt', f'{k}={v}'] for k, v in TINY.items() if k != 'type'), []),
            '--checkpoint', str(ckpt)]
    return ['scripts/inference.py', '-i', str(src), '-o', str(tmp_path / 'tlc'), *arch, '--tlc',
            '--train-size', '32'], REPO


@pytest.mark.slow
def test_inference_script_tlc_on_restormer(launches, request):
    """``scripts/inference.py --tlc`` on a Restormer checkpoint: local attention (windows for 48, train 32)
    changes the restored 64x80 photo; the same restoration in-process with ``tlc.converted`` gives the file."""
    import cv2
    import numpy as np
    tmp_path, proc = launches[request.node.name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    ckpt, src = tmp_path / 'r.pth', tmp_path / 'in.png'
    got = cv2.imread(str(tmp_path / 'tlc' / 'in.png')).astype(int)
    net = build_network(dict(TINY)).eval()
    net.load_state_dict(torch.load(ckpt)['params'])
    x = torch.from_numpy(cv2.imread(str(src))[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        plain = net(x)
        with tlc.converted(net, 32):
            local = net(x)

    def to_png(t):
        return (t[0].clamp(0, 1).permute(1, 2, 0).numpy()[..., ::-1] * 255).round().astype(int)
    assert np.abs(got - to_png(local)).max() <= 1
    assert np.abs(got - to_png(plain)).max() > 2
