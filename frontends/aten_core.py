"""ATen -> IR rules for the rarer ops of the core ATen opset (the common ones are in aten.py).

Written from the ATen op semantics (torch docs); each composes existing IR ops unless noted:

    scatter / scatter_add / scatter_reduce / index_put   -> scatter, index_put (ir/opset/scatter.py)
    masked_scatter(x, m, src)        -> where(m, src.flatten()[cumsum(m) - 1], x)
    group_norm                       -> layer_norm over [N, G, C/G*spatial] + per-channel affine
    diagonal                         -> index with two aranges
    avg/max_pool3d, adaptive_avg_pool3d -> two 2-d pools ((H, W), then (D, 1)): exact, the window factorizes
    _pdist_forward, _embedding_bag, as_strided (contiguous), linalg_vector_norm, .item() as a 0-d tensor
    bucketize / searchsorted (1-d boundaries) -> sum(x[..., None] > boundaries) over the new axis
"""
from __future__ import annotations

import torch

from . import aten
from .aten import reduce_dims, rule


@rule("empty_strided.default", "new_empty_strided.default")
def _empty_strided(cx, a):
    return cx.op("full", shape=list(cx.out_shape()), value=0, dtype=cx.out_dtype())


# ---- scatter family (functionalized in-place writes) --------------------------------------------
@rule("scatter.src", "scatter.value", "scatter_add.default", "scatter_reduce.two", "scatter.reduce",
      "scatter.value_reduce")
def _scatter(cx, a):
    x, index = cx.value(a["self"]), cx.value(a["index"])
    src = a.get("src", a.get("value"))
    if not isinstance(src, torch.fx.Node):  # scatter.value: a scalar written everywhere index points
        src = cx.op("expand", cx.value(src, x.type.dtype), shape=list(index.type.shape))
    else:
        src = cx.value(src)
    reduce = a.get("reduce") or "none"
    reduce = {"add": "sum", "multiply": "prod"}.get(reduce, reduce)
    if cx.target == "aten.scatter_add.default":
        reduce = "sum"
    return cx.op("scatter", x, index, src, dim=a["dim"] % x.type.rank, reduce=reduce,
                 include_self=bool(a.get("include_self", True)))


@rule("index_put.default")
def _index_put(cx, a):
    axes = [i for i, t in enumerate(a["indices"]) if t is not None]
    idx = [cx.value(a["indices"][i]) for i in axes]
    x = cx.value(a["self"])
    return cx.op("index_put", x, cx.value(a["values"], x.type.dtype), *idx, axes=axes,
                 accumulate=bool(a["accumulate"]))


@rule("masked_scatter.default")
def _masked_scatter(cx, a):
    """out[mask] = the first mask.sum() elements of src, in order: the k-th true position (row-major)
    takes src.flatten()[k] (a cumulative sum of the mask numbers them)."""
    x, mask, src = cx.value(a["self"]), cx.value(a["mask"]), cx.value(a["source"])
    shape = list(x.type.shape)
    mask = cx.op("expand", mask, shape=shape) if not cx.dims_equal_all(mask.type.shape, shape) else mask
    flat_mask = cx.op("reshape", cx.cast(mask, "i64"), shape=[_numel(cx, shape)])
    pos = cx.op("sub", cx.op("cumsum", flat_mask, dim=0), cx.value(1, "i64"))
    pos = cx.op("maximum", pos, cx.value(0, "i64"))
    flat_src = cx.op("reshape", src, shape=[_numel(cx, list(src.type.shape))])
    picked = cx.op("reshape", cx.op("index_select", flat_src, pos, dim=0), shape=shape)
    return cx.op("where", mask, cx.cast(picked, x.type.dtype), x)


def _numel(cx, shape):
    from ..ir import symbolic
    return symbolic.product(shape)


