"""Mixed precision: the one rule that turns an ``amp`` value (option file, ``Restorer``, ``--amp``) into a dtype.

bf16 works on the CPU and on GPUs that support it; fp16 needs CUDA (CPU fp16 kernels are slower than fp32 and a
gradient scaler buys nothing there). ``auto`` is bf16 where the device computes it natively (a GPU with bf16, a CPU
with AVX-512 bf16 / AMX as oneDNN reports it) and fp32 elsewhere: on an AVX2-only CPU bf16 is emulated and many
times slower than fp32, so a file meant to run fast everywhere (the demo's) says ``auto``. ``models/speed.py``
(``amp`` / ``val.amp``) and ``restore/`` (``Restorer``, ``--amp``) both read it from here.
"""
from contextlib import nullcontext
from typing import Any, ContextManager, Optional, Union

import torch

from ..errors import ConfigError

AMP_DTYPES = {'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16, 'fp16': torch.float16, 'float16': torch.float16}
OFF = (None, False, 'none', 'fp32', 'float32', 'no', 'off')


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` ('cpu', 'cuda') computes bf16 in hardware rather than by emulation."""
    if device_type == 'cuda':
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == 'cpu':
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def amp_dtype(value: Any, device: Union[str, torch.device], key: str = 'amp') -> Optional[torch.dtype]:
    """``value`` ('bf16', 'fp16', 'auto', or off: None/false/'none'/'fp32') -> torch dtype or None for ``device`` (a
    ``torch.device``, 'cpu', 'cuda', 'cuda:1'); user mistakes -> ConfigError naming ``key``."""
    if value in OFF:
        return None
    if isinstance(value, str) and value.lower() == 'auto':
        return torch.bfloat16 if native_bf16(torch.device(device).type) else None
    if not isinstance(value, str) or value.lower() not in AMP_DTYPES:
        raise ConfigError(f'{key}: expected bf16, fp16, auto or false, got {value!r}')
    dtype = AMP_DTYPES[value.lower()]
    device_type = torch.device(device).type
    if dtype == torch.float16 and device_type != 'cuda':
        raise ConfigError(f'{key}: fp16 needs a GPU (CUDA; here the device is {device_type}); on the CPU use '
                          f'{key}: bf16')
    if dtype == torch.bfloat16 and device_type == 'cuda' and not torch.cuda.is_bf16_supported():
        raise ConfigError(f'{key}: this GPU has no bf16 support; use {key}: fp16')
    return dtype


def autocast(device_type: str, dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is None."""
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else nullcontext()
