"""Foundation: basicsr imports, registration, HINet architecture, PSNR loss, multi-stage model, option files."""
import functools
import glob
import importlib
import math
import os
import pkgutil
import re
import subprocess

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

from conftest import (PY, REPO, base_options, launch_selected, load_option_file, module_train, on_tiny_data,
                      write_options)


def nparams(net):
    return sum(p.numel() for p in net.parameters())


# ----------------------------------------------------------------------------- compat + registration
def test_every_basicsr_module_imports_after_hinet_plugins():
    import basicsr
    import basicsr.test  # noqa: F401
    import basicsr.train  # noqa: F401
    failed = []
    for pkg_name in ('basicsr.data', 'basicsr.models', 'basicsr.archs', 'basicsr.losses', 'basicsr.metrics',
                     'basicsr.utils'):
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            try:
                importlib.import_module(f'{pkg_name}.{info.name}')
            except Exception as err:  # noqa: BLE001
                failed.append(f'{pkg_name}.{info.name}: {err!r}')
    assert not failed, failed
    assert 'site-packages' in basicsr.__file__


@pytest.mark.slow
def test_registered_names_and_no_clash_with_upstream():
    ours = {
        'arch': {n for n, o in ARCH_REGISTRY if o.__module__.startswith('hinet_plugins')},
        'loss': {n for n, o in LOSS_REGISTRY if o.__module__.startswith('hinet_plugins')},
        'model': {n for n, o in MODEL_REGISTRY if o.__module__.startswith('hinet_plugins')},
    }
    assert {'HINet', 'HINetSimple'} <= ours['arch']
    assert 'PSNRLoss' in ours['loss']
    assert {'MultiStageRestorationModel', 'ImageRestorationModel'} <= ours['model']
    # upstream's own names, from a process that imports basicsr (through basicsr_ext.compat) but not our registrations
    code = ('import sys, json; sys.modules["hinet_plugins"] = type(sys)("hinet_plugins"); '
            'sys.modules["hinet_plugins"].__path__ = [sys.argv[1]]; import hinet_plugins.basicsr_ext.compat; '
            'from basicsr.utils.registry import ARCH_REGISTRY as A, LOSS_REGISTRY as L, MODEL_REGISTRY as M; '
            'print(json.dumps({"arch": list(A.keys()), "loss": list(L.keys()), "model": list(M.keys())}))')
    out = subprocess.run([PY, '-c', code, os.path.join(REPO, 'hinet_plugins')], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    import json
    upstream = json.loads(out.strip().splitlines()[-1])
    assert 'SRModel' in upstream['model'] and 'HINet' not in upstream['arch']
    for kind, names in ours.items():
        assert not names & set(upstream[kind]), f'{kind} names clash with upstream: {names & set(upstream[kind])}'


def test_registry_rejects_a_duplicate_name():
    with pytest.raises(AssertionError, match='already registered'):
        ARCH_REGISTRY.register(type('HINet', (torch.nn.Module,), {}))


# ----------------------------------------------------------------------------- HINet architecture
def test_hinet_release_parameter_counts_and_names():
    net = build_network({'type': 'HINet'})
    assert nparams(net) == 88_669_702
    assert nparams(build_network({'type': 'HINet', 'wf': 32})) == 22_176_518
    keys = set(net.state_dict())
    for key in ('conv_01.weight', 'conv_02.bias', 'down_path_1.0.conv_1.weight', 'down_path_1.0.conv_2.bias',
                'down_path_1.0.identity.weight', 'down_path_1.0.norm.weight', 'down_path_1.0.downsample.weight',
                'down_path_2.3.csff_enc.weight', 'down_path_2.3.csff_dec.bias', 'up_path_1.0.up.weight',
                'up_path_2.3.conv_block.conv_1.weight', 'skip_conv_1.0.weight', 'skip_conv_2.3.bias',
                'sam12.conv1.weight', 'sam12.conv2.bias', 'sam12.conv3.weight', 'cat12.weight', 'last.bias'):
        assert key in keys, key
    assert 'down_path_1.0.csff_enc.weight' not in keys  # CSFF only in stage 2
    assert 'down_path_1.0.downsample.bias' not in keys  # 4x4 downsampling conv has no bias
    assert 'down_path_1.4.downsample.weight' not in keys  # last level does not downsample
    gopro = build_network({'type': 'HINet', 'hin_position_left': 3})
    gkeys = set(gopro.state_dict())
    assert 'down_path_1.2.norm.weight' not in gkeys and 'down_path_1.3.norm.weight' in gkeys


def test_hinet_strict_loads_a_release_style_state_dict(tmp_path):
    net = build_network({'type': 'HINet', 'wf': 8})
    state = {'params': {'module.' + k: torch.randn_like(v) for k, v in net.state_dict().items()}}
    path = tmp_path / 'release.pth'
    torch.save(state, path)
    from basicsr.models import build_model
    opt = {'model_type': 'ImageRestorationModel', 'is_train': False, 'dist': False, 'num_gpu': 0,
           'network_g': {'type': 'HINet', 'wf': 8}, 'path': {'pretrain_network_g': str(path), 'strict_load_g': True},
           'val': {}}
    model = build_model(opt)
    for k, v in model.net_g.state_dict().items():
        assert torch.equal(v, state['params']['module.' + k])


def test_padding_does_not_change_the_cropped_result_at_valid_sizes():
    torch.manual_seed(0)
    net = build_network({'type': 'HINet', 'wf': 8, 'depth': 3}).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        full = net(x)[-1]
        odd = net(x[..., :31, :29])[-1]
    assert full.shape == (1, 3, 32, 32) and odd.shape == (1, 3, 31, 29)


@pytest.mark.parametrize('norm_type', ['none', 'hin', 'in', 'bn', 'ln', 'gn', 'ibn'])
def test_hinet_normalisation_variants(norm_type):
    net = build_network({'type': 'HINetSimple', 'wf': 8, 'norm_type': norm_type})
    outs = net(torch.rand(2, 3, 32, 32))
    assert len(outs) == 1 and outs[0].shape == (2, 3, 32, 32)
    block = net.down_path_1[0]
    expected = {'none': type(None), 'hin': torch.nn.InstanceNorm2d, 'in': torch.nn.InstanceNorm2d,
                'bn': torch.nn.BatchNorm2d, 'ln': torch.nn.GroupNorm, 'gn': torch.nn.GroupNorm,
                'ibn': torch.nn.InstanceNorm2d}[norm_type]
    assert isinstance(getattr(block, 'norm', None), expected)
    if norm_type == 'hin':
        assert block.norm.num_features == 4 and block.norm.affine  # half of the 8 channels, affine
    if norm_type == 'ibn':
        assert isinstance(block.norm_bn, torch.nn.BatchNorm2d)


def test_hinet_simple_has_no_skips_and_one_stage():
    net = build_network({'type': 'HINetSimple'})
    assert net.down_path_1[0].conv_1.out_channels == 32
    assert len(net.skip_conv_1) == 0 and not hasattr(net, 'down_path_2') and not hasattr(net, 'sam12')
    assert net.up_path_1[0].conv_block.conv_1.in_channels == net.up_path_1[0].up.out_channels


def test_hinet_placement_and_decoder_hin_and_res_blocks():
    net = build_network({'type': 'HINet', 'wf': 8, 'hin_position_left': 1, 'hin_position_right': 2,
                         'hin_in_decoder': True, 'num_res_blocks': 2})
    has_norm = [hasattr(b, 'norm') for b in net.down_path_1]
    assert has_norm == [False, True, True, False, False]
    assert all(hasattr(up.conv_block, 'norm') for up in net.up_path_1)
    assert len(net.down_path_1[0].res_blocks) == 2 and len(net.up_path_2[0].conv_block.res_blocks) == 2
    assert net(torch.rand(1, 3, 20, 20))[-1].shape == (1, 3, 20, 20)


def test_hinet_width_scaling():
    p05 = nparams(build_network({'type': 'HINet', 'wf': 16}))
    p1 = nparams(build_network({'type': 'HINet', 'wf': 32}))
    assert 3.9 < p1 / p05 < 4.0  # convs scale with width squared


# ----------------------------------------------------------------------------- PSNR loss
def test_psnr_loss_matches_hand_computation():
    pred = torch.zeros(2, 3, 4, 4)
    gt = torch.zeros(2, 3, 4, 4)
    gt[0] += 0.1  # MSE 0.01 -> PSNR 20 dB
    gt[1] += 0.01  # MSE 1e-4 -> PSNR 40 dB
    loss = build_loss({'type': 'PSNRLoss', 'loss_weight': 0.5})(pred, gt)
    expected = 0.5 * (10 / math.log(10)) * (math.log(0.01 + 1e-8) + math.log(1e-4 + 1e-8)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(-0.5 * 30, rel=1e-4)  # -weight x mean PSNR


def test_psnr_loss_toY_uses_bt601_luma():
    pred = torch.zeros(1, 3, 2, 2)
    gt = torch.zeros(1, 3, 2, 2)
    gt[:, 1] = 1.0  # pure green: luma difference 128.553/255
    y_diff = 128.553 / 255
    loss = build_loss({'type': 'PSNRLoss', 'toY': True})(pred, gt)
    assert loss.item() == pytest.approx(10 / math.log(10) * math.log(y_diff ** 2 + 1e-8), rel=1e-5)
    with pytest.raises(ValueError, match='reduction'):
        build_loss({'type': 'PSNRLoss', 'reduction': 'sum'})


# ----------------------------------------------------------------------------- model
def _model(opt_overrides=None, network=None):
    from basicsr.models import build_model
    opt = {'model_type': 'MultiStageRestorationModel', 'is_train': True, 'dist': False, 'num_gpu': 0,
           'network_g': network or {'type': 'HINet', 'wf': 8, 'depth': 3},
           'path': {'pretrain_network_g': None, 'models': '/nonexistent', 'training_states': '/nonexistent'},
           'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3},
                     'scheduler': {'type': 'TrueCosineAnnealingLR', 'T_max': 10, 'eta_min': 1e-7},
                     'pixel_opt': {'type': 'PSNRLoss', 'loss_weight': 0.5}},
           'val': {}}
    for key, value in (opt_overrides or {}).items():
        opt['train'][key] = value
    return build_model(opt)


def test_model_sums_the_loss_over_stages_with_weights():
    torch.manual_seed(0)
    model = _model({'stage_weights': [0.25, 1.0]})
    model.lq = torch.rand(2, 3, 16, 16)
    gt = torch.rand(2, 3, 16, 16)
    preds = model.net_g(model.lq)
    total, log = model.compute_losses(preds, gt)
    loss = build_loss({'type': 'PSNRLoss', 'loss_weight': 0.5})
    assert total.item() == pytest.approx(0.25 * loss(preds[0], gt).item() + loss(preds[1], gt).item(), rel=1e-6)
    assert list(log) == ['l_psnr']


def test_model_list_of_losses_and_cosine_schedule():
    model = _model({'pixel_opt': [{'type': 'PSNRLoss'}, {'type': 'L1Loss', 'loss_weight': 2.0}]})
    assert [n for n, _ in model.losses] == ['l_psnr', 'l_l1']
    model.feed_data({'lq': torch.rand(1, 3, 16, 16), 'gt': torch.rand(1, 3, 16, 16)})
    for it in range(1, 6):
        model.update_learning_rate(it)
        model.optimize_parameters(it)
    lr = model.get_current_learning_rate()[0]
    # after 4 scheduler steps (basicsr steps from iteration 2 on... it calls step() every iteration > 1)
    steps = model.schedulers[0].last_epoch
    assert lr == pytest.approx(1e-7 + (1e-3 - 1e-7) * (1 + math.cos(math.pi * steps / 10)) / 2, rel=1e-6)
    assert set(model.get_current_log()) == {'l_psnr', 'l_l1', 'l_pix'}  # each loss and the total


def test_model_grad_clip_defaults_follow_the_release():
    assert _model().use_grad_clip is False
    m = _model({'use_grad_clip': True, 'grad_clip_norm': 0.5})
    assert m.use_grad_clip and m.grad_clip_norm == 0.5
    from hinet_plugins.models.restoration_model import ImageRestorationModel
    assert ImageRestorationModel.default_grad_clip is True


def test_grids_validation_equals_full_image_for_a_local_net():
    from hinet_plugins.utils.tiling import tiled_forward
    net = torch.nn.Conv2d(3, 3, 1)
    x = torch.rand(1, 3, 70, 90)
    with torch.no_grad():
        assert torch.allclose(tiled_forward(net, x, tile=32, overlap=8, batch=3), net(x), atol=1e-6)


# ----------------------------------------------------------------------------- training through option files
# The training launches of this module (``python -m hinet_plugins.train``) run in one interpreter
# (conftest.launch_batch): the ``launches`` fixture writes the files of each selected test with its ``_plan_*``
# function and launches them all; each test then asserts on its own run (its folder and merged output).


SHIPPED = ['SIDD', 'GoPro', 'REDS', 'Rain13k']


@pytest.fixture(scope='module')
def launches(request, tiny_data, tmp_path_factory):
    """The training runs of this module's selected tests, all in one interpreter."""
    plans = {f'test_train_through_module_launcher[{kind}]': functools.partial(_plan_module_launcher, tiny_data, kind)
             for kind in ('lmdb', 'disk')}
    plans['test_release_style_option_file_runs'] = functools.partial(_plan_release_style, tiny_data)
    plans['test_resume_from_a_release_training_state_and_release_log_names'] = functools.partial(_plan_resume,
                                                                                                  tiny_data)
    plans.update({f'test_shipped_hinet_option_files_train[{name}]': functools.partial(_plan_shipped, tiny_data, name)
                  for name in SHIPPED})
    return launch_selected(request, plans, tmp_path_factory)


def _module_launcher_options(tiny_data, kind):
    opt = base_options(tiny_data, name=f'hinet_{kind}', lmdb=kind == 'lmdb', total_iter=4)
    opt['logger']['use_tb_logger'] = True
    return opt


def _plan_module_launcher(tiny_data, kind, folder):
    return module_train(write_options(_module_launcher_options(tiny_data, kind), folder / 'o.yml')), folder


@pytest.mark.slow
@pytest.mark.parametrize('lmdb', [True, False], ids=['lmdb', 'disk'])
def test_train_through_module_launcher(tiny_data, launches, request, lmdb):
    opt = _module_launcher_options(tiny_data, 'lmdb' if lmdb else 'disk')
    tmp_path, proc = launches[request.node.name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    exp = tmp_path / 'experiments' / opt['name']
    assert (exp / 'models' / 'net_g_latest.pth').is_file()
    assert (exp / 'training_states' / '4.state').is_file()
    assert (exp / 'training_curves.png').is_file()
    assert glob.glob(str(tmp_path / 'tb_logger' / opt['name'] / 'events.*'))
    assert 'l_psnr' in proc.stdout and '# psnr' in proc.stdout


def _plan_release_style(tiny_data, tmp_path):
    text = f"""
name: GoPro-HINet
model_type: ImageRestorationModel
scale: 1
num_gpu: 0
manual_seed: 10
datasets:
  train:
    name: gopro-train
    type: PairedImageDataset
    dataroot_gt: {tiny_data['train_gt_lmdb']}
    dataroot_lq: {tiny_data['train_lq_lmdb']}
    filename_tmpl: '{{}}'
    io_backend: {{type: lmdb}}
    gt_size: 48
    use_flip: true
    use_rot: true
    use_shuffle: true
    num_worker_per_gpu: 0
    batch_size_per_gpu: 2
    dataset_enlarge_ratio: 1
    prefetch_mode: ~
  val:
    name: gopro-test
    type: PairedImageDataset
    dataroot_gt: {tiny_data['val_gt_lmdb']}
    dataroot_lq: {tiny_data['val_lq_lmdb']}
    io_backend: {{type: lmdb}}
network_g: {{type: HINet, wf: 8, hin_position_left: 3, hin_position_right: 4}}
path: {{pretrain_network_g: ~, strict_load_g: true, resume_state: ~}}
train:
  optim_g: {{type: Adam, lr: !!float 2e-4, weight_decay: 0, betas: [0.9, 0.99]}}
  scheduler: {{type: TrueCosineAnnealingLR, T_max: 400000, eta_min: !!float 1e-7}}
  total_iter: 3
  warmup_iter: -1
  pixel_opt: {{type: PSNRLoss, loss_weight: 0.5, reduction: mean, toY: false}}
val:
  val_freq: !!float 5e4
  save_img: false
  grids: true
  crop_size: 64
  max_minibatch: 8
  metrics:
    psnr: {{type: calculate_psnr, crop_border: 0, test_y_channel: false}}
logger: {{print_freq: 1, save_checkpoint_freq: !!float 2e4, use_tb_logger: false, wandb: {{project: ~, resume_id: ~}}}}
dist_params: {{backend: nccl, port: 29500}}
"""
    path = tmp_path / 'release.yml'
    path.write_text(text)
    return module_train(path), tmp_path


@pytest.mark.slow
def test_release_style_option_file_runs(launches, request):
    """A file written the way the HINet release writes them: use_flip, grids, TrueCosineAnnealingLR, PSNRLoss."""
    tmp_path, proc = launches[request.node.name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert 'Model [ImageRestorationModel] is created' in proc.stdout
    assert (tmp_path / 'experiments' / 'GoPro-HINet' / 'models' / 'net_g_latest.pth').is_file()
    assert '# psnr' in proc.stdout  # the final validation ran through the grids path


def _plan_shipped(tiny_data, name, folder):
    opt = on_tiny_data(load_option_file('train', f'HINet-{name}'), tiny_data, 2, gt_size=48, network={'wf': 8})
    opt['val']['crop_size'] = 64
    return module_train(write_options(opt, folder / 'o.yml')), folder


@pytest.mark.slow
@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_hinet_option_files_train(launches, request, name):
    with open(os.path.join(REPO, 'options', 'train', f'HINet-{name}.yml')) as f:
        opt = yaml.safe_load(f)
    assert opt['network_g']['wf'] == 64  # the recipe itself (the release's) is checked in test_recipes.py
    assert opt['datasets']['train']['batch_size_per_gpu'] * 8 == 64
    folder, proc = launches[request.node.name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert (folder / 'experiments' / f'HINet-{name}' / 'models' / 'net_g_latest.pth').is_file()
    with open(os.path.join(REPO, 'options', 'test', f'HINet-{name}.yml')) as f:
        test_opt = yaml.safe_load(f)
    assert test_opt['network_g']['hin_position_left'] == opt['network_g']['hin_position_left']
    assert 'test' in test_opt['datasets'] and test_opt['path']['pretrain_network_g']


def release_training_state(net, optim_opt, sched_opt, iters, seed=0):
    """What the HINet release writes after ``iters`` iterations (its ``setup_optimizers`` and ``save_training_state``):
    Adam over two param groups (the network's parameters; an empty one at 0.1 x lr for deformable offsets), torch's
    CosineAnnealingLR, ``{'epoch', 'iter', 'optimizers', 'schedulers'}``; per-parameter ``step`` as the plain
    number older torch saved, no random states."""
    torch.manual_seed(seed)
    opt = dict(optim_opt)
    opt.pop('type')
    adam = torch.optim.Adam([{'params': list(net.parameters())}, {'params': [], 'lr': opt['lr'] * 0.1}], **opt)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(adam, T_max=sched_opt['T_max'], eta_min=sched_opt['eta_min'])
    for _ in range(iters):
        adam.zero_grad()
        sum(out.abs().mean() for out in net(torch.rand(2, 3, 32, 32))).backward()
        adam.step()
        sched.step()
    optim_state = adam.state_dict()
    for st in optim_state['state'].values():
        st['step'] = float(st['step'])
    keep = ('params', 'lr', 'betas', 'eps', 'weight_decay', 'amsgrad', 'initial_lr')
    optim_state['param_groups'] = [{k: g[k] for k in keep} for g in optim_state['param_groups']]
    return {'epoch': 0, 'iter': iters, 'optimizers': [optim_state], 'schedulers': [sched.state_dict()]}


def _resume_options(tiny_data):
    return on_tiny_data(load_option_file('train', 'HINet-SIDD'), tiny_data, total_iter=4, gt_size=32,
                        network={'wf': 8, 'depth': 3, 'hin_position_right': 2})


def _plan_resume(tiny_data, tmp_path):
    """A network and its training state after 2 iterations, as the release writes them; the run resumes there."""
    opt = _resume_options(tiny_data)
    exp = tmp_path / 'experiments' / opt['name']
    (exp / 'models').mkdir(parents=True)
    (exp / 'training_states').mkdir()
    net = build_network(opt['network_g'])
    state = release_training_state(net, opt['train']['optim_g'], opt['train']['scheduler'], iters=2)
    torch.save({'params': net.state_dict()}, exp / 'models' / 'net_g_2.pth')
    torch.save(state, exp / 'training_states' / '2.state')
    opt['path']['resume_state'] = str(exp / 'training_states' / '2.state')
    return module_train(write_options(opt, tmp_path / 'o.yml')), tmp_path


@pytest.mark.slow
def test_resume_from_a_release_training_state_and_release_log_names(tiny_data, launches, request):
    """A training state in the HINet release's format -> path.resume_state -> the run continues from its optimizer
    (Adam's step count and moments) and scheduler; the log carries the releases' ``l_pix``."""
    opt = _resume_options(tiny_data)
    tmp_path, proc = launches[request.node.name]
    exp = tmp_path / 'experiments' / opt['name']
    net = build_network(opt['network_g'])
    state = torch.load(exp / 'training_states' / '2.state', weights_only=True)  # as written before the launch
    assert len(state['optimizers'][0]['param_groups']) == 2
    assert state['iter'] == 2  # plain tensors only (weights_only)
    assert proc.returncode == 0, proc.stdout[-6000:]
    log = proc.stdout
    assert 'Resuming training from epoch: 0, iter: 2' in log
    sched = opt['train']['scheduler']
    base, low = opt['train']['optim_g']['lr'], sched['eta_min']
    lr3 = low + (base - low) * (1 + math.cos(math.pi * 3 / sched['T_max'])) / 2
    assert re.search(rf'iter:\s+3, lr:\({lr3:.3e},\)', log), log[-3000:]  # the release's cosine goes on, one group
    assert 'l_pix: ' in log and 'l_l1: ' in log
    resumed = torch.load(exp / 'training_states' / '4.state', weights_only=True)
    groups = resumed['optimizers'][0]['param_groups']
    assert len(groups) == 1 and len(groups[0]['params']) == len(list(net.parameters()))
    first = resumed['optimizers'][0]['state'][0]
    assert float(first['step']) == 4  # 2 release steps + 2 resumed ones (a fresh optimizer would say 2)