# ---- more nn -------------------------------------------------------------------------------------
@rule("native_group_norm.default", "group_norm.default")
def _group_norm(cx, a):
    """Normalize each of G channel groups over (C/G, *spatial), then the per-channel affine."""
    x = cx.value(a["input"])
    shape = list(x.type.shape)
    groups = a["group"] if "group" in a else a["num_groups"]
    n, c = shape[0], shape[1]
    if not isinstance(c, int):
        raise cx.unsupported("group_norm over a symbolic channel count")
    grouped = cx.op("reshape", x, shape=[n, groups, _numel(cx, [c // groups, *shape[2:]])])
    y = cx.op("layer_norm", grouped, axes=1, eps=float(a["eps"]))
    y = cx.op("reshape", y, shape=shape)
    per_channel = [c] + [1] * (len(shape) - 2)
    if a["weight"] is not None:
        y = cx.op("mul", y, cx.op("reshape", cx.value(a["weight"]), shape=per_channel))
    if a["bias"] is not None:
        y = cx.op("add", y, cx.op("reshape", cx.value(a["bias"]), shape=per_channel))
    return (y, None, None) if "native" in cx.target else y


@rule("diagonal.default")
def _diagonal(cx, a):
    """Elements (i, i + offset) of dims dim1, dim2, as a last dim (torch.diagonal)."""
    x = cx.value(a["self"])
    r = x.type.rank
    d1, d2, off = a["dim1"] % r, a["dim2"] % r, a["offset"]
    rest = [d for d in range(r) if d not in (d1, d2)]
    xp = cx.op("permute", x, dims=rest + [d1, d2]) if rest + [d1, d2] != list(range(r)) else x
    n = cx.out_shape()[-1]
    if not isinstance(n, int):
        raise cx.unsupported("diagonal of symbolic size")
    rows = cx.op("arange", start=max(-off, 0), end=max(-off, 0) + n, step=1, dtype="i64")
    cols = cx.op("arange", start=max(off, 0), end=max(off, 0) + n, step=1, dtype="i64")
    return cx.op("index", xp, rows, cols, axes=[r - 2, r - 1])


def _triple(v):
    v = [v] if isinstance(v, int) else list(v)
    return v * 3 if len(v) == 1 else v


def _pool3d(cx, x, op, kernel, stride, padding, **kw):
    """A 3-d pool over [N, C, D, H, W] as two 2-d pools: (H, W) first, then (D, 1). Exact for max and
    for average (the window, its padding and its count factor per axis)."""
    n, c, d, h, w = x.type.shape
    y = cx.op(op, cx.op("reshape", x, shape=[n, _numel(cx, [c, d]), h, w]), kernel=kernel[1:],
              stride=stride[1:], padding=padding[1:], **kw)
    h2, w2 = y.type.shape[2:]
    y = cx.op(op, cx.op("reshape", y, shape=[n, c, d, _numel(cx, [h2, w2])]), kernel=[kernel[0], 1],
              stride=[stride[0], 1], padding=[padding[0], 0], **kw)
    return cx.op("reshape", y, shape=list(cx.out_shape() if not isinstance(cx.out_val(), tuple)
                                          else cx.out_shapes()[0]))


@rule("avg_pool3d.default")
def _avg_pool3d(cx, a):
    if a["divisor_override"] is not None:
        raise cx.unsupported("avg_pool3d with divisor_override")
    x, k = cx.value(a["self"]), _triple(a["kernel_size"])
    stride = _triple(a["stride"]) if a["stride"] else k
    if a["ceil_mode"]:
        return aten.pool_nd(cx, x, "avg", k, stride, _triple(a["padding"]), [1, 1, 1], True, a["count_include_pad"])
    return _pool3d(cx, x, "avg_pool2d", k, stride, _triple(a["padding"]),
                   count_include_pad=bool(a["count_include_pad"]))


@rule("max_pool3d_with_indices.default", "max_pool3d.default")
def _max_pool3d(cx, a):
    x, k, dil = cx.value(a["self"]), _triple(a["kernel_size"]), _triple(a["dilation"])
    stride = _triple(a["stride"]) if a["stride"] else k
    if dil != [1, 1, 1] or a["ceil_mode"]:
        y = aten.pool_nd(cx, x, "max", k, stride, _triple(a["padding"]), dil, bool(a["ceil_mode"]))
    else:
        y = _pool3d(cx, x, "max_pool2d", k, stride, _triple(a["padding"]))
    return (y, None) if "indices" in cx.target else y


@rule("_adaptive_avg_pool3d.default", "adaptive_avg_pool3d.default")
def _adaptive_avg_pool3d(cx, a):
    """Adaptive average pooling is separable too: the bins of each axis are independent."""
    x = cx.value(a["self"])
    n, c, d, h, w = x.type.shape
    od, oh, ow = _triple(a["output_size"])
    y = cx.op("adaptive_avg_pool2d", cx.op("reshape", x, shape=[n, _numel(cx, [c, d]), h, w]), output_size=[oh, ow])
    y = cx.op("adaptive_avg_pool2d", cx.op("reshape", y, shape=[n, c, d, oh * ow]), output_size=[od, oh * ow])
    return cx.op("reshape", y, shape=list(cx.out_shape()))


@rule("_pdist_forward.default")
def _pdist(cx, a):
    """Distances between rows i < j of x [N, M], in row-major pair order (torch.pdist)."""
    x = cx.value(a["self"])
    n = x.type.shape[0]
    if not isinstance(n, int):
        raise cx.unsupported("pdist over a symbolic number of rows")
    ii, jj = torch.triu_indices(n, n, 1)
    rows = cx.op("index_select", x, cx.graph.add_weight(cx.graph.fresh_name("pdist_i"), ii.clone()), dim=0)
    cols = cx.op("index_select", x, cx.graph.add_weight(cx.graph.fresh_name("pdist_j"), jj.clone()), dim=0)
    diff = cx.op("abs", cx.op("sub", rows, cols))
    p, f = float(a["p"]), diff.type.dtype
    if p == float("inf"):
        return cx.op("amax", diff, dims=[-1])
    if p == 2:
        return cx.op("sqrt", cx.op("sum", cx.op("mul", diff, diff), dims=[-1]))
    if p == 1:
        return cx.op("sum", diff, dims=[-1])
    return cx.op("pow", cx.op("sum", cx.op("pow", diff, cx.value(p, f)), dims=[-1]), cx.value(1.0 / p, f))


@rule("as_strided.default", "as_strided_copy.default")
def _as_strided(cx, a):
    """A strided view of a contiguous tensor: a gather from its flattened elements at
    offset + sum_i(arange(size_i) * stride_i) (static sizes only)."""
    t = a["self"].meta.get("val") if isinstance(a["self"], torch.fx.Node) else None
    size, stride = list(a["size"]), list(a["stride"])
    offset = a["storage_offset"] or 0
    if t is None or not t.is_contiguous() or t.storage_offset() != 0 or not all(
            isinstance(v, int) for v in [*size, *stride, offset, *t.shape]):
        raise cx.unsupported("as_strided of a non-contiguous or symbolic-size tensor")
    idx = torch.full(size, offset, dtype=torch.int64)
    for i, (s, st) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[i] = s
        idx = idx + (torch.arange(s) * st).view(shape)
    x = cx.value(a["self"])
    flat = cx.op("reshape", x, shape=[t.numel()])
    index = cx.graph.add_weight(cx.graph.fresh_name("as_strided_index"), idx.reshape(-1).clone())
    return cx.op("reshape", cx.op("index_select", flat, index, dim=0), shape=list(size))


@rule("_embedding_bag.default", "_embedding_bag_forward_only.default")
def _embedding_bag(cx, a):
    """Per-bag sum/mean/max of embedding rows. 2-d indices (offsets None) are bags of equal size;
    1-d indices with `offsets` are ragged bags: a one-hot [bags, n] matrix built from the offsets
    sums them (mean: / count). Other outputs (offset2bag, ...) are not produced."""
    if a["per_sample_weights"] is not None and a["mode"] != 0:
        raise cx.unsupported("embedding_bag per_sample_weights with mode other than sum")
    if a.get("padding_idx") not in (None, -1):
        raise cx.unsupported("embedding_bag with padding_idx")
    w, ids, offsets = cx.value(a["weight"]), cx.value(a["indices"]), a["offsets"]
    rows = cx.op("embedding", w, ids)
    if a["per_sample_weights"] is not None:
        rows = cx.op("mul", rows, cx.op("unsqueeze", cx.value(a["per_sample_weights"]), dim=-1))
    mode = ["sum", "mean", "max"][a["mode"]]
    if ids.type.rank == 2:
        out = cx.op({"sum": "sum", "mean": "mean", "max": "amax"}[mode], rows, dims=[1])
        return out, None, None, None
    if mode == "max":
        raise cx.unsupported("embedding_bag mode=max with offsets")
    off = cx.value(offsets)
    n = ids.type.shape[0]
    bags = cx.out_shapes()[0][0]
    pos = cx.op("arange", start=0, end=n, step=1, dtype="i64")
    starts = off
    if a["include_last_offset"]:
        starts = cx.op("slice", off, dim=0, start=0, end=-1)
    # bag of position p = (number of starts <= p) - 1
    le = cx.op("le", cx.op("unsqueeze", starts, dim=1), cx.op("unsqueeze", pos, dim=0))    # [bags, n]
    bag_of = cx.op("sub", cx.op("sum", cx.cast(le, "i64"), dims=[0]), cx.value(1, "i64"))  # [n]
    onehot = cx.op("eq", cx.op("unsqueeze", cx.op("arange", start=0, end=bags, step=1, dtype="i64"), dim=1),
                   cx.op("unsqueeze", bag_of, dim=0))
    if a["include_last_offset"]:
        end = cx.op("select", off, dim=0, index=-1)
        onehot = cx.op("logical_and", onehot, cx.op("unsqueeze", cx.op("lt", pos, end), dim=0))
    m = cx.cast(onehot, rows.type.dtype)
    out = cx.op("matmul", m, rows)
    if mode == "mean":
        cnt = cx.op("maximum", cx.op("sum", m, dims=[1], keepdim=True), cx.value(1.0, rows.type.dtype))
        out = cx.op("div", out, cnt)
    return out, None, None, None


@rule("resize_.default", "resize.default")
def _resize(cx, a):
    """Only a resize to the tensor's own shape (a no-op); anything else reallocates storage."""
    x = cx.value(a["self"])
    if not cx.dims_equal_all(x.type.shape, cx.out_shape()):
        raise cx.unsupported("resize_ to another shape (in-place storage reallocation)")
    return x


@rule("linalg_vector_norm.default", "norm.ScalarOpt_dim", "norm.Scalar")
def _vector_norm(cx, a):
    """The p-norm over `dim` (all dims when None): wav2vec2's weight-norm convolution computes it."""
    x = cx.value(a["self"])
    if a.get("dtype") is not None:
        x = cx.cast(x, cx.out_dtype())
    p = a.get("ord", a.get("p", 2))
    p = 2.0 if p is None else float(p)
    dims, keep = reduce_dims(a), bool(a.get("keepdim", False))
    mag = cx.op("abs", x)
    f = mag.type.dtype
    if p == float("inf"):
        return cx.op("amax", mag, dims=dims, keepdim=keep)
    if p == 1:
        return cx.op("sum", mag, dims=dims, keepdim=keep)
    if p == 2:
        return cx.op("sqrt", cx.op("sum", cx.op("mul", x, x), dims=dims, keepdim=keep))
    if p == 0:
        return cx.op("sum", cx.cast(cx.op("ne", mag, cx.value(0.0, f)), f), dims=dims, keepdim=keep)
    total = cx.op("sum", cx.op("pow", mag, cx.value(p, f)), dims=dims, keepdim=keep)
    return cx.op("pow", total, cx.value(1.0 / p, f))


@rule("_local_scalar_dense.default", "item.default")
def _item(cx, a):
    """`t.item()` whose value only feeds tensor math (`y * x.sum().item()`): the one-element tensor itself,
    as a 0-d operand (torch promotes a 0-d tensor like a Python scalar). A value used as a size or in
    Python control flow is data-dependent: refused where it is used."""
    x = cx.value(a["self"])
    return x if x.type.rank == 0 else cx.op("reshape", x, shape=[])


@rule("bucketize.Tensor", "searchsorted.Tensor")
def _bucketize(cx, a):
    """torch.bucketize(x, boundaries) / torch.searchsorted(boundaries, x) with a 1-d boundaries tensor: the
    count of boundaries below x (<= x with right=True, or side='right'), NaN last as torch sorts it, as
    sum(compare(x[..., None], boundaries)) over the new axis; i64, or i32 with out_int32."""
    if cx.target == "aten.searchsorted.Tensor":
        b, x = cx.value(a["sorted_sequence"]), cx.value(a["self"])
        if a.get("sorter") is not None:
            raise cx.unsupported("searchsorted with a sorter")
        right = bool(a.get("right")) or a.get("side") == "right"
    else:
        x, b, right = cx.value(a["self"]), cx.value(a["boundaries"]), bool(a.get("right"))
    if b.type.rank != 1:
        raise cx.unsupported(f"{cx.target} with {b.type.rank}-d boundaries (1-d are supported)")
    below = cx.op("ge" if right else "gt", cx.op("unsqueeze", x, dim=-1), b)
    n = cx.op("sum", cx.cast(below, "i64"), dims=[-1], keepdim=False)
    if x.type.dtype in ("f16", "bf16", "f32", "f64"):
        n = cx.op("where", cx.op("isnan", x), cx.op("dim_value", expr=b.type.shape[0]), n)
    return cx.cast(n, "i32" if a.get("out_int32") else "i64")


# ---- mixtures of experts (transformers >= 5 `grouped_mm_experts_forward`) -------------------------
@rule("histc.default")
def _histc(cx, a):
    """torch.histc(x, bins, min, max) with min < max given (torch's CPU rule: bin = int((x - min) / (max -
    min) * bins), x == max in the last bin, values outside [min, max] not counted): a one-hot per element
    against arange(bins), summed. A MoE router's tokens per expert."""
    lo, hi, bins = float(a["min"]), float(a["max"]), int(a["bins"])
    if not lo < hi:
        raise cx.unsupported("histc with min >= max (the range taken from the data)")
    x = cx.value(a["self"])
    flat = cx.op("reshape", x, shape=[-1])
    dt = x.type.dtype
    pos = cx.op("mul", cx.op("div", cx.op("sub", flat, cx.value(lo, dt)), cx.value(hi - lo, dt)), cx.value(float(bins), dt))
    pos = cx.op("clamp", cx.op("cast", cx.op("floor", pos), dtype="i64"), max=bins - 1)   # x == max: the last bin
    inside = cx.op("logical_and", cx.op("ge", flat, cx.value(lo, dt)), cx.op("le", flat, cx.value(hi, dt)))
    hit = cx.op("logical_and", cx.op("eq", cx.op("unsqueeze", pos, dim=1), cx.op("arange", end=bins)),
                cx.op("unsqueeze", inside, dim=1))
    return cx.op("sum", cx.op("cast", hit, dtype=cx.out_dtype()), dims=[0])


def _grouped_mm(cx, a):
    x, w = cx.value(a.get("input", a.get("self"))), cx.value(a.get("weight", a.get("mat2")))
    offs = a.get("offs")
    if offs is None or a.get("bias") is not None or x.type.rank != 2 or w.type.rank != 3:
        raise cx.unsupported(f"{cx.target} other than x [rows, in] by w [groups, in, out] with offsets, no bias")
    out = cx.op("grouped_mm", x, w, cx.value(offs))
    return cx.cast(out, cx.out_dtype())


rule("_grouped_mm.default")(_grouped_mm)
# transformers' CPU fallback, a custom op (transformers/integrations/moe.py): by name, as `rule` checks torch.ops.aten
aten.RULES["transformers.grouped_mm_fallback.default"] = _grouped_mm
