"""``tile='auto'``: the largest tile whose forward fits a memory budget, or the whole image when it fits.

Budget (``memory_budget``: bytes or a size such as '2GB', '1.5GiB', '512MB'; by default read before each image):
- CUDA: 90 % of the free device memory (``torch.cuda.mem_get_info``) + what torch's allocator caches unused;
- CPU: half of the available RAM (``MemAvailable`` in /proc/meminfo, or psutil's ``available``).
It bounds what restoring adds to the process (weights and libraries are already loaded): the image-sized buffers
(input, output, blending weights, ensemble sum: ``IMAGE_BYTES`` per pixel) + the network's forward on one tile.

The forward's memory is measured once per network and setting with small forwards (the first one's one-off
costs count in ``fixed``) and fitted as ``fixed + per_pixel * pixels``: on CUDA by ``max_memory_allocated``; on
Linux CPUs by the peak RSS (VmHWM, reset through /proc/self/clear_refs after freed heap is returned with
malloc_trim); elsewhere it is bounded from above by the sum of the leaf modules' outputs. Tiles are multiples
of ``TILE_STEP`` and run one at a time; 90 % of the room is used (``SAFETY``) for what the linear fit misses
(padding to the nets' multiples, allocator slack).
"""
import ctypes
import math
import re
from typing import Optional, Tuple, Union

import torch
from torch import nn

from ..errors import ConfigError
from ..utils.amp import autocast

PROBES = (128, 256)  # probe sides (square, multiples of every net's padding)
TILE_STEP = 32
SAFETY = 0.9
IMAGE_BYTES = {False: 60, True: 84}  # per pixel of a colour image, without / with the x8 ensemble (float32 copies)
TILE_BYTES = 48  # per tile pixel: the crop, its prediction and the weighted prediction (float32 RGB)
UNITS = {'': 1, 'b': 1, 'k': 10**3, 'kb': 10**3, 'kib': 2**10, 'm': 10**6, 'mb': 10**6, 'mib': 2**20,
         'g': 10**9, 'gb': 10**9, 'gib': 2**30, 't': 10**12, 'tb': 10**12, 'tib': 2**40}


def parse_budget(value: Optional[Union[int, float, str]], key: str = 'memory_budget') -> Optional[int]:
    """None, bytes (int) or '2GB' / '1.5GiB' / '512MB' -> bytes or None; anything else -> ConfigError."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(value)
    match = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*', str(value))
    if match and match.group(2).lower() in UNITS and float(match.group(1)) > 0:
        return int(float(match.group(1)) * UNITS[match.group(2).lower()])
    raise ConfigError(f"{key}: expected a positive size such as 2GB, 512MB or 1.5GiB (bytes), got {value!r}")


def format_bytes(n: float) -> str:
    return f'{n / 2**30:.2f} GiB' if n >= 2**30 else f'{n / 2**20:.0f} MiB'


def available_memory(device: Union[str, torch.device]) -> int:
    """The default budget on ``device`` (see the module doc), in bytes."""
    device = torch.device(device)
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(0.9 * (free + cached))
    try:
        with open('/proc/meminfo') as f:
            fields = dict(line.split(':', 1) for line in f)
        available = int(fields['MemAvailable'].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            import psutil
        except ImportError:
            raise ConfigError('memory_budget: cannot read the available RAM here (no /proc/meminfo, no psutil); '
                              'give memory_budget (--memory-budget)') from None
        available = psutil.virtual_memory().available
    return available // 2


def _status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise OSError(field)


def _trim_heap():
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _cpu_peak(run, x):
    """Bytes the call adds at its peak: VmHWM after resetting it (Linux), else the leaf outputs' sum."""
    try:
        _trim_heap()
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        base = _status_kib('VmRSS')
        run(x)
        return max(_status_kib('VmHWM') - base, 0)
    except OSError:
        pass
    total = [x.numel() * x.element_size()]

    def add(_module, _inp, out):
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if torch.is_tensor(t):
                total[0] += t.numel() * t.element_size()
    return _with_leaf_hooks(run, x, add, total)


def _with_leaf_hooks(run, x, hook, total):
    leaves = [m for m in run.net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        run(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _cuda_peak(run, x):
    torch.cuda.synchronize(x.device)
    base = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    run(x)
    torch.cuda.synchronize(x.device)
    return max(torch.cuda.max_memory_allocated(x.device) - base, 0)


class _Forward:
    def __init__(self, net, amp):
        self.net, self.amp = net, amp

    def __call__(self, x):
        with torch.no_grad(), autocast(x.device.type, self.amp):
            out = self.net(x)
        del out


def measure_forward(net: nn.Module, device: Union[str, torch.device], channels: int,
                    amp: Optional[torch.dtype] = None, batch: int = 1) -> Tuple[float, float]:
    """(fixed bytes, bytes per pixel) of one forward of ``batch`` x ``channels`` images (see the module doc)."""
    device = torch.device(device)
    run = _Forward(net, amp)
    peak = _cuda_peak if device.type == 'cuda' else _cpu_peak
    peaks, first = [], None
    for side in PROBES:
        x = torch.rand(batch, channels, side, side, device=device)
        if first is None:  # lazy initialisations and workspaces: paid once, by the first image
            first = peak(run, x)
        peaks.append(peak(run, x))
        del x
    (s0, p0), (s1, p1) = zip(PROBES, peaks)
    per_pixel = max((p1 - p0) / (s1 * s1 - s0 * s0), p1 / (s1 * s1) / 4, 1.0)
    fixed = max(p1 - per_pixel * s1 * s1, first - per_pixel * s0 * s0, 0.0)
    return fixed, per_pixel


def plan_tile(h: int, w: int, cost: Tuple[float, float], budget: int, overlap: int = 32,
              self_ensemble: bool = False) -> Tuple[Optional[int], int]:
    """The tile for an ``h`` x ``w`` image: None (whole image) or a side; ConfigError when even a small one does not
    fit. ``cost`` = (fixed, per_pixel) from ``measure_forward``. Returns (tile, estimated bytes)."""
    fixed, per_pixel = cost
    image = IMAGE_BYTES[bool(self_ensemble)] * h * w
    whole = image + fixed + per_pixel * h * w
    if whole <= SAFETY * budget:
        return None, int(whole)
    room = SAFETY * budget - image - fixed
    side = int(math.sqrt(max(room, 0) / (per_pixel + TILE_BYTES))) // TILE_STEP * TILE_STEP
    smallest = max(2 * TILE_STEP, (overlap // TILE_STEP + 1) * TILE_STEP)
    if side < smallest:
        need = image + fixed + (per_pixel + TILE_BYTES) * smallest ** 2
        raise ConfigError(f'memory_budget: {format_bytes(budget)} is too small for a {w}x{h} image: even a '
                          f'{smallest}x{smallest} tile needs about {format_bytes(need / SAFETY)}')
    return side, int(image + fixed + (per_pixel + TILE_BYTES) * side * side)


def halve_tile(tile: Optional[int], h: int, w: int, overlap: int = 32) -> Optional[int]:
    """The tile to retry with after running out of memory with ``tile`` (None: the whole image); None if none."""
    side = (tile or max(h, w)) // 2 // TILE_STEP * TILE_STEP
    return side if side > overlap and side >= 2 * TILE_STEP else None
