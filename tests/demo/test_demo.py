"""The demo's baselines (non-local means, BM3D), its report tables, its restore step and its two option files."""
import functools
import json
import os

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO, launch_selected, load_option_file, load_script, module_train, on_tiny_data, write_options
from hinet_plugins.demo import report as demo_report
from hinet_plugins.utils.amp import amp_dtype, native_bf16
from hinet_plugins.demo import baselines as demo_baselines
from hinet_plugins.demo.data import degrade, load_photo


def _tiny(name='chelsea', side=48, sigma=25.0, seed=3):
    clean = cv2.cvtColor(cv2.resize(load_photo(name), (side, side), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
    return clean, degrade(clean, sigma, seed=seed)


def test_nlm_denoises_and_its_strength_follows_the_noise():
    clean, noisy = _tiny(side=64)
    out = demo_baselines.nlm_denoise(noisy, 18)
    assert out.shape == noisy.shape and out.dtype == np.uint8
    assert demo_report.score(out, clean)[0] > demo_report.score(noisy, clean)[0] + 2
    # tuned on a training photo: weak noise wants a weak filter, sigma 25 a strong one
    assert demo_baselines.tune_nlm(3.0, photos=('rocket',), grid=(3, 24), max_side=96) == 3
    assert demo_baselines.tune_nlm(25.0, photos=('rocket',), grid=(3, 24), max_side=96) == 24
    assert not set(demo_baselines.NLM_TUNING_PHOTOS) & {'astronaut', 'chelsea', 'coffee'}


@pytest.mark.slow  # four BM3D runs (seconds); the quick run keeps the NLM baseline
def test_bm3d_with_known_sigma_beats_the_input_and_is_cached(tmp_path):
    clean, noisy = _tiny(side=40)
    out, hit = demo_baselines.cached_bm3d(noisy, 25.0, str(tmp_path), 'chelsea')
    assert not hit and out.shape == noisy.shape and out.dtype == np.uint8
    assert demo_report.score(out, clean)[0] > demo_report.score(noisy, clean)[0] + 3
    again, hit = demo_baselines.cached_bm3d(noisy, 25.0, str(tmp_path), 'chelsea')
    assert hit and np.array_equal(again, out)
    # another input (or sigma) under the same name is recomputed, not served from the cache
    other = degrade(clean, 25.0, seed=4)
    _, hit = demo_baselines.cached_bm3d(other, 25.0, str(tmp_path), 'chelsea')
    assert not hit
    _, hit = demo_baselines.cached_bm3d(other, 15.0, str(tmp_path), 'chelsea')
    assert not hit


def _rows():
    clean, noisy = _tiny(side=32)
    rows = []
    for name, shift in (('a', 0), ('b', 2)):
        gt = np.clip(clean.astype(int) + shift, 0, 255).astype(np.uint8)
        outputs = {'BM3D': cv2.GaussianBlur(noisy, (3, 3), 0), 'HINet': gt, 'HINet+TLC': noisy}
        rows.append(demo_report.score_photo(name, gt, noisy, outputs))
    return rows


def test_results_table_has_one_column_per_method_and_the_mean():
    rows = _rows()
    table = demo_report.results_table(rows).splitlines()
    assert table[0] == '| photo | noisy input | BM3D | HINet | HINet+TLC |'
    assert len(table) == 2 + len(rows) + 1 and table[-1].startswith('| **mean** |')
    assert table[2].startswith('| a 32x32 | ')
    mean = demo_report.mean_scores(rows)
    for method in ('noisy input', 'BM3D'):
        psnr = np.mean([r['scores'][method][0] for r in rows])
        assert abs(mean[method][0] - psnr) < 1e-12
    first = table[-1].split(' | ')[1]
    assert first == f"**{mean['noisy input'][0]:.2f}** / {mean['noisy input'][1]:.4f}"
    assert mean['HINet'][0] == float('inf') or mean['HINet'][0] > 60  # identical images: basicsr gives inf


def test_verdict_names_the_winner_either_way():
    mean = {'noisy input': (20.0, 0.5), 'BM3D': (31.75, 0.9), 'HINet': (30.62, 0.88), 'HINet+TLC': (30.70, 0.88),
            'NAFNet': (30.1, 0.87)}
    text = demo_report.verdict(mean, ['HINet', 'NAFNet'])
    assert text == ('Best trained network: HINet+TLC, mean 30.70 dB; it does not beat BM3D (31.75 dB): '
                    '-1.05 dB on these photos.')
    mean['NAFNet'] = (32.0, 0.91)
    assert 'NAFNet, mean 32.00 dB; it beats BM3D' in demo_report.verdict(mean, ['HINet', 'NAFNet'])


def test_networks_table_and_contact_sheet():
    line = demo_report.networks_table([{'name': 'NAFNet-Demo', 'arch': 'NAFNet', 'params': 1137203,
                                        'iterations': 1000, 'train_s': 200.0, 'psnr': 30.5, 'gain': 10.4}])
    assert line.splitlines()[-1] == '| NAFNet-Demo (NAFNet) | 1,137,203 | 1000 | 200 s | 30.50 | +10.40 |'
    a, b = np.zeros((10, 6, 3), np.uint8), np.zeros((7, 5, 3), np.uint8)
    sheet = demo_report.contact_sheet([[a, a], [b, b, b]], gap=2)
    assert sheet.shape == (10 + 2 + 7 + 2, 15, 3)
    assert (sheet[10:12] == 255).all() and (sheet[12:19, :15] == 0).all()


def test_side_by_side_has_a_title_over_every_column():
    mean = {'noisy input': (20.62, 0.3), 'BM3D': (31.75, 0.85), 'HINet': (31.0, 0.84)}
    titles = demo_report.column_titles(['noisy input', 'BM3D', 'HINet'], mean, extra=['clean'])
    assert titles == ['noisy input 20.62 dB', 'BM3D 31.75 dB', 'HINet 31.00 dB', 'clean']
    widths = (160, 120, 200, 90)
    rows = [[np.full((50, w, 3), 128, np.uint8) for w in widths] for _ in range(2)]
    sheet = demo_report.contact_sheet(rows, gap=4, titles=titles)
    assert sheet.shape == (36 + 4 + 2 * (50 + 4), sum(widths), 3)
    band, x = sheet[:36], 0
    for w in widths:  # dark text inside each column's span of the band, nothing dark outside the band
        assert (band[:, x + 2:x + w - 2] < 100).any(), x
        x += w
    assert (sheet[36:40] == 255).all() and (sheet[40:90] == 128).all()
    with pytest.raises(ValueError, match='3 titles for 4 columns'):
        demo_report.contact_sheet(rows, titles=titles[:3])


def test_demo_trains_one_network_on_fresh_noise():
    """The demo's option file reads the clean crops only and draws sigma-25 noise at every read (8-bit, like the
    held-out photos); the demo script trains that one file."""
    opt = load_option_file('train', 'HINet-Demo')
    train = opt['datasets']['train']
    assert train['type'] == 'Dataset_GaussianDenoising' and train['dataroot_gt'] == 'datasets/demo/train_gt.lmdb'
    assert (train['sigma_type'], train['sigma_range'], train['quantize']) == ('constant', 25, True)
    from hinet_plugins.demo import run
    script = load_script(os.path.join(REPO, 'scripts', 'demo.py'), 'demo_script')
    assert script.run_demo is run.run_demo
    assert run.OPTIONS == ('options/train/HINet-Demo.yml',)
    assert run.DATA_SETTINGS['sigma'] == 25.0 and run.DATA_SETTINGS['train_lq'] is False


DEMO_FILES = ('HINet-Demo', 'NAFNet-Demo')


def test_demo_flow_restores_the_held_out_photos_with_and_without_tlc(tmp_path, capsys):
    """The demo's steps after training, in-process on a tiny random HINet: the dataset marker skips a rebuild,
    the held-out pairs are read back, and the trained checkpoint restores them without and with TLC (TLC changes
    the output of a network with instance norm); the restored images keep the photos' sizes."""
    from basicsr.archs import build_network
    from hinet_plugins.demo import run
    data = tmp_path / 'datasets' / 'demo'
    for part in ('gt', 'lq'):
        (data / 'val' / part).mkdir(parents=True)
    clean, noisy = _tiny(side=40)
    cv2.imwrite(str(data / 'val' / 'gt' / 'chelsea.png'), clean)
    cv2.imwrite(str(data / 'val' / 'lq' / 'chelsea.png'), noisy)
    with open(data / 'settings.json', 'w') as f:
        json.dump(run.DATA_SETTINGS, f)
    run.build_data(str(data))
    assert 'dataset already built' in capsys.readouterr().out and sorted(os.listdir(data)) == ['settings.json', 'val']
    opt = {'name': 'demo_tiny', 'network_g': {'type': 'HINet', 'wf': 4, 'depth': 3},
           'datasets': {'train': {'gt_size': 16}}}
    models = tmp_path / 'experiments' / 'demo_tiny' / 'models'
    models.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({'params': build_network(dict(opt['network_g'])).state_dict()}, models / 'net_g_latest.pth')
    pairs = list(run.load_pairs(str(data)))
    assert [name for name, _, _ in pairs] == ['chelsea'] and np.array_equal(pairs[0][2], noisy)
    outs, params = run.restore_all(opt, pairs, str(tmp_path))
    assert set(outs) == {'HINet', 'HINet+TLC'} and params > 0
    plain, local = outs['HINet']['chelsea'], outs['HINet+TLC']['chelsea']
    assert plain.shape == local.shape == noisy.shape and plain.dtype == np.uint8
    assert not np.array_equal(plain, local), 'TLC (train size 16 < 40) changes the instance norm statistics'


@pytest.fixture(scope='module')
def demo_runs(request, tiny_data, tmp_path_factory):
    """Both demo files on the tiny data for 2 iterations, trained in one interpreter; {name: (folder, run)}."""
    def plan(name, folder):
        path = write_options(on_tiny_data(load_option_file('train', name), tiny_data, 2), folder / 'o.yml')
        return module_train(path), folder
    runs = launch_selected(request, {f'test_demo_option_files_train_with_native_amp[{name}]':
                                     functools.partial(plan, name) for name in DEMO_FILES}, tmp_path_factory)
    return {key.split('[')[1].rstrip(']'): run for key, run in runs.items()}


@pytest.mark.slow
@pytest.mark.parametrize('name', DEMO_FILES)
def test_demo_option_files_train_with_native_amp(name, demo_runs):
    """Both demo files as shipped (``amp: auto``: bf16 autocast where this CPU has native bf16, else fp32; fp32
    validation), on the tiny data for 2 iterations."""
    opt = load_option_file('train', name)
    assert opt['amp'] == 'auto' and opt['val']['amp'] is False
    assert opt['train']['total_iter'] == opt['train']['scheduler']['T_max']
    folder, proc = demo_runs[name]
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert ('Speed switches: amp=bf16 (eval off)' in proc.stdout) == native_bf16('cpu')  # the switch, when on
    ckpt = folder / 'experiments' / name / 'models' / 'net_g_latest.pth'
    params = torch.load(ckpt, weights_only=True)['params']
    assert all(v.dtype == torch.float32 for v in params.values())  # autocast leaves the weights in fp32
    assert os.path.getsize(ckpt) > 0


def test_amp_auto_is_bf16_only_where_it_is_native(monkeypatch):
    """``amp: auto`` (the demo files): bf16 on a CPU with native bf16, fp32 (None) on one that would emulate it."""
    import hinet_plugins.utils.amp as amp
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(amp, 'native_bf16', lambda device_type, native=native: native)
        assert amp_dtype('auto', 'cpu') is expected and amp_dtype('AUTO', 'cpu') is expected
    monkeypatch.undo()
    assert amp_dtype('auto', 'cpu') is (torch.bfloat16 if native_bf16('cpu') else None)
    assert amp_dtype('bf16', 'cpu') is torch.bfloat16  # asked for explicitly: kept, native or not
