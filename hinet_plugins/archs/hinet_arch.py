"""HINet: Half Instance Normalization Network (Chen et al., CVPRW 2021).

Two U-Nets (depth 5 by default) joined by a Supervised Attention Module (SAM, 3x3 convs with bias) and Cross-Stage
Feature Fusion; HIN blocks sit in the encoder levels ``hin_position_left..hin_position_right``. ``forward`` returns
``[stage-1 image, final image]``.

Decisions:
- Parameter names and constructor keywords follow the public release (megvii-model/HINet), so its checkpoints load
  with ``strict=True``; that includes the 3x3 ``skip_conv_*`` on every skip, which the paper does not mention.
  Defaults reproduce the release's network.
- The paper's ablations are constructor options whose defaults are the release's (see ``HINet``), so one class
  serves Tables 6-7 and Secs. 4.2/4.4; ``HINetSimple`` is the registered Sec. 4.2 network.
- ``make_encoder_block`` is the one hook a subclass overrides to swap the encoder blocks (DRCNet's DFR); padding,
  stages and activation checkpointing are inherited.
"""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from .blocks import SAM, UNetConvBlock, UNetUpBlock, checkpoint_call, crop_outputs, pad_to_multiple
from .spec import Config, count, describe, shape


@ARCH_REGISTRY.register()
class HINet(nn.Module):
    """HINet; ``forward(x) -> [stage-1 image, final image]`` (one image with ``num_stages=1``).

    Each U-Net has ``depth - 1`` 4x4 stride-2 downsamplings and 2x2 transposed-conv upsamplings; stage-1 encoder and
    decoder features enter stage 2's encoder blocks through 3x3 convs (CSFF); each stage predicts a residual image.
    Options beyond the release: ``norm_type`` of the levels in the HIN range (Table 6: none, bn, in, ln, gn, ibn, hin)
    and ``hin_in_decoder`` (Table 7's last row); ``num_stages=1, use_skip=False`` = "HINet Simple" (Sec. 4.2);
    ``num_res_blocks`` residual blocks per encoder/decoder block ("Wider, Deeper", Sec. 4.4). Any input size:
    reflect-padded to a multiple of 2^(depth-1) (at least 2x2 at the deepest level) and cropped back.
    """
    grad_checkpoint = False  # set by the model for ``train.grad_checkpoint``: each stage's encoder/decoder

    def __init__(self, in_chn=3, wf=64, depth=5, relu_slope=0.2, hin_position_left=0, hin_position_right=4,
                 norm_type='hin', hin_in_decoder=False, num_stages=2, use_skip=True, num_res_blocks=0,
                 gn_groups=8):
        super().__init__()
        if num_stages not in (1, 2):
            raise ValueError(f'HINet num_stages must be 1 or 2, got {num_stages}')
        self.depth = depth
        self.num_stages = num_stages
        self.use_skip = use_skip
        self.norm_type = norm_type
        self.hin_range = (hin_position_left, hin_position_right)
        self.block_kwargs = dict(relu_slope=relu_slope, gn_groups=gn_groups, num_res_blocks=num_res_blocks)

        self.conv_01 = nn.Conv2d(in_chn, wf, 3, 1, 1)
        self.down_path_1 = nn.ModuleList()
        self.up_path_1 = nn.ModuleList()
        self.skip_conv_1 = nn.ModuleList()
        if num_stages == 2:
            self.conv_02 = nn.Conv2d(in_chn, wf, 3, 1, 1)
            self.down_path_2 = nn.ModuleList()
            self.up_path_2 = nn.ModuleList()
            self.skip_conv_2 = nn.ModuleList()

        prev = wf
        for i in range(depth):
            out = (2 ** i) * wf
            downsample = i + 1 < depth
            self.down_path_1.append(self.make_encoder_block(prev, out, i, downsample, use_csff=False))
            if num_stages == 2:
                self.down_path_2.append(self.make_encoder_block(prev, out, i, downsample, use_csff=downsample))
            prev = out
        dec_norm = norm_type if hin_in_decoder else 'none'
        for i in reversed(range(depth - 1)):
            out = (2 ** i) * wf
            for s in range(1, num_stages + 1):
                getattr(self, f'up_path_{s}').append(
                    UNetUpBlock(prev, out, relu_slope, norm_type=dec_norm, num_res_blocks=num_res_blocks,
                                use_skip=use_skip))
                if use_skip:
                    getattr(self, f'skip_conv_{s}').append(nn.Conv2d(out, out, 3, 1, 1))
            prev = out
        if num_stages == 2:
            self.sam12 = SAM(prev, kernel_size=3, bias=True, img_channels=in_chn)
            self.cat12 = nn.Conv2d(prev * 2, prev, 1, 1, 0)
        self.last = nn.Conv2d(prev, in_chn, 3, 1, 1, bias=True)

    def make_encoder_block(self, in_size, out_size, level, downsample, use_csff):
        """One encoder block at ``level``; subclasses (e.g. DRCNet) swap in their own block here."""
        left, right = self.hin_range
        norm = self.norm_type if left <= level <= right else 'none'
        return UNetConvBlock(in_size, out_size, downsample, use_csff=use_csff, norm_type=norm, **self.block_kwargs)

    def _encode(self, down_path, x, encs=None, decs=None):
        skips = []
        for i, down in enumerate(down_path):
            if i + 1 < self.depth:
                if encs is not None:
                    x, x_skip = down(x, encs[i], decs[-i - 1])
                else:
                    x, x_skip = down(x)
                skips.append(x_skip)
            else:
                x = down(x)
        return x, skips

    def _decode(self, up_path, skip_convs, x, skips):
        decs = []
        for i, up in enumerate(up_path):
            bridge = skip_convs[i](skips[-i - 1]) if self.use_skip else None
            x = up(x, bridge)
            decs.append(x)
        return x, decs

    def forward(self, x):
        # at least 2x2 at the deepest level: InstanceNorm needs more than one spatial element when training
        x, size = pad_to_multiple(x, 2 ** (self.depth - 1), min_size=2 ** self.depth)
        image = x
        x1, encs = checkpoint_call(self, self._encode, self.down_path_1, self.conv_01(image))
        x1, decs = checkpoint_call(self, self._decode, self.up_path_1, self.skip_conv_1, x1, encs)
        if self.num_stages == 1:
            return crop_outputs([self.last(x1) + image], size)
        sam_feature, out_1 = self.sam12(x1, image)
        x2 = self.cat12(torch.cat([self.conv_02(image), sam_feature], dim=1))
        x2, skips = checkpoint_call(self, self._encode, self.down_path_2, x2, encs, decs)
        x2, _ = checkpoint_call(self, self._decode, self.up_path_2, self.skip_conv_2, x2, skips)
        return crop_outputs([out_1, self.last(x2) + image], size)


