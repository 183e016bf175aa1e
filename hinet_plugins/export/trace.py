"""Low-level helpers of the ONNX export: the TorchScript exporter call, onnxruntime runs, comparisons."""
import contextlib
import os
import sys
import warnings
from typing import Any, List, Sequence, Union

import numpy as np
import torch
from torch import nn

OPSET = 17
ATOL = 1e-4


def tensors_in(obj: Any) -> List[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors_in(o)]
    return []


def onnx_export(module: nn.Module, args: Sequence[torch.Tensor], path: str, opset: int = OPSET,
                dynamic_output: bool = True) -> None:
    """``torch.onnx.export`` (TorchScript exporter) with dynamic N, H, W for every 4-D input (and the output),
    its warnings and prints silenced."""
    names = [f'input{i}' for i in range(len(args))]
    dynamic = {n: {0: 'batch', 2: f'height{i}', 3: f'width{i}'} for i, (n, a) in enumerate(zip(names, args))
               if a.dim() == 4}
    if dynamic and dynamic_output:
        dynamic['output'] = {0: 'batch', 2: 'height0', 3: 'width0'}
    with warnings.catch_warnings(), torch.no_grad(), _quiet():
        warnings.simplefilter('ignore')
        torch.onnx.export(module, tuple(args), path, dynamo=False, opset_version=opset, input_names=names,
                          output_names=['output'], dynamic_axes=dynamic, do_constant_folding=True)


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's own prints (it dumps the whole graph to stderr from C++ on failure)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, 'w') as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def run_onnx(path: str, *inputs: Union[np.ndarray, torch.Tensor]) -> List[np.ndarray]:
    """Outputs of the ONNX file on numpy/torch inputs (onnxruntime, CPU)."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    feeds = {i.name: (x.numpy() if torch.is_tensor(x) else x) for i, x in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)


def max_diff(outputs: Sequence[np.ndarray], reference: Any) -> float:
    ref = [t.float().numpy() for t in tensors_in(reference)]
    if len(outputs) != len(ref) or any(o.shape != r.shape for o, r in zip(outputs, ref)):
        return float('inf')
    return max(float(np.abs(o - r).max()) for o, r in zip(outputs, ref))


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]
