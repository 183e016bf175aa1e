"""MPRNet: Multi-Stage Progressive Image Restoration (Zamir et al., CVPR 2021).

Three stages on a multi-patch hierarchy (Fig. 2): stage 1 encodes the image's four quarters, stage 2 its two halves,
stage 3 (ORSNet) the full image at full resolution; SAM joins the stages and CSFF carries features forward.

Decisions:
- Constructor keywords and parameter names are the public release's (swz30/MPRNet, one file per task differing only
  in defaults: the presets of ``describe`` below), so its checkpoints load with ``strict=True``. Where the paper's
  text differs (resampling, level widths) we follow the release: see ``DownSample``, ``UpSample``, ``Encoder``.
- CAB, CALayer, SAM (1x1, no bias here) and ``conv`` are the shared ``blocks``; CSFF (1x1, inside ``Encoder``) and
  the bilinear resampling stay MPRNet's own, because the parameter names must be the release's.
- The interface, not the weights, differs from the release: outputs in stage order (final LAST), any input size,
  ``in_c``/``out_c`` honoured (see ``MPRNet``).
- The stages are methods (``stage1_encode``, ``stage1_decode``, ``stage2``, ``stage3``) so that a derived network
  changes one step: FCN overrides ``stage1_encode`` to add its stage 0.
"""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from .blocks import CAB, SAM, checkpoint_call, conv, crop_outputs, pad_to_multiple
from .spec import Config, count, describe, shape


def cab_stack(n, n_feat, kernel_size, reduction, bias, act):
    return nn.Sequential(*[CAB(n_feat, kernel_size, reduction, bias, act) for _ in range(n)])


class DownSample(nn.Module):
    """Bilinear x0.5, then a 1x1 conv from ``in_channels`` to ``in_channels + s_factor`` (release; paper: max-pool)."""

    def __init__(self, in_channels, s_factor):
        super().__init__()
        self.down = nn.Sequential(nn.Upsample(scale_factor=0.5, mode='bilinear', align_corners=False),
                                  nn.Conv2d(in_channels, in_channels + s_factor, 1, bias=False))

    def forward(self, x):
        return self.down(x)


class UpSample(nn.Module):
    """Bilinear x2, then a 1x1 conv from ``in_channels + s_factor`` back to ``in_channels`` (release; the paper only
    says "bilinear upsampling followed by a convolution")."""

    def __init__(self, in_channels, s_factor):
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False),
                                nn.Conv2d(in_channels + s_factor, in_channels, 1, bias=False))

    def forward(self, x):
        return self.up(x)


class SkipUpSample(UpSample):
    """``UpSample`` of the decoder feature plus the (CAB-processed) encoder skip feature."""

    def forward(self, x, skip):
        return self.up(x) + skip


class Encoder(nn.Module):
    """Three levels of 2 CABs, widths ``n_feat + i * scale_unetfeats`` (release; the paper gives only the base
    width); with ``csff`` the previous stage's encoder and decoder features are added at each level through 1x1
    convs (paper Fig. 3c; HINet's CSFF is per block and 3x3)."""

    def __init__(self, n_feat, kernel_size, reduction, act, bias, scale_unetfeats, csff):
        super().__init__()
        widths = [n_feat + i * scale_unetfeats for i in range(3)]
        for i, w in enumerate(widths, 1):
            setattr(self, f'encoder_level{i}', cab_stack(2, w, kernel_size, reduction, bias, act))
        self.down12 = DownSample(widths[0], scale_unetfeats)
        self.down23 = DownSample(widths[1], scale_unetfeats)
        self.csff = csff
        if csff:
            for kind in ('enc', 'dec'):
                for i, w in enumerate(widths, 1):
                    setattr(self, f'csff_{kind}{i}', nn.Conv2d(w, w, kernel_size=1, bias=bias))

    def forward(self, x, encoder_outs=None, decoder_outs=None):
        fuse = encoder_outs is not None and decoder_outs is not None
        outs = []
        for i in range(1, 4):
            if i > 1:
                x = getattr(self, f'down{i - 1}{i}')(x)
            x = getattr(self, f'encoder_level{i}')(x)
            if fuse:
                x = x + getattr(self, f'csff_enc{i}')(encoder_outs[i - 1]) + \
                    getattr(self, f'csff_dec{i}')(decoder_outs[i - 1])
            outs.append(x)
        return outs


