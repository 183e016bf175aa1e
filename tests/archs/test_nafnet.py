"""NAFNet and Baseline (ECCV 2022): the release's names, counts and outputs; NAFNetLocal; option files.

The output fixture is a functional re-statement of the architecture written in this file (explicit LayerNorm,
SimpleGate, pixel shuffle, padding formulas on a plain dict of release-named tensors), compared with the registered
networks after a strict load of the same random weights.
"""
import functools
import glob
import math
import os
import re
import uuid
from collections import OrderedDict

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.models import build_model
from conftest import (REPO, base_options, launch_selected, load_option_file, missing_run_folders, module_train,
                      on_tiny_data, remove_repo_runs, write_options)
from torch.nn import functional as F

from hinet_plugins import tlc

RELEASE = os.path.join(REPO, 'tests', 'release_options', 'nafnet', 'options')
RELEASE_PARAMS = {  # the release's counts (public-releases.md, NAFNet section)
    'train/GoPro/NAFNet-width32.yml': 17_111_907, 'train/GoPro/NAFNet-width64.yml': 67_888_835,
    'train/SIDD/NAFNet-width32.yml': 29_159_715, 'train/SIDD/NAFNet-width64.yml': 115_982_915,
    'train/GoPro/Baseline-width32.yml': 17_023_875, 'train/GoPro/Baseline-width64.yml': 112_036_291,
}
TINY = {'width': 8, 'enc_blk_nums': [1, 2], 'middle_blk_num': 1, 'dec_blk_nums': [2, 1]}


def release_file(rel):
    with open(os.path.join(RELEASE, rel)) as f:
        return yaml.safe_load(f)


def count_on_meta(opt):
    """Parameters of a network built through the registry without allocating memory (width 64 is 116 M)."""
    with torch.device('meta'):
        net = build_network(dict(opt))
    return sum(p.numel() for p in net.parameters())


