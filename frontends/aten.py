"""ATen -> IR conversion rules, one small function per ATen op family.

Each rule gets the conversion context `cx` (see torch_export.Converter) and the op's arguments
bound by name from the ATen schema (defaults filled in), and returns the IR value(s) that
stand for the FX node's result. Shapes that torch already knows (reshape/expand targets,
constructor sizes, split sizes) are read from the node's FakeTensor metadata, so symbolic
sizes arrive as dim expressions instead of chains of `sym_size` arithmetic.

    add.Tensor(x, 1.0)                      -> add(%x, constant 1.0)
    view(x, [1, s0, -1, 16])                -> reshape(%x) {shape=[1,"seq",4,16]}
    transpose(x, 1, 2)                      -> permute(%x) {dims=[0,2,1,3]}
    scaled_dot_product_attention(q,k,v,m)   -> attention(%q, %k, %v, %m) {scale=...}
    clone / alias / detach / to.device / _assert_*          -> (dropped)
"""
from __future__ import annotations

from typing import Callable

import torch

from ..ir import compose

RULES: dict[str, Callable] = {}
# ops whose scalar result (.item()) stays a 0-d tensor value instead of becoming a size expression
SCALAR_TENSOR_OPS = {"aten._local_scalar_dense.default", "aten.item.default"}
# op name -> predicate(fx node): the rule cannot convert this node; torch's decomposition is used instead
DECLINE: dict[str, Callable] = {}
# ATen ops that do nothing for inference: the node's value is its first argument.
IDENTITY = {
    "aten.alias.default", "aten.clone.default", "aten.contiguous.default", "aten.detach.default",
    "aten.detach_.default", "aten.lift_fresh_copy.default", "aten.lift_fresh.default",
}
# Side-effect-only nodes (checks, hints) that produce nothing the graph uses.
IGNORED = {
    "aten._assert_tensor_metadata.default", "aten._assert_async.msg", "aten._assert_async.default",
    "aten._assert_scalar.default", "aten.sym_constrain_range_for_size.default",
    "aten.sym_constrain_range.default", "aten._functional_sym_constrain_range.default",
}


def rule(*names: str):
    """Register `fn` for the ATen overloads `names` ("add.Tensor"); names this torch lacks are skipped."""
    def deco(fn):
        for n in names:
            packet, overload = n.rsplit(".", 1)
            if hasattr(getattr(torch.ops.aten, packet, None), overload):
                RULES["aten." + n] = fn
        return fn
    return deco


# ---- elementwise ------------------------------------------------------------------------------
_BINARY = {
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "maximum": "maximum", "minimum": "minimum",
    "remainder": "remainder", "floor_divide": "floor_divide", "pow": "pow", "eq": "eq", "ne": "ne",
    "lt": "lt", "le": "le", "gt": "gt", "ge": "ge", "logical_and": "logical_and",
    "logical_or": "logical_or", "logical_xor": "logical_xor", "bitwise_and": "bitwise_and",
    "bitwise_or": "bitwise_or", "bitwise_xor": "bitwise_xor", "__and__": "bitwise_and",
    "__or__": "bitwise_or", "__xor__": "bitwise_xor", "fmod": "fmod",
}
_IDENTITY_OPERAND = {"add": 0, "sub": 0, "mul": 1, "div": 1}  # x op c == x


def _binary_rule(ir_op):
    def convert(cx, a):
        x, y = a["self"], a.get("other", a.get("exponent"))
        alpha = a.get("alpha", 1)
        if alpha != 1:
            y = cx.scaled(y, alpha)
        if _IDENTITY_OPERAND.get(ir_op) is not None and cx.is_number(y, _IDENTITY_OPERAND[ir_op]):
            same = cx.same_as_output(x)
            if same is not None:
                return same
        return cx.op(ir_op, cx.value(x), cx.value(y))
    return convert


for _aten, _ir in _BINARY.items():
    rule(*(f"{_aten}.{ov}" for ov in ("Tensor", "Scalar", "Tensor_Tensor", "Tensor_Scalar", "default")))(
        _binary_rule(_ir))


@rule("pow.Scalar")
def _pow_scalar(cx, a):
    return cx.op("pow", cx.value(a["self"]), cx.value(a["exponent"]))


@rule("rsub.Scalar", "rsub.Tensor")
def _rsub(cx, a):
    x = cx.scaled(a["self"], a["alpha"]) if a["alpha"] != 1 else a["self"]
    return cx.op("sub", cx.value(a["other"]), cx.value(x))


