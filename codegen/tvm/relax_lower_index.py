"""The "cpu" lowering table, continued: indexing by tensors, scatters, scans, arg-reductions and the
activations that plain torch models and ONNX files bring beyond transformers (MobileNet's hard-swish,
bidirectional RNNs' flip, position ids by cumsum, MoE routing by scatter, InstanceNorm's var). Registered
like relax_lower.py's ops (listed in codegen/lowering.py's LOWERING_MODULES["cpu"]); semantics are the op
registry's reference implementations (ir/opset/*.py), which tests/codegen/tvm/test_cpu_index_ops.py compares
against on edge cases.

    gather, gather_nd             Relax gather_elements / gather_nd; gather_nd's negative indices count from
                                  the end (its reference indexes as torch does; TVM's would read out of bounds)
    scatter                       Relax scatter_elements: none/sum/prod/amax/amin; include_self=False first
                                  writes the reduction's identity where indices point; mean = the sum of the
                                  written values (and the old one) over their count, floats only
    scatter_nd, index_put         Relax scatter_nd (update / add): negative indices normalized against the
                                  dims (symbolic ones at run time); index_put with integer index tensors (boolean masks, whose
                                  shape depends on the data, are refused when lowering)
    flip, tile                    Relax flip (axis by axis) and tile
    cumsum, cumprod               Relax scans in the IR output dtype
    argmax, argmin                Relax argmax/argmin, then NaN first: a row holding NaN gives its first
                                  NaN's index, as torch does (Relax compares NaN as never larger)
    var                           sum((x - mean)^2) / (N - correction), N counted by summing ones (symbolic
                                  dims need no shape arithmetic); the divisor is max(N - correction, 0), as torch's
    isinf, bit_shift              element tests / shifts with the reference's out-of-range rules
    acos ... atanh, fmod, round   Relax ops (round is half to even, fmod truncates: both as torch; an
                                  integer fmod by 0, an error in torch, gives 0 rather than a SIGFPE)
    shape_tensor, dim_value       symbolic dims as i64 tensors (Relax shape_to_tensor)
    expm1, log1p                  exp/log with Goldberg's correction (exact near 0, where exp(x) - 1 is not)
    elu, selu, softplus, mish,    torch's formulas (softplus: x above its threshold 20, else log1p(exp(x)))
    hardsigmoid, hardswish,
    leaky_relu
"""
from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from ..lowering import lowering
from .module import LoweringError, tvm_dtype
from .relax_lower import _axis, _cast, from_end

_FLOATS = ("f32", "f64", "f16", "bf16")


def _need_float(node):
    dt = node.output.type.dtype
    if dt not in _FLOATS:
        raise LoweringError(f"cpu target: {node.op} of {dt} has no lowering (float dtypes only): node {node!r}")
    return dt


# ---- elementwise --------------------------------------------------------------------------------
_FLOAT_UNARY = {"acos": R.acos, "acosh": R.acosh, "asin": R.asin, "asinh": R.asinh, "atanh": R.atanh,
                "cosh": R.cosh, "sinh": R.sinh}


def _float_unary(fn):
    def emit(lw, node, args):
        return fn(_cast(args[0], _need_float(node)))
    return emit


for _name, _fn in _FLOAT_UNARY.items():
    lowering("cpu", _name)(_float_unary(_fn))


@lowering("cpu", "round")
def _round(lw, node, args):
    return R.round(args[0]) if node.output.type.dtype in _FLOATS else args[0]   # half to even, as torch


@lowering("cpu", "fmod")
def _fmod(lw, node, args):
    dt = node.output.type.dtype
    a, b = (_cast(x, dt) for x in args)
    if dt in _FLOATS:
        return R.mod(a, b)                             # truncated: the sign follows the dividend
    # integers (torch.roll's index arithmetic): a divisor of 0, which torch refuses at run time, gives 0 here
    # instead of a SIGFPE that would kill the process
    zero = R.equal(b, lw.const(0, dt))
    return R.where(zero, R.zeros_like(R.add(a, b)), R.mod(a, R.where(zero, R.ones_like(b), b)))


def _expm1(lw, x, dt):
    """exp(x) - 1 accurate near 0 (Goldberg, 'What every computer scientist should know about floating-point
    arithmetic', 1991, thm. 4's dual): for |x| < 1/2, u = exp(x) and (u - 1) * x / log(u), or x itself where u
    rounds to 1; elsewhere exp(x) - 1 loses nothing (and the product would overflow near the f32 limit)."""
    u = R.exp(x)
    um1 = R.subtract(u, lw.const(1.0, dt))
    small = R.less(R.abs(x), lw.const(0.5, dt))
    near = R.where(R.equal(u, lw.const(1.0, dt)), x, R.divide(R.multiply(um1, x), R.log(u)))
    return R.where(small, near, um1)