# ------------------------------------------------------------------------------------ independent reference
def release_layout(kind, width, enc_blk_nums, middle_blk_num, dec_blk_nums, dw_expand=None, ffn_expand=2):
    """[(key, shape)] of the release's state_dict, in its order, for NAFNet (kind 'naf') or Baseline ('base')."""
    dw_mult = 2 if kind == 'naf' else (dw_expand or 1)

    def block(p, c):
        dw, ffn = c * dw_mult, c * ffn_expand
        mid, ffn_out = (dw // 2, ffn // 2) if kind == 'naf' else (dw, ffn)
        rows = [(p + 'beta', (1, c, 1, 1)), (p + 'gamma', (1, c, 1, 1)),
                (p + 'conv1.weight', (dw, c, 1, 1)), (p + 'conv1.bias', (dw,)),
                (p + 'conv2.weight', (dw, 1, 3, 3)), (p + 'conv2.bias', (dw,)),
                (p + 'conv3.weight', (c, mid, 1, 1)), (p + 'conv3.bias', (c,))]
        if kind == 'naf':
            rows += [(p + 'sca.1.weight', (mid, mid, 1, 1)), (p + 'sca.1.bias', (mid,))]
        else:
            rows += [(p + 'se.1.weight', (dw // 2, dw, 1, 1)), (p + 'se.1.bias', (dw // 2,)),
                     (p + 'se.3.weight', (dw, dw // 2, 1, 1)), (p + 'se.3.bias', (dw,))]
        rows += [(p + 'conv4.weight', (ffn, c, 1, 1)), (p + 'conv4.bias', (ffn,)),
                 (p + 'conv5.weight', (c, ffn_out, 1, 1)), (p + 'conv5.bias', (c,))]
        return rows + [(p + n, (c,)) for n in ('norm1.weight', 'norm1.bias', 'norm2.weight', 'norm2.bias')]

    rows = [('intro.weight', (width, 3, 3, 3)), ('intro.bias', (width,)),
            ('ending.weight', (3, width, 3, 3)), ('ending.bias', (3,))]
    enc_ch = [width * 2 ** i for i in range(len(enc_blk_nums))]
    for i, n in enumerate(enc_blk_nums):
        for j in range(n):
            rows += block(f'encoders.{i}.{j}.', enc_ch[i])
    for i, n in enumerate(dec_blk_nums):
        for j in range(n):
            rows += block(f'decoders.{i}.{j}.', enc_ch[-1 - i])
    for j in range(middle_blk_num):
        rows += block(f'middle_blks.{j}.', width * 2 ** len(enc_blk_nums))
    for i, c in enumerate(reversed(enc_ch)):
        rows.append((f'ups.{i}.0.weight', (4 * c, 2 * c, 1, 1)))
    for i, c in enumerate(enc_ch):
        rows += [(f'downs.{i}.weight', (2 * c, c, 2, 2)), (f'downs.{i}.bias', (2 * c,))]
    return rows


def random_state(layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in layout:
        fan_in = math.prod(shape[1:]) if len(shape) == 4 and not key.endswith(('beta', 'gamma')) else 1
        scale = 0.5 if fan_in == 1 else 1.0 / math.sqrt(fan_in)
        state[key] = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale)
        if key.endswith('norm1.weight') or key.endswith('norm2.weight'):
            state[key] += 1
    return state


def ref_forward(sd, x, kind, levels):
    """The network as formulas, reading release-named tensors from ``sd``."""
    def conv(t, name, **kw):
        return F.conv2d(t, sd[name + '.weight'], sd.get(name + '.bias'), **kw)

    def layer_norm(t, p):
        mu = t.mean(dim=1, keepdim=True)
        var = ((t - mu) ** 2).mean(dim=1, keepdim=True)
        scale, shift = sd[p + '.weight'].view(1, -1, 1, 1), sd[p + '.bias'].view(1, -1, 1, 1)
        return (t - mu) / torch.sqrt(var + 1e-6) * scale + shift

    def gate(t):
        h = t.shape[1] // 2
        return t[:, :h] * t[:, h:]

    def gelu(t):
        return 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))

    def block(t, p):
        u = conv(layer_norm(t, p + 'norm1'), p + 'conv1')
        u = conv(u, p + 'conv2', padding=1, groups=u.shape[1])
        if kind == 'naf':
            u = gate(u)
            u = u * conv(u.mean(dim=(2, 3), keepdim=True), p + 'sca.1')
        else:
            u = gelu(u)
            s = torch.clamp(conv(u.mean(dim=(2, 3), keepdim=True), p + 'se.1'), min=0)
            u = u / (1 + torch.exp(-conv(s, p + 'se.3')))
        y = t + conv(u, p + 'conv3') * sd[p + 'beta']
        v = conv(layer_norm(y, p + 'norm2'), p + 'conv4')
        v = conv(gate(v) if kind == 'naf' else gelu(v), p + 'conv5')
        return y + v * sd[p + 'gamma']

    def stack(t, prefix):
        j = 0
        while f'{prefix}.{j}.beta' in sd:
            t = block(t, f'{prefix}.{j}.')
            j += 1
        return t

    def shuffle(t):  # (N, 4C, H, W) -> (N, C, 2H, 2W): channel 4c + 2i + j goes to pixel (2h + i, 2w + j)
        n, c4, h, w = t.shape
        return t.view(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c4 // 4, 2 * h, 2 * w)

    n, c, h, w = x.shape
    m = 2 ** levels
    padded = x.new_zeros(n, c, -(-h // m) * m, -(-w // m) * m)
    padded[..., :h, :w] = x
    f = conv(padded, 'intro', padding=1)
    skips = []
    for i in range(levels):
        f = stack(f, f'encoders.{i}')
        skips.append(f)
        f = conv(f, f'downs.{i}', stride=2)
    f = stack(f, 'middle_blks')
    for i in range(levels):
        f = stack(shuffle(conv(f, f'ups.{i}.0')) + skips[-1 - i], f'decoders.{i}')
    return (conv(f, 'ending', padding=1) + padded)[..., :h, :w]


CASES = {
    'NAFNet': ('naf', {'type': 'NAFNet', **TINY}, {}),
    'Baseline': ('base', {'type': 'Baseline', **TINY, 'dw_expand': 2, 'ffn_expand': 3}, {'dw_expand': 2,
                                                                                         'ffn_expand': 3}),
}


@pytest.mark.parametrize('name', list(CASES))
def test_release_keys_strict_load_and_outputs_match_the_reference(name):
    kind, opt, extra = CASES[name]
    layout = release_layout(kind, 8, TINY['enc_blk_nums'], TINY['middle_blk_num'], TINY['dec_blk_nums'], **extra)
    net = build_network(dict(opt)).double().eval()
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == layout  # names, shapes and order
    state = random_state(layout)
    net.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 37, 45, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        out = net(x)
    ref = ref_forward(state, x, kind, levels=2)
    assert out.shape == x.shape
    assert (out - x).abs().mean() > 0.1  # the random weights make every branch count
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('name', list(CASES))
def test_fresh_blocks_are_the_identity(name):
    """beta and gamma start at zero (release): every block passes its input through until trained."""
    torch.manual_seed(0)
    net = build_network(dict(CASES[name][1])).eval()
    blocks = [m for m in net.modules() if type(m).__name__ in ('NAFBlock', 'BaselineBlock')]
    assert len(blocks) == 7
    assert all(torch.count_nonzero(p) == 0 for n, p in net.named_parameters() if n.endswith(('beta', 'gamma')))
    t = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        assert all(torch.equal(b(t), t) for b in blocks if b.beta.shape[1] == 8)


@pytest.mark.parametrize('size', [(1, 1), (17, 30), (33, 64)])
def test_any_input_size_is_zero_padded_bottom_right_and_cropped(size):
    torch.manual_seed(0)
    net = build_network({'type': 'NAFNet', 'width': 8, 'enc_blk_nums': [1, 1, 1], 'dec_blk_nums': [1, 1, 1]})
    net.load_state_dict(random_state(release_layout('naf', 8, [1, 1, 1], 1, [1, 1, 1]), seed=3), strict=True)
    net.eval()
    x = torch.rand(1, 3, *size)
    ph, pw = -size[0] % 8, -size[1] % 8
    with torch.no_grad():
        out = net(x)
        by_hand = net(F.pad(x, (0, pw, 0, ph)))[..., :size[0], :size[1]]
    assert out.shape == x.shape
    assert torch.equal(out, by_hand)


def test_layer_norm_is_the_fused_op_and_warns_nothing_forward_or_backward():
    """The release's hand-written LayerNorm2d autograd function warns on today's torch; ours is F.layer_norm."""
    import warnings

    class CallNames(torch.overrides.TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, '__name__', ''))
            return func(*args, **(kwargs or {}))

    net = build_network({'type': 'NAFNet', **TINY})
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with CallNames() as spy:
            out = net(torch.rand(1, 3, 20, 20))
        out.mean().backward()
    assert spy.names.count('layer_norm') == 2 * 7  # two per block, 7 blocks


def test_mismatched_encoder_decoder_lengths_are_a_value_error():
    with pytest.raises(ValueError, match='dec_blk_nums: one entry per level'):
        build_network({'type': 'NAFNet', 'enc_blk_nums': [1, 1], 'dec_blk_nums': [1]})


# ------------------------------------------------------------------------------------ release counts and files
@pytest.mark.parametrize('rel', list(RELEASE_PARAMS))
def test_release_option_files_build_the_released_parameter_counts(rel):
    opt = release_file(rel)['network_g']
    assert count_on_meta(opt) == RELEASE_PARAMS[rel]
    plain = dict(opt, type=opt['type'].replace('Local', ''))
    assert count_on_meta(plain) == RELEASE_PARAMS[rel]


def test_release_checkpoint_loads_strictly_through_the_model(tmp_path):
    """``{'params': ...}`` with a leading ``module.`` (a DDP save), into ImageRestorationModel and NAFNetLocal."""
    layout = release_layout('naf', 8, TINY['enc_blk_nums'], 1, TINY['dec_blk_nums'])
    state = {k: v.float() for k, v in random_state(layout).items()}
    path = tmp_path / 'NAFNet-release.pth'
    torch.save({'params': OrderedDict(('module.' + k, v) for k, v in state.items())}, path)
    for net_type in ('NAFNet', 'NAFNetLocal'):
        opt = {'model_type': 'ImageRestorationModel', 'is_train': False, 'dist': False, 'num_gpu': 0,
               'network_g': {'type': net_type, **TINY},
               'path': {'pretrain_network_g': str(path), 'strict_load_g': True}, 'val': {}}
        model = build_model(opt)
        loaded = model.net_g.state_dict()
        assert list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state)


# ------------------------------------------------------------------------------------ TLC
def _pair(kind, **local_kw):
    opt = dict(CASES['NAFNet' if kind == 'naf' else 'Baseline'][1], enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1])
    extra = {} if kind == 'naf' else {'dw_expand': 2, 'ffn_expand': 3}
    state = {k: v.float() for k, v in random_state(release_layout(kind, 8, [1, 1, 1], 1, [1, 1, 1], **extra)).items()}
    plain = build_network(dict(opt))
    local = build_network(dict(opt, type=opt['type'] + 'Local', **local_kw))
    for net in (plain, local):
        net.load_state_dict(state, strict=True)
        net.eval()
    return plain, local


@pytest.mark.parametrize('kind', ['naf', 'base'])
def test_local_equals_plain_up_to_the_base_size_and_differs_beyond(kind):
    """Windows are each pool's feature size for a 1.5 x train input (release: base = 1.5 x train): up to that size
    a window covers its map and the local pool is the global one, exactly; beyond it they differ."""
    plain, local = _pair(kind, train_size=32)
    pools = [m for m in local.modules() if isinstance(m, tlc.LocalAvgPool2d)]
    assert len(pools) == 7 and all(m.kernel_size for m in pools)  # one per block: 3 + 1 + 3
    assert pools[0].kernel_size == (48, 48)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for size in (32, 48):
            x = torch.rand(1, 3, size, size, generator=gen)
            assert torch.equal(local(x), plain(x)), size
        x = torch.rand(1, 3, 80, 72, generator=gen)
        assert (local(x) - plain(x)).abs().max() > 1e-4
        local.train()
        plain.train()
        assert torch.equal(local(x), plain(x))  # TLC is test-time only (the release trains GoPro with it)


def test_local_accepts_the_release_train_size_and_our_base_size_and_fast_imp():
    plain, release_style = _pair('naf', train_size=[1, 3, 32, 32], fast_imp=True)
    _, based = _pair('naf', train_size=32, base_size=32)
    assert [m.kernel_size for m in based.modules() if isinstance(m, tlc.LocalAvgPool2d)][0] == (32, 32)
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (based(x) - plain(x)).abs().max() > 1e-4  # base = train: 48 px is beyond it
        assert torch.equal(release_style(x), plain(x))


# ------------------------------------------------------------------------------------ grad checkpoint
def test_grad_checkpoint_switch_same_grads_fewer_saved_activations(tiny_data, tmp_path):
    opt = base_options(tiny_data, network={'type': 'NAFNetLocal', 'train_size': 48, **TINY})
    opt.update(is_train=True, dist=False, rank=0, world_size=1, model_type='ImageRestorationModel')
    opt['train'].update(grad_checkpoint=True, optim_g={'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 1e-3,
                                                      'betas': [0.9, 0.9]})
    opt['path'].update(models=str(tmp_path / 'models'), training_states=str(tmp_path / 'states'))
    model = build_model(opt)
    net = model.get_bare_model(model.net_g)
    assert net.grad_checkpoint is True
    net.load_state_dict({k: v.float() for k, v in random_state(
        release_layout('naf', 8, TINY['enc_blk_nums'], 1, TINY['dec_blk_nums'])).items()})
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))

    def run(flag):
        net.grad_checkpoint = flag
        net.zero_grad()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            out = net(x)
        out.square().mean().backward()
        return sum(saved), [p.grad.clone() for p in net.parameters()]

    plain_saved, plain_grads = run(False)
    ckpt_saved, ckpt_grads = run(True)
    assert ckpt_saved < 0.3 * plain_saved
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_grads, ckpt_grads))
    before = net.intro.weight.detach().clone()
    model.feed_data({'lq': x, 'gt': torch.rand_like(x)})
    model.optimize_parameters(1)  # one training step through the model with the switch on
    assert math.isfinite(model.log_dict['l_psnr']) and not torch.equal(before, net.intro.weight)


