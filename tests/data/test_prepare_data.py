"""scripts/prepare_data.py on small fake trees with the official layouts, then a few training iterations on the
result through the repository's own option files (dataset paths unchanged); error cases; idempotence;
scripts/plot_curves.py on the log of one of those trainings."""
import contextlib
import io
import os

import cv2
import lmdb
import numpy as np
import pytest
import scipy.io
import yaml

from conftest import (PREPARE_SCRIPT, PY, REPO, cut_short, launch_batch, lmdb_keys, load_script, module_train,
                      prepare, prepare_script, run_cli, selected_items, tree, write_options)
from conftest import photo_pair as _pair
from conftest import write_image as _write

SCRIPT = PREPARE_SCRIPT
SIDD_SCENES = ('0001_001_S6_00100_00060_3200_L', '0002_001_S6_00100_00020_3200_N')


def make_sidd(root):
    data = os.path.join(root, 'train', 'SIDD_Medium_Srgb', 'Data')
    for i, scene in enumerate(SIDD_SCENES):
        gt, noisy = _pair(72, 88, i)
        _write(os.path.join(data, scene, 'GT_SRGB_010.PNG'), gt)
        _write(os.path.join(data, scene, 'NOISY_SRGB_010.PNG'), noisy)
    blocks = [_pair(48, 48, 10 + i) for i in range(4)]
    gt = np.stack([b[0][..., ::-1] for b in blocks]).reshape(2, 2, 48, 48, 3)
    noisy = np.stack([b[1][..., ::-1] for b in blocks]).reshape(2, 2, 48, 48, 3)
    os.makedirs(os.path.join(root, 'val'), exist_ok=True)
    scipy.io.savemat(os.path.join(root, 'val', 'ValidationGtBlocksSrgb.mat'), {'ValidationGtBlocksSrgb': gt})
    scipy.io.savemat(os.path.join(root, 'val', 'ValidationNoisyBlocksSrgb.mat'), {'ValidationNoisyBlocksSrgb': noisy})


def make_gopro(root, flat_test=True):
    """GOPRO_Large scene folders for train, the flattened input/target layout (MPRNet/HINet) for test (or
    GOPRO_Large scene folders there too with ``flat_test=False``)."""
    for s, scene in enumerate(('GOPR0372_07_00', 'GOPR0374_11_01')):
        for f in range(2):
            sharp, blur = _pair(64, 80, 3 * s + f)
            _write(os.path.join(root, 'train', scene, 'sharp', f'{f:06d}.png'), sharp)
            _write(os.path.join(root, 'train', scene, 'blur', f'{f:06d}.png'), cv2.GaussianBlur(blur, (5, 5), 1.5))
    for f in range(2 if flat_test else 0):
        sharp, blur = _pair(64, 72, 20 + f)
        _write(os.path.join(root, 'test', 'target', f'GOPR0384_11_00-{f:06d}.png'), sharp)
        _write(os.path.join(root, 'test', 'input', f'GOPR0384_11_00-{f:06d}.png'), cv2.GaussianBlur(blur, (5, 5), 1.5))
    for f in range(0 if flat_test else 2):
        sharp, blur = _pair(64, 72, 20 + f)
        _write(os.path.join(root, 'test', 'GOPR0384_11_00', 'sharp', f'{f:06d}.png'), sharp)
        _write(os.path.join(root, 'test', 'GOPR0384_11_00', 'blur', f'{f:06d}.png'), cv2.GaussianBlur(blur, (5, 5), 1))


def make_reds(root):
    for split, frames in (('train', (0, 1)), ('val', (8, 9))):
        for clip in ('000', '001'):
            for f in frames:
                sharp, blur = _pair(64, 64, int(clip) * 7 + f)
                _write(os.path.join(root, split, f'{split}_sharp', clip, f'{f:08d}.png'), sharp)
                _write(os.path.join(root, split, f'{split}_blur_jpeg', clip, f'{f:08d}.jpg'), blur)


