"""The `torch` lowering of `cache_append` (an `append` state, ir/state.py): a KV cache that grows
without being copied every step.

`torch.cat` copies the whole cache each step (O(length) per token). `append` returns a view into a
larger buffer with spare rows instead, so the next append writes only the new rows, in place.

Safety: an append writes only past the end of the view it was given, so every tensor a caller holds
keeps its values. The buffer remembers how many rows are filled; appending to a view shorter than
that (a second branch from the same past) copies into a new buffer instead of overwriting rows that
another view shows. The decoder runtime, which owns the state, rolls back with `truncate` (the rows
past the new end become free for the next append: no copy).
"""
from __future__ import annotations
import torch

from .torch_kernels import torch_kernel

HEADROOM = 128      # spare rows of a new buffer, at least; it grows by 1.5x when full


class _Buffer:
    __slots__ = ("data", "filled")

    def __init__(self, data: torch.Tensor, filled: int):
        self.data, self.filled = data, filled


@torch_kernel("cache_append")
def append(past: torch.Tensor, new: torch.Tensor, *, axis: int) -> torch.Tensor:
    """torch.cat((past, new), axis), returned as a view into a buffer with room for more rows."""
    dim = d = axis % past.dim()
    n_past, n = past.shape[d], new.shape[d]
    buf = getattr(past, "_slimgraph_kv", None)
    if not _can_extend(buf, past, new, d, n_past, n):
        if past.shape[:d] + past.shape[d + 1:] != new.shape[:d] + new.shape[d + 1:]:
            return torch.cat((past, new), dim)   # let torch report (or broadcast) the mismatch exactly as cat does
        shape = list(past.shape)
        shape[d] = max(n_past + n + HEADROOM, (n_past + n) * 3 // 2)
        data = torch.empty(shape, dtype=torch.result_type(past, new), device=past.device)
        data.narrow(d, 0, n_past).copy_(past)
        buf = _Buffer(data, n_past)
    buf.data.narrow(d, n_past, n).copy_(new)
    buf.filled = n_past + n
    out = buf.data.narrow(d, 0, n_past + n)
    out._slimgraph_kv = buf
    return out


def _can_extend(buf, past, new, d, n_past, n) -> bool:
    if buf is None or buf.filled != n_past or n_past + n > buf.data.shape[d]:
        return False
    data = buf.data
    return (past.data_ptr() == data.data_ptr() and past.stride() == data.stride() and new.dtype == data.dtype
            and new.device == data.device and new.shape[:d] + new.shape[d + 1:] == data.shape[:d] + data.shape[d + 1:])


def truncate(t: torch.Tensor, axis: int, length: int) -> torch.Tensor:
    """`t` narrowed to `length` rows along `axis`; if `t` views an append buffer, the rows past `length`
    become free (the caller promises not to read the longer view again)."""
    d = axis % t.dim()
    out = t.narrow(d, 0, length)
    buf = getattr(t, "_slimgraph_kv", None)
    if buf is not None and buf.filled == t.shape[d] and t.data_ptr() == buf.data.data_ptr():
        buf.filled = length
        out._slimgraph_kv = buf
    return out
