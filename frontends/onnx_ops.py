"""ONNX op handlers: how each supported ONNX operator lowers to slimgraph IR ops.

`ONNX_OPS` is the supported-op list (the docs table and the conformance test read it).
A handler gets the importer (inputs via `imp.value(i)` / `imp.dims(i)`) and the node's
attributes, and returns one IR Value or Known per ONNX output.
"""
from __future__ import annotations
import math

import numpy as np

from ..ir import symbolic as S
from ..ir.opset import infer as I
from .onnx_fold import fold, should_fold
from .onnx_import import Importer, Known, NeedsConstantError, OnnxImportError, ONNX_DTYPES, ir_dtype, shape_known

ONNX_OPS: dict = {}
CONTROL_FLOW = ("Scan", "SequenceMap")  # If is inlined when its condition is known (_if), Loop unrolled (_loop)
MAX_UNROLL = 256


def onnx_op(*op_types):
    def deco(fn):
        for t in op_types:
            ONNX_OPS[t] = fn
        return fn
    return deco


def attributes(node) -> dict:
    from onnx import helper
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else [x.decode() if isinstance(x, bytes) else x
                                                               for x in v] if isinstance(v, list) else v
    return out


def lower_node(imp: Importer, node) -> list:
    op = node.op_type if node.domain in ("", "ai.onnx") else (node.domain, node.op_type)
    if op in CONTROL_FLOW:
        raise imp.error(f"control flow ({node.op_type}) is not supported (If and Loop are, when their condition or "
                        f"trip count is known at import); export the model with the loop unrolled")
    if op not in ONNX_OPS:
        raise imp.error(f"ONNX operator {node.op_type} is not supported. Supported: "
                        f"{', '.join(sorted(o for o in ONNX_OPS if isinstance(o, str)))}")
    a = attributes(node)
    ins = [imp.get(i) if imp.has(i) else None for i in range(len(node.input))]
    if all(isinstance(k, Known) for k in ins) and should_fold(node.op_type, ins):
        try:
            out = fold(node.op_type, ins, a)
        except (ValueError, IndexError, TypeError):
            out = None  # e.g. a symbolic dim where the folder needs an int: lower to run-time ops
        if out is not None:
            return out
    out = ONNX_OPS[op](imp, a)
    return list(out) if isinstance(out, (list, tuple)) else [out]


@onnx_op("If")
def _if(imp, a):
    """An If whose condition is known at import time (a constant, or decided from shapes) is
    replaced by the chosen branch's nodes; a data-dependent condition is refused."""
    k = imp.known(0)
    if k is None or k.symbolic or k.array.size != 1:
        raise imp.unsupported("control flow (If) on a run-time condition is not supported; " + _if_hint(imp))
    branch = a["then_branch"] if bool(k.array.reshape(-1)[0]) else a["else_branch"]
    return _run_subgraph(imp, branch, {})


def _run_subgraph(imp, graph, bindings: dict) -> list:
    """Lower a subgraph's nodes inline, its inputs bound to `bindings` (ONNX name -> Value | Known); returns its
    outputs. Names the subgraph defines are re-bound on every call (a Loop iteration), so the importer's
    cache of materialized constants forgets them first."""
    outer = imp.node
    for name in list(bindings) + [o for n in graph.node for o in n.output]:
        imp._materialized.pop(name, None)
    imp.env.update(bindings)
    try:
        for node in graph.node:
            imp.node = node
            imp.producer.update({o: node for o in node.output if o})
            outs = lower_node(imp, node)
            for name, v in zip(node.output, outs):
                if name:
                    imp.env[name] = v
    finally:
        imp.node = outer
    missing = [o.name for o in graph.output if o.name not in imp.env]
    if missing:
        raise imp.error(f"subgraph output(s) {missing} are produced by no node")
    return [imp.env[o.name] for o in graph.output]


@onnx_op("Loop")
def _loop(imp, a):
    """A Loop whose trip count is known at import time (a constant, or computed from shapes) and whose
    condition, if any, is decided at import time on every iteration, unrolled (at most MAX_UNROLL iterations);
    scan outputs are stacked along a new axis 0. Other loops are refused, naming what the count depends on."""
    body = a["body"]
    n_state = len(imp.node.input) - 2
    trip = imp.known(0) if imp.has(0) else None
    if imp.has(0) and (trip is None or trip.symbolic or trip.array.size != 1):
        raise NeedsConstantError(str(imp.error("a Loop whose trip count is computed at run time is not supported; "
                                               + _if_hint(imp))), imp.node.input[0])
    if not imp.has(0):
        raise imp.unsupported("a Loop without a trip count (a while loop) is not supported")
    count = int(trip.array.reshape(-1)[0])
    if count > MAX_UNROLL:
        raise imp.unsupported(f"a Loop of {count} iterations is not unrolled (at most {MAX_UNROLL})")
    cond = imp.known(1) if imp.has(1) else Known(np.array(True), "bool")
    if cond is None or cond.symbolic:
        raise NeedsConstantError(str(imp.error("a Loop whose first condition is computed at run time is not "
                                               "supported")), imp.node.input[1])
    state = [imp.get(2 + i) for i in range(n_state)]
    scans: list[list] = []
    names = [vi.name for vi in body.input]
    for i in range(count):
        if not bool(cond.array.reshape(-1)[0]):
            break
        outs = _run_subgraph(imp, body, {names[0]: Known(np.array(i, np.int64), "i64"), names[1]: cond,
                                         **{n: v for n, v in zip(names[2:], state)}})
        cond, state = outs[0], outs[1:1 + n_state]
        if not isinstance(cond, Known) or cond.symbolic:
            raise imp.unsupported("a Loop whose condition is computed at run time is not supported")
        for j, v in enumerate(outs[1 + n_state:]):
            if i == 0:
                scans.append([])
            scans[j].append(imp.as_value(v, body.output[1 + n_state + j].name))
    n_scan = len(body.output) - 1 - n_state
    if n_scan and not scans:
        raise imp.unsupported("a Loop with scan outputs that runs no iteration is not supported")
    stacked = [imp.op("concat", *[imp.op("unsqueeze", v, dim=0) for v in vs], dim=0) for vs in scans]
    return list(state) + stacked