def make_rain13k(root, test_sets=('Rain100H', 'Test100')):
    for i, (h, w) in enumerate(((64, 64), (72, 64), (64, 80))):
        clean, rainy = _pair(h, w, 30 + i)
        _write(os.path.join(root, 'train', 'target', f'{i + 1}.jpg'), clean)
        _write(os.path.join(root, 'train', 'input', f'{i + 1}.jpg'), rainy)
    for t, name in enumerate(test_sets):
        for i in range(2):
            clean, rainy = _pair(48, 56, 40 + 2 * t + i)
            _write(os.path.join(root, 'test', name, 'target', f'rain-{i:03d}.png'), clean)
            _write(os.path.join(root, 'test', name, 'input', f'rain-{i:03d}.png'), rainy)


PREPARE = prepare_script()
PLOT = load_script(os.path.join(REPO, 'scripts', 'plot_curves.py'), 'plot_curves_script')


def repo_options(name, cwd, iters=1, gt_size=32, tensorboard=False):
    """The repository's option file, dataset paths untouched (relative to ``cwd``), shrunk to a few CPU iterations;
    returns its training as ``launch_batch`` argv."""
    with open(os.path.join(REPO, 'options', 'train', f'HINet-{name}.yml')) as f:
        opt = yaml.safe_load(f)
    opt.update(num_gpu=0, name=f'prep_{name}')
    opt['network_g'].update(wf=8, depth=3, hin_position_left=min(opt['network_g'].get('hin_position_left', 0), 2),
                            hin_position_right=2)
    opt['datasets']['train'].update(gt_size=gt_size, batch_size_per_gpu=2, num_worker_per_gpu=0)
    opt['train'].update(total_iter=iters)
    opt['train']['scheduler']['T_max'] = iters
    opt['val'].update(val_freq=iters, crop_size=32)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=iters, use_tb_logger=tensorboard)
    return module_train(write_options(opt, os.path.join(cwd, f'{name}.yml')))


def check_training(name, cwd, proc, iters=1):
    """The checks of one ``repo_options`` training; returns its experiment folder."""
    exp = os.path.join(cwd, 'experiments', f'prep_{name}')
    assert os.path.isfile(os.path.join(exp, 'models', f'net_g_{iters}.pth')), proc.stdout[-3000:]
    assert '# psnr:' in proc.stdout, 'validation ran on the prepared validation/test LMDB'
    return exp


# The prepare-and-train tests: each one's preparation and its checks (``prepare_*`` below, in-process) run in the
# module fixture ``trained``, then the trainings of all of them in one interpreter (one start instead of four); the
# tests check the trainings. A preparation that fails is kept for its test to raise.
@pytest.fixture(scope='module')
def trained(request, tmp_path_factory):
    """{test name: (folder, {dataset: (iterations, completed training)}) or the exception of its preparation} for
    the selected tests of ``PREPARED``."""
    selected = {item.originalname for item in selected_items(request)}
    results, runs = {}, []
    for test, steps in PREPARED.items():
        if test not in selected:
            continue
        folder = tmp_path_factory.mktemp('prepared')
        try:
            trainings = steps(folder)
        except Exception as exc:  # noqa: BLE001  (raised again by the test)
            results[test] = exc
            continue
        results[test] = (folder, trainings)
        runs += [(test, name, (repo_options(name, folder, **kw), folder)) for name, kw in trainings.items()]
    done = launch_batch([run for _, _, run in runs], tmp_path_factory.mktemp('batch'),
                        timeout=300 + 120 * len(runs)) if runs else []
    for (test, name, _), proc in zip(runs, done):
        results[test][1][name] = (results[test][1][name].get('iters', 1), proc)
    return results


def trained_experiments(trained, test):
    """(folder, {dataset: experiment folder}) of ``test``, its trainings checked."""
    if isinstance(trained[test], Exception):
        raise trained[test]
    folder, trainings = trained[test]
    return folder, {name: check_training(name, folder, proc, iters) for name, (iters, proc) in trainings.items()}