@rule("div.Tensor_mode", "div.Scalar_mode")
def _div_mode(cx, a):
    x, y = cx.value(a["self"]), cx.value(a["other"])
    if a["rounding_mode"] is None:
        return cx.op("div", x, y)
    if a["rounding_mode"] == "floor":
        return cx.op("floor_divide", x, y)
    raise cx.unsupported("div with rounding_mode='trunc'")


_UNARY = ["neg", "abs", "relu", "sign", "floor", "ceil", "bitwise_not", "exp", "log", "sqrt", "rsqrt",
          "sin", "cos", "tanh", "sigmoid", "silu", "erf", "reciprocal", "hardswish", "hardsigmoid",
          "log1p", "expm1", "tan", "atan", "mish", "logical_not", "isnan", "asin", "acos", "sinh", "cosh",
          "asinh", "acosh", "atanh", "isinf", "selu"]
for _name in _UNARY:
    rule(f"{_name}.default")(lambda cx, a, _name=_name: cx.op(_name, cx.value(a["self"])))


@rule("min.other", "max.other", "fmin.default", "fmax.default")
def _min_max_other(cx, a):
    """Elementwise min/max of two tensors; NaN propagates (torch.minimum). fmin/fmax ignore a NaN
    operand: where(isnan(b), a, minimum(a, b)) also covers NaN in `a` (minimum gives NaN, then a's
    NaN only stays when b is NaN too)."""
    kind = cx.target.split(".")[1]
    op = "minimum" if kind in ("min", "fmin") else "maximum"
    x, y = cx.value(a["self"]), cx.value(a["other"])
    out = cx.op(op, x, y)
    if kind.startswith("f") and out.type.dtype in ("f16", "bf16", "f32", "f64"):
        out = cx.op("where", cx.op("isnan", y), x, cx.op("where", cx.op("isnan", x), y, out))
    return out


@rule("trunc.default", "fix.default")
def _trunc(cx, a):
    x = cx.value(a["self"])
    return cx.op("where", cx.op("lt", x, cx.value(0.0, x.type.dtype)), cx.op("ceil", x), cx.op("floor", x))


@rule("log2.default", "log10.default")
def _log_base(cx, a):
    import math
    x = cx.value(a["self"])
    y = cx.op("log", x)
    base = 2.0 if "log2" in cx.target else 10.0
    return cx.op("div", y, cx.value(math.log(base), y.type.dtype))


@rule("atan2.default", "arctan2.default", "atan2.out")
def _atan2(cx, a):
    """atan(y / x) moved to the right quadrant: +pi when x < 0 and y >= 0, -pi when x < 0 and y < 0;
    0 for y = x = 0 (torch.atan2)."""
    import math
    y, x = cx.value(a["self"]), cx.value(a["other"])
    f = cx.out_dtype()
    y, x = cx.cast(y, f), cx.cast(x, f)
    zero = cx.value(0.0, f)
    base = cx.op("atan", cx.op("div", y, x))
    shift = cx.op("where", cx.op("ge", y, zero), cx.value(math.pi, f), cx.value(-math.pi, f))
    out = cx.op("add", base, cx.op("where", cx.op("lt", x, zero), shift, zero))
    both_zero = cx.op("logical_and", cx.op("eq", x, zero), cx.op("eq", y, zero))
    # atan2(+-0, x<0) = +-pi, atan2(+-0, x>=0) = +-0: keep y's sign via y itself
    return cx.op("where", both_zero, cx.op("where", cx.op("lt", x, zero), shift, y), out)


@rule("any.default", "any.dim", "any.dims", "all.default", "all.dim", "all.dims")
def _any_all(cx, a):
    """any: some element is non-zero (NaN counts as non-zero); all: every element is."""
    x = cx.value(a["self"])
    nz = x if x.type.dtype == "bool" else cx.op("ne", x, cx.value(0, x.type.dtype))
    dims = reduce_dims(a)
    keep = bool(a.get("keepdim", False))
    if cx.target.startswith("aten.any"):
        total = cx.op("sum", cx.cast(nz, "i64"), dims=dims, keepdim=keep)
        return cx.op("gt", total, cx.value(0, "i64"))
    bad = cx.op("sum", cx.cast(cx.op("logical_not", nz), "i64"), dims=dims, keepdim=keep)
    return cx.op("eq", bad, cx.value(0, "i64"))


@rule("copy.default")
def _copy(cx, a):
    """The functional form of `self.copy_(src)`: src broadcast to self's shape, in self's dtype."""
    src = cx.cast(cx.value(a["src"]), cx.out_dtype())
    shape = cx.out_shape()
    return src if cx.dims_equal_all(src.type.shape, shape) else cx.op("expand", src, shape=list(shape))


