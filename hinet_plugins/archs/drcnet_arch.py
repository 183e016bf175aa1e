"""DRCNet: Dynamic Image Restoration Contrastive Network (Li et al., 2023) and its DFR block.

DRCNet is HINet's two-stage U-Net at depth 4 (SAM, CSFF, skips and decoder inherited from ``HINet``) whose encoder
blocks are Dynamic Filter Restoration blocks (``DFR``, Sec. 3.2): spatial filter x energy attention + identity.
- Structure and parameter names are the authors' release's (leefly072/DRCNet), so its state_dicts load with
  ``strict=True``; e.g. the decoder is HINet's plain up blocks (the paper says "three ResBlocks").
- Where paper and release compute differently, ``preset: paper`` (the default) follows the paper and ``preset:
  release`` reproduces the release's forward and gradients (``PRESETS``; the readings: ``DRCNet``). The release's
  option files name no preset, so they get the paper's reading.
- Every spatial statistic is taken through an ``nn.AdaptiveAvgPool2d(1)`` module (``pooled_moments``), so TLC's
  converter localises DRCNet without knowing it.
- ``dfr_variant`` builds the Table 4 ablations (absent branches have no modules); Table 4's 'base' and 'ea'
  parameter counts are not reachable by removing branches (compare the ``describe`` configs below).
"""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from .hinet_arch import HINet
from .spec import Config, count, describe, shape

MASK_MODES = ('ste', 'hard', 'soft')
REGION_STATS = ('sample', 'batch')
# variant -> (spatial filter normalisation, energy attention, identity)
DFR_VARIANTS = {'base': (False, False, False), 'sf': (True, False, False), 'ea': (False, True, False),
                'sf_identity': (True, False, True), 'sf_ea': (True, True, False), 'full': (True, True, True)}
# keywords that reproduce the authors' release (with ``mask_mode='hard'`` for their gradients too)
RELEASE_DFR = dict(mask_threshold=0.8, energy_lambda=1e-4, region_stats='batch', energy_unbiased=True)
# ``preset``: the defaults of the keywords on which the paper and the release differ (explicit keywords win)
PRESETS = {'paper': dict(mask_threshold=0.75, energy_lambda=1e-6, mask_mode='ste', region_stats='sample',
                         energy_unbiased=False),
           'release': dict(RELEASE_DFR, mask_mode='hard')}


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f'{name} must be one of {list(choices)}, got {value!r}')