def prepare_sidd(tmp_path):
    """test_sidd_prepare_train_and_plot_curves's preparation and its checks; {dataset: training settings}."""
    make_sidd(tmp_path / 'datasets' / 'SIDD')
    out = prepare(tmp_path, 'sidd', '--crop-size', '48', '--step', '32')[1]
    sidd = tmp_path / 'datasets' / 'SIDD'
    keys = lmdb_keys(sidd / 'train' / 'gt_crops.lmdb')
    # 72x88 with 48 crops, step 32: rows at 0, 24; columns at 0, 32, 40 -> 6 crops per image
    assert len(keys) == 12 and keys[0] == f'{SIDD_SCENES[0]}_010_s001'
    assert keys == lmdb_keys(sidd / 'train' / 'input_crops.lmdb')
    assert lmdb_keys(sidd / 'val' / 'gt_crops.lmdb') == ['00_00', '00_01', '01_00', '01_01']
    with open(sidd / 'train' / 'gt_crops.lmdb' / 'meta_info.txt') as f:
        assert f.readline().split()[1] == '(48,48,3)'
    # the validation blocks are stored as they were in the .mat (RGB there, BGR PNG in the LMDB)
    env = lmdb.open(str(sidd / 'val' / 'gt_crops.lmdb'), readonly=True, lock=False)
    with env.begin() as txn:
        stored = cv2.imdecode(np.frombuffer(txn.get(b'01_00'), np.uint8), cv2.IMREAD_COLOR)
    env.close()
    assert np.array_equal(stored[..., ::-1], scipy.io.loadmat(sidd / 'val' / 'ValidationGtBlocksSrgb.mat')
                          ['ValidationGtBlocksSrgb'][1, 0])
    assert 'wrote 12 pairs' in out
    # idempotent: a second run skips, data untouched
    data_mdb = sidd / 'train' / 'gt_crops.lmdb' / 'data.mdb'
    before = os.stat(data_mdb).st_mtime_ns
    assert prepare(tmp_path, 'sidd', '--crop-size', '48', '--step', '32')[1].count('up to date') == 2
    assert os.stat(data_mdb).st_mtime_ns == before
    # other settings on top of a finished build: refused without --force, clean rebuild with it
    code, msg = prepare(tmp_path, 'sidd', '--crop-size', '40', '--step', '40', '--splits', 'train', check=False)
    assert code == 2 and '--force' in msg and 'other sources or settings' in msg
    prepare(tmp_path, 'sidd', '--crop-size', '48', '--step', '48', '--splits', 'train', '--force')
    assert len(lmdb_keys(sidd / 'train' / 'gt_crops.lmdb')) == 8  # rows 0, 24; columns 0, 40
    assert not [p for p in os.listdir(sidd / 'train') if p.startswith('.partial')]
    return {'SIDD': dict(iters=2, tensorboard=True)}


@pytest.mark.slow
def test_sidd_prepare_train_and_plot_curves(trained):
    """SIDD crops (prepared, re-run, rebuilt) train HINet-SIDD.yml; plot_curves.py reads its log and events."""
    tmp_path, exps = trained_experiments(trained, 'test_sidd_prepare_train_and_plot_curves')
    exp = exps['SIDD']
    png = tmp_path / 'curves.png'
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        PLOT.main([exp, '-o', str(png)])
    assert png.stat().st_size > 5000 and 'train l_l1: 2 points' in out.getvalue()  # HINet-SIDD: the release's L1
    assert 'train l_pix: 2 points' in out.getvalue()  # the releases' name of the pixel loss
    assert 'val SIDD_val/psnr' in out.getvalue()
    # the same curves from the TensorBoard events basicsr wrote (logger.use_tb_logger)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        PLOT.main([str(tmp_path / 'tb_logger' / 'prep_SIDD')])
    assert 'train l_l1: 2 points' in out.getvalue() and 'val SIDD_val/psnr' in out.getvalue()
    assert (tmp_path / 'tb_logger' / 'prep_SIDD' / 'training_curves.png').stat().st_size > 5000
    assert cv2.imread(str(png)).shape[1] > 500