def _if_hint(imp) -> str:
    """What the If's condition depends on, found by walking its ONNX producers back to the graph inputs:
    their values (-> import_onnx(bind=...)) or, through Shape/Size, their symbolic dims (-> dims=...)."""
    from .onnx_import import _dim_names
    inputs = {vi.name: vi for vi in imp.model.graph.input}
    values, shapes, seen = set(), set(), set()
    stack = [(imp.node.input[0], False)]
    while stack:
        name, through_shape = stack.pop()
        if (name, through_shape) in seen:
            continue
        seen.add((name, through_shape))
        if name in inputs and not isinstance(imp.env.get(name), Known):
            (shapes if through_shape else values).add(name)
            continue
        node = imp.producer.get(name)
        if node is not None:
            shape_op = through_shape or node.op_type in ("Shape", "Size")
            stack.extend((i, shape_op) for i in node.input if i)
    if values:
        return (f"it depends on the values of graph input(s) {sorted(values)}: if they are settings (a sample rate, "
                f"a flag), specialize the model on them with "
                f"slimgraph.optimize(import_onnx(path, bind={{name: array}})), or export it with the branch "
                f"constant-folded")
    dims = sorted({d for n in shapes for d in _dim_names(inputs[n])})
    if dims:
        return (f"it depends on the symbolic dims {dims} of graph input(s) {sorted(shapes)}: fix them with "
                f"slimgraph.optimize(import_onnx(path, dims={{{dims[0]!r}: size, ...}})), or export the model "
                f"with static shapes")
    return "export the model with the branch constant-folded"


def _axis(a, key, rank, default=0):
    return I.norm_dim(a.get(key, default), rank)


# ---- elementwise ----------------------------------------------------------------------------------
_UNARY = {"Abs": "abs", "Neg": "neg", "Relu": "relu", "Floor": "floor", "Ceil": "ceil",
          "Round": "round", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Sin": "sin", "Cos": "cos",
          "Tan": "tan", "Atan": "atan", "Tanh": "tanh", "Sigmoid": "sigmoid", "Erf": "erf",
          "Reciprocal": "reciprocal", "Not": "logical_not", "IsNaN": "isnan", "BitwiseNot": "bitwise_not",
          "Asin": "asin", "Acos": "acos", "Sinh": "sinh", "Cosh": "cosh", "Asinh": "asinh", "Acosh": "acosh",
          "Atanh": "atanh", "Softplus": "softplus", "Mish": "mish", "HardSwish": "hardswish"}
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Equal": "eq", "Less": "lt",
           "LessOrEqual": "le", "Greater": "gt", "GreaterOrEqual": "ge", "And": "logical_and",
           "Or": "logical_or", "Xor": "logical_xor", "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or",
           "BitwiseXor": "bitwise_xor"}
_VARIADIC = {"Sum": "add", "Max": "maximum", "Min": "minimum", "Mean": "add"}


def _unary(ir_op):
    return lambda imp, a: imp.op(ir_op, imp.value(0))


def _binary(ir_op):
    return lambda imp, a: imp.op(ir_op, imp.value(0), imp.value(1))


for _k, _v in _UNARY.items():
    onnx_op(_k)(_unary(_v))
for _k, _v in _BINARY.items():
    onnx_op(_k)(_binary(_v))


@onnx_op("Sign")
def _sign(imp, a):
    """ONNX Sign keeps NaN; the IR's sign is torch.sign (NaN -> 0), so NaN is put back for floats."""
    x = imp.value(0)
    y = imp.op("sign", x)
    if x.type.dtype not in ("f16", "bf16", "f32", "f64"):
        return y
    return imp.op("where", imp.op("isnan", x), x, y)


def _same_dtype(imp, v, dtype):
    return v if v.type.dtype == dtype else imp.op("cast", v, dtype=dtype)


@onnx_op("Pow")
def _pow(imp, a):
    x = imp.value(0)
    return _same_dtype(imp, imp.op("pow", x, imp.value(1)), x.type.dtype)


@onnx_op("Div")
def _div(imp, a):
    x, y = imp.value(0), imp.value(1)
    out = imp.op("div", x, y)
    return out if out.type.dtype == x.type.dtype else imp.op("cast", out, dtype=x.type.dtype)  # ints truncate


@onnx_op("Mod")
def _mod(imp, a):
    return imp.op("fmod" if a.get("fmod", 0) else "remainder", imp.value(0), imp.value(1))


@onnx_op(*_VARIADIC)
def _variadic(imp, a):
    op = imp.node.op_type
    acc = imp.value(0)
    for i in range(1, len(imp.node.input)):
        acc = imp.op(_VARIADIC[op], acc, imp.value(i))
    if op == "Mean":
        acc = imp.op("div", acc, _scalar(imp, len(imp.node.input), acc.type.dtype))
    return acc


def _scalar(imp, value, dtype):
    return imp.op("constant", value=value, dtype=dtype)


