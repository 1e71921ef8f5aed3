"""Per-op ONNX lowerings for the exporter (codegen/lowering.py, target "onnx"):
`@lowering("onnx", op)` on `emit(ex, node, input names) -> [output names]`."""
from __future__ import annotations
import math

import numpy as np

from ..ir import quant_format as Q, symbolic as S
from ..ir.dtypes import FLOAT_DTYPES, promote
from .lowering import lowering, register_lowering
from .onnx_export import INT64_MAX, INT64_MIN, MS_DOMAIN, ONNX_DTYPES, OnnxExportError


def _out(node):
    return node.outputs[0].type


def _cast_ins(ex, node, ins, dtype):
    return [ex.cast(n, v.type.dtype, dtype) for n, v in zip(ins, node.inputs)]


# ---- elementwise -----------------------------------------------------------------------------------
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "maximum": "Max",
           "minimum": "Min", "bitwise_and": "BitwiseAnd", "bitwise_or": "BitwiseOr", "bitwise_xor": "BitwiseXor"}
_PREDICATES = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual",
               "logical_and": "And", "logical_or": "Or", "logical_xor": "Xor"}


_BOOL_BITWISE = {"BitwiseAnd": "And", "BitwiseOr": "Or", "BitwiseXor": "Xor"}


def _binary(op_type):
    def emit(ex, node, ins):
        dtype = _out(node).dtype
        if op_type == "Pow":  # ONNX Pow allows a different exponent type
            return [ex.one("Pow", ex.cast(ins[0], node.inputs[0].type.dtype, dtype), ins[1])]
        if dtype == "bool" and op_type in _BOOL_BITWISE:  # mask & mask: ONNX Bitwise* have no bool kernels
            return [ex.one(_BOOL_BITWISE[op_type], *_cast_ins(ex, node, ins, dtype))]
        return [ex.one(op_type, *_cast_ins(ex, node, ins, dtype))]
    return emit


def _predicate(op_type):
    def emit(ex, node, ins):
        dtype = promote(*[(v.type.dtype, v.type.rank) for v in node.inputs])
        out = ex.one(op_type if op_type != "NotEqual" else "Equal", *_cast_ins(ex, node, ins, dtype))
        return [ex.one("Not", out) if op_type == "NotEqual" else out]
    return emit


for _k, _v in _BINARY.items():
    register_lowering("onnx", _k, _binary(_v))
for _k, _v in {**_PREDICATES, "ne": "NotEqual"}.items():
    register_lowering("onnx", _k, _predicate(_v))


@lowering("onnx", "remainder")
@lowering("onnx", "fmod")
def _mod(ex, node, ins):
    dtype = _out(node).dtype
    a, b = _cast_ins(ex, node, ins, dtype)
    if node.op == "remainder" and dtype in FLOAT_DTYPES:  # floor-mod of floats needs Mod from opset 28
        return [ex.one("Sub", a, ex.one("Mul", ex.one("Floor", ex.one("Div", a, b)), b))]
    return [ex.one("Mod", a, b, fmod=int(node.op == "fmod"))]


@lowering("onnx", "floor_divide")
def _floor_divide(ex, node, ins):
    dtype = _out(node).dtype
    a, b = _cast_ins(ex, node, ins, dtype)
    if dtype in FLOAT_DTYPES:
        return [ex.one("Floor", ex.one("Div", a, b))]
    q = ex.one("Div", a, b)  # truncates; step down where the signs differ and there is a remainder
    fix = ex.one("And", ex.one("Not", ex.one("Equal", ex.one("Mod", a, b, fmod=1), ex.scalar(0, dtype))),
                 ex.one("Xor", ex.one("Less", a, ex.scalar(0, dtype)), ex.one("Less", b, ex.scalar(0, dtype))))
    return [ex.one("Sub", q, ex.cast(ex.one("Cast", fix, to=ONNX_DTYPES[dtype]), dtype, dtype))]


_UNARY = {"neg": "Neg", "abs": "Abs", "relu": "Relu", "floor": "Floor", "ceil": "Ceil",
          "round": "Round", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "sin": "Sin", "cos": "Cos", "tan": "Tan",
          "atan": "Atan", "tanh": "Tanh", "sigmoid": "Sigmoid", "erf": "Erf", "reciprocal": "Reciprocal",
          "softplus": "Softplus", "hardswish": "HardSwish", "mish": "Mish", "elu": "Elu", "selu": "Selu",
          "logical_not": "Not", "isnan": "IsNaN", "bitwise_not": "BitwiseNot", "asin": "Asin", "acos": "Acos",
          "sinh": "Sinh", "cosh": "Cosh", "asinh": "Asinh", "acosh": "Acosh", "atanh": "Atanh"}


def _unary(op_type):
    def emit(ex, node, ins):
        dtype = _out(node).dtype
        if op_type == "BitwiseNot" and dtype == "bool":  # ~mask: ONNX BitwiseNot has no bool kernel
            return [ex.one("Not", ins[0])]
        x = ins[0] if op_type in ("Not", "IsNaN") else ex.cast(ins[0], node.inputs[0].type.dtype, dtype)
        return [ex.one(op_type, x)]
    return emit


for _k, _v in _UNARY.items():
    register_lowering("onnx", _k, _unary(_v))


@lowering("onnx", "sign")
def _sign(ex, node, ins):
    """The IR's sign is torch.sign: sign(NaN) = 0, where ONNX Sign gives NaN."""
    dtype = _out(node).dtype
    x = ex.cast(ins[0], node.inputs[0].type.dtype, dtype)
    y = ex.one("Sign", x)
    return [ex.one("Where", ex.one("IsNaN", x), ex.scalar(0, dtype), y) if dtype in FLOAT_DTYPES else y]


def _float_in(ex, node, ins):
    return ex.cast(ins[0], node.inputs[0].type.dtype, _out(node).dtype)


@lowering("onnx", "rsqrt")
def _rsqrt(ex, node, ins):
    return [ex.one("Reciprocal", ex.one("Sqrt", _float_in(ex, node, ins)))]


@lowering("onnx", "silu")
def _silu(ex, node, ins):
    x = _float_in(ex, node, ins)
    return [ex.one("Mul", x, ex.one("Sigmoid", x))]


