"""What vmap needs to run M models' forwards as one: per-model dropout and `torch.unique`, and
batched forms of the operations vmap batches slowly.

`fit_stacked` (training/stacked.py) calls each family's own `forward` through
`torch.func.functional_call` under `torch.func.vmap`. `StackedForwardMode`, a TorchFunctionMode
(thread-local, active only around the stacked forward), reroutes a few functions to
implementations that work on vmap's physical (M, ...) tensors directly:

- Dropout. vmap's own randomness cannot reproduce what `fit` draws, so model m's masks come
  from its own generator, seeded as `fit` seeds the global RNG for the epoch, and drawn with
  the same kernel in the same order: `empty_like(x).bernoulli_(1 - p).div_(1 - p)`, which is
  what ATen's CPU dropout does. Hence the same masks as `fit` on CPU, whenever the dropout
  input has the shape it has in `fit` (per-pair rows: true for the MLP and cross-attention
  families; the self-attention encoders drop out per unique region, whose rows are padded
  here, so their masks are drawn from the same distribution but are not `fit`'s).
  On CUDA `fit` uses the fused dropout kernel, so masks are equal in law only.
- `torch.unique(..., return_inverse=True)`, which the families use to encode each region of a
  batch once: its output size depends on the data, so each model's unique values are padded
  to the largest count by repeating its last value. The padded rows are computed and never
  gathered (every family gathers region rows by the inverse), so predictions and gradients
  are unchanged.
- Speed: linear layers as one baddbmm, BatchNorm as one BatchNorm over M * C channels,
  attention as one fused call over M * B rows (torch has no batching rule for the CPU flash
  kernel and would loop over models), and row gathers by index as index_select on the
  flattened rows (vmap's rule gathers with an index the size of the output, whose backward
  is a scatter_add).

The physical tensors are reached through functorch's own unwrap/wrap primitives
(`torch._C._functorch`, private but what its Python-side rules use): torch.library custom
ops with vmap rules do the same through several Python layers and cost about 0.5 ms a call
(measured), and registering an autograd formula for one imports torch._dynamo (6 s).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

_functorch = torch._C._functorch
# While a physical implementation runs, vmap must not batch its plain tensors again, and its
# randomness check must not refuse the per-model dropout draws.
_VMAP_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.FuncTorchBatched) | torch._C.DispatchKeySet(
    torch._C.DispatchKey.FuncTorchVmapMode
)
_local = threading.local()  # the generators of the models in the current vmapped call


@contextmanager
def dropout_generators(generators: Sequence[torch.Generator]) -> Iterator[None]:
    """Within the block, a vmapped dropout over k models draws model i's mask from generators[i]."""
    previous = getattr(_local, "generators", None)
    _local.generators = list(generators)
    try:
        yield
    finally:
        _local.generators = previous


def _physical(fn: Callable, *args):
    """fn(size, batched, *args) on the physical tensors of vmap's batched arguments, model
    dimension first (`batched[i]`: whether args[i] has it); outputs get it back as vmap's.
    None when no argument is batched (the caller then runs the plain function)."""
    level = _functorch.maybe_current_level()
    if level is None:
        return None
    plain, batched, size = [], [], None
    for arg in args:
        if isinstance(arg, Tensor) and _functorch.is_batchedtensor(arg) and _functorch.maybe_get_level(arg) == level:
            tensor, dim = _functorch._unwrap_batched(arg, level)
            tensor = tensor.movedim(dim, 0)
            size = len(tensor)
            plain.append(tensor)
            batched.append(True)
        else:
            plain.append(arg)
            batched.append(False)
    if size is None:
        return None
    with torch._C._ExcludeDispatchKeyGuard(_VMAP_KEYS):
        out = fn(size, tuple(batched), *plain)
    if isinstance(out, tuple):
        return tuple(_functorch._add_batch_dim(t, 0, level) for t in out)
    return _functorch._add_batch_dim(out, 0, level)


def _front(t: Tensor | None, batched: bool, size: int) -> Tensor | None:
    """A physical argument with the model dimension first (expanded when it has none)."""
    return t if t is None or batched else t.expand(size, *t.shape)


def _dropout_noise(size, batched, x, p):
    generators = getattr(_local, "generators", None)
    if generators is None or len(generators) != size:
        raise RuntimeError("stacked dropout: no generator per model (call it inside dropout_generators)")
    noise = [torch.empty_like(row).bernoulli_(1 - p, generator=g).div_(1 - p) for row, g in zip(x, generators)]
    return torch.stack(noise)


