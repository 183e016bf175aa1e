"""Detection of global operations that TLC cannot localise, by watching torch calls during a forward pass.

A call is "global" when it aggregates over the whole spatial extent of a 4-D feature map: adaptive pooling to a
size other than 1, functional instance/group norm, layer norm over space, batch norm with batch statistics,
mean/sum/max/min/var/std reductions over both spatial axes, and matrix products (matmul, bmm, einsum,
scaled_dot_product_attention) that sum over as many positions as a feature map entering a running module has
(H*W): a transposed or spatial self-attention. Reductions after a reshape are not detected.
"""
import inspect

import torch
from torch.overrides import TorchFunctionMode

_REDUCTIONS = {'mean', 'sum', 'amax', 'amin', 'max', 'min', 'var', 'std', 'var_mean', 'std_mean', 'logsumexp',
               'nanmean', 'nansum'}


def _bound(func, args, kwargs):
    try:
        return inspect.signature(func).bind(*args, **kwargs).arguments
    except (TypeError, ValueError):
        return {}


def _spatial(t):
    return isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[-2] > 1 and t.shape[-1] > 1


def _global_call(func, args, kwargs):
    """A description if this torch call aggregates over the whole spatial extent, else None."""
    name = getattr(func, '__name__', '')
    x = args[0] if args else None
    if not _spatial(x):
        return None
    if name in ('adaptive_avg_pool2d', 'adaptive_max_pool2d', '_adaptive_max_pool2d',
                'adaptive_max_pool2d_with_indices'):
        out = args[1] if len(args) > 1 else kwargs.get('output_size')
        out = (out, out) if isinstance(out, int) else tuple(out)
        out = tuple(n if v is None else v for n, v in zip(x.shape[-2:], out))
        return f'{name.strip("_")} to {out}' if out != tuple(x.shape[-2:]) else None
    if name == 'instance_norm':
        return 'instance_norm (functional)' if _bound(func, args, kwargs).get('use_input_stats', True) else None
    if name == 'group_norm':
        return 'group_norm (functional)'
    if name == 'layer_norm':
        shape = _bound(func, args, kwargs).get('normalized_shape', ())
        return f'layer_norm over {tuple(shape)} (includes H, W)' if len(tuple(shape)) >= 2 else None
    if name == 'batch_norm':
        return 'batch_norm with batch statistics' if _bound(func, args, kwargs).get('training') else None
    if name in _REDUCTIONS:
        dim = kwargs.get('dim', args[1] if len(args) > 1 else None)
        if isinstance(dim, torch.Tensor):  # torch.max(a, b): elementwise
            return None
        if dim is None:
            return f'{name} over the whole tensor'
        dims = dim if isinstance(dim, (list, tuple)) else (dim,)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            return None
        return f'{name} over H, W' if {2, 3} <= {d % 4 for d in dims} else None
    return None


_PRODUCTS = {'matmul', '__matmul__', 'bmm', 'mm', 'baddbmm', 'addbmm', 'einsum', 'scaled_dot_product_attention'}


def _contracted_lengths(name, args):
    """Lengths of the axes a matrix product sums over (empty if unknown)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if name == 'einsum' and args and isinstance(args[0], str):
        eq = args[0].replace(' ', '')
        operands = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1]
        lhs, _, rhs = eq.partition('->')
        terms = lhs.split(',')
        if not rhs and '->' not in eq:
            rhs = ''.join(c for c in sorted(set(lhs)) if c.isalpha() and lhs.count(c) == 1)
        sizes = {}
        for term, t in zip(terms, operands):
            if isinstance(t, torch.Tensor) and '.' not in term and len(term) == t.dim():
                sizes.update(zip(term, t.shape))
        return {sizes[c] for c in set(lhs) - set(rhs) - {','} if c in sizes}
    if name == 'scaled_dot_product_attention' and len(tensors) >= 2:
        return {tensors[1].shape[-2]}  # softmax over the key positions
    offset = 1 if name in ('baddbmm', 'addbmm') else 0
    if len(tensors) > offset and tensors[offset].dim() >= 2:
        return {tensors[offset].shape[-1]}
    return set()


def _product_over_positions(func, args, areas):
    """A description if this torch call is a matrix product summing over the H*W positions of a feature map that
    entered one of the running modules (transposed or spatial self-attention), else None."""
    name = getattr(func, '__name__', '')
    if name not in _PRODUCTS or not areas:
        return None
    over = _contracted_lengths(name, args) & areas
    return f'{name} summing over H*W = {max(over)} positions' if over else None


class GlobalOpWatcher(TorchFunctionMode):
    """Records global aggregations made during a forward pass by the modules of ``model``, except inside modules
    of the ``skip`` types (the local ops) and their callees."""

    def __init__(self, model, skip=()):
        super().__init__()
        self.skip = tuple(skip)
        self.stack, self.found, self.handles = [], {}, []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._enter(name, module)))
            self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, name, module):
        def hook(_module, args):
            areas = {a.shape[-2] * a.shape[-1] for a in args if _spatial(a)}
            self.stack.append((name, module, areas))
        return hook

    def _leave(self, *_):
        self.stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.stack and not any(isinstance(m, self.skip) for _, m, _ in self.stack):
            what = _global_call(func, args, kwargs) or _product_over_positions(
                func, args, set().union(*(areas for _, _, areas in self.stack)))
            if what:
                name, module, _ = self.stack[-1]
                self.found.setdefault(f'{name or "<root>"} ({type(module).__name__}): {what}', None)
        return func(*args, **kwargs)

    def remove(self):
        for h in self.handles:
            h.remove()
