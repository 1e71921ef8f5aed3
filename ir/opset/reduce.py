"""Reductions over a set of dims (`dims=None` reduces everything)."""
import torch

from ..registry import Attr, register_op
from . import infer as I

_ATTRS = {"dims": Attr("ints", None), "keepdim": Attr("bool", False)}


def _reduce_type(ts, a):
    return ts[0].with_shape(I.reduce_shape(ts[0].shape, a["dims"], a["keepdim"]))


def _dims(x, dims):
    return tuple(range(x.dim())) if not dims else tuple(dims)


def _sum_type(ts, a):
    t = _reduce_type(ts, a)
    return t.with_dtype("i64") if t.dtype in ("bool", "i8", "u8", "i16", "i32") else t


@register_op("sum", inputs="x", attrs=_ATTRS, infer=_sum_type,
             traits="reduction")
def sum_(x, dims, keepdim):
    return torch.sum(x, _dims(x, dims), keepdim=keepdim)


@register_op("mean", inputs="x", attrs=_ATTRS, infer=_reduce_type,
             traits="reduction")
def mean(x, dims, keepdim):
    return torch.mean(x, _dims(x, dims), keepdim=keepdim)


@register_op("amax", inputs="x", attrs=_ATTRS, infer=_reduce_type,
             traits="reduction")
def amax(x, dims, keepdim):
    return torch.amax(x, _dims(x, dims), keepdim=keepdim)


@register_op("amin", inputs="x", attrs=_ATTRS, infer=_reduce_type,
             traits="reduction")
def amin(x, dims, keepdim):
    return torch.amin(x, _dims(x, dims), keepdim=keepdim)


@register_op("prod", inputs="x", attrs=_ATTRS, infer=_reduce_type,
             traits="reduction")
def prod(x, dims, keepdim):
    for d in sorted(_dims(x, dims), reverse=True):
        x = torch.prod(x, d, keepdim=keepdim)
    return x


@register_op("var", inputs="x", attrs={**_ATTRS, "correction": Attr("int", 1)}, infer=_reduce_type,
             traits="reduction")
def var(x, dims, keepdim, correction):
    return torch.var(x, _dims(x, dims), correction=correction, keepdim=keepdim)


def _arg_type(ts, a):
    return ts[0].with_shape(I.reduce_shape(ts[0].shape, [a["dim"]], a["keepdim"])).with_dtype("i64")


@register_op("argmax", inputs="x", attrs={"dim": Attr("int"), "keepdim": Attr("bool", False)}, infer=_arg_type,
             traits="reduction")
def argmax(x, dim, keepdim):
    return torch.argmax(x, dim, keepdim)


@register_op("argmin", inputs="x", attrs={"dim": Attr("int"), "keepdim": Attr("bool", False)}, infer=_arg_type,
             traits="reduction")
def argmin(x, dim, keepdim):
    return torch.argmin(x, dim, keepdim)