@onnx_op("IsInf")
def _isinf(imp, a):
    return imp.op("isinf", imp.value(0), pos=bool(a.get("detect_positive", 1)), neg=bool(a.get("detect_negative", 1)))


@onnx_op("Clip")
def _clip(imp, a):
    x = imp.value(0)
    if imp.has(1):
        x = imp.op("maximum", x, imp.value(1))
    if imp.has(2):
        x = imp.op("minimum", x, imp.value(2))
    return x


@onnx_op("Where")
def _where(imp, a):
    return imp.op("where", imp.value(0), imp.value(1), imp.value(2))


@onnx_op("Cast")
def _cast(imp, a):
    out = imp.op("cast", imp.value(0), dtype=ir_dtype(a["to"], "Cast to"))
    _note_float_of_dims(imp, out)
    return out


def _note_float_of_dims(imp, out):
    """A symbolic shape value cast to a float (the folder keeps symbolic values integer) stays a
    run-time value; its dims are remembered for ops that need them at import time (Range)."""
    k = imp.known(0)
    if k is not None and k.symbolic and out.type.dtype in ("f16", "bf16", "f32", "f64"):
        imp.float_of_dims[imp.node.output[0]] = k


@onnx_op("CastLike")
def _cast_like(imp, a):
    dtype = imp.type(1).dtype
    k = imp.known(0)
    if k is not None and not k.symbolic:  # a constant cast to a run-time value's dtype stays known
        from .onnx_fold import _cast
        from .onnx_import import IR_TO_ONNX
        out = _cast([k], {"to": IR_TO_ONNX[dtype]})
        if out is not None:
            return out
    out = imp.op("cast", imp.value(0), dtype=dtype)
    _note_float_of_dims(imp, out)
    return out


@onnx_op("Identity")
def _identity(imp, a):
    return imp.get(0)


@onnx_op("Dropout")
def _dropout(imp, a):
    """Inference: the identity, with an all-true mask. Training-mode dropout is random: rejected."""
    if imp.has(2) and imp.scalar(2, "training_mode") and (imp.scalar(1, "ratio") if imp.has(1) else 0.5) != 0:
        raise imp.unsupported("training-mode Dropout (random) is not supported; export the model in eval mode")
    x = imp.value(0)
    return [x, imp.op("full", shape=list(x.type.shape), value=True, dtype="bool")]


# ---- activations composed from primitives ----------------------------------------------------------
def _c(imp, x, value):
    return _scalar(imp, float(value), x.type.dtype)


@onnx_op("LeakyRelu")
def _leaky_relu(imp, a):
    return imp.op("leaky_relu", imp.value(0), slope=a.get("alpha", 0.01))


@onnx_op("Elu", "Celu")
def _elu(imp, a):
    x, alpha = imp.value(0), a.get("alpha", 1.0)
    xs = imp.op("div", x, _c(imp, x, alpha)) if imp.node.op_type == "Celu" else x
    neg = imp.op("mul", _c(imp, x, alpha), imp.op("expm1", xs))
    return imp.op("where", imp.op("gt", x, _c(imp, x, 0)), x, neg)


@onnx_op("Selu")
def _selu(imp, a):
    x = imp.value(0)
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    neg = imp.op("mul", _c(imp, x, alpha), imp.op("expm1", x))
    return imp.op("mul", _c(imp, x, gamma), imp.op("where", imp.op("gt", x, _c(imp, x, 0)), x, neg))


@onnx_op("HardSigmoid")
def _hard_sigmoid(imp, a):
    x = imp.value(0)
    y = imp.op("add", imp.op("mul", x, _c(imp, x, a.get("alpha", 0.2))), _c(imp, x, a.get("beta", 0.5)))
    return imp.op("clamp", y, min=0.0, max=1.0)


@onnx_op("ThresholdedRelu")
def _thresholded_relu(imp, a):
    x = imp.value(0)
    return imp.op("where", imp.op("gt", x, _c(imp, x, a.get("alpha", 1.0))), x, _c(imp, x, 0))


@onnx_op("PRelu")
def _prelu(imp, a):
    x, slope = imp.value(0), imp.value(1)
    return imp.op("where", imp.op("lt", x, _c(imp, x, 0)), imp.op("mul", x, slope), x)


@onnx_op("Softsign")
def _softsign(imp, a):
    x = imp.value(0)
    return imp.op("div", x, imp.op("add", imp.op("abs", x), _c(imp, x, 1)))


@onnx_op("Swish")
def _swish(imp, a):
    x = imp.value(0)
    return imp.op("mul", x, imp.op("sigmoid", imp.op("mul", x, _c(imp, x, a.get("alpha", 1.0)))))


@onnx_op("Gelu")
def _gelu(imp, a):
    return imp.op("gelu", imp.value(0), approximate=a.get("approximate", "none"))


@onnx_op("Softmax", "LogSoftmax")
def _softmax(imp, a):
    x = imp.value(0)
    dim = _axis(a, "axis", x.type.rank, -1)
    if imp.node.op_type == "Softmax" and x.type.dtype in ("f16", "bf16"):
        return low_precision_softmax(imp, x, dim)
    return imp.op("softmax" if imp.node.op_type == "Softmax" else "log_softmax", x, dim=dim)


def low_precision_softmax(imp, x, dim):
    """f16/bf16 softmax computed as ONNX's reference does: exp(x - max) / sum in the input dtype,
    each step rounded (a fused softmax rounds once and differs by an ulp, > rtol in bf16)."""
    e = imp.op("exp", imp.op("sub", x, imp.op("amax", x, dims=[dim], keepdim=True)))
    return imp.op("div", e, reference_sum(imp, e, dim))


