"""Restormer: Efficient Transformer for High-Resolution Image Restoration (Zamir et al., CVPR 2022).

A four-level U-Net of pre-norm transformer blocks, ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``, with MDTA
(``Attention``: transposed attention between channels) and GDFN (``FeedForward``); the wiring is in ``Restormer``.

Decisions:
- Constructor keywords and parameter names are the release's (swz30/Restormer), so its ``params`` checkpoints load
  with ``strict=True``.
- MDTA's global part is the shared ``blocks.TransposedAttention`` submodule: TLC converts that module to windowed
  attention, and this file knows nothing of TLC.
- Any input size (the release's class needs H, W divisible by 8): reflect-padded bottom/right to a multiple of 8 and
  cropped back. Reflection continues the image across the border; zeros (``pad_mode='zeros'``, the TLC copy's
  choice) add a dark band that the global attention sums over. Both agree on sizes divisible by 8 (e.g. GoPro).
- LayerNorm is torch's fused op (``blocks.ChannelLayerNorm``), nested as ``normX.body`` for the release's keys.
"""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F

from .blocks import ChannelLayerNorm, TransposedAttention, checkpoint_call
from .spec import Config, count, describe, shape


class LayerNorm(nn.Module):
    """The release's wrapper (keys ``normX.body.weight`` / ``.bias``) around a per-pixel channel LayerNorm (eps
    1e-5): ``WithBias`` (any ``LayerNorm_type`` but 'BiasFree') or ``BiasFree`` (no mean subtraction, no bias)."""

    def __init__(self, dim, LayerNorm_type='WithBias'):  # noqa: N803  (the release's keyword)
        super().__init__()
        self.body = ChannelLayerNorm(dim, eps=1e-5, bias_free=LayerNorm_type == 'BiasFree')

    def forward(self, x):
        return self.body(x)


class Attention(nn.Module):
    """MDTA: 1x1 conv to q, k, v, depthwise 3x3, then per head a C_h x C_h attention between channels (q, k
    L2-normalised over the H*W positions, softmax of q k^T times ``temperature``) applied to v, then
    ``project_out``. Linear in H*W, but it sums over the whole map: ``attend`` (a parameter-free
    ``TransposedAttention``) is that global part, swapped by TLC."""

    def __init__(self, dim, num_heads, bias):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.attend = TransposedAttention()

    def forward(self, x):
        n, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).view(n, 3, self.num_heads, c // self.num_heads, h, w).unbind(1)
        return self.project_out(self.attend(q, k, v, self.temperature).reshape(n, c, h, w))


class FeedForward(nn.Module):
    """GDFN: 1x1 to 2 x hidden (hidden = int(dim x factor), truncated as in the release), depthwise 3x3,
    GELU(x1) * x2, 1x1 back."""

    def __init__(self, dim, ffn_expansion_factor, bias):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    def __init__(self, dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type):  # noqa: N803
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_c=3, embed_dim=48, bias=False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, stride=1, padding=1, bias=bias)

    def forward(self, x):
        return self.proj(x)


class Downsample(nn.Module):
    def __init__(self, n_feat):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, 1, 1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x):
        return self.body(x)


class Upsample(nn.Module):
    def __init__(self, n_feat):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, 3, 1, 1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x)


PAD_MODES = {'reflect': 'reflect', 'zeros': 'constant'}


