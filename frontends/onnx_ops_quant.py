"""ONNX quantization ops (QDQ and QOperator formats). A constant int8 weight's DequantizeLinear
(per tensor or per output column) becomes slimgraph's own `dequantize` op (ir/opset/quant.py);
everything else becomes float-equivalent IR sequences:
QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, QLinearMatMul, QLinearConv, MatMulInteger,
ConvInteger (per-tensor, per-axis and blocked scales). Integer arithmetic is reproduced exactly where the values fit f32/f64 (products of
8-bit values summed: exact in f64); rounding is half-to-even and results saturate to the integer
type, as the ONNX spec and ONNX Runtime do."""
from __future__ import annotations

import numpy as np

from ..ir.dtypes import to_torch
from .onnx_import import Known
from .onnx_ops import _c, onnx_op

_RANGE = {"u8": (0, 255), "i8": (-128, 127), "i16": (-32768, 32767), "i32": (-2 ** 31, 2 ** 31 - 1)}


def _per_axis(imp, v, rank, axis):
    """A 1-d per-channel parameter reshaped to broadcast along `axis` of a rank-`rank` tensor."""
    if v.type.rank == 0 or (v.type.rank == 1 and v.type.shape[0] == 1) or rank == 0:
        return v if v.type.rank == 0 else imp.op("reshape", v, shape=[])
    if v.type.rank != 1:
        raise imp.unsupported("blocked quantization (block_size > 0, scale of rank > 1) is not supported")
    ax = axis % rank
    return imp.op("reshape", v, shape=[-1 if d == ax else 1 for d in range(rank)])


def quantize(imp, x, scale, zp, dtype):
    """saturate(round_half_even(x / scale) + zp) as `dtype`; x, scale, zp already broadcastable."""
    lo, hi = _RANGE[dtype]
    ft = "f64" if dtype == "i32" else x.type.dtype if x.type.dtype in ("f32", "f64") else "f32"
    q = imp.op("round", imp.op("div", imp.op("cast", x, dtype=ft), imp.op("cast", scale, dtype=ft)))
    if zp is not None:
        q = imp.op("add", q, imp.op("cast", zp, dtype=ft))
    return imp.op("cast", imp.op("clamp", q, min=float(lo), max=float(hi)), dtype=dtype)


def dequantize(imp, q, scale, zp, dtype="f32"):
    ft = "f64" if q.type.dtype == "i32" else "f32"
    v = imp.op("cast", q, dtype=ft)
    if zp is not None:
        v = imp.op("sub", v, imp.op("cast", zp, dtype=ft))
    return imp.op("cast", imp.op("mul", v, imp.op("cast", scale, dtype=ft)), dtype=dtype)


def _check_block(imp, a):
    pass


def _blocked(imp, v, like, axis, block):
    """A blocked parameter [.., ceil(n/block), ..] repeated `block` times along `axis` to x's shape."""
    rank = like.type.rank
    ax = axis % rank
    shape = list(v.type.shape)
    if v.type.rank != rank or not all(isinstance(d, int) for d in shape + [like.type.shape[ax]]):
        raise imp.unsupported("blocked quantization needs static shapes and a parameter of the input's rank")
    u = imp.op("unsqueeze", v, dim=ax + 1)
    u = imp.op("expand", u, shape=shape[:ax + 1] + [block] + shape[ax + 1:])
    u = imp.op("reshape", u, shape=shape[:ax] + [shape[ax] * block] + shape[ax + 1:])
    return imp.op("slice", u, dim=ax, start=0, end=like.type.shape[ax])


def _param(imp, v, like, a):
    axis, block = a.get("axis", 1), a.get("block_size", 0)
    if v is None:
        return None
    if block:
        return _blocked(imp, v, like, axis, block)
    return _per_axis(imp, v, like.type.rank, axis)