def reference_sum(imp, x, dim):
    """Sum over `dim` (keepdim) rounded like numpy: for bf16 (an ml_dtypes type numpy reduces
    element by element) a left-to-right chain of rounded adds when the length is small and
    static; otherwise the IR `sum` (f32 accumulation, one rounding; numpy does so for f16)."""
    n = x.type.shape[dim]
    if x.type.dtype != "bf16" or not isinstance(n, int) or not 1 <= n <= 64:
        return imp.op("sum", x, dims=[dim], keepdim=True)
    acc = imp.op("slice", x, dim=dim, start=0, end=1)
    for j in range(1, n):
        acc = imp.op("add", acc, imp.op("slice", x, dim=dim, start=j, end=j + 1))
    return acc


# ---- linear algebra ----------------------------------------------------------------------------------
@onnx_op("MatMul")
def _matmul(imp, a):
    return imp.op("matmul", imp.value(0), imp.value(1))


@onnx_op("Gemm")
def _gemm(imp, a):
    x, w = imp.value(0), imp.value(1)
    if a.get("transA", 0):
        x = imp.op("permute", x, dims=[1, 0])
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if a.get("transB", 0) and alpha == 1.0 and (beta == 1.0 or not imp.has(2)) and \
            (not imp.has(2) or imp.type(2).rank == 1):
        return imp.op("linear", x, w, *([imp.value(2)] if imp.has(2) else []))  # the torch.nn.Linear form
    if a.get("transB", 0):
        w = imp.op("permute", w, dims=[1, 0])
    y = imp.op("matmul", x, w)
    if alpha != 1.0:
        y = imp.op("mul", y, _c(imp, y, alpha))
    if imp.has(2):
        c = imp.value(2)
        y = imp.op("add", y, c if beta == 1.0 else imp.op("mul", c, _c(imp, c, beta)))
    return y


@onnx_op("Einsum")
def _einsum(imp, a):
    return imp.op("einsum", *[imp.value(i) for i in range(len(imp.node.input))], equation=a["equation"])


# ---- shapes -------------------------------------------------------------------------------------------
@onnx_op("Shape")
def _shape(imp, a):
    shape = imp.type(0).shape
    rank = len(shape)
    start, end = a.get("start", 0), a.get("end", rank)
    return shape_known(shape[slice(start, end)] if rank else ())


@onnx_op("Size")
def _size(imp, a):
    k = shape_known((imp.type(0).numel(),))
    return Known(k.array.reshape(()), "i64")


@onnx_op("Constant")
def _constant(imp, a):
    from onnx import numpy_helper
    if "value" in a:
        t = a["value"]
        return Known(np.asarray(numpy_helper.to_array(t)), ir_dtype(t.data_type, "Constant value"))
    for key, dtype, np_dtype in (("value_float", "f32", np.float32), ("value_floats", "f32", np.float32),
                                 ("value_int", "i64", np.int64), ("value_ints", "i64", np.int64)):
        if key in a:
            return Known(np.asarray(a[key], dtype=np_dtype), dtype)
    raise imp.unsupported(f"Constant with attribute {sorted(a)} is not supported")


@onnx_op("ConstantOfShape")
def _constant_of_shape(imp, a):
    from onnx import numpy_helper
    shape = imp.dims(0, "shape")
    t = a.get("value")
    value, dtype = (numpy_helper.to_array(t).reshape(-1)[0].item(), ir_dtype(t.data_type, "ConstantOfShape value")) \
        if t is not None else (0.0, "f32")
    if all(isinstance(d, int) for d in shape) and math.prod(shape) <= 1024:
        from ..ir.dtypes import to_torch
        import torch
        return Known(torch.full(shape, value, dtype=to_torch(dtype)).numpy(), dtype)
    return imp.op("full", shape=shape, value=value, dtype=dtype)


@onnx_op("Reshape")
def _reshape(imp, a):
    x = imp.value(0)
    shape = imp.dims(1, "shape")
    if not a.get("allowzero", 0):
        shape = [x.type.shape[i] if isinstance(d, int) and d == 0 else d for i, d in enumerate(shape)]
    return imp.op("reshape", x, shape=shape)


@onnx_op("Flatten")
def _flatten(imp, a):
    x = imp.value(0)
    ax = a.get("axis", 1)
    ax = ax + x.type.rank if ax < 0 else ax
    return imp.op("reshape", x, shape=[S.product(x.type.shape[:ax]), S.product(x.type.shape[ax:])])


@onnx_op("Transpose")
def _transpose(imp, a):
    x = imp.value(0)
    return imp.op("permute", x, dims=a.get("perm", list(range(x.type.rank))[::-1]))


@onnx_op("Expand")
def _expand(imp, a):
    x = imp.value(0)
    shape = I.broadcast(x.type.shape, tuple(imp.dims(1, "shape")))
    return imp.op("expand", x, shape=list(shape))


def _axes(imp, a, i):
    if imp.has(i):
        return imp.dims(i, "axes")
    return a.get("axes")


@onnx_op("Unsqueeze")
def _unsqueeze(imp, a):
    x = imp.value(0)
    axes = _axes(imp, a, 1)
    rank = x.type.rank + len(axes)
    for ax in sorted(d % rank for d in axes):
        x = imp.op("unsqueeze", x, dim=ax)
    return x