@lowering("onnx", "log1p")
@lowering("onnx", "expm1")
def _log1p(ex, node, ins):
    x, one = _float_in(ex, node, ins), ex.scalar(1.0, _out(node).dtype)
    return [ex.one("Log", ex.one("Add", x, one)) if node.op == "log1p" else ex.one("Sub", ex.one("Exp", x), one)]


@lowering("onnx", "hardsigmoid")
def _hardsigmoid(ex, node, ins):
    return [ex.one("HardSigmoid", _float_in(ex, node, ins), alpha=1 / 6, beta=0.5)]


@lowering("onnx", "isinf")
def _isinf(ex, node, ins):
    x = ex.cast(ins[0], node.inputs[0].type.dtype, "f32") if node.inputs[0].type.dtype in ("f16", "bf16") else ins[0]
    return [ex.one("IsInf", x, detect_positive=int(node.attrs["pos"]), detect_negative=int(node.attrs["neg"]))]


@lowering("onnx", "gelu")
def _gelu(ex, node, ins):
    dtype, x = _out(node).dtype, _float_in(ex, node, ins)
    c = lambda v: ex.scalar(v, dtype)  # noqa: E731
    if node.attrs["approximate"] == "tanh":
        inner = ex.one("Mul", c(math.sqrt(2 / math.pi)),
                       ex.one("Add", x, ex.one("Mul", c(0.044715), ex.one("Mul", x, ex.one("Mul", x, x)))))
        t = ex.one("Tanh", inner)
    else:
        t = ex.one("Erf", ex.one("Div", x, c(math.sqrt(2.0))))
    return [ex.one("Mul", ex.one("Mul", x, c(0.5)), ex.one("Add", t, c(1.0)))]


@lowering("onnx", "leaky_relu")
def _leaky_relu(ex, node, ins):
    return [ex.one("LeakyRelu", _float_in(ex, node, ins), alpha=node.attrs["slope"])]


@lowering("onnx", "clamp")
def _clamp(ex, node, ins):
    dtype = _out(node).dtype
    lo, hi = node.attrs["min"], node.attrs["max"]
    if lo is None or hi is None:   # Clip's missing bound is the dtype's max, not infinity: +inf would clip
        bound = ex.scalar(lo if hi is None else hi, dtype)
        past = ex.one("Less" if hi is None else "Greater", ins[0], bound)   # false for NaN: NaN stays
        return [ex.one("Where", past, bound, ins[0])]
    return [ex.one("Clip", ins[0], ex.scalar(lo, dtype), ex.scalar(hi, dtype))]


@lowering("onnx", "where")
def _where(ex, node, ins):
    dtype = _out(node).dtype
    return [ex.one("Where", ins[0], *_cast_ins(ex, node, ins, dtype)[1:])]


@lowering("onnx", "cast")
def _cast(ex, node, ins):
    return [ex.one("Cast", ins[0], to=ONNX_DTYPES[node.attrs["dtype"]])]


# ---- constants and generators -------------------------------------------------------------------------
@lowering("onnx", "constant")
def _constant(ex, node, ins):
    return [ex.one("Identity", ex.scalar(node.attrs["value"], node.attrs["dtype"]))]


@lowering("onnx", "dim_value")
def _dim_value(ex, node, ins):
    return [ex.one("Reshape", ex.dim(node.attrs["expr"]), ex.ints([]))]


@lowering("onnx", "shape_tensor")
def _shape_tensor(ex, node, ins):
    return [ex.one("Identity", ex.dims(node.attrs["dims"]))]


@lowering("onnx", "full")
def _full(ex, node, ins):
    a = node.attrs
    value = ex.onnx.numpy_helper.from_array(np.asarray(_np_value(a["value"], a["dtype"])).reshape(1))
    return [ex.one("ConstantOfShape", ex.dims(a["shape"]), value=value)]


def _np_value(value, dtype):
    from ..ir.dtypes import to_torch
    import torch
    return torch.tensor(value, dtype=to_torch(dtype)).numpy()


@lowering("onnx", "arange")
def _arange(ex, node, ins):
    a, dtype = node.attrs, node.attrs["dtype"]
    # ONNX Range takes f32/f64/i16/i32/i64: others (u8: XLNet's arange(dtype=uint8), f16, bf16) count in
    # i64 or f32 and are cast
    run = dtype if dtype in ("f32", "f64", "i16", "i32", "i64") else "f32" if dtype in FLOAT_DTYPES else "i64"

    def bound(d):
        return ex.cast(ex.one("Reshape", ex.dim(d), ex.ints([])), "i64", run)
    return [ex.cast(ex.one("Range", bound(a["start"]), bound(a["end"]), bound(a["step"])), run, dtype)]


# ---- linear algebra and nn ---------------------------------------------------------------------------
@lowering("onnx", "matmul")
def _matmul(ex, node, ins):
    return [ex.one("MatMul", *_cast_ins(ex, node, ins, _out(node).dtype))]


@lowering("onnx", "linear")
def _linear(ex, node, ins):
    w = node.inputs[1]
    wt = (ex.const(w.tensor.detach().t().contiguous().numpy(), f"{w.name}_t")
          if w.is_weight and w.type.dtype != "bf16" else ex.one("Transpose", ins[1], perm=[1, 0]))
    y = ex.one("MatMul", ins[0], wt)
    return [ex.one("Add", y, ins[2]) if len(ins) > 2 else y]


@lowering("onnx", "embedding")
def _embedding(ex, node, ins):
    return [ex.one("Gather", ins[0], ins[1], axis=0)]


@lowering("onnx", "softmax")
@lowering("onnx", "log_softmax")
def _softmax(ex, node, ins):
    return [ex.one("Softmax" if node.op == "softmax" else "LogSoftmax", _float_in(ex, node, ins),
                   axis=node.attrs["dim"])]


@lowering("onnx", "layer_norm")
def _layer_norm(ex, node, ins):
    x = node.inputs[0].type
    axes, dtype = node.attrs["axes"], x.dtype
    norm_shape = x.shape[-axes:]
    if len(ins) < 2:
        if not all(isinstance(d, int) for d in norm_shape):
            raise OnnxExportError(f"layer_norm without a weight over symbolic dims {norm_shape} ({node!r})")
        ins = [ins[0], ex.const(_np_value(1.0, dtype) * np.ones(norm_shape, _np_value(1.0, dtype).dtype), "ones")]
    return [ex.one("LayerNormalization", *ins, axis=-axes, epsilon=node.attrs["eps"])]


