"""NAFNet and its Baseline (Chen, Chu, Zhang, Sun, "Simple Baselines for Image Restoration", ECCV 2022).

One U-Net of pre-norm blocks (``_UNet``): ``NAFBlock`` for NAFNet (activation free: SimpleGate and simplified
channel attention), ``BaselineBlock`` for the paper's Baseline (GELU and squeeze-excitation). One output image.

Decisions:
- The public release (megvii-research/NAFNet) is followed, so its checkpoints (``params``; basicsr strips a leading
  ``module.``) load with ``strict=True``: constructor keywords, attribute names and its state_dict's key order.
- LayerNorm2d is the shared ``blocks.ChannelLayerNorm`` (torch's fused ``layer_norm``) instead of the release's
  hand-written autograd function: same values, no warning on today's torch. The release's dropout (rate 0 in every
  option file) is left out: it has no parameters.
- Padding as in the release: zeros at the bottom/right to a multiple of 2^len(enc_blk_nums), cropped back.
- The only global operation is the average pool of ``sca`` / ``se`` (an ``nn.AdaptiveAvgPool2d(1)``), which TLC
  localises (``NAFNetLocal`` / ``BaselineLocal``, built by ``hinet_plugins.tlc.local_archs``).
"""
import re

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F

from .blocks import ChannelLayerNorm, checkpoint_call
from .spec import Config, count, describe, shape


class SimpleGate(nn.Module):
    """Split the channels into two halves and multiply them (the paper's SimpleGate)."""

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2


class _PreNormBlock(nn.Module):
    """The skeleton NAFBlock and BaselineBlock share: two residual branches, each LayerNorm -> ... -> * scale.

    ``NAFBlock``: LayerNorm -> 1x1 c->2c -> depthwise 3x3 -> SimpleGate -> ``sca`` (global average pool, 1x1 conv
    with bias, multiplied in; no MLP, no sigmoid) -> 1x1 -> ``x + out * beta``; then LayerNorm -> 1x1 c->2c ->
    SimpleGate -> 1x1 -> ``y + out * gamma`` (2 = ``DW_Expand``, ``FFN_Expand``). ``BaselineBlock``: the same with
    GELU instead of SimpleGate and a squeeze-excitation ``se`` (pool -> 1x1 to half width -> ReLU -> 1x1 ->
    sigmoid), widths ``DW_Expand`` / ``FFN_Expand`` x c without halving. ``beta`` and ``gamma`` (1, c, 1, 1) start
    at zero, so every block of a fresh network is the identity; LayerNorm2d is over the channels of each pixel
    (biased variance, eps 1e-6).
    """

    def __init__(self, c):
        super().__init__()
        # registered first: the release's blocks list beta, gamma before their submodules
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def _norms(self, c):
        self.norm1 = ChannelLayerNorm(c, eps=1e-6)
        self.norm2 = ChannelLayerNorm(c, eps=1e-6)

    def forward(self, inp):
        x = self.conv2(self.conv1(self.norm1(inp)))
        x = self.conv3(self.attend(x))
        y = inp + x * self.beta
        x = self.conv5(self.activate(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class NAFBlock(_PreNormBlock):
    def __init__(self, c, DW_Expand=2, FFN_Expand=2):  # noqa: N803  (the release's keywords)
        super().__init__(c)
        dw, ffn = c * DW_Expand, c * FFN_Expand
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.sg = SimpleGate()
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1)
        self._norms(c)

    def attend(self, x):
        x = self.sg(x)
        return x * self.sca(x)

    def activate(self, x):
        return self.sg(x)


class BaselineBlock(_PreNormBlock):
    def __init__(self, c, DW_Expand=1, FFN_Expand=2):  # noqa: N803  (the release's keywords)
        super().__init__(c)
        dw, ffn = c * DW_Expand, c * FFN_Expand
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw, c, 1)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw, dw // 2, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(dw // 2, dw, 1), nn.Sigmoid())
        self.gelu = nn.GELU()
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn, c, 1)
        self._norms(c)

    def attend(self, x):
        x = self.gelu(x)
        return x * self.se(x)

    def activate(self, x):
        return self.gelu(x)