@onnx_op("Squeeze")
def _squeeze(imp, a):
    x = imp.value(0)
    axes = _axes(imp, a, 1)
    if axes is None:
        axes = [i for i, d in enumerate(x.type.shape) if d == 1]
    axes = [I.norm_dim(d, x.type.rank) for d in axes]
    if any(not isinstance(x.type.shape[d], int) for d in axes):
        # ONNX requires a squeezed dim to be 1: a symbolic one (e.g. a height pooled down to 1) is
        # dropped by a reshape (torch's squeeze would keep it when it is not 1 and the rank would lie)
        return imp.op("reshape", x, shape=[d for i, d in enumerate(x.type.shape) if i not in axes])
    return imp.op("squeeze", x, dims=list(axes))


@onnx_op("Concat")
def _concat(imp, a):
    vals = [imp.value(i) for i in range(len(imp.node.input)) if imp.has(i)]
    return imp.op("concat", *vals, dim=_axis(a, "axis", vals[0].type.rank))


@onnx_op("Split")
def _split(imp, a):
    x = imp.value(0)
    ax = _axis(a, "axis", x.type.rank)
    n_out = len(imp.node.output)
    if imp.has(1):
        sizes = imp.dims(1, "split")
    elif "split" in a:
        sizes = a["split"]
    else:
        size = x.type.shape[ax]
        if not isinstance(size, int):
            raise imp.unsupported(f"splitting symbolic dim {size} needs explicit sizes")
        chunk = -(-size // n_out)
        sizes = [min(chunk, size - i * chunk) for i in range(n_out)]
    outs = imp.op("split", x, dim=ax, sizes=sizes)
    return outs if isinstance(outs, tuple) else [outs]


@onnx_op("Slice")
def _slice(imp, a):
    x = imp.value(0)
    starts, ends = imp.dims(1, "starts"), imp.dims(2, "ends")
    axes = imp.dims(3, "axes") if imp.has(3) else list(range(len(starts)))
    steps = imp.dims(4, "steps") if imp.has(4) else [1] * len(starts)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = I.norm_dim(ax, x.type.rank)
        if st < 0:
            x, s, e, st = _reverse_slice(imp, x, ax, s, e, st)
        x = imp.op("slice", x, dim=ax, start=s, end=e, step=st)
    return x


def _reverse_slice(imp, x, ax, s, e, st):
    """A negative-step slice as flip + positive-step slice (torch slices forward only)."""
    size = x.type.shape[ax]
    if not all(isinstance(v, int) for v in (size, s, e)):
        raise imp.unsupported("a negative-step Slice needs static bounds")
    idx = range(size)[slice(s, e, st)]
    x = imp.op("flip", x, dims=[ax])
    if not idx:
        return x, 0, 0, 1
    return x, size - 1 - idx[0], size - 1 - idx[-1] + 1, -st


@onnx_op("Gather")
def _gather(imp, a):
    x = imp.value(0)
    return imp.op("index_select", x, imp.value(1), dim=_axis(a, "axis", x.type.rank))


@onnx_op("GatherElements")
def _gather_elements(imp, a):
    x, idx = imp.value(0), imp.value(1)
    ax = _axis(a, "axis", x.type.rank)
    size = _same_dtype(imp, imp.op("dim_value", expr=x.type.shape[ax]), idx.type.dtype)
    idx = imp.op("where", imp.op("lt", idx, _scalar(imp, 0, idx.type.dtype)), imp.op("add", idx, size), idx)
    return imp.op("gather", x, idx, dim=ax)  # torch.gather wants non-negative indices


@onnx_op("GatherND")
def _gather_nd(imp, a):
    return imp.op("gather_nd", imp.value(0), imp.value(1), batch_dims=a.get("batch_dims", 0))


@onnx_op("Tile")
def _tile(imp, a):
    return imp.op("tile", imp.value(0), repeats=imp.dims(1, "repeats"))


@onnx_op("Range")
def _range(imp, a):
    start, limit, delta = (imp.dims(i, "Range bound")[0] for i in range(3))
    dtype = imp.type(0).dtype
    if dtype in ("i64", "i32", "i16"):
        return imp.op("arange", start=start, end=limit, step=delta, dtype=dtype)
    if all(isinstance(v, int) for v in (start, limit, delta)):  # constant float bounds
        k = [imp.known(i).array.item() for i in range(3)]
        n = max(int(math.ceil((k[1] - k[0]) / k[2])), 0)
    else:
        # a float Range over shape arithmetic (`arange(float(w))` in YOLO/DETR heads): its length
        # ceil((limit - start) / delta) is an exact dim when every bound is an integer value
        vals = [imp.known(i).array.item() if isinstance(v, int) and imp.known(i) is not None else v
                for i, v in enumerate((start, limit, delta))]
        if any(isinstance(v, float) and not v.is_integer() for v in vals):
            raise imp.unsupported("a float Range with a shape-dependent bound needs integer-valued "
                                  f"start and delta (got start={vals[0]}, delta={vals[2]})")
        s0, lim, d = (int(v) if isinstance(v, float) else v for v in vals)
        if d == 0:
            raise imp.error("Range delta is 0")
        n = S.canon(f"ceiling(({lim} - ({s0})) / ({d}))")  # a dim is never negative: ORT's empty Range too
        k = [s0, None, d]
    idx = imp.op("arange", end=n, dtype=dtype)
    return imp.op("add", imp.op("mul", idx, _scalar(imp, k[2], dtype)), _scalar(imp, k[0], dtype))


@onnx_op("Trilu")
def _trilu(imp, a):
    upper = a.get("upper", 1)
    if not imp.has(1) or imp.known(1) is not None:
        k = imp.dims(1, "k")[0] if imp.has(1) else 0
        return imp.op("triu" if upper else "tril", imp.value(0), diagonal=k)
    # k from data: keep where (col - row) >= k (upper) / <= k (lower); the shape does not depend on k
    x = imp.value(0)
    m, n = x.type.shape[-2], x.type.shape[-1]
    diff = imp.op("sub", imp.op("reshape", imp.op("arange", end=n, dtype="i64"), shape=[1, n]),
                  imp.op("reshape", imp.op("arange", end=m, dtype="i64"), shape=[m, 1]))
    k = imp.op("reshape", imp.op("cast", imp.value(1), dtype="i64"), shape=[])
    keep = imp.op("ge" if upper else "le", diff, k)
    return imp.op("where", keep, x, _scalar(imp, 0, x.type.dtype))


def runtime_axis(imp, i, rank, build):
    """`build(axis)` for an axis given by input i: directly when it is known at import time;
    otherwise built for every axis and selected at run time by the input's value (the op keeps
    the input's shape whatever the axis, so every candidate has the same type)."""
    k = imp.known(i)
    if k is not None:
        return build(I.norm_dim(imp.dims(i, "axis")[0], rank))
    ax = imp.op("reshape", imp.op("cast", imp.value(i), dtype="i64"), shape=[])
    ax = imp.op("where", imp.op("lt", ax, _scalar(imp, 0, "i64")), imp.op("add", ax, _scalar(imp, rank, "i64")), ax)
    out = build(rank - 1)
    for d in range(rank - 2, -1, -1):
        out = imp.op("where", imp.op("eq", ax, _scalar(imp, d, "i64")), build(d), out)
    return out


@onnx_op("CumSum")
def _cumsum(imp, a):
    x = imp.value(0)

    def build(ax):
        xr = imp.op("flip", x, dims=[ax]) if a.get("reverse") else x
        y = imp.op("cumsum", xr, dim=ax, dtype=x.type.dtype)
        if a.get("exclusive"):
            y = imp.op("sub", y, xr)
        return imp.op("flip", y, dims=[ax]) if a.get("reverse") else y
    return runtime_axis(imp, 1, x.type.rank, build)


@onnx_op("Pad")
def _pad(imp, a):
    x = imp.value(0)
    mode = a.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise imp.unsupported(f"Pad mode {mode!r} is not supported (constant, reflect, edge, wrap)")
    pads = imp.dims(1, "pads")
    runtime_value = imp.has(2) and imp.known(2) is None  # e.g. CastLike(-inf, x) to bf16: not folded
    value = imp.scalar(2, "constant_value") if imp.has(2) and not runtime_value else 0.0
    axes = [I.norm_dim(d, x.type.rank) for d in imp.dims(3, "axes")] if imp.has(3) else list(range(x.type.rank))
    n = len(axes)
    per_dim = {ax: (pads[i], pads[i + n]) for i, ax in enumerate(axes)}
    torch_pads = []
    for d in reversed(range(x.type.rank)):  # torch order: last dim first
        torch_pads += list(per_dim.get(d, (0, 0)))
    if mode != "constant":
        return imp.op("pad", x, pads=torch_pads, mode=mode)
    if runtime_value:  # a run-time scalar fill: pad, then select it where the padding went
        v = imp.value(2)
        if v.type.shape not in ((), (1,)):
            raise imp.error(f"constant_value must be a scalar, got shape {list(v.type.shape)}")
        inside = imp.op("pad", imp.op("full", shape=list(x.type.shape), value=True, dtype="bool"),
                        pads=torch_pads, value=0.0)
        return imp.op("where", inside, imp.op("pad", x, pads=torch_pads, value=0.0), v)
    return imp.op("pad", x, pads=torch_pads, value=float(value))


# ---- reductions ----------------------------------------------------------------------------------------
_REDUCE = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "amax", "ReduceMin": "amin",
           "ReduceProd": "prod", "ReduceL1": "sum", "ReduceL2": "sum", "ReduceSumSquare": "sum",
           "ReduceLogSum": "sum", "ReduceLogSumExp": "sum"}


