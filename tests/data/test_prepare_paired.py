"""``scripts/prepare_data.py paired`` on two flat folders of the user's own images, then a short training run of
``options/train/Custom-HINet.yml`` (dataset paths unchanged) on what it wrote; its checks and mistakes."""
import os

import pytest
import yaml

from conftest import PREPARE_SCRIPT as SCRIPT
from conftest import (PY, REPO, cut_short, launch_batch, lmdb_keys, module_train, prepare, run_cli, tree,
                      write_options)
from conftest import photo_pair as _pair
from conftest import write_image as _write

SIZES = ((64, 80), (72, 64), (64, 64), (80, 96), (64, 72), (96, 64))  # six pairs of different sizes


def make_user_folders(root, sizes=SIZES):
    """clean/<name>.png and noisy/<name>.jpg (the same stems, other extensions), as a user's photos often are."""
    for i, (h, w) in enumerate(sizes):
        clean, noisy = _pair(h, w, 50 + i)
        _write(os.path.join(root, 'clean', f'IMG {i:04d}.png'), clean)
        _write(os.path.join(root, 'noisy', f'IMG {i:04d}.jpg'), noisy)
    return os.path.join(root, 'clean'), os.path.join(root, 'noisy')


def expected_crops(sizes, crop, step):
    from hinet_plugins.utils.tiling import tile_origins
    return sum(len(tile_origins(h, crop, step)) * len(tile_origins(w, crop, step)) for h, w in sizes)


@pytest.mark.slow
def test_paired_prepare_is_idempotent_and_the_custom_template_trains_on_it(tmp_path):
    make_user_folders(tmp_path / 'my_data')
    cmd = [PY, SCRIPT, 'paired', '--gt', 'my_data/clean', '--lq', 'my_data/noisy', '--name', 'Custom', '--crop', '48',
           '--step', '32', '--val-count', '2', '--no-progress']
    # the template, unchanged apart from size and length: its dataset paths are the ones the command writes
    with open(os.path.join(REPO, 'options', 'train', 'Custom-HINet.yml')) as f:
        opt = yaml.safe_load(f)
    assert opt['datasets']['train']['dataroot_gt'] == 'datasets/Custom/train/gt.lmdb'
    opt['num_gpu'] = 0
    opt['network_g'].update(wf=8, depth=3, hin_position_right=2)
    opt['datasets']['train'].update(gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=0)
    opt['train'].update(total_iter=2)
    opt['train']['scheduler']['T_max'] = 2
    opt['val'].update(val_freq=2, crop_size=32)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False)
    # the script file with its command line, then the training on what it wrote, in one interpreter (launch_batch);
    # the re-run and the rebuilds below (in-process) end with the same LMDBs the training read
    prepared, proc = launch_batch([(cmd[1:], tmp_path), (module_train(write_options(opt, tmp_path / 'custom.yml')),
                                                         tmp_path)], tmp_path)
    assert prepared.returncode == 0, prepared.stdout[-3000:]
    out = prepared.stdout
    custom = tmp_path / 'datasets' / 'Custom'
    # 6 sorted pairs, 2 held out evenly: indices floor(0.5 * 3) = 1 and floor(1.5 * 3) = 4
    assert lmdb_keys(custom / 'val' / 'gt.lmdb') == ['IMG_0001', 'IMG_0004'] == lmdb_keys(custom / 'val' / 'lq.lmdb')
    train = lmdb_keys(custom / 'train' / 'gt.lmdb')
    assert train == lmdb_keys(custom / 'train' / 'lq.lmdb')
    kept = [s for i, s in enumerate(SIZES) if i not in (1, 4)]
    assert len(train) == expected_crops(kept, 48, 32) and train[0] == 'IMG_0000_s001'
    assert f'wrote {len(train)} pairs' in out and 'wrote 2 pairs' in out
    with open(custom / 'val' / 'gt.lmdb' / 'meta_info.txt') as f:
        assert f.readline().split()[1] == '(72,64,3)', 'validation images are whole'
    # idempotent: nothing rewritten; other settings refused without --force, rebuilt with it
    snapshot = tree(custom)
    again = prepare(tmp_path, *cmd[2:-1])[1]
    assert again.count('up to date') == 2 and tree(custom) == snapshot
    same = [*cmd[2:9], '--val-count', '2']
    code, msg = prepare(tmp_path, *same, '--crop', '64', '--step', '64', check=False)
    assert code == 2 and '--force' in msg and tree(custom) == snapshot
    prepare(tmp_path, *same, '--crop', '64', '--step', '64', '--force')
    assert len(lmdb_keys(custom / 'train' / 'gt.lmdb')) == expected_crops(kept, 64, 64)
    prepare(tmp_path, *same, '--crop', '48', '--step', '32', '--force')
    assert lmdb_keys(custom / 'train' / 'gt.lmdb') == train

    assert os.path.isfile(tmp_path / 'experiments' / 'Custom-HINet' / 'models' / 'net_g_2.pth'), proc.stdout[-3000:]
    assert 'Validation Custom_val' in proc.stdout and '# psnr:' in proc.stdout and '# ssim:' in proc.stdout