def _log1p(lw, x, dt):
    """log(1 + x) accurate near 0 (Goldberg 1991, thm. 4): for |x| < 1/2, u = 1 + x and log(u) * x / (u - 1),
    or x itself where u rounds to 1; elsewhere log(1 + x) loses nothing."""
    u = R.add(x, lw.const(1.0, dt))
    small = R.less(R.abs(x), lw.const(0.5, dt))
    near = R.where(R.equal(u, lw.const(1.0, dt)), x,
                   R.divide(R.multiply(R.log(u), x), R.subtract(u, lw.const(1.0, dt))))
    return R.where(small, near, R.log(u))


def _softplus(lw, x, dt):
    """torch.nn.functional.softplus(beta=1, threshold=20): x where x > 20, else log1p(exp(x))."""
    return R.where(R.greater(x, lw.const(20.0, dt)), x, _log1p(lw, R.exp(x), dt))


def _of_float(fn):
    """The lowering of a unary float op computed by fn(lw, x, dtype)."""
    def emit(lw, node, args):
        dt = _need_float(node)
        return fn(lw, _cast(args[0], dt), dt)
    return emit


for _name, _fn in {"expm1": _expm1, "log1p": _log1p, "softplus": _softplus}.items():
    lowering("cpu", _name)(_of_float(_fn))


@lowering("cpu", "mish")
def _mish(lw, node, args):
    dt = _need_float(node)
    x = _cast(args[0], dt)
    return R.multiply(x, R.tanh(_softplus(lw, x, dt)))


@lowering("cpu", "elu")
def _elu(lw, node, args):
    dt = _need_float(node)
    x = _cast(args[0], dt)
    return R.where(R.greater(x, lw.const(0.0, dt)), x, _expm1(lw, x, dt))


@lowering("cpu", "selu")
def _selu(lw, node, args):
    return R.nn.selu(_cast(args[0], _need_float(node)))


def _relu6_of_x_plus_3(lw, x, dt):
    """min(max(x + 3, 0), 6), NaN kept (torch's clamp propagates it; TVM's max/min would not)."""
    y = R.minimum(R.maximum(R.add(x, lw.const(3.0, dt)), lw.const(0.0, dt)), lw.const(6.0, dt))
    return R.where(R.isnan(x), x, y)


@lowering("cpu", "hardsigmoid")
def _hardsigmoid(lw, node, args):
    dt = _need_float(node)
    return R.divide(_relu6_of_x_plus_3(lw, _cast(args[0], dt), dt), lw.const(6.0, dt))     # relu6(x + 3) / 6


@lowering("cpu", "hardswish")
def _hardswish(lw, node, args):
    dt = _need_float(node)
    x = _cast(args[0], dt)
    return R.divide(R.multiply(x, _relu6_of_x_plus_3(lw, x, dt)), lw.const(6.0, dt))    # x relu6(x + 3) / 6


@lowering("cpu", "leaky_relu")
def _leaky_relu(lw, node, args):
    dt = _need_float(node)
    x = _cast(args[0], dt)
    return R.where(R.greater(x, lw.const(0.0, dt)), x, R.multiply(x, lw.const(node.attrs["slope"], dt)))


@lowering("cpu", "isinf")
def _isinf(lw, node, args):
    x = args[0]
    if node.inputs[0].type.dtype not in _FLOATS:
        return R.zeros_like(x, "bool")
    pos, neg = node.attrs["pos"], node.attrs["neg"]
    inf = R.isinf(x)
    if pos and neg:
        return inf
    if not (pos or neg):
        return R.zeros_like(x, "bool")
    zero = lw.const(0.0, node.inputs[0].type.dtype)
    return R.logical_and(inf, R.greater(x, zero) if pos else R.less(x, zero))


@lowering("cpu", "bit_shift")
def _bit_shift(lw, node, args):
    """a << b or a >> b with ir/opset/elementwise.py's rules: a shift < 0 or >= the bit width gives 0, or -1 for
    an arithmetic right shift of a negative value."""
    dt = node.output.type.dtype
    bits = {"i8": 8, "u8": 8, "i16": 16, "i32": 32, "i64": 64}.get(dt)
    if bits is None:
        raise LoweringError(f"cpu target: bit_shift of {dt} has no lowering: node {node!r}")
    a, b = (_cast(x, dt) for x in args)
    zero = lw.const(0, dt)
    out = R.logical_or(R.less(b, zero), R.greater_equal(b, lw.const(bits, dt)))
    s = R.where(out, R.zeros_like(b), b)
    if node.attrs["left"]:
        return R.where(out, R.zeros_like(R.add(a, b)), R.left_shift(a, s))
    fill = R.where(R.less(a, zero), R.subtract(R.zeros_like(a), lw.const(1, dt)), R.zeros_like(a)) if dt != "u8" \
        else R.zeros_like(a)
    return R.where(out, R.add(fill, R.zeros_like(b)), R.right_shift(a, s))