@onnx_op(*_REDUCE)
def _reduce(imp, a):
    op = imp.node.op_type
    x = imp.value(0)
    axes = _axes(imp, a, 1)
    if not axes:
        if a.get("noop_with_empty_axes", 0):  # no reduction, but the elementwise part still applies
            return _reduce_elementwise(imp, op, x)
        axes = list(range(x.type.rank))
    keep = bool(a.get("keepdims", 1))
    axes = [I.norm_dim(d, x.type.rank) for d in axes]
    if op in ("ReduceMax", "ReduceMin", "ReduceLogSumExp") and any(x.type.shape[d] == 0 for d in axes):
        shape = I.reduce_shape(x.type.shape, axes, keep)  # the identity of max/min: -inf/+inf
        if x.type.dtype == "bool" and op != "ReduceLogSumExp":  # max of nothing: False, min: True
            return imp.op("full", shape=list(shape), value=op == "ReduceMin", dtype="bool")
        if x.type.dtype not in ("f16", "bf16", "f32", "f64"):
            raise imp.unsupported(f"{op} over an empty dim of a {x.type.dtype} tensor has no identity value")
        return imp.op("full", shape=list(shape), value=math.inf if op == "ReduceMin" else -math.inf, dtype=x.type.dtype)
    pre = {"ReduceL1": lambda v: imp.op("abs", v), "ReduceL2": lambda v: imp.op("mul", v, v),
           "ReduceSumSquare": lambda v: imp.op("mul", v, v)}
    if op == "ReduceLogSumExp":
        m = imp.op("amax", x, dims=axes, keepdim=True)
        s = imp.op("sum", imp.op("exp", imp.op("sub", x, m)), dims=axes, keepdim=keep)
        m = m if keep else imp.op("squeeze", m, dims=axes)
        return imp.op("add", imp.op("log", s), m)
    y = imp.op(_REDUCE[op], pre.get(op, lambda v: v)(x), dims=axes, keepdim=keep)
    if op == "ReduceL2":
        y = _same_dtype(imp, imp.op("sqrt", y), x.type.dtype)
    if op == "ReduceLogSum":
        y = imp.op("log", y)
    return _same_dtype(imp, y, x.type.dtype)


