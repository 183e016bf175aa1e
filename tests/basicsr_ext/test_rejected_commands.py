"""A command rejected because of its input changes nothing on disk, and says so in one line.

Every case runs on a root that holds a finished training run (``experiments/<name>`` with checkpoints, states and
log, ``tb_logger/<name>``) and a finished test run (``results/<name>_test``); the tree under the root (every path
and the sha256 of every file) must be the same before and after the rejected command. Without the checks that run
before basicsr's ``train_pipeline`` / ``test_pipeline`` create anything (``basicsr_ext.preflight``), each of these
commands would first archive ``experiments/<name>`` to ``*_archived_<time>`` (or create ``results/<name>``) and
only then fail. The launcher runs in-process (``launch.run``, the body of ``basicsr/train.py``); one case runs the
literal ``python basicsr/train.py`` for the exit code and stderr.
"""
import copy
import os
import shutil
import subprocess

import pytest
import torch
from conftest import PY, REPO, base_options, run_launcher, tree, write_options

from basicsr.archs import build_network

NAME = 'finished'


@pytest.fixture(scope='module')
def finished_root(tiny_data, tmp_path_factory):
    """A root with a finished 2-iteration run (TensorBoard on) and a finished test run of its checkpoint."""
    root = tmp_path_factory.mktemp('finished')
    opt = base_options(tiny_data, name=NAME, total_iter=2)
    opt['logger'].update(use_tb_logger=True, save_checkpoint_freq=1)
    mp = pytest.MonkeyPatch()
    try:
        code, err = run_launcher(root, write_options(opt, root / 'inputs' / 'train.yml'), monkeypatch=mp)
        assert code == 0, err
        test = {k: copy.deepcopy(opt[k]) for k in ('model_type', 'scale', 'num_gpu', 'manual_seed', 'network_g')}
        test.update(name=f'{NAME}_test', datasets={'test': dict(opt['datasets']['val'], name='tiny_test')},
                    path={'pretrain_network_g': str(root / 'experiments' / NAME / 'models' / 'net_g_2.pth')},
                    val={'save_img': True, 'metrics': opt['val']['metrics']})
        code, err = run_launcher(root, write_options(test, root / 'inputs' / 'test.yml'), mode='test',
                                 monkeypatch=mp)
        assert code == 0, err
    finally:
        mp.undo()
    for folder in ('experiments', 'tb_logger', 'results'):
        assert os.listdir(root / folder)
    return {'root': root, 'train': opt, 'test': test}


def files(root, *names):
    """Paths for the rejected commands' inputs, outside the run folders."""
    return [str(root / 'inputs' / n) for n in names]