# ---- reductions ---------------------------------------------------------------------------------
def _arg(fn):
    def emit(lw, node, args):
        x = node.inputs[0]
        d = _axis(node.attrs["dim"], x.type.rank)
        keep = bool(node.attrs["keepdim"])
        y = R.astype(fn(args[0], d, keep), "int64")
        if x.type.dtype in _FLOATS:                     # torch: NaN is the extreme of both, first one wins
            nan = R.isnan(args[0])
            first_nan = R.astype(R.argmax(R.astype(nan, "int8"), d, keep), "int64")
            y = R.where(_any(nan, d, keep), first_nan, y)
        return y
    return emit


def _any(mask, d, keep):
    return R.greater(R.max(R.astype(mask, "int8"), [d], keep), relax.const(0, "int8"))


lowering("cpu", "argmax")(_arg(R.argmax))
lowering("cpu", "argmin")(_arg(R.argmin))


@lowering("cpu", "var")
def _var(lw, node, args):
    dt = _need_float(node)
    rank = node.inputs[0].type.rank
    dims = node.attrs["dims"]
    axes = list(range(rank)) if dims is None else [_axis(d, rank) for d in dims]
    x = _cast(args[0], dt)
    dev = R.subtract(x, R.mean(x, axes, True))
    n = R.sum(R.ones_like(x), axes, node.attrs["keepdim"])
    dof = R.maximum(R.subtract(n, lw.const(float(node.attrs["correction"]), dt)), lw.const(0.0, dt))   # as torch
    return R.divide(R.sum(R.multiply(dev, dev), axes, node.attrs["keepdim"]), dof)


# ---- scans, flips, tiles ------------------------------------------------------------------------
@lowering("cpu", "cumsum")
def _cumsum(lw, node, args):
    dt = node.output.type.dtype
    return R.cumsum(_cast(args[0], dt), _axis(node.attrs["dim"], node.inputs[0].type.rank), tvm_dtype(dt))


@lowering("cpu", "cumprod")
def _cumprod(lw, node, args):
    dt = node.output.type.dtype
    return R.cumprod(_cast(args[0], dt), _axis(node.attrs["dim"], node.inputs[0].type.rank), tvm_dtype(dt))


@lowering("cpu", "flip")
def _flip(lw, node, args):
    rank = node.inputs[0].type.rank
    y = args[0]
    for d in dict.fromkeys(_axis(d, rank) for d in node.attrs["dims"]):
        y = R.flip(y, d)
    return y


@lowering("cpu", "tile")
def _tile(lw, node, args):
    reps = list(node.attrs["repeats"])
    rank = node.inputs[0].type.rank
    x = args[0]
    if len(reps) > rank:                                # torch's repeat: leading new dims
        x = R.reshape(x, relax.ShapeExpr([1] * (len(reps) - rank) + lw.shape(node.inputs[0])))
    return R.tile(x, reps)


# ---- gathers and scatters -----------------------------------------------------------------------
@lowering("cpu", "gather")
def _gather(lw, node, args):
    return R.gather_elements(args[0], _cast(args[1], "i64"), _axis(node.attrs["dim"], node.inputs[0].type.rank))


@lowering("cpu", "gather_nd")
def _gather_nd(lw, node, args):
    x, idx, b = node.inputs[0], node.inputs[1], node.attrs["batch_dims"]
    k = idx.type.shape[-1]
    if not isinstance(k, int):
        raise LoweringError(f"cpu target: gather_nd with a symbolic index depth: node {node!r}")
    i = from_end(lw, args[1], x.type.shape[b:b + k])    # TVM's gather_nd takes no negatives
    return R.gather_nd(args[0], i, b)


_SCATTER = {"none": "update", "sum": "add", "prod": "mul", "amax": "max", "amin": "min"}


def _identity(lw, reduce, dt):
    import math
    big = {"f32": math.inf, "f64": math.inf, "f16": math.inf, "bf16": math.inf, "i64": 2 ** 63 - 1,
           "i32": 2 ** 31 - 1, "i16": 2 ** 15 - 1, "i8": 127, "u8": 255}.get(dt)
    if big is None:
        return None
    small = -big - (0 if dt in _FLOATS else 1) if dt != "u8" else 0
    return lw.const({"sum": 0, "mean": 0, "prod": 1, "amax": small, "amin": big}[reduce], dt)