class Decoder(nn.Module):
    """Three levels of 2 CABs; skip features pass through a CAB (``skip_attn*``) and are added after upsampling.
    Returns the decoder features ``[dec1, dec2, dec3]`` (full resolution first)."""

    def __init__(self, n_feat, kernel_size, reduction, act, bias, scale_unetfeats):
        super().__init__()
        widths = [n_feat + i * scale_unetfeats for i in range(3)]
        for i, w in enumerate(widths, 1):
            setattr(self, f'decoder_level{i}', cab_stack(2, w, kernel_size, reduction, bias, act))
        self.skip_attn1 = CAB(widths[0], kernel_size, reduction, bias, act)
        self.skip_attn2 = CAB(widths[1], kernel_size, reduction, bias, act)
        self.up21 = SkipUpSample(widths[0], scale_unetfeats)
        self.up32 = SkipUpSample(widths[1], scale_unetfeats)

    def forward(self, outs):
        enc1, enc2, enc3 = outs
        dec3 = self.decoder_level3(enc3)
        dec2 = self.decoder_level2(self.up32(dec3, self.skip_attn2(enc2)))
        dec1 = self.decoder_level1(self.up21(dec2, self.skip_attn1(enc1)))
        return [dec1, dec2, dec3]


class ORB(nn.Module):
    """Original Resolution Block: ``num_cab`` CABs and a conv, plus identity (paper Fig. 3b)."""

    def __init__(self, n_feat, kernel_size, reduction, act, bias, num_cab):
        super().__init__()
        self.body = nn.Sequential(*cab_stack(num_cab, n_feat, kernel_size, reduction, bias, act),
                                  conv(n_feat, n_feat, kernel_size))  # bias-free in the release whatever ``bias``

    def forward(self, x):
        return self.body(x) + x


class ORSNet(nn.Module):
    """Three ORBs at ``n_feat + scale_orsnetfeats`` channels; after each ORB the stage-2 encoder and decoder
    features of one level (bilinearly upsampled to full resolution) are added through 1x1 convs (Fig. 3d)."""

    def __init__(self, n_feat, scale_orsnetfeats, kernel_size, reduction, act, bias, scale_unetfeats, num_cab):
        super().__init__()
        width = n_feat + scale_orsnetfeats
        for i in range(1, 4):
            setattr(self, f'orb{i}', ORB(width, kernel_size, reduction, act, bias, num_cab))
        for kind in ('enc', 'dec'):
            setattr(self, f'up_{kind}1', UpSample(n_feat, scale_unetfeats))
        for kind in ('enc', 'dec'):
            setattr(self, f'up_{kind}2', nn.Sequential(UpSample(n_feat + scale_unetfeats, scale_unetfeats),
                                                       UpSample(n_feat, scale_unetfeats)))
        for kind in ('enc', 'dec'):
            for i in range(1, 4):
                setattr(self, f'conv_{kind}{i}', nn.Conv2d(n_feat, width, kernel_size=1, bias=bias))

    def forward(self, x, encoder_outs, decoder_outs):
        for i in range(1, 4):
            x = getattr(self, f'orb{i}')(x)
            enc, dec = encoder_outs[i - 1], decoder_outs[i - 1]
            if i > 1:
                enc, dec = getattr(self, f'up_enc{i - 1}')(enc), getattr(self, f'up_dec{i - 1}')(dec)
            x = x + getattr(self, f'conv_enc{i}')(enc) + getattr(self, f'conv_dec{i}')(dec)
        return x