# ------------------------------------------------------------------------------------ literal launchers
SMALL = {'width': 8, 'enc_blk_nums': [1, 1], 'middle_blk_num': 1, 'dec_blk_nums': [1, 1],
         'train_size': [1, 3, 48, 48]}


def _shrink(opt, data, name, split_keys, keep_num_gpu=False):
    """Only paths, sizes, iterations and (unless ``keep_num_gpu``, for ``--force_yml num_gpu=0``) the device change;
    every other key stays as in the release's file."""
    tiny = base_options(data)
    for split, ours in split_keys.items():
        for key in ('dataroot_gt', 'dataroot_lq'):
            opt['datasets'][split][key] = tiny['datasets'][ours][key]
    opt['name'] = name
    if not keep_num_gpu:
        opt['num_gpu'] = 0
    opt['network_g'].update(SMALL)
    return opt


# All the launches of this module run in one interpreter (conftest.launch_batch): the literal ``basicsr/train.py``
# then ``basicsr/test.py`` on the release's GoPro files (from the repository root; the test run loads the train
# run's checkpoint), and ``python -m hinet_plugins.train`` on our files and on the other release files. The
# ``launches`` fixture writes the files of each selected test with its ``_plan_*`` function and launches them all;
# each test then asserts on its own run (exit code and merged output).
RELEASE_RUN = f'pytest_nafnet_{uuid.uuid4().hex[:8]}'  # the literal launchers' run name under the repository root
RELEASE_TRAIN = 'test_release_train_file_runs_through_the_literal_launcher'
RELEASE_TEST = 'test_release_test_file_runs_through_the_literal_launcher'
SHIPPED = ['GoPro', 'SIDD']
OTHER_RELEASE = ['train/SIDD/NAFNet-width32.yml', 'train/GoPro/Baseline-width32.yml']