@lowering("onnx", "rms_norm")
def _rms_norm(ex, node, ins):
    dtype = _out(node).dtype
    x = ex.cast(ins[0], dtype, "f32")
    # Pow(x, 2) (not Mul(x, x)): the form ORT's optimizer fuses into SimplifiedLayerNormalization
    ms = ex.one("ReduceMean", ex.one("Pow", x, ex.scalar(2.0, "f32")), ex.ints([-1]), keepdims=1)
    y = ex.one("Div", x, ex.one("Sqrt", ex.one("Add", ms, ex.scalar(node.attrs["eps"], "f32"))))
    y = ex.cast(y, "f32", dtype)
    return [ex.one("Mul", y, ins[1]) if len(ins) > 1 else y]


@lowering("onnx", "rope")
def _rope(ex, node, ins):
    """x * cos + concat(-x[..., h:], x[..., :h]) * sin (ORT fuses the pattern where it can)."""
    h = node.inputs[0].type.shape[-1] // 2
    last = ex.ints([-1])
    lo = ex.one("Slice", ins[0], ex.ints([0]), ex.ints([h]), last)
    hi = ex.one("Slice", ins[0], ex.ints([h]), ex.ints([2 * h]), last)
    rot = ex.one("Concat", ex.one("Neg", hi), lo, axis=-1)
    return [ex.one("Add", ex.one("Mul", ins[0], ins[1]), ex.one("Mul", rot, ins[2]))]


@lowering("onnx", "batch_norm")
def _batch_norm(ex, node, ins):
    c = node.inputs[1].type.shape[0]
    dtype = node.inputs[0].type.dtype
    if not isinstance(c, int) and len(ins) < 5:
        raise OnnxExportError(f"batch_norm without weight/bias needs a static channel count ({node!r})")
    scale = ins[3] if len(ins) > 3 else ex.const(np.ones(c, _np_value(1.0, dtype).dtype), "ones")
    bias = ins[4] if len(ins) > 4 else ex.const(np.zeros(c, _np_value(1.0, dtype).dtype), "zeros")
    return [ex.one("BatchNormalization", ins[0], scale, bias, ins[1], ins[2], epsilon=node.attrs["eps"])]


def _causal_keep(ex, q, k):
    """bool [lq, lk]: query i sees keys <= i + lk - lq (the causal diagonal aligned to the end)."""
    lq, lk = q.type.shape[-2], k.type.shape[-2]
    ones = ex.one("ConstantOfShape", ex.dims([lq, lk]), value=ex.onnx.numpy_helper.from_array(np.ones(1, np.float32)))
    offset = ex.one("Reshape", ex.dim(S.add(lk, S.mul(lq, -1))), ex.ints([]))
    return ex.one("Cast", ex.one("Trilu", ones, offset, upper=0), to=ONNX_DTYPES["bool"])


def _band_keep(ex, node, q, k):
    """bool [lq, lk] combining `causal` and `window`/`sinks` (ir/opset/nn.py `attention`), or None."""
    keep = _causal_keep(ex, q, k) if node.attrs["causal"] else None
    window, sinks = node.attrs.get("window", 0), node.attrs.get("sinks", 0)
    if not window:
        return keep
    lq, lk = q.type.shape[-2], k.type.shape[-2]
    ones = ex.one("ConstantOfShape", ex.dims([lq, lk]), value=ex.onnx.numpy_helper.from_array(np.ones(1, np.float32)))
    offset = ex.one("Reshape", ex.dim(S.add(S.add(lk, S.mul(lq, -1)), -window)), ex.ints([]))
    band = ex.one("Cast", ex.one("Trilu", ones, offset, upper=1), to=ONNX_DTYPES["bool"])
    if sinks:
        cols = ex.one("Range", ex.scalar(0, "i64"), ex.one("Reshape", ex.dim(lk), ex.ints([])), ex.scalar(1, "i64"))
        band = ex.one("Or", band, ex.one("Less", cols, ex.scalar(sinks, "i64")))
    return band if keep is None else ex.one("And", keep, band)


def _fused_attention(ex, node, ins):
    """One ONNX opset-23 `Attention` node (GQA, mask and causal offset included) where it fits:
    f32/f16 4-d q/k/v with static head counts. ORT runs it as one kernel instead of ~20 ops."""
    q, k, v = node.inputs[:3]
    hq, hk = q.type.shape[-3], k.type.shape[-3]
    if node.attrs.get("softcap"):   # the explicit chain below caps the scores
        return None
    if not (q.type.rank == k.type.rank == v.type.rank == 4 and q.type.dtype in ("f32", "f16")
            and k.type.dtype == v.type.dtype == q.type.dtype and isinstance(hq, int) and isinstance(hk, int)
            and hq % hk == 0 and (len(ins) < 4 or 2 <= node.inputs[3].type.rank <= 4)):
        return None
    dtype = q.type.dtype
    lq, lk = q.type.shape[-2], k.type.shape[-2]
    mask = None
    if len(ins) > 3:
        mt = node.inputs[3].type
        mask = ins[3] if mt.dtype == "bool" else ex.cast(ins[3], mt.dtype, dtype)
    keep = _band_keep(ex, node, q, k)
    if keep is not None:
        if mask is None:
            mask = keep
        elif node.inputs[3].type.dtype == "bool":
            mask = ex.one("And", mask, keep)
        else:
            mask = ex.one("Where", keep, mask, ex.scalar(-math.inf, dtype))
    if mask is not None and keep is None and tuple(node.inputs[3].type.shape[-2:]) != (lq, lk):
        # ORT's Attention kernel takes a mask whose last two dims are exactly [q_len, kv_len] (the spec
        # broadcasts; a key-padding mask [b, 1, 1, kv] or a [q, 1] mask fails at run time): expand them
        rank = node.inputs[3].type.rank
        mask = ex.one("Expand", mask, ex.dims([1] * (rank - 2) + [lq, lk]))
    scale = node.attrs["scale"] or 1.0 / math.sqrt(q.type.shape[-1])
    ex.opset = max(ex.opset, 23)
    return ex.one("Attention", ins[0], ins[1], ins[2], *([mask] if mask is not None else []), scale=float(scale))


