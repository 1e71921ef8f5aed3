"""The "cpu" lowering table: each IR op as Relax ops (or a slimgraph TIR kernel), one function per op.

    @lowering("cpu", "rope")
    def rope(lw, node, args): ...   # lw: module.Lowerer; args: Relax values of node.inputs -> Relax expr(s)

Semantics are the op registry's reference implementations (ir/opset/*.py), which tests compare against:
torch type promotion (inputs cast to the IR result dtype before the Relax op, which wants equal dtypes),
negative dims normalized, symbolic attributes through `lw.dim`. Composite ops (rms_norm, rope,
dequantize; attention outside the fused kernel's cases) are written as Relax op chains that TVM's FuseOps
merges into few kernels; `qlinear`, `qembedding`, f32 `linear` and `attention` call codegen/tvm/kernels.py.
"""
from __future__ import annotations
import math

from tvm import relax
from tvm.relax import op as R

from ...ir import quant_format as Q
from ...ir.dtypes import promote
from ..lowering import lowering
from .module import LoweringError, tvm_dtype


def _dtype(x) -> str:
    """dtype of a Relax expression (normalized first: a Call not yet emitted has no type)."""
    if not hasattr(x.ty, "dtype"):
        x = relax.BlockBuilder.current().normalize(x)
    return str(x.ty.dtype)


def _cast(x, dtype: str):
    want = tvm_dtype(dtype)
    return x if _dtype(x) == want else R.astype(x, want)


def _rank(x) -> int:
    if not hasattr(x.ty, "ndim"):
        x = relax.BlockBuilder.current().normalize(x)
    return int(x.ty.ndim)


def _axis(d: int, rank: int) -> int:
    return d % rank if rank else 0


# ---- elementwise --------------------------------------------------------------------------------
_ARITH = {"add": R.add, "sub": R.subtract, "mul": R.multiply, "maximum": R.maximum, "minimum": R.minimum,
          "remainder": R.floor_mod, "floor_divide": R.floor_divide, "div": R.divide, "pow": R.power}
_BITS = {"bitwise_and": (R.bitwise_and, R.logical_and), "bitwise_or": (R.bitwise_or, R.logical_or),
         "bitwise_xor": (R.bitwise_xor, R.logical_xor)}
_PRED = {"eq": R.equal, "ne": R.not_equal, "lt": R.less, "le": R.less_equal, "gt": R.greater,
         "ge": R.greater_equal}
_LOGICAL = {"logical_and": R.logical_and, "logical_or": R.logical_or, "logical_xor": R.logical_xor}


def _arith(fn):
    def emit(lw, node, args):
        dt = node.output.type.dtype
        return fn(*(_cast(a, dt) for a in args))
    return emit


for _name, _fn in _ARITH.items():
    lowering("cpu", _name)(_arith(_fn))


def _bits(int_fn, bool_fn):
    def emit(lw, node, args):
        dt = node.output.type.dtype
        a, b = (_cast(x, dt) for x in args)
        return bool_fn(a, b) if dt == "bool" else int_fn(a, b)
    return emit


for _name, (_i, _b) in _BITS.items():
    lowering("cpu", _name)(_bits(_i, _b))


def _pred(fn, common=None):
    def emit(lw, node, args):
        dt = common or promote(*[(v.type.dtype, v.type.rank) for v in node.inputs])
        return fn(*(_cast(a, dt) for a in args))
    return emit


for _name, _fn in _PRED.items():
    lowering("cpu", _name)(_pred(_fn))
for _name, _fn in _LOGICAL.items():
    lowering("cpu", _name)(_pred(_fn, "bool"))

_UNARY = {"neg": R.negative, "abs": R.abs, "relu": R.nn.relu, "sign": R.sign, "floor": R.floor, "ceil": R.ceil,
          "exp": R.exp, "log": R.log, "sqrt": R.sqrt, "rsqrt": R.rsqrt, "sin": R.sin, "cos": R.cos,
          "tanh": R.tanh, "sigmoid": R.sigmoid, "erf": R.erf, "tan": R.tan, "atan": R.atan,
          "isnan": R.isnan, "logical_not": R.logical_not, "bitwise_not": R.bitwise_not}
