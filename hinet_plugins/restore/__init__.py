"""Restore images from Python with any registered network (the API behind ``scripts/inference.py``).

    from hinet_plugins.restore import Restorer
    restorer = Restorer.load(opt='options/test/HINet-SIDD.yml', tile=512, self_ensemble=True, amp='bf16')
    clean = restorer(noisy)            # H x W [x 3|4] uint8 / uint16 / float array, RGB(A) or gray

    restorer = Restorer.load(arch='HINet', arch_opt={'wf': 32}, checkpoint='HINet-SIDD-0.5x.pth',
                             tlc={'train_size': 256, 'base_size': 384}, device='cuda', amp='fp16')

    restorer = Restorer.load(checkpoint='net_g_latest.pth')   # architecture read from the weights

- ``loading``: option file, arch + options + checkpoint, or a checkpoint alone -> network (release checkpoint
  formats, TLC, spandrel fallback).
- ``restoring``: image arrays and tensors -> restored ones (tiling, x8 self-ensemble, amp).
"""
from .loading import (build_net, input_channels, load_network, load_weights, network_spec,  # noqa: F401
                      parse_key_values, read_checkpoint)
from .restoring import Restorer, amp_dtype, check_tile, ensemble_transforms, restore_image, restore_tensor  # noqa: F401

__all__ = ['Restorer', 'load_network', 'network_spec', 'build_net', 'load_weights', 'read_checkpoint',
           'restore_image', 'restore_tensor', 'amp_dtype', 'check_tile', 'ensemble_transforms', 'input_channels',
           'parse_key_values']