@ARCH_REGISTRY.register()
class Restormer(nn.Module):
    """Restormer; one output image.

    Down: 3x3 conv n -> n/2 + PixelUnshuffle(2); up: 3x3 conv n -> 2n + PixelShuffle(2); neither has a bias, nor
    has ``patch_embed``, whatever ``bias`` says (release). Skips are concatenated; levels 3 and 2 reduce with a 1x1
    conv, level 1 does not: ``decoder_level1`` and ``refinement`` work at 2 x dim with heads[0]. Output:
    ``output(features) + input``; with ``dual_pixel_task`` (6 input channels, two views) a 1x1 ``skip_conv`` of the
    embedded features is added before ``output`` and there is no image residual. ``pad_mode``: see the module.
    """
    grad_checkpoint = False  # set by the model for ``train.grad_checkpoint``: one segment per level

    def __init__(self, inp_channels=3, out_channels=3, dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4,
                 heads=(1, 2, 4, 8), ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias',  # noqa: N803
                 dual_pixel_task=False, pad_mode='reflect'):
        super().__init__()
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f'Restormer num_blocks and heads need 4 entries (one per level), got {list(num_blocks)} '
                             f'and {list(heads)}')
        for i, h in enumerate(heads):
            if (dim * 2 ** i) % h:
                raise ValueError(f'Restormer level {i + 1} has {dim * 2 ** i} channels, not divisible by '
                                 f'heads[{i}] = {h}')
        if pad_mode not in PAD_MODES:
            raise ValueError(f"Restormer pad_mode must be one of {sorted(PAD_MODES)}, got '{pad_mode}'")
        self.pad_mode = pad_mode
        self.dual_pixel_task = dual_pixel_task

        def level(channels, n, num_heads):
            return nn.Sequential(*[TransformerBlock(channels, num_heads, ffn_expansion_factor, bias, LayerNorm_type)
                                   for _ in range(n)])

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level1 = level(dim, num_blocks[0], heads[0])
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = level(dim * 2, num_blocks[1], heads[1])
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = level(dim * 4, num_blocks[2], heads[2])
        self.down3_4 = Downsample(dim * 4)
        self.latent = level(dim * 8, num_blocks[3], heads[3])

        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, kernel_size=1, bias=bias)
        self.decoder_level3 = level(dim * 4, num_blocks[2], heads[2])
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, kernel_size=1, bias=bias)
        self.decoder_level2 = level(dim * 2, num_blocks[1], heads[1])
        self.up2_1 = Upsample(dim * 2)
        self.decoder_level1 = level(dim * 2, num_blocks[0], heads[0])
        self.refinement = level(dim * 2, num_refinement_blocks, heads[0])
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, kernel_size=1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)

    def _run(self, segment, x):
        return checkpoint_call(self, segment, x)

    def forward(self, inp_img):
        h, w = inp_img.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        x = inp_img
        if ph or pw:
            mode = PAD_MODES[self.pad_mode]
            if mode == 'reflect' and (ph >= h or pw >= w):  # too small to reflect
                mode = 'replicate'
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        emb = self.patch_embed(x)
        enc1 = self._run(self.encoder_level1, emb)
        enc2 = self._run(self.encoder_level2, self.down1_2(enc1))
        enc3 = self._run(self.encoder_level3, self.down2_3(enc2))
        latent = self._run(self.latent, self.down3_4(enc3))

        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1))
        dec3 = self._run(self.decoder_level3, dec3)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1))
        dec2 = self._run(self.decoder_level2, dec2)
        dec1 = self._run(self.decoder_level1, torch.cat([self.up2_1(dec2), enc1], 1))
        dec1 = self._run(self.refinement, dec1)
        if self.dual_pixel_task:
            out = self.output(dec1 + self.skip_conv(emb))
        else:
            out = self.output(dec1) + x
        return out[..., :h, :w]


_LEVELS = (('encoder_level1', 'decoder_level1', 'refinement'), ('encoder_level2', 'decoder_level2'),
           ('encoder_level3', 'decoder_level3'), ('latent',))


def _ffn_factor(pairs):
    """The expansion factor f with int(channels * f) == hidden for every (channels, hidden) pair seen."""
    candidates = [2.66, 2, 3, 4, 1] + [round(h / c, 4) for c, h in pairs] + [(h + 0.5) / c for c, h in pairs]
    return next((f for f in candidates if all(int(c * f) == h for c, h in pairs)), candidates[0])