@ARCH_REGISTRY.register()
class MPRNet(nn.Module):
    """MPRNet; ``forward(x) -> [stage-1 image, stage-2 image, final image]`` (the release returns them reversed).

    Release details kept for strict loading: ONE ``nn.PReLU``, created here but not an attribute, is shared by every
    CAB, so the state_dict has more keys than tensors (every ``...body.1.weight`` aliases its slope); no biases with
    the default ``bias=False`` (the ORB's last conv and the resampling convs never have one). Any input size:
    reflect-padded to a multiple of 8 (two halvings inside a quarter) and cropped back; the release needs H, W
    divisible by 8. ``in_c``/``out_c`` are honoured where the release hard-codes 3; the output is
    ``tail(...) + input``, so they must be equal.
    """

    pad_multiple = 8
    grad_checkpoint = False  # train.grad_checkpoint: each stage method below is checkpointed (blocks.checkpoint_call)

    def __init__(self, in_c=3, out_c=3, n_feat=96, scale_unetfeats=48, scale_orsnetfeats=32, num_cab=8,
                 kernel_size=3, reduction=4, bias=False):
        super().__init__()
        if in_c != out_c:
            raise ValueError(f'MPRNet predicts a residual added to the input: in_c ({in_c}) must equal out_c ({out_c})')
        act = nn.PReLU()  # one slope shared by every CAB, deliberately not an attribute (release state_dict)
        unet = dict(kernel_size=kernel_size, reduction=reduction, act=act, bias=bias, scale_unetfeats=scale_unetfeats)
        for s in (1, 2, 3):
            setattr(self, f'shallow_feat{s}', nn.Sequential(conv(in_c, n_feat, kernel_size, bias=bias),
                                                            CAB(n_feat, kernel_size, reduction, bias, act)))
        self.stage1_encoder = Encoder(n_feat, csff=False, **unet)
        self.stage1_decoder = Decoder(n_feat, **unet)
        self.stage2_encoder = Encoder(n_feat, csff=True, **unet)
        self.stage2_decoder = Decoder(n_feat, **unet)
        self.stage3_orsnet = ORSNet(n_feat, scale_orsnetfeats, kernel_size, reduction, act, bias, scale_unetfeats,
                                    num_cab)
        self.sam12 = SAM(n_feat, kernel_size=1, bias=bias, img_channels=in_c)
        self.sam23 = SAM(n_feat, kernel_size=1, bias=bias, img_channels=in_c)
        self.concat12 = conv(n_feat * 2, n_feat, kernel_size, bias=bias)
        self.concat23 = conv(n_feat * 2, n_feat + scale_orsnetfeats, kernel_size, bias=bias)
        self.tail = conv(n_feat + scale_orsnetfeats, out_c, kernel_size, bias=bias)

    def stage1_encode(self, halves):
        """Stage-1 encoder features of each half ``[top, bottom]``: its left and right quarters are encoded
        separately and their features joined along the width (3 levels each)."""
        feats = []
        for half in halves:
            w = half.shape[-1] // 2
            left, right = (self.stage1_encoder(self.shallow_feat1(q)) for q in (half[..., :w], half[..., w:]))
            feats.append([torch.cat(pair, dim=3) for pair in zip(left, right)])
        return feats

    def stage1_decode(self, halves, encs):
        """Decode each half; SAM gives the stage-1 image and the attention features passed to stage 2."""
        decs, sam_feats, imgs = [], [], []
        for half, enc in zip(halves, encs):
            dec = self.stage1_decoder(enc)
            feat, img = self.sam12(dec[0], half)
            decs.append(dec)
            sam_feats.append(feat)
            imgs.append(img)
        return torch.cat(imgs, dim=2), sam_feats, decs

    def stage2(self, image, halves, sam_feats, encs1, decs1):
        """Encode the two halves (with CSFF from stage 1), decode the joined image; returns the stage-2 image,
        the SAM features for stage 3 and the stage-2 encoder/decoder features (for ORSNet)."""
        encs = [self.stage2_encoder(self.concat12(torch.cat([self.shallow_feat2(h), f], dim=1)), e, d)
                for h, f, e, d in zip(halves, sam_feats, encs1, decs1)]
        enc = [torch.cat(pair, dim=2) for pair in zip(*encs)]
        dec = self.stage2_decoder(enc)
        feat, img = self.sam23(dec[0], image)
        return img, feat, enc, dec

    def stage3(self, image, sam_feat, enc2, dec2):
        x = self.concat23(torch.cat([self.shallow_feat3(image), sam_feat], dim=1))
        return self.tail(self.stage3_orsnet(x, enc2, dec2)) + image

    def forward(self, x):
        image, size = pad_to_multiple(x, self.pad_multiple)
        h = image.shape[2] // 2
        halves = [image[:, :, :h], image[:, :, h:]]
        encs1 = checkpoint_call(self, self.stage1_encode, halves)
        img1, sam_feats, decs1 = checkpoint_call(self, self.stage1_decode, halves, encs1)
        img2, sam_feat, enc2, dec2 = checkpoint_call(self, self.stage2, image, halves, sam_feats, encs1, decs1)
        img3 = checkpoint_call(self, self.stage3, image, sam_feat, enc2, dec2)
        return crop_outputs([img1, img2, img3], size)


