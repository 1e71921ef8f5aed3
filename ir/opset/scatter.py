"""Scatter family: write (or reduce) values into a copy of a tensor at given indices.

    scatter(x, index, src) {dim, reduce}      out = x; out[.., index[i], ..] (reduce)= src[i]   (torch.scatter_reduce)
    index_put(x, values, indices*) {axes, accumulate}   out = x; out[idx] = values (or += with accumulate)

Functionalized in-place writes (`x[idx] = v`, `x.scatter_(..)`) arrive as these. Source: the
torch.scatter / torch.Tensor.scatter_reduce / torch.Tensor.index_put_ docs.
"""
import torch

from ..registry import Attr, register_op
from . import infer as I

REDUCE = ("none", "sum", "prod", "mean", "amax", "amin")


@register_op("scatter", inputs="x index src",
             attrs={"dim": Attr("int"), "reduce": Attr("str", "none"), "include_self": Attr("bool", True)},
             infer=I.same)
def scatter(x, index, src, dim, reduce, include_self):
    """x with src's elements written at `index` along `dim` (index and src have the same shape);
    `reduce` combines several writes to one place (and the old value when include_self): none (the
    last write wins where indices repeat, as in torch: unspecified which), sum, prod, mean, amax, amin."""
    if reduce not in REDUCE:
        raise ValueError(f"scatter: reduce={reduce!r}; expected one of {REDUCE}")
    src, index = src.to(x.dtype), index.long()
    if reduce == "none":
        return x.scatter(dim, index, src)
    return x.scatter_reduce(dim, index, src, reduce, include_self=include_self)


@register_op("index_put", inputs="x values indices*",
             attrs={"axes": Attr("ints"), "accumulate": Attr("bool", False)}, infer=I.same)
def index_put(x, values, *indices, axes, accumulate):
    """x with `values` (broadcast to the indexed shape) written at x[..., i0, ..., i1, ...] (integer
    tensor indices[k] indexes dim axes[k]; boolean masks as in torch); summed in with `accumulate`."""
    idx = [None] * x.dim()
    for ax, t in zip(axes, indices):
        idx[ax] = t
    while idx and idx[-1] is None:
        idx.pop()
    return torch.ops.aten.index_put.default(x, idx, values.to(x.dtype), accumulate)
