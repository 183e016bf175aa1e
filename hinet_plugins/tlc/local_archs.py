"""``<Arch>Local`` names in ARCH_REGISTRY: build the registered ``<Arch>`` by name, then ``tlc.convert`` it.

``network_g: {type: HINetLocal, base_size: 384, train_size: 256, fast_imp: false, <HINet kwargs>}`` is the
TLC release's option-file interface; those files run unchanged. ``train_size`` defaults to 256 and also accepts the
release's ``[N, C, H, W]`` form. One name for every described network (``hinet_plugins.archs.specs()``,
read when this module is imported, after ``archs``): a new arch file gets its ``*Local`` name without an edit here.
The base arch is looked up when the network is built.
The network keeps the base arch's class and parameter names, so the base arch's checkpoints load strictly.
"""
from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY

from ..errors import ConfigError
from .converter import convert



def _make_local(base):
    def build(base_size=None, train_size=256, fast_imp=False, **kwargs):
        if base not in ARCH_REGISTRY:
            raise ConfigError(f"network_g.type: '{base}Local' needs the architecture '{base}', which is not "
                              'registered')
        net = ARCH_REGISTRY.get(base)(**kwargs)
        try:
            conversion = convert(net, train_size, base_size, fast_imp)
        except ValueError as err:
            raise ConfigError(f'network_g ({base}Local): {err}') from None
        get_root_logger().info(f'{base}Local = {base} + {conversion.summary()}')
        return net

    build.__name__ = build.__qualname__ = f'{base}Local'
    build.__doc__ = f'``{base}`` with TLC applied (see ``hinet_plugins.tlc``); returns a converted ``{base}``.'
    return build


def register_local_names():
    """Register ``<Name>Local`` for every described network that has none yet; returns the base names."""
    from ..archs import specs
    for base in specs():
        if f'{base}Local' not in ARCH_REGISTRY:
            ARCH_REGISTRY.register(_make_local(base))
    return list(specs())


register_local_names()
