"""spandrel both ways (optional extra; skipped without it): ``hinet_plugins.integrations.spandrel.install()`` makes
``spandrel.ModelLoader`` load every described network that spandrel lacks (final stage as output, FCN never taken
for MPRNet); our networks that spandrel has compute what spandrel's copies compute on the same weights;
``Restorer.load(checkpoint=...)`` falls back to spandrel for a network we do not have, and TLC converts it."""
import random

import pytest
import torch
from basicsr.archs import build_network

from hinet_plugins.archs import specs
from hinet_plugins.integrations import spandrel as support
from hinet_plugins.restore import Restorer

pytestmark = pytest.mark.skipif(not support.available(), reason="the optional extra 'spandrel' is not installed "
                                "(pip install -e '.[spandrel]', Python >= 3.10)")


def random_net(name, kwargs=None, seed=0):
    torch.manual_seed(seed)
    net = build_network(specs()[name].options(kwargs)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def last(out):
    return out[-1] if isinstance(out, (list, tuple)) else out


@pytest.fixture(scope='module')
def loader():
    support.install_all()
    import spandrel
    return spandrel.ModelLoader()


def spandrel_ids():
    spandrel = support._import()
    import spandrel_extra_arches
    return ({a.architecture.id for a in spandrel.MAIN_REGISTRY} |
            {a.architecture.id for a in spandrel_extra_arches.EXTRA_REGISTRY})


def test_install_adds_every_network_spandrel_lacks_before_its_own(loader):
    spandrel = support._import()
    ours = {a.architecture.id for a in spandrel.MAIN_REGISTRY
            if type(a.architecture).__module__ == support.__name__}
    assert ours == set(specs()) - (spandrel_ids() - ours)
    assert {'HINet', 'HINetSimple', 'DRCNet', 'FCN', 'Baseline'} <= ours
    order = [a.architecture.id for a in spandrel.MAIN_REGISTRY.architectures('detection')]
    assert max(order.index(n) for n in ours) < order.index('MPRNet')
    assert support.install(ignore_duplicates=True) == []  # a second call adds nothing


@pytest.mark.parametrize('name', sorted(specs()))
def test_spandrel_loads_every_network_with_the_final_stage_as_output(tmp_path, loader, name):
    net = random_net(name)
    path = tmp_path / f'{name}.pth'
    torch.save({'params': net.state_dict()}, path)
    model = loader.load_from_file(str(path))
    assert model.architecture.id == name and model.purpose == 'Restoration' and model.scale == 1
    x = torch.rand(1, 3, 37, 29)  # odd: spandrel pads to the size requirement, or the network pads itself
    with torch.no_grad():
        assert (model(x) - last(net(x)).clamp(0, 1)).abs().max() <= 1e-5


def test_fcn_release_checkpoint_is_fcn_not_mprnet(tmp_path, loader):
    net = random_net('FCN')
    state = {'module.' + k: v for k, v in net.state_dict().items()}
    state['module.stage1_decoder1.decoder_level1.0.body.0.weight'] = torch.zeros(8, 8, 3, 3)  # unused in release
    torch.save({'epoch': 1, 'state_dict': state}, tmp_path / 'fcn.pth')
    assert loader.load_from_file(str(tmp_path / 'fcn.pth')).architecture.id == 'FCN'


@pytest.mark.parametrize('name', ['NAFNet', 'Restormer', 'MPRNet'])
def test_ours_and_spandrels_compute_the_same_on_the_same_weights(tmp_path, loader, name):
    """The tiny configuration and the first two random ones that spandrel detects and loads (its NAFNet needs a
    block at every level and miscounts the levels otherwise, for instance)."""
    spandrel = support._import()
    assert name in spandrel_ids()
    rng = random.Random(name)
    configs = [specs()[name].tiny] + [specs()[name].sample(rng) for _ in range(40)]
    compared = []
    for i, kwargs in enumerate(configs):
        net = random_net(name, kwargs, seed=i)
        torch.save({'params': net.state_dict()}, tmp_path / 'w.pth')
        try:
            model = loader.load_from_file(str(tmp_path / 'w.pth'))
        except (spandrel.UnsupportedModelError, RuntimeError):
            assert i > 0, 'spandrel must load the tiny configuration'
            continue
        assert type(model.model).__module__.startswith('spandrel'), type(model.model)
        x = torch.rand(1, specs()[name].channels(kwargs)[0], 32, 40)
        with torch.no_grad():
            diff = (model(x) - last(net(x)).clamp(0, 1)).abs().max().item()
        assert diff <= 1e-5, (kwargs, diff)
        compared.append(kwargs)
        if len(compared) == 3:
            break
    assert len(compared) == 3, compared


def test_restorer_falls_back_to_spandrel_and_tlc_converts_it(tmp_path):
    """KBNet (spandrel's, with global average pools; not ours), random weights."""
    from spandrel.architectures.KBNet import KBNet_s
    torch.manual_seed(0)
    net = KBNet_s(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save({'params': net.state_dict()}, tmp_path / 'kbnet.pth')
    plain = Restorer.load(checkpoint=str(tmp_path / 'kbnet.pth'))
    assert plain.description.startswith('KBNet') and 'spandrel' in plain.description
    local = Restorer.load(checkpoint=str(tmp_path / 'kbnet.pth'), tlc={'train_size': 16})
    assert 'TLC: 5 layer(s) made local (5 AdaptiveAvgPool2d' in local.description, local.description
    small, large = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(plain.net(large), net(large).clamp(0, 1))
        assert (local.net(small) - plain.net(small)).abs().max() <= 1e-5  # windows cover the training-size map
        assert (local.net(large) - plain.net(large)).abs().max() > 1e-4
