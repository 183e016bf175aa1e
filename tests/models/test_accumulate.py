"""``train.accumulate_grad_batches``: N micro-batches, one optimizer step, counted in optimizer steps."""
import os

import pytest
import torch
from basicsr.models import build_model

from conftest import base_options, launch_batch, module_train, write_options
from hinet_plugins.errors import ConfigError


def _model(accumulate, optim='SGD'):
    opt = {'model_type': 'MultiStageRestorationModel', 'is_train': True, 'dist': False, 'num_gpu': 0,
           'network_g': {'type': 'HINet', 'wf': 8, 'depth': 3},  # HIN: per-sample statistics, no batch ones
           'path': {'pretrain_network_g': None, 'models': '/nonexistent', 'training_states': '/nonexistent'},
           'train': {'optim_g': {'type': optim, 'lr': 1e-3},
                     'scheduler': {'type': 'TrueCosineAnnealingLR', 'T_max': 10, 'eta_min': 1e-7},
                     'pixel_opt': {'type': 'PSNRLoss', 'loss_weight': 0.5}, 'accumulate_grad_batches': accumulate},
           'val': {}}
    torch.manual_seed(0)
    return build_model(opt)


def _batch(n=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    gt = torch.rand(n, 3, 24, 24, generator=gen)
    return {'lq': (gt + 0.1 * torch.randn(gt.shape, generator=gen)).clamp(0, 1), 'gt': gt}


@pytest.mark.parametrize('accumulate, batch', [(2, 4), (3, 5)])  # equal and unequal micro-batches
def test_micro_batches_give_the_batch_gradient_and_weights(accumulate, batch):
    # SGD: the step is the gradient itself (Adam's first step, lr * g / |g|, would amplify fp32 noise of tiny g)
    whole, micro = _model(1), _model(accumulate)
    for model in (whole, micro):
        model.feed_data(_batch(batch))
        model.optimize_parameters(1)
    grads = [(p.grad - q.grad).abs().max().item() / max(p.grad.abs().max().item(), 1e-12)
             for p, q in zip(whole.net_g.parameters(), micro.net_g.parameters())]
    weights = [(p - q).abs().max().item() for p, q in zip(whole.net_g.parameters(), micro.net_g.parameters())]
    print(f'accumulate {accumulate} x batch {batch}: max relative grad diff {max(grads):.2e}, '
          f'max weight diff {max(weights):.2e}')
    assert max(grads) < 1e-4 and max(weights) < 1e-6
    logged = whole.get_current_log()['l_psnr'], micro.get_current_log()['l_psnr']
    assert logged[0] == pytest.approx(logged[1], rel=1e-5)
    assert micro.lq.shape[0] == batch, 'the full batch is put back after the micro-batches'


def test_bad_value_is_a_config_error():
    model = _model(0)
    model.feed_data(_batch())
    with pytest.raises(ConfigError, match='train.accumulate_grad_batches: expected a positive integer, got 0'):
        model.optimize_parameters(1)


@pytest.mark.slow
def test_launcher_counts_optimizer_steps(tiny_data, tmp_path):
    """Through ``python -m hinet_plugins.train``: batch 4 with 2 micro-batches trains the same weights as batch
    4 in one go; iterations, checkpoints and the log count optimizer steps."""
    # both trainings in one interpreter (launch_batch), then the checks of each
    paths = {}
    for accumulate in (1, 2):
        opt = base_options(tiny_data, name=f'acc{accumulate}', total_iter=2)
        opt['train']['accumulate_grad_batches'] = accumulate
        opt['train']['optim_g'] = {'type': 'SGD', 'lr': 0.05, 'momentum': 0.9}
        paths[accumulate] = write_options(opt, tmp_path / f'acc{accumulate}.yml')
    procs = launch_batch([(module_train(paths[accumulate]), tmp_path) for accumulate in (1, 2)], tmp_path)
    results = {}
    for accumulate, proc in zip((1, 2), procs):
        log = proc.stdout
        assert proc.returncode == 0, log[-6000:]
        models = os.path.join(tmp_path, 'experiments', f'acc{accumulate}', 'models')
        assert sorted(os.listdir(models)) == ['net_g_2.pth', 'net_g_latest.pth'], os.listdir(models)
        assert 'iter:2,' in log.replace(' ', ''), log[-3000:]
        results[accumulate] = torch.load(os.path.join(models, 'net_g_2.pth'), weights_only=True)['params']
    diff = max((results[1][k] - results[2][k]).abs().max().item() for k in results[1])
    print(f'launcher, 2 steps of batch 4 vs 2 x 2: max weight diff {diff:.2e}')
    assert diff < 1e-5
