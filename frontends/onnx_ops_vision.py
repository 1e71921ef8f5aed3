"""ONNX handlers for the ops vision, audio and detection models use beyond the core set:
Resize, ConvTranspose, GridSample, ScatterND/ScatterElements, LSTM, LpPool, CenterCropPad.
(QDQ quantization ops live in onnx_ops_quant.py.)"""
from __future__ import annotations
import math

import numpy as np
import sympy

from ..ir import symbolic as S
from ..ir.opset import infer as I
from .onnx_import import NeedsConstantError, sym_dim
from .onnx_ops import _axis, _c, _same_dtype, _scalar, _to_2d, onnx_op


def floats(imp, i, what):
    """Input i as a list of Python floats known at import time (empty when absent or empty)."""
    if not imp.has(i):
        return []
    k = imp.known(i)
    if k is None:
        imp.dims(i, what)  # raises NeedsConstantError naming the input
    if k.symbolic:
        return [float(v) for v in k.dims()]
    return [float(v) for v in np.asarray(k.array, dtype=np.float64).reshape(-1)]


# ---- Resize ----------------------------------------------------------------------------------------
def _scaled_dim(d, s: float):
    """floor(d * s) as ONNX computes an output size from a scale (s is an f32 value)."""
    if isinstance(d, int):
        return int(math.floor(d * s))
    if float(s).is_integer():
        return S.canon(sympy.sympify(sym_dim(d) * int(s)))
    return S.canon(sympy.floor(sym_dim(d) * sympy.Rational(s)))


