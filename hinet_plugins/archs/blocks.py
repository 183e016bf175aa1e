"""Building blocks shared by every architecture of this package (one parametrised copy each).

Where two papers' versions of a block differ (HINet's SAM uses 3x3 convs with bias, MPRNet's 1x1 without),
the difference is a constructor argument. Global aggregations are expressed as modules
(``nn.AdaptiveAvgPool2d``, ``nn.InstanceNorm2d``, ...) so that the TLC converter can find and localise them.
"""
import torch
import torch.utils.checkpoint
from torch import nn
from torch.nn import functional as F


def conv(in_channels, out_channels, kernel_size, bias=False, stride=1):
    """'Same' convolution (odd kernel)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)


class SAM(nn.Module):
    """Supervised Attention Module (MPRNet, Sec. 3.2).

    The stage's features predict a residual image (``conv2``) that is supervised; its sigmoid re-projection
    (``conv3``) gates the features passed to the next stage. MPRNet uses 1x1 convs without bias; HINet
    replaces them with 3x3 convs with bias (HINet Sec. 3.1).
    """

    def __init__(self, n_feat, kernel_size=1, bias=False, img_channels=3):
        super().__init__()
        self.conv1 = conv(n_feat, n_feat, kernel_size, bias=bias)
        self.conv2 = conv(n_feat, img_channels, kernel_size, bias=bias)
        self.conv3 = conv(img_channels, n_feat, kernel_size, bias=bias)

    def forward(self, x, x_img):
        img = self.conv2(x) + x_img
        gate = torch.sigmoid(self.conv3(img))
        return self.conv1(x) * gate + x, img


class CALayer(nn.Module):
    """Channel attention (squeeze-excitation): global average pool -> 1x1 down -> act -> 1x1 up -> sigmoid."""

    def __init__(self, channel, reduction=16, bias=False, act=None):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1, padding=0, bias=bias),
            act if act is not None else nn.ReLU(inplace=True),
            nn.Conv2d(channel // reduction, channel, 1, padding=0, bias=bias),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))


class CAB(nn.Module):
    """Channel Attention Block: conv -> act -> conv -> CA, plus identity.

    ``CA`` is registered before ``body`` so that the state_dict key order matches the MPRNet release. ``act`` is
    passed in (not created here) because the MPRNet release shares one PReLU between all CABs.
    """

    def __init__(self, n_feat, kernel_size, reduction, bias, act):
        super().__init__()
        self.CA = CALayer(n_feat, reduction, bias=bias)
        self.body = nn.Sequential(conv(n_feat, n_feat, kernel_size, bias=bias), act,
                                  conv(n_feat, n_feat, kernel_size, bias=bias))

    def forward(self, x):
        return self.CA(self.body(x)) + x


def pad_to_multiple(x, multiple, min_size=0):
    """Reflect-pad H and W (bottom/right) up to a multiple (and at least ``min_size``); returns the padded tensor
    and the original size.

    Falls back to replicate padding where the image is too small for reflection.
    """
    h, w = x.shape[-2:]
    ph, pw = max((-h) % multiple, min_size - h), max((-w) % multiple, min_size - w)
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = 'reflect' if (ph < h and pw < w) else 'replicate'
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def crop_outputs(outputs, size):
    h, w = size
    return [o[..., :h, :w] for o in outputs]


def checkpoint_call(net, fn, *args):
    """``fn(*args)``, under activation checkpointing when ``net.grad_checkpoint`` is on and grads are recorded.

    How an architecture supports ``train.grad_checkpoint`` (set by the model on the bare network): declare the
    class attribute ``grad_checkpoint = False`` and call each stage segment (encoder, decoder, ...) as
    ``checkpoint_call(self, self._encode, ...)``. Only segment inputs/outputs are kept; the rest is recomputed
    in backward (non-reentrant, so any nesting of tensors in arguments and results works). BatchNorm running
    statistics are updated again during the recomputation.
    """
    if getattr(net, 'grad_checkpoint', False) and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


NORM_TYPES = ('none', 'hin', 'in', 'bn', 'ln', 'gn', 'ibn')


class UNetConvBlock(nn.Module):
    """HINet's encoder/decoder block (HINet Fig. 3).

    conv_1 (3x3) -> normalisation -> LeakyReLU -> conv_2 (3x3) -> LeakyReLU, plus a 1x1 ``identity`` shortcut.
    ``norm_type='hin'`` is the Half Instance Normalization block: an affine InstanceNorm on the first half of the
    channels, the other half untouched. The other choices are the normalisations of HINet Table 6
    ('ln' = one group over C, H, W; 'gn' = ``gn_groups`` groups; 'ibn' = IN on one half, BN on the other).
    In stage 2 of HINet the block also receives the stage-1 encoder/decoder features through 3x3 CSFF convs,
    and ``num_res_blocks`` residual blocks may follow (HINet Sec. 4.4 "Wider, Deeper").
    """

    def __init__(self, in_size, out_size, downsample, relu_slope, use_csff=False, norm_type='none',
                 gn_groups=8, num_res_blocks=0):
        super().__init__()
        if norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type must be one of {NORM_TYPES}, got '{norm_type}'")
        self.downsample = downsample
        self.norm_type = norm_type
        self.identity = nn.Conv2d(in_size, out_size, 1, 1, 0)
        self.use_csff = use_csff
        self.conv_1 = nn.Conv2d(in_size, out_size, kernel_size=3, padding=1, bias=True)
        self.relu_1 = nn.LeakyReLU(relu_slope, inplace=False)
        self.conv_2 = nn.Conv2d(out_size, out_size, kernel_size=3, padding=1, bias=True)
        self.relu_2 = nn.LeakyReLU(relu_slope, inplace=False)
        if downsample and use_csff:
            self.csff_enc = nn.Conv2d(out_size, out_size, 3, 1, 1)
            self.csff_dec = nn.Conv2d(out_size, out_size, 3, 1, 1)
        half = out_size // 2
        if norm_type in ('hin', 'ibn'):
            self.norm = nn.InstanceNorm2d(half, affine=True)
            if norm_type == 'ibn':
                self.norm_bn = nn.BatchNorm2d(out_size - half)
        elif norm_type == 'in':
            self.norm = nn.InstanceNorm2d(out_size, affine=True)
        elif norm_type == 'bn':
            self.norm = nn.BatchNorm2d(out_size)
        elif norm_type == 'ln':
            self.norm = nn.GroupNorm(1, out_size)
        elif norm_type == 'gn':
            self.norm = nn.GroupNorm(gn_groups, out_size)
        if num_res_blocks:
            self.res_blocks = nn.Sequential(*[ResBlock(out_size, relu_slope) for _ in range(num_res_blocks)])
        if downsample:
            self.downsample = nn.Conv2d(out_size, out_size, kernel_size=4, stride=2, padding=1, bias=False)

    def _normalise(self, out):
        if self.norm_type in ('hin', 'ibn'):
            half = self.norm.num_features
            first, second = out[:, :half], out[:, half:]
            second = self.norm_bn(second) if self.norm_type == 'ibn' else second
            return torch.cat([self.norm(first), second], dim=1)
        if self.norm_type == 'none':
            return out
        return self.norm(out)

    def forward(self, x, enc=None, dec=None):
        out = self.relu_1(self._normalise(self.conv_1(x)))
        out = self.relu_2(self.conv_2(out))
        out = out + self.identity(x)
        if enc is not None and dec is not None:
            out = out + self.csff_enc(enc) + self.csff_dec(dec)
        if hasattr(self, 'res_blocks'):
            out = self.res_blocks(out)
        if self.downsample:
            return self.downsample(out), out
        return out


class ResBlock(nn.Module):
    """conv3x3 -> LeakyReLU -> conv3x3, plus identity (no normalisation, as in HINet's decoder)."""

    def __init__(self, channels, relu_slope):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(relu_slope, inplace=False),
                                  nn.Conv2d(channels, channels, 3, 1, 1))

    def forward(self, x):
        return x + self.body(x)