@onnx_op("QuantizeLinear")
def _quantize_linear(imp, a):
    _check_block(imp, a)
    x, scale = imp.value(0), imp.value(1)
    zp = imp.value(2) if imp.has(2) else None
    from .onnx_import import ir_dtype
    dtype = zp.type.dtype if zp is not None else ir_dtype(a.get("output_dtype", 2) or 2, "QuantizeLinear output_dtype")
    if dtype not in _RANGE or dtype == "i32":
        raise imp.unsupported(f"QuantizeLinear to {dtype} is not supported (u8, i8, i16)")
    return quantize(imp, x, _param(imp, scale, x, a), _param(imp, zp, x, a), dtype)


def _as_weight_dequantize(imp, a):
    """A constant int8 weight W[K, N] dequantized per tensor or per column (axis 1) is slimgraph's own
    `dequantize` op on W^T (its [out, in] layout, one scale row per output), transposed back: the
    packed weight stays int8 in the graph and fuse-dequant-matmul / the codegens see a quantized weight.
    None when the node does not fit (run-time input, other dtypes or layouts, blocked scales)."""
    qk, sk = imp.known(0), imp.known(1)
    zk = imp.known(2) if imp.has(2) else None
    if qk is None or sk is None or (imp.has(2) and zk is None) or a.get("block_size", 0):
        return None
    if qk.dtype != "i8" or qk.array.ndim != 2 or sk.dtype not in ("f32", "f16", "bf16") or sk.symbolic:
        return None
    k, n = qk.array.shape
    axis = a.get("axis", 1) % 2
    if sk.array.size != 1 and (axis != 1 or sk.array.shape != (n,)):
        return None
    if zk is not None and (zk.dtype != "i8" or zk.array.size not in (1, n)):
        return None
    scales = np.broadcast_to(np.asarray(sk.array).reshape(-1, 1), (n, 1)).copy()
    qw = imp.as_value(Known(np.ascontiguousarray(qk.array.T), "i8"), imp.node.input[0] + "_qT")
    inputs = [qw, imp.as_value(Known(scales, sk.dtype), imp.node.input[1] + "_rows")]
    if zk is not None and np.any(zk.array != 0):
        zeros = np.broadcast_to(np.asarray(zk.array, np.int8).reshape(-1, 1), (n, 1)).copy()
        inputs.append(imp.as_value(Known(zeros, "i8"), imp.node.input[2] + "_rows"))
    w = imp.op("dequantize", *inputs, bits=8, group=0, dtype=sk.dtype)
    return imp.op("permute", w, dims=[1, 0])


@onnx_op("DequantizeLinear")
def _dequantize_linear(imp, a):
    _check_block(imp, a)
    fitted = _as_weight_dequantize(imp, a)
    if fitted is not None:
        return fitted
    q, scale = imp.value(0), imp.value(1)
    zp = imp.value(2) if imp.has(2) else None
    if q.type.dtype not in _RANGE:
        raise imp.unsupported(f"DequantizeLinear from {q.type.dtype} is not supported (u8, i8, i16, i32)")
    return dequantize(imp, q, _param(imp, scale, q, a), _param(imp, zp, q, a), scale.type.dtype)


@onnx_op("DynamicQuantizeLinear")
def _dynamic_quantize_linear(imp, a):
    """u8 with scale = (max(x, 0) - min(x, 0)) / 255, zero point = saturate(round(-min / scale))."""
    x = imp.value(0)
    zero = _c(imp, x, 0.0)
    hi = imp.op("maximum", imp.op("amax", x, dims=None, keepdim=False), zero)
    lo = imp.op("minimum", imp.op("amin", x, dims=None, keepdim=False), zero)
    scale = imp.op("div", imp.op("sub", hi, lo), _c(imp, x, 255.0))
    zp = imp.op("cast", imp.op("clamp", imp.op("round", imp.op("div", imp.op("neg", lo), scale)), min=0.0, max=255.0),
                dtype="u8")
    return [quantize(imp, x, scale, zp, "u8"), scale, zp]


def _int_product(imp, a_val, a_zp, b_val, b_zp, op, **attrs):
    """(a - a_zp) op (b - b_zp) computed exactly in f64 (8-bit products summed)."""
    a = imp.op("cast", a_val, dtype="f64")
    b = imp.op("cast", b_val, dtype="f64")
    if a_zp is not None:
        a = imp.op("sub", a, imp.op("cast", a_zp, dtype="f64"))
    if b_zp is not None:
        b = imp.op("sub", b, imp.op("cast", b_zp, dtype="f64"))
    return imp.op(op, a, b, **attrs)


