"""Ops that ONNX models need and no other family declares: the rest of the elementwise math,
shape values as tensors, einsum and tile."""
import re

import torch

from .. import symbolic as S
from ..registry import Attr, register_op
from ..types import TensorType
from . import infer as I

_UNARY_FLOAT = {
    "asin": torch.asin, "acos": torch.acos, "sinh": torch.sinh, "cosh": torch.cosh,
    "asinh": torch.asinh, "acosh": torch.acosh, "atanh": torch.atanh,
}
for _name, _fn in _UNARY_FLOAT.items():
    register_op(_name, inputs="x", infer=I.unary_float, traits="elementwise")(lambda x, _fn=_fn: _fn(x))


@register_op("isinf", inputs="x", attrs={"pos": Attr("bool", True), "neg": Attr("bool", True)},
             infer=lambda ts, a: ts[0].with_dtype("bool"), traits="elementwise")
def isinf(x, pos, neg):
    """Which elements are +inf (when `pos`) or -inf (when `neg`)."""
    return (torch.isposinf(x) & pos) | (torch.isneginf(x) & neg)


@register_op("fmod", inputs="a b", infer=I.elementwise, traits="elementwise")
def fmod(a, b):
    """C-style remainder: the sign follows the dividend (`remainder` follows the divisor)."""
    return torch.fmod(a, b)


@register_op("shape_tensor", attrs={"dims": Attr("dims")},
             infer=lambda ts, a: TensorType("i64", (len(a["dims"]),)), traits="generator")
def shape_tensor(dims):
    """A 1-d i64 tensor of (possibly symbolic) dims, e.g. a shape computed at import time."""
    return torch.tensor(dims, dtype=torch.int64)


def _einsum_type(ts, a):
    lhs, _, out = a["equation"].replace(" ", "").partition("->")
    sizes = {}
    for spec, t in zip(lhs.split(","), ts):
        letters = spec.replace("...", "")
        if len(letters) != t.rank and "..." not in spec:
            raise I.ShapeError(f"einsum {a['equation']!r}: operand {t} does not have {len(letters)} dims")
        lead = t.rank - len(letters)
        ell = t.shape[spec.index("..."):spec.index("...") + lead] if "..." in spec else ()
        sizes.setdefault("...", ell)
        rest = t.shape[:spec.index("...")] + t.shape[spec.index("...") + lead:] if "..." in spec else t.shape
        for c, d in zip(letters, rest):
            sizes[c] = d if sizes.get(c, 1) == 1 else sizes[c]
    if "->" not in a["equation"]:  # implicit form: letters seen once, in alphabetical order
        out = "..." * ("..." in lhs) + "".join(sorted(c for c in set(re.sub(r"[.,]", "", lhs))
                                                      if lhs.count(c) == 1))
    shape = []
    for tok in re.findall(r"\.\.\.|[A-Za-z]", out):
        shape.extend(sizes.get("...", ()) if tok == "..." else [sizes[tok]])
    from ..dtypes import promote
    return TensorType(promote(*[(t.dtype, 1) for t in ts]), tuple(shape))


@register_op("einsum", inputs="xs*", attrs={"equation": Attr("str")}, infer=_einsum_type)
def einsum(*xs, equation):
    return torch.einsum(equation, *xs)


def _tile_type(ts, a):
    x, reps = ts[0], list(a["repeats"])
    if len(reps) < x.rank:
        raise I.ShapeError(f"tile: {len(reps)} repeats for a rank-{x.rank} input (wants at least {x.rank})")
    shape = (1,) * (len(reps) - x.rank) + tuple(x.shape)      # torch's repeat: more repeats add leading dims
    return x.with_shape(tuple(S.mul(d, r) for d, r in zip(shape, reps)))


@register_op("tile", inputs="x", attrs={"repeats": Attr("ints")}, infer=_tile_type, traits="view")
def tile(x, repeats):
    """torch's Tensor.repeat (ONNX Tile when len(repeats) == rank): x repeated repeats[i] times along dim i,
    with len(repeats) - rank new leading dims."""
    return x.repeat(repeats)


def _gather_nd_type(ts, a):
    x, idx, b = ts[0], ts[1], a["batch_dims"]
    k = idx.shape[-1]
    if not isinstance(k, int):
        raise I.ShapeError(f"gather_nd: the index depth (last dim of {idx}) must be static")
    return x.with_shape(idx.shape[:-1] + x.shape[b + k:])


@register_op("gather_nd", inputs="x index", attrs={"batch_dims": Attr("int", 0)}, infer=_gather_nd_type)
def gather_nd(x, index, batch_dims):
    """ONNX GatherND: index[..., :k] addresses x's dims batch_dims..batch_dims+k-1, after
    `batch_dims` leading dims shared by x and index."""
    lead = x.shape[:batch_dims]
    nb = 1
    for d in lead:
        nb *= d
    k = index.shape[-1]
    xs = x.reshape(nb, *x.shape[batch_dims:])
    ix = index.reshape(nb, -1, k)
    rows = torch.arange(nb, device=x.device).view(nb, 1)
    out = xs[(rows,) + tuple(ix[..., j] for j in range(k))]
    return out.reshape(*index.shape[:-1], *x.shape[batch_dims + k:])


def _topk_type(ts, a):
    x = ts[0]
    d = I.norm_dim(a["dim"], x.rank)
    shape = x.shape[:d] + (a["k"],) + x.shape[d + 1:]
    return [x.with_shape(shape), TensorType("i64", shape)]


@register_op("topk", inputs="x", attrs={"k": Attr("dim"), "dim": Attr("int", -1), "largest": Attr("bool", True)},
             infer=_topk_type)
def topk(x, k, dim, largest):
    """The k largest (or smallest) values along `dim`, sorted, and their indices; ties keep the
    lower index first (as ONNX TopK does)."""
    order = torch.sort(x, dim=dim, descending=largest, stable=True)
    return order.values.narrow(dim, 0, k), order.indices.narrow(dim, 0, k)


@register_op("cumprod", inputs="x", attrs={"dim": Attr("int")}, infer=I.same)
def cumprod(x, dim):
    return torch.cumprod(x, dim, dtype=x.dtype)  # torch would widen small ints to i64