def _dropout(x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    # ATen's CPU dropout draws nothing when p == 0 or in eval mode, and zeroes without drawing at
    # p == 1; the same here keeps every later mask of the epoch aligned with `fit`'s.
    if not training or p == 0 or x.numel() == 0:
        return x
    if p == 1:
        return x * torch.zeros_like(x)
    noise = _physical(_dropout_noise, x.detach(), float(p))
    if noise is None:
        raise RuntimeError("stacked dropout outside vmap: its masks would not be per model")
    return x * noise


def _unique_padded(size, batched, x):
    found = [torch.unique(row, return_inverse=True) for row in _front(x, batched[0], size)]
    width = max(len(values) for values, _ in found)
    values = torch.stack([torch.cat([v, v[-1:].expand(width - len(v))]) for v, _ in found])
    return values, torch.stack([inverse for _, inverse in found])


def _unique(x, sorted=True, return_inverse=False, return_counts=False, dim=None):
    out = _physical(_unique_padded, x) if sorted and not return_counts and dim is None else None
    if out is None:
        return torch.unique(x, sorted, return_inverse, return_counts, dim)
    return out if return_inverse else out[0]


def _linear_rows(size, batched, x, weight, bias):
    if not batched[1] and not (bias is not None and batched[2]):  # shared weights: one plain linear
        return F.linear(_front(x, batched[0], size), weight, bias)
    x, weight, bias = (_front(t, b, size) for t, b in zip((x, weight, bias), batched))
    rows = x.reshape(size, -1, x.shape[-1])
    # weight.transpose is contiguous when fit_stacked keeps linear weights in (in, out) layout, so
    # autograd's gradient for it lands in the parameter's layout without a copy.
    wt = weight.transpose(1, 2)
    out = torch.bmm(rows, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), rows, wt)
    return out.view(*x.shape[:-1], weight.shape[1])


def _linear(x, weight, bias=None):
    out = _physical(_linear_rows, x, weight, bias)
    return F.linear(x, weight, bias) if out is None else out


def _take_rows(size, batched, source, index):
    if not batched[1]:
        return _front(source, batched[0], size).index_select(1, index)
    if not batched[0]:
        return source.index_select(0, index.reshape(-1)).view(*index.shape, *source.shape[1:])
    offsets = torch.arange(size, device=index.device).unsqueeze(1) * source.shape[1]
    rows = source.reshape(-1, *source.shape[2:]).index_select(0, (index + offsets).reshape(-1))
    return rows.view(*index.shape, *source.shape[2:])


def _index_select(source, dim, index):
    out = _physical(_take_rows, source, index) if dim == 0 else None
    return torch.index_select(source, dim, index) if out is None else out


def _getitem(source, key):
    if isinstance(key, Tensor) and key.dtype == torch.int64 and key.ndim == 1 and source.ndim >= 1:
        out = _physical(_take_rows, source, key)
        if out is not None:
            return out
    return Tensor.__getitem__(source, key)


def _batch_norm_channels(size, batched, x, mean, var, weight, bias, training, momentum, eps):
    # M models' BatchNorm over C channels is one BatchNorm over M * C channels of a contiguous
    # (N, M * C, ...) input: the same per-channel statistics, at the native kernel's speed. The
    # running statistics are updated in place, through flat views of the stacked buffers.
    x, weight, bias = (_front(t, b, size) for t, b in zip((x, weight, bias), (batched[0], *batched[3:5])))
    n, c, rest = x.shape[1], x.shape[2], x.shape[3:]
    flat = x.movedim(0, 1).reshape(n, size * c, *rest)
    stats = [s if s.is_contiguous() else s.contiguous() for s in (mean, var)]
    weight, bias = (None if t is None else t.reshape(-1) for t in (weight, bias))
    y = F.batch_norm(flat, stats[0].view(-1), stats[1].view(-1), weight, bias, training, momentum, eps)
    for target, value in zip((mean, var), stats):
        if value is not target:
            target.copy_(value)
    return y.view(n, size, c, *rest).movedim(1, 0)


def _batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    stacked_stats = (
        running_mean is not None
        and running_var is not None
        and x.ndim >= 2
        and all(_functorch.is_batchedtensor(s) for s in (running_mean, running_var))
    )
    out = None
    if stacked_stats:
        out = _physical(
            _batch_norm_channels, x, running_mean, running_var, weight, bias, training, float(momentum), float(eps)
        )
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps) if out is None else out


def _attention_rows(size, batched, q, k, v, mask, is_causal, scale):
    q, k, v = (_front(t, b, size) for t, b in zip((q, k, v), batched))
    if mask is not None and batched[3]:  # a per-model mask: one call per model
        rows = [F.scaled_dot_product_attention(*t, attn_mask=mask_m, is_causal=is_causal, scale=scale)
                for *t, mask_m in zip(q, k, v, mask)]  # fmt: skip
        return torch.stack(rows)
    flat = [t.reshape(-1, *t.shape[2:]) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*flat, attn_mask=mask, is_causal=is_causal, scale=scale)
    return out.view(*q.shape[:-1], v.shape[-1])


def _attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    out = None
    if not dropout_p and not enable_gqa:  # (dropout inside attention: vmap refuses it, loudly)
        out = _physical(_attention_rows, q, k, v, attn_mask, is_causal, scale)
    if out is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
        )
    return out


# What the mode reroutes: the per-model ops above, and the ones vmap batches slowly.
_REROUTES = {
    F.dropout: _dropout,
    torch.unique: _unique,
    Tensor.unique: _unique,
    F.linear: _linear,
    F.batch_norm: _batch_norm,
    F.scaled_dot_product_attention: _attention,
    torch.index_select: _index_select,
    Tensor.index_select: _index_select,
    Tensor.__getitem__: _getitem,
}


class StackedForwardMode(TorchFunctionMode):
    """Reroutes dropout and torch.unique to per-model implementations, and linear, BatchNorm,
    attention and row gathers to batched forms that keep `fit`'s kernels.

    Anything else passes through to vmap, so a family that calls another data-dependent or
    random op fails with torch's own error rather than training wrongly.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        reroute = _REROUTES.get(func)
        return (reroute or func)(*args, **(kwargs or {}))
