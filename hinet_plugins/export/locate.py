"""Which module of a network does not export to ONNX correctly: walk down the module tree, exporting each child
alone on the inputs it received during a forward (at one or more sizes), and keep the deepest one that fails to
export, fails to run in onnxruntime, or computes something else than PyTorch (beyond ``atol``)."""
import os
import tempfile
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .trace import ATOL, OPSET, first_line, max_diff, onnx_export, run_onnx, tensors_in


class _Call(nn.Module):
    """A submodule called with the non-tensor arguments it received, its tensor arguments as inputs."""

    def __init__(self, module, call):
        super().__init__()
        self.module, (self.template, self.kwargs) = module, call
        self.slots = [i for i, a in enumerate(self.template) if torch.is_tensor(a)]

    def forward(self, *tensors):
        args = list(self.template)
        for i, t in zip(self.slots, tensors):
            args[i] = t
        return self.module(*args, **self.kwargs)


def _capture_inputs(net, inputs):
    """{module: [(args, kwargs) of its first call, for each of ``inputs``]}."""
    seen, handles, run = {}, [], [0]

    def hook(module, args, kwargs):
        calls = seen.setdefault(module, [])
        if len(calls) == run[0]:
            keep = tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args)
            calls.append((keep, dict(kwargs)))
    for m in net.modules():
        handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            for i, x in enumerate(inputs):
                run[0] = i
                net(x)
    finally:
        for h in handles:
            h.remove()
    return {m: calls for m, calls in seen.items() if len(calls) == len(inputs)}


def _module_problem(module, calls, folder, opset, atol):
    """Why ``module`` alone does not export correctly (on the recorded calls), or None."""
    if any(tensors_in(list(kwargs.values())) for _, kwargs in calls):
        return None  # tensor keyword arguments: not tried alone
    call = _Call(module, calls[0]).eval()
    tensors = [[a for a in args if torch.is_tensor(a)] for args, _ in calls]
    if not tensors[0] or any(len(t) != len(tensors[0]) for t in tensors):
        return None
    path = os.path.join(folder, 'part.onnx')
    try:
        onnx_export(call, tensors[0], path, opset, dynamic_output=False)
    except Exception as err:  # noqa: BLE001
        return first_line(err)
    for one, ts in zip(calls, tensors):
        with torch.no_grad():
            ref = _Call(module, one)(*ts)
        try:
            diff = max_diff(run_onnx(path, *ts), ref)
        except Exception as err:  # noqa: BLE001
            return f'onnxruntime fails at {tuple(ts[0].shape[-2:])}: {first_line(err)}'
        if diff > atol:
            return (f'the ONNX graph differs from PyTorch by {diff:.3g} (max abs) at input '
                    f'{"x".join(map(str, ts[0].shape[-2:]))}')
    return None


def locate_problem(net: nn.Module, inputs: Sequence[torch.Tensor], opset: int = OPSET,
                   atol: float = ATOL) -> Optional[Tuple[str, str, str]]:
    """(module name, class name, reason) of the deepest module that does not export correctly, or None."""
    calls = _capture_inputs(net, inputs)
    names = {m: n for n, m in net.named_modules()}
    with tempfile.TemporaryDirectory() as folder:
        found, module = None, net
        while True:
            for child in _called_children(module, calls):
                why = _module_problem(child, calls[child], folder, opset, atol)
                if why:
                    found, module = (names.get(child, '?'), type(child).__name__, why), child
                    break
            else:
                return found


def _called_children(module, calls):
    """The children of ``module`` that were called, looking through containers that are not (ModuleList, ...)."""
    for child in module.children():
        if child in calls:
            yield child
        else:
            yield from _called_children(child, calls)