@lowering("cpu", "scatter")
def _scatter(lw, node, args):
    dt = node.output.type.dtype
    reduce, include_self = node.attrs["reduce"], node.attrs["include_self"]
    d = _axis(node.attrs["dim"], node.inputs[0].type.rank)
    x, idx, src = args[0], _cast(args[1], "i64"), _cast(args[2], dt)
    if reduce == "none":
        return R.scatter_elements(x, idx, src, d, "update")
    if reduce not in _SCATTER and reduce != "mean":
        raise LoweringError(f"cpu target: scatter reduce={reduce!r} has no lowering: node {node!r}")
    if reduce == "mean" and dt not in _FLOATS:
        raise LoweringError(f"cpu target: scatter reduce='mean' of {dt} (an integer mean) has no lowering: "
                            f"node {node!r}")
    ident = _identity(lw, reduce, dt)
    if ident is None:
        raise LoweringError(f"cpu target: scatter reduce={reduce!r} of {dt} has no lowering: node {node!r}")
    # (zeros + identity, not full_like: TVM 0.27's full_like fails on an infinite fill value)
    base = x if include_self else R.scatter_elements(x, idx, R.add(R.zeros_like(src), ident), d, "update")
    if reduce != "mean":
        return R.scatter_elements(base, idx, src, d, _SCATTER[reduce])
    total = R.scatter_elements(base, idx, src, d, "add")
    ones = R.ones_like(x)
    count = ones if include_self else R.scatter_elements(ones, idx, R.zeros_like(src), d, "update")
    count = R.scatter_elements(count, idx, R.ones_like(src), d, "add")
    written = R.scatter_elements(R.zeros_like(x, "bool"), idx, R.ones_like(src, "bool"), d, "update")
    return R.where(written, R.divide(total, count), x)


@lowering("cpu", "scatter_nd")
def _scatter_nd(lw, node, args):
    reduce = node.attrs["reduce"]
    red = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}.get(reduce)
    if red is None:
        raise LoweringError(f"cpu target: scatter_nd reduce={reduce!r} has no lowering: node {node!r}")
    x, idx = node.inputs[0], node.inputs[1]
    k = idx.type.shape[-1]
    if not isinstance(k, int):
        raise LoweringError(f"cpu target: scatter_nd with a symbolic index depth: node {node!r}")
    i = from_end(lw, args[1], x.type.shape[:k])
    return R.scatter_nd(args[0], i, _cast(args[2], node.output.type.dtype), red)


@lowering("cpu", "index_put")
def _index_put(lw, node, args):
    """x[..., i0, ..., i1, ...] = values (or += with accumulate) for integer index tensors: the indexed axes
    moved to the front, the indices broadcast and stacked into scatter_nd's [..., k], the values broadcast to
    the indexed shape, then moved back."""
    x = node.inputs[0]
    rank, dt = x.type.rank, node.output.type.dtype
    if any(v.type.dtype == "bool" for v in node.inputs[2:]):
        raise LoweringError(f"cpu target: index_put with a boolean mask (the written positions depend on the "
                            f"data) has no lowering; use target='torch': node {node!r}")
    axes = [_axis(a, rank) for a in node.attrs["axes"]]
    rest = [d for d in range(rank) if d not in axes]
    perm = axes + rest
    y = args[0] if perm == list(range(rank)) else R.permute_dims(args[0], perm)
    from ...ir.opset import infer as I
    bshape = I.broadcast(*[v.type.shape for v in node.inputs[2:]])
    bdims = [lw.dim(s) for s in bshape]
    idx = [R.broadcast_to(_cast(a, "i64"), relax.ShapeExpr(bdims)) for a in args[2:]]
    stacked = R.stack(idx, axis=len(bdims)) if len(idx) > 1 else R.expand_dims(idx[0], len(bdims))
    stacked = from_end(lw, stacked, [x.type.shape[a] for a in axes])
    vshape = bdims + [lw.dim(x.type.shape[d]) for d in rest]
    vals = R.broadcast_to(_cast(args[1], dt), relax.ShapeExpr(vshape))
    y = R.scatter_nd(y, stacked, vals, "add" if node.attrs["accumulate"] else "update")
    if perm != list(range(rank)):
        inv = [perm.index(d) for d in range(rank)]
        y = R.permute_dims(y, inv)
    return y


# ---- dims as tensors ----------------------------------------------------------------------------
@lowering("cpu", "shape_tensor")
def _shape_tensor(lw, node, args):
    dims = node.attrs["dims"]
    if not dims:
        return relax.const(np.zeros((0,), dtype="int64"), "int64")
    return R.shape_to_tensor(relax.ShapeExpr([lw.dim(d) for d in dims]))


@lowering("cpu", "dim_value")
def _dim_value(lw, node, args):
    return R.reshape(R.shape_to_tensor(relax.ShapeExpr([lw.dim(node.attrs["expr"])])), relax.ShapeExpr([]))