@rule("fill.Scalar", "fill.Tensor")
def _fill(cx, a):
    v = a["value"]
    if isinstance(v, torch.fx.Node) and not isinstance(cx.env[v], type(None)) and not _is_scalar_like(cx, v):
        val = cx.cast(cx.value(v), cx.out_dtype())
        return cx.op("expand", val, shape=list(cx.out_shape())) if cx.out_shape() else val
    return cx.op("full", shape=list(cx.out_shape()), value=cx.number(v), dtype=cx.out_dtype())


def _is_scalar_like(cx, node):
    from .torch_export import SymDim
    return isinstance(cx.env[node], SymDim)


@rule("native_dropout.default")
def _native_dropout(cx, a):
    if a["train"] and a["p"] > 0:
        raise cx.unsupported("native_dropout in training mode (call model.eval() before exporting)")
    return cx.value(a["input"]), None


@rule("native_layer_norm.default")
def _native_layer_norm(cx, a):
    return _layer_norm(cx, a), None, None


@rule("topk.default")
def _topk(cx, a):
    if not a["sorted"]:
        raise cx.unsupported("topk(sorted=False): the order of its result is unspecified")
    x = cx.value(a["self"])
    return tuple(cx.op("topk", x, k=cx.dim(a["k"]), dim=a["dim"] % x.type.rank,
                                   largest=bool(a["largest"])))


@rule("sort.default", "sort.stable")
def _sort(cx, a):
    x = cx.value(a["self"])
    dim = a["dim"] % max(x.type.rank, 1)
    return tuple(cx.op("topk", x, k=x.type.shape[dim], dim=dim, largest=bool(a["descending"])))


@rule("_cdist_forward.default", "cdist.default")
def _cdist(cx, a):
    """Pairwise p-norm distances between rows of x1 [..., P, M] and x2 [..., R, M] -> [..., P, R]."""
    x1, x2, p = cx.value(a["x1"]), cx.value(a["x2"]), float(a["p"])
    diff = cx.op("sub", cx.op("unsqueeze", x1, dim=-2), cx.op("unsqueeze", x2, dim=-3))
    mag = cx.op("abs", diff)
    f = mag.type.dtype
    if p == float("inf"):
        return cx.op("amax", mag, dims=[-1])
    if p == 0:
        return cx.op("sum", cx.cast(cx.op("ne", mag, cx.value(0.0, f)), f), dims=[-1])
    if p == 1:
        return cx.op("sum", mag, dims=[-1])
    if p == 2:
        return cx.op("sqrt", cx.op("sum", cx.op("mul", diff, diff), dims=[-1]))
    total = cx.op("sum", cx.op("pow", mag, cx.value(p, f)), dims=[-1])
    return cx.op("pow", total, cx.value(1.0 / p, f))


@rule("round.default")
def _round(cx, a):
    return cx.op("round", cx.value(a["self"]))


@rule("gelu.default")
def _gelu(cx, a):
    return cx.op("gelu", cx.value(a["self"]), approximate=a["approximate"])


@rule("leaky_relu.default")
def _leaky_relu(cx, a):
    return cx.op("leaky_relu", cx.value(a["self"]), slope=float(a["negative_slope"]))


@rule("softplus.default")
def _softplus(cx, a):
    if a["beta"] != 1 or a["threshold"] != 20:
        raise cx.unsupported("softplus with non-default beta/threshold")
    return cx.op("softplus", cx.value(a["self"]))


@rule("elu.default")
def _elu(cx, a):
    if a["alpha"] != 1 or a["scale"] != 1 or a["input_scale"] != 1:
        raise cx.unsupported("elu with non-default alpha/scale")
    return cx.op("elu", cx.value(a["self"]))


@rule("clamp.default", "clamp_min.default", "clamp_max.default", "hardtanh.default", "relu6.default")
def _clamp(cx, a):
    lo = a.get("min", a.get("min_val", 0 if "relu6" in cx.target else None))
    hi = a.get("max", a.get("max_val", 6 if "relu6" in cx.target else None))
    return cx.op("clamp", cx.value(a["self"]), min=lo, max=hi)


@rule("clamp.Tensor", "clamp_min.Tensor", "clamp_max.Tensor")
def _clamp_tensor(cx, a):
    x = cx.value(a["self"])
    if a.get("min") is not None:
        x = cx.op("maximum", x, cx.value(a["min"]))
    if a.get("max") is not None:
        x = cx.op("minimum", x, cx.value(a["max"]))
    return x


@rule("where.self", "where.ScalarOther", "where.ScalarSelf", "where.Scalar")
def _where(cx, a):
    return cx.op("where", cx.value(a["condition"]), cx.value(a["self"]), cx.value(a["other"]))


