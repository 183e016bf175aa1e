"""FCN: the feature catcher network (Zhang et al., "A feature catcher with excellent deblurring effects", ICBDT 2022).

The paper (Sec. 3, Figs. 2-5; the figures are not in its text) describes four stages on patches of 8, 4, 2 and 1
pieces. What the network is comes from the authors' release (XinyueZhangqdu/FCN, class ``Net``): MPRNet-deblur
(see ``mprnet_arch``; this class subclasses ``MPRNet``) plus a **stage 0**:

- The image is cut into 8 patches of (H/2) x (W/4): each stage-1 quarter split into a left and a right half. Each
  goes through the "processing block" (Sec. 3.1, Fig. 3a) ``shallow_feat0`` = 3x3 conv (3 -> n_feat) + a CAB whose
  activation is SELU (MPRNet's CAB with its own ``nn.SELU`` instead of the shared PReLU; its channel attention
  keeps ReLU, as in the release). The 8 maps are joined along the width into a top and a bottom map of
  (H/2) x W (the sizes of stage 1's top and bottom level-1 encoder features).
- The top map is gated by the "enhanced feature extraction module" (Sec. 3.3, Fig. 4a): LayerNorm without affine
  parameters (``attention_norm``) -> 1x1 conv n_feat -> n_feat/2 (``attention_down``) -> 1x1 conv n_feat/2 -> n_feat
  (``attention_up``) -> sigmoid, times the map. The gated top map is added to stage 1's top level-1 encoder
  feature, the bottom map (not gated) to the bottom one. The modified features are decoded by stage 1 and also feed
  stage 2's cross-stage feature fusion (the release overwrites its feature list in place; here ``stage1_encode``,
  whose result both consumers use, is overridden).
- The rest is MPRNet: SAM between stages (the paper's multi-stage attention mechanism, Sec. 3.4) and the ORSNet of
  stage 3 fed by the stage-2 encoder/decoder features (the raw information mechanism, Sec. 3.5). The paper's
  "query-key mechanism" (Sec. 3.2) has no module of its own in the release; its query/key maps are read here as
  the sigmoid gate and the gated map.

Parameters: 20,309,377 at the paper's width (n_feat 96, scale_unetfeats 48, scale_orsnetfeats 32, 8 CABs,
reduction 4, no biases) = the paper's 20.309 M (Sec. 4.3.1) = MPRNet-deblur 20,127,073 + ``shallow_feat0`` 173,088
+ ``attention_down``/``attention_up`` 4,608 each. The release also builds a decoder ``stage1_decoder1``
(1,517,184 parameters, 21,826,561 in all) that its forward never calls; it is not built here, and its keys
(``ignored_checkpoint_prefixes``) are dropped, with a logged note, when a release checkpoint is loaded
(``_load_from_state_dict``, so any ``load_state_dict`` does it); every other key loads strictly, and the model's
mismatch report leaves those keys out. ``attention_norm`` has no parameters (no state_dict key, as in the release).
Release checkpoints are ``{'epoch', 'state_dict', 'optimizer'}`` with MPRNet-style names, so an option file loads
them with ``param_key_g: state_dict`` (basicsr strips the ``module.`` prefix). MACs at 1x3x256x256: 771.4 G
(``scripts/complexity.py --only FCN``; MPRNet-deblur 760.0 G); the paper gives none.

Differences from the release (choices, not weights):
- Width: the release hard-codes the gate's convs as 96 -> 48 -> 96; here they are n_feat -> n_feat // 2 -> n_feat
  (identical at the paper's width). Like the release they are bias-free whatever ``bias`` says.
- LayerNorm: the release builds ``nn.LayerNorm(x.size())`` inside forward, normalising over the whole tensor
  *including the batch*, so a sample's output depends on the other samples of its batch (and on the batch size).
  ``layernorm_scope='sample'`` (default) normalises each sample over (C, H, W) with ``nn.GroupNorm(1, C,
  affine=False)`` (eps 1e-5 as LayerNorm's): identical to the release for batches of one (test time), batch
  independent in training, and a module that TLC can make local. ``layernorm_scope='batch'`` reproduces the release
  (``BatchLayerNorm``; TLC reports it as a global op it cannot localise).
- Outputs in stage order ``[stage 1, stage 2, final]`` (the release returns them reversed), as every network here.
- Any input size: reflect-padded to a multiple of 8 and cropped back (inherited from ``MPRNet``). 8 makes every
  split exact: H/2 and W/4 for stage 0, and two halvings of the (H/2) x (W/2) stage-1 quarters.

TLC: the channel attentions (``nn.AdaptiveAvgPool2d(1)``, also those of the processing block) and the per-sample
LayerNorm gate (``nn.GroupNorm``) are module types the converter swaps (``FCNLocal`` in ARCH_REGISTRY).
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
    """See the module docstring. ``forward(x) -> [stage-1 image, stage-2 image, final image]``."""

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
