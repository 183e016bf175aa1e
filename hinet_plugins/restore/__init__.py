"""Restore images from Python with any registered network (the API behind ``scripts/inference.py``).

    from hinet_plugins.restore import Restorer
    restorer = Restorer.load(opt='options/test/HINet-SIDD.yml', tile=512, self_ensemble=True, amp='bf16')
    clean = restorer(noisy)            # H x W [x 3|4] uint8 / uint16 / float array, RGB(A) or gray
    restorer = Restorer.load(checkpoint='net_g_latest.pth', tlc={'train_size': 256})   # arch read from the weights

- ``loading``: option file, arch + options + checkpoint, or a checkpoint alone -> network (release checkpoint
  formats, TLC, spandrel fallback).
- ``restoring``: image arrays and tensors -> restored ones (tiling, x8 self-ensemble, amp).
- ``autotile``: ``tile='auto'``, the largest tile that fits a memory budget (or the whole image).
- ``imagefiles``: image files read/decoded and written/encoded (16-bit, alpha, gray + alpha kept; EXIF orientation
  applied).
- ``evaluation``: a folder of restored images scored against its ground truth (``scripts/evaluate.py``).
"""
from .loading import (build_net, input_channels, load_network, load_weights, network_spec,  # noqa: F401
                      parse_key_values, read_checkpoint)
from .autotile import available_memory, parse_budget  # noqa: F401
from .imagefiles import IMG_EXTS, decode_image, encode_image, read_image, write_image  # noqa: F401
from .restoring import Restorer, amp_dtype, check_tile, ensemble_transforms, restore_image, restore_tensor  # noqa: F401

__all__ = ['Restorer', 'load_network', 'network_spec', 'build_net', 'load_weights', 'read_checkpoint',
           'restore_image', 'restore_tensor', 'amp_dtype', 'check_tile', 'ensemble_transforms', 'input_channels',
           'parse_key_values', 'available_memory', 'parse_budget', 'IMG_EXTS', 'read_image', 'decode_image',
           'encode_image', 'write_image']