def prepare_gopro_and_reds(tmp_path):
    """test_gopro_and_reds_prepare_and_train's preparations and their checks (both before the trainings)."""
    make_gopro(tmp_path / 'datasets' / 'GoPro')
    prepare(tmp_path, 'gopro', '--crop-size', '48', '--step', '32')
    gopro = tmp_path / 'datasets' / 'GoPro'
    train_keys = lmdb_keys(gopro / 'train' / 'sharp_crops.lmdb')
    assert len(train_keys) == 4 * 4 and train_keys[0] == 'GOPR0372_07_00_000000_s001'  # 64x80: rows 0,16 x cols 0,32
    assert lmdb_keys(gopro / 'test' / 'input.lmdb') == ['GOPR0384_11_00-000000', 'GOPR0384_11_00-000001']
    with open(gopro / 'test' / 'target.lmdb' / 'meta_info.txt') as f:
        assert '(64,72,3)' in f.readline(), 'test images are stored full size'

    make_reds(tmp_path / 'datasets' / 'REDS')
    prepare(tmp_path, 'reds', '--crop-size', '48', '--step', '16')
    reds = tmp_path / 'datasets' / 'REDS'
    assert len(lmdb_keys(reds / 'train' / 'blur_crops.lmdb')) == 4 * 4
    # REDS-val-300: only frames whose number ends in 9
    assert lmdb_keys(reds / 'val' / 'sharp_300.lmdb') == ['000_00000009', '001_00000009']
    assert lmdb_keys(reds / 'val' / 'blur_300.lmdb') == ['000_00000009', '001_00000009']
    return {'GoPro': {}, 'REDS': {}}


@pytest.mark.slow
def test_gopro_and_reds_prepare_and_train(trained):
    """HINet-GoPro.yml and HINet-REDS.yml train and validate on the prepared LMDBs."""
    _, exps = trained_experiments(trained, 'test_gopro_and_reds_prepare_and_train')
    assert set(exps) == {'GoPro', 'REDS'}


def prepare_rain13k(tmp_path):
    """test_rain13k_prepare_and_train's preparation and its checks."""
    root = tmp_path / 'datasets' / 'Rain13k'
    make_rain13k(root)
    code, msg = prepare(tmp_path, 'rain13k', check=False)  # default: all five test sets, three are missing here
    assert code == 2
    for name in ('Rain100L', 'Test2800', 'Test1200'):
        assert f"'datasets/Rain13k/test/{name}' is missing" in msg
    assert not os.path.exists(root / 'train' / 'input.lmdb'), 'nothing written when the layout is incomplete'
    prepare(tmp_path, 'rain13k', '--sets', 'Rain100H,Test100')
    assert lmdb_keys(root / 'train' / 'input.lmdb') == ['1', '2', '3']
    assert lmdb_keys(root / 'test' / 'Test100' / 'target.lmdb') == ['rain-000', 'rain-001']
    return {'Rain13k': {}}


@pytest.mark.slow
def test_rain13k_prepare_and_train(trained):
    """HINet-Rain13k.yml trains and validates on the prepared LMDBs (two test sets)."""
    _, exps = trained_experiments(trained, 'test_rain13k_prepare_and_train')
    assert set(exps) == {'Rain13k'}


PREPARED = {'test_sidd_prepare_train_and_plot_curves': prepare_sidd,
            'test_gopro_and_reds_prepare_and_train': prepare_gopro_and_reds,
            'test_rain13k_prepare_and_train': prepare_rain13k}


