"""Less common ONNX ops, composed from IR primitives: losses, one-hot style ops, top-k,
cumulative product, depth/space rearrangements, group/mean-variance/Lp normalization."""
from __future__ import annotations

from ..ir import symbolic as S
from ..ir.opset import infer as I
from .onnx_ops import _axis, _c, _same_dtype, _scalar, onnx_op


# ---- losses -------------------------------------------------------------------------------------------
def _nll(imp, a, log_prob, target, weight):
    """ONNX NegativeLogLikelihoodLoss on `log_prob` [N, C, d...] with `target` [N, d...]."""
    reduction, ignore = a.get("reduction", "mean"), a.get("ignore_index")
    valid = None
    if ignore is not None:
        valid = imp.op("ne", target, _scalar(imp, ignore, target.type.dtype))
        target = imp.op("where", valid, target, _scalar(imp, 0, target.type.dtype))
    picked = imp.op("squeeze", imp.op("gather", log_prob, imp.op("unsqueeze", target, dim=1), dim=1), dims=[1])
    w = imp.op("index_select", weight, target, dim=0) if weight is not None else None
    if valid is not None:
        mask = imp.op("cast", valid, dtype=log_prob.type.dtype)
        w = mask if w is None else imp.op("mul", w, mask)
    loss = imp.op("neg", picked if w is None else imp.op("mul", picked, w))
    if reduction == "none":
        return loss
    total = imp.op("sum", loss)
    if reduction == "sum":
        return total
    if w is None:
        return imp.op("mean", loss)
    return imp.op("div", total, imp.op("sum", w))


@onnx_op("NegativeLogLikelihoodLoss")
def _nll_loss(imp, a):
    return _nll(imp, a, imp.value(0), imp.value(1), imp.value(2) if imp.has(2) else None)


