"""Nothing from a file or a command-line value runs code, runs stay inside their folders, inputs are never written
over. Each payload would create a marker file if it ran; the marker must not exist afterwards, and a rejected
command leaves the tree as it was (names and contents)."""
import os

import cv2
import numpy as np
import pytest
import torch

from conftest import (REPO, base_options, call_main, launch_batch, load_script, run_launcher, selected_items, tree,
                      write_options)
from hinet_plugins.basicsr_ext.compat import STATE_GLOBALS, read_training_state
from hinet_plugins.restore import Restorer
from hinet_plugins.restore.imagefiles import apply_orientation, read_image

NET = {'type': 'HINet', 'wf': 4, 'depth': 3}


def assert_rejected(result, *fragments):
    """``result``: a batched launch (``launch_batch``: exit code, stdout and stderr merged) or ``run_launcher``'s
    (exit code, stderr)."""
    code, err = (result.returncode, result.stdout) if hasattr(result, 'returncode') else result
    assert code == 2, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith('hinet_plugins: error:'), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


class Payload:
    """Unpickling this object runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.fixture
def run_root(tmp_path, tiny_data):
    """A folder holding a finished run (``experiments/tiny``) and the option file that made it, plus a marker path."""
    root = tmp_path / 'root'
    root.mkdir()
    opt = base_options(tiny_data, name='tiny', network=NET, total_iter=2)
    return root, opt, tmp_path / 'MARKER'


# ------------------------------------------------------------------------------------------ training states
@pytest.fixture(scope='module')
def launches(request, tiny_data, tmp_path_factory):
    """The ``python -m hinet_plugins.train`` launches of the selected slow tests below, all in one interpreter
    (``launch_batch``: one start-up instead of four; exit code and merged output per launch), each in a root of
    its own prepared beforehand (what a test compares afterwards is recorded before the batch starts).
    Returns {test: {...}}."""
    wanted = {item.originalname for item in selected_items(request)}
    top = tmp_path_factory.mktemp('safety')
    plan, runs = [], {}  # plan: (test, key, root, argv)

    def fresh(label):
        root = top / label / 'root'
        root.mkdir(parents=True)
        return root, base_options(tiny_data, name='tiny', network=NET, total_iter=2)

    if 'test_crafted_state_never_runs' in wanted:
        marker = top / 'MARKER'
        runs['crafted'] = {'marker': marker}
        # the state file named by path.resume_state
        root, opt = fresh('resume_state')
        state = root / 'evil.state'
        torch.save({'epoch': 0, 'iter': 2, 'optimizers': [], 'schedulers': [], 'x': Payload(marker)}, state)
        opt['path']['resume_state'] = str(state)
        path = write_options(opt, root / 'opt.yml')
        runs['crafted'].update(state=state, root=root, before=tree(root))
        plan.append(('crafted', 'named', root, ['-opt', path]))
        # the same file found by --auto_resume in the run's own folder
        root, opt = fresh('auto_resume')
        path = write_options(opt, root / 'opt.yml')
        states = root / 'experiments' / 'tiny' / 'training_states'
        states.mkdir(parents=True)
        torch.save({'epoch': 0, 'iter': 2, 'optimizers': [], 'schedulers': [], 'x': Payload(marker)},
                   states / '2.state')
        runs['crafted'].update(auto_root=root, auto_before=tree(root))
        plan.append(('crafted', 'found', root, ['-opt', path, '--auto_resume']))
    if 'test_states_written_by_training_load_weights_only' in wanted:
        root, opt = fresh('trained')
        opt['train']['scheduler'] = {'type': 'MultiStepLR', 'milestones': [1], 'gamma': 0.5}  # a Counter inside
        runs['trained'] = {'root': root}
        plan.append(('trained', 'proc', root, ['-opt', write_options(opt, root / 'opt.yml')]))
    if 'test_new_key_on_purpose_and_root_from_options' in wanted:
        root, opt = fresh('new_key')
        elsewhere = top / 'new_key' / 'cluster_scratch'
        runs['new_key'] = {'root': root, 'elsewhere': elsewhere}
        plan.append(('new_key', 'proc', root, ['-opt', write_options(opt, root / 'opt.yml'), '--force_yml',
                                               f'path:root+={elsewhere}', 'train:total_iter=1',
                                               'logger:save_checkpoint_freq=1', 'val:val_freq=1']))
    if plan:
        done = launch_batch([(['-m', 'hinet_plugins.train', *argv], root) for _, _, root, argv in plan],
                            tmp_path_factory.mktemp('safety_batch'), timeout=600,
                            env_extra={'OMP_NUM_THREADS': '1'})
        for (test, key, _, _), proc in zip(plan, done):
            runs[test][key] = proc
    return runs


@pytest.mark.slow
def test_crafted_state_never_runs(launches):
    run = launches['crafted']
    marker = run['marker']
    assert_rejected(run['named'], str(run['state']), 'could run code')
    assert not marker.exists() and tree(run['root']) == run['before']
    # the same file found by --auto_resume in the run's own folder
    assert_rejected(run['found'], '2.state', 'could run code')
    assert not marker.exists() and tree(run['auto_root']) == run['auto_before']


@pytest.mark.slow
def test_states_written_by_training_load_weights_only(launches):
    run = launches['trained']
    proc = run['proc']
    assert proc.returncode == 0, proc.stdout[-3000:]
    path = run['root'] / 'experiments' / 'tiny' / 'training_states' / '2.state'
    with torch.serialization.safe_globals(STATE_GLOBALS):
        state = torch.load(path, weights_only=True)
    assert state['iter'] == 2 and read_training_state(str(path))['iter'] == 2


# ------------------------------------------------------------------------------------------ --force_yml
@pytest.mark.parametrize('entry, fragments', [
    ("train:total_iter=[__import__('os').system('touch {marker}')]", ['train:total_iter must be a number']),
    ('name"];__import__("os").system("touch {marker}");opt["zz=1', ['has no']),
    ('train:total_itr=4', ["did you mean 'train:total_iter'", 'train:total_itr+=4']),
    ('train:total_iter+=4', ['exists already']),
    ('datasets:train:gt_size=!!python/object/apply:os.system ["touch {marker}"]', ['not a YAML literal']),
])
def test_force_yml_is_data(run_root, entry, fragments, monkeypatch):
    root, opt, marker = run_root
    path = write_options(opt, root / 'opt.yml')
    before = tree(root)
    flags = ('--force_yml', entry.format(marker=marker))
    assert_rejected(run_launcher(root, path, *flags, monkeypatch=monkeypatch), *fragments)
    assert not marker.exists() and tree(root) == before


def test_yaml_tags_in_option_file_never_run(run_root, monkeypatch):
    root, opt, marker = run_root
    path = write_options(opt, root / 'opt.yml')
    with open(path, 'a') as f:
        f.write(f'extra: !!python/object/apply:os.system ["touch {marker}"]\n')
    before = tree(root)
    assert_rejected(run_launcher(root, path, monkeypatch=monkeypatch), 'not valid YAML')
    assert not marker.exists() and tree(root) == before


@pytest.mark.slow
def test_new_key_on_purpose_and_root_from_options(launches):
    """``path:root+=DIR`` adds a key the file does not have; the run then lives under DIR, started elsewhere."""
    run = launches['new_key']
    proc, root, elsewhere = run['proc'], run['root'], run['elsewhere']
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (elsewhere / 'experiments' / 'tiny' / 'models' / 'net_g_1.pth').is_file()
    assert not (root / 'experiments').exists()


# ------------------------------------------------------------------------------------------ run folders
@pytest.mark.parametrize('key, value', [('name', '../victim'), ('name', '../../victim'), ('name', '/ABS/victim'),
                                        ('name', '..'), ('datasets.val.name', '../../../victim'),
                                        ('val.suffix', '../../victim'), ('path.extra_folder', '/ABS/victim')])
def test_runs_stay_in_their_folders(run_root, tmp_path, key, value, monkeypatch):
    root, opt, _ = run_root
    victim = tmp_path / 'victim'
    victim.mkdir()
    (victim / 'thesis.txt').write_text('mine')
    node = opt
    *parents, last = key.split('.')
    for part in parents:
        node = node[part]
    node[last] = value.replace('/ABS', str(tmp_path))
    path = write_options(opt, root / 'opt.yml')
    before, outside = tree(root), tree(tmp_path)
    for mode in ('train', 'test'):
        assert_rejected(run_launcher(root, path, mode=mode, monkeypatch=monkeypatch), key.split('.')[-1])
    assert tree(root) == before and tree(tmp_path) == outside


# ------------------------------------------------------------------------------------------ inference
def inference(*args):
    """``scripts/inference.py ARGS --device cpu`` in-process: (exit code, output)."""
    script = load_script(os.path.join(REPO, 'scripts', 'inference.py'), 'inference_script')
    return call_main(script.main, [*args, '--device', 'cpu'])


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    from basicsr.archs import build_network
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('ckpt') / 'net.pth'
    torch.save({'params': build_network(dict(NET)).state_dict()}, path)
    return str(path)


def model_args(checkpoint):
    return ['--arch', 'HINet', '--arch-opt', 'wf=4', '--arch-opt', 'depth=3', '--checkpoint', checkpoint]


def test_inputs_are_never_overwritten(tmp_path, checkpoint):
    src = tmp_path / 'in'
    src.mkdir()
    photo = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    cv2.imwrite(str(src / 'photo.png'), photo)
    (tmp_path / 'link').symlink_to(src, target_is_directory=True)
    (tmp_path / 'a_file.png').write_bytes(b'not a folder')
    before = tree(tmp_path)
    for out, fragment in ((tmp_path / 'link', 'is the input folder'), (src / '..' / 'in', 'is the input folder'),
                          (tmp_path / 'a_file.png', 'is a file')):
        assert_rejected(inference('-i', str(src), '-o', str(out), *model_args(checkpoint)), fragment)
        assert tree(tmp_path) == before


def test_non_finite_pixels_are_refused(tmp_path, checkpoint):
    img = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
    img[3, 4, 1] = np.nan
    img[5, 6, 0] = np.inf
    src = tmp_path / 'in'
    src.mkdir()
    cv2.imwrite(str(src / 'scan.tiff'), img)
    code, err = inference('-i', str(src), '-o', str(tmp_path / 'out'), *model_args(checkpoint))
    assert code == 1 and 'scan.tiff' in err and '2 pixel value(s) are NaN or infinite' in err
    assert not (tmp_path / 'out' / 'scan.tiff').exists()
    with pytest.raises(ValueError, match='NaN or infinite'):
        Restorer.load(arch='HINet', arch_opt={'wf': 4, 'depth': 3}, checkpoint=checkpoint)(img)


def exif_png(path, img_rgb, orientation):
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(img_rgb).save(path, exif=exif.tobytes())


@pytest.mark.parametrize('orientation', [6, 3, 5])
def test_exif_orientation_is_applied(tmp_path, checkpoint, orientation):
    from PIL import Image, ImageOps
    rgb = np.random.default_rng(orientation).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    src = tmp_path / 'in'
    src.mkdir()
    exif_png(src / 'phone.png', rgb, orientation)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(src / 'phone.png')).convert('RGB'))
    assert np.array_equal(read_image(str(src / 'phone.png'))[..., ::-1], upright)  # as a viewer shows it
    assert np.array_equal(apply_orientation(rgb, orientation), upright)
    code, err = inference('-i', str(src), '-o', str(tmp_path / 'out'), *model_args(checkpoint))
    assert code == 0, err[-2000:]
    out = cv2.imread(str(tmp_path / 'out' / 'phone.png'), cv2.IMREAD_UNCHANGED)[..., ::-1]
    expected = Restorer.load(arch='HINet', arch_opt={'wf': 4, 'depth': 3}, checkpoint=checkpoint)(upright)
    assert np.array_equal(out, expected)


@pytest.mark.parametrize('dtype', [np.uint8, np.uint16])
def test_gray_alpha_stays_gray_alpha(tmp_path, checkpoint, dtype):
    from hinet_plugins.restore.imagefiles import write_image
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(1)
    la = np.stack([rng.integers(0, top, (18, 22)), rng.integers(0, top, (18, 22))], -1).astype(dtype)
    src = tmp_path / 'in'
    src.mkdir()
    write_image(str(src / 'icon.png'), la)
    assert np.array_equal(read_image(str(src / 'icon.png')), la)
    code, err = inference('-i', str(src), '-o', str(tmp_path / 'out'), *model_args(checkpoint))
    assert code == 0, err[-2000:]
    with open(tmp_path / 'out' / 'icon.png', 'rb') as f:
        assert f.read(26)[25] == 4  # PNG colour type 4: gray + alpha
    out = read_image(str(tmp_path / 'out' / 'icon.png'))
    restorer = Restorer.load(arch='HINet', arch_opt={'wf': 4, 'depth': 3}, checkpoint=checkpoint)
    assert out.dtype == dtype and out.shape == la.shape
    assert np.array_equal(out[..., 1], la[..., 1])  # alpha untouched
    assert np.array_equal(out[..., 0], restorer(la[..., 0]))  # gray restored as plain gray is


# ------------------------------------------------------------------------------------------ interrupted writes
def test_leftovers_of_interrupted_checkpoint_writes_are_removed(tmp_path):
    from hinet_plugins.utils.checkpoint import atomic_torch_save
    folder = tmp_path / 'models'
    folder.mkdir()
    for name in ('.net_g_4.pth.k2j4x9_a.tmp', '.8.state.abcdefgh.tmp'):
        (folder / name).write_bytes(b'half')
    (folder / 'notes.tmp').write_text('the user\'s')
    atomic_torch_save({'params': {}}, str(folder / 'net_g_8.pth'))
    assert sorted(os.listdir(folder)) == ['net_g_8.pth', 'notes.tmp']