@pytest.mark.slow
def test_layout_errors_are_reported_before_anything_is_written(tmp_path):
    root = tmp_path / 'datasets' / 'GoPro'
    make_gopro(root)
    scene = root / 'train' / 'GOPR0372_07_00'
    os.remove(scene / 'blur' / '000001.png')                                     # unpaired name
    _write(str(scene / 'blur' / '000007.png'), _pair(64, 80, 5)[1])
    _write(str(root / 'train' / 'GOPR0374_11_01' / 'blur' / '000000.png'), _pair(56, 80, 5)[1])  # size mismatch
    with open(root / 'test' / 'input' / 'GOPR0384_11_00-000001.png', 'wb') as f:  # unreadable image
        f.write(b'not a png')
    proc = run_cli([PY, SCRIPT, 'gopro', '--crop-size', '48', '--step', '32'], tmp_path, check=False)  # real CLI
    assert proc.returncode == 2 and 'Traceback' not in proc.stdout
    msg = proc.stdout
    assert 'only in the first' in msg and "'000001'" in msg and "'000007'" in msg
    assert "pair 'GOPR0374_11_01_000000': sizes differ" in msg and '64x80' in msg and '56x80' in msg
    assert sum('GOPR0374_11_01' in line for line in msg.splitlines()) == 1, msg  # reported once (no decode echo)
    assert 'GOPR0384_11_00-000001.png' in msg and 'cannot be read' in msg
    assert not any(name.endswith('.lmdb') or name.startswith('.partial') for _, dirs, _ in os.walk(root)
                   for name in dirs)

    # SIDD: wrong folder, missing partner, missing validation file, crop larger than the images
    sidd = tmp_path / 'datasets' / 'SIDD'
    code, msg = prepare(tmp_path, 'sidd', check=False)
    assert code == 2 and 'train/SIDD_Medium_Srgb/Data' in msg and 'ValidationGtBlocksSrgb.mat' in msg
    make_sidd(sidd)
    os.remove(sidd / 'train' / 'SIDD_Medium_Srgb' / 'Data' / SIDD_SCENES[1] / 'NOISY_SRGB_010.PNG')
    os.remove(sidd / 'val' / 'ValidationNoisyBlocksSrgb.mat')
    code, msg = prepare(tmp_path, 'sidd', check=False)
    assert code == 2 and 'has no partner NOISY_SRGB_010.PNG' in msg
    assert "'ValidationNoisyBlocksSrgb.mat' is missing" in msg and 'smaller than the crop size 512' in msg
    assert not os.path.exists(sidd / 'train' / 'gt_crops.lmdb')

    # REDS: blurred frames in the wrong folder name
    make_reds(tmp_path / 'datasets' / 'REDS')
    os.rename(tmp_path / 'datasets' / 'REDS' / 'val' / 'val_blur_jpeg', tmp_path / 'datasets' / 'REDS' / 'val' / 'blur')
    code, msg = prepare(tmp_path, 'reds', '--crop-size', '48', '--step', '48', check=False)
    assert code == 2 and "folder 'datasets/REDS/val/val_blur_jpeg' is missing" in msg


@pytest.mark.parametrize('args, message', [(['sidd', '--splits', 'test'], '--splits'),
                                           (['gopro', '--crop-size', '32', '--step', '64'], '--step')])