def _reduce_elementwise(imp, op, x):
    """A reduction over no axes (noop_with_empty_axes=1): each element reduced alone, i.e. the
    op's elementwise part (ReduceSumSquare([-2, 3]) = [4, 9], ReduceL1 = |x|, ReduceLogSum = log x,
    ReduceLogSumExp = log(exp(x)) = x, the others = x)."""
    if op in ("ReduceSumSquare", "ReduceL2") or op == "ReduceL1":
        y = imp.op("abs", x) if op in ("ReduceL1", "ReduceL2") else imp.op("mul", x, x)
        return y
    if op == "ReduceLogSum":
        return imp.op("log", x)
    return x


@onnx_op("ArgMax", "ArgMin")
def _arg(imp, a):
    x = imp.value(0)
    ax = _axis(a, "axis", x.type.rank)
    keep = bool(a.get("keepdims", 1))
    op = "argmax" if imp.node.op_type == "ArgMax" else "argmin"
    if not a.get("select_last_index", 0):
        return imp.op(op, x, dim=ax, keepdim=keep)
    size = x.type.shape[ax]
    idx = imp.op(op, imp.op("flip", x, dims=[ax]), dim=ax, keepdim=keep)  # last index = first in reverse
    return imp.op("sub", imp.op("dim_value", expr=S.add(size, -1)), idx)


# ---- normalization ----------------------------------------------------------------------------------
@onnx_op("BatchNormalization")
def _batch_norm(imp, a):
    if a.get("training_mode", 0):
        raise imp.unsupported("training_mode=1 is not supported (inference only)")
    return imp.op("batch_norm", imp.value(0), imp.value(3), imp.value(4), imp.value(1), imp.value(2),
                  eps=a.get("epsilon", 1e-5))


@onnx_op("LayerNormalization")
def _layer_norm(imp, a):
    x = imp.value(0)
    ax = _axis(a, "axis", x.type.rank, -1)
    eps = a.get("epsilon", 1e-5)
    extra = [imp.value(i) for i in (1, 2) if imp.has(i)]
    outs = [imp.op("layer_norm", x, *extra, axes=x.type.rank - ax, eps=eps)]
    if len([o for o in imp.node.output if o]) > 1:  # Mean and InvStdDev, as the stash type (f32)
        xf = _same_dtype(imp, x, "f32")
        dims = list(range(ax, x.type.rank))
        mean = imp.op("mean", xf, dims=dims, keepdim=True)
        var = imp.op("var", xf, dims=dims, keepdim=True, correction=0)
        outs += [mean, imp.op("rsqrt", imp.op("add", var, _c(imp, var, eps)))]
    return outs


@onnx_op("InstanceNormalization")
def _instance_norm(imp, a):
    x, scale, bias = imp.value(0), imp.value(1), imp.value(2)
    dims = list(range(2, x.type.rank))
    mean = imp.op("mean", x, dims=dims, keepdim=True)
    var = imp.op("var", x, dims=dims, keepdim=True, correction=0)
    y = imp.op("mul", imp.op("sub", x, mean), imp.op("rsqrt", imp.op("add", var, _c(imp, x, a.get("epsilon", 1e-5)))))
    per_channel = [-1] + [1] * len(dims)
    return imp.op("add", imp.op("mul", y, imp.op("reshape", scale, shape=per_channel)),
                  imp.op("reshape", bias, shape=per_channel))


