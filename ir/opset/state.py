"""State ops: how a declared graph state (ir/state.py) evolves. Codegens lower them in place.

    %present = cache_append(%past, %new) {axis=2}                  # KV cache: concat along the sequence
    %ring = cache_window(%present) {axis=2, window=256, sinks=4}   # keep sinks + the last `window` rows
"""
import torch

from .. import symbolic as S
from ..registry import Attr, register_op
from ..types import TensorType
from . import infer as I


def _append_type(ts, a):
    past, new = ts
    d = I.norm_dim(a["axis"], past.rank)
    if past.rank != new.rank:
        raise I.ShapeError(f"cache_append: past {past} and new {new} differ in rank")
    shape = list(past.shape)
    shape[d] = S.add(past.shape[d], new.shape[d])
    return TensorType(past.dtype, shape)


@register_op("cache_append", inputs="past new", attrs={"axis": Attr("int")}, infer=_append_type)
def cache_append(past, new, *, axis):
    """`cat((past, new), axis)`: past [.., T, ..] + new [.., n, ..] -> [.., T + n, ..]. The `torch`
    codegen writes `new` into spare rows of a growing buffer instead of copying `past`."""
    return torch.cat((past, new.to(past.dtype)), axis)


def _window_type(ts, a):
    x = ts[0]
    d = I.norm_dim(a["axis"], x.rank)
    shape = list(x.shape)
    shape[d] = S.canon(f"Min({x.shape[d]}, {a['window'] + a['sinks']})") if isinstance(x.shape[d], str) \
        else min(x.shape[d], a["window"] + a["sinks"])
    return x.with_shape(shape)


@register_op("cache_window", inputs="x", attrs={"axis": Attr("int"), "window": Attr("int"), "sinks": Attr("int")},
             infer=_window_type)
def cache_window(x, *, axis, window, sinks):
    """The first `sinks` rows and the last `window` rows along `axis` (all rows when there are fewer than
    window + sinks): a StreamingLLM ring cache (arXiv:2309.17453)."""
    n = x.shape[axis]
    if n <= window + sinks:
        return x
    return torch.cat((x.narrow(axis, 0, sinks), x.narrow(axis, n - window, window)), axis)