def test_bad_arguments(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        PREPARE.main([*args, '--root', str(tmp_path)])
    assert exc.value.code == 2 and message in capsys.readouterr().err


# ------------------------------------------------------------------------------- re-runs, broken files, all-or-nothing
def make_sidd_at_root(sidd):
    """SIDD_Medium_Srgb/Data and the validation .mat files at the dataset root: the outputs' train/ and val/ are new."""
    make_sidd(sidd)
    os.rename(sidd / 'train' / 'SIDD_Medium_Srgb', sidd / 'SIDD_Medium_Srgb')
    for name in os.listdir(sidd / 'val'):
        os.rename(sidd / 'val' / name, sidd / name)
    os.rmdir(sidd / 'train')
    os.rmdir(sidd / 'val')
    return sidd


GOPRO_OUTPUTS = ('train/sharp_crops.lmdb', 'train/blur_crops.lmdb', 'test/target.lmdb', 'test/input.lmdb')


@pytest.mark.slow
def test_gopro_large_layout_reruns_and_force(tmp_path):
    """GOPRO_Large writes its LMDBs next to the scene folders; re-runs and --force must not take them for scenes."""
    root = tmp_path / 'datasets' / 'GoPro'
    make_gopro(root, flat_test=False)
    cmd = [PY, SCRIPT, 'gopro', '--crop', '48', '--step', '32', '--no-progress']
    assert run_cli(cmd, tmp_path).stdout.count('wrote') == 2
    keys = {out: lmdb_keys(root / out) for out in GOPRO_OUTPUTS}
    assert len(keys['train/sharp_crops.lmdb']) == 16 and keys['train/blur_crops.lmdb'] == keys['train/sharp_crops.lmdb']
    assert keys['test/input.lmdb'] == ['GOPR0384_11_00_000000', 'GOPR0384_11_00_000001']
    snapshot = tree(root)
    # the literal command once, the re-run and --force in-process (same main, imports paid once)
    rerun = prepare(tmp_path, *cmd[2:-1])[1]
    assert rerun.count('up to date') == 2 and tree(root) == snapshot, rerun
    forced = prepare(tmp_path, *cmd[2:-1], '--force')[1]
    assert forced.count('wrote') == 2, forced
    assert {out: lmdb_keys(root / out) for out in GOPRO_OUTPUTS} == keys
    assert set(tree(root)) == set(snapshot), 'same names after --force: nothing left aside or half-written'
    # new settings with --force: a clean rebuild, twice in a row
    for _ in range(2):
        prepare(tmp_path, 'gopro', '--crop', '64', '--step', '64', '--force')
    assert len(lmdb_keys(root / 'train' / 'sharp_crops.lmdb')) == 4 * 2  # 64x80 with 64 crops: cols 0, 16
    assert set(tree(root)) == set(snapshot)


@pytest.mark.slow
def test_cut_short_images_fail_the_whole_dataset_before_anything_is_written(tmp_path):
    """A PNG / JPEG cut short with its header intact: the decode check names it, no LMDB and no folder appears."""
    gopro = tmp_path / 'datasets' / 'GoPro'
    make_gopro(gopro, flat_test=False)
    cut_short(gopro / 'test' / 'GOPR0384_11_00' / 'blur' / '000001.png')  # the train job comes first and is fine
    sidd = make_sidd_at_root(tmp_path / 'datasets' / 'SIDD')
    cut_short(sidd / 'SIDD_Medium_Srgb' / 'Data' / SIDD_SCENES[1] / 'NOISY_SRGB_010.PNG')
    rain = tmp_path / 'datasets' / 'Rain13k'
    make_rain13k(rain)
    cut_short(rain / 'train' / 'input' / '2.jpg', keep=0.5)
    snapshot = tree(tmp_path)
    cases = ((['gopro', '--crop', '48', '--step', '32'], 'test/GOPR0384_11_00/blur/000001.png'),
             (['sidd', '--crop', '48', '--step', '32'], f'{SIDD_SCENES[1]}/NOISY_SRGB_010.PNG'),
             (['rain13k', '--sets', 'Rain100H,Test100'], 'train/input/2.jpg'))
    for i, (args, broken) in enumerate(cases):
        if i == 0:  # the literal command once, the others in-process (same main, imports paid once)
            proc = run_cli([PY, SCRIPT, *args, '--no-progress'], tmp_path, check=False)
            code, out = proc.returncode, proc.stdout
        else:
            code, out = prepare(tmp_path, *args, check=False)
        assert code == 2 and 'Traceback' not in out, out[-3000:]
        first = [line for line in out.splitlines() if line.startswith('hinet_plugins: error:')]
        assert len(first) == 1 and 'nothing was written' in first[0]
        assert f"{broken}' cannot be decoded" in out
        assert tree(tmp_path) == snapshot, f'{args[0]}: the tree changed'
    assert not os.path.exists(sidd / 'train') and not os.path.exists(sidd / 'val')


def test_one_run_names_a_missing_file_and_a_cut_short_png_together(tmp_path):
    """A SIDD tree with one missing file (a scene without its noisy image) and one PNG cut short elsewhere: the
    first run names both (the decode check runs although a layout problem was already found); nothing is written.
    Once the missing file is back, the second run names only the cut-short one."""
    sidd = tmp_path / 'datasets' / 'SIDD'
    make_sidd(sidd)
    data = sidd / 'train' / 'SIDD_Medium_Srgb' / 'Data'
    os.remove(data / SIDD_SCENES[1] / 'NOISY_SRGB_010.PNG')
    cut_short(data / SIDD_SCENES[0] / 'GT_SRGB_010.PNG')
    snapshot = tree(tmp_path)
    code, out = prepare(tmp_path, 'sidd', '--crop', '48', '--step', '32', check=False)
    assert code == 2 and 'Traceback' not in out, out
    first = [line for line in out.splitlines() if line.startswith('hinet_plugins: error:')]
    assert len(first) == 1 and 'SIDD: 2 problem(s) found, nothing was written' in first[0], out
    assert f"{SIDD_SCENES[1]}/GT_SRGB_010.PNG' has no partner NOISY_SRGB_010.PNG" in out
    assert f"{SIDD_SCENES[0]}/GT_SRGB_010.PNG' cannot be decoded" in out
    assert tree(tmp_path) == snapshot
    _write(str(data / SIDD_SCENES[1] / 'NOISY_SRGB_010.PNG'), _pair(72, 88, 1)[1])
    code, out = prepare(tmp_path, 'sidd', '--crop', '48', '--step', '32', check=False)
    assert code == 2 and 'SIDD: 1 problem(s) found' in out and 'cannot be decoded' in out and 'no partner' not in out


def test_a_write_failure_rolls_back_every_job(tmp_path, monkeypatch):
    """A failure while writing the second job (disk full) leaves a previous build, or nothing, exactly as it was."""
    from hinet_plugins.data import lmdb_writer as core
    root = tmp_path / 'datasets' / 'GoPro'
    make_gopro(root)
    make_sidd_at_root(tmp_path / 'datasets' / 'SIDD')
    original, calls = core._write_lmdb_pair, []

    def second_fails(job, temps, *args):
        calls.append(job.name)
        if len(calls) == 2:
            raise OSError(28, 'No space left on device')
        return original(job, temps, *args)

    monkeypatch.setattr(core, '_write_lmdb_pair', second_fails)
    before = tree(tmp_path)
    code, msg = prepare(tmp_path, 'gopro', '--crop', '48', '--step', '32', check=False)
    assert code == 2 and 'No space left on device' in msg and 'nothing was written' in msg
    assert calls == ['GoPro train', 'GoPro test'] and tree(tmp_path) == before
    monkeypatch.setattr(core, '_write_lmdb_pair', original)
    prepare(tmp_path, 'gopro', '--crop', '48', '--step', '32')
    built = tree(tmp_path)
    monkeypatch.setattr(core, '_write_lmdb_pair', second_fails)
    calls.clear()
    code, msg = prepare(tmp_path, 'gopro', '--crop', '40', '--step', '40', '--force', check=False)
    assert code == 2 and tree(tmp_path) == built, 'the finished build survives a failed --force rebuild'
    calls.clear()
    code, msg = prepare(tmp_path, 'sidd', '--crop-size', '48', '--step', '32', check=False)
    assert code == 2 and calls == ['SIDD train', 'SIDD val'] and tree(tmp_path) == built, 'no train/ or val/ left'
