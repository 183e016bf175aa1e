"""Throughput switches of the restoration model: mixed precision, channels_last, torch.compile, checkpointing.

All off by default, read from the option file: ``amp: bf16 | fp16`` (``val.amp`` overrides it for evaluation;
the rule is ``utils/amp.py``; fp16 trains with a ``GradScaler`` kept in the training state), ``channels_last``,
``train.compile`` (true or ``{backend, mode, dynamic, fullgraph, options}``), ``train.grad_checkpoint``.
Decisions: compile wraps the training forward only (the DDP wrapper when distributed), so checkpoints never get
``_orig_mod.`` prefixes and evaluation (sizes change per image, TLC rebuilds modules) runs eagerly; a compile that
fails at run time redoes the step eagerly and warns once with the reason. Gradient checkpointing is opt-in per
architecture (class attribute ``grad_checkpoint`` and ``archs.blocks.checkpoint_call``); asking for it elsewhere
is a ConfigError. Under AMP the losses are computed in fp32 on outputs cast back to float (PSNR loss is a log of
an MSE, which bf16 would quantise).
"""
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Iterable, Iterator, List, Optional, Sequence, Union

import torch
from torch import nn
from basicsr.utils import get_root_logger

from ..errors import ConfigError, TrainingDivergedError
from ..utils.amp import amp_dtype, autocast

COMPILE_KEYS = ('backend', 'mode', 'dynamic', 'fullgraph', 'options')
COMPILE_MODES = (None, 'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def parse_compile(value: Any, key: str = 'train.compile') -> Optional[dict]:
    """``train.compile`` -> keyword dict for ``torch.compile`` or None."""
    if value in (None, False):
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f'{key}: expected true, false or a mapping with keys {COMPILE_KEYS}, got {value!r}')
    unknown = sorted(set(value) - set(COMPILE_KEYS))
    if unknown:
        raise ConfigError(f'{key}: unknown key(s) {unknown}; allowed: {COMPILE_KEYS}')
    if value.get('mode') not in COMPILE_MODES:
        raise ConfigError(f"{key}.mode: '{value['mode']}' is not one of {COMPILE_MODES[1:]}")
    backend = value.get('backend')
    if backend is not None and hasattr(torch, '_dynamo'):
        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise ConfigError(f"{key}.backend: unknown backend '{backend}'; available: {', '.join(known)}")
    return dict(value)


def _flag(value, key):
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ConfigError(f'{key}: expected true or false, got {value!r}')


class SpeedOptions:
    """The parsed switches (see the module docstring)."""

    def __init__(self, opt: dict) -> None:
        device_type = 'cuda' if opt.get('num_gpu', 0) != 0 else 'cpu'
        train_opt = (opt.get('train') or {}) if opt.get('is_train', True) else {}
        self.device_type = device_type
        self.amp = amp_dtype(opt.get('amp'), device_type, 'amp')
        val_opt = opt.get('val') or {}
        self.val_amp = amp_dtype(val_opt['amp'], device_type, 'val.amp') if 'amp' in val_opt else self.amp
        self.channels_last = _flag(opt.get('channels_last'), 'channels_last')
        self.compile = parse_compile(train_opt.get('compile'))
        self.grad_checkpoint = _flag(train_opt.get('grad_checkpoint'), 'train.grad_checkpoint')

    def describe(self) -> str:
        name = {None: 'off', torch.bfloat16: 'bf16', torch.float16: 'fp16'}
        parts = [f'amp={name[self.amp]} (eval {name[self.val_amp]})', f'channels_last={self.channels_last}',
                 f"compile={'off' if self.compile is None else self.compile.get('backend', 'inductor')}",
                 f'grad_checkpoint={self.grad_checkpoint}']
        return ', '.join(parts)

    def any_on(self) -> bool:
        return bool(self.amp or self.val_amp or self.channels_last or self.compile is not None
                    or self.grad_checkpoint)