@onnx_op("MatMulInteger")
def _matmul_integer(imp, a):
    b_zp = imp.value(3) if imp.has(3) else None
    if b_zp is not None and b_zp.type.rank == 1 and b_zp.type.shape[0] != 1:  # per column of b
        b_zp = imp.op("reshape", b_zp, shape=[1, -1])
    a_zp = imp.value(2) if imp.has(2) else None
    if a_zp is not None and a_zp.type.rank == 1 and a_zp.type.shape[0] != 1:  # per row of a
        a_zp = imp.op("reshape", a_zp, shape=[-1, 1])
    return imp.op("cast", _int_product(imp, imp.value(0), a_zp, imp.value(1), b_zp, "matmul"), dtype="i32")


@onnx_op("QLinearMatMul")
def _qlinear_matmul(imp, a):
    av, a_s, a_zp, bv, b_s, b_zp, y_s, y_zp = (imp.value(i) for i in range(8))
    if b_s.type.rank == 1 and b_s.type.shape[0] != 1:
        b_s, b_zp = (imp.op("reshape", v, shape=[1, -1]) for v in (b_s, b_zp))
    acc = _int_product(imp, av, a_zp, bv, b_zp, "matmul")
    real = imp.op("mul", acc, imp.op("cast", imp.op("mul", imp.op("cast", a_s, dtype="f64"),
                                                    imp.op("cast", b_s, dtype="f64")), dtype="f64"))
    return quantize(imp, imp.op("cast", real, dtype="f32"), y_s, y_zp, y_zp.type.dtype)


def _conv_attrs(imp, a, x, w):
    from .onnx_ops import _pads_2d
    n = x.type.rank - 2
    if n != 2:
        raise imp.unsupported(f"only 2-d {imp.node.op_type} is supported, got {n}-d")
    kernel = a.get("kernel_shape", list(w.type.shape[2:]))
    strides, dil = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    pad, asym = _pads_2d(imp, a, x.type.shape, kernel, strides, dil)
    if asym is not None:
        raise imp.unsupported(f"asymmetric padding in {imp.node.op_type} is not supported")
    return dict(stride=strides, padding=pad, dilation=dil, groups=a.get("group", 1))


@onnx_op("ConvInteger")
def _conv_integer(imp, a):
    x, w = imp.value(0), imp.value(1)
    x_zp = imp.value(2) if imp.has(2) else None
    w_zp = imp.value(3) if imp.has(3) else None
    if w_zp is not None and w_zp.type.rank == 1 and w_zp.type.shape[0] != 1:
        w_zp = imp.op("reshape", w_zp, shape=[-1, 1, 1, 1])
    y = _int_product(imp, x, x_zp, w, w_zp, "conv2d", **_conv_attrs(imp, a, x, w))
    return imp.op("cast", y, dtype="i32")


@onnx_op("QLinearConv")
def _qlinear_conv(imp, a):
    x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp = (imp.value(i) for i in range(8))
    per_ch = w_s.type.rank == 1 and w_s.type.shape[0] != 1
    if per_ch:
        w_s = imp.op("reshape", w_s, shape=[1, -1, 1, 1])
        if w_zp.type.rank == 1 and w_zp.type.shape[0] != 1:
            w_zp = imp.op("reshape", w_zp, shape=[-1, 1, 1, 1])
    acc = _int_product(imp, x, x_zp, w, w_zp, "conv2d", **_conv_attrs(imp, a, x, w))
    if imp.has(8):
        acc = imp.op("add", acc, imp.op("reshape", imp.op("cast", imp.value(8), dtype="f64"), shape=[1, -1, 1, 1]))
    real = imp.op("mul", acc, imp.op("mul", imp.op("cast", x_s, dtype="f64"), imp.op("cast", w_s, dtype="f64")))
    return quantize(imp, imp.op("cast", real, dtype="f32"), y_s, y_zp, y_zp.type.dtype)


__all__ = ["quantize", "dequantize", "to_torch"]
