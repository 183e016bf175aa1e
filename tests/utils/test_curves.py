"""``hinet_plugins.utils.curves`` and ``scripts/plot_curves.py``: a basicsr log read into series and plotted; a
wrong path is the usual one-line error (exit code 2) and writes nothing. (A real training's log and TensorBoard
events: tests/data/test_prepare_data.py.)"""
import importlib.util
import os

import pytest
from conftest import REPO

from hinet_plugins.errors import ConfigError
from hinet_plugins.utils.curves import load_series

LOG = """2026-01-01 00:00:00,000 INFO: [tiny..][epoch:  0, iter:       1, lr:(2.000e-04,)] [eta: 0:00:01, time (data): 0.1 (0.0)] l_psnr: -1.2000e+01 l_pix: -1.2000e+01
2026-01-01 00:00:01,000 INFO: [tiny..][epoch:  0, iter:       2, lr:(1.000e-04,)] [eta: 0:00:00, time (data): 0.1 (0.0)] l_psnr: -1.5000e+01 l_pix: -1.5000e+01
2026-01-01 00:00:02,000 INFO: Validation tiny_val
\t # psnr: 21.5000\tBest: 21.5000 @ 2 iter
"""


@pytest.fixture(scope='module')
def script():
    spec = importlib.util.spec_from_file_location('plot_curves', os.path.join(REPO, 'scripts', 'plot_curves.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_log_is_read_and_plotted(tmp_path, script, capsys):
    (tmp_path / 'train_tiny_20260101_000000.log').write_text(LOG)
    train, val, source, png = load_series(str(tmp_path))
    assert train['l_psnr'] == [(1, -12.0), (2, -15.0)] and train['l_pix'][-1] == (2, -15.0)
    assert val == {'tiny_val/psnr': [(2, 21.5)]}
    assert source.endswith('.log') and png == os.path.join(str(tmp_path), 'training_curves.png')
    script.main([str(tmp_path), '-o', str(tmp_path / 'c.png')])
    assert 'val tiny_val/psnr: 1 points, last 21.5 at iter 2' in capsys.readouterr().out
    assert (tmp_path / 'c.png').stat().st_size > 5000


def test_wrong_paths_are_one_line_errors(tmp_path, script, capsys):
    (tmp_path / 'empty.log').write_text('nothing here\n')
    for path, fragment in ((tmp_path / 'missing', 'does not exist'), (tmp_path, 'neither train_*.log nor'),
                           (tmp_path / 'empty.log', 'no training or validation values')):
        with pytest.raises(SystemExit) as exit_:
            script.main([str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1, err
        assert err[0].startswith('hinet_plugins: error: plot_curves: ') and fragment in err[0], err
    with pytest.raises(ConfigError, match='does not exist'):
        load_series(str(tmp_path / 'missing'))
    assert sorted(os.listdir(tmp_path)) == ['empty.log']  # nothing written
