"""FCN: the feature catcher network (Zhang et al., "A feature catcher with excellent deblurring effects", ICBDT 2022).

The paper's text does not pin the network down (its Figs. 2-5 are not in the text); what it is comes from the
authors' release (XinyueZhangqdu/FCN, class ``Net``): MPRNet-deblur plus a stage 0 on 8 patches whose features join
stage 1's level-1 encoder features (``FCN``). This class subclasses ``MPRNet`` and inherits its SAM, ORSNet, CSFF,
padding to a multiple of 8 and stage-order outputs.

Decisions:
- Parameter names are the release's, so its checkpoints (``{'epoch', 'state_dict', 'optimizer'}``: option files
  say ``param_key_g: state_dict``) load strictly, except ``stage1_decoder1``, a decoder the release builds but never
  calls: it is not built here and its keys are dropped, with a logged note, on loading.
- ``layernorm_scope='sample'`` (default) replaces the release's batch-wide LayerNorm by a per-sample one: identical
  for batches of one, batch independent in training, localisable by TLC; 'batch' reproduces the release.
- The gate's widths follow ``n_feat`` (release: hard-coded 96 -> 48 -> 96, the same at the paper's width).
"""
import torch
from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F

from .blocks import CAB, conv
from .mprnet_arch import MPRNet, detect_mprnet, mprnet_channels, sample_mprnet
from .spec import Config, describe

LAYERNORM_SCOPES = ('sample', 'batch')
RELEASE_UNUSED_PREFIX = 'stage1_decoder1.'  # built but never called by the release


class BatchLayerNorm(nn.Module):
    """The release's LayerNorm: zero mean, unit variance over the whole tensor, batch included (no affine)."""

    def __init__(self, eps=1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, x.shape, eps=self.eps)


@ARCH_REGISTRY.register()
class FCN(MPRNet):
    """MPRNet-deblur + stage 0; ``forward(x) -> [stage-1 image, stage-2 image, final image]`` (the release: reversed).

    Stage 0: each (H/2) x W half of stage 1 is cut into four (H/2) x (W/4) patches, each run through the processing
    block ``shallow_feat0`` (Sec. 3.1: 3x3 conv + a CAB with its own SELU; its channel attention keeps ReLU, as in the
    release) and joined along the width (``stage0``). The top map is gated (``gate``) and added to stage 1's top
    level-1 encoder feature, the bottom map as it is to the bottom one; stage 1's decoder and stage 2's CSFF both use
    the sums (``stage1_encode``; the release overwrites its feature list in place). Paper to code: multi-stage
    attention (Sec. 3.4) = SAM, raw information mechanism (Sec. 3.5) = ORSNet fed by stage 2; the query-key
    mechanism (Sec. 3.2) has no module in the release and is read as the sigmoid gate and the gated map. The
    multiple of 8 makes the splits exact (H/2, W/4, two halvings of the stage-1 quarters).
    ``gate`` (enhanced feature extraction, Sec. 3.3): ``attention_norm`` (no parameters, no state_dict key, as in the
    release), then 1x1 convs n_feat -> n_feat/2 -> n_feat, bias-free whatever ``bias`` (release). ``layernorm_scope``:
    'sample' = ``nn.GroupNorm(1, C, affine=False)`` (eps 1e-5) per sample over (C, H, W); 'batch' = the release's
    ``nn.LayerNorm(x.size())`` built in forward, over the batch too (``BatchLayerNorm``; TLC reports it as global).
    Release checkpoints' ``stage1_decoder1.*`` keys are dropped in ``_load_from_state_dict``, so every
    ``load_state_dict`` accepts them.
    """

    ignored_checkpoint_prefixes = (RELEASE_UNUSED_PREFIX,)  # dropped on load (also left out of mismatch reports)

    def __init__(self, in_c=3, out_c=3, n_feat=96, scale_unetfeats=48, scale_orsnetfeats=32, num_cab=8,
                 kernel_size=3, reduction=4, bias=False, layernorm_scope='sample'):
        if layernorm_scope not in LAYERNORM_SCOPES:
            raise ValueError(f'layernorm_scope must be one of {list(LAYERNORM_SCOPES)}, got {layernorm_scope!r}')
        if n_feat < 2:
            raise ValueError(f'n_feat: FCN halves the width in its gate, so n_feat must be >= 2, got {n_feat}')
        super().__init__(in_c, out_c, n_feat, scale_unetfeats, scale_orsnetfeats, num_cab, kernel_size, reduction,
                         bias)
        self.layernorm_scope = layernorm_scope
        self.shallow_feat0 = nn.Sequential(conv(in_c, n_feat, kernel_size, bias=bias),
                                           CAB(n_feat, kernel_size, reduction, bias, nn.SELU()))
        self.attention_norm = (nn.GroupNorm(1, n_feat, eps=1e-5, affine=False) if layernorm_scope == 'sample'
                               else BatchLayerNorm())
        self.attention_down = conv(n_feat, n_feat // 2, 1)
        self.attention_up = conv(n_feat // 2, n_feat, 1)

    def stage0(self, half):
        """Processing block on the four (H/2) x (W/4) patches of one half, joined along the width."""
        w = half.shape[-1] // 4
        return torch.cat([self.shallow_feat0(half[..., i * w:(i + 1) * w]) for i in range(4)], dim=3)

    def gate(self, feat):
        """Enhanced feature extraction: LayerNorm -> 1x1 down -> 1x1 up -> sigmoid, times the map."""
        return feat * torch.sigmoid(self.attention_up(self.attention_down(self.attention_norm(feat))))

    def stage1_encode(self, halves):
        """MPRNet's stage-1 encoder features with stage 0 added at level 1 (gated on top, as is at the bottom)."""
        encs = super().stage1_encode(halves)
        top, bottom = (self.stage0(h) for h in halves)
        encs[0][0] = encs[0][0] + self.gate(top)
        encs[1][0] = encs[1][0] + bottom
        return encs

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        unused = [k for k in state_dict
                  if k.startswith(prefix) and k[len(prefix):].startswith(self.ignored_checkpoint_prefixes)]
        if unused:
            for key in unused:  # ``state_dict`` is load_state_dict's own copy, meant to be modified here
                del state_dict[key]
            get_root_logger().info(
                f'FCN: dropped {len(unused)} checkpoint keys {prefix}{RELEASE_UNUSED_PREFIX}* (a decoder that the '
                'authors\' release builds but never uses); every other key is loaded as usual')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _detect(sd):
    """MPRNet's keywords plus FCN's stage 0 (whose keys no MPRNet has); the release's unused decoder is ignored."""
    return detect_mprnet({k: v for k, v in sd.items() if not k.startswith(RELEASE_UNUSED_PREFIX)}, stage0=True)


describe(FCN, purpose='MPRNet-deblur with a stage-0 feature catcher (deblur)',
         tiny={'n_feat': 8, 'scale_unetfeats': 4, 'scale_orsnetfeats': 4, 'num_cab': 1, 'reduction': 2},
         detect=_detect, final_layer='tail', size_multiple=lambda kwargs: 8, channels=mprnet_channels,
         sample=sample_mprnet,
         assumed={'layernorm_scope': "'sample' (the release's batch-wide LayerNorm has no weights either)"},
         configs=(
             Config('FCN (GoPro)', {'n_feat': 96, 'scale_unetfeats': 48, 'scale_orsnetfeats': 32}, 20_309_377,
                    note='params: paper Sec. 4.3.1, 20.309 M (the release without its unused stage1_decoder1); '
                         'the paper gives no MACs'),
         ))