def _bad_files(root):
    random_bytes, text, truncated, weights = files(root, 'random.pth', 'notes.pth', 'truncated.pth', 'weights.pth')
    with open(random_bytes, 'wb') as f:
        f.write(os.urandom(4000))
    with open(text, 'w') as f:
        f.write('these are my notes, not a checkpoint\n')
    good = os.path.join(str(root), 'experiments', NAME, 'models', 'net_g_2.pth')
    with open(good, 'rb') as f:
        data = f.read()
    with open(truncated, 'wb') as f:
        f.write(data[:len(data) // 2])
    shutil.copy(good, weights)
    other = str(root / 'inputs' / 'msrresnet.pth')
    torch.save({'params': build_network({'type': 'MSRResNet', 'num_feat': 8, 'num_block': 1,
                                         'upscale': 2}).state_dict()}, other)
    return {'random': random_bytes, 'text': text, 'truncated': truncated, 'weights': weights, 'other': other}


def _case(name, opt, bad):
    """(options, flags, mode, fragments of the one error line) of one rejected command."""
    flags, mode = (), 'train'
    if name == 'scheduler':
        opt['train']['scheduler']['type'], fragments = 'CosineAnealingLR', ['train.scheduler.type']
    elif name == 'other_arch':
        opt['path']['pretrain_network_g'], fragments = bad['other'], ['does not fit network_g (HINet)']
    elif name == 'lr_string_force_yml':
        flags, fragments = ('--force_yml', 'train:optim_g:lr=abc'), ['train:optim_g:lr must be a number']
    elif name == 'lr_string_yml':
        opt['train']['optim_g']['lr'], fragments = 'abc', ['train.optim_g.lr must be a number']
    elif name == 'in_chn':
        opt['network_g']['in_chn'], fragments = 1, ['takes 1-channel input', 'images have 3 channels', 'in_chn']
    elif name in ('random', 'text', 'truncated'):
        opt['path']['pretrain_network_g'], fragments = bad[name], [bad[name], 'is not a PyTorch checkpoint']
    elif name == 'resume_text':
        opt['path']['resume_state'], fragments = bad['text'], [bad['text'], 'is not a training state']
    elif name == 'resume_weights':
        opt['path']['resume_state'], fragments = bad['weights'], ["is not a training state (no ['epoch', 'iter'"]
    elif name == 'force_yml_key':
        flags, fragments = ('--force_yml', 'datasets:trian:gt_size=32'), ["has no section 'trian'"]
    elif name == 'auto_resume_scheduler':
        opt['train']['scheduler']['type'], fragments = 'CosineAnealingLR', ['train.scheduler.type']
        flags = ('--auto_resume',)
    elif name == 'auto_resume_other_network':  # the run's network changed since its checkpoints were written
        opt['network_g']['depth'], flags = 4, ('--auto_resume',)
        fragments = [os.path.join('experiments', NAME, 'models', 'net_g_2.pth'), 'does not fit network_g (HINet)']
    elif name == 'arch_argument':
        opt['network_g']['wff'] = 8
        fragments = ['network_g (HINet) cannot be built', "unexpected keyword argument 'wff'"]
    elif name == 'arch_value':  # a ValueError of the arch itself, which knows no option keys
        opt['network_g']['norm_type'] = 'bogus'
        fragments = ['network_g (HINet) cannot be built', 'norm_type must be one of']
    elif name == 'loss_argument':
        opt['train']['pixel_opt']['reduction'], fragments = 'average', ['train.pixel_opt (PSNRLoss)']
    elif name == 'test_checkpoint':
        mode, fragments = 'test', [bad['random'], 'is not a PyTorch checkpoint']
        opt['path']['pretrain_network_g'] = bad['random']
    return opt, flags, mode, fragments


CASES = ['scheduler', 'other_arch', 'lr_string_force_yml', 'lr_string_yml', 'in_chn', 'random', 'text', 'truncated',
         'resume_text', 'resume_weights', 'force_yml_key', 'auto_resume_scheduler', 'auto_resume_other_network',
         'arch_argument', 'arch_value', 'loss_argument', 'test_checkpoint']


@pytest.mark.slow
def test_rejected_commands_change_nothing(finished_root, monkeypatch):
    root = finished_root['root']
    bad = _bad_files(root)
    commands = []
    for name in CASES:
        base = finished_root['test' if name.startswith('test_') else 'train']
        opt, flags, mode, fragments = _case(name, copy.deepcopy(base), bad)
        commands.append((name, write_options(opt, root / 'inputs' / f'{name}.yml'), flags, mode, fragments))
    before = tree(root)
    tried = []
    for name, opt_path, flags, mode, fragments in commands:
        code, err = run_launcher(root, opt_path, *flags, mode=mode, monkeypatch=monkeypatch)
        lines = [x for x in err.splitlines() if x.startswith('hinet_plugins: error:')]
        assert code == 2 and len(lines) == 1 and 'Traceback' not in err, (name, err[-3000:])
        for fragment in fragments:
            assert fragment in lines[0], (name, fragment, lines[0])
        assert tree(root) == before, name
        tried.append(name)
    assert tried == CASES


@pytest.mark.slow
def test_rejected_literal_command_exit_code(finished_root):
    """``python -m hinet_plugins.train`` (experiments/ under the working directory, here the finished root)."""
    root = finished_root['root']
    opt_path = write_options(finished_root['train'], root / 'inputs' / 'literal.yml')
    before = tree(root)
    proc = subprocess.run([PY, '-m', 'hinet_plugins.train', '-opt', opt_path, '--force_yml', 'train:optim_g:lr=abc'],
                          cwd=str(root), capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO))
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("hinet_plugins: error: --force_yml 'train:optim_g:lr=abc'")
    assert tree(root) == before