@pytest.fixture(scope='module')
def launches(request, tiny_data, tmp_path_factory):
    """The launches of this module's selected tests, all in one interpreter; what the literal launchers wrote
    under the repository root is removed afterwards."""
    plans = {RELEASE_TRAIN: functools.partial(_plan_release_train, tiny_data),
             RELEASE_TEST: functools.partial(_plan_release_test, tiny_data)}
    plans.update({f'test_shipped_nafnet_option_files_train_and_pair_with_their_test_files[{name}]':
                  functools.partial(_plan_shipped, tiny_data, name) for name in SHIPPED})
    plans.update({f'test_other_release_train_files_run[{rel}]': functools.partial(_plan_other_release, tiny_data, rel)
                  for rel in OTHER_RELEASE})
    created = missing_run_folders()
    try:
        yield launch_selected(request, plans, tmp_path_factory, requires={RELEASE_TEST: RELEASE_TRAIN})
    finally:
        remove_repo_runs(RELEASE_RUN, created)


def _release_train_options(tiny_data):
    train = _shrink(release_file('train/GoPro/NAFNet-width32.yml'), tiny_data, RELEASE_RUN,
                    {'train': 'train', 'val': 'val'}, keep_num_gpu=True)
    train['datasets']['train'].update(gt_size=48, batch_size_per_gpu=2, num_worker_per_gpu=0)
    train['train'].update(total_iter=3)
    train['train']['scheduler']['T_max'] = 3
    train['val']['val_freq'] = 3
    train['logger'].update(print_freq=1, save_checkpoint_freq=3, use_tb_logger=False)
    return train