def pooled_moments(pool, x, region=None, prior=0.0):
    """Mean and variance of ``x`` through ``pool`` (an AdaptiveAvgPool2d(1) or a local replacement).

    With ``region`` (a mask broadcastable to x) the moments are those of the masked pixels, mixed with the whole
    map's at weight ``prior`` (a fraction of the map): (pool(x m) + prior pool(x)) / (pool(m) + prior). The variance
    is E[(x - s)^2] - E[x - s]^2 with s the detached centre pixel per channel: exact for any s (local windows too),
    without the cancellation of the unshifted form when |mean| >> std, and no spatial reduction of its own.
    """
    h, w = x.shape[-2:]
    shift = x.detach()[..., h // 2:h // 2 + 1, w // 2:w // 2 + 1]  # numerical shift only (see the docstring)
    xs = x - shift
    sq = xs * xs
    if region is None:
        m1, m2 = pool(xs), pool(sq)
    else:
        area = pool(region) + prior
        m1, m2 = pool(xs * region), pool(sq * region)
        if prior:
            m1, m2 = m1 + prior * pool(xs), m2 + prior * pool(sq)
        m1, m2 = m1 / area, m2 / area
    return m1 + shift, (m2 - m1 * m1).clamp_min(0)


class ChannelAffine(nn.Module):
    """Per-channel scale and bias; the parameter names of an affine InstanceNorm2d (``weight``, ``bias``)."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class SpatialResponse(nn.Module):
    """M_sr = sigmoid(conv([mean_c, max_c])) (Eq. 3) and gamma, beta = conv(M_sr) (Eq. 4); release key ``norm.sa``."""

    def __init__(self, kernel_size=7):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=pad, bias=False)
        self.gamma_conv = nn.Conv2d(1, 1, kernel_size, padding=pad)
        self.beta_conv = nn.Conv2d(1, 1, kernel_size, padding=pad)

    def forward(self, x):
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        m_sr = torch.sigmoid(self.conv1(desc))
        return m_sr, self.gamma_conv(m_sr), self.beta_conv(m_sr)


class MaskedRegionNorm(nn.Module):
    """Normalises the masked region and its complement separately (Eqs. 5-7); release key ``norm.rn``.

    ``region_stats='sample'`` (paper Eqs. 5-6): per-sample, per-channel moments of each pixel's region, shrunk toward
    the map's with weight ``region_prior`` (fraction of the area): an empty region (e.g. at init) gets instance-norm
    statistics, not 0/0. 'batch' (release; Region Normalization, Yu et al. 2020): holes filled with the batch-wide
    region mean (samples affect each other), instance-normalised, ``bn_norm``, scaled by sqrt(fraction), summed.
    """

    def __init__(self, channels, region_stats='sample', eps=1e-5, region_prior=1e-3):
        super().__init__()
        _choice('region_stats', region_stats, REGION_STATS)
        self.region_stats = region_stats
        self.eps = eps
        self.region_prior = region_prior
        self.bn_norm = ChannelAffine(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x, mask):
        regions = (mask, 1 - mask)
        if self.region_stats == 'sample':
            out = 0
            for r in regions:
                mu, var = pooled_moments(self.pool, x, r, self.region_prior)
                out = out + r * (x - mu) * torch.rsqrt(var + self.eps)
            return self.bn_norm(out)
        out = 0
        for r in regions:  # release: fill the holes with the batch-wide region mean, instance-normalise, rescale
            frac = self.pool(r).mean(dim=0, keepdim=True).clamp_min(1e-12)  # empty region: contributes 0
            mu = self.pool(x * r).mean(dim=0, keepdim=True) / frac
            filled = x * r + (1 - r) * mu
            f_mu, f_var = pooled_moments(self.pool, filled)
            out = out + self.bn_norm((filled - f_mu) * torch.rsqrt(f_var + self.eps)) * frac.sqrt()
        return out


class RegionNorm(nn.Module):
    """Adaptive normalisation of the spatial filter branch: rn(x, mask) * (1 + gamma) + beta; release key ``norm``.

    (1 + gamma), as the release, where Eq. 7 writes gamma. ``mask_mode`` (the threshold has no gradient): 'hard' =
    paper/release, mask detached (``sa.conv1`` learns only through gamma, beta); 'ste' = straight-through, hard mask
    forward, M_sr's gradient backward (the map learns where to split); 'soft' = sigmoid((M_sr - t) / temperature).
    """

    def __init__(self, channels, mask_threshold=0.75, mask_mode='ste', mask_temperature=0.05, region_stats='sample',
                 region_prior=1e-3, kernel_size=7):
        super().__init__()
        _choice('mask_mode', mask_mode, MASK_MODES)
        self.channels = channels
        self.mask_threshold = mask_threshold
        self.mask_mode = mask_mode
        self.mask_temperature = mask_temperature
        self.sa = SpatialResponse(kernel_size)
        self.rn = MaskedRegionNorm(channels, region_stats, region_prior=region_prior)

    def mask(self, m_sr):
        """Degraded-pixel mask from the response map: 1 where M_sr >= t ('ste'/'hard' forward)."""
        if self.mask_mode == 'soft':
            return torch.sigmoid((m_sr - self.mask_threshold) / self.mask_temperature)
        hard = (m_sr.detach() >= self.mask_threshold).to(m_sr.dtype)
        return hard + (m_sr - m_sr.detach()) if self.mask_mode == 'ste' else hard

    def forward(self, x):
        m_sr, gamma, beta = self.sa(x)
        return self.rn(x, self.mask(m_sr)) * (1 + gamma) + beta


class EnergyAttention(nn.Module):
    """SimAM (Eqs. 8-9): x * sigmoid((x - mu)^2 / (4 (var + lambda)) + 0.5); ``unbiased``: var over N - 1 (release)."""

    def __init__(self, energy_lambda=1e-6, unbiased=False):
        super().__init__()
        self.energy_lambda = energy_lambda
        self.unbiased = unbiased
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        mu, var = pooled_moments(self.pool, x)
        if self.unbiased:
            n = x.shape[-2] * x.shape[-1]
            var = var * (n / max(n - 1, 1))
        inv_energy = (x - mu).pow(2) / (4 * (var + self.energy_lambda)) + 0.5
        return x * torch.sigmoid(inv_energy)


class DFR(nn.Module):
    """Dynamic Filter Restoration block (Sec. 3.2): spatial filter x energy attention + identity.

    out = LeakyReLU(conv_1(x) with RegionNorm on its first half) * LeakyReLU(SimAM(conv_2(x))) + identity(x) (1x1).
    A plug-in block: ``DFR(in_size, out_size)`` maps (N, in_size, H, W) -> (N, out_size, H, W) for any H, W.
    ``variant``: the Table 4 ablation (``DFR_VARIANTS``: RegionNorm, SimAM branch, identity on/off); ``use_norm=False``
    keeps the ``norm`` module but skips it (HINet's HIN range). Other keywords: ``DRCNet``, ``RegionNorm``.
    """

    def __init__(self, in_size, out_size, relu_slope=0.2, variant='full', use_norm=True, mask_threshold=0.75,
                 energy_lambda=1e-6, mask_mode='ste', mask_temperature=0.05, region_stats='sample',
                 energy_unbiased=False, region_prior=1e-3):
        super().__init__()
        _choice('dfr_variant', variant, DFR_VARIANTS)
        use_sf, use_ea, use_identity = DFR_VARIANTS[variant]
        self.variant = variant
        self.conv_1 = nn.Conv2d(in_size, out_size, 3, 1, 1)
        self.relu_1 = nn.LeakyReLU(relu_slope, inplace=False)
        if use_ea:
            self.conv_2 = nn.Conv2d(in_size, out_size, 3, 1, 1)
            self.energy = EnergyAttention(energy_lambda, energy_unbiased)
            self.relu_2 = nn.LeakyReLU(relu_slope, inplace=False)
        if use_identity:
            self.identity = nn.Conv2d(in_size, out_size, 1, 1, 0)
        if use_sf:
            self.norm = RegionNorm(out_size // 2, mask_threshold, mask_mode, mask_temperature, region_stats,
                                   region_prior)
        self.use_norm = use_sf and use_norm

    def forward(self, x):
        out = self.conv_1(x)
        if self.use_norm:
            half = self.norm.channels
            out = torch.cat([self.norm(out[:, :half]), out[:, half:]], dim=1)
        out = self.relu_1(out)
        if hasattr(self, 'conv_2'):
            out = out * self.relu_2(self.energy(self.conv_2(x)))
        if hasattr(self, 'identity'):
            out = out + self.identity(x)
        return out


class DFRDownBlock(DFR):
    """DRCNet's encoder block: DFR, + CSFF in stage 2, then HINet's 4x4 stride-2 downsampling (HINet's protocol)."""

    def __init__(self, in_size, out_size, downsample, use_csff=False, **dfr_kwargs):
        super().__init__(in_size, out_size, **dfr_kwargs)
        self.downsample = downsample
        if downsample and use_csff:
            self.csff_enc = nn.Conv2d(out_size, out_size, 3, 1, 1)
            self.csff_dec = nn.Conv2d(out_size, out_size, 3, 1, 1)
        if downsample:
            self.downsample = nn.Conv2d(out_size, out_size, kernel_size=4, stride=2, padding=1, bias=False)

    def forward(self, x, enc=None, dec=None):
        out = super().forward(x)
        if enc is not None and dec is not None:
            out = out + self.csff_enc(enc) + self.csff_dec(dec)
        if self.downsample:
            return self.downsample(out), out
        return out


@ARCH_REGISTRY.register()
class DRCNet(HINet):
    """DRCNet (Sec. 3.1): HINet's two-stage U-Net (depth 4) with DFR encoder blocks; returns [stage 1, final].

    ``preset`` sets the defaults of the five ``PRESETS`` keywords, where paper and release differ (explicit ones
    win): mask threshold t, SimAM ``energy_lambda`` and ``energy_unbiased`` (paper: var over N; release: N - 1),
    ``region_stats`` (``MaskedRegionNorm``), ``mask_mode`` (``RegionNorm``). Release readings kept in both: conv_2
    on the block input; M_sr from the half to be normalised (before normalising), from [mean, max] (Eq. 3: [max,
    avg]). ``hin_position_left/right``: levels outside skip the region norm but keep ``norm`` (its keys are in the
    release's state_dicts). Any input size: reflect-padded to a multiple of 2^(depth-1), cropped back (``HINet``).
    """

    def __init__(self, in_chn=3, wf=64, depth=4, relu_slope=0.2, hin_position_left=0, hin_position_right=4,
                 dfr_variant='full', mask_threshold=None, energy_lambda=None, mask_mode=None, mask_temperature=0.05,
                 region_stats=None, energy_unbiased=None, region_prior=1e-3, preset='paper'):
        _choice('preset', preset, PRESETS)
        given = dict(mask_threshold=mask_threshold, energy_lambda=energy_lambda, mask_mode=mask_mode,
                     region_stats=region_stats, energy_unbiased=energy_unbiased)
        # read by make_encoder_block, which HINet.__init__ calls
        self.dfr_kwargs = {k: PRESETS[preset][k] if v is None else v for k, v in given.items()}
        self.dfr_kwargs.update(variant=dfr_variant, mask_temperature=mask_temperature, region_prior=region_prior,
                               relu_slope=relu_slope)
        self.preset = preset
        super().__init__(in_chn=in_chn, wf=wf, depth=depth, relu_slope=relu_slope,
                         hin_position_left=hin_position_left, hin_position_right=hin_position_right)

    def make_encoder_block(self, in_size, out_size, level, downsample, use_csff):
        left, right = self.hin_range
        return DFRDownBlock(in_size, out_size, downsample, use_csff=use_csff, use_norm=left <= level <= right,
                            **self.dfr_kwargs)


def _detect(sd):
    """DRCNet keywords from a state dict: width, depth and the DFR variant (its branches' keys); None if not."""
    first = shape(sd, 'conv_01.weight')
    if first is None or len(first) != 4 or 'down_path_1.0.conv_1.weight' not in sd or 'up_path_1.0.up.weight' not in sd:
        return None
    block = 'down_path_1.0.'
    branches = (block + 'norm.sa.conv1.weight' in sd, block + 'conv_2.weight' in sd, block + 'identity.weight' in sd)
    variant = next((v for v, b in DFR_VARIANTS.items() if b == branches), None)
    if variant is None:
        return None
    return dict(in_chn=first[1], wf=first[0], depth=count(sd, 'down_path_1.'), dfr_variant=variant)


describe(DRCNet, purpose="HINet's two-stage U-Net with dynamic filter restoration blocks (deblur, derain)",
         tiny={'wf': 4, 'depth': 3}, detect=_detect, final_layer='last',
         sample=lambda rng: dict(in_chn=rng.choice([1, 3]), wf=rng.choice([2, 4, 6]), depth=rng.randint(2, 4),
                                 dfr_variant=rng.choice(sorted(DFR_VARIANTS))),
         size_multiple=lambda kwargs: 2 ** (kwargs.get('depth', 4) - 1), channels=lambda kw: (kw.get('in_chn', 3),) * 2,
         assumed={'preset': "'paper' (the class default); the authors' release checkpoints compute the release's "
                            "numbers with preset=release",
                  'hin_position_left': '0 and hin_position_right 4 (every level normalised): the region '
                                       "normalisation's weights exist in every block either way",
                  'relu_slope': 'LeakyReLU slope: no weights'},
         configs=(Config('DRCNet', {'wf': 64}, 18_975_798, note='params: release (paper Tables 1-5: 18.9 M); '
                                                                  'no MACs in the paper'),) + tuple(
             # paper Table 4, rounded to 0.1 M; its 'base' and 'ea' rows are not reachable by removing branches
             Config(f'DRCNet {variant} (Table 4)', {'wf': 64, 'dfr_variant': variant}, paper, release=False,
                    note='paper Table 4 (0.1 M rounding)')
             for variant, paper in (('base', 12_700_000), ('sf', 15_400_000), ('ea', 13_100_000),
                                    ('sf_identity', 15_800_000), ('sf_ea', 18_600_000))))