class _UNet(nn.Module):
    """``intro`` (3x3) -> per level blocks and a 2x2 stride-2 conv doubling the channels -> ``middle_blks`` -> per
    level a 1x1 conv to 2x channels (the only conv without bias) + PixelShuffle(2), the level's encoder feature
    added, blocks -> ``ending`` (3x3) + the input. Modules are created in the release's key order (``intro, ending,
    encoders, decoders, middle_blks, ups, downs``)."""
    grad_checkpoint = False  # set by the model for ``train.grad_checkpoint``: every block is checkpointed

    def __init__(self, make_block, img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums):
        super().__init__()
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError(f'dec_blk_nums: one entry per level of enc_blk_nums is needed, got enc_blk_nums '
                             f'{list(enc_blk_nums)} and dec_blk_nums {list(dec_blk_nums)}')
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
        self.middle_blks = nn.ModuleList()  # replaced below; created here for the release's key order
        self.ups, self.downs = nn.ModuleList(), nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[make_block(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, stride=2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[make_block(chan) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[make_block(chan) for _ in range(num)]))
        self.padder_size = 2 ** len(self.encoders)

    def _blocks(self, stack, x):
        for block in stack:
            x = checkpoint_call(self, block, x)
        return x

    def forward(self, inp):
        h, w = inp.shape[-2:]
        inp = F.pad(inp, (0, (-w) % self.padder_size, 0, (-h) % self.padder_size))  # zeros, bottom/right
        x = self.intro(inp)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = self._blocks(encoder, x)
            skips.append(x)
            x = down(x)
        x = self._blocks(self.middle_blks, x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = self._blocks(decoder, up(x) + skip)
        return (self.ending(x) + inp)[..., :h, :w]


@ARCH_REGISTRY.register()
class NAFNet(_UNet):
    def __init__(self, img_channel=3, width=16, middle_blk_num=1, enc_blk_nums=(), dec_blk_nums=()):
        super().__init__(NAFBlock, img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums)


@ARCH_REGISTRY.register()
class Baseline(_UNet):
    def __init__(self, img_channel=3, width=16, middle_blk_num=1, enc_blk_nums=(), dec_blk_nums=(), dw_expand=1,
                 ffn_expand=2):
        super().__init__(lambda c: BaselineBlock(c, dw_expand, ffn_expand), img_channel, width, middle_blk_num,
                         enc_blk_nums, dec_blk_nums)


def _detect(sd, attention):
    """NAFNet/Baseline keywords from a state dict (``attention``: 'sca' or 'se', the blocks' kind); None if not."""
    intro = shape(sd, 'intro.weight')
    if intro is None or len(intro) != 4 or 'ending.weight' not in sd:
        return None
    block = re.compile(r'(encoders\.\d+\.\d+|middle_blks\.\d+|decoders\.\d+\.\d+)\.(sca|se)\.1\.weight$')
    found = [m for m in map(block.match, sd) if m]
    if any(m.group(2) != attention for m in found) or (attention == 'se' and not found):
        return None  # a network without blocks is taken as a NAFNet (both are the same then)
    kwargs = dict(img_channel=intro[1], width=intro[0], middle_blk_num=count(sd, 'middle_blks.'),
                  enc_blk_nums=[count(sd, f'encoders.{i}.') for i in range(count(sd, 'downs.'))],
                  dec_blk_nums=[count(sd, f'decoders.{i}.') for i in range(count(sd, 'ups.'))])
    if attention == 'se':
        first = found[0].group(1)
        c = shape(sd, f'{first}.beta', 1)
        kwargs.update(dw_expand=shape(sd, f'{first}.conv1.weight', 0) // c,
                      ffn_expand=shape(sd, f'{first}.conv4.weight', 0) // c)
    return kwargs


def _sample(rng, baseline=False):
    levels = rng.randint(0, 3)
    out = dict(img_channel=rng.choice([1, 3]), width=rng.choice([2, 4, 6, 8]),
               middle_blk_num=rng.randint(1 if baseline else 0, 2),
               enc_blk_nums=[rng.randint(0, 2) for _ in range(levels)],
               dec_blk_nums=[rng.randint(0, 2) for _ in range(levels)])
    if baseline:
        out.update(dw_expand=rng.choice([1, 2]), ffn_expand=rng.choice([1, 2, 3]))
    return out


def _multiple(kwargs):
    return 2 ** len(kwargs.get('enc_blk_nums', ()))


def _channels(kwargs):
    return (kwargs.get('img_channel', 3),) * 2


_TINY = {'width': 4, 'enc_blk_nums': [1, 1], 'middle_blk_num': 1, 'dec_blk_nums': [1, 1]}
_GOPRO = dict(enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1])
_SIDD = dict(enc_blk_nums=[2, 2, 4, 8], middle_blk_num=12, dec_blk_nums=[2, 2, 2, 2])

describe(NAFNet, purpose='one U-Net of activation-free blocks (deblur, denoise)', tiny=_TINY,
         detect=lambda sd: _detect(sd, 'sca'), final_layer='ending', size_multiple=_multiple, channels=_channels,
         sample=_sample, pad_mode='zeros',
         configs=tuple(Config(f'NAFNet {task} width {w}', {'width': w, **blocks}, params,
                              note=f'release options/train/{folder}/NAFNet-width{w}.yml; params: release')
                       for task, folder, blocks, w, params in (
                           ('GoPro/REDS', 'GoPro', _GOPRO, 32, 17_111_907),
                           ('GoPro/REDS', 'GoPro', _GOPRO, 64, 67_888_835),
                           ('SIDD', 'SIDD', _SIDD, 32, 29_159_715), ('SIDD', 'SIDD', _SIDD, 64, 115_982_915))))
describe(Baseline, purpose="NAFNet paper's baseline: GELU and squeeze-excitation blocks (deblur, denoise)",
         tiny={**_TINY, 'dw_expand': 2, 'ffn_expand': 3}, detect=lambda sd: _detect(sd, 'se'), final_layer='ending',
         size_multiple=_multiple, channels=_channels, sample=lambda rng: _sample(rng, baseline=True),
         pad_mode='zeros',
         configs=tuple(Config(f'Baseline GoPro width {w}', {'width': w, 'dw_expand': dw, **_GOPRO}, params,
                              note=f'release options/train/GoPro/Baseline-width{w}.yml (dw_expand {dw}); '
                                   'params: release')
                       for w, dw, params in ((32, 1, 17_023_875), (64, 2, 112_036_291))))