@rule("masked_fill.Scalar", "masked_fill.Tensor")
def _masked_fill(cx, a):
    x = cx.value(a["self"])
    fill = cx.value(a["value"], dtype=x.type.dtype)
    if fill.type.dtype != x.type.dtype:
        fill = cx.op("cast", fill, dtype=x.type.dtype)
    return cx.op("where", cx.value(a["mask"]), fill, x)


@rule("dropout.default", "feature_dropout.default", "alpha_dropout.default")
def _dropout(cx, a):
    if a["train"] and a["p"] > 0:
        raise cx.unsupported(f"{cx.target} in training mode (call model.eval() before exporting)")
    return cx.value(a["input"])


@rule("to.dtype", "to.dtype_layout", "to.device", "to.other", "_to_copy.default", "type_as.default",
      "_to_dim_order_copy.default")
def _to(cx, a):
    return cx.cast(cx.value(a["self"]), cx.out_dtype())


# ---- reductions -------------------------------------------------------------------------------
def reduce_dims(a):
    d = a.get("dim")
    return None if d is None or d == [] else ([d] if isinstance(d, int) else list(d))


@rule("sum.dim_IntList", "sum.default", "mean.dim", "mean.default", "amax.default", "amin.default",
      "prod.dim_int", "prod.default")
def _reduce(cx, a):
    op = cx.target.split(".")[1]
    x = cx.value(a["self"])
    if a.get("dtype") is not None:
        x = cx.cast(x, cx.out_dtype())
    return cx.op(op, x, dims=reduce_dims(a), keepdim=bool(a.get("keepdim", False)))


@rule("var.correction", "var.dim", "std.correction", "std.dim")
def _variance(cx, a):
    """var (or std, for the aten.std* overloads) of a["self"] with the overload's correction."""
    corr = a.get("correction", None)
    corr = (1 if a.get("unbiased", True) else 0) if corr is None else int(corr)
    v = cx.op("var", cx.value(a["self"]), dims=reduce_dims(a), keepdim=bool(a.get("keepdim", False)), correction=corr)
    return cx.op("sqrt", v) if cx.target.startswith("aten.std") else v


@rule("var_mean.correction", "var_mean.dim", "std_mean.correction", "std_mean.dim")
def _var_mean(cx, a):
    """(var or std, mean) in one call (InstanceNorm, some LayerNorm spellings): torch's decomposition of these
    is prims-level, which the converter does not take."""
    return _variance(cx, a), cx.op("mean", cx.value(a["self"]), dims=reduce_dims(a),
                                   keepdim=bool(a.get("keepdim", False)))


@rule("cumprod.default")
def _cumprod(cx, a):
    x = cx.value(a["self"])
    if x.type.dtype != cx.out_dtype():      # a dtype argument, or torch widening bool/small ints to i64
        x = cx.cast(x, cx.out_dtype())
    return cx.op("cumprod", x, dim=a["dim"] % max(x.type.rank, 1))


@rule("max.dim", "min.dim")
def _max_dim(cx, a):
    x, kw = cx.value(a["self"]), dict(dim=a["dim"], keepdim=bool(a["keepdim"]))
    best = "amax" if cx.target == "aten.max.dim" else "amin"
    return (cx.op(best, x, dims=[a["dim"]], keepdim=kw["keepdim"]),
            cx.op("argmax" if best == "amax" else "argmin", x, **kw))


@rule("max.default", "min.default")
def _max_all(cx, a):
    return cx.op("amax" if cx.target == "aten.max.default" else "amin", cx.value(a["self"]))


@rule("argmax.default", "argmin.default")
def _argmax(cx, a):
    if a["dim"] is None:
        raise cx.unsupported(f"{cx.target} without dim")
    return cx.op(cx.target.split(".")[1], cx.value(a["self"]), dim=a["dim"], keepdim=bool(a["keepdim"]))


@rule("cumsum.default")
def _cumsum(cx, a):
    extra = {"dtype": cx.out_dtype()} if a["dtype"] is not None else {}
    return cx.op("cumsum", cx.value(a["self"]), dim=a["dim"], **extra)


def _present(cx, *args):
    """IR values for the given operands, leaving out trailing optional ones that are None."""
    return [cx.value(v) for v in args if v is not None]


# ---- linear algebra and nn ----------------------------------------------------------------------
@rule("linear.default")
def _linear(cx, a):
    return cx.op("linear", *_present(cx, a["input"], a["weight"], a["bias"]))


@rule("matmul.default", "mm.default", "bmm.default")
def _matmul(cx, a):
    return cx.op("matmul", cx.value(a["self"]), cx.value(a["other"] if "other" in a else a["mat2"]))


