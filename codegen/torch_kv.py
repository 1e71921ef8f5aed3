"""Growing state (a KV cache) without copying it every step.

A causal LM graph takes `past_key_i` as an input and returns `concat(past_key_i, new, dim=-2)` as an
output; decoding feeds that output back as the next step's input. `torch.cat` copies the whole cache
each step (O(length) per token). The `torch` codegen runs such a concat (first operand a graph input,
result a graph output) with `append` instead: the result is a view into a larger buffer with spare
rows, so the next append writes only the new rows, in place.

Safety: an append writes only past the end of the view it was given, so every tensor a caller holds
keeps its values. The buffer remembers how many rows are filled; appending to a view shorter than
that (a second branch from the same past, e.g. after a rejected speculative draft) copies into a new
buffer instead of overwriting rows that another view shows.
"""
from __future__ import annotations
import torch

HEADROOM = 128      # spare rows of a new buffer, at least; it grows by 1.5x when full


class _Buffer:
    __slots__ = ("data", "filled")

    def __init__(self, data: torch.Tensor, filled: int):
        self.data, self.filled = data, filled


def append(past: torch.Tensor, new: torch.Tensor, *, dim: int) -> torch.Tensor:
    """torch.cat((past, new), dim), returned as a view into a buffer with room for more rows."""
    d = dim % past.dim()
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