def detect_mprnet(sd, stage0=False):
    """MPRNet keywords from a state dict (``stage0``: FCN's extra branch must be there / absent); None if not."""
    first = shape(sd, 'shallow_feat1.0.weight')
    if first is None or len(first) != 4 or ('shallow_feat0.0.weight' in sd) != stage0 or \
            'stage3_orsnet.orb1.body.0.CA.conv_du.0.weight' not in sd:
        return None
    n_feat, in_c, kernel_size = first[0], first[1], first[-1]
    level2 = shape(sd, 'stage1_encoder.encoder_level2.0.body.0.weight', 0)
    orsnet = shape(sd, 'stage3_orsnet.orb1.body.0.body.0.weight', 0)
    if level2 is None or orsnet is None:
        return None
    squeezed = shape(sd, 'shallow_feat1.1.CA.conv_du.0.weight', 0)
    # the smallest reduction that gives the stored squeeze width at the three U-Net widths and the ORSNet width
    widths = [n_feat + i * (level2 - n_feat) for i in range(3)] + [orsnet]
    observed = [shape(sd, 'stage1_encoder.encoder_level%d.0.CA.conv_du.0.weight' % i, 0) for i in (1, 2, 3)] + \
        [shape(sd, 'stage3_orsnet.orb1.body.0.CA.conv_du.0.weight', 0)]
    reduction = next((r for r in range(1, n_feat + 1) if all(w // r == o for w, o in zip(widths, observed))),
                     n_feat // max(squeezed or 1, 1))
    return dict(in_c=in_c, out_c=shape(sd, 'tail.weight', 0), n_feat=n_feat, scale_unetfeats=level2 - n_feat,
                scale_orsnetfeats=orsnet - n_feat, num_cab=count(sd, 'stage3_orsnet.orb1.body.') - 1,
                kernel_size=kernel_size, reduction=reduction, bias='shallow_feat1.0.bias' in sd)


def sample_mprnet(rng):
    c = rng.choice([1, 3])
    return dict(in_c=c, out_c=c, n_feat=rng.choice([4, 6, 8]), scale_unetfeats=rng.choice([2, 4]),
                scale_orsnetfeats=rng.choice([2, 4]), num_cab=rng.randint(1, 2), kernel_size=rng.choice([1, 3]),
                reduction=rng.choice([1, 2]), bias=rng.random() < 0.5)


def mprnet_channels(kwargs):
    return kwargs.get('in_c', 3), kwargs.get('out_c', 3)


describe(MPRNet, purpose='three-stage multi-patch network with supervised attention (deblur, denoise, derain)',
         tiny={'n_feat': 8, 'scale_unetfeats': 4, 'scale_orsnetfeats': 4, 'num_cab': 1, 'reduction': 2},
         detect=detect_mprnet, final_layer='tail', size_multiple=lambda kwargs: 8, channels=mprnet_channels,
         sample=sample_mprnet, configs=(
             Config('MPRNet deblur (GoPro)', {'n_feat': 96, 'scale_unetfeats': 48, 'scale_orsnetfeats': 32},
                    20_127_073, macs_g=760.11,
                    note='MACs: HINet paper Table 4; params: release (MPRNet paper Table 6: 20.1 M)'),
             Config('MPRNet denoise (SIDD)', {'n_feat': 80, 'scale_unetfeats': 48, 'scale_orsnetfeats': 32},
                    15_741_025, macs_g=573.50, note='MACs: HINet paper Table 4; params: release'),
             Config('MPRNet derain (Rain13k)', {'n_feat': 40, 'scale_unetfeats': 20, 'scale_orsnetfeats': 16},
                    3_637_249, macs_g=141.28, note='MACs: HINet paper Table 4; params: release'),
         ))
