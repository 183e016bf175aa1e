"""basicsr's frozen VGG19 feature extractor with weights from a local file only (the contrastive losses' VGG).

basicsr's ``VGGFeatureExtractor`` loads its module-level ``VGG_PRETRAIN_PATH`` when that file exists and
downloads the torchvision weights otherwise; nothing may be downloaded at run time here, so the path is pointed
at the (checked) local file for the construction only, under a lock, and restored afterwards. Errors are
``ValueError``s naming ``vgg_weights`` (the option layer adds the option key). Drop when basicsr takes a weights
path.
"""
import os
import threading
import warnings
from typing import Optional

from basicsr.archs import vgg_arch

_VGG_LOCK = threading.Lock()


def vgg_weights_problem(path) -> Optional[str]:
    """Why ``path`` cannot serve as the VGG weights file (a sentence after 'vgg_weights'), or None."""
    if not path:
        return ('is not set; give a local torchvision vgg19 state_dict (e.g. '
                'experiments/pretrained_models/vgg19-dcbb9e9d.pth); weights are never downloaded')
    if not os.path.isfile(str(path)):
        return f"'{path}' does not exist (a local torchvision vgg19 state_dict is needed; nothing is downloaded)"
    return None


def build_vgg_extractor(vgg_weights, layers, use_input_norm=False, range_norm=False, owner='loss'):
    """basicsr's VGGFeatureExtractor (vgg19, frozen, ``layers``) with weights from ``vgg_weights``; never
    downloads. ``ValueError`` ('<owner>: vgg_weights ...') when the file is missing or not a vgg19 state_dict."""
    problem = vgg_weights_problem(vgg_weights)
    if problem:
        raise ValueError(f'{owner}: vgg_weights {problem}')
    with _VGG_LOCK, warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # torchvision's 'pretrained' deprecation, raised inside basicsr
        saved = vgg_arch.VGG_PRETRAIN_PATH
        vgg_arch.VGG_PRETRAIN_PATH = os.path.abspath(vgg_weights)
        try:
            return vgg_arch.VGGFeatureExtractor(list(layers), vgg_type='vgg19', use_input_norm=use_input_norm,
                                                range_norm=range_norm, requires_grad=False)
        except Exception as err:  # noqa: BLE001  (any load failure means the same to the user)
            raise ValueError(f"{owner}: vgg_weights '{vgg_weights}' is not a torchvision vgg19 state_dict "
                             f'({type(err).__name__}: {str(err)[:300]})') from None
        finally:
            vgg_arch.VGG_PRETRAIN_PATH = saved