@ARCH_REGISTRY.register()
class HINetSimple(HINet):
    """HINet Simple (HINet Sec. 4.2): the stage-1 U-Net of HINet 0.5x without encoder-decoder skips."""

    def __init__(self, in_chn=3, wf=32, depth=5, relu_slope=0.2, hin_position_left=0, hin_position_right=4,
                 norm_type='hin', hin_in_decoder=False, num_res_blocks=0, gn_groups=8, use_skip=False):
        super().__init__(in_chn=in_chn, wf=wf, depth=depth, relu_slope=relu_slope,
                         hin_position_left=hin_position_left, hin_position_right=hin_position_right,
                         norm_type=norm_type, hin_in_decoder=hin_in_decoder, num_stages=1, use_skip=use_skip,
                         num_res_blocks=num_res_blocks, gn_groups=gn_groups)


def _detect(sd, stages):
    """HINet keywords from a state dict (``stages``: 2 for HINet, 1 for HINetSimple); None if not a HINet."""
    first = shape(sd, 'conv_01.weight')
    if first is None or len(first) != 4 or 'down_path_1.0.conv_1.weight' not in sd or \
            'down_path_1.0.norm.sa.conv1.weight' in sd or ('down_path_2.0.conv_1.weight' in sd) != (stages == 2):
        return None
    wf, in_chn = first[0], first[1]
    depth = count(sd, 'down_path_1.')
    kwargs = dict(in_chn=in_chn, wf=wf, depth=depth, num_res_blocks=count(sd, 'down_path_1.0.res_blocks.'))
    if stages == 1:
        kwargs['use_skip'] = 'skip_conv_1.0.weight' in sd or depth == 1
    levels = [i for i in range(depth) if f'down_path_1.{i}.norm.weight' in sd]
    if not levels:
        return dict(kwargs, norm_type='none')
    block = f'down_path_1.{levels[0]}.'
    if block + 'norm_bn.weight' in sd:
        norm = 'ibn'
    elif shape(sd, block + 'norm.weight', 0) != shape(sd, block + 'conv_1.weight', 0):
        norm = 'hin'
    elif block + 'norm.running_mean' in sd:
        norm = 'bn'
    else:
        norm = 'in'  # 'in', 'ln' and 'gn' have the same weights (see ``_assumed``)
    return dict(kwargs, norm_type=norm, hin_position_left=levels[0], hin_position_right=levels[-1],
                hin_in_decoder='up_path_1.0.conv_block.norm.weight' in sd)