def _detect(sd):
    """Restormer keywords from a state dict: levels, heads (temperatures), FFN width, norm and bias; None if not."""
    embed, out = shape(sd, 'patch_embed.proj.weight'), shape(sd, 'output.weight')
    if embed is None or out is None or len(embed) != 4 or 'up4_3.body.0.weight' not in sd:
        return None
    dim = embed[0]
    heads, pairs, norms = [], [], []
    for i, names in enumerate(_LEVELS):
        blocks = [f'{name}.{j}.' for name in names for j in range(count(sd, f'{name}.'))]
        first = next(iter(blocks), None)
        heads.append(shape(sd, first + 'attn.temperature', 0) if first else (1, 2, 4, 8)[i])
        for b in blocks:
            pairs.append((shape(sd, b + 'ffn.project_out.weight', 0), shape(sd, b + 'ffn.project_out.weight', 1)))
            norms.append(b + 'norm1.body.bias' in sd)
    return dict(inp_channels=embed[1], out_channels=out[0], dim=dim,
                num_blocks=[count(sd, f'{names[0]}.') for names in _LEVELS],
                num_refinement_blocks=count(sd, 'refinement.'), heads=heads, ffn_expansion_factor=_ffn_factor(pairs),
                bias='reduce_chan_level3.bias' in sd, LayerNorm_type='WithBias' if all(norms) else 'BiasFree',
                dual_pixel_task='skip_conv.weight' in sd)


def _sample(rng):
    dim = rng.choice([4, 8])
    dual = rng.random() < 0.25
    c = rng.choice([1, 3])
    return dict(inp_channels=6 if dual else c, out_channels=3 if dual else c, dim=dim,
                num_blocks=[rng.randint(1, 2) for _ in range(4)], num_refinement_blocks=rng.randint(0, 2),
                heads=[rng.choice([1, 2, 4]) for _ in range(4)], ffn_expansion_factor=rng.choice([2.66, 2, 1.5]),
                bias=rng.random() < 0.5, LayerNorm_type=rng.choice(['WithBias', 'BiasFree']), dual_pixel_task=dual)


_OFFICIAL = {'dim': 48, 'num_blocks': [4, 6, 6, 8], 'num_refinement_blocks': 4, 'heads': [1, 2, 4, 8],
             'ffn_expansion_factor': 2.66, 'bias': False}

# ``macs_g`` is ptflops' count, which leaves out the attention's two matrix products (q k^T and attn v, ~13.9 G at
# 256x256); mmengine counts them.
describe(Restormer, purpose='four-level U-Net of channel-attention transformer blocks (deblur, derain, denoise)',
         tiny={'dim': 4, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1, 'heads': [1, 1, 1, 1]},
         detect=_detect, final_layer='output', size_multiple=lambda kwargs: 8, sample=_sample,
         channels=lambda kw: (kw.get('inp_channels', 3), kw.get('out_channels', 3)),
         assumed={'pad_mode': "'reflect' (how inputs are padded to a multiple of 8): no weights"}, configs=(
             Config('Restormer (deblur, defocus, derain)', {**_OFFICIAL, 'LayerNorm_type': 'WithBias'}, 26_126_644,
                    macs_g=141.24, macs_counter='ptflops',
                    note='params: release; MACs: ptflops (Restormer paper Table 1: 140 G), excludes the attention '
                         'products'),
             Config('Restormer (colour/real denoise)', {**_OFFICIAL, 'LayerNorm_type': 'BiasFree'}, 26_111_668,
                    note='params: release (BiasFree)'),
             Config('Restormer (grey denoise)', {**_OFFICIAL, 'LayerNorm_type': 'BiasFree', 'inp_channels': 1,
                                                 'out_channels': 1}, 26_109_076,
                    note='params: release (BiasFree, 1 channel)'),
             Config('Restormer (dual-pixel defocus)', {**_OFFICIAL, 'inp_channels': 6, 'dual_pixel_task': True},
                    26_132_548, note='params: release (6 input channels, skip_conv)'),
         ))