@rule("addmm.default", "baddbmm.default")
def _addmm(cx, a):
    """beta*self + alpha*(mat1 @ mat2); GPT-2's Conv1D emits this with a [in, out] weight. With beta = 0 torch
    ignores self (its NaN and inf too): GPT-2's reorder_and_upcast_attn scores, baddbmm(empty, q, k, beta=0)."""
    m1, m2 = (a["mat1"], a["mat2"]) if "mat1" in a else (a["batch1"], a["batch2"])
    prod = cx.op("matmul", cx.value(m1), cx.value(m2))
    if a["alpha"] != 1:
        prod = cx.op("mul", prod, cx.value(a["alpha"]))
    if a["beta"] == 0:
        return prod
    bias = cx.value(a["self"]) if a["beta"] == 1 else cx.op("mul", cx.value(a["self"]), cx.value(a["beta"]))
    return cx.op("add", prod, bias)


@rule("embedding.default")
def _embedding(cx, a):
    return cx.op("embedding", cx.value(a["weight"]), cx.value(a["indices"]))


@rule("softmax.int", "_softmax.default", "log_softmax.int", "_log_softmax.default", "_safe_softmax.default")
def _softmax(cx, a):
    op = "log_softmax" if "log_softmax" in cx.target else "softmax"
    x = cx.value(a["self"])
    if a.get("dtype") is not None:
        x = cx.cast(x, cx.out_dtype())
    return cx.cast(cx.op(op, x, dim=a["dim"]), cx.out_dtype())


@rule("layer_norm.default")
def _layer_norm(cx, a):
    w, b = a["weight"], a["bias"]
    if w is None and b is not None:
        raise cx.unsupported("layer_norm with a bias but no weight")
    ins = [cx.value(v) for v in (a["input"], w, b) if v is not None]
    return cx.op("layer_norm", *ins, axes=len(a["normalized_shape"]), eps=float(a["eps"]))


@rule("rms_norm.default")
def _rms_norm(cx, a):
    if len(a["normalized_shape"]) != 1 or a["eps"] is None:
        raise cx.unsupported("rms_norm over several dims or without eps")
    ins = [cx.value(v) for v in (a["input"], a["weight"]) if v is not None]
    return cx.op("rms_norm", *ins, eps=float(a["eps"]))


@rule("_native_batch_norm_legit_no_training.default", "_native_batch_norm_legit.default", "batch_norm.default")
def _batch_norm(cx, a):
    if a.get("training"):
        raise cx.unsupported("batch_norm in training mode (call model.eval() before exporting)")
    if a["weight"] is None or a["bias"] is None:
        raise cx.unsupported("batch_norm without affine weight and bias")
    keys = ("input", "running_mean", "running_var", "weight", "bias")
    y = cx.op("batch_norm", *(cx.value(a[k]) for k in keys), eps=float(a["eps"]))
    return y if cx.target == "aten.batch_norm.default" else (y, None, None)


@rule("scaled_dot_product_attention.default")
def _sdpa(cx, a):
    if a["dropout_p"]:
        raise cx.unsupported("scaled_dot_product_attention with dropout_p > 0 (export in eval mode)")
    q, k, v = cx.value(a["query"]), cx.value(a["key"]), cx.value(a["value"])
    ins = [q, k, v] + ([cx.value(a["attn_mask"])] if a["attn_mask"] is not None else [])
    causal = bool(a["is_causal"])
    if causal and not cx.dims_equal(q.type.shape[-2], k.type.shape[-2]):
        # torch's is_causal is top-left aligned; the IR's `causal` is bottom-right: spell it out
        ins.append(compose.causal_keep(cx.op, q.type.shape[-2], k.type.shape[-2]))
        causal = False
    scale = None if a["scale"] is None else float(a["scale"])
    return cx.op("attention", *ins, causal=causal, scale=scale)


@rule("conv2d.default", "convolution.default", "conv1d.default", "conv_transpose1d.default",
      "conv_transpose2d.input")
