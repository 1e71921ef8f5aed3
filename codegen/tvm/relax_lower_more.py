"""The "cpu" lowering table, continued: the vision and audio ops real ONNX files hold (PaddleOCR, YOLO-style
detectors, magika's byte CNN), beside relax_lower.py's transformer ops. Registered the same way, listed in
codegen/lowering.py's LOWERING_MODULES["cpu"].

    conv2d, conv_transpose2d      Relax nn ops (groups, dilation, stride, symmetric padding), bias added after;
                                  a grouped transposed one as one per group, concatenated
    max_pool2d, avg_pool2d        torch semantics (ir/opset/nn.py): symmetric padding, count_include_pad
    pool_nd                       ONNX MaxPool / AveragePool / LpPool over 1-3 trailing dims: begin/end pads,
                                  dilation, ceil_mode (a last window starting in the end padding is dropped),
                                  averages over the counted cells only (a pooled ones-mask divides the sum)
    adaptive_avg_pool2d           Relax's (torch's window bounds)
    batch_norm                    (x - mean) * w / sqrt(var + eps) + b over dim 1, as elementwise Relax ops
    pad                           one TE gather: constant / reflect / edge / wrap, negative pads crop
    resize                        ONNX Resize nearest and linear (not antialiased), every coordinate mode of
                                  ir/opset/spatial.py, in f64 axis by axis as the reference does; cubic and
                                  antialias are refused when lowering
    topk                          a stable argsort (ties keep the lower index first), sliced to k, then gathered
    einsum                        Relax's einsum

Every result is `lw.conform`ed to the IR's own shape: a conv output over a symbolic height is
`floor((h - 1)/2) + 1` in the IR and `floordiv(h + 2 - 3, 2) + 1` in Relax; the later ops see the IR's spelling.
Ops that stay without a lowering here (lstm, recurrent, grid_sample, col2im, det, ...) are refused by
module.unsupported_ops before any TVM work, naming the op.
"""
from __future__ import annotations
import math

from tvm import relax, te, tirx
from tvm.relax import op as R

from ...ir import symbolic
from ..lowering import lowering
from .module import LoweringError, tvm_dtype
from .relax_lower import _axis, _cast

_FLOATS = ("f32", "f64", "f16", "bf16")


def _out(lw, node, y, i=0):
    """`y` with the IR shape of the node's output i (module.Lowerer.conform)."""
    v = node.outputs[i]
    return lw.conform(y, lw.shape(v), tvm_dtype(v.type.dtype))


def _need_float(node, what=None):
    dt = node.output.type.dtype
    if dt not in _FLOATS:
        raise LoweringError(f"cpu target: {what or node.op} on {dt} (float tensors only) at node {node!r}")
    return dt


def _as_4d(x, rank):
    """A rank-3 (unbatched C, H, W) tensor as [1, C, H, W] for Relax's NCHW ops."""
    return R.expand_dims(x, 0) if rank == 3 else x


def _from_4d(y, rank):
    return R.squeeze(y, [0]) if rank == 3 else y


# ---- convolution --------------------------------------------------------------------------------
def _channel_bias(lw, node, args, y, dt):
    """y [N, C, H, W] + the optional bias input args[2] [C] (C = the output's channels), else y."""
    if len(args) <= 2:
        return y
    c = node.output.type.shape[1]
    return R.add(y, R.reshape(_cast(args[2], dt), relax.ShapeExpr([1, lw.dim(c), 1, 1])))


@lowering("cpu", "conv2d")
def _conv2d(lw, node, args):
    a = node.attrs
    dt = _need_float(node)
    x, w = _cast(args[0], dt), _cast(args[1], dt)
    ph, pw = a["padding"]
    y = R.nn.conv2d(x, w, strides=list(a["stride"]), padding=[ph, pw, ph, pw], dilation=list(a["dilation"]),
                    groups=a["groups"])
    return _out(lw, node, _channel_bias(lw, node, args, y, dt))


