"""Bad input: each mistake ends with one clear line naming the file/key (exit code 2), never a traceback.

Most cases run the launcher function in-process (``hinet_plugins.basicsr_ext.launch.run``, the whole body of
``basicsr/train.py``) with ``sys.argv`` set as the shell would: fast, and an escaping exception fails the test.
One case runs the literal ``python basicsr/train.py`` to check the real exit code and stderr.
"""
import errno
import glob
import os
import shutil
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import PY, REPO, base_options, expect_error, run_launcher, write_options

from hinet_plugins.utils.checkpoint import CheckpointWriteError, atomic_torch_save


def copy_folders(data, dst, split='train'):
    """Copy the GT/LQ folders of one split; returns (gt_dir, lq_dir)."""
    out = []
    for sub in ('gt', 'lq'):
        target = os.path.join(str(dst), f'{split}_{sub}')
        shutil.copytree(data[f'{split}_{sub}'], target)
        out.append(target)
    return out


def disk_options(data, tmp_path, name='err'):
    opt = base_options(data, name=name, lmdb=False, total_iter=2)
    gt, lq = copy_folders(data, tmp_path)
    opt['datasets']['train'].update(dataroot_gt=gt, dataroot_lq=lq)
    return opt


# ---------------------------------------------------------------------------------------------- option file
@pytest.mark.slow
def test_malformed_yaml_through_literal_launcher(tmp_path):
    bad = tmp_path / 'bad.yml'
    bad.write_text('name: broken\nnetwork_g: {type: HINet, wf: 8\ntrain:\n  total_iter: 2\n')
    proc = subprocess.run([PY, 'basicsr/train.py', '-opt', str(bad)], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert 'Traceback' not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith('hinet_plugins: error:') and str(bad) in line and 'not valid YAML' in line
    assert 'line 3' in line  # where the flow mapping was left open


@pytest.mark.parametrize('where, registered', [('network_g', 'HINet'), ('loss', 'PSNRLoss'),
                                               ('model', 'MultiStageRestorationModel'),
                                               ('dataset', 'PairedImageDataset_SIDD')])
def test_unknown_type_lists_registered_names(tiny_data, tmp_path, monkeypatch, where, registered):
    opt = base_options(tiny_data, total_iter=2)
    if where == 'network_g':
        opt['network_g']['type'], key = 'HINetX', 'network_g.type'
    elif where == 'dataset':
        opt['datasets']['val']['type'], key = 'PairedImageDataset_SIDDD', 'datasets.val.type'
    elif where == 'loss':
        opt['train']['pixel_opt']['type'], key = 'PSNRLos', 'train.pixel_opt.type'
    else:
        opt['model_type'], key = 'ImageRestorationModle', 'model_type'
    line = expect_error(tmp_path, opt, monkeypatch, key, 'Registered:', registered, 'opt.yml')
    assert line.count(',') > 3  # the full list, not one name


@pytest.mark.parametrize('entry, fragments', [
    ('datasets:trian:gt_size=32', ["datasets has no section 'trian'", 'it has: train, val']),
    ('train:optim_g:lr=abc', ['train:optim_g:lr must be a number', "got 'abc'"]),
    ('num_gpu=1=2', ["exactly one '='"]),
])
def test_force_yml_mistakes(tiny_data, tmp_path, monkeypatch, entry, fragments):
    opt = base_options(tiny_data, total_iter=2)
    expect_error(tmp_path, opt, monkeypatch, f"--force_yml '{entry}'", *fragments, flags=('--force_yml', entry))
    assert not os.path.exists(tmp_path / 'experiments')  # rejected before anything is created


def test_num_gpu_more_than_present_also_through_force_yml(tiny_data, tmp_path, monkeypatch):
    opt = base_options(tiny_data, total_iter=2)
    too_many = torch.cuda.device_count() + 1
    expect_error(tmp_path, opt, monkeypatch, f'num_gpu is {too_many}', flags=('--force_yml', f'num_gpu={too_many}'))


def test_num_gpu_more_than_present(tiny_data, tmp_path, monkeypatch):
    opt = base_options(tiny_data, total_iter=2)
    opt['num_gpu'] = torch.cuda.device_count() + 1
    expect_error(tmp_path, opt, monkeypatch, f"num_gpu is {opt['num_gpu']}", 'GPU(s) are present', 'num_gpu: 0')


# ---------------------------------------------------------------------------------------------- datasets
def test_dataset_path_missing(tiny_data, tmp_path, monkeypatch):
    opt = base_options(tiny_data, total_iter=2)
    missing = str(tmp_path / 'nowhere' / 'train_gt.lmdb')
    opt['datasets']['train']['dataroot_gt'] = missing
    expect_error(tmp_path, opt, monkeypatch, 'datasets.train.dataroot_gt', missing, 'does not exist')


def _copy_lmdbs(data, tmp_path):
    paths = {}
    for sub in ('gt', 'lq'):
        paths[sub] = str(tmp_path / f'train_{sub}.lmdb')
        shutil.copytree(data[f'train_{sub}_lmdb'], paths[sub])
    return paths


def test_lmdb_without_meta_info(tiny_data, tmp_path, monkeypatch):
    lmdbs = _copy_lmdbs(tiny_data, tmp_path)
    os.remove(os.path.join(lmdbs['lq'], 'meta_info.txt'))
    opt = base_options(tiny_data, total_iter=2)
    opt['datasets']['train'].update(dataroot_gt=lmdbs['gt'], dataroot_lq=lmdbs['lq'])
    expect_error(tmp_path, opt, monkeypatch, lmdbs['lq'], 'no meta_info.txt')


def test_lmdb_meta_info_key_missing_in_database(tiny_data, tmp_path, monkeypatch):
    lmdbs = _copy_lmdbs(tiny_data, tmp_path)
    for path in lmdbs.values():  # listed in both meta files (so the pairing check passes) but stored in neither
        with open(os.path.join(path, 'meta_info.txt'), 'a') as f:
            f.write('ghost_0000_0000.png (64,64,3) 1\n')
    opt = base_options(tiny_data, total_iter=2)
    opt['datasets']['train'].update(dataroot_gt=lmdbs['gt'], dataroot_lq=lmdbs['lq'])
    expect_error(tmp_path, opt, monkeypatch, lmdbs['gt'], 'ghost_0000_0000', 'not in the database')


def test_lmdb_key_only_on_one_side(tiny_data, tmp_path, monkeypatch):
    lmdbs = _copy_lmdbs(tiny_data, tmp_path)
    meta = os.path.join(lmdbs['lq'], 'meta_info.txt')
    lines = open(meta).read().splitlines(True)
    dropped = lines[0].split('.')[0]
    open(meta, 'w').writelines(lines[1:])
    opt = base_options(tiny_data, total_iter=2)
    opt['datasets']['train'].update(dataroot_gt=lmdbs['gt'], dataroot_lq=lmdbs['lq'])
    expect_error(tmp_path, opt, monkeypatch, 'not paired by name', f'only in GT: [{dropped!r}]')


def test_pair_of_different_sizes(tiny_data, tmp_path, monkeypatch):
    opt = disk_options(tiny_data, tmp_path)
    lq_dir = opt['datasets']['train']['dataroot_lq']
    name = sorted(os.listdir(lq_dir))[3]
    img = cv2.imread(os.path.join(lq_dir, name))
    cv2.imwrite(os.path.join(lq_dir, name), img[:60, :62])
    expect_error(tmp_path, opt, monkeypatch, f"pair '{name[:-4]}'", 'GT size 64x64 but LQ size 60x62',
                 'datasets.train')


def test_patch_larger_than_image(tiny_data, tmp_path, monkeypatch):
    opt = base_options(tiny_data, total_iter=2)
    opt['datasets']['train']['gt_size'] = 96
    expect_error(tmp_path, opt, monkeypatch, 'datasets.train.gt_size is 96', 'is 64x64')


def test_grayscale_gt_with_colour_lq_is_an_error(tiny_data, tmp_path, monkeypatch):
    opt = disk_options(tiny_data, tmp_path)
    gt_dir = opt['datasets']['train']['dataroot_gt']
    name = sorted(os.listdir(gt_dir))[0]
    cv2.imwrite(os.path.join(gt_dir, name), cv2.imread(os.path.join(gt_dir, name), cv2.IMREAD_GRAYSCALE))
    expect_error(tmp_path, opt, monkeypatch, f"pair '{name[:-4]}'", 'grayscale GT but a colour LQ')


@pytest.mark.slow
def test_grayscale_and_rgba_pairs_are_read_as_rgb_with_a_warning(tiny_data, tmp_path, monkeypatch):
    """Decision: consistent gray or RGBA pairs train (basicsr decodes every image as 3-channel colour: gray is
    replicated, alpha is dropped, not composited), with a warning naming the first such pair."""
    from basicsr.data import build_dataset
    opt = disk_options(tiny_data, tmp_path, name='gray_rgba')
    train = opt['datasets']['train']
    names = sorted(os.listdir(train['dataroot_gt']))
    for folder in (train['dataroot_gt'], train['dataroot_lq']):
        for name in names[:3]:  # grayscale pairs
            path = os.path.join(folder, name)
            cv2.imwrite(path, cv2.imread(path, cv2.IMREAD_GRAYSCALE))
        for name in names[3:6]:  # RGBA pairs with a half-transparent alpha
            path = os.path.join(folder, name)
            bgr = cv2.imread(path)
            cv2.imwrite(path, np.dstack([bgr, np.full(bgr.shape[:2], 128, np.uint8)]))
    opt_path = write_options(opt, tmp_path / 'opt.yml')
    with pytest.warns(UserWarning) as record:
        code, err = run_launcher(tmp_path, opt_path, monkeypatch=monkeypatch)
    assert code == 0, err
    messages = ' | '.join(str(w.message) for w in record)
    assert f"3 image pair(s) are grayscale, e.g. '{names[0][:-4]}'" in messages
    assert f"3 image pair(s) have an alpha channel, e.g. '{names[3][:-4]}'" in messages
    assert os.path.isfile(tmp_path / 'experiments' / 'gray_rgba' / 'models' / 'net_g_latest.pth')
    # what the network sees: 3 channels; gray replicated, RGBA = its colour channels unchanged
    ds = build_dataset(dict(train, phase='train', scale=1, gt_size=64, use_hflip=False, use_rot=False))
    index = {os.path.basename(p['gt_path']): i for i, p in enumerate(ds.paths)}
    gray = ds[index[names[0]]]['gt']
    assert gray.shape == (3, 64, 64) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    rgba = ds[index[names[3]]]['gt']
    expected = cv2.imread(os.path.join(tiny_data['train_gt'], names[3]))[..., ::-1].astype(np.float32) / 255
    assert rgba.shape == (3, 64, 64) and np.allclose(rgba.permute(1, 2, 0).numpy(), expected)


@pytest.mark.slow
@pytest.mark.parametrize('workers', [0, 1])
def test_png_cut_short_stops_training_with_its_path(tiny_data, tmp_path, monkeypatch, workers):
    """Its header reads (the up-front checks pass), its pixels do not: the run stops when the sample is drawn, in
    one line naming the file, also from a DataLoader worker; the checkpoints written before are kept."""
    opt = disk_options(tiny_data, tmp_path, name=f'cut_{workers}')
    opt['train']['total_iter'] = 12  # 10 batches of 4 per epoch: every file is drawn in epoch 0
    opt['datasets']['train'].update(num_worker_per_gpu=workers, batch_size_per_gpu=4)
    opt['logger']['save_checkpoint_freq'] = 1
    opt['val']['val_freq'] = 100
    from basicsr.data import build_dataset
    train = opt['datasets']['train']
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0)).tolist()  # EnlargedSampler, epoch 0
    paths = build_dataset(dict(train, phase='train', scale=1)).paths
    victim = paths[order[30]]['lq_path']  # in the 8th batch
    data = open(victim, 'rb').read()
    with open(victim, 'wb') as f:
        f.write(data[:len(data) // 2])
    line = expect_error(tmp_path, opt, monkeypatch, f"image '{victim}' cannot be decoded", 'datasets.train',
                        '--auto_resume')
    assert 'Original Traceback' not in line and 'NoneType' not in line
    models = tmp_path / 'experiments' / f'cut_{workers}' / 'models'
    assert (models / 'net_g_5.pth').is_file() and not (models / 'net_g_8.pth').exists()
    assert _finite_checkpoint(models / 'net_g_5.pth')


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize('other', ['width', 'architecture'])
def test_pretrained_checkpoint_of_another_network(tiny_data, tmp_path, monkeypatch, other):
    from basicsr.archs import build_network
    if other == 'width':
        net, fragments = build_network({'type': 'HINet', 'wf': 16, 'depth': 3}), \
            ['shape differs', 'conv_01.weight: network (8, 3, 3, 3) vs checkpoint (16, 3, 3, 3)']
    else:
        net, fragments = build_network({'type': 'MSRResNet', 'num_feat': 8, 'num_block': 1, 'upscale': 2}), \
            ['missing in checkpoint: conv_01.weight', 'unexpected in checkpoint: conv_first.weight']
    ckpt = str(tmp_path / 'other.pth')
    torch.save({'params': net.state_dict()}, ckpt)
    opt = base_options(tiny_data, total_iter=2)
    opt['path']['pretrain_network_g'] = ckpt
    expect_error(tmp_path, opt, monkeypatch, ckpt, 'does not fit network_g (HINet)', *fragments)


def _finite_checkpoint(path):
    params = torch.load(path, map_location='cpu', weights_only=True)['params']
    return all(torch.isfinite(v).all() for v in params.values())


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    opt = base_options(tiny_data, name='nan', total_iter=8)
    # iterations 1-2 train normally (checkpoint at 2); from iteration 3 the lr is 2e30, so the weights blow up
    opt['train']['scheduler'] = {'type': 'MultiStepLR', 'milestones': [2], 'gamma': 1e34}
    opt['logger']['save_checkpoint_freq'] = 2
    opt['val']['val_freq'] = 100
    line = expect_error(tmp_path, opt, monkeypatch, 'Non-finite loss at iteration', 'l_psnr=', 'is intact',
                        '--auto_resume')
    failed_at = int(line.split('iteration ')[1].split(' ')[0])
    exp = tmp_path / 'experiments' / 'nan'
    saved = sorted(int(os.path.basename(p)[6:-4]) for p in glob.glob(str(exp / 'models' / 'net_g_*[0-9].pth')))
    assert saved and saved[-1] < failed_at and 2 in saved
    assert _finite_checkpoint(exp / 'models' / 'net_g_2.pth')
    torch.load(exp / 'training_states' / '2.state', map_location='cpu', weights_only=False)
    assert not glob.glob(str(exp / '**' / '*.tmp'), recursive=True)
    assert not (exp / 'models' / 'net_g_latest.pth').exists()


@pytest.mark.slow
def test_disk_full_during_training_save(tiny_data, tmp_path, monkeypatch):
    opt = base_options(tiny_data, name='full', total_iter=4)
    opt['logger']['save_checkpoint_freq'] = 2
    opt['val']['val_freq'] = 100
    real_save, calls = torch.save, []

    def save_until_disk_full(obj, f, *args, **kwargs):
        calls.append(getattr(f, 'name', f))
        if len(calls) <= 2:  # net_g_2.pth and 2.state fit; the disk is full at iteration 4
            return real_save(obj, f, *args, **kwargs)
        f.write(b'\0' * 1000)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(torch, 'save', save_until_disk_full)
    line = expect_error(tmp_path, opt, monkeypatch, 'could not write checkpoint', 'net_g_4.pth',
                        'No space left on device', 'is unchanged')
    assert 'Errno 28' in line
    exp = tmp_path / 'experiments' / 'full'
    assert _finite_checkpoint(exp / 'models' / 'net_g_2.pth')
    assert torch.load(exp / 'training_states' / '2.state', map_location='cpu', weights_only=False)['iter'] == 2
    assert not (exp / 'models' / 'net_g_4.pth').exists()
    assert not glob.glob(str(exp / '**' / '.*.tmp'), recursive=True)


# ---------------------------------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize('failure', [KeyboardInterrupt(), OSError(errno.ENOSPC, 'No space left on device')])
def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch, failure):
    path = str(tmp_path / 'net_g_latest.pth')
    atomic_torch_save({'params': {'w': torch.arange(4.)}}, path)
    before = open(path, 'rb').read()
    real_save = torch.save

    def half_written(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        raise failure

    monkeypatch.setattr(torch, 'save', half_written)
    expected = CheckpointWriteError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        atomic_torch_save({'params': {'w': torch.zeros(1000)}}, path)
    if expected is CheckpointWriteError:
        assert info.value.errno == errno.ENOSPC and path in str(info.value)
    assert open(path, 'rb').read() == before
    assert os.listdir(tmp_path) == ['net_g_latest.pth']  # no temporary file left


_KILLED_WRITER = r'''
import importlib.util, sys, time, torch
spec = importlib.util.spec_from_file_location('ckpt', sys.argv[1])
ckpt = importlib.util.module_from_spec(spec); spec.loader.exec_module(ckpt)
real_save = torch.save
def slow_save(obj, f, *a, **k):
    real_save(obj, f, *a, **k)
    f.flush()
    print('WRITING', flush=True)
    time.sleep(60)  # killed here, mid-write, before the rename
torch.save = slow_save
ckpt.atomic_torch_save({'params': {'w': torch.ones(100000)}}, sys.argv[2])
'''


@pytest.mark.slow
def test_sigkill_during_save_leaves_previous_checkpoint(tmp_path):
    path = str(tmp_path / 'net_g_latest.pth')
    torch.save({'params': {'w': torch.zeros(3)}}, path)
    before = open(path, 'rb').read()
    proc = subprocess.Popen([PY, '-c', _KILLED_WRITER, os.path.join(REPO, 'hinet_plugins', 'utils', 'checkpoint.py'),
                             path], stdout=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    try:
        assert proc.stdout.readline().strip() == 'WRITING'
        leftovers = [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]
        assert leftovers and os.path.getsize(tmp_path / leftovers[0]) > 100000  # the new file was being written
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert open(path, 'rb').read() == before  # the checkpoint path still holds the previous, complete file
    assert torch.equal(torch.load(path, weights_only=True)['params']['w'], torch.zeros(3))
    # the killed writer's temporary file is removed by the next save of the same checkpoint
    atomic_torch_save({'params': {'w': torch.ones(2)}}, path)
    assert not [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]
    assert torch.equal(torch.load(path, weights_only=True)['params']['w'], torch.ones(2))


def test_module_launchers_report_one_line(tmp_path, monkeypatch, capsys):
    """``python -m hinet_plugins.train|test`` (run here in-process): a missing option file is one line, exit code
    2, and nothing is written in the working folder."""
    import runpy
    monkeypatch.chdir(tmp_path)
    for mode in ('train', 'test'):
        monkeypatch.setattr(sys, 'argv', [f'hinet_plugins.{mode}', '-opt', 'missing.yml'])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module(f'hinet_plugins.{mode}', run_name='__main__')
        assert exit_.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            "hinet_plugins: error: option file 'missing.yml' does not exist"]
    assert os.listdir(tmp_path) == []
