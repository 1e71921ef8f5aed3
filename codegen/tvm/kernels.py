"""slimgraph's own TE/TIR kernels for the `cpu` target: packed-weight dequantization and `qlinear`.

Packed layout: ir/quant_format.py (int4: two codes per byte, column 2k in the low nibble; groups along K;
symmetric int4 has the implied zero point 8, int8 zero 0).

    dequantize_te(qweight, scales, zeros, bits, group, dtype)   # te.Tensor [out, in]
    qlinear(lw, node, x, qweight, scales, zeros, bias, bits, group)   # Relax expr: linear(x, W) (+ bias)
"""
from __future__ import annotations
from tvm import te, tirx

from ...ir import quant_format as Q


def _code(qweight, bits, o, i):
    if bits == 8:
        return qweight[o, i].astype("int32")
    byte = qweight[o, tirx.floordiv(i, 2)].astype("int32")
    return tirx.bitwise_and(tirx.shift_right(byte, tirx.floormod(i, 2) * 4), 15)


def dequantize_te(qweight, scales, zeros, bits: int, group: int, dtype: str = "float32"):
    """W[o, i] = (q[o, i] - zero[o, i // g]) * scale[o, i // g] as a TE compute (ir/quant_format.py)."""
    out = int(qweight.shape[0])
    k = int(qweight.shape[1]) * (2 if bits == 4 else 1)
    g = Q.group_size(group, k)
    implied = Q.implied_zero(bits)

    def w(o, i):
        q = _code(qweight, bits, o, i).astype("float32")
        z = zeros[o, tirx.floordiv(i, g)].astype("float32") if zeros is not None else tirx.const(implied, "float32")
        return ((q - z) * scales[o, tirx.floordiv(i, g)].astype("float32")).astype(dtype)
    return te.compute((out, k), w, name="dequantize")


def qlinear(lw, node, x, qweight, scales, zeros, bias, bits: int, group: int):
    """linear(x, dequantize(qweight, scales, zeros)) + bias; the weight is unpacked inside the kernel."""
    from tvm.relax import op as R
    from .relax_lower import _dtype, linear
    dt = _dtype(x)
    w = lw.bb.emit_te(dequantize_te, qweight, scales, zeros, bits, group, dt, primfunc_name_hint="dequantize")
    return linear(x, w, bias)