CPU = ['--force_yml', 'num_gpu=0']  # the files keep the release's num_gpu: 8 / 1, as a CPU user would run


def _plan_release_train(tiny_data, tmp):
    """``python basicsr/train.py`` on the release's GoPro NAFNet-width32 file (NAFNetLocal), from the repository
    root."""
    return ['basicsr/train.py', '-opt', write_options(_release_train_options(tiny_data), tmp / 'train.yml'), *CPU], REPO


def _plan_release_test(tiny_data, tmp):
    """``python basicsr/test.py`` on its test twin with the checkpoint the training run wrote."""
    test = _shrink(release_file('test/GoPro/NAFNet-width32.yml'), tiny_data, RELEASE_RUN + '_test', {'test': 'val'},
                   keep_num_gpu=True)
    test['path']['pretrain_network_g'] = f'experiments/{RELEASE_RUN}/models/net_g_latest.pth'
    return ['basicsr/test.py', '-opt', write_options(test, tmp / 'test.yml'), *CPU], REPO


@pytest.mark.slow
def test_release_train_file_runs_through_the_literal_launcher(launches):
    _, train_run = launches[RELEASE_TRAIN]
    assert train_run.returncode == 0, f'basicsr/train.py failed:\n{train_run.stdout[-6000:]}'
    ckpt = torch.load(os.path.join(REPO, 'experiments', RELEASE_RUN, 'models', 'net_g_latest.pth'),
                      weights_only=True)
    state = torch.load(os.path.join(REPO, 'experiments', RELEASE_RUN, 'training_states', '3.state'),
                       weights_only=False)
    out = train_run.stdout
    assert 'Model [ImageRestorationModel] is created' in out
    assert 'NAFNetLocal = NAFNet + TLC: 5 layer(s) made local (5 AdaptiveAvgPool2d' in out  # one per block
    losses = [float(v) for v in re.findall(r'l_psnr: (\S+)', out)]
    assert len(losses) == 3 and all(v < 0 for v in losses)  # PSNRLoss weight 1 = -PSNR
    assert re.search(r'iter:\s*1, lr:\(1\.000e-03,\)', out)
    group = state['optimizers'][0]['param_groups'][0]
    assert tuple(group['betas']) == (0.9, 0.9) and group['weight_decay'] == 1e-3  # AdamW as released
    assert 'Validation gopro-test' in out and '# psnr' in out
    # a NAFNetLocal checkpoint is a plain NAFNet checkpoint: strict load into the base arch
    plain = {k: v for k, v in SMALL.items() if k != 'train_size'}
    build_network({'type': 'NAFNet', **plain}).load_state_dict(ckpt['params'], strict=True)
    assert any(v.abs().sum() > 0 for k, v in ckpt['params'].items() if k.endswith('beta'))