@onnx_op("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(imp, a):
    log_prob = imp.op("log_softmax", imp.value(0), dim=1)
    loss = _nll(imp, a, log_prob, imp.value(1), imp.value(2) if imp.has(2) else None)
    return [loss, log_prob]


# ---- index-producing ops ---------------------------------------------------------------------------------
def _one_hot_along(imp, idx, depth, axis, dtype):
    """bool mask: out[..., j, ...] = (idx[...] == j) with j on `axis` of the result."""
    rank = idx.type.rank + 1
    axis = axis % rank
    positions = imp.op("arange", end=depth, dtype=idx.type.dtype)
    positions = imp.op("reshape", positions, shape=[depth if i == axis else 1 for i in range(rank)])
    return imp.op("eq", imp.op("unsqueeze", idx, dim=axis), positions)


@onnx_op("Hardmax")
def _hardmax(imp, a):
    x = imp.value(0)
    ax = _axis(a, "axis", x.type.rank, -1)
    idx = imp.op("argmax", x, dim=ax, keepdim=False)
    hot = _one_hot_along(imp, idx, x.type.shape[ax], ax, x.type.dtype)
    return imp.op("cast", hot, dtype=x.type.dtype)


@onnx_op("OneHot")
def _one_hot(imp, a):
    idx = imp.value(0)
    depth = int(imp.scalar(1, "depth"))
    values = imp.value(2)
    idx = _same_dtype(imp, idx, "i64") if idx.type.dtype not in ("f32", "f64", "f16") else imp.op("cast", idx, dtype="i64")
    idx = imp.op("where", imp.op("lt", idx, _scalar(imp, 0, "i64")),
                 imp.op("add", idx, _scalar(imp, depth, "i64")), idx)  # negative indices count from the end
    hot = _one_hot_along(imp, idx, depth, a.get("axis", -1), values.type.dtype)
    off = imp.op("select", values, dim=0, index=0)
    on = imp.op("select", values, dim=0, index=1)
    return imp.op("where", hot, on, off)


@onnx_op("TopK")
def _topk(imp, a):
    x = imp.value(0)
    k = imp.dims(1, "k")[0]
    if not a.get("sorted", 1):
        raise imp.unsupported("TopK with sorted=0 is not supported")
    return imp.op("topk", x, k=k, dim=_axis(a, "axis", x.type.rank, -1), largest=bool(a.get("largest", 1)))


@onnx_op("EyeLike")
def _eye_like(imp, a):
    from .onnx_import import ir_dtype
    t = imp.type(0)
    rows, cols = t.shape
    dtype = ir_dtype(a["dtype"], "EyeLike dtype") if "dtype" in a else t.dtype
    r = imp.op("unsqueeze", imp.op("arange", end=rows, dtype="i64"), dim=1)
    c = imp.op("unsqueeze", imp.op("arange", end=cols, dtype="i64"), dim=0)
    diag = imp.op("eq", imp.op("add", r, _scalar(imp, a.get("k", 0), "i64")), c)
    return imp.op("cast", diag, dtype=dtype)


# ---- cumulative product ---------------------------------------------------------------------------------
@onnx_op("CumProd")
def _cumprod(imp, a):
    x = imp.value(0)

    def build(ax):
        xr = imp.op("flip", x, dims=[ax]) if a.get("reverse") else x
        y = imp.op("cumprod", xr, dim=ax)
        if a.get("exclusive"):  # shift by one: [1, y0, y1, ...]
            ones_shape = list(x.type.shape)
            ones_shape[ax] = 1
            head = imp.op("full", shape=ones_shape, value=1, dtype=x.type.dtype)
            y = imp.op("concat", head, imp.op("slice", y, dim=ax, start=0, end=S.add(x.type.shape[ax], -1)), dim=ax)
        return imp.op("flip", y, dims=[ax]) if a.get("reverse") else y
    from .onnx_ops import runtime_axis
    return runtime_axis(imp, 1, x.type.rank, build)


# ---- depth <-> space ------------------------------------------------------------------------------------
@onnx_op("DepthToSpace")
def _depth_to_space(imp, a):
    x = imp.value(0)
    n, c, h, w = x.type.shape
    b = a["blocksize"]
    cc = S.floordiv(c, b * b)
    if a.get("mode", "DCR") == "DCR":
        y = imp.op("permute", imp.op("reshape", x, shape=[n, b, b, cc, h, w]), dims=[0, 3, 4, 1, 5, 2])
    else:
        y = imp.op("permute", imp.op("reshape", x, shape=[n, cc, b, b, h, w]), dims=[0, 1, 4, 2, 5, 3])
    return imp.op("reshape", y, shape=[n, cc, S.mul(h, b), S.mul(w, b)])


@onnx_op("SpaceToDepth")
def _space_to_depth(imp, a):
    x = imp.value(0)
    n, c, h, w = x.type.shape
    b = a["blocksize"]
    hb, wb = S.floordiv(h, b), S.floordiv(w, b)
    perm = [0, 3, 5, 1, 2, 4] if a.get("mode", "DCR") == "DCR" else [0, 1, 3, 5, 2, 4]
    y = imp.op("permute", imp.op("reshape", x, shape=[n, c, hb, b, wb, b]), dims=perm)
    return imp.op("reshape", y, shape=[n, S.mul(c, b * b), hb, wb])


# ---- normalizations -------------------------------------------------------------------------------------
def _standardize(imp, x, dims, eps):
    mean = imp.op("mean", x, dims=dims, keepdim=True)
    var = imp.op("var", x, dims=dims, keepdim=True, correction=0)
    return imp.op("mul", imp.op("sub", x, mean), imp.op("rsqrt", imp.op("add", var, _c(imp, x, eps))))


@onnx_op("MeanVarianceNormalization")
def _mvn(imp, a):
    x = imp.value(0)
    mean = imp.op("mean", x, dims=a.get("axes", [0, 2, 3]), keepdim=True)
    centered = imp.op("sub", x, mean)
    std = imp.op("sqrt", imp.op("mean", imp.op("mul", centered, centered), dims=a.get("axes", [0, 2, 3]), keepdim=True))
    return imp.op("div", centered, imp.op("add", std, _c(imp, x, 1e-9)))


@onnx_op("GroupNormalization")
def _group_norm(imp, a):
    x, scale, bias = imp.value(0), imp.value(1), imp.value(2)
    groups = a["num_groups"]
    n, c = x.type.shape[:2]
    rest = list(x.type.shape[2:])
    xf = _same_dtype(imp, x, "f32")  # stash_type: statistics in f32
    xg = imp.op("reshape", xf, shape=[n, groups, -1])
    y = imp.op("reshape", _standardize(imp, xg, [2], a.get("epsilon", 1e-5)), shape=[n, c] + rest)
    per_channel = [c] + [1] * len(rest)
    y = _same_dtype(imp, y, x.type.dtype)
    return imp.op("add", imp.op("mul", y, imp.op("reshape", scale, shape=per_channel)),
                  imp.op("reshape", bias, shape=per_channel))


@onnx_op("LpNormalization")
def _lp_norm(imp, a):
    x = imp.value(0)
    ax = _axis(a, "axis", x.type.rank, -1)
    p = a.get("p", 2)
    if p == 1:
        norm = imp.op("sum", imp.op("abs", x), dims=[ax], keepdim=True)
    else:
        norm = imp.op("sqrt", imp.op("sum", imp.op("mul", x, x), dims=[ax], keepdim=True))
    return imp.op("where", imp.op("eq", norm, _c(imp, x, 0)), _c(imp, x, 0), imp.op("div", x, norm))  # 0/0 -> 0


@onnx_op("Shrink")
def _shrink(imp, a):
    x = imp.value(0)
    lambd, bias = a.get("lambd", 0.5), a.get("bias", 0.0)
    below = imp.op("lt", x, _c(imp, x, -lambd))
    above = imp.op("gt", x, _c(imp, x, lambd))
    zero = _c(imp, x, 0)
    return imp.op("where", below, imp.op("add", x, _c(imp, x, bias)),
                  imp.op("where", above, imp.op("sub", x, _c(imp, x, bias)), zero))