@onnx_op("Resize")
def _resize(imp, a):
    x = imp.value(0)
    rank, shape = x.type.rank, list(x.type.shape)
    roi = floats(imp, 1, "roi")
    scales = floats(imp, 2, "scales")
    sizes = imp.dims(3, "sizes") if imp.has(3) and imp.type(3).shape != (0,) else []
    if bool(scales) == bool(sizes):
        raise imp.error("exactly one of scales and sizes must be given (non-empty)")
    axes = [I.norm_dim(d, rank) for d in a.get("axes", range(rank))]
    coord = a.get("coordinate_transformation_mode", "half_pixel")
    mode = a.get("mode", "nearest")
    out, full_scales = list(shape), None
    if sizes:
        if len(sizes) != len(axes):
            raise imp.error(f"{len(sizes)} sizes for {len(axes)} axes")
        policy = a.get("keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            for ax, n in zip(axes, sizes):
                out[ax] = n
        else:
            if not all(isinstance(v, int) for v in [shape[ax] for ax in axes] + sizes):
                raise imp.unsupported(f"keep_aspect_ratio_policy={policy!r} needs static sizes and input dims")
            ratios = [n / shape[ax] for ax, n in zip(axes, sizes)]
            s = min(ratios) if policy == "not_larger" else max(ratios)
            full_scales = [s if ax in axes else 1.0 for ax in range(rank)]
            out = [int(shape[ax] * s + 0.5) if ax in axes else shape[ax] for ax in range(rank)]
    else:
        if len(scales) != len(axes):
            raise imp.error(f"{len(scales)} scales for {len(axes)} axes")
        full_scales = [1.0] * rank
        for ax, s in zip(axes, scales):
            if s <= 0:
                raise imp.error(f"scale {s} on axis {ax} must be positive")
            full_scales[ax] = s
            out[ax] = _scaled_dim(shape[ax], s)
    full_roi = None
    if coord == "tf_crop_and_resize":
        if len(roi) != 2 * len(axes):
            raise imp.error(f"tf_crop_and_resize needs a roi of {2 * len(axes)} numbers, got {len(roi)}")
        full_roi = [0.0] * rank + [1.0] * rank
        for i, ax in enumerate(axes):
            full_roi[ax], full_roi[rank + ax] = roi[i], roi[len(axes) + i]
    return imp.op("resize", x, shape=out, mode=mode, coord=coord,
                  nearest_mode=a.get("nearest_mode", "round_prefer_floor"), cubic_a=float(a.get("cubic_coeff_a", -0.75)),
                  exclude_outside=bool(a.get("exclude_outside", 0)), extrapolation=float(a.get("extrapolation_value", 0.0)),
                  antialias=bool(a.get("antialias", 0)) and mode != "nearest", scales=full_scales, roi=full_roi)


# ---- ConvTranspose ---------------------------------------------------------------------------------
@onnx_op("ConvTranspose")
def _conv_transpose(imp, a):
    x, w = imp.value(0), imp.value(1)
    n = x.type.rank - 2
    if n not in (1, 2):
        raise imp.unsupported(f"only 1-d and 2-d ConvTranspose is supported, got {n}-d")
    kernel = a.get("kernel_shape", list(w.type.shape[2:]))
    strides, dil = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    out_pad = a.get("output_padding", [0] * n)
    auto = a.get("auto_pad", "NOTSET")
    spatial = list(x.type.shape[2:])
    if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
        if not all(isinstance(d, int) for d in spatial):
            raise imp.unsupported("ConvTranspose output_shape/auto_pad needs static spatial dims")
        want = a.get("output_shape") or [d * s for d, s in zip(spatial, strides)]
        want = list(want)[-n:]
        total = [s * (d - 1) + op + (k - 1) * dl + 1 - o
                 for s, d, op, k, dl, o in zip(strides, spatial, out_pad, kernel, dil, want)]
        if auto == "SAME_UPPER":
            begin, end = [t // 2 for t in total], [t - t // 2 for t in total]
        else:
            begin, end = [t - t // 2 for t in total], [t // 2 for t in total]
    elif auto == "VALID":
        begin, end = [0] * n, [0] * n
    else:
        pads = a.get("pads", [0] * 2 * n)
        begin, end = list(pads[:n]), list(pads[n:])
    sym = [max(min(b, e), 0) for b, e in zip(begin, end)]  # torch pads both sides equally; crop/pad the rest
    if n == 1:
        x, w = _to_2d(imp, x, 1), _to_2d(imp, w, 1)
        strides, dil, out_pad, sym, begin, end = [1] + strides, [1] + dil, [0] + out_pad, [0] + sym, [0] + begin, [0] + end
    rest = [(b - p, e - p) for b, e, p in zip(begin, end, sym)]  # > 0 crops, < 0 pads with zeros
    late_bias = any(r < 0 for pair in rest for r in pair)  # zero-padded borders get the bias too
    bias = [imp.value(2)] if imp.has(2) and not late_bias else []
    y = imp.op("conv_transpose2d", x, w, *bias, stride=strides, padding=sym, output_padding=out_pad,
               dilation=dil, groups=a.get("group", 1))
    if any(r != 0 for pair in rest for r in pair):
        torch_pads = []
        for b, e in reversed(rest):
            torch_pads += [-b, -e]
        y = imp.op("pad", y, pads=torch_pads, value=0.0)
    if late_bias and imp.has(2):
        y = imp.op("add", y, imp.op("reshape", imp.value(2), shape=[-1, 1, 1]))
    return imp.op("squeeze", y, dims=[2]) if n == 1 else y


# ---- GridSample ------------------------------------------------------------------------------------
@onnx_op("GridSample")
def _grid_sample(imp, a):
    x, grid = imp.value(0), imp.value(1)
    if x.type.rank not in (4, 5):
        raise imp.unsupported(f"only 2-d and 3-d GridSample is supported, got {x.type.rank - 2}-d")
    if x.type.rank == 5 and a.get("mode", "linear") in ("cubic", "bicubic"):
        raise imp.unsupported("cubic 3-d GridSample is not supported")
    mode = {"linear": "bilinear", "bilinear": "bilinear", "nearest": "nearest", "cubic": "bicubic",
            "bicubic": "bicubic"}[a.get("mode", "linear")]
    if mode == "nearest":  # torch rounds half to even; ONNX's nearest rounds half to even as well (np.rint)
        pass
    return imp.op("grid_sample", x, grid, mode=mode, padding_mode=a.get("padding_mode", "zeros"),
                  align_corners=bool(a.get("align_corners", 0)))


# ---- scatter ---------------------------------------------------------------------------------------
@onnx_op("ScatterElements")
def _scatter_elements(imp, a):
    x, idx, upd = imp.value(0), imp.value(1), imp.value(2)
    ax = _axis(a, "axis", x.type.rank)
    size = _same_dtype(imp, imp.op("dim_value", expr=x.type.shape[ax]), idx.type.dtype)
    idx = imp.op("where", imp.op("lt", idx, _scalar(imp, 0, idx.type.dtype)), imp.op("add", idx, size), idx)
    reduce = {"none": "none", "add": "sum", "mul": "prod", "max": "amax", "min": "amin"}[a.get("reduction", "none")]
    return imp.op("scatter", x, imp.op("cast", idx, dtype="i64"), upd, dim=ax, reduce=reduce)


@onnx_op("ScatterND")
def _scatter_nd(imp, a):
    return imp.op("scatter_nd", imp.value(0), imp.value(1), imp.value(2), reduce=a.get("reduction", "none"))


# ---- LSTM ------------------------------------------------------------------------------------------
@onnx_op("LSTM")
def _lstm(imp, a):
    x, w, r = imp.value(0), imp.value(1), imp.value(2)
    if a.get("layout", 0):
        x = imp.op("permute", x, dims=[1, 0, 2])  # [batch, seq, in] -> [seq, batch, in]
    if imp.has(4):
        raise imp.unsupported("LSTM sequence_lens (per-batch lengths) is not supported")
    if imp.has(7):
        raise imp.unsupported("LSTM peepholes (input P) are not supported")
    acts = a.get("activations")
    if acts and any(f.lower() != g for f, g in zip(acts, ["sigmoid", "tanh", "tanh"] * 2)):
        raise imp.unsupported(f"LSTM activations {acts} are not supported (only Sigmoid, Tanh, Tanh)")
    if "clip" in a or a.get("input_forget", 0):
        raise imp.unsupported("LSTM clip / input_forget are not supported")
    direction = a.get("direction", "forward")
    extra = {}
    b = imp.value(3) if imp.has(3) else None
    h0 = imp.value(5) if imp.has(5) else None
    c0 = imp.value(6) if imp.has(6) else None
    if a.get("layout", 0):
        h0 = imp.op("permute", h0, dims=[1, 0, 2]) if h0 is not None else None
        c0 = imp.op("permute", c0, dims=[1, 0, 2]) if c0 is not None else None
    hidden = r.type.shape[-1]
    dirs = w.type.shape[0]
    batch = x.type.shape[1]
    if b is None:
        b = imp.op("full", shape=[dirs, 8 * hidden], value=0.0, dtype=x.type.dtype)
    if h0 is None:
        h0 = imp.op("full", shape=[dirs, batch, hidden], value=0.0, dtype=x.type.dtype)
    if c0 is None:
        c0 = imp.op("full", shape=[dirs, batch, hidden], value=0.0, dtype=x.type.dtype)
    y, hn, cn = imp.op("lstm", x, w, r, b, h0, c0, direction=direction, **extra)
    if a.get("layout", 0):
        y = imp.op("permute", y, dims=[2, 0, 1, 3])  # [seq, dirs, batch, h] -> [batch, seq, dirs, h]
        hn = imp.op("permute", hn, dims=[1, 0, 2])
        cn = imp.op("permute", cn, dims=[1, 0, 2])
    return [y, hn, cn]


@onnx_op("GRU", "RNN")
def _gru_rnn(imp, a):
    op = imp.node.op_type
    cell = op.lower()
    x, w, r = imp.value(0), imp.value(1), imp.value(2)
    layout = a.get("layout", 0)
    if layout:
        x = imp.op("permute", x, dims=[1, 0, 2])
    if imp.has(4):
        raise imp.unsupported(f"{op} sequence_lens (per-batch lengths) is not supported")
    want = ["sigmoid", "tanh"] if cell == "gru" else ["tanh"]
    acts = a.get("activations")
    if acts and any(f.lower() != g for f, g in zip(acts, want * 2)):
        raise imp.unsupported(f"{op} activations {acts} are not supported (only {', '.join(want)})")
    if "clip" in a:
        raise imp.unsupported(f"{op} clip is not supported")
    dirs, hidden, batch = w.type.shape[0], r.type.shape[-1], x.type.shape[1]
    gates = 3 if cell == "gru" else 1
    b = imp.value(3) if imp.has(3) else imp.op("full", shape=[dirs, 2 * gates * hidden], value=0.0, dtype=x.type.dtype)
    h0 = imp.value(5) if imp.has(5) else None
    if h0 is not None and layout:
        h0 = imp.op("permute", h0, dims=[1, 0, 2])
    if h0 is None:
        h0 = imp.op("full", shape=[dirs, batch, hidden], value=0.0, dtype=x.type.dtype)
    y, hn = imp.op("recurrent", x, w, r, b, h0, cell=cell, direction=a.get("direction", "forward"),
                   linear_before_reset=bool(a.get("linear_before_reset", 0)))
    if layout:
        y = imp.op("permute", y, dims=[2, 0, 1, 3])
        hn = imp.op("permute", hn, dims=[1, 0, 2])
    return [y, hn]


@onnx_op("BitShift")
def _bit_shift(imp, a):
    return imp.op("bit_shift", imp.value(0), imp.value(1), left=a["direction"] == "LEFT")


@onnx_op("Col2Im")
def _col2im(imp, a):
    x = imp.value(0)
    image, block = imp.dims(1, "image_shape"), imp.dims(2, "block_shape")
    n = len(image)
    if n != 2:
        raise imp.unsupported(f"only 2-d Col2Im is supported, got {n}-d")
    pads = a.get("pads", [0] * 2 * n)
    if pads[:n] != pads[n:]:
        raise imp.unsupported("asymmetric Col2Im pads are not supported")
    return imp.op("col2im", x, image=image, block=block, dilation=a.get("dilations", [1] * n),
                  padding=list(pads[:n]), stride=a.get("strides", [1] * n))


@onnx_op("Det")
def _det(imp, a):
    return imp.op("det", imp.value(0))


# ---- pooling ---------------------------------------------------------------------------------------
@onnx_op("LpPool")
def _lp_pool(imp, a):
    """(sum over the window of |x|^p)^(1/p), as avg_pool(|x|^p) * window size."""
    x = imp.value(0)
    n = x.type.rank - 2
    if n not in (1, 2) or a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1] * n)):
        from .onnx_ops import general_pool
        return general_pool(imp, a, x, "lp", p=float(a.get("p", 2)))
    from .onnx_ops import _pads_2d
    kernel, strides = a["kernel_shape"], a.get("strides", [1] * n)
    p = float(a.get("p", 2))
    pad, asym = _pads_2d(imp, a, x.type.shape, kernel, strides, [1] * n)
    xp = imp.op("pow", imp.op("abs", x), _c(imp, x, p))
    if asym is None and any(pd > 0 for pd in pad):  # torch's avg_pool2d allows pad <= kernel/2 only
        asym = [v for i in reversed(range(n)) for v in (pad[i], pad[i])]
    if asym is not None:
        xp, pad = imp.op("pad", xp, pads=asym, value=0.0), [0] * n
    if n == 1:
        kernel, strides, pad = [1] + kernel, [1] + strides, [0] + pad
    y = imp.op("avg_pool2d", _to_2d(imp, xp, n), kernel=kernel, stride=strides, padding=pad, count_include_pad=True)
    y = imp.op("mul", y, _c(imp, y, math.prod(kernel)))
    y = imp.op("pow", y, _c(imp, y, 1.0 / p))
    return imp.op("squeeze", y, dims=[2]) if n == 1 else y


@onnx_op("CenterCropPad")
def _center_crop_pad(imp, a):
    x = imp.value(0)
    shape = imp.dims(1, "shape")
    axes = [I.norm_dim(d, x.type.rank) for d in a.get("axes", range(x.type.rank))]
    for ax, want in zip(axes, shape):
        have = x.type.shape[ax]
        if not isinstance(have, int) or not isinstance(want, int):
            raise imp.unsupported("CenterCropPad needs static dims")
        if want < have:
            start = (have - want) // 2
            x = imp.op("slice", x, dim=ax, start=start, end=start + want)
        elif want > have:
            before = (want - have) // 2
            pads = [0] * (2 * x.type.rank)
            k = x.type.rank - 1 - ax
            pads[2 * k], pads[2 * k + 1] = before, want - have - before
            x = imp.op("pad", x, pads=pads, value=0.0)
    return x


__all__ = ["floats", "NeedsConstantError"]