def to_float(outputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Union[torch.Tensor, List[torch.Tensor]]:
    """Cast a tensor or a list of stage outputs to float32 (autograd flows through the cast)."""
    if isinstance(outputs, (list, tuple)):
        return [o.float() for o in outputs]
    return outputs.float()


def to_channels_last(x: Any) -> Any:
    return x.contiguous(memory_format=torch.channels_last) if torch.is_tensor(x) and x.dim() == 4 else x


def enable_grad_checkpoint(net: nn.Module, key: str = 'train.grad_checkpoint') -> nn.Module:
    """Switch per-stage activation checkpointing on for an architecture that supports it (see module doc)."""
    if not hasattr(type(net), 'grad_checkpoint'):
        raise ConfigError(
            f'{key}: network {type(net).__name__} does not support gradient checkpointing (the architecture '
            "must declare 'grad_checkpoint = False' and run its stages through archs.blocks.checkpoint_call)")
    net.grad_checkpoint = True
    return net


def compile_network(net: nn.Module, kwargs: dict) -> Optional[Callable]:
    """``torch.compile(net, **kwargs)``; None with a warning where torch.compile is unavailable here."""
    if not hasattr(torch, 'compile'):
        warnings.warn(f'train.compile: torch {torch.__version__} has no torch.compile; training uncompiled')
        return None
    try:
        return torch.compile(net, **kwargs)
    except Exception as err:  # noqa: BLE001  (e.g. "Dynamo is not supported on Python 3.x")
        msg = f'train.compile: torch.compile is unavailable ({type(err).__name__}: {err}); training uncompiled'
        warnings.warn(msg)
        get_root_logger().warning(msg)
        return None


class SpeedSwitchesMixin:
    """Model mixin that applies :class:`SpeedOptions` (put before basicsr's ``SRModel`` in the bases).

    Hooks: ``model_to_device`` (channels_last, checkpointing, before any DDP wrapping), ``feed_data``
    (channels_last inputs). Helpers for the training step: ``train_network``, ``train_autocast``,
    ``with_compile_fallback``, ``backward``, ``optimizer_step``; for evaluation: ``eval_autocast``;
    for the training state: ``speed_state`` / ``load_speed_state``.
    """

    def __init__(self, opt: dict) -> None:
        self.speed = SpeedOptions(opt)
        self.grad_scaler = None
        self.compiled_net_g = None
        self._compiled_steps = 0
        super().__init__(opt)
        if self.speed.channels_last and hasattr(self, 'net_g_ema'):
            self.net_g_ema.to(memory_format=torch.channels_last)
        if self.is_train:
            if self.speed.amp == torch.float16:
                self.grad_scaler = torch.amp.GradScaler(self.device.type)
            if self.speed.compile is not None:
                self.compiled_net_g = compile_network(self.net_g, self.speed.compile)
        if self.speed.any_on():
            get_root_logger().info(f'Speed switches: {self.speed.describe()}')

    # ------------------------------------------------------------------ hooks
    def model_to_device(self, net: nn.Module) -> nn.Module:
        if self.speed.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.speed.grad_checkpoint:
            enable_grad_checkpoint(net)
        return super().model_to_device(net)

    def feed_data(self, data: dict) -> None:
        super().feed_data(data)
        if self.speed.channels_last:
            self.lq = to_channels_last(self.lq)
            if hasattr(self, 'gt'):
                self.gt = to_channels_last(self.gt)

    # ------------------------------------------------------------------ training step
    def train_network(self) -> Callable:
        """The callable of the training forward: the compiled net when ``train.compile`` is on and working."""
        return self.compiled_net_g if self.compiled_net_g is not None else self.net_g

    def train_autocast(self) -> ContextManager:
        return autocast(self.device.type, self.speed.amp)

    def with_compile_fallback(self, step: Callable[[], Any], optimizer: torch.optim.Optimizer) -> Any:
        """Run ``step()`` (forward + backward). If the compiled network fails, say why, zero the gradients of
        ``optimizer`` and redo the step eagerly; training stays uncompiled from then on."""
        if self.compiled_net_g is None:
            return step()
        start = time.perf_counter()
        try:
            result = step()
        except (ConfigError, TrainingDivergedError):
            raise
        except Exception as err:  # noqa: BLE001  (any compiler failure means the same to the user)
            first_line = (str(err).strip().splitlines() or [''])[0][:300]
            msg = (f'train.compile: torch.compile failed ({type(err).__name__}: {first_line}); '
                   'falling back to the uncompiled network for the rest of training')
            warnings.warn(msg)
            get_root_logger().warning(msg)
            self.compiled_net_g = None
            optimizer.zero_grad(set_to_none=True)
            return step()
        self._compiled_steps += 1
        if self._compiled_steps == 1:
            get_root_logger().info(f'train.compile: first compiled training step done in '
                                   f'{time.perf_counter() - start:.1f} s (compilation included)')
        return result

    def backward(self, loss: torch.Tensor) -> None:
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer, clip_params: Optional[Iterable[torch.Tensor]] = None,
                       max_norm: Optional[float] = None) -> None:
        """Unscale (fp16), clip the gradients of ``clip_params`` to ``max_norm`` if given, step, update scaler."""
        if self.grad_scaler is not None and clip_params is not None:
            self.grad_scaler.unscale_(optimizer)
        if clip_params is not None:
            torch.nn.utils.clip_grad_norm_(clip_params, max_norm)
        if self.grad_scaler is not None:
            self.grad_scaler.step(optimizer)
            self.grad_scaler.update()
        else:
            optimizer.step()

    # ------------------------------------------------------------------ evaluation
    @contextmanager
    def eval_autocast(self) -> Iterator[None]:
        """Autocast for validation/test forwards; ``self.output`` is cast back to float32 afterwards."""
        with autocast(self.device.type, self.speed.val_amp):
            yield
        if self.speed.val_amp is not None and torch.is_tensor(getattr(self, 'output', None)):
            self.output = self.output.float()

    # ------------------------------------------------------------------ training state
    def speed_state(self) -> dict:
        return {'grad_scaler': self.grad_scaler.state_dict()} if self.grad_scaler is not None else {}

    def load_speed_state(self, state: dict) -> None:
        if self.grad_scaler is not None and state.get('grad_scaler'):
            self.grad_scaler.load_state_dict(state['grad_scaler'])