def _assumed(kwargs):
    out = {'relu_slope': 'LeakyReLU slope: no weights'}
    if kwargs.get('norm_type') == 'in':
        out['norm_type'] = "'in' (per-channel affine norm): 'ln' and 'gn' have the same weights"
    return out


def _sample(rng, simple=False):
    depth = rng.randint(2, 4)
    left = rng.randint(0, depth - 1)
    out = dict(in_chn=rng.choice([1, 3]), wf=rng.choice([2, 4, 6]), depth=depth, hin_position_left=left,
               hin_position_right=rng.randint(left, depth - 1), num_res_blocks=rng.randint(0, 1),
               norm_type=rng.choice(['hin', 'in', 'bn', 'ibn', 'none']), hin_in_decoder=rng.random() < 0.3)
    if simple:
        out['use_skip'] = rng.random() < 0.5
    return out


def _multiple(kwargs):
    return 2 ** (kwargs.get('depth', 5) - 1)


def _channels(kwargs):
    return (kwargs.get('in_chn', 3),) * 2


describe(HINet, purpose='two-stage U-Net with half instance normalisation (denoise, deblur, derain)',
         tiny={'wf': 4, 'depth': 3}, detect=lambda sd: _detect(sd, 2), final_layer='last',
         size_multiple=_multiple, channels=_channels, assumed=_assumed, sample=_sample, configs=(
             Config('HINet 1x', {'wf': 64}, 88_669_702, macs_g=170.71,
                    note='release SIDD/Rain13k; paper Table 4 (MACs counted with each 2x2 s2 transposed conv 4x '
                         'over); params: release'),
             Config('HINet 0.5x', {'wf': 32}, 22_176_518, macs_g=42.88, note='release; paper Table 4'),
             Config('HINet GoPro/REDS (HIN 3..4)', {'wf': 64, 'hin_position_left': 3}, None, macs_g=170.71,
                    note='release GoPro/REDS options'),
             Config('HINet 2x', {'wf': 128}, None, release=False, note='Sec. 4.4 "Wider"; no figure in the paper'),
         ))
describe(HINetSimple, purpose='HINet Sec. 4.2 ablation: one U-Net stage of HINet 0.5x without skips',
         tiny={'wf': 4, 'depth': 3}, detect=lambda sd: _detect(sd, 1), final_layer='last',
         size_multiple=_multiple, channels=_channels, assumed=_assumed, sample=lambda rng: _sample(rng, simple=True),
         configs=(
             Config('HINet Simple', {}, None, release=False, note='Sec. 4.2 ablation network'),
         ))