class UNetUpBlock(nn.Module):
    """2x2 stride-2 transposed conv, concat with the skip feature, then a plain (never normalised) conv block."""

    def __init__(self, in_size, out_size, relu_slope, norm_type='none', num_res_blocks=0, use_skip=True):
        super().__init__()
        self.use_skip = use_skip
        self.up = nn.ConvTranspose2d(in_size, out_size, kernel_size=2, stride=2, bias=True)
        self.conv_block = UNetConvBlock(out_size * 2 if use_skip else out_size, out_size, False, relu_slope,
                                        norm_type=norm_type, num_res_blocks=num_res_blocks)

    def forward(self, x, bridge=None):
        up = self.up(x)
        if self.use_skip:
            up = torch.cat([up, bridge], 1)
        return self.conv_block(up)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel of an (N, C, H, W) map (biased variance), as NAFNet's
    ``LayerNorm2d`` (eps 1e-6) and Restormer's ``WithBias_LayerNorm`` (eps 1e-5) compute it.

    The mean-subtracting form runs torch's fused ``F.layer_norm`` on a channels-last view (same values as the
    releases' hand-written versions, without their custom autograd function). ``bias_free=True`` is Restormer's
    ``BiasFree_LayerNorm``: ``x / sqrt(var + eps) * weight`` where the variance is centred but the mean is **not**
    subtracted from ``x``, and there is no bias; torch has no fused op for that, so it is written out.
    Per pixel, so it is not a global operation (TLC leaves it alone).
    """

    def __init__(self, num_channels, eps=1e-6, bias_free=False):
        super().__init__()
        self.eps = eps
        self.bias_free = bias_free
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = None if bias_free else nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        if self.bias_free:
            var = x.var(dim=1, keepdim=True, unbiased=False)
            return x * torch.rsqrt(var + self.eps) * self.weight[:, None, None]
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)  # constant shape: ONNX-traceable
        return y.permute(0, 3, 1, 2)


class TransposedAttention(nn.Module):
    """The global part of Restormer's MDTA, as a parameter-free module (so TLC can swap it; no state_dict keys).

    ``forward(q, k, v, temperature)`` with q, k, v of shape (N, heads, C_h, H, W) and ``temperature`` broadcastable
    to (N, heads, C_h, C_h): per head, q and k are L2-normalised over the H*W positions, the C_h x C_h attention
    ``softmax(q k^T * temperature)`` mixes the channels of v. Returns (N, heads, C_h, H, W). Both products sum over
    all H*W positions, which is what makes the block global (TLC paper Sec. 3.3).
    """

    @staticmethod
    def attention(q, k, temperature):
        """(N, heads, C_h, L) normalised-correlation softmax over L positions -> (N, heads, C_h, C_h)."""
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return (q @ k.transpose(-2, -1) * temperature).softmax(dim=-1)

    def forward(self, q, k, v, temperature):
        attn = self.attention(q.flatten(-2), k.flatten(-2), temperature)
        return (attn @ v.flatten(-2)).view(v.shape)