@pytest.mark.slow
def test_release_test_file_runs_through_the_literal_launcher(launches):
    for kind, name in (('train', RELEASE_TRAIN), ('test', RELEASE_TEST)):
        run = launches[name][1]
        assert run.returncode == 0, f'basicsr/{kind}.py failed:\n{run.stdout[-6000:]}'
    out = launches[RELEASE_TEST][1].stdout
    images = sorted(glob.glob(os.path.join(REPO, 'results', RELEASE_RUN + '_test', 'visualization', '*', '*')))
    assert 'NAFNetLocal = NAFNet + TLC' in out and 'Loading NAFNet model from' in out
    assert 'Validation gopro-test' in out and '# psnr' in out and '# ssim' in out
    assert len(images) == 1  # save_img: true, the one tiny validation photo


# ------------------------------------------------------------------------------------ our own option files
def _plan_shipped(tiny_data, name, folder):
    small = {'width': 8, 'enc_blk_nums': [1, 1], 'middle_blk_num': 1, 'dec_blk_nums': [1, 1]}
    opt = on_tiny_data(load_option_file('train', f'NAFNet-{name}'), tiny_data, 2, gt_size=48, network=small)
    if name == 'GoPro':
        opt['val']['tlc']['train_size'] = 48
    return module_train(write_options(opt, folder / 'o.yml')), folder


