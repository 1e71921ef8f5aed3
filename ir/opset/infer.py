"""Shared type-inference helpers for op declarations (symbolic dims aware)."""
from __future__ import annotations
from .. import symbolic
from ..dtypes import FLOAT_DTYPES, promote
from ..types import TensorType


class ShapeError(TypeError):
    pass


def norm_dim(d: int, rank: int) -> int:
    if not -max(rank, 1) <= d < max(rank, 1):
        raise ShapeError(f"dim {d} is out of range for rank {rank}")
    return d % max(rank, 1)


def broadcast(*shapes) -> tuple:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        d = 1
        for x in dims:
            if x == 1:
                continue
            if d == 1:
                d = x
            elif not symbolic.equal(d, x):
                if isinstance(d, int) and isinstance(x, int):
                    raise ShapeError(f"shapes {' and '.join(map(_fmt, shapes))} do not broadcast")
                # symbolic vs other: assume equal at run time (torch checks), keep the symbol
                d = x if isinstance(d, int) else d
        out.append(d)
    return tuple(out)


def _fmt(s):
    return "[" + ",".join(map(str, s)) + "]"


def same(ts, attrs):
    return ts[0]


def elementwise(ts, attrs):
    return TensorType(promote(*[(t.dtype, t.rank) for t in ts]), broadcast(*[t.shape for t in ts]))


def float_elementwise(ts, attrs):
    t = elementwise(ts, attrs)
    return t if t.dtype in FLOAT_DTYPES else t.with_dtype("f32")


def predicate(ts, attrs):
    return TensorType("bool", broadcast(*[t.shape for t in ts]))


def unary_float(ts, attrs):
    t = ts[0]
    return t if t.dtype in FLOAT_DTYPES else t.with_dtype("f32")


def reduce_shape(shape, dims, keepdim):
    rank = len(shape)
    dims = set(range(rank)) if dims is None or dims == [] else {norm_dim(d, rank) for d in dims}
    return tuple((1 if i in dims else d) for i, d in enumerate(shape) if keepdim or i not in dims)
