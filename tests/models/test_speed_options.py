"""Speed switches (``models/speed.py``) through option files: each gives the plain fp32 run's losses/metrics.

One fp32 reference run and runs with the switches (tiny HINet, 4 iterations, validation with and without TLC),
launched with ``python -m hinet_plugins.train`` one after the other in one interpreter. Reference reading of
"correct": channels_last, gradient checkpointing and compilation (aot_eager backend: inductor needs minutes of C++
compilation on this CPU) reproduce every logged fp32 loss and PSNR to basicsr's printed precision; bf16 changes them
(so autocast did act) by less than 0.05 dB. The compile fallback is tested in-process with a compiler that fails.
"""
import os
import re
import subprocess
from contextlib import nullcontext

import pytest
import torch
from conftest import PY, REPO, base_options, launch_batch, module_train, write_options

from basicsr.archs import build_network
from basicsr.models import build_model

from hinet_plugins.errors import ConfigError
from hinet_plugins.models.speed import SpeedOptions, enable_grad_checkpoint

NET = {'type': 'HINet', 'wf': 8, 'depth': 3}
RUNS = {
    'fp32': {},
    'bf16': {'amp': 'bf16'},
    'channels_last+grad_checkpoint': {'channels_last': True, 'train': {'grad_checkpoint': True}},
    'compile': {'train': {'compile': {'backend': 'aot_eager'}, 'ema_decay': 0.9}},
}
ITER = re.compile(r'iter:\s*([\d,]+), lr:.*\]\s*l_psnr: (\S+)')
VAL = re.compile(r'Validation (\S+)\s*\n\s*# psnr: (\S+)')


def _options(data, name, change):
    opt = base_options(data, name=name, network=NET, total_iter=4)
    opt['val']['tlc'] = {'train_size': 48, 'compare': True}
    for key, value in change.items():
        if key == 'train':
            opt['train'].update(value)
        else:
            opt[key] = value
    return opt


@pytest.fixture(scope='module')
def runs(tiny_data, tmp_path_factory):
    """{name: (process, {iteration: loss}, {dataset: psnr}, work dir)} for every entry of RUNS."""
    root = tmp_path_factory.mktemp('speed')
    # one interpreter for the four runs, one after the other (launch_batch: each its own argv, folder and logger)
    launches = []
    for name in RUNS:
        cwd = root / name
        path = write_options(_options(tiny_data, name, RUNS[name]), cwd / f'{name}.yml')
        launches.append((module_train(path), cwd))
    done = launch_batch(launches, root, env_extra={'OMP_NUM_THREADS': '1'})
    results = {}
    for name, proc, (_, cwd) in zip(RUNS, done, launches):
        assert proc.returncode == 0, f'{name} failed ({proc.returncode}):\n{proc.stdout[-6000:]}'
        losses = {int(i.replace(',', '')): float(v) for i, v in ITER.findall(proc.stdout)}
        results[name] = (proc, losses, dict(VAL.findall(proc.stdout)), cwd)
    return results


def _assert_like_fp32(runs, name, loss_tol, psnr_tol):
    _, ref_losses, ref_psnr, _ = runs['fp32']
    _, losses, psnr, _ = runs[name]
    assert sorted(losses) == [1, 2, 3, 4] and sorted(ref_losses) == [1, 2, 3, 4]
    assert set(psnr) == set(ref_psnr) == {'tiny_val', 'tiny_val_tlc'}
    for i in ref_losses:
        assert abs(losses[i] - ref_losses[i]) <= loss_tol, (name, i, losses[i], ref_losses[i])
    for ds in ref_psnr:
        assert abs(float(psnr[ds]) - float(ref_psnr[ds])) <= psnr_tol, (name, ds, psnr[ds], ref_psnr[ds])
    return [losses[i] - ref_losses[i] for i in ref_losses] + [float(psnr[d]) - float(ref_psnr[d]) for d in psnr]


@pytest.mark.slow
def test_channels_last_and_grad_checkpoint_reproduce_fp32(runs):
    _assert_like_fp32(runs, 'channels_last+grad_checkpoint', loss_tol=2e-3, psnr_tol=2e-4)
    assert 'channels_last=True, compile=off, grad_checkpoint=True' in runs['channels_last+grad_checkpoint'][0].stdout