_FLOAT_IN = {"exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "silu", "erf", "tan", "atan"}


def _unary(name, fn):
    def emit(lw, node, args):
        x = _cast(args[0], node.output.type.dtype) if name in _FLOAT_IN else args[0]
        return fn(x)
    return emit


for _name, _fn in _UNARY.items():
    lowering("cpu", _name)(_unary(_name, _fn))


@lowering("cpu", "reciprocal")
def _reciprocal(lw, node, args):
    dt = node.output.type.dtype
    return R.divide(lw.const(1.0, dt), _cast(args[0], dt))


@lowering("cpu", "gelu")
def _gelu(lw, node, args):
    approx = node.attrs["approximate"]
    if approx not in ("none", "tanh"):
        raise LoweringError(f"cpu target: gelu approximate={approx!r} (expected 'none' or 'tanh')")
    x = _cast(args[0], node.output.type.dtype)
    if approx == "none" and node.output.type.dtype == "f32":
        # x/2 (1 + erf(x/sqrt 2)) with topi's fast_erf (Eigen's rational approximation, |error| < 5e-7):
        # vectorizes, where TVM's erf is a scalar libm call per element (GELU was ~8% of MiniLM)
        from tvm import te, topi

        def gelu(t):
            e = topi.fast_erf(te.compute(t.shape, lambda *i: t(*i) * 0.7071067811865476, name="scaled"))
            return te.compute(t.shape, lambda *i: t(*i) * 0.5 * (1.0 + e(*i)), name="gelu")
        return lw.bb.emit_te(gelu, lw.bb.normalize(x), primfunc_name_hint="gelu_fast_erf")
    return R.nn.gelu(x) if approx == "none" else R.nn.gelu_tanh(x)


@lowering("cpu", "silu")
def _silu(lw, node, args):
    x = _cast(args[0], node.output.type.dtype)
    if node.output.type.dtype != "f32":
        return R.nn.silu(x)
    # x / (1 + exp(-x)) with topi's fast_exp (a polynomial, vectorizes): TVM's exp is a scalar libm call per
    # element, and the SwiGLU product of a decode step (1536 values per layer) took ~8 us per layer with it
    from tvm import te, topi

    def silu(t):
        e = topi.fast_exp(te.compute(t.shape, lambda *i: -t(*i), name="neg"))
        return te.compute(t.shape, lambda *i: t(*i) / (1.0 + e(*i)), name="silu")
    return lw.bb.emit_te(silu, lw.bb.normalize(x), primfunc_name_hint="silu_fast_exp")


@lowering("cpu", "where")
def _where(lw, node, args):
    dt = node.output.type.dtype
    return R.where(_cast(args[0], "bool"), _cast(args[1], dt), _cast(args[2], dt))


@lowering("cpu", "cast")
def _cast_op(lw, node, args):
    return _cast(args[0], node.attrs["dtype"])


@lowering("cpu", "clamp")
def _clamp(lw, node, args):
    dt = node.output.type.dtype
    x = args[0]
    if node.attrs["min"] is not None:
        x = R.maximum(x, lw.const(node.attrs["min"], dt))
    if node.attrs["max"] is not None:
        x = R.minimum(x, lw.const(node.attrs["max"], dt))
    return x


# ---- constants and generators -------------------------------------------------------------------
@lowering("cpu", "constant")
def _constant(lw, node, args):
    return lw.const(node.attrs["value"], node.attrs["dtype"])


@lowering("cpu", "full")
def _full(lw, node, args):
    shape, dt = node.attrs["shape"], node.attrs["dtype"]
    if all(isinstance(d, int) for d in shape):
        import numpy as np
        return relax.const(np.full(tuple(shape), node.attrs["value"], dtype=tvm_dtype(dt)), tvm_dtype(dt))
    return R.full(relax.ShapeExpr([lw.dim(d) for d in shape]), lw.const(node.attrs["value"], dt), tvm_dtype(dt))


@lowering("cpu", "arange")
def _arange(lw, node, args):
    a = node.attrs
    return R.arange(relax.prim_value(lw.dim(a["start"])), relax.prim_value(lw.dim(a["end"])),
                    relax.prim_value(lw.dim(a["step"])), tvm_dtype(a["dtype"]))


# ---- shape --------------------------------------------------------------------------------------
@lowering("cpu", "reshape")
def _reshape(lw, node, args):
    return R.reshape(args[0], relax.ShapeExpr(lw.shape(node.output)))


@lowering("cpu", "expand")
def _expand(lw, node, args):
    return R.broadcast_to(args[0], relax.ShapeExpr(lw.shape(node.output)))


@lowering("cpu", "permute")
def _permute(lw, node, args):
    rank = node.inputs[0].type.rank
    return R.permute_dims(args[0], [_axis(d, rank) for d in node.attrs["dims"]])


@lowering("cpu", "unsqueeze")
def _unsqueeze(lw, node, args):
    return R.expand_dims(args[0], _axis(node.attrs["dim"], node.output.type.rank))


@lowering("cpu", "squeeze")
def _squeeze(lw, node, args):
    rank = node.inputs[0].type.rank
    return R.squeeze(args[0], [_axis(d, rank) for d in node.attrs["dims"]])


def _start(lw, start, size):
    if isinstance(start, int) and start < 0:
        return lw.dim(size) + start if not isinstance(size, int) else max(size + start, 0)
    return lw.dim(start)


@lowering("cpu", "slice")
def _slice(lw, node, args):
    x = node.inputs[0]
    d = _axis(node.attrs["dim"], x.type.rank)
    step = node.attrs["step"]
    start = _start(lw, node.attrs["start"], x.type.shape[d])
    end = start + lw.dim(node.output.type.shape[d]) * step   # the inferred length: no clamping needed
    return R.strided_slice(args[0], [d], [start], [end], [step], assume_inbound=True)


@lowering("cpu", "select")
def _select(lw, node, args):
    x = node.inputs[0]
    d = _axis(node.attrs["dim"], x.type.rank)
    i = _start(lw, node.attrs["index"], x.type.shape[d])
    return R.squeeze(R.strided_slice(args[0], [d], [i], [i + 1], assume_inbound=True), [d])


@lowering("cpu", "concat")
def _concat(lw, node, args):
    dt = node.output.type.dtype
    keep = [_cast(a, dt) for v, a in zip(node.inputs, args) if not (v.type.rank == 1 and v.type.shape[0] == 0)]
    if len(keep) == 1:
        return keep[0]
    return R.concat(keep or [_cast(args[0], dt)], _axis(node.attrs["dim"], node.output.type.rank))


@lowering("cpu", "split")
def _split(lw, node, args):
    rank = node.inputs[0].type.rank
    d = _axis(node.attrs["dim"], rank)
    cuts, at = [], 0
    for s in node.attrs["sizes"][:-1]:
        at = at + lw.dim(s)
        cuts.append(at)
    parts = lw.bb.emit(R.split(args[0], cuts, d))
    return [relax.TupleGetItem(parts, i) for i in range(len(node.outputs))]


def from_end(lw, idx, sizes):
    """Integer index tensor `idx` as i64 with its negative entries counted from the end, as torch's indexing
    (the ops' references) counts them: of sizes[0] when there is one size (any index shape), else of sizes[j]
    for column j of an index [..., k] (gather_nd / scatter_nd). IR dims, symbolic ones at run time. Relax's
    index_tensor, gather_nd and scatter_nd would read or write out of bounds (take has mode="wrap" for this)."""
    import numpy as np
    idx = _cast(idx, "i64")
    if all(isinstance(s, int) for s in sizes):
        n = relax.const(np.array(sizes, dtype="int64"), "int64")
    else:       # a [k] tensor (a 0-d reshape of shape_to_tensor trips TVM 0.27's FuseTIR)
        n = R.shape_to_tensor(relax.ShapeExpr([lw.dim(s) for s in sizes]))
    y = R.where(R.less(idx, relax.const(0, "int64")), R.add(idx, n), idx)
    return y if _rank(idx) else R.reshape(y, relax.ShapeExpr([]))


@lowering("cpu", "index_select")
def _index_select(lw, node, args):
    # mode="wrap": a negative index counts from the end, as in the reference (torch indexing); "clip" made it 0
    return R.take(args[0], args[1], _axis(node.attrs["dim"], node.inputs[0].type.rank), mode="wrap")


@lowering("cpu", "index")
def _index(lw, node, args):
    """x[..., i0, ..., i1, ...] (torch advanced indexing): the indexed axes are moved to the front for
    Relax's index_tensor, and the broadcast index dims moved back to where torch puts them (at the first
    indexed axis when the indexed axes are adjacent, else in front)."""
    rank = node.inputs[0].type.rank
    if any(v.type.dtype == "bool" for v in node.inputs[1:]):
        raise LoweringError(f"cpu target: index with a boolean mask (its result's size depends on the data) has "
                            f"no lowering; use target='torch': node {node!r}")
    axes = [_axis(a, rank) for a in node.attrs["axes"]]
    if len(axes) == 1:      # one index tensor: its dims replace the axis, as take places them
        return R.take(args[0], args[1], axes[0], mode="wrap")
    rest = [d for d in range(rank) if d not in axes]
    x = args[0] if axes == list(range(len(axes))) else R.permute_dims(args[0], axes + rest)
    shape = node.inputs[0].type.shape
    y = R.index_tensor(x, relax.Tuple([from_end(lw, i, [shape[a]]) for a, i in zip(axes, args[1:])]))
    nb, first = node.output.type.rank - len(rest), min(axes)
    if sorted(axes) == list(range(first, first + len(axes))) and first > 0:
        y = R.permute_dims(y, [nb + j for j in range(first)] + list(range(nb)) +
                           [nb + j for j in range(first, len(rest))])
    return y


@lowering("cpu", "tril")
def _tril(lw, node, args):
    return R.tril(args[0], node.attrs["diagonal"])


@lowering("cpu", "triu")
def _triu(lw, node, args):
    return R.triu(args[0], node.attrs["diagonal"])


# ---- reductions ---------------------------------------------------------------------------------
def _reduce(fn):
    def emit(lw, node, args):
        rank = node.inputs[0].type.rank
        dims = node.attrs["dims"]
        axes = None if dims is None else [_axis(d, rank) for d in dims]
        x = _cast(args[0], node.output.type.dtype)
        return fn(x, axes, node.attrs["keepdim"])
    return emit


for _name, _fn in {"sum": R.sum, "mean": R.mean, "amax": R.max, "amin": R.min, "prod": R.prod}.items():
    lowering("cpu", _name)(_reduce(_fn))


# ---- nn -----------------------------------------------------------------------------------------
@lowering("cpu", "matmul")
def _matmul(lw, node, args):
    dt = node.output.type.dtype
    return R.matmul(_cast(args[0], dt), _cast(args[1], dt))


def linear(x, w, bias=None):
    y = R.matmul(x, R.permute_dims(w, [1, 0]))
    return R.add(y, bias) if bias is not None else y


def _f32_kernel_ok(node) -> bool:
    x, w = node.inputs[:2]
    return x.type.dtype == w.type.dtype == "f32" and w.type.rank == 2 and w.type.is_static \
        and w.type.shape[1] % 8 == 0 and (len(node.inputs) < 3 or node.inputs[2].type.dtype == "f32")


def prepack_linear(node, const):
    """Prepack hook (module.py runs it at build for the parameter's shape and the runner at load): a weight
    [n, k] with n a multiple of kernels.PANEL becomes panels [n / PANEL, k, PANEL], each PANEL rows
    transposed, the layout of the f32 GEMM microkernel (no per-call transpose)."""
    from ..torch_kernels import SlowPath
    from .kernels import PANEL
    w = const.get(1)
    if w is None or not _f32_kernel_ok(node) or w.shape[0] % PANEL:
        raise SlowPath("linear weight is not a static f32 [n, k] with n % 32 == 0 and k % 8 == 0")
    n, k = w.shape
    return {1: w.reshape(n // PANEL, PANEL, k).transpose(1, 2).contiguous()}


@lowering("cpu", "linear", prepack=prepack_linear)
def _linear(lw, node, args):
    """f32 x with a static [n, k] f32 weight (k a multiple of 8): slimgraph's f32 kernels (on the weight
    in panels when prepack_linear packed it); else a Relax matmul."""
    if _f32_kernel_ok(node):
        from .kernels import f32_linear
        return f32_linear(lw, node, args[0], args[1], args[2] if len(args) > 2 else None)
    return linear(*args)


@lowering("cpu", "embedding")
def _embedding(lw, node, args):
    return R.take(args[0], args[1], axis=0, mode="clip")   # "fast" may segfault on a bad id


@lowering("cpu", "softmax")
def _softmax(lw, node, args):
    return R.nn.softmax(args[0], _axis(node.attrs["dim"], node.inputs[0].type.rank))


@lowering("cpu", "log_softmax")
def _log_softmax(lw, node, args):
    return R.nn.log_softmax(args[0], _axis(node.attrs["dim"], node.inputs[0].type.rank))


@lowering("cpu", "layer_norm")
def _layer_norm(lw, node, args):
    x = node.inputs[0]
    n = node.attrs["axes"]
    axes = list(range(x.type.rank - n, x.type.rank))
    dt = x.type.dtype
    shape = x.type.shape[-n:]
    weight = args[1] if len(args) > 1 else _filled(lw, shape, 1.0, dt)
    bias = args[2] if len(args) > 2 else _filled(lw, shape, 0.0, dt)
    if n == 1 and dt == "f32" and isinstance(shape[0], int) and shape[0] % 16 == 0:
        from .kernels import _call_rows, make_layer_norm
        k, eps = shape[0], float(node.attrs["eps"])
        name = f"layer_norm_{k}_{_eps_tag(eps)}"
        return _call_rows(lw, args[0], k, k, make_layer_norm(k, eps), [weight, bias], name)
    return R.nn.layer_norm(args[0], weight, bias, axes, node.attrs["eps"])


def _filled(lw, shape, value, dt):
    if not all(isinstance(d, int) for d in shape):
        raise LoweringError("cpu target: layer_norm without weight/bias over symbolic dims")
    import numpy as np
    return relax.const(np.full(tuple(shape), value, dtype=tvm_dtype(dt)), tvm_dtype(dt))


def _eps_tag(eps: float) -> str:
    """eps exactly, as characters a kernel name may hold (its float hex digits)."""
    return eps.hex().replace('.', '_').replace('-', 'm').replace('+', '')


@lowering("cpu", "rms_norm")
def _rms_norm(lw, node, args):
    """x * rsqrt(mean(x^2, -1) + eps) in f32, cast back, then * weight (ir/opset/nn.py rms_norm): f32 rows of a
    multiple of 16 values with a weight of that dtype take the vector kernel (kernels.make_rms_norm)."""
    x = args[0]
    dt = node.inputs[0].type.dtype
    k = node.inputs[0].type.shape[-1]
    if dt == "f32" and isinstance(k, int) and k % 16 == 0 and len(args) > 1 and node.inputs[1].type.dtype == "f32" \
            and tuple(node.inputs[1].type.shape) == (k,):
        from .kernels import batch_rows, make_rms_norm
        eps = float(node.attrs["eps"])
        gv = lw.kernel(f"rms_norm_{k}_{_eps_tag(eps)}", make_rms_norm(k, eps))
        x3, lead, _ = batch_rows(lw, x, k)   # [b, s, k] as it is: no reshapes around the call
        y = relax.call_tir(gv, [x3, args[1]], relax.TensorType(list(x3.ty.shape.values), "float32"))
        return y if len(lead) == 2 else R.reshape(y, relax.ShapeExpr([*lead, k]))
    xf = _cast(x, "f32")
    ms = R.mean(R.multiply(xf, xf), [node.inputs[0].type.rank - 1], keepdims=True)
    y = _cast(R.multiply(xf, R.rsqrt(R.add(ms, lw.const(node.attrs["eps"], "f32")))), dt)
    return R.multiply(y, args[1]) if len(args) > 1 else y


@lowering("cpu", "rope")
def _rope(lw, node, args):
    """x * cos + concat(-x[..., h:], x[..., :h]) * sin (rotate-half form)."""
    x, cos, sin = args
    rank = node.inputs[0].type.rank
    d = node.inputs[0].type.shape[-1]
    h = d // 2
    lo = R.strided_slice(x, [rank - 1], [0], [h])
    hi = R.strided_slice(x, [rank - 1], [h], [d])
    rot = R.concat([R.negative(hi), lo], rank - 1)
    return R.add(R.multiply(x, cos), R.multiply(rot, sin))


@lowering("cpu", "attention")
def _attention(lw, node, args):
    """softmax(q k^T * scale + mask) v with GQA (k/v heads repeated), causal and window masks built from
    aranges over the (symbolic) query and key lengths; as ir/opset/nn.py attention."""
    q, k, v = args[:3]
    mask = args[3] if len(args) > 3 else None
    from .kernels import attention, attention_ok
    if attention_ok(node):   # one fused kernel: GQA, masks and softmax without intermediates
        return attention(lw, node, q, k, v, mask)
    qt, kt = node.inputs[0].type, node.inputs[1].type
    rank = qt.rank
    heads, kv_heads = qt.shape[-3], kt.shape[-3]
    if heads != kv_heads:
        if not (isinstance(heads, int) and isinstance(kv_heads, int)):
            raise LoweringError("cpu target: attention with symbolic head counts")
        k = R.repeat(k, heads // kv_heads, rank - 3)
        v = R.repeat(v, heads // kv_heads, rank - 3)
    dt = qt.dtype
    scale = node.attrs["scale"]
    if scale is None:
        scale = 1.0 / math.sqrt(qt.shape[-1])
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    s = R.multiply(R.matmul(q, R.permute_dims(k, perm)), lw.const(scale, dt))
    if node.attrs.get("softcap"):   # softcap * tanh(s / softcap)
        cap = lw.const(float(node.attrs["softcap"]), dt)
        s = R.multiply(R.tanh(R.divide(s, cap)), cap)
    lq, lk = lw.dim(qt.shape[-2]), lw.dim(kt.shape[-2])
    keep = None
    if node.attrs["causal"] or node.attrs["window"]:
        # diag[i] = i + lk - lq: query i's end-aligned diagonal
        diag = R.expand_dims(R.arange(relax.prim_value(lk - lq), relax.prim_value(lk), relax.prim_value(1),
                                      "int64"), 1)
        j = R.expand_dims(R.arange(relax.prim_value(0), relax.prim_value(lk), relax.prim_value(1), "int64"), 0)
        if node.attrs["causal"]:
            keep = R.less_equal(j, diag)
        if node.attrs["window"]:
            win = R.less_equal(R.subtract(diag, j), lw.const(node.attrs["window"], "i64"))
            if node.attrs["sinks"]:
                win = R.logical_or(win, R.less(j, lw.const(node.attrs["sinks"], "i64")))
            keep = win if keep is None else R.logical_and(keep, win)
    if mask is not None and node.inputs[3].type.shape[3] != kt.shape[2]:
        # the keys' length spelled two ways (a ring's mask: Min(ctx - seq, W + S) + seq, its keys past + seq):
        # one spelling, checked when run (as the fused kernel's `attention`), or the scores would have no shape
        mask = lw.conform(mask, [*lw.shape(node.inputs[3])[:3], lk])
    if mask is not None and _dtype(mask) == "bool":
        keep = mask if keep is None else R.logical_and(mask, keep)
    elif mask is not None:
        s = R.add(s, _cast(mask, dt))
    if keep is not None:
        s = R.where(keep, s, lw.const(-math.inf, dt))
    p = R.nn.softmax(s, rank - 1)
    return R.matmul(p, v)


@lowering("cpu", "linear_attention")
def _linear_attention(lw, node, args):
    """ir/opset/linear_attention.py's masked form as Relax ops: feature maps, the LoLCATs shared normalizer over a
    softmax window and linear scores, and the fold of the keys leaving the window into the fixed kv/z state.
    Only the keys min(sinks, n) .. max(sinks, n - window) can be linear for a query of this call (a key past them
    is within every query's window, or, in a candidate tree, masked: an ancestor is at most its index distance
    shallower) and they are exactly the keys the fold adds: their feature maps are computed once, for both. A
    decode step past the window slices one key, so its cost does not grow with the ring."""
    from tvm import tirx
    from ...ir.opset.linear_attention import EPS
    from .linear_attention_kernel import fused_ok, linear_attention
    if fused_ok(node):   # one TIR kernel (linear_attention_kernel.py); the Relax ops below for the rest
        return linear_attention(lw, node, args)
    a = node.attrs
    q, k, v, kv, z, wq, wk, wf = [lw.bb.normalize(x) for x in args[:8]]
    qt, kt, vt = (x.type for x in node.inputs[:3])
    hq, hk, d, dv = qt.shape[1], kt.shape[1], qt.shape[3], vt.shape[3]
    if not all(isinstance(x, int) for x in (hq, hk, d, dv)) or qt.dtype != "f32":
        raise LoweringError(f"cpu target: linear_attention needs f32 and static heads and head dims, got {qt}, {kt}")
    g, window, sinks = hq // hk, int(a["window"] or 0), int(a["sinks"] or 0)
    scale = a["scale"] if a["scale"] is not None else d ** -0.5
    b, s, n = lw.dim(qt.shape[0]), lw.dim(qt.shape[2]), lw.dim(kt.shape[2])
    i64 = "int64"

    def emit(x):
        return lw.bb.emit(x)

    def feats(x, w):   # phi(x W) per head: [b, h, t, d] @ [h, d, m]
        y = emit(R.matmul(x, w))
        if a["feature_map"] == "hedgehog":
            return emit(R.concat([R.nn.softmax(y, 3), R.nn.softmax(R.negative(y), 3)], 3))
        if a["feature_map"] == "elu":
            one = lw.const(1.0, "f32")
            return emit(R.add(R.where(R.greater(y, lw.const(0.0, "f32")), y, R.subtract(R.exp(y), one)), one))
        if a["feature_map"] == "relu2":
            r = emit(R.nn.relu(y))
            return emit(R.multiply(r, r))
        raise LoweringError(f"cpu target: linear_attention feature_map {a['feature_map']!r}")

    def rng(lo, hi):
        return R.arange(relax.prim_value(lo), relax.prim_value(hi), relax.prim_value(1), i64)

    def keys(x, axis):   # columns lo .. hi of the keys' axis (a shape Relax cannot infer from min/max bounds)
        x = lw.bb.normalize(x)
        shape = list(x.ty.shape.values)
        shape[axis] = hi - lo
        return lw.bb.match_cast(R.strided_slice(x, [axis], [lo], [hi], assume_inbound=True),
                                relax.TensorType(shape, x.ty.dtype))

    # lo .. hi holds at least one key (an empty slice's kernels would leave their outputs unwritten): the extra
    # key is not linear for any query (the `lin` mask is exact) and gets no weight in the fold
    lo = tirx.min(tirx.IntImm(i64, sinks), n - 1)
    hi = tirx.min(n, tirx.max(lo + 1, n - window))
    mask = None
    if len(args) > 8:   # [b, 1, s, n]; its last dim may be spelled apart from the keys' (a ring's): checked when run
        mask = lw.bb.match_cast(lw.bb.normalize(args[8]),
                                relax.TensorType([*lw.shape(node.inputs[8])[:3], n], "bool"))
    idx = emit(rng(0, n))
    causal = emit(R.greater_equal(R.subtract(R.expand_dims(rng(n - s, n), 1), R.expand_dims(idx, 0)),
                                  lw.const(0, "i64")))                                    # [s, n], by index
    if len(args) > 9:   # by position: query i at key n - s + depth_i; past keys at their index
        at = emit(R.add(args[9], rng(n - s, n - s + 1)))                                 # [b, s]
        bd = lw.dim(node.inputs[9].type.shape[0])
        j = emit(R.concat([R.broadcast_to(R.expand_dims(rng(0, n - s), 0), relax.ShapeExpr([bd, n - s])), at], 1))
        rel = emit(R.subtract(R.expand_dims(at, 2), R.expand_dims(j, 1)))                # [b, s, n]
        j = R.expand_dims(j, 1)
        lead = [bd, 1, 1, s, n]
    else:
        rel = emit(R.subtract(R.expand_dims(rng(n - s, n), 1), R.expand_dims(idx, 0)))   # [s, n]
        j = R.expand_dims(idx, 0)
        lead = [1, 1, 1, s, n]
    causal = emit(R.reshape(causal, relax.ShapeExpr([1, 1, 1, s, n])))   # broadcast over the batch, never
    if window:                                                           # reshaped to it (b > 1 rows)
        near = R.less_equal(rel, lw.const(window, "i64"))
        if sinks:
            near = R.logical_or(near, R.less(j, lw.const(sinks, "i64")))
        win = emit(R.logical_and(causal, R.reshape(near, relax.ShapeExpr(lead))))
        lin = R.logical_and(causal, R.logical_not(win))
    else:
        win, lin = None, causal
    lin = keys(emit(lin), 4)                                                              # [., 1, 1, s, hi - lo]
    if mask is not None:
        m = emit(R.expand_dims(mask, 2))                                                   # [b, 1, 1, s, n]
        lin = emit(R.logical_and(lin, keys(m, 4)))
        win = None if win is None else emit(R.logical_and(win, m))
    fq = feats(q, wq)
    f = lw.bb.normalize(fq).ty.shape.values[3]
    ks, vs = keys(k, 2), keys(v, 2)
    fk = feats(ks, wk)                                                                    # [b, hk, hi - lo, f]
    qg = emit(R.reshape(q, relax.ShapeExpr([b, hk, g, s, d])))
    fqg = emit(R.reshape(fq, relax.ShapeExpr([b, hk, g, s, f])))
    t5 = [0, 1, 2, 4, 3]
    a_lin = emit(R.multiply(R.matmul(fqg, R.permute_dims(R.expand_dims(fk, 2), t5)), R.astype(lin, "float32")))
    num = emit(R.add(R.matmul(a_lin, R.expand_dims(vs, 2)), R.matmul(fqg, R.expand_dims(kv, 2))))
    den = emit(R.add(R.sum(a_lin, [4]), R.squeeze(R.matmul(fqg, R.expand_dims(R.expand_dims(z, 2), 4)), [4])))
    if win is not None:
        sc = emit(R.multiply(R.matmul(qg, R.permute_dims(R.expand_dims(k, 2), t5)), lw.const(scale, "f32")))
        sc = emit(R.where(win, sc, lw.const(-3.4028234663852886e38, "f32")))               # finfo(f32).min
        factor = R.reshape(R.exp(wf), relax.ShapeExpr([hk, g, 1, 1]))
        e = emit(R.multiply(R.multiply(R.exp(R.subtract(sc, R.max(sc, [4], keepdims=True))),
                                       R.astype(win, "float32")), factor))
        num = emit(R.add(num, R.matmul(e, R.expand_dims(v, 2))))
        den = emit(R.add(den, R.sum(e, [4])))
    out = emit(R.divide(num, R.expand_dims(R.maximum(den, lw.const(EPS, "f32")), 4)))
    out = R.reshape(out, relax.ShapeExpr([b, hq, s, dv]))
    # the fold: keys lo .. hi leave the window, each weighted by the last query's mask column (key validity)
    folded = keys(R.logical_and(R.greater_equal(idx, lw.const(sinks, "i64")),
                                R.less(R.add(idx, lw.const(window, "i64")), rng(n, n + 1))), 0)   # [hi - lo]
    valid = R.reshape(folded, relax.ShapeExpr([1, 1, hi - lo, 1]))
    if mask is not None:
        ms = lw.dim(node.inputs[8].type.shape[2])
        last = R.strided_slice(mask, [2], [ms - 1], [ms], assume_inbound=True)            # [b, 1, 1, n]
        valid = R.logical_and(valid, R.reshape(keys(last, 3), relax.ShapeExpr(
            [lw.dim(node.inputs[8].type.shape[0]), 1, hi - lo, 1])))
    fkw = emit(R.multiply(fk, R.astype(valid, "float32")))
    kv2 = R.add(kv, R.matmul(R.permute_dims(fkw, [0, 1, 3, 2]), vs))
    z2 = R.add(z, R.sum(fkw, [2]))
    return [out, kv2, z2]


# ---- state --------------------------------------------------------------------------------------
@lowering("cpu", "cache_append")
def _cache_append(lw, node, args):
    """cat((past, new), axis), a copy per call: only for states module.inplace_states does not take (the KV
    cache's rank-4 append states are written in place into runner-owned buffers instead, Lowerer._kv_append)."""
    dt = node.inputs[0].type.dtype
    return R.concat([args[0], _cast(args[1], dt)], _axis(node.attrs["axis"], node.output.type.rank))


@lowering("cpu", "cache_window")
def _cache_window(lw, node, args):
    """The first `sinks` rows and the last `window` rows along `axis` (all rows when there are fewer): a
    StreamingLLM ring (ir/opset/state.py). One gather kernel, a copy per call: for masks and for rings that
    module.inplace_states does not take (a ring KV state slides in place instead, Lowerer._kv_slide)."""
    from tvm import te, tirx
    axis = _axis(node.attrs["axis"], node.output.type.rank)
    keep = node.attrs["window"] + node.attrs["sinks"]
    sinks = node.attrs["sinks"]

    def ring(x):
        n = x.shape[axis]
        rows = tirx.min(n, tirx.const(keep, "int64"))
        shape = list(x.shape)
        shape[axis] = rows

        def row(*idx):   # output row i: row i for the sinks, row n - rows + i past them (i itself when n <= keep)
            i = idx[axis]
            src = tirx.Select(i < sinks, i, n - rows + i)
            return x[(*idx[:axis], src, *idx[axis + 1:])]
        return te.compute(shape, row, name="cache_window")
    x = lw.bb.normalize(args[0])
    if x.ty.shape is None or not isinstance(x.ty.shape, relax.ShapeExpr):   # concat of symbolic rows: no shape
        x = lw.bb.match_cast(x, lw.struct(node.inputs[0]))
    return lw.bb.emit_te(ring, x, primfunc_name_hint="cache_window")


# ---- quantized ----------------------------------------------------------------------------------
@lowering("cpu", "dequantize")
def _dequantize(lw, node, args):
    from .kernels import dequantize_te
    a = node.attrs
    zeros = args[2] if len(args) > 2 else None
    return lw.bb.emit_te(dequantize_te, args[0], args[1], zeros, a["bits"], a["group"],
                         tvm_dtype(a["dtype"]), primfunc_name_hint="dequantize")


def prepack_qlinear(node, const):
    """Prepack hook: an int4 or int8 `qlinear` on int8 activation codes (W4A8 / W8A8, kernels.a8_source) takes its
    codes, scales and zero points in VPANEL-row panels (kernels.pack_vnni_panels) on AVX-512 VNNI hosts."""
    from ..torch_kernels import SlowPath
    from .kernels import a8_source, pack_vnni_panels, vnni_panels_ok
    if a8_source(node) is None:
        raise SlowPath("not an int4/int8 qlinear on quantized activations")
    bits = node.attrs["bits"]
    n = node.inputs[1].type.shape[0]
    k = Q.logical_in_dim(node.inputs[1].type.shape, bits)
    z = 3 if len(node.inputs) > 3 and Q.is_zeros(node.inputs[3].type) else None
    if not vnni_panels_ok(n, k, node.attrs["group"], bits) or 1 not in const or 2 not in const \
            or (z is not None and z not in const):
        raise SlowPath("no VNNI, a shape the panels do not take, or codes/scales that are not weights")
    codes, scales, zeros = pack_vnni_panels(const[1], const[2], const.get(z) if z else None, node.attrs["group"], bits)
    return {1: codes, 2: scales, **({z: zeros} if z is not None else {})}


@lowering("cpu", "qlinear", prepack=prepack_qlinear)
def _qlinear(lw, node, args):
    from .kernels import qlinear
    a = node.attrs
    x, qw, scales = args[:3]
    zeros = bias = None
    for v, arg in zip(node.inputs[3:], args[3:]):
        if Q.is_zeros(v.type) and zeros is None and bias is None:
            zeros = arg
        else:
            bias = arg
    return qlinear(lw, node, x, qw, scales, zeros, bias, a["bits"], a["group"])


@lowering("cpu", "quantize_activation")
def _quantize_activation(lw, node, args):
    """The float result (dequantized codes); a qlinear that reads it runs the W4A8 kernel on the codes
    instead (kernels.qlinear), and Relax drops this value when nothing else reads it."""
    from tvm import relax
    from tvm.relax import op as R
    from .kernels import as_rows, quantize_activation_te
    x = lw.bb.normalize(args[0])
    shape = list(x.ty.shape.values)
    x2, _, _ = as_rows(lw, x, shape[-1])
    y = lw.bb.emit_te(quantize_activation_te, x2, node.attrs["group"], node.attrs["bits"],
                      primfunc_name_hint="quantize_activation")
    return R.reshape(y, relax.ShapeExpr(shape))


@lowering("cpu", "qembedding")
def _qembedding(lw, node, args):
    from .kernels import qembedding
    a = node.attrs
    zeros = args[3] if len(args) > 3 else None
    return qembedding(lw, node, args[0], args[1], args[2], zeros, a["bits"], a["group"], tvm_dtype(a["dtype"]))