@lowering("cpu", "conv_transpose2d")
def _conv_transpose2d(lw, node, args):
    a = node.attrs
    dt = _need_float(node)
    x, w = _cast(args[0], dt), _cast(args[1], dt)
    ph, pw = a["padding"]
    g = a["groups"]

    def conv(x, w):
        return R.nn.conv2d_transpose(x, w, strides=list(a["stride"]), padding=[ph, pw, ph, pw],
                                     output_padding=list(a["output_padding"]), dilation=list(a["dilation"]))
    if g == 1:
        y = conv(x, w)
    else:       # TVM's conv2d_transpose takes groups=1 only: one per group (weight [in, out/g, kh, kw]), concatenated
        xs, ws = lw.bb.emit(R.split(x, g, 1)), lw.bb.emit(R.split(w, g, 0))
        y = R.concat([conv(relax.TupleGetItem(xs, i), relax.TupleGetItem(ws, i)) for i in range(g)], 1)
    return _out(lw, node, _channel_bias(lw, node, args, y, dt))


# ---- pooling --------------------------------------------------------------------------------------
@lowering("cpu", "max_pool2d")
def _max_pool2d(lw, node, args):
    a = node.attrs
    rank = node.inputs[0].type.rank
    k = list(a["kernel"])
    ph, pw = a["padding"]
    y = R.nn.max_pool2d(_as_4d(args[0], rank), k, list(a["stride"] or k), [ph, pw, ph, pw],
                        ceil_mode=bool(a["ceil_mode"]))
    return _out(lw, node, _from_4d(y, rank))


@lowering("cpu", "avg_pool2d")
def _avg_pool2d(lw, node, args):
    a = node.attrs
    _need_float(node)
    rank = node.inputs[0].type.rank
    k = list(a["kernel"])
    ph, pw = a["padding"]
    y = R.nn.avg_pool2d(_as_4d(args[0], rank), k, list(a["stride"] or k), [ph, pw, ph, pw],
                        ceil_mode=bool(a["ceil_mode"]), count_include_pad=bool(a["count_include_pad"]))
    return _out(lw, node, _from_4d(y, rank))


@lowering("cpu", "adaptive_avg_pool2d")
def _adaptive_avg_pool2d(lw, node, args):
    _need_float(node)
    rank = node.inputs[0].type.rank
    y = R.nn.adaptive_avg_pool2d(_as_4d(args[0], rank), list(node.attrs["output_size"]))
    return _out(lw, node, _from_4d(y, rank))


def _pool(kind, n):
    fns = {("max", 2): R.nn.max_pool2d, ("max", 3): R.nn.max_pool3d,
           ("avg", 2): R.nn.avg_pool2d, ("avg", 3): R.nn.avg_pool3d}
    return fns[(kind, n)]


@lowering("cpu", "pool_nd")
def _pool_nd(lw, node, args):
    """ir/opset/spatial.py pool_nd: a 1-d pool runs as a 2-d one over a unit height. Max pads with -inf (Relax's
    own padding); average and Lp sum windows of the zero-padded input (an average pool counting every cell,
    times the window size) and an average divides by a pooled mask of the cells that count: 1 inside, 1 on
    explicit pads only with count_include_pad, 0 on the ceil_mode border."""
    a = node.attrs
    kind, n = a["kind"], len(a["kernel"])
    if n not in (1, 2, 3):
        raise LoweringError(f"cpu target: pool_nd over {n} dims (1, 2 or 3) at node {node!r}")
    if kind != "max":
        _need_float(node, f"{kind} pooling")
    xt = node.inputs[0].type
    spatial = list(xt.shape[2:])
    outs = list(node.output.type.shape[2:])
    kernel, stride, dil, pads = list(a["kernel"]), list(a["stride"]), list(a["dilation"]), list(a["pads"])
    begin, end = pads[:n], pads[n:]
    extra = [0] * n   # the ceil_mode border past the end pads
    if a["ceil_mode"]:
        for i in range(n):
            if all(isinstance(v, int) for v in (spatial[i], outs[i])):
                extra[i] = max((outs[i] - 1) * stride[i] + (kernel[i] - 1) * dil[i] + 1 - (spatial[i] + begin[i] + end[i]), 0)
            else:
                # over a symbolic dim the IR takes ceil_mode only where the last window never starts in the end
                # padding (ir/opset/spatial.py _pool_out): there stride - 1 more border cells (-inf, or 0 in the
                # average's mask) make the floor count Relax computes the ceil count
                extra[i] = stride[i] - 1
    x = args[0]
    if n == 1:   # [N, C, W] -> [N, C, 1, W]
        x = R.expand_dims(x, 2)
        kernel, stride, dil, begin, end, extra = [1] + kernel, [1] + stride, [1] + dil, [0] + begin, [0] + end, \
            [0] + extra
        spatial = [1] + spatial
    m = len(kernel)
    padding = begin + [e + x_ for e, x_ in zip(end, extra)]
    if kind == "max":
        y = _pool("max", m)(x, kernel, stride, padding, dil)
    else:
        dt = node.output.type.dtype
        x = _cast(x, dt)
        if kind == "lp":
            x = R.power(R.abs(x), lw.const(a["p"], dt))
        size = math.prod(kernel)
        s = _pool("avg", m)(x, kernel, stride, padding, dil, count_include_pad=True)   # window sum / size
        if kind == "lp":
            y = R.power(R.multiply(s, lw.const(size, dt)), lw.const(1.0 / a["p"], dt))
        elif not any(extra) and (a["count_include_pad"] or not any(padding)):
            y = s    # every window counts `size` cells
        else:
            ones = R.ones(relax.ShapeExpr([1, 1] + [lw.dim(d) for d in spatial]), tvm_dtype(dt))
            inner = [(0, 0), (0, 0)] + list(zip(begin, end))
            mask = R.nn.pad(ones, [v for p in inner for v in p], pad_value=1.0 if a["count_include_pad"] else 0.0)
            if any(extra):
                mask = R.nn.pad(mask, [v for p in [(0, 0), (0, 0)] + [(0, e) for e in extra] for v in p],
                                pad_value=0.0)
            count = _pool("avg", m)(mask, kernel, stride, [0] * (2 * m), dil, count_include_pad=True)
            y = R.divide(s, count)
    if n == 1:
        y = R.squeeze(y, [2])
    return _out(lw, node, y)