@pytest.mark.slow
def test_bf16_training_and_tlc_validation_close_to_fp32(runs):
    out = runs['bf16'][0].stdout
    assert 'amp=bf16 (eval bf16)' in out
    diffs = _assert_like_fp32(runs, 'bf16', loss_tol=0.05, psnr_tol=0.05)
    assert any(d != 0 for d in diffs), 'bf16 autocast changed nothing: it was not applied'


@pytest.mark.slow
def test_compile_runs_compiled_and_saves_plain_keys(runs):
    proc, _, _, cwd = runs['compile']
    assert 'first compiled training step done' in proc.stdout and 'torch.compile failed' not in proc.stdout
    _, losses, _, _ = runs['compile']
    ref = runs['fp32'][1]
    assert all(abs(losses[i] - ref[i]) <= 2e-3 for i in ref)  # EMA changes validation, not the training loss
    ckpt = torch.load(cwd / 'experiments' / 'compile' / 'models' / 'net_g_latest.pth', weights_only=True)
    for key in ('params', 'params_ema'):
        assert not any('_orig_mod' in k for k in ckpt[key])
        build_network(dict(NET)).load_state_dict(ckpt[key], strict=True)


# ------------------------------------------------------------------------------------------------ in-process
def _model(data, tmp_path, train=None, **top):
    opt = base_options(data, network=NET)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, **top)
    opt['train'].update(train or {})
    opt['path'].update(models=str(tmp_path / 'models'), training_states=str(tmp_path / 'states'))
    opt['train']['ema_decay'] = 0.5
    return build_model(opt)


def test_channels_last_reaches_weights_ema_and_inputs(tiny_data, tmp_path):
    model = _model(tiny_data, tmp_path, channels_last=True)
    for net in (model.net_g, model.net_g_ema):
        weights = [p for p in net.parameters() if p.dim() == 4]
        assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    model.feed_data({'lq': torch.rand(2, 3, 32, 32), 'gt': torch.rand(2, 3, 32, 32)})
    assert model.lq.is_contiguous(memory_format=torch.channels_last) and not model.lq.is_contiguous()
    model.optimize_parameters(1)  # EMA update across layouts
    model.test()
    assert model.output.dtype == torch.float32


def test_compile_failure_falls_back_to_eager_with_the_reason(tiny_data, tmp_path, monkeypatch):
    """A compiler that fails at the first call (as inductor does without a C++ compiler): the step is redone
    eagerly, with the same result as a model that never compiled, and training stays eager."""
    def broken_compile(net, **kwargs):
        def run(*args):
            raise RuntimeError('InvalidCxxCompiler: No working C++ compiler found')
        return run
    batch = {'lq': torch.rand(2, 3, 32, 32), 'gt': torch.rand(2, 3, 32, 32)}
    results = []
    for compiled in (False, True):
        if compiled:
            monkeypatch.setattr(torch, 'compile', broken_compile)
        torch.manual_seed(0)
        model = _model(tiny_data, tmp_path, train={'compile': compiled})
        model.feed_data(batch)
        with pytest.warns(UserWarning, match='torch.compile failed .*No working C.. compiler') if compiled \
                else nullcontext():
            model.optimize_parameters(1)
        results.append((float(model.log_dict['l_psnr']), model.get_bare_model(model.net_g).state_dict()))
    assert model.compiled_net_g is None and model.train_network() is model.net_g
    assert results[0][0] == results[1][0]
    assert all(torch.equal(v, results[1][1][k]) for k, v in results[0][1].items())


def test_grad_scaler_path_matches_unscaled_training_and_resumes(tiny_data, tmp_path):
    """The fp16 recipe's scaler logic (scale, unscale before clipping, step, update; state in the training state),
    run on the CPU with a CPU scaler: power-of-two scaling is exact, so the weights equal unscaled training."""
    batch = {'lq': torch.rand(2, 3, 32, 32), 'gt': torch.rand(2, 3, 32, 32)}
    models = []
    for scaled in (False, True):
        torch.manual_seed(0)
        model = _model(tiny_data, tmp_path, train={'use_grad_clip': True, 'grad_clip_norm': 0.05})
        if scaled:
            model.grad_scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 10, growth_interval=1)
        model.feed_data(batch)
        for it in (1, 2):
            model.optimize_parameters(it)
        models.append(model)
    plain, scaled = (m.get_bare_model(m.net_g).state_dict() for m in models)
    assert all(torch.allclose(plain[k], scaled[k], rtol=1e-5, atol=1e-7) for k in plain)
    assert models[1].grad_scaler.get_scale() == 2.0 ** 12  # grew once per finite step
    models[1].save_training_state(0, 2)
    state = torch.load(tmp_path / 'states' / '2.state', weights_only=False)
    fresh = _model(tiny_data, tmp_path)
    fresh.grad_scaler = torch.amp.GradScaler('cpu')
    fresh.resume_training(state)
    assert fresh.grad_scaler.get_scale() == 2.0 ** 12


