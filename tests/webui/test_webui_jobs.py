"""The web page's logic without a browser (``hinet_plugins.webui``): formats kept in the download (16-bit, alpha),
PSNR/SSIM against a ground truth, bad uploads and choices as one-line messages, the models offered, and
scripts/webui.py's usage errors. The page in a real browser: tests/webui/test_webui.py."""
import contextlib
import importlib.util
import io
import os

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network

from conftest import REPO, save_model
from hinet_plugins.errors import ConfigError
from hinet_plugins.restore import Restorer
from hinet_plugins.webui import RestorePage, find_models, parse_tile
from hinet_plugins.webui.models import can_detect

NET = {'type': 'HINet', 'wf': 4, 'depth': 3}




@pytest.fixture(scope='module')
def page(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('models'))
    two = dict(NET, in_chn=2)  # loads, then fails on every image (2 input channels)
    models, _ = find_models([save_model(root, 'tiny'), save_model(root, 'broken', opt=dict(NET, wf=8)),
                             save_model(root, 'two', opt=two, built=two)], test_options=None)
    page = RestorePage(models, 'cpu', max_pixels=100 * 100, work_dir=str(tmp_path_factory.mktemp('work')))
    page.option_file = os.path.join(root, 'tiny.yml')
    return page


def astronaut(h=72, w=88):
    from skimage import data
    return cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_AREA)


def test_download_keeps_16_bit_and_alpha_and_metrics(page, tmp_path):
    rgb = astronaut().astype(np.uint16) * 257 + 100
    alpha = np.tile(np.linspace(0, 65535, rgb.shape[1]).astype(np.uint16), (rgb.shape[0], 1))
    bgra = np.dstack([rgb[..., ::-1], alpha])
    cv2.imwrite(str(tmp_path / 'deep.png'), bgra)
    cv2.imwrite(str(tmp_path / 'deep_gt.png'), bgra)  # ground truth matched by name
    lines, results = page.run([str(tmp_path / 'deep.png')], [str(tmp_path / 'deep_gt.png')], 'tiny', False, 0,
                              False, 'none', 'auto')
    assert len(lines) == 1 and lines[0].startswith('1 of 1 image(s) restored with HINet') and 'whole image' in lines[0]
    res = results[0]
    assert os.path.basename(res['file']) == 'deep_restored.png'
    out = cv2.imread(res['file'], cv2.IMREAD_UNCHANGED)
    expected = Restorer.load(opt=page.option_file)(np.dstack([rgb, alpha]))
    assert out.dtype == np.uint16 and out.shape == bgra.shape
    assert np.array_equal(out[..., 3], alpha) and np.array_equal(out[..., 2::-1], expected[..., :3])
    from basicsr.metrics import calculate_psnr
    want = calculate_psnr(expected[..., :3] / 257.0, rgb / 257.0, 0)
    assert res['psnr'] == pytest.approx(want) and 0 < res['ssim'] < 1
    for key in ('input', 'restored'):  # 8-bit previews for the slider
        shown = cv2.imread(res[key], cv2.IMREAD_UNCHANGED)
        assert shown.dtype == np.uint8 and shown.shape == bgra.shape
    # x8 self-ensemble and a fixed tile: what the Restorer with the same settings gives
    lines, results = page.run([str(tmp_path / 'deep.png')], None, 'tiny', False, 0, True, 'bf16', '48')
    out = cv2.imread(results[0]['file'], cv2.IMREAD_UNCHANGED)
    same = Restorer.load(opt=page.option_file, self_ensemble=True, amp='bf16', tile=48)(np.dstack([rgb, alpha]))
    assert np.array_equal(out[..., 2::-1], same[..., :3]), lines


