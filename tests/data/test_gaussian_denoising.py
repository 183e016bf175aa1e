"""Any clean image folder trains a denoiser: ``Dataset_GaussianDenoising`` with every registered architecture and
the template ``options/train/Custom-Denoise-NAFNet.yml``; its noise is exact under ``--auto_resume`` and fixed
for validation (two runs through the launcher compared)."""
import math

import pytest
import torch
from basicsr.data import build_dataset
from basicsr.models import build_model
from conftest import (base_options, expect_error, launch_batch, load_option_file, logged_iterations, module_train,
                      write_options)

from hinet_plugins.archs import specs


def clean_dataset(data, **extra):
    return dict({'name': 'clean', 'type': 'Dataset_GaussianDenoising', 'dataroot_gt': data['train_gt'],
                 'dataroot_lq': 'none', 'io_backend': {'type': 'disk'}, 'sigma_type': 'random',
                 'sigma_range': [0, 50], 'in_ch': 3, 'gt_size': 32, 'geometric_augs': True}, **extra)


@pytest.mark.parametrize('arch', list(specs()))
def test_every_architecture_takes_a_training_step_on_fresh_noise(tiny_data, tmp_path, arch):
    ds = build_dataset(dict(clean_dataset(tiny_data), phase='train', scale=1))
    batch = {k: torch.stack([ds[i][k] for i in range(2)]) for k in ('lq', 'gt')}
    opt = base_options(tiny_data, network=specs()[arch].options())
    opt.update(is_train=True, dist=False, rank=0, world_size=1)
    opt['path'].update(models=str(tmp_path / 'models'), training_states=str(tmp_path / 'states'))
    model = build_model(opt)
    model.feed_data(batch)
    model.optimize_parameters(1)
    assert math.isfinite(model.log_dict['l_psnr'])


def custom_denoise(tiny_data, name, total_iter):
    """The shipped template, only paths, sizes and counts changed (tiny NAFNet, 6 iterations)."""
    opt = load_option_file('train', 'Custom-Denoise-NAFNet')
    opt['name'] = name
    opt['num_gpu'] = 0
    opt['datasets']['train'].update(dataroot_gt=tiny_data['train_gt'], gt_size=32, batch_size_per_gpu=4,
                                    num_worker_per_gpu=0)
    opt['datasets']['val']['dataroot_gt'] = tiny_data['val_gt']
    opt['network_g'].update(specs()['NAFNet'].tiny)
    opt['train'].update(total_iter=total_iter)
    opt['train']['scheduler']['T_max'] = 6
    opt['val']['val_freq'] = 3
    opt['logger'].update(print_freq=1, save_checkpoint_freq=3, use_tb_logger=False)
    return opt


@pytest.mark.slow
def test_template_trains_and_resumes_exactly_with_fixed_validation_noise(tiny_data, tmp_path):
    """Run A: 3 iterations (a checkpoint, mid-epoch: 40 crops / batch 4), then ``--auto_resume`` to 6. Run B: 6
    iterations straight. The losses after the resume equal B's (same noise drawn for the same samples), and the
    validations of both runs at iterations 3 and 6 are equal (the validation noise does not depend on the run)."""
    resumed_yml = write_options(custom_denoise(tiny_data, 'resumed', 3), tmp_path / 'resumed.yml')
    straight_yml = write_options(custom_denoise(tiny_data, 'straight', 6), tmp_path / 'straight.yml')
    # the three launches in one interpreter, in this order (launch_batch: each its own argv and logger)
    runs = launch_batch([(module_train(resumed_yml), tmp_path),
                         (module_train(resumed_yml) + ['--auto_resume', '--force_yml', 'train:total_iter=6'], tmp_path),
                         (module_train(straight_yml), tmp_path)], tmp_path)
    for proc in runs:
        assert proc.returncode == 0, proc.stdout[-6000:]
    first, second, straight = (proc.stdout for proc in runs)
    assert 'Dataset [Dataset_GaussianDenoising] - Custom_clean_train is built.' in first
    assert 'Resuming training from epoch: 0, iter: 3.' in second
    after, expected = logged_iterations(second), logged_iterations(straight)
    assert sorted(after) == [4, 5, 6]
    for it in after:
        assert after[it] == expected[it], (it, after[it], expected[it])
    assert logged_iterations(first) == {it: expected[it] for it in (1, 2, 3)}
    losses = [float(expected[it]['l_psnr']) for it in sorted(expected)]
    assert len(set(losses)) == len(losses)  # random sigma per sample: every batch differs

    def validations(text):
        return [line.split('# psnr:')[1].split()[0] for line in text.splitlines() if '# psnr:' in line]
    assert validations(first)[0] == validations(straight)[0]  # iteration 3, two separate runs
    assert validations(second)[0] == validations(straight)[1]  # iteration 6, resumed vs straight


@pytest.mark.parametrize('key, value, fragment', [
    ('sigma_type', 'gaussian', "datasets.train.sigma_type must be one of ['constant', 'random', 'choice']"),
    ('sigma_range', [50, 0], 'datasets.train.sigma_range with sigma_type random must be [low, high]')])
def test_noise_option_mistakes_are_one_line_errors(tiny_data, tmp_path, monkeypatch, key, value, fragment):
    opt = custom_denoise(tiny_data, 'rejected', 2)
    opt['datasets']['train'][key] = value
    expect_error(tmp_path, opt, monkeypatch, fragment)
    assert not (tmp_path / 'experiments').exists()
