"""The restore API (``hinet_plugins.restore``) and scripts/inference.py over it, with tiny random-weight nets saved
as checkpoints: tiling, self-ensemble, TLC, amp, image formats (gray, RGBA, 16-bit, float, odd sizes), option-file
and --arch model sources, release checkpoint formats, errors."""
import importlib.util
import os

import cv2
import numpy as np
import pytest
import torch
from basicsr.archs import build_network

from conftest import PY, REPO, call_main, run_cli, write_options
from hinet_plugins.errors import ConfigError
from hinet_plugins.restore import Restorer, load_network, restore_image, restore_tensor

SCRIPT = os.path.join(REPO, 'scripts', 'inference.py')
spec = importlib.util.spec_from_file_location('inference_script', SCRIPT)
inference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(inference)

NET = {'type': 'HINet', 'wf': 4, 'depth': 3}
ARCH_ARGS = ['--arch', 'HINet', '--arch-opt', 'wf=4', '--arch-opt', 'depth=3']


def save_net(path, opt=NET, identity=False, seed=0):
    torch.manual_seed(seed)
    net = build_network(dict(opt))
    if identity:  # zero last conv: the final output is the input image itself
        torch.nn.init.zeros_(net.last.weight)
        torch.nn.init.zeros_(net.last.bias)
    torch.save({'params': net.state_dict()}, path)
    return net.eval()


@pytest.fixture(scope='module')
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp('nets')
    return {'random': (save_net(root / 'random.pth'), str(root / 'random.pth')),
            'identity': (save_net(root / 'identity.pth', identity=True), str(root / 'identity.pth'))}


def run(argv):
    """inference.main in-process; returns (exit code, stdout+stderr)."""
    return call_main(inference.main, [*argv, '--device', 'cpu'])


def photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8), (w, h),
                      interpolation=cv2.INTER_CUBIC)
    return np.clip(base.astype(np.int16) + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


def test_tiles_blend_close_to_the_whole_image(tmp_path, nets):
    net, ckpt = nets['random']
    os.makedirs(tmp_path / 'in')
    cv2.imwrite(str(tmp_path / 'in' / 'a.png'), photo(96, 80))
    results = {}
    for name, extra in (('whole', []), ('tiled', ['--tile', '48', '--tile-overlap', '24']),
                        ('seams', ['--tile', '48', '--tile-overlap', '0'])):
        code, log = run(['-i', str(tmp_path / 'in'), '-o', str(tmp_path / name), *ARCH_ARGS, '--checkpoint', ckpt,
                         *extra])
        assert code == 0, log
        results[name] = cv2.imread(str(tmp_path / name / 'a.png')).astype(np.float32)
    src = cv2.imread(str(tmp_path / 'in' / 'a.png')).astype(np.float32)
    residual = np.abs(results['whole'] - src).mean()
    tiled = np.abs(results['tiled'] - results['whole'])
    seams = np.abs(results['seams'] - results['whole'])
    assert residual > 10, 'the random net changes the image (so the comparison means something)'
    # HIN statistics differ per tile, so agreement is close, not exact (~0.3% of the range on average)
    assert tiled.mean() < 0.05 * residual and tiled.max() <= 16, (tiled.mean(), tiled.max(), residual)
    assert seams.max() > 2 * tiled.max(), 'blended overlaps beat hard tile borders'


def test_self_ensemble(tmp_path, nets):
    net, _ = nets['random']
    x = torch.rand(1, 3, 32, 48)
    se = restore_tensor(net, x, self_ensemble=True)
    with torch.no_grad():
        manual = 0
        for k in range(4):
            for flip in (False, True):
                y = torch.rot90(net(torch.rot90(x.flip(-1) if flip else x, k, (-2, -1)))[-1], -k, (-2, -1))
                manual = manual + (y.flip(-1) if flip else y) / 8
        plain = net(x)[-1]
    assert torch.allclose(se, manual, atol=1e-5)
    # the x8 average is equivariant to rotations and flips; the plain net is not
    for t in (lambda v: torch.rot90(v, 1, (-2, -1)), lambda v: v.flip(-2)):
        assert torch.allclose(restore_tensor(net, t(x), self_ensemble=True), t(se), atol=1e-5)
        assert (restore_tensor(net, t(x)) - t(plain)).abs().max() > 1e-2
    # through the CLI: an identity-like net stays the identity under the ensemble
    _, ckpt = nets['identity']
    os.makedirs(tmp_path / 'in')
    img = photo(40, 56, seed=3)
    cv2.imwrite(str(tmp_path / 'in' / 'b.png'), img)
    code, log = run(['-i', str(tmp_path / 'in' / 'b.png'), '-o', str(tmp_path / 'out'), *ARCH_ARGS,
                     '--checkpoint', ckpt, '--self-ensemble'])
    assert code == 0, log
    assert np.array_equal(cv2.imread(str(tmp_path / 'out' / 'b.png')), img)


def test_image_formats_are_kept(tmp_path, nets):
    _, ident = nets['identity']
    _, rand = nets['random']
    src = tmp_path / 'in'
    os.makedirs(src)
    rng = np.random.default_rng(0)
    gray = photo(37, 53)[..., 1]
    rgba = np.dstack([photo(30, 41, 1), rng.integers(0, 256, (30, 41), dtype=np.uint8)])
    deep = (rng.random((29, 35, 3)) * 65535).astype(np.uint16)  # values no 8-bit round trip keeps
    for name, img in (('gray.png', gray), ('rgba.png', rgba), ('deep.png', deep)):
        cv2.imwrite(str(src / name), img)
    for label, ckpt in (('ident', ident), ('rand', rand)):
        code, log = run(['-i', str(src), '-o', str(tmp_path / label), *ARCH_ARGS, '--checkpoint', ckpt])
        assert code == 0 and 'done: 3 restored, 0 failed' in log, log
    for name, img in (('gray.png', gray), ('rgba.png', rgba), ('deep.png', deep)):
        for label in ('ident', 'rand'):
            out = cv2.imread(str(tmp_path / label / name), cv2.IMREAD_UNCHANGED)
            assert out.shape == img.shape and out.dtype == img.dtype, (name, label, out.shape, out.dtype)
        ident_out = cv2.imread(str(tmp_path / 'ident' / name), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(ident_out, img), f'{name}: the identity net must give the input back exactly'
    rand_rgba = cv2.imread(str(tmp_path / 'rand' / 'rgba.png'), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(rand_rgba[..., 3], rgba[..., 3]) and not np.array_equal(rand_rgba[..., :3], rgba[..., :3])


def test_option_file_tlc_and_errors(tmp_path, nets):
    net, ckpt = nets['random']
    src = tmp_path / 'in'
    os.makedirs(src)
    cv2.imwrite(str(src / 'c.png'), photo(64, 64, 5))
    opt = write_options({'name': 'x', 'network_g': dict(NET), 'path': {'pretrain_network_g': ckpt}},
                        tmp_path / 'opt.yml')
    assert run(['-i', str(src), '-o', str(tmp_path / 'opt'), '-opt', opt])[0] == 0
    assert run(['-i', str(src), '-o', str(tmp_path / 'arch'), *ARCH_ARGS, '--checkpoint', ckpt])[0] == 0
    read = lambda d: cv2.imread(str(tmp_path / d / 'c.png')).astype(np.int16)  # noqa: E731
    assert np.array_equal(read('opt'), read('arch'))
    # TLC: windows covering the whole feature map (base >= image) reproduce the plain net; smaller ones do not
    code, log = run(['-i', str(src), '-o', str(tmp_path / 'tlc_big'), '-opt', opt, '--tlc', '--train-size', '32',
                     '--base-size', '64'])
    assert code == 0 and 'TLC:' in log, log
    assert np.abs(read('tlc_big') - read('opt')).max() <= 1
    assert run(['-i', str(src), '-o', str(tmp_path / 'tlc'), '-opt', opt, '--tlc', '--train-size', '16'])[0] == 0
    assert np.abs(read('tlc') - read('opt')).max() > 2

    # a checkpoint of another architecture, a missing checkpoint, an unregistered type, a bad key=value
    other = tmp_path / 'other.pth'
    save_net(other, {'type': 'HINet', 'wf': 8, 'depth': 3})
    for argv, message in (([*ARCH_ARGS, '--checkpoint', str(other)], 'does not fit HINet'),
                          ([*ARCH_ARGS, '--checkpoint', str(tmp_path / 'nope.pth')], 'does not exist'),
                          (['--arch', 'NoSuchNet', '--checkpoint', ckpt], "'NoSuchNet' is not registered"),
                          ([*ARCH_ARGS, '--arch-opt', 'wf', '--checkpoint', ckpt], 'key=value'),
                          (['-opt', opt, '--tlc'], '--train-size'),
                          (['-opt', opt, '-o', str(src)], 'inputs would be overwritten')):
        code, log = run(['-i', str(src), '-o', str(tmp_path / 'err'), *argv])
        assert code == 2 and message in log, (argv, log)


@pytest.mark.slow
def test_unreadable_files_are_skipped_with_nonzero_exit(tmp_path, nets):
    """The real command line: one bad file is reported and skipped, the others are restored, exit status 1."""
    _, ckpt = nets['random']
    src = tmp_path / 'in'
    os.makedirs(src)
    cv2.imwrite(str(src / 'good.png'), photo(24, 40))
    with open(src / 'broken.png', 'wb') as f:
        f.write(b'\x89PNG not really')
    proc = run_cli([PY, SCRIPT, '-i', str(src), '-o', str(tmp_path / 'out'), *ARCH_ARGS, '--checkpoint', ckpt,
                    '--device', 'cpu'], tmp_path, check=False)
    assert proc.returncode == 1, proc.stdout
    assert "skipped '" in proc.stdout and 'broken.png' in proc.stdout and 'done: 1 restored, 1 failed' in proc.stdout
    assert os.listdir(tmp_path / 'out') == ['good.png']


def test_api_arrays_rgb_bgr_and_formats(nets):
    """``Restorer`` on arrays: RGB in = the script's BGR path flipped; gray / float / 16-bit keep their format."""
    net, ckpt = nets['random']
    rgb = photo(40, 52, seed=7)[..., ::-1].copy()
    restorer = Restorer.load(arch='HINet', arch_opt={'wf': 4, 'depth': 3}, checkpoint=ckpt)
    out = restorer(rgb)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and np.abs(out.astype(int) - rgb).mean() > 5
    bgr_out = restore_image(net, rgb[..., ::-1], channel_order='bgr')
    assert np.array_equal(bgr_out[..., ::-1], out)
    # the same as the network itself on the [0, 1] tensor, rounded
    with torch.no_grad():
        ref = net(torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255)[None])[-1][0]
    ref = np.round(ref.clamp(0, 1).numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
    assert np.array_equal(out, ref)
    flt = rgb.astype(np.float32) / 255
    out_f = restorer(flt)
    assert out_f.dtype == np.float32 and np.abs(out_f * 255 - out).max() <= 0.5 + 1e-3
    gray16 = (rgb[..., 1].astype(np.uint16) * 257)
    out_g = restorer(gray16)
    assert out_g.shape == gray16.shape and out_g.dtype == np.uint16
    with pytest.raises(ValueError, match='unsupported pixel type'):
        restorer(rgb.astype(np.int32))


def test_release_checkpoint_formats(tmp_path, nets):
    """'params', 'params_ema', MPRNet's {'epoch', 'state_dict', 'optimizer'} with 'module.', a bare state_dict:
    all load strictly to the same network; --param-key picks one of several."""
    net, _ = nets['random']
    state = net.state_dict()
    other = build_network(dict(NET)).state_dict()
    files = {'params': {'params': state}, 'ema': {'params': other, 'params_ema': state},
             'mprnet': {'epoch': 3, 'state_dict': {'module.' + k: v for k, v in state.items()}, 'optimizer': {}},
             'bare': dict(state)}
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        want = net(x)[-1]
    for name, obj in files.items():
        torch.save(obj, tmp_path / f'{name}.pth')
        key = 'params_ema' if name == 'ema' else None
        loaded, desc = load_network(arch='HINet', arch_opt={'wf': 4, 'depth': 3},
                                    checkpoint=str(tmp_path / f'{name}.pth'), param_key=key)
        with torch.no_grad():
            assert torch.equal(loaded(x)[-1], want), name
    # an option file's path.param_key_g selects the EMA weights too
    opt = {'network_g': dict(NET), 'path': {'pretrain_network_g': str(tmp_path / 'ema.pth'),
                                            'param_key_g': 'params_ema'}}
    loaded, _ = load_network(opt=opt)
    with torch.no_grad():
        assert torch.equal(loaded(x)[-1], want)
    with open(tmp_path / 'text.pth', 'w') as f:
        f.write('not a checkpoint\n')
    with pytest.raises(ConfigError, match="checkpoint '.*text.pth' cannot be loaded"):
        load_network(arch='HINet', arch_opt={'wf': 4, 'depth': 3}, checkpoint=str(tmp_path / 'text.pth'))


def test_amp_and_tlc_through_the_api(nets):
    """bf16 on the CPU runs (close to fp32, not equal); fp16 without a GPU is a ConfigError; TLC via ``tlc=``."""
    net, ckpt = nets['random']
    rgb = photo(48, 48, seed=2)
    fp32 = Restorer(net)(rgb).astype(np.int16)
    bf16 = Restorer(net, amp='bf16')(rgb).astype(np.int16)
    diff = np.abs(bf16 - fp32)
    assert 0 < diff.max() and diff.mean() < 2, (diff.max(), diff.mean())
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match='fp16 needs a GPU'):
            Restorer(net, amp='fp16')
    with pytest.raises(ConfigError, match="expected bf16, fp16"):
        Restorer(net, amp='int8')
    local = Restorer.load(arch='HINet', arch_opt={'wf': 4, 'depth': 3}, checkpoint=ckpt, tlc={'train_size': 16})
    assert 'TLC: ' in local.description
    assert np.abs(local(rgb).astype(np.int16) - fp32).max() > 2
    assert not any('Local' in type(m).__name__ for m in net.modules()), 'the shared net was not converted'


def test_cli_amp_tile_checks(tmp_path, nets):
    """--amp bf16 restores; --amp fp16 without a GPU, --tile 0 / -5 are one-line errors that write nothing."""
    _, ckpt = nets['random']
    src = tmp_path / 'in'
    os.makedirs(src)
    cv2.imwrite(str(src / 'a.png'), photo(40, 40))
    code, log = run(['-i', str(src), '-o', str(tmp_path / 'bf16'), *ARCH_ARGS, '--checkpoint', ckpt, '--amp', 'bf16'])
    assert code == 0 and '(amp bf16)' in log and os.path.isfile(tmp_path / 'bf16' / 'a.png'), log
    bad = [(['--tile', '0'], '--tile: the tile size must be positive, got 0'),
           (['--tile', '-5'], '--tile: the tile size must be positive, got -5'),
           (['--tile', '32', '--tile-overlap', '32'], '--tile-overlap must be in 0..31')]
    if not torch.cuda.is_available():
        bad.append((['--amp', 'fp16'], '--amp: fp16 needs a GPU'))
    for extra, message in bad:
        code, log = run(['-i', str(src), '-o', str(tmp_path / 'err'), *ARCH_ARGS, '--checkpoint', ckpt, *extra])
        lines = [line for line in log.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith('hinet_plugins: error: ' + message), log
        assert not os.path.exists(tmp_path / 'err')
