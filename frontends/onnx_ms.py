"""com.microsoft contrib ops that ONNX Runtime's transformer optimizer and quantizer emit:
MatMulNBits (-> `qlinear`, so int4 models keep their packed weights), FusedMatMul, the
Gelu family and the skip/simplified layer norms."""
from __future__ import annotations

import numpy as np

from .onnx_import import Known
from .onnx_ops import _c, onnx_op

MS = "com.microsoft"


def _const(imp, i, what):
    k = imp.known(i)
    if k is None or k.symbolic:
        raise imp.unsupported(f"{what} (input {i}) must be an initializer")
    return k.array


@onnx_op((MS, "MatMulNBits"))
def _matmul_nbits(imp, a):
    """B [N, blocks, block/2] u8 (low nibble first) and scales [N*blocks] are exactly the IR's
    int4 layout once reshaped; zero points [N, ceil(blocks/2)] u8 are unpacked to one per block."""
    bits, k, n, block = a.get("bits", 4), a["K"], a["N"], a["block_size"]
    if bits != 4:
        raise imp.unsupported(f"MatMulNBits bits={bits} is not supported (only 4)")
    if imp.has(4):
        raise imp.unsupported("MatMulNBits with g_idx (act-order) is not supported")
    if k % block:
        raise imp.error(f"K={k} is not a multiple of block_size={block}")
    blocks = k // block
    qweight = _const(imp, 1, "B").reshape(n, k // 2)
    scales = _const(imp, 2, "scales")
    ins = [imp.value(0), imp.as_value(Known(qweight, "u8"), "qweight"),
           imp.as_value(Known(scales.reshape(n, blocks), imp.type(2).dtype), "scales")]
    if imp.has(3):
        zp = _const(imp, 3, "zero_points")
        if zp.dtype != np.uint8:
            raise imp.unsupported("float zero points are not supported (only packed uint8)")
        zp = zp.reshape(n, -1)
        zeros = np.stack([zp & 15, zp >> 4], axis=-1).reshape(n, -1)[:, :blocks]
        ins.append(imp.as_value(Known(np.ascontiguousarray(zeros), "u8"), "zeros"))
    if imp.has(5):
        ins.append(imp.value(5))
    return imp.op("qlinear", *ins, bits=4, group=block)


@onnx_op((MS, "FusedMatMul"))
def _fused_matmul(imp, a):
    x, y = imp.value(0), imp.value(1)

    def t(v):  # transpose the last two dims
        r = v.type.rank
        return imp.op("permute", v, dims=list(range(r - 2)) + [r - 1, r - 2])
    out = imp.op("matmul", t(x) if a.get("transA") else x, t(y) if a.get("transB") else y)
    alpha = a.get("alpha", 1.0)
    return out if alpha == 1.0 else imp.op("mul", out, _c(imp, out, alpha))


@onnx_op((MS, "Gelu"), (MS, "BiasGelu"), (MS, "FastGelu"))
def _ms_gelu(imp, a):
    x = imp.value(0)
    if imp.has(1):
        x = imp.op("add", x, imp.value(1))
    return imp.op("gelu", x, approximate="tanh" if imp.node.op_type == "FastGelu" else "none")


@onnx_op((MS, "QuickGelu"))
def _quick_gelu(imp, a):
    x = imp.value(0)
    return imp.op("mul", x, imp.op("sigmoid", imp.op("mul", x, _c(imp, x, a.get("alpha", 1.702)))))


def _skip_sum(imp, bias_index):
    s = imp.op("add", imp.value(0), imp.value(1))
    return imp.op("add", s, imp.value(bias_index)) if imp.has(bias_index) else s


@onnx_op((MS, "SkipLayerNormalization"))
def _skip_layer_norm(imp, a):
    s = _skip_sum(imp, 4)
    extra = [imp.value(2)] + ([imp.value(3)] if imp.has(3) else [])
    y = imp.op("layer_norm", s, *extra, axes=1, eps=a.get("epsilon", 1e-12))
    return _skip_outputs(imp, y, s)


@onnx_op((MS, "SkipSimplifiedLayerNormalization"))
def _skip_rms_norm(imp, a):
    s = _skip_sum(imp, 3)
    return _skip_outputs(imp, imp.op("rms_norm", s, imp.value(2), eps=a.get("epsilon", 1e-12)), s)


def _skip_outputs(imp, y, s):
    """Outputs: y, mean (unsupported), inv_std (unsupported), input+skip+bias."""
    names = list(imp.node.output)
    if any(names[i] for i in (1, 2) if i < len(names)):
        raise imp.unsupported("the mean/inv_std_var outputs are not supported")
    return [y, None, None, s][:len(names)]


@onnx_op("SimplifiedLayerNormalization")
def _simplified_layer_norm(imp, a):
    x = imp.value(0)
    if a.get("axis", -1) not in (-1, x.type.rank - 1):
        raise imp.unsupported("SimplifiedLayerNormalization over more than the last axis is not supported")
    return imp.op("rms_norm", x, imp.value(1), eps=a.get("epsilon", 1e-5))