@lowering("onnx", "attention")
def _attention(ex, node, ins):
    fused = _fused_attention(ex, node, ins) if ex.fuse else None
    if fused is not None:
        return [fused]
    q, k, v = node.inputs[:3]
    dtype = q.type.dtype
    hq, hk = q.type.shape[-3], k.type.shape[-3]
    kn, vn = ins[1], ins[2]
    if hq != hk:
        if not (isinstance(hq, int) and isinstance(hk, int)) or q.type.rank != 4:
            raise OnnxExportError(f"GQA attention needs static head counts and 4-d q/k/v ({node!r})")
        kn, vn = (_repeat_heads(ex, t, val.type.shape, hq // hk) for t, val in ((kn, k), (vn, v)))
    scale = node.attrs["scale"] or 1.0 / math.sqrt(q.type.shape[-1])
    perm = list(range(k.type.rank - 2)) + [k.type.rank - 1, k.type.rank - 2]
    scores = ex.one("Mul", ex.one("MatMul", ins[0], ex.one("Transpose", kn, perm=perm)), ex.scalar(scale, dtype))
    if node.attrs.get("softcap"):   # softcap * tanh(scores / softcap)
        cap = ex.scalar(float(node.attrs["softcap"]), dtype)
        scores = ex.one("Mul", ex.one("Tanh", ex.one("Div", scores, cap)), cap)
    neg_inf = ex.scalar(-math.inf, dtype)
    if len(ins) > 3:
        mask = node.inputs[3]
        scores = (ex.one("Where", ins[3], scores, neg_inf) if mask.type.dtype == "bool"
                  else ex.one("Add", scores, ex.cast(ins[3], mask.type.dtype, dtype)))
    keep = _band_keep(ex, node, q, k)
    if keep is not None:
        scores = ex.one("Where", keep, scores, neg_inf)
    return [ex.one("MatMul", ex.one("Softmax", scores, axis=-1), vn)]


def _repeat_heads(ex, name, shape, reps):
    b, h, s, d = shape
    x = ex.one("Unsqueeze", name, ex.ints([2]))
    x = ex.one("Expand", x, ex.dims([1, 1, reps, 1, 1]))
    return ex.one("Reshape", x, ex.dims([b, h * reps, s, d]))


@lowering("onnx", "conv2d")
def _conv2d(ex, node, ins):
    a = node.attrs
    return [ex.one("Conv", *ins, strides=a["stride"], pads=a["padding"] * 2, dilations=a["dilation"],
                   group=a["groups"])]


@lowering("onnx", "max_pool2d")
@lowering("onnx", "avg_pool2d")
def _pool(ex, node, ins):
    a = node.attrs
    kw = dict(kernel_shape=a["kernel"], strides=a["stride"] or a["kernel"], pads=a["padding"] * 2,
              ceil_mode=int(a["ceil_mode"]))
    if node.op == "avg_pool2d":
        return [ex.one("AveragePool", ins[0], count_include_pad=int(a["count_include_pad"]), **kw)]
    return [ex.one("MaxPool", ins[0], **kw)]


@lowering("onnx", "adaptive_avg_pool2d")
def _adaptive_avg_pool(ex, node, ins):
    if list(node.attrs["output_size"]) != [1, 1]:
        raise OnnxExportError(f"adaptive_avg_pool2d exports only output_size [1, 1] ({node!r})")
    return [ex.one("GlobalAveragePool", ins[0])]


# ---- reductions ---------------------------------------------------------------------------------------
_REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "amax": "ReduceMax", "amin": "ReduceMin", "prod": "ReduceProd"}


def _reduce_axes(ex, node):
    dims = node.attrs["dims"]
    return ex.ints(dims if dims else list(range(node.inputs[0].type.rank)))


def _reduce(ex, node, ins):
    x = ex.cast(ins[0], node.inputs[0].type.dtype, _out(node).dtype)
    out = ex.one(_REDUCE[node.op], x, _reduce_axes(ex, node), keepdims=int(node.attrs["keepdim"]))
    if node.op in ("amax", "amin") and _out(node).dtype in FLOAT_DTYPES:   # torch: NaN propagates
        has_nan = _any_nan(ex, node, x, _reduce_axes(ex, node), node.attrs["keepdim"])
        out = ex.one("Where", has_nan, ex.scalar(float("nan"), _out(node).dtype), out)
    return [out]


def _any_nan(ex, node, x, axes, keepdim) -> str:
    """bool: some element along `axes` is NaN (ONNX Runtime's ReduceMax/ArgMax skip NaN; torch does not)."""
    nan = ex.one("Cast", ex.one("IsNaN", x), to=ONNX_DTYPES["f32"])
    return ex.one("Cast", ex.one("ReduceMax", nan, axes, keepdims=int(keepdim)), to=ONNX_DTYPES["bool"])


for _k in _REDUCE:
    register_lowering("onnx", _k, _reduce)


@lowering("onnx", "var")
def _var(ex, node, ins):
    x, t = ins[0], node.inputs[0].type
    axes = _reduce_axes(ex, node)
    dims = node.attrs["dims"] or list(range(t.rank))
    n = S.product(t.shape[d] for d in dims)
    centered = ex.one("Sub", x, ex.one("ReduceMean", x, axes, keepdims=1))
    ss = ex.one("ReduceSum", ex.one("Mul", centered, centered), axes, keepdims=int(node.attrs["keepdim"]))
    denom = ex.cast(ex.one("Reshape", ex.dim(S.add(n, -node.attrs["correction"])), ex.ints([])), "i64", t.dtype)
    return [ex.one("Div", ss, denom)]


@lowering("onnx", "argmax")
@lowering("onnx", "argmin")
def _arg(ex, node, ins):
    keep = int(node.attrs["keepdim"])
    out = ex.one("ArgMax" if node.op == "argmax" else "ArgMin", ins[0], axis=node.attrs["dim"], keepdims=keep)
    if node.inputs[0].type.dtype in FLOAT_DTYPES:   # torch: the first NaN wins (for argmin too)
        nan = ex.one("Cast", ex.one("IsNaN", ins[0]), to=ONNX_DTYPES["f32"])
        first_nan = ex.one("ArgMax", nan, axis=node.attrs["dim"], keepdims=keep)
        has_nan = _any_nan(ex, node, ins[0], ex.ints([node.attrs["dim"]]), keep)
        out = ex.one("Where", has_nan, first_nan, out)
    return [out]


# ---- shapes ---------------------------------------------------------------------------------------------
@lowering("onnx", "reshape")
def _reshape(ex, node, ins):
    shape = node.attrs["shape"]
    if 0 in shape:  # torch: 0 is a real 0
        return [ex.one("Reshape", ins[0], ex.dims(shape), allowzero=1)]
    # Symbolic dims become 0 ("copy the input's dim") where the input has the same dim at that
    # position; a single symbolic dim among positive static ones becomes -1 (never next to a copied
    # dim, which may be 0 at run time). Either way a constant shape: no per-run shape arithmetic.
    src = node.inputs[0].type.shape
    spec = [0 if not isinstance(d, int) and i < len(src) and src[i] == d else d for i, d in enumerate(shape)]
    sym = [i for i, d in enumerate(spec) if not isinstance(d, int)]
    if len(sym) == 1 and all(d > 0 for i, d in enumerate(spec) if i != sym[0]):
        spec[sym[0]] = -1
    return [ex.one("Reshape", ins[0], ex.dims(spec))]


@lowering("onnx", "permute")
def _permute(ex, node, ins):
    return [ex.one("Transpose", ins[0], perm=node.attrs["dims"])]


@lowering("onnx", "expand")
def _expand(ex, node, ins):
    return [ex.one("Expand", ins[0], ex.dims(_out(node).shape))]


@lowering("onnx", "slice")
def _slice(ex, node, ins):
    a = node.attrs
    end = a["end"]
    end = INT64_MAX if isinstance(end, int) and end >= 2 ** 62 else end
    return [ex.one("Slice", ins[0], ex.dims([a["start"]]), ex.dims([end]), ex.ints([a["dim"]]), ex.ints([a["step"]]))]


@lowering("onnx", "select")
def _select(ex, node, ins):
    idx = ex.one("Reshape", ex.dim(node.attrs["index"]), ex.ints([]))
    return [ex.one("Gather", ins[0], idx, axis=node.attrs["dim"])]


@lowering("onnx", "concat")
def _concat(ex, node, ins):
    dtype = _out(node).dtype
    keep = [(n, v) for n, v in zip(ins, node.inputs) if not (v.type.rank == 1 and v.type.shape[0] == 0)] \
        or list(zip(ins, node.inputs))[:1]  # torch skips empty 1-d operands
    return [ex.one("Concat", *[ex.cast(n, v.type.dtype, dtype) for n, v in keep], axis=node.attrs["dim"])]


@lowering("onnx", "cache_append")
def _cache_append(ex, node, ins):
    """An `append` state: ONNX Runtime returns a new tensor (a copy of the cache) every call."""
    return [ex.one("Concat", ins[0], ex.cast(ins[1], node.inputs[1].type.dtype, _out(node).dtype),
                   axis=node.attrs["axis"])]


@lowering("onnx", "cache_window")
def _cache_window(ex, node, ins):
    """First `sinks` rows + last `window` rows along `axis` (all of them when fewer)."""
    a, w, s = node.attrs["axis"], node.attrs["window"], node.attrs["sinks"]
    axis = ex.ints([a])
    n = ex.one("Gather", ex.one("Shape", ins[0]), ex.ints([a % node.inputs[0].type.rank]), axis=0)
    start = ex.one("Max", ex.one("Sub", n, ex.ints([w])), ex.ints([s]))
    head = ex.one("Slice", ins[0], ex.ints([0]), ex.ints([s]), axis)
    tail = ex.one("Slice", ins[0], start, n, axis)
    return [ex.one("Concat", head, tail, axis=a)]


@lowering("onnx", "split")
def _split(ex, node, ins):
    return ex.node("Split", [ins[0], ex.dims(node.attrs["sizes"])], n_out=len(node.outputs), axis=node.attrs["dim"])


@lowering("onnx", "unsqueeze")
def _unsqueeze(ex, node, ins):
    return [ex.one("Unsqueeze", ins[0], ex.ints([node.attrs["dim"]]))]


@lowering("onnx", "squeeze")
def _squeeze(ex, node, ins):
    t = node.inputs[0].type
    dims = [d % t.rank for d in node.attrs["dims"] if t.shape[d] == 1]  # torch ignores non-1 dims
    return [ex.one("Squeeze", ins[0], ex.ints(dims)) if dims else ex.one("Identity", ins[0])]


@lowering("onnx", "gather")
def _gather(ex, node, ins):
    return [ex.one("GatherElements", *ins, axis=node.attrs["dim"])]


_SCATTER_REDUCTION = {"none": "none", "sum": "add", "prod": "mul", "amax": "max", "amin": "min"}


@lowering("onnx", "scatter")
def _scatter(ex, node, ins):
    reduce = node.attrs["reduce"]
    if reduce not in _SCATTER_REDUCTION or (reduce != "none" and not node.attrs["include_self"]):
        raise OnnxExportError(f"scatter with reduce={reduce!r}, include_self={node.attrs['include_self']} has no "
                              f"ONNX ScatterElements form ({node!r})")
    dtype = node.inputs[0].type.dtype
    src = ex.cast(ins[2], node.inputs[2].type.dtype, dtype)
    return [ex.one("ScatterElements", ins[0], ins[1], src, axis=node.attrs["dim"],
                   reduction=_SCATTER_REDUCTION[reduce])]


@lowering("onnx", "index_select")
def _index_select(ex, node, ins):
    return [ex.one("Gather", *ins, axis=node.attrs["dim"])]


@lowering("onnx", "gather_nd")
def _gather_nd(ex, node, ins):
    return [ex.one("GatherND", *ins, batch_dims=node.attrs["batch_dims"])]


@lowering("onnx", "topk")
def _topk(ex, node, ins):
    a = node.attrs
    return ex.node("TopK", [ins[0], ex.dim(a["k"])], n_out=2, axis=a["dim"], largest=int(a["largest"]), sorted=1)


@lowering("onnx", "tril")
@lowering("onnx", "triu")
def _trilu(ex, node, ins):
    return [ex.one("Trilu", ins[0], ex.const(np.asarray(node.attrs["diagonal"], np.int64)), upper=int(node.op == "triu"))]


@lowering("onnx", "cumsum")
def _cumsum(ex, node, ins):
    x = ex.cast(ins[0], node.inputs[0].type.dtype, _out(node).dtype)
    return [ex.one("CumSum", x, ex.const(np.asarray(node.attrs["dim"], np.int64)))]


@lowering("onnx", "flip")
def _flip(ex, node, ins):
    dims = node.attrs["dims"]
    n = len(dims)
    return [ex.one("Slice", ins[0], ex.ints([-1] * n), ex.ints([INT64_MIN] * n), ex.ints(dims), ex.ints([-1] * n))]


@lowering("onnx", "pad")
def _pad(ex, node, ins):
    t = node.inputs[0].type
    pads = node.attrs["pads"]
    begin, end = [0] * t.rank, [0] * t.rank
    for i in range(len(pads) // 2):  # torch order: last dim first
        begin[t.rank - 1 - i], end[t.rank - 1 - i] = pads[2 * i], pads[2 * i + 1]
    mode = node.attrs.get("mode", "constant")
    if mode != "constant":
        return [ex.one("Pad", ins[0], ex.ints(begin + end), mode=mode)]
    return [ex.one("Pad", ins[0], ex.ints(begin + end), ex.scalar(node.attrs["value"], t.dtype))]


@lowering("onnx", "einsum")
def _einsum(ex, node, ins):
    return [ex.one("Einsum", *_cast_ins(ex, node, ins, _out(node).dtype), equation=node.attrs["equation"])]


@lowering("onnx", "tile")
def _tile(ex, node, ins):
    reps, x = node.attrs["repeats"], ins[0]
    extra = len(reps) - node.inputs[0].type.rank
    if extra > 0:                          # ONNX Tile wants one repeat per dim: torch's new leading dims first
        x = ex.one("Unsqueeze", x, ex.ints(list(range(extra))))
    return [ex.one("Tile", x, ex.ints(reps))]


# ---- quantized weights -------------------------------------------------------------------------------------
@lowering("onnx", "qlinear")
def _qlinear(ex, node, ins):
    """int4 -> com.microsoft MatMulNBits (same nibble order and K-blocking); int8 -> DequantizeLinear + MatMul."""
    a, x = node.attrs, node.inputs[0]
    qw, sc = node.inputs[1], node.inputs[2]
    rest = node.inputs[3:]
    zeros = rest[0] if rest and Q.is_zeros(rest[0].type) else None
    bias = rest[-1] if rest and not Q.is_zeros(rest[-1].type) else None
    bias_name = ins[len(node.inputs) - 1] if bias is not None else None
    n, k = qw.type.shape[0], x.type.shape[-1]
    if a["bits"] == 4:
        return [_matmul_nbits(ex, node, ins, qw, sc, zeros, bias_name, n, k)]
    w = _dequantize_linear(ex, node, ins, qw, sc, zeros, n, k)
    y = ex.one("MatMul", ins[0], ex.one("Transpose", w, perm=[1, 0]))
    return [ex.one("Add", y, bias_name) if bias_name else y]


@lowering("onnx", "quantize_activation")
def _quantize_activation(ex, node, ins):
    """ir/opset/quant.py quantize_activation as float ops (ONNX Round is half to even, like torch.round):
    groups [-1, k/g, g], s = max|x| / Q, clamp(round(x / s), -Q, Q) * s, reshaped back to x's shape (Q: 127 for
    int8, 32639 for int16). In f32 whatever x's dtype, the result cast back once, as the reference does (int16
    codes and 32639 are not f16 numbers; ORT's IsInf takes no f16)."""
    from ..ir.opset.quant import ACT_QMAX
    x, xdt, dt = node.inputs[0], node.inputs[0].type.dtype, "f32"
    qmax = float(ACT_QMAX[node.attrs["bits"]])
    k = x.type.shape[-1]
    if not isinstance(k, int):
        raise OnnxExportError(f"quantize_activation over a symbolic last dim {k!r} ({node!r}); the quantize-activations "
                              "pass only inserts it before qlinear, whose K is static")
    g = node.attrs["group"] or k
    xf = ins[0] if xdt == dt else ex.one("Cast", ins[0], to=ONNX_DTYPES[dt])
    xs = ex.one("Reshape", xf, ex.ints([-1, k // g, g]))
    inf = ex.scalar(float("inf"), dt)   # NaN/inf count as inf in the max (ORT's ReduceMax skips NaN): scale NaN
    bad = ex.one("Or", ex.one("IsNaN", xs), ex.one("IsInf", xs))
    amax = ex.one("ReduceMax", ex.one("Where", bad, inf, ex.one("Abs", xs)), ex.ints([-1]), keepdims=1)
    s = ex.one("Where", ex.one("Equal", amax, inf), ex.scalar(float("nan"), dt), ex.one("Div", amax, ex.scalar(qmax, dt)))
    d = ex.one("Where", ex.one("Greater", s, ex.scalar(0.0, dt)), s, ex.scalar(1.0, dt))
    q = ex.one("Clip", ex.one("Round", ex.one("Div", xs, d)), ex.scalar(-qmax, dt), ex.scalar(qmax, dt))
    y = ex.one("Reshape", ex.one("Mul", q, s), ex.one("Shape", ins[0]))
    return [y if xdt == dt else ex.one("Cast", y, to=ONNX_DTYPES[xdt])]


@lowering("onnx", "dequantize")
def _dequantize(ex, node, ins):
    return [_dequantized(ex, node, node.inputs, ins)]


@lowering("onnx", "qembedding")
def _qembedding(ex, node, ins):
    """Gather rows of the dequantized table (ORT folds the constant table at load time)."""
    return [ex.one("Gather", _dequantized(ex, node, node.inputs[1:], ins[1:]), ins[0], axis=0)]


def _dequantized(ex, node, packed, ins):
    """W[out, in] from packed = [qweight, scales, zeros?] (IR values) and their ONNX names `ins`."""
    qw, sc = packed[0], packed[1]
    zeros = packed[2] if len(packed) > 2 else None
    n, k = qw.type.shape[0], Q.logical_in_dim(qw.type.shape, node.attrs["bits"])
    if node.attrs["bits"] == 4:  # unpack nibbles: low = even columns, high = odd columns
        q = ex.one("Cast", ins[0], to=ONNX_DTYPES["i32"])
        lo = ex.one("BitwiseAnd", q, ex.scalar(15, "i32"))
        hi = ex.one("BitwiseAnd", ex.one("Div", q, ex.scalar(16, "i32")), ex.scalar(15, "i32"))
        both = ex.one("Concat", ex.one("Unsqueeze", lo, ex.ints([2])), ex.one("Unsqueeze", hi, ex.ints([2])), axis=2)
        ins = [ex.one("Reshape", both, ex.dims([n, k])), *ins[1:]]
    return _dequantize_linear(ex, node, [None, *ins], qw, sc, zeros, n, k, node.attrs["dtype"])


@lowering("onnx", "index")
def _index(ex, node, ins):
    if len(ins) != 2:
        return [_index_nd(ex, node, ins)]
    idx = node.inputs[1].type
    if idx.dtype == "bool":  # x[mask]: the True positions (NonZero), gathered
        if idx.rank != 1:
            raise OnnxExportError(f"op index with a {idx.rank}-d bool mask (dtype bool) has no ONNX lowering; "
                                  f"only a 1-d mask exports ({node!r}); use target='torch'")
        return [ex.one("Gather", ins[0], ex.one("Reshape", ex.one("NonZero", ins[1]), ex.ints([-1])),
                       axis=node.attrs["axes"][0])]
    return [ex.one("Gather", ins[0], ins[1], axis=node.attrs["axes"][0])]


def _nd_indices(ex, node, x, idxs, idx_ins, axes):
    """(x with the indexed dims moved to the front, the [*B, n] i64 index tensor for GatherND/ScatterND,
    perm, the permutation that puts B where torch's x[...] puts it or None): several integer index tensors
    broadcast to one shape B (torch's advanced indexing)."""
    if any(t.type.dtype == "bool" for t in idxs):
        raise OnnxExportError(f"{node.op} with a bool mask among {len(idxs)} index tensors has no ONNX lowering; "
                              f"use target='torch' ({node!r})")
    rank, n = x.type.rank, len(axes)
    axes = [d % rank for d in axes]
    rest = [d for d in range(rank) if d not in axes]
    front = list(axes) + rest
    i64 = [i if t.type.dtype == "i64" else ex.one("Cast", i, to=ONNX_DTYPES["i64"]) for i, t in zip(idx_ins, idxs)]
    total = i64[0]
    for i in i64[1:]:
        total = ex.one("Add", total, i)
    shape = ex.one("Shape", total)
    cols = [ex.one("Unsqueeze", ex.one("Expand", i, shape), ex.ints([-1])) for i in i64]
    nb = max(t.type.rank for t in idxs)
    a = axes[0]
    back = None
    if list(axes) == list(range(a, a + n)) and a > 0:   # adjacent: torch puts B at the first indexed dim
        back = list(range(nb, nb + a)) + list(range(nb)) + list(range(nb + a, nb + rank - n))
    return front, ex.one("Concat", *cols, axis=-1), back


def _index_nd(ex, node, ins):
    """x[..., i0, i1, ...] with several integer index tensors (transformers' padding mask
    `mask[batch_idx, kv_idx]`): the indexed dims move to the front (Transpose), one GatherND reads them;
    torch puts B where the indexed dims were when they are adjacent, else first."""
    x, axes = node.inputs[0], list(node.attrs["axes"])
    front, idx, back = _nd_indices(ex, node, x, node.inputs[1:], ins[1:], axes)
    data = ins[0] if front == sorted(front) else ex.one("Transpose", ins[0], perm=front)
    out = ex.one("GatherND", data, idx)
    return ex.one("Transpose", out, perm=back) if back else out


def _index_put_mask(ex, node, ins):
    """x[mask] = v with one value for every selected element (a scalar or a 1-element tensor: `y[y > t] = t`,
    masked_fill written as an assignment): Where(mask, v, x), the mask's dims lined up with x's from axes[0]."""
    x, v, m = node.inputs[0], node.inputs[1], node.inputs[2]
    if not (v.type.rank == 0 or all(d == 1 for d in v.type.shape)) or node.attrs["accumulate"]:
        raise OnnxExportError(f"index_put by a bool mask with values per selected element (their count is known "
                              f"only at run time) has no ONNX lowering; use target='torch' ({node!r})")
    a = node.attrs["axes"][0]
    mask = ins[2]
    trailing = x.type.rank - a - m.type.rank
    if trailing:
        mask = ex.one("Unsqueeze", mask, ex.ints(list(range(m.type.rank, m.type.rank + trailing))))
    val = ex.one("Reshape", ex.cast(ins[1], v.type.dtype, x.type.dtype), ex.ints([]))
    return ex.one("Where", mask, val, ins[0])


@lowering("onnx", "index_put")
def _index_put(ex, node, ins):
    """x[..., i0, i1, ...] = values (summed in with `accumulate`): ScatterND on x with the indexed dims in
    front; `values` broadcast to the shape torch's x[...] has, then laid out as ScatterND's updates."""
    x, axes = node.inputs[0], list(node.attrs["axes"])
    masks = node.inputs[2:]
    if len(masks) == 1 and masks[0].type.dtype == "bool":
        return [_index_put_mask(ex, node, ins)]
    front, idx, back = _nd_indices(ex, node, x, node.inputs[2:], ins[2:], axes)
    data = ins[0] if front == sorted(front) else ex.one("Transpose", ins[0], perm=front)
    ref = ex.one("GatherND", data, idx)                       # [*B, *rest]: the updates' shape
    torch_shape = ex.one("Shape", ex.one("Transpose", ref, perm=back) if back else ref)
    vals = ex.cast(ins[1], node.inputs[1].type.dtype, x.type.dtype)
    vals = ex.one("Expand", vals, torch_shape)
    if back:
        vals = ex.one("Transpose", vals, perm=[back.index(i) for i in range(len(back))])
    kw = {"reduction": "add"} if node.attrs["accumulate"] else {}
    out = ex.one("ScatterND", data, idx, vals, **kw)
    if front != sorted(front):
        out = ex.one("Transpose", out, perm=[front.index(i) for i in range(len(front))])
    return [out]


def _group(a, k):
    return a["group"] or k


def _matmul_nbits(ex, node, ins, qw, sc, zeros, bias_name, n, k):
    if not all(isinstance(d, int) for d in (n, k)) or not (qw.is_weight and sc.is_weight):
        raise OnnxExportError(f"MatMulNBits needs static, constant packed weights ({node!r})")
    g = _group(node.attrs, k)
    if g < 16 or g & (g - 1):
        raise OnnxExportError(f"MatMulNBits needs a power-of-two block size >= 16, got group={g} ({node!r})")
    blocks = -(-k // g)
    packed = qw.tensor.numpy().reshape(n, k // 2)
    if k % g:
        raise OnnxExportError(f"in={k} is not a multiple of group={g} ({node!r})")
    b = ex.const(packed.reshape(n, blocks, g // 2), f"{qw.name}_nbits")
    scales = ex.const(sc.tensor.float().numpy().astype(_np_float(node.inputs[0].type.dtype)).reshape(-1), f"{sc.name}_nbits")
    inputs = [ins[0], b, scales]
    if zeros is not None and zeros.type.dtype in FLOAT_DTYPES:   # float zero points: T1 [N * blocks]
        z = zeros.tensor.float().numpy().astype(_np_float(node.inputs[0].type.dtype)).reshape(-1)
        inputs.append(ex.const(z, f"{zeros.name}_nbits"))
    elif zeros is not None:  # one u8 per (row, block): pack two 4-bit zero points per byte, low nibble first
        z = zeros.tensor.numpy().astype(np.uint8).reshape(n, blocks)
        if blocks % 2:
            z = np.concatenate([z, np.zeros((n, 1), np.uint8)], axis=1)
        inputs.append(ex.const((z[:, 0::2] | (z[:, 1::2] << 4)).reshape(-1), f"{zeros.name}_nbits"))
    if bias_name:  # inputs: A, B, scales, zero_points?, g_idx?, bias?
        inputs += [""] * (5 - len(inputs)) + [bias_name]
    ex.uses_ms = True
    acc = {"accuracy_level": ex.int4_accuracy_level} if ex.int4_accuracy_level else {}
    return ex.one("MatMulNBits", *inputs, domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=g, **acc)


def _np_float(dtype):
    return {"f16": np.float16, "f64": np.float64}.get(dtype, np.float32)


def _dequantize_linear(ex, node, ins, qw, sc, zeros, n, k, dtype=None):
    """W[out, in] = (q - zero) * scale, `ins` = [x, codes, scales, zeros?]. Groups run along
    `in`; opset 18 DequantizeLinear has no blocked form, so the scales are expanded per element
    and the arithmetic is Cast/Sub/Mul (which ORT folds at load time for constant weights)."""
    g = _group(node.attrs, k)
    if zeros is None and node.attrs["bits"] == 4:  # symmetric int4: the implied zero point 8
        zeros_name = ex.scalar(8.0, sc.type.dtype)
    else:
        zeros_name = None
    scale = ex.one("Reshape", ex.one("Expand", ex.one("Unsqueeze", ins[2], ex.ints([2])), ex.dims([n, k // g, g])),
                   ex.dims([n, k]))
    q = ex.one("Cast", ins[1], to=ONNX_DTYPES[sc.type.dtype])
    if zeros is not None:
        z = ex.one("Cast", ins[3], to=ONNX_DTYPES[sc.type.dtype])
        z = ex.one("Reshape", ex.one("Expand", ex.one("Unsqueeze", z, ex.ints([2])), ex.dims([n, k // g, g])),
                   ex.dims([n, k]))
        q = ex.one("Sub", q, z)
    elif zeros_name is not None:
        q = ex.one("Sub", q, zeros_name)
    w = ex.one("Mul", q, scale)
    return ex.cast(w, sc.type.dtype, dtype or node.inputs[0].type.dtype)


@lowering("onnx", "grouped_mm")
def _grouped_mm(ex, node, ins):
    """Each row's group g = #(offs <= row) (E: past offs[-1], a zero row); every group's matmul of every row,
    [E, rows, out], kept where g matches (Where, so no 0 * inf) and summed over the groups: static shapes,
    E times the FLOPs of the grouped kernel, E * rows * out floats of scratch (not rows * in * out)."""
    x, w, offs = node.inputs
    rows = x.type.shape[0]
    n_groups = w.type.shape[0]
    dtype = x.type.dtype
    r = ex.one("Range", ex.scalar(0, "i64"), ex.one("Reshape", ex.dim(rows), ex.ints([])), ex.scalar(1, "i64"))
    o = ins[2] if offs.type.dtype == "i64" else ex.one("Cast", ins[2], to=ONNX_DTYPES["i64"])
    le = ex.one("LessOrEqual", ex.one("Unsqueeze", o, ex.ints([0])), ex.one("Unsqueeze", r, ex.ints([1])))  # [rows, E]
    g = ex.one("ReduceSum", ex.one("Cast", le, to=ONNX_DTYPES["i64"]), ex.ints([1]), keepdims=0)         # [rows]
    groups = ex.one("Range", ex.scalar(0, "i64"), ex.one("Reshape", ex.dim(n_groups), ex.ints([])), ex.scalar(1, "i64"))
    pick = ex.one("Equal", ex.one("Unsqueeze", groups, ex.ints([1, 2])), ex.one("Unsqueeze", g, ex.ints([0, 2])))  # [E, rows, 1]
    wt = ins[1] if w.type.dtype == dtype else ex.cast(ins[1], w.type.dtype, dtype)
    prod = ex.one("MatMul", ex.one("Unsqueeze", ins[0], ex.ints([0])), wt)                            # [E, rows, out]
    return [ex.one("ReduceSum", ex.one("Where", pick, prod, ex.scalar(0.0, dtype)), ex.ints([0]), keepdims=0)]


from . import onnx_emitters_spatial  # noqa: E402,F401  (resize, conv_transpose2d, grid_sample, lstm, ...)