@pytest.mark.slow
@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_nafnet_option_files_train_and_pair_with_their_test_files(launches, request, name):
    with open(os.path.join(REPO, 'options', 'train', f'NAFNet-{name}.yml')) as f:
        opt = yaml.safe_load(f)
    with open(os.path.join(REPO, 'options', 'test', f'NAFNet-{name}.yml')) as f:
        test_opt = yaml.safe_load(f)
    tr = opt['train']
    assert tr['optim_g']['type'] == 'AdamW'  # the whole recipe (the release's) is checked in test_recipes.py
    assert count_on_meta(opt['network_g']) == RELEASE_PARAMS[f'train/{name}/NAFNet-width64.yml']
    assert test_opt['network_g'] == {k: v for k, v in opt['network_g'].items() if k != 'img_channel'}
    assert bool((test_opt['val'] or {}).get('tlc')) == (name == 'GoPro')
    folder, proc = launches[request.node.name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    log = proc.stdout
    assert (folder / 'experiments' / f'NAFNet-{name}' / 'models' / 'net_g_latest.pth').is_file()
    assert ('val.tlc: TLC: 5 layer(s) made local' in log) == (name == 'GoPro')


def _other_release_options(rel, tiny_data):
    opt = _shrink(release_file(rel), tiny_data, 'release_' + rel.split('/')[1], {'train': 'train', 'val': 'val'})
    opt['datasets']['train'].update(gt_size=48, batch_size_per_gpu=2, num_worker_per_gpu=0)
    if opt['network_g']['type'] == 'NAFNet':
        del opt['network_g']['train_size']
    opt['train'].update(total_iter=1)
    opt['val']['val_freq'] = 1
    opt['logger'].update(print_freq=1, save_checkpoint_freq=1, use_tb_logger=False)
    return opt


def _plan_other_release(tiny_data, rel, folder):
    return module_train(write_options(_other_release_options(rel, tiny_data), folder / 'o.yml')), folder


@pytest.mark.slow
@pytest.mark.parametrize('rel', OTHER_RELEASE)
def test_other_release_train_files_run(tiny_data, launches, request, rel):
    """The SIDD file (plain NAFNet, AdamW without weight decay, no flips, ``val.use_image``) and the Baseline one
    (BaselineLocal): one iteration each, through ``python -m hinet_plugins.train`` (same launcher function)."""
    opt = _other_release_options(rel, tiny_data)
    folder, proc = launches[request.node.name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    log = proc.stdout
    assert '# psnr' in log and 'l_psnr' in log
    ckpt = torch.load(folder / 'experiments' / opt['name'] / 'models' / 'net_g_latest.pth', weights_only=True)
    base = opt['network_g']['type'].replace('Local', '')
    kwargs = {k: v for k, v in opt['network_g'].items() if k not in ('type', 'train_size')}
    build_network({'type': base, **kwargs}).load_state_dict(ckpt['params'], strict=True)


def test_inference_script_with_the_release_test_file_and_a_release_checkpoint(tmp_path):
    """``scripts/inference.py -opt <release test file>`` with a DDP-saved release checkpoint, on an odd-size photo:
    the output is NAFNetLocal's own restoration (strict load, ``module.`` stripped, any size)."""
    import contextlib
    import importlib.util
    import io

    import cv2
    import numpy as np
    spec = importlib.util.spec_from_file_location('inference_script', os.path.join(REPO, 'scripts', 'inference.py'))
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    plain = {k: v for k, v in SMALL.items() if k != 'train_size'}
    state = {k: v.float() * 0.3 for k, v in random_state(
        release_layout('naf', 8, plain['enc_blk_nums'], 1, plain['dec_blk_nums'])).items()}
    ckpt = tmp_path / 'NAFNet-GoPro-width32.pth'
    torch.save({'params': OrderedDict(('module.' + k, v) for k, v in state.items())}, ckpt)
    opt = release_file('test/GoPro/NAFNet-width32.yml')
    opt['network_g'].update(SMALL, train_size=[1, 3, 16, 16])
    opt['path']['pretrain_network_g'] = str(ckpt)
    opt_path = write_options(opt, tmp_path / 'test.yml')
    img = np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    (tmp_path / 'in').mkdir()
    cv2.imwrite(str(tmp_path / 'in' / 'photo.png'), img)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert inference.main(['-i', str(tmp_path / 'in'), '-o', str(tmp_path / 'out'), '-opt', opt_path,
                               '--device', 'cpu']) == 0
    out = cv2.imread(str(tmp_path / 'out' / 'photo.png'))
    net = build_network(dict(opt['network_g']))
    net.load_state_dict(state, strict=True)
    x = torch.from_numpy(img[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = net.eval()(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()[..., ::-1]
    expected = np.round(y * 255).astype(np.int16)
    assert out.shape == img.shape
    assert np.abs(out.astype(np.int16) - expected).max() <= 1
    assert np.abs(expected - img).mean() > 5  # the network did change the photo