def _conv2d(cx, a):
    """2-d convolution, or transposed convolution (decoders, U-Nets, vocoders); a 1-d one ([N, C, L],
    wav2vec2's feature encoder, Whisper) runs as a 2-d one over [N, C, 1, L] with a [O, C/g, 1, K] weight
    ([C, O/g, 1, K] when transposed). 3-d convolutions are refused naming the rank."""
    transposed = bool(a.get("transposed")) or "conv_transpose" in cx.target
    seq = lambda v: [v] if isinstance(v, int) else v  # noqa: E731  (the conv_transpose1d schema's int defaults)
    a = dict(a, **{k: seq(a[k]) for k in ("stride", "padding", "dilation", "output_padding") if k in a})
    rank = cx.value(a["input"]).type.rank
    if rank not in (3, 4) or len(a["stride"]) not in (1, 2):
        raise cx.unsupported(f"{cx.target}: a {rank - 2}-d {'transposed ' if transposed else ''}convolution "
                             f"(1-d and 2-d are supported)")
    pad = a["padding"]
    one_d = rank == 3
    if isinstance(pad, str):
        if pad != "valid":
            raise cx.unsupported(f"conv padding={pad!r}")
        pad = [0]
    x, w = cx.value(a["input"]), cx.value(a["weight"])
    if one_d:
        x = cx.op("unsqueeze", x, dim=2)
        w = cx.op("unsqueeze", w, dim=2)
        lift = lambda v, fill: [fill] + list(v)[-1:]  # noqa: E731
        stride, pad, dil = lift(a["stride"], 1), lift(pad, 0), lift(a["dilation"], 1)
        out_pad = lift(a.get("output_padding") or [0], 0)
    else:
        two = lambda v: list(v) * 2 if len(v) == 1 else list(v)  # noqa: E731
        stride, pad, dil = two(a["stride"]), two(pad), two(a["dilation"])
        out_pad = two(a.get("output_padding") or [0])
    ins = [x, w] + ([cx.value(a["bias"])] if a["bias"] is not None else [])
    if transposed:
        y = cx.op("conv_transpose2d", *ins, stride=stride, padding=pad, output_padding=out_pad, dilation=dil,
                  groups=a["groups"])
    else:
        y = cx.op("conv2d", *ins, stride=stride, padding=pad, dilation=dil, groups=a["groups"])
    return cx.op("squeeze", y, dims=[2]) if one_d else y


def _pair(v):
    v = [v] if isinstance(v, int) else list(v)
    return v * 2 if len(v) == 1 else v


def pool_nd(cx, x, kind, kernel, stride, padding, dilation, ceil_mode, count_include_pad=False):
    """A torch max/avg pool over the len(kernel) trailing dims as the IR's `pool_nd` (ONNX pooling: the same
    windows as torch for symmetric padding, dilation and ceil_mode, whose last window starting in the end
    padding is dropped and whose extra border never counts in an average). The 2-d ops without ceil_mode or
    dilation keep the simpler max_pool2d / avg_pool2d, which every target lowers."""
    return cx.op("pool_nd", x, kind=kind, kernel=list(kernel), stride=list(stride), pads=list(padding) * 2,
                 dilation=list(dilation), ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad))


@rule("max_pool2d.default", "max_pool2d_with_indices.default")
def _max_pool(cx, a):
    k, dil = _pair(a["kernel_size"]), _pair(a["dilation"])
    stride = _pair(a["stride"]) if a["stride"] else k
    if dil != [1, 1] or a["ceil_mode"]:
        y = pool_nd(cx, cx.value(a["self"]), "max", k, stride, _pair(a["padding"]), dil, a["ceil_mode"])
    else:
        y = cx.op("max_pool2d", cx.value(a["self"]), kernel=k, stride=stride, padding=_pair(a["padding"]))
    return (y, None) if cx.target.endswith("with_indices.default") else y


@rule("avg_pool2d.default")
def _avg_pool(cx, a):
    if a["divisor_override"] is not None:
        raise cx.unsupported("avg_pool2d with divisor_override")
    k = _pair(a["kernel_size"])
    stride = _pair(a["stride"]) if a["stride"] else k
    if a["ceil_mode"]:
        return pool_nd(cx, cx.value(a["self"]), "avg", k, stride, _pair(a["padding"]), [1, 1], True,
                       a["count_include_pad"])
    return cx.op("avg_pool2d", cx.value(a["self"]), kernel=k, stride=stride, padding=_pair(a["padding"]),
                 count_include_pad=bool(a["count_include_pad"]))