def test_paired_separate_validation_folders_and_whole_images(tmp_path):
    gt, lq = make_user_folders(tmp_path / 'train')
    val_gt, val_lq = make_user_folders(tmp_path / 'val', sizes=((48, 56),))
    os.rename(os.path.join(val_gt, 'IMG 0000.png'), os.path.join(val_gt, 'v1.png'))
    os.rename(os.path.join(val_lq, 'IMG 0000.jpg'), os.path.join(val_lq, 'v1.jpg'))
    prepare(tmp_path, 'paired', '--gt', gt, '--lq', lq, '--name', 'Mine', '--crop', '0', '--val-gt', val_gt,
            '--val-lq', val_lq)
    mine = tmp_path / 'datasets' / 'Mine'
    assert lmdb_keys(mine / 'train' / 'gt.lmdb') == [f'IMG_{i:04d}' for i in range(6)]
    assert lmdb_keys(mine / 'val' / 'lq.lmdb') == ['v1']
    with open(mine / 'train' / 'lq.lmdb' / 'meta_info.txt') as f:
        assert [line.split()[1] for line in f] == [f'({h},{w},3)' for h, w in SIZES]


def _mistake(tmp_path, *args):
    """Runs a rejected ``paired`` command in-process; returns its message after checking that nothing changed."""
    before = tree(tmp_path)
    code, msg = prepare(tmp_path, 'paired', *args, check=False)
    assert code == 2 and msg.startswith('hinet_plugins: error: ') and 'Traceback' not in msg, msg
    assert tree(tmp_path) == before
    return msg


def test_paired_mistakes_are_reported_and_change_nothing(tmp_path):
    gt, lq = make_user_folders(tmp_path / 'd')
    base = ['--gt', gt, '--lq', lq, '--name', 'X', '--crop', '48', '--step', '32']
    # argument mistakes: one line each
    for args, words in ((['--gt', gt, '--lq', lq], 'the following arguments are required: --name'),
                        (['--gt', gt, '--lq', gt, '--name', 'X'], 'are the same folder'),
                        (['--gt', gt + '_nope', '--lq', lq, '--name', 'X'], "--gt: folder '"),
                        (['--gt', gt, '--lq', lq, '--name', '../X'], '--name must be a folder name'),
                        ([*base[:6], '--crop', '32', '--step', '64'], '--step in 1..--crop'),
                        ([*base, '--val-gt', gt], '--val-gt and --val-lq go together'),
                        ([*base, '--val-count', '6'], 'would leave no training pair'),
                        ([*base, '--crop', 'big'], "argument --crop/--crop-size: invalid int value: 'big'")):
        msg = _mistake(tmp_path, *args)
        assert words in msg, (args, msg)
        if 'would leave' not in words:
            assert len(msg.strip().splitlines()) == 1, msg
    # data mistakes: all reported at once, nothing written
    os.remove(os.path.join(lq, 'IMG 0002.jpg'))                             # unpaired name
    _write(os.path.join(lq, 'IMG 0003.jpg'), _pair(80, 90, 1)[1])         # size mismatch (80x96 vs 80x90)
    small = _pair(40, 64, 1)                                                # smaller than the crop
    _write(os.path.join(gt, 'IMG 0005.png'), small[0])
    _write(os.path.join(lq, 'IMG 0005.jpg'), small[1])
    msg = _mistake(tmp_path, *base)
    assert "only in the first: ['IMG 0002']" in msg
    assert "pair 'IMG_0003': sizes differ" in msg and '80x96' in msg and '80x90' in msg
    assert "pair 'IMG_0005'" in msg and 'smaller than the crop size 48' in msg
    assert '3 problem(s) found, nothing was written' in msg  # the size mismatch once: no decode-check echo
    assert sum('IMG 0003' in line or 'IMG_0003' in line for line in msg.splitlines()) == 1, msg
    # fixed layout, one file cut short: found by the decode check
    gt2, lq2 = make_user_folders(tmp_path / 'e')
    cut_short(os.path.join(lq2, 'IMG 0004.jpg'), keep=0.5)
    msg = _mistake(tmp_path, '--gt', gt2, '--lq', lq2, '--name', 'X', '--crop', '48', '--step', '32')
    assert "IMG 0004.jpg' cannot be decoded" in msg
    # an LMDB written by an earlier run given as an input folder
    gt3, lq3 = make_user_folders(tmp_path / 'f', sizes=SIZES[:2])
    prepare(tmp_path, 'paired', '--gt', gt3, '--lq', lq3, '--name', 'Z', '--crop', '0', '--val-count', '0')
    msg = _mistake(tmp_path, '--gt', str(tmp_path / 'datasets' / 'Z' / 'train' / 'gt.lmdb'), '--lq', lq3, '--name',
                   'W')
    assert 'is an LMDB written by prepare_data' in msg
    assert not os.path.exists(tmp_path / 'datasets' / 'Z' / 'val'), '--val-count 0: no validation LMDBs'


@pytest.mark.slow
def test_paired_mistake_through_the_command_line(tmp_path):
    gt, lq = make_user_folders(tmp_path / 'd')
    proc = run_cli([PY, SCRIPT, 'paired', '--gt', gt, '--lq', lq, '--no-progress'], tmp_path, check=False)
    assert proc.returncode == 2 and proc.stdout.strip().splitlines() == [
        'hinet_plugins: error: prepare_data.py paired: the following arguments are required: --name (see --help)']