# ---- convolution and pooling ------------------------------------------------------------------------
def same_pads(imp, auto, sizes, kernel, strides, dilations) -> list:
    """ONNX auto_pad SAME_UPPER/SAME_LOWER as explicit [begin..., end...] pads: the output is ceil(size /
    stride) and the total pad (ceil(size / s) - 1) * s + span - size. With stride 1 that is span - 1 for
    any size, so symbolic dims are fine there (PP-OCRv6's 2x2 stride-1 convs and pools); a larger stride
    over a symbolic dim pads by its remainder, which no static pad expresses: refused."""
    begin, end = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        span = (k - 1) * d + 1
        if s == 1:
            total = span - 1
        elif isinstance(size, int):
            total = max((-(-size // s) - 1) * s + span - size, 0)
        else:
            raise imp.unsupported(f"auto_pad {auto} with stride {s} needs static spatial dims (the pad depends on "
                                  f"the size modulo the stride; got {size})")
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def _pads_2d(imp, a, x_shape, kernel, strides, dilations):
    """(symmetric [ph, pw], asymmetric torch-order pads or None) from ONNX pads / auto_pad."""
    n = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = same_pads(imp, auto, x_shape[-n:], kernel, strides, dilations)
    elif auto == "VALID":
        pads = [0] * 2 * n
    else:
        pads = a.get("pads", [0] * 2 * n)
    if pads[:n] == pads[n:]:
        return list(pads[:n]), None
    torch_pads = []
    for i in reversed(range(n)):
        torch_pads += [pads[i], pads[i + n]]
    return [0] * n, torch_pads


def _to_2d(imp, v, n):
    """1-d spatial ops run as 2-d with a unit height."""
    return imp.op("unsqueeze", v, dim=2) if n == 1 else v


@onnx_op("Conv")
def _conv(imp, a):
    x, w = imp.value(0), imp.value(1)
    n = x.type.rank - 2
    if n not in (1, 2):
        raise imp.unsupported(f"only 1-d and 2-d convolution is supported, got {n}-d")
    kernel = a.get("kernel_shape", list(w.type.shape[2:]))
    strides, dil = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    pad, asym = _pads_2d(imp, a, x.type.shape, kernel, strides, dil)
    if asym is not None:
        x = imp.op("pad", x, pads=asym, value=0.0)
    if n == 1:
        strides, dil, pad = [1] + strides, [1] + dil, [0] + pad
    bias = [imp.value(2)] if imp.has(2) else []
    y = imp.op("conv2d", _to_2d(imp, x, n), _to_2d(imp, w, n), *bias, stride=strides, padding=pad,
               dilation=dil, groups=a.get("group", 1))
    return imp.op("squeeze", y, dims=[2]) if n == 1 else y


@onnx_op("MaxPool", "AveragePool")
def _pool(imp, a):
    x = imp.value(0)
    n = x.type.rank - 2
    if len([o for o in imp.node.output if o]) > 1:
        raise imp.unsupported("MaxPool's Indices output is not supported")
    kernel, strides = a["kernel_shape"], a.get("strides", [1] * n)
    if n not in (1, 2) or a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1] * n)):
        return general_pool(imp, a, x, "max" if imp.node.op_type == "MaxPool" else "avg")
    pad, asym = _pads_2d(imp, a, x.type.shape, kernel, strides, [1] * n)
    is_max = imp.node.op_type == "MaxPool"
    if asym is None and any(p > k // 2 for p, k in zip(pad, kernel)):  # torch allows pad <= kernel/2 only
        asym = [p for i in reversed(range(n)) for p in (pad[i], pad[i])]
    if asym is not None:
        if not is_max and not a.get("count_include_pad", 0):
            return _avg_pool_exclude_pad(imp, x, n, kernel, strides, asym)
        x = imp.op("pad", x, pads=asym, value=-math.inf if is_max else 0.0)
        pad = [0] * n
    if n == 1:
        kernel, strides, pad = [1] + kernel, [1] + strides, [0] + pad
    x2 = _to_2d(imp, x, n)
    if is_max:
        y = imp.op("max_pool2d", x2, kernel=kernel, stride=strides, padding=pad)
    else:
        y = imp.op("avg_pool2d", x2, kernel=kernel, stride=strides, padding=pad,
                   count_include_pad=bool(a.get("count_include_pad", 0)))
    return imp.op("squeeze", y, dims=[2]) if n == 1 else y


def general_pool(imp, a, x, kind, p=2.0):
    """Any-rank pooling with dilation and ceil_mode: the `pool_nd` op (ONNX semantics)."""
    n = x.type.rank - 2
    kernel, strides, dil = a["kernel_shape"], a.get("strides", [1] * n), a.get("dilations", [1] * n)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if a.get("ceil_mode", 0):
            raise imp.unsupported("auto_pad SAME with ceil_mode is not supported")
        pads = same_pads(imp, auto, x.type.shape[2:], kernel, strides, dil)
    else:
        pads = [0] * 2 * n if auto == "VALID" else list(a.get("pads", [0] * 2 * n))
    return imp.op("pool_nd", x, kind=kind, kernel=list(kernel), stride=list(strides), pads=pads, dilation=list(dil),
                  ceil_mode=bool(a.get("ceil_mode", 0)), count_include_pad=bool(a.get("count_include_pad", 0)),
                  p=float(p))


def _avg_pool_exclude_pad(imp, x, n, kernel, strides, pads):
    """Average over valid elements only: avg(pad(x)) / avg(pad(ones)) (the window's valid fraction)."""
    ones = imp.op("full", shape=list(x.type.shape), value=1.0, dtype=x.type.dtype)
    if n == 1:
        kernel, strides = [1] + kernel, [1] + strides

    def avg(v):
        return imp.op("avg_pool2d", _to_2d(imp, imp.op("pad", v, pads=pads, value=0.0), n), kernel=kernel,
                      stride=strides, padding=[0, 0], count_include_pad=True)
    y = imp.op("div", avg(x), avg(ones))
    return imp.op("squeeze", y, dims=[2]) if n == 1 else y


@onnx_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(imp, a):
    x = imp.value(0)
    return imp.op("mean" if imp.node.op_type == "GlobalAveragePool" else "amax", x,
                  dims=list(range(2, x.type.rank)), keepdim=True)


__all__ = ["ONNX_OPS", "lower_node", "OnnxImportError", "ONNX_DTYPES"]


from . import onnx_attention  # noqa: E402,F401  (registers Attention, RMSNormalization)
from . import onnx_ops_misc  # noqa: E402,F401  (registers losses, TopK, OneHot, CumProd, ...)
from . import onnx_ms  # noqa: E402,F401  (registers com.microsoft contrib ops)
from . import onnx_ops_vision  # noqa: E402,F401  (registers Resize, ConvTranspose, LSTM, Scatter*, ...)
from . import onnx_ops_quant  # noqa: E402,F401  (registers QuantizeLinear, DequantizeLinear, QLinear*, *Integer)
from . import onnx_ops_signal  # noqa: E402,F401  (registers DFT, windows, LRN, ReverseSequence, AffineGrid, SwiGLU, RotaryEmbedding, TensorScatter)