@rule("adaptive_max_pool2d.default", "adaptive_max_pool1d.default")
def _adaptive_max_pool(cx, a):
    """Adaptive max pooling (torch's windows: rows floor(i H / oh) .. ceil((i + 1) H / oh)), separably: a max
    over each row window, concatenated, then over each column window. Any static size (torch's own
    decomposition takes only sizes that divide); the indices output is not produced (refused if used)."""
    x = cx.value(a["self"])
    size = [a["output_size"]] if isinstance(a["output_size"], int) else list(a["output_size"])
    dims = list(range(x.type.rank - len(size), x.type.rank))
    for d, o in zip(dims, size):
        n = x.type.shape[d]
        if not isinstance(n, int) or not isinstance(o, int):
            raise cx.unsupported(f"{cx.target} over a symbolic size ({n} -> {o})")
        if o == n:
            continue
        parts = [cx.op("amax", cx.op("slice", x, dim=d, start=(i * n) // o, end=-(-((i + 1) * n) // o), step=1),
                       dims=[d], keepdim=True) for i in range(o)]
        x = parts[0] if o == 1 else cx.op("concat", *parts, dim=d)
    return x, None


@rule("adaptive_avg_pool2d.default", "_adaptive_avg_pool2d.default")
def _adaptive_avg_pool(cx, a):
    return cx.op("adaptive_avg_pool2d", cx.value(a["self"]), output_size=_pair(a["output_size"]))


# ---- shapes and data movement -------------------------------------------------------------------
@rule("view.default", "reshape.default", "_unsafe_view.default", "flatten.using_ints", "unflatten.int",
      "view_as.default", "reshape_as.default")
def _reshape(cx, a):
    x = cx.value(a["self"])
    shape = cx.out_shape()
    return x if cx.dims_equal_all(x.type.shape, shape) else cx.op("reshape", x, shape=list(shape))


@rule("expand.default", "expand_as.default", "broadcast_to.default")
def _expand(cx, a):
    x = cx.value(a["self"])
    shape = cx.out_shape()
    return x if cx.dims_equal_all(x.type.shape, shape) else cx.op("expand", x, shape=list(shape))


@rule("permute.default")
def _permute(cx, a):
    x = cx.value(a["self"])
    dims = [d % max(x.type.rank, 1) for d in a["dims"]]
    return x if dims == sorted(dims) else cx.op("permute", x, dims=dims)


@rule("transpose.int", "t.default", "swapaxes.default")
def _transpose(cx, a):
    x = cx.value(a["self"])
    if x.type.rank < 2:
        return x
    d0, d1 = (a["dim0"], a["dim1"]) if "dim0" in a else (a.get("axis0", 0), a.get("axis1", 1))
    d0, d1 = d0 % x.type.rank, d1 % x.type.rank
    if d0 == d1:
        return x
    dims = list(range(x.type.rank))
    dims[d0], dims[d1] = d1, d0
    return cx.op("permute", x, dims=dims)


@rule("unsqueeze.default")
def _unsqueeze(cx, a):
    return cx.op("unsqueeze", cx.value(a["self"]), dim=a["dim"])


@rule("squeeze.dim", "squeeze.dims", "squeeze.default")
def _squeeze(cx, a):
    x = cx.value(a["self"])
    dims = a.get("dim", None)
    dims = list(range(x.type.rank)) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
    dims = [d for d in dims if x.type.shape[d % x.type.rank] == 1]
    return cx.op("squeeze", x, dims=dims) if dims else x


@rule("slice.Tensor")
def _slice(cx, a):
    x = cx.value(a["self"])
    dim = a["dim"] % x.type.rank
    start = 0 if a["start"] is None else cx.dim(a["start"])
    end = 2 ** 63 - 1 if a["end"] is None else cx.dim(a["end"])
    if a["step"] == 1 and cx.same_type_as_output(x):  # a no-op slice (maybe by clamping, which the IR lacks)
        return x
    return cx.op("slice", x, dim=dim, start=start, end=end, step=a["step"])


@rule("diff.default")
def _diff(cx, a):
    if a["n"] != 1:
        raise cx.unsupported("diff with n > 1")
    parts = [a["prepend"], a["self"], a["append"]]
    xs = [cx.value(t) for t in parts if t is not None]
    x = xs[0] if len(xs) == 1 else cx.op("concat", *xs, dim=a["dim"])
    hi = cx.op("slice", x, dim=a["dim"], start=1)
    lo = cx.op("slice", x, dim=a["dim"], start=0, end=-1)
    return cx.op("ne" if x.type.dtype == "bool" else "sub", hi, lo)


@rule("narrow.default")
def _narrow(cx, a):
    start, length = cx.dim(a["start"]), cx.dim(a["length"])
    return cx.op("slice", cx.value(a["self"]), dim=a["dim"], start=start, end=cx.dim_add(start, length))


@rule("select.int")
def _select(cx, a):
    return cx.op("select", cx.value(a["self"]), dim=a["dim"], index=cx.dim(a["index"]))


@rule("cat.default", "concat.default")
def _cat(cx, a):
    # torch.cat skips 1-d empty tensors (transformers' DynamicCache starts from them)
    xs = [cx.value(t) for t in a["tensors"] if not cx.is_empty_1d(t)]
    if len(xs) == 1 and cx.same_type_as_output(xs[0]):
        return xs[0]
    return cx.op("concat", *xs, dim=a["dim"])


@rule("stack.default")
def _stack(cx, a):
    xs = [cx.op("unsqueeze", cx.value(t), dim=a["dim"]) for t in a["tensors"]]
    return cx.op("concat", *xs, dim=a["dim"])


@rule("split.Tensor", "split_with_sizes.default", "chunk.default", "tensor_split.sections")
def _split(cx, a):
    x = cx.value(a["self"])
    dim = a["dim"] % x.type.rank
    sizes = [shape[dim] for shape in cx.out_shapes()]
    return cx.op("split", x, dim=dim, sizes=sizes) if len(sizes) > 1 else (x,)


@rule("unbind.int")
def _unbind(cx, a):
    x = cx.value(a["self"])
    n = x.type.shape[a["dim"]]
    if not isinstance(n, int):
        raise cx.unsupported("unbind over a symbolic dim")
    return tuple(cx.op("select", x, dim=a["dim"], index=i) for i in range(n))


@rule("index.Tensor")
def _index(cx, a):
    axes = [i for i, t in enumerate(a["indices"]) if t is not None]
    idx = [cx.value(a["indices"][i]) for i in axes]
    if any(t.type.dtype in ("bool", "u8") for t in idx):
        raise cx.unsupported("index.Tensor with a boolean mask (its result size depends on the data)")
    return cx.op("index", cx.value(a["self"]), *idx, axes=axes)


@rule("index_select.default")
def _index_select(cx, a):
    return cx.op("index_select", cx.value(a["self"]), cx.value(a["index"]), dim=a["dim"])


@rule("gather.default")
def _gather(cx, a):
    return cx.op("gather", cx.value(a["self"]), cx.value(a["index"]), dim=a["dim"])


@rule("tril.default", "triu.default")
def _tri(cx, a):
    return cx.op(cx.target.split(".")[1], cx.value(a["self"]), diagonal=a["diagonal"])


@rule("flip.default")
def _flip(cx, a):
    return cx.op("flip", cx.value(a["self"]), dims=list(a["dims"]))


DECLINE["aten.pad.default"] = lambda node: (node.args[2] if len(node.args) > 2
                                            else node.kwargs.get("mode", "constant")) != "constant"


@rule("constant_pad_nd.default", "pad.default")
def _pad(cx, a):
    if a.get("mode", "constant") != "constant":
        raise cx.unsupported(f"pad mode {a['mode']!r}")
    return cx.op("pad", cx.value(a["self"]), pads=list(a["pad"]), value=float(a["value"] or 0.0))


@rule("repeat.default")
def _repeat(cx, a):
    x, reps = cx.value(a["self"]), [cx.dim(r) for r in a["repeats"]]   # a repeat count may be a size
    if x.type.rank < len(reps):
        x = cx.op("reshape", x, shape=[1] * (len(reps) - x.type.rank) + list(x.type.shape))
    lead = [d for r, d in zip(reps, x.type.shape) for d in (r, d)]
    y = cx.op("expand", cx.op("reshape", x, shape=[v for d in x.type.shape for v in (1, d)]), shape=lead)
    return cx.op("reshape", y, shape=list(cx.out_shape()))


# ---- constructors (shapes from the node's metadata) --------------------------------------------
@rule("full.default", "new_full.default", "full_like.default")
def _full(cx, a):
    return cx.op("full", shape=list(cx.out_shape()), value=cx.number(a["fill_value"]), dtype=cx.out_dtype())


@rule("zeros.default", "new_zeros.default", "zeros_like.default", "empty.memory_format", "new_empty.default",
      "empty_like.default", "ones.default", "new_ones.default", "ones_like.default")
def _zeros_ones(cx, a):
    value = 1 if "ones" in cx.target else 0
    return cx.op("full", shape=list(cx.out_shape()), value=value, dtype=cx.out_dtype())


@rule("scalar_tensor.default")
def _scalar_tensor(cx, a):
    return cx.value(a["s"], dtype=cx.out_dtype())


@rule("arange.default", "arange.start", "arange.start_step")
def _arange(cx, a):
    bounds = [a.get("start", 0), a["end"], a.get("step", 1)]
    if any(isinstance(b, float) for b in bounds):  # torch.arange(3.0): integral floats count exactly
        if not all(isinstance(b, (int, float)) and float(b).is_integer() for b in bounds):
            raise cx.unsupported("arange with fractional bounds")
        bounds = [int(b) for b in bounds]
    start, end, step = (cx.dim(b) for b in bounds)
    return cx.op("arange", start=start, end=end, step=step, dtype=cx.out_dtype())


from . import aten_core  # noqa: E402,F401  - registers the rules for the rarer core ATen ops
