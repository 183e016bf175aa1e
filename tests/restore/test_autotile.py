"""``tile='auto'`` through ``Restorer`` and ``scripts/inference.py --tile auto``: the whole image when it fits,
the largest tile that fits the memory budget otherwise, half the tile after an out-of-memory error, budget and
tile mistakes as one-line errors."""
import os
import re

import cv2
import numpy as np
import pytest
import torch
from basicsr.archs import build_network

from hinet_plugins.errors import ConfigError
from hinet_plugins.restore import Restorer, restore_tensor
from test_inference import ARCH_ARGS, NET, photo, run, save_net


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp('net') / 'net.pth'
    save_net(path)
    return str(path)


def tiny_net():
    torch.manual_seed(0)
    return build_network(dict(NET)).eval()


def test_whole_image_when_it_fits_and_tiles_when_not():
    net = tiny_net()
    img = photo(200, 232)
    whole = Restorer(net)(img)
    roomy = Restorer(net, tile='auto', memory_budget='8GB', progress=False)
    assert np.array_equal(roomy(img), whole)
    plan = roomy.last_plan
    assert plan['tile'] is None and plan['budget'] == 8 * 10**9 and 0 < plan['estimate'] < plan['budget'], plan
    # a budget below the whole image's estimate (the same measurement): the largest tile that fits, within it
    budget = roomy.memory_budget = int(plan['estimate'] * 0.8)
    out = roomy(img)
    tile = roomy.last_plan['tile']
    assert tile is not None and 64 <= tile < 232 and tile % 32 == 0, roomy.last_plan
    assert roomy.last_plan['estimate'] <= budget
    diff = np.abs(out.astype(np.float32) - whole)
    assert diff.mean() < 1.5 and diff.max() <= 24, (diff.mean(), diff.max())
    # a tighter budget gives a smaller tile; one too small for any tile is a ConfigError naming memory_budget
    roomy.memory_budget = budget * 2 // 3
    roomy(img)
    assert roomy.last_plan['tile'] < tile
    with pytest.raises(ConfigError, match='memory_budget: .* is too small for a 232x200 image'):
        Restorer(net, tile='auto', memory_budget='1MB')(img)


def test_default_budget_is_half_the_available_ram():
    fields = dict(line.split(':', 1) for line in open('/proc/meminfo'))
    available = int(fields['MemAvailable'].split()[0]) * 1024
    r = Restorer(tiny_net(), tile='auto', progress=False)
    r(photo(64, 64))
    assert abs(r.last_plan['budget'] - available / 2) < 0.1 * available, (r.last_plan, available)


class RunsOutOfMemory(torch.nn.Module):
    """The tiny net, raising the CUDA out-of-memory error when given the whole ``size`` image."""

    def __init__(self, net, size):
        super().__init__()
        self.net, self.size, self.failed = net, tuple(size), 0

    def forward(self, x):
        if tuple(x.shape[-2:]) == self.size:
            self.failed += 1
            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')
        return self.net(x)


def test_out_of_memory_retries_with_half_the_tile(capsys):
    net = tiny_net()
    flaky = RunsOutOfMemory(net, (192, 160))
    r = Restorer(flaky, tile='auto', memory_budget='100GB', progress=False)
    x = torch.from_numpy(photo(192, 160).transpose(2, 0, 1).astype(np.float32) / 255)[None]
    out = r.restore_tensor(x)
    assert flaky.failed == 1 and r.last_plan['tile'] == 96, r.last_plan
    assert torch.equal(out, restore_tensor(net, x, tile=96, overlap=32, batch=1))
    err = capsys.readouterr().err
    assert 'hinet_plugins: CPU out of memory with the whole image (160x192); retrying with tile 96' in err
    assert r.last_plan['retries'] == [err.strip().splitlines()[-1][len('hinet_plugins: '):]]
    # a fixed tile is the user's choice: the error goes through
    with pytest.raises(torch.OutOfMemoryError):
        Restorer(RunsOutOfMemory(net, (96, 96)), tile=96, progress=False).restore_tensor(x)


def test_cli_tile_auto(tmp_path, ckpt):
    src = tmp_path / 'in'
    os.makedirs(src)
    cv2.imwrite(str(src / 'small.png'), photo(64, 48))
    cv2.imwrite(str(src / 'large.png'), photo(320, 288))
    code, log = run(['-i', str(src), '-o', str(tmp_path / 'roomy'), *ARCH_ARGS, '--checkpoint', ckpt,
                     '--tile', 'auto'])
    assert code == 0 and 'small.png: 48x64, whole image (estimated' in log, log
    assert 'large.png: 288x320, whole image' in log and 'GiB budget)' in log, log
    code, log = run(['-i', str(src), '-o', str(tmp_path / 'tight'), *ARCH_ARGS, '--checkpoint', ckpt,
                     '--tile', 'auto', '--memory-budget', '20MB'])
    assert code == 0 and 'small.png: 48x64, whole image' in log and 'large.png: 288x320, tile ' in log, log
    assert 'MiB of a 19 MiB budget' in log, log
    assert re.search(r'tiles \d+x\d+: +\d+%', log) and re.search(r'restore: 100%.* 2/2', log), log  # tqdm bars
    for name in ('small.png', 'large.png'):
        a = cv2.imread(str(tmp_path / 'roomy' / name)).astype(np.float32)
        b = cv2.imread(str(tmp_path / 'tight' / name)).astype(np.float32)
        assert np.abs(a - b).mean() < 1.5
    for extra, message in ((['--tile', 'big'], "argument --tile: expected a number of pixels or 'auto', got 'big'"),
                           (['--tile', 'auto', '--memory-budget', 'lots'],
                            "--memory-budget: expected a positive size such as 2GB"),
                           (['--memory-budget', '2GB'], '--memory-budget is used by --tile auto only')):
        code, log = run(['-i', str(src), '-o', str(tmp_path / 'err'), *ARCH_ARGS, '--checkpoint', ckpt, *extra])
        lines = [line for line in log.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and message in lines[0], log
        assert lines[0].startswith('hinet_plugins: error: ') and not os.path.exists(tmp_path / 'err')


def test_without_proc_the_forward_is_bounded_by_its_leaf_outputs(monkeypatch):
    """Where /proc/self cannot be read (not Linux), the per-pixel cost is the sum of the leaf modules' outputs:
    above the measured one, so tiles get smaller, never larger."""
    from hinet_plugins.restore import autotile
    img = photo(200, 232)
    measured = Restorer(tiny_net(), tile='auto', memory_budget='8GB', progress=False)
    measured(img)

    def no_proc(field):
        raise OSError(field)
    monkeypatch.setattr(autotile, '_status_kib', no_proc)
    bounded = Restorer(tiny_net(), tile='auto', memory_budget='8GB', progress=False)
    assert np.array_equal(bounded(img), measured(img))
    assert bounded.last_plan['estimate'] > measured.last_plan['estimate'], (bounded.last_plan, measured.last_plan)
