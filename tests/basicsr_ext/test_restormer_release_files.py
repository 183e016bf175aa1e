"""Restormer's 13 training option files, copied verbatim from the release (``tests/release_options/restormer/``),
run through the literal ``basicsr/train.py`` (all in one interpreter: ``conftest.launch_batch``); only paths, sizes
and counts change, all of them with ``--force_yml`` (the file itself is passed as it is). Plus the dataset types they name, through the registry."""
import glob
import os
import re
import uuid

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network
from conftest import REPO, launch_batch, missing_run_folders, remove_repo_runs, selected_items

RELEASE = os.path.join(REPO, 'tests', 'release_options', 'restormer')
FILES = sorted(os.path.relpath(p, RELEASE) for p in glob.glob(os.path.join(RELEASE, '*', 'Options', '*.yml')))
TINY_NET = {'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1, 'heads': [1, 1, 1, 1]}


@pytest.fixture(scope='module')
def dual_pixel_data(tmp_path_factory):
    """A tiny 16-bit dual-pixel set: 4 training triplets of 40 px (smaller than no patch: padded if needed) and
    one 48-px validation triplet; the views are shifted, darkened copies of the target."""
    root = tmp_path_factory.mktemp('dpdd')
    rng = np.random.default_rng(0)
    out = {}
    for split, count, side in (('train', 4, 40), ('val', 1, 48)):
        for n in range(count):
            gt = rng.integers(0, 65536, (side, side, 3), dtype=np.uint16)
            views = {'target': gt, 'inputL': np.roll(gt, 1, axis=1) // 2, 'inputR': np.roll(gt, -1, axis=1) // 2}
            for kind, img in views.items():
                folder = root / split / kind
                folder.mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(folder / f'{n:03d}.png'), img)
                out[f'{split}_{kind}'] = str(folder)
    return out


def data_paths(opt, tiny_data, dual_pixel_data):
    """``--force_yml`` entries pointing every dataroot of the file at the tiny sets."""
    entries = []
    for split in ('train', 'val'):
        ds = opt['datasets'][split]
        if ds['type'] == 'Dataset_DefocusDeblur_DualPixel_16bit':
            roots = {'dataroot_gt': 'target', 'dataroot_lqL': 'inputL', 'dataroot_lqR': 'inputR'}
            entries += [f'datasets:{split}:{k}={dual_pixel_data[f"{split}_{v}"]}' for k, v in roots.items()]
        else:
            entries.append(f'datasets:{split}:dataroot_gt={tiny_data[f"{split}_gt"]}')
            if ds['type'] == 'Dataset_PairedImage':  # the Gaussian files keep their dataroot_lq: none
                entries.append(f'datasets:{split}:dataroot_lq={tiny_data[f"{split}_lq"]}')
    return entries


SIZES_AND_COUNTS = [
    'num_gpu=0', 'datasets:train:num_worker_per_gpu=0', 'datasets:train:batch_size_per_gpu=2',
    'datasets:train:mini_batch_sizes=[2,2,1,1,1,1]', 'datasets:train:iters=[1,1,1,1,1,1]',
    'datasets:train:gt_size=32', 'datasets:train:gt_sizes=[16,16,24,24,32,32]',
    'network_g:dim=8', 'network_g:num_blocks=[1,1,1,1]', 'network_g:num_refinement_blocks=1',
    'network_g:heads=[1,1,1,1]', 'train:total_iter=2', 'train:scheduler:periods=[1,1]', 'val:val_freq=2',
    'logger:print_freq=1', 'logger:save_checkpoint_freq=2']


def test_the_fixtures_are_the_releases_13_training_files():
    assert len(FILES) == 13
    for rel in FILES:
        with open(os.path.join(RELEASE, rel)) as f:
            opt = yaml.safe_load(f)
        assert opt['name'] == os.path.splitext(os.path.basename(rel))[0]
        assert opt['num_gpu'] == 8 and opt['model_type'] == 'ImageCleanModel'
        assert opt['train']['total_iter'] == 300000 and opt['datasets']['train']['gt_sizes'][-1] == 384


TEST_NAME = 'test_release_training_file_runs_through_the_literal_launcher'


@pytest.fixture(scope='module')
def release_runs(request, tiny_data, dual_pixel_data, tmp_path_factory):
    """The selected release files, each run by ``python basicsr/train.py -opt FILE --force_yml ...``, all in one
    interpreter (``launch_batch``: the literal launcher file per run; one start-up instead of 13):
    {rel: (opt, run name, completed run)}; the runs' folders are removed afterwards."""
    selected = [item.callspec.params['rel'] for item in selected_items(request) if item.originalname == TEST_NAME]
    runs, plans = {}, []
    for rel in selected:
        path = os.path.join(RELEASE, rel)
        with open(path) as f:
            opt = yaml.safe_load(f)
        name = f'pytest_restormer_{uuid.uuid4().hex[:8]}'
        runs[rel] = (opt, name)
        plans.append((['basicsr/train.py', '-opt', path, '--force_yml', f'name={name}',
                       *data_paths(opt, tiny_data, dual_pixel_data), *SIZES_AND_COUNTS], REPO))
    created = missing_run_folders()
    try:
        done = launch_batch(plans, tmp_path_factory.mktemp('restormer_runs'), timeout=300 + 60 * len(plans))
        yield {rel: (*runs[rel], proc) for rel, proc in zip(runs, done)}
    finally:
        for _, name in runs.values():
            remove_repo_runs(name, created)


@pytest.mark.slow
@pytest.mark.parametrize('rel', FILES, ids=[os.path.splitext(os.path.basename(f))[0] for f in FILES])
def test_release_training_file_runs_through_the_literal_launcher(rel, release_runs):
    opt, name, proc = release_runs[rel]
    out = proc.stdout
    assert proc.returncode == 0 and 'Traceback' not in out, out[-5000:]
    train_type = opt['datasets']['train']['type']
    assert f"Dataset [{train_type}] - TrainSet is built." in out
    assert 'Model [ImageCleanModel] is created' in out
    assert len(re.findall(r'l_l1: (\S+)', out)) == 2
    assert 'Progressive patches: stage 2/6 from iteration 2: patch 16, batch 2 per GPU' in out
    psnr = float(re.search(r'ValSet\s+# psnr: ([\d.]+)', out).group(1))
    assert 5 < psnr < 60
    state = torch.load(os.path.join(REPO, 'experiments', name, 'models', 'net_g_2.pth'), weights_only=True)
    net = build_network(dict(opt['network_g'], **TINY_NET))  # the file's network_g, only its sizes changed
    net.load_state_dict(state['params'], strict=True)