def test_fp16_on_cpu_is_a_config_error(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match='amp: fp16 needs a GPU .*use amp: bf16'):
        _model(tiny_data, tmp_path, amp='fp16')


def test_val_amp_overrides_and_outputs_are_float(tiny_data, tmp_path):
    model = _model(tiny_data, tmp_path, amp='bf16', val={'amp': False})
    assert model.speed.amp == torch.bfloat16 and model.speed.val_amp is None
    model = _model(tiny_data, tmp_path, amp=None, val={'amp': 'bf16'})
    model.feed_data({'lq': torch.rand(1, 3, 24, 40)})
    model.test()
    assert model.output.dtype == torch.float32 and model.output.shape == (1, 3, 24, 40)


@pytest.mark.parametrize('opt, key', [
    ({'amp': True}, 'amp'), ({'amp': 'fp8'}, 'amp'), ({'val': {'amp': 'int8'}}, 'val.amp'),
    ({'channels_last': 'yes'}, 'channels_last'), ({'train': {'compile': {'backend': 'nope'}}}, 'train.compile'),
    ({'train': {'compile': {'fast': True}}}, 'train.compile'), ({'train': {'grad_checkpoint': 1}}, 'grad_checkpoint'),
])
def test_bad_switch_values_name_the_key(opt, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        SpeedOptions(dict(num_gpu=0, is_train=True, **opt))


def test_grad_checkpoint_on_an_arch_without_support_is_a_config_error():
    with pytest.raises(ConfigError, match='does not support gradient checkpointing'):
        enable_grad_checkpoint(torch.nn.Conv2d(3, 3, 3))


@pytest.mark.slow
def test_ddp_with_every_switch_matches_one_process_on_the_doubled_batch(tiny_data, tmp_path):
    """torchrun, 2 CPU ranks (gloo), bf16 + channels_last + grad_checkpoint + compile (of the DDP wrapper) + EMA,
    against one process with the same switches on the union of both ranks' batches (deterministic samples: no
    flips/rotations, gt_size = crop size; see tests/basicsr_ext/test_distributed.py for why the losses then agree)."""
    from conftest import free_port
    procs = {}
    for run, batch in (('ddp', 4), ('single', 8)):
        opt = base_options(tiny_data, name=f'switches_{run}', network=NET, total_iter=3)
        opt['datasets']['train'].update(gt_size=64, use_hflip=False, use_rot=False, batch_size_per_gpu=batch)
        opt.update(amp='bf16', channels_last=True)
        opt['train'].update(grad_checkpoint=True, compile={'backend': 'aot_eager'}, ema_decay=0.9)
        path = write_options(opt, tmp_path / run / f'{run}.yml')
        head = ([PY, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}']
                if run == 'ddp' else [PY])
        tail = ['--launcher', 'pytorch'] if run == 'ddp' else []
        env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', PYTHONPATH=REPO)
        env.pop('BASICSR_DIST_BACKEND', None)
        procs[run] = subprocess.Popen(head + ['-m', 'hinet_plugins.train', '-opt', path] + tail, cwd=tmp_path / run,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outs = {run: proc.communicate(timeout=500)[0] for run, proc in procs.items()}
    for run, proc in procs.items():
        assert proc.returncode == 0, outs[run][-5000:]
        assert 'first compiled training step done' in outs[run] and 'torch.compile failed' not in outs[run]
    got, want = ({int(i.replace(',', '')): float(v) for i, v in ITER.findall(outs[r])} for r in ('ddp', 'single'))
    assert sorted(got) == sorted(want) == [1, 2, 3]
    assert all(abs(got[i] - want[i]) <= 1e-3 * abs(want[i]) for i in want), (got, want)
    ckpt = torch.load(tmp_path / 'ddp' / 'experiments' / 'switches_ddp' / 'models' / 'net_g_latest.pth',
                      weights_only=True)
    for key in ('params', 'params_ema'):
        build_network(dict(NET)).load_state_dict(ckpt[key], strict=True)