def test_bad_uploads_and_choices_are_one_line_messages(page, tmp_path):
    cv2.imwrite(str(tmp_path / 'good.png'), astronaut())
    cv2.imwrite(str(tmp_path / 'huge.png'), cv2.resize(astronaut(), (128, 96)))  # > max_pixels (100 x 100)
    cv2.imwrite(str(tmp_path / 'other.png'), astronaut(40, 40))
    (tmp_path / 'text.jpg').write_text('hello')
    (tmp_path / 'empty.png').write_bytes(b'')
    files = [str(tmp_path / n) for n in ('text.jpg', 'empty.png', 'huge.png', 'good.png')]
    lines, results = page.run(files, [str(tmp_path / 'other.png')], 'tiny', False, 0, False, 'none', 'auto')
    assert [r['name'] for r in results] == ['good.png']
    assert lines[1:] == ['text.jpg: not an image (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp, .ppm, .pgm)',
                         'empty.png: the file is empty',
                         'huge.png: 128x96 is too large (at most 0.01 megapixels)'], lines
    cv2.imwrite(str(tmp_path / 'reference.png'), astronaut())
    _, results = page.run([str(tmp_path / 'good.png')], [str(tmp_path / 'reference.png')], 'tiny', False, 0, False,
                          'none', 'auto')
    assert results[0]['psnr'] is not None  # one image, one ground truth: paired whatever the names
    lines, results = page.run([str(tmp_path / 'good.png')], [str(tmp_path / 'other.png')], 'tiny', False, 0, False,
                              'none', 'auto')
    assert results and results[0]['psnr'] is None
    assert lines[1:] == ['other.png: 40x40, but the image is 88x72 (no PSNR/SSIM for good.png)'], lines
    lines, results = page.run([str(tmp_path / 'good.png')], [str(tmp_path / 'good_gt.png')], 'tiny', False, 0,
                              False, 'none', 'auto')
    assert results and results[0]['psnr'] is None  # a ground truth that is not uploaded: no scores
    for args, message in (((None, None, 'tiny'), 'upload one or more images first'),
                          (([files[3]], None, 'broken'), "model 'broken': checkpoint '"),
                          (([files[3]], None, 'nope'), "model 'nope': model: 'nope' is not one of the models"),
                          (([files[3]], None, 'tiny', True), "model 'tiny': TLC needs the training patch size")):
        tlc = args[3] if len(args) > 3 else False
        lines, results = page.run(args[0], args[1], args[2], tlc, 0, False, 'none', 'auto')
        assert results == [] and len(lines) == 1 and lines[0].startswith(message), lines
    calls = []
    lines, results = page.run([files[3], files[3]], None, 'two', False, 0, False, 'none', 'auto',
                              progress=lambda done, **kw: calls.append((done, kw.get('desc'))))
    assert results == [] and lines[0].startswith('0 of 2 image(s) restored with HINet') and lines[1:] == [
        "good.png: model 'two' failed: the network takes 2 input channels; only 1 or 3 are supported here"] * 2
    assert calls == [((0, 2), 'restoring good.png'), ((1, 2), 'restoring good.png')], calls
    lines, _ = page.run([files[3]], None, 'tiny', False, 0, False, 'none', 'big')
    assert lines == ["model 'tiny': tile: expected auto, a size in pixels or nothing (whole image), got 'big'"]
    lines, results = page.run([files[3]], None, 'tiny', True, 32, False, 'none', 'auto')  # TLC with a size
    assert results and 'TLC' in lines[0], lines
    assert parse_tile('') is None and parse_tile(' Auto ') == 'auto' and parse_tile('256') == 256


def test_models_offered(tmp_path):
    models_dir = tmp_path / 'models'
    os.makedirs(models_dir / 'sub')
    beside = save_model(str(models_dir), 'with_options')
    torch.save({'params': build_network(dict(NET)).state_dict()}, models_dir / 'sub' / 'bare.pth')
    test_options = tmp_path / 'options'
    os.makedirs(test_options)
    save_model(str(test_options), 'has_weights')
    with open(test_options / 'no_weights.yml', 'w') as f:
        yaml.safe_dump({'network_g': dict(NET), 'path': {'pretrain_network_g': 'missing.pth'}}, f)
    given = save_model(str(tmp_path), 'given')
    models, notes = find_models([given], str(models_dir), test_options=str(test_options))
    labels = [m.label for m in models]
    bare = os.path.join('sub', 'bare.pth')
    if can_detect():
        assert labels == ['given', 'with_options.pth', bare, 'has_weights'] and not notes, (labels, notes)
    else:
        assert labels == ['given', 'with_options.pth', 'has_weights'], labels
        assert len(notes) == 1 and notes[0].endswith('bare.pth: left out (no bare.yml beside it, and no '
                                                     'architecture detection here)')
    assert models[labels.index('with_options.pth')].opt == os.path.abspath(beside)
    with pytest.raises(ConfigError, match="-opt 'nowhere.yml' does not exist"):
        find_models(['nowhere.yml'])
    with pytest.raises(ConfigError, match=r"-opt '.*no_weights.yml': path.pretrain_network_g must name an existing"):
        find_models([str(test_options / 'no_weights.yml')])
    with pytest.raises(ConfigError, match="--models 'nope' is not a folder"):
        find_models([], 'nope')


def test_script_usage_errors(tmp_path):
    pytest.importorskip('gradio', reason="the web page needs gradio: pip install -e '.[webui]' (Python >= 3.10)")
    path = os.path.join(REPO, 'scripts', 'webui.py')
    spec = importlib.util.spec_from_file_location('webui_script', path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    empty = tmp_path / 'empty'
    os.makedirs(empty)
    for argv, message in ((['-opt', 'missing.yml'], "-opt 'missing.yml' does not exist"),
                          (['--models', str(empty), '--port', '1'], 'no model to offer: give -opt FILE'),
                          (['--port', 'x'], "argument --port: invalid int value: 'x'")):
        out = io.StringIO()
        with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
            script.main(argv + (['--models', str(empty)] if argv[0] == '-opt' else []))
        lines = [line for line in out.getvalue().splitlines() if line.strip()]
        assert exc.value.code == 2 and len(lines) == 1 and lines[0].startswith('hinet_plugins: error: '), lines
        assert message in lines[0], lines