# ---- normalization --------------------------------------------------------------------------------
@lowering("cpu", "batch_norm")
def _batch_norm(lw, node, args):
    """(x - mean) * (w / sqrt(var + eps)) + b over dim 1 (inference: running statistics)."""
    dt = _need_float(node)
    rank = node.inputs[0].type.rank
    if rank < 2:
        raise LoweringError(f"cpu target: batch_norm of a rank-{rank} tensor at node {node!r}")
    c = lw.dim(node.inputs[0].type.shape[1])
    shape = relax.ShapeExpr([1, c] + [1] * (rank - 2))
    x, mean, var = (_cast(v, dt) for v in args[:3])
    scale = R.rsqrt(R.add(var, lw.const(node.attrs["eps"], dt)))
    if len(args) > 3:
        scale = R.multiply(scale, _cast(args[3], dt))
    y = R.multiply(R.subtract(x, R.reshape(mean, shape)), R.reshape(scale, shape))
    if len(args) > 4:
        y = R.add(y, R.reshape(_cast(args[4], dt), shape))
    return _out(lw, node, y)


# ---- pad ------------------------------------------------------------------------------------------
@lowering("cpu", "pad")
def _pad(lw, node, args):
    """torch-style `pads` (last dim first, before/after pairs; negative ones crop) as one gather: output
    index i reads input index i - before, mapped back inside per `mode` (constant: `value` outside)."""
    a = node.attrs
    pads, mode = list(a["pads"]), a["mode"]
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise LoweringError(f"cpu target: pad mode {mode!r} at node {node!r}")
    rank = node.inputs[0].type.rank
    before, after = [0] * rank, [0] * rank
    for i in range(len(pads) // 2):
        before[rank - 1 - i], after[rank - 1 - i] = pads[2 * i], pads[2 * i + 1]
    dt = tvm_dtype(node.output.type.dtype)
    out_shape = lw.shape(node.output)
    value = a["value"]
    fill = bool(value) if dt == "bool" else (int(value) if dt.startswith(("int", "uint")) else float(value))

    def pad(t):
        def body(*idx):
            src, inside = [], tirx.const(True, "bool")
            for d in range(rank):
                i = idx[d]
                if before[d] == 0 and after[d] == 0:
                    src.append(i)
                    continue
                size = tirx.Cast("int64", t.shape[d])
                j = tirx.Cast("int64", i) - before[d]
                if mode == "constant":
                    inside = tirx.all(inside, j >= 0, j < size)
                    j = tirx.max(tirx.min(j, size - 1), 0)
                elif mode == "edge":
                    j = tirx.max(tirx.min(j, size - 1), 0)
                elif mode == "wrap":
                    j = tirx.floormod(j, size)
                else:   # reflect (mirror without repeating the edge); one element: itself
                    period = tirx.max(2 * (size - 1), tirx.const(1, "int64"))
                    r = tirx.floormod(tirx.abs(j), period)
                    j = tirx.Select(size == 1, tirx.const(0, "int64"), tirx.Select(r >= size, period - r, r))
                src.append(j)
            v = t[tuple(src)]
            return tirx.Select(inside, v, tirx.const(fill, dt)) if mode == "constant" else v
        return te.compute(out_shape, body, name="pad")
    return _out(lw, node, lw.bb.emit_te(pad, lw.bb.normalize(args[0]), primfunc_name_hint=f"pad_{mode}"))


# ---- resize ---------------------------------------------------------------------------------------
def _f64(v):
    return tirx.Cast("float64", v) if not isinstance(v, (int, float)) else tirx.const(float(v), "float64")


def _source_coord(y, n_in, n_out, s, coord, roi):
    """ir/opset/spatial.py _source_coords for one output index y (f64): (input coordinate, outside or None)."""
    nin = _f64(n_in)
    out_w = s * nin
    one = tirx.const(1.0, "float64")
    half = tirx.const(0.5, "float64")
    outside = None
    if coord == "align_corners":
        x = tirx.Select(out_w == one, tirx.const(0.0, "float64"), y * (nin - one) / (out_w - one))
    elif coord == "asymmetric":
        x = y / s
    elif coord == "tf_crop_and_resize":
        r0, r1 = (tirx.const(float(r), "float64") for r in roi)
        x = tirx.Select(out_w == one, (r1 - r0) * (nin - one) / tirx.const(2.0, "float64"),
                        y * (r1 - r0) * (nin - one) / (out_w - one))
        x = x + r0 * (nin - one)
        outside = tirx.any(x < tirx.const(0.0, "float64"), x > nin - one)
    elif coord == "pytorch_half_pixel":
        x = tirx.Select(out_w == one, -half, (y + half) / s - half)
    elif coord == "half_pixel":
        x = (y + half) / s - half
    else:   # half_pixel_symmetric
        offset = nin / tirx.const(2.0, "float64") * (one - _f64(n_out) / out_w)
        x = offset + (y + half) / s - half
    return x, outside


def _taps(x, mode, nearest_mode):
    """(first tap index (int64, unclamped), ratio or the nearest tap's offset): spatial.py _taps/_even_start for
    two taps."""
    one = tirx.const(1.0, "float64")
    base = tirx.floor(x)
    ratio = tirx.Select(x == base, one, x - base)
    xp = x + one
    p = tirx.floor(xp)
    start = tirx.Cast("int64", tirx.Select(xp - p == tirx.const(0.0, "float64"), p - one, p) - one)
    if mode == "linear":
        return start, ratio
    whole = x == base
    half = tirx.const(0.5, "float64")
    right = {"round_prefer_floor": ratio > half, "round_prefer_ceil": ratio >= half,
             "floor": tirx.const(False, "bool"), "ceil": tirx.const(True, "bool")}[nearest_mode]
    return start, tirx.Select(tirx.any(right, whole), tirx.const(1, "int64"), tirx.const(0, "int64"))


@lowering("cpu", "resize")
def _resize(lw, node, args):
    """ONNX Resize (ir/opset/spatial.py): nearest picks one input element per output index per axis (one
    gather, no arithmetic: inf and NaN pass); linear interpolates axis by axis in f64, each axis one kernel, the
    result cast back (integers rounded and saturated)."""
    a = node.attrs
    mode, coord = a["mode"], a["coord"]
    if mode not in ("nearest", "linear") or a["antialias"]:
        raise LoweringError(f"cpu target: resize mode={mode!r}{' antialias' if a['antialias'] else ''} "
                            f"(nearest and linear without antialias are lowered) at node {node!r}")
    xt = node.inputs[0].type
    rank = xt.rank
    out_dims = list(node.output.type.shape)
    scales, roi = a["scales"], a["roi"]
    axes = []
    for ax in range(rank):
        s = float(scales[ax]) if scales is not None else None
        ax_roi = (roi[ax], roi[ax + rank]) if roi is not None else None
        same = symbolic.equal(xt.shape[ax], out_dims[ax]) and (s is None or math.isclose(s, 1.0)) \
            and (ax_roi is None or ax_roi == (0.0, 1.0))
        if not same:
            axes.append((ax, s, ax_roi))
    if not axes:
        return _out(lw, node, args[0])
    if any(isinstance(d, int) and d == 0 for d in list(xt.shape) + out_dims):
        raise LoweringError(f"cpu target: resize of an empty tensor at node {node!r}")
    dt = tvm_dtype(node.output.type.dtype)
    extrapolation = tirx.const(float(a["extrapolation"]), "float64")

    def coords(t_shape, ax, i, s, ax_roi):
        n_in, n_out = t_shape[ax], lw.dim(out_dims[ax])
        if s is not None:
            sc = tirx.const(s, "float64")
        else:   # out/in (1 for an empty input), as the reference; the Select also keeps TVM 0.27's bound analysis
            # away from a quotient of two symbolic dims (it makes a float IntImm and fails the build)
            sc = tirx.Select(_f64(n_in) > tirx.const(0.0, "float64"), _f64(n_out) / _f64(n_in),
                             tirx.const(1.0, "float64"))
        return _source_coord(_f64(i), n_in, n_out, sc, coord, ax_roi)

    def clamp(j, n):
        return tirx.max(tirx.min(j, n - 1), tirx.const(0, "int64"))

    if mode == "nearest":
        def nearest(t):
            shape = [lw.dim(out_dims[d]) if any(d == ax for ax, _, _ in axes) else t.shape[d] for d in range(rank)]

            def body(*idx):
                src, outside = list(idx), None
                for ax, s, ax_roi in axes:
                    x, out = coords(t.shape, ax, idx[ax], s, ax_roi)
                    start, right = _taps(x, mode, a["nearest_mode"])
                    src[ax] = clamp(start + right, tirx.Cast("int64", t.shape[ax]))
                    outside = out if outside is None else (outside if out is None else tirx.any(outside, out))
                v = t[tuple(src)]
                if outside is not None:
                    v = tirx.Select(outside, tirx.Cast(t.dtype, extrapolation), v)
                return v
            return te.compute(shape, body, name="resize_nearest")
        y = lw.bb.emit_te(nearest, lw.bb.normalize(args[0]), primfunc_name_hint="resize_nearest")
        return _out(lw, node, y)

    y = lw.bb.normalize(_cast(args[0], "f64"))
    for ax, s, ax_roi in axes:
        def linear(t, ax=ax, s=s, ax_roi=ax_roi):
            shape = list(t.shape)
            shape[ax] = lw.dim(out_dims[ax])

            def body(*idx):
                x, outside = coords(t.shape, ax, idx[ax], s, ax_roi)
                start, ratio = _taps(x, mode, None)
                n = tirx.Cast("int64", t.shape[ax])
                i0, i1 = list(idx), list(idx)
                i0[ax], i1[ax] = clamp(start, n), clamp(start + 1, n)
                v = t[tuple(i0)] * (tirx.const(1.0, "float64") - ratio) + t[tuple(i1)] * ratio
                return v if outside is None else tirx.Select(outside, extrapolation, v)
            return te.compute(shape, body, name="resize_linear")
        y = lw.bb.emit_te(linear, y, primfunc_name_hint=f"resize_linear_axis{ax}")
    if dt.startswith(("int", "uint")):
        info = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int32": (-2 ** 31, 2 ** 31 - 1),
                "int64": (-2 ** 63, 2 ** 63 - 1)}[dt]
        y = R.minimum(R.maximum(R.round(y), lw.const(float(info[0]), "f64")), lw.const(float(info[1]), "f64"))
    return _out(lw, node, R.astype(y, dt))


# ---- topk, einsum ---------------------------------------------------------------------------------
@lowering("cpu", "topk")
def _topk(lw, node, args):
    """A stable argsort along `dim` (descending for the largest: ties keep the lower index first, as
    ir/opset/extra.py topk), its first k indices, and the values gathered at them; k may be symbolic."""
    x = node.inputs[0]
    d = _axis(node.attrs["dim"], x.type.rank)
    k = lw.dim(node.attrs["k"])
    order = R.argsort(args[0], axis=d, descending=bool(node.attrs["largest"]), dtype="int64")
    idx = lw.bb.emit(R.strided_slice(order, [d], [0], [k], assume_inbound=True))
    values = R.gather_elements(args[0], idx, d)
    return [_out(lw, node, values, 0), _out(lw, node, idx, 1)]


@lowering("cpu", "einsum")
def _einsum(lw, node, args):
    dt = node.output.type.dtype
    return _out(lw, node, R.einsum(relax.Tuple([_cast(a, dt) for a in args]), node.attrs["equation"]))
