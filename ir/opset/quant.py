"""Weight-quantization ops: `dequantize` (packed integer weight -> float), `qlinear`
(= linear(x, dequantize(...)) in one op, so codegens can run it from packed weights) and
`qembedding` (= embedding(dequantize(...), ids): only the looked-up rows are unpacked), and
`quantize_activation` (dynamic int8 activations: what an integer dot-product kernel sees of x).

Storage layout (see ir/quant_format.py), for a logical weight W[out, in]:
  qweight  int8: i8[out, in];  int4: u8[out, in/2], column 2k in the low nibble, 2k+1 in the high
  scales   f32|f16[out, in/group]  (group=0: one group per row, i.e. per-channel)
  zeros    optional, [out, in/group], u8 (int4) or i8 (int8) integer zero points, or f32 float zero
           points (the grid anywhere: GGUF Q4_1's W = d * q + m); absent = symmetric (int4 implied
           zero 8, int8 zero 0). qlinear's 4th input is the zeros if 2-D, the bias if 1-D.
  W[o, k] = (q[o, k] - zero[o, k // group]) * scale[o, k // group]
Groups run along the input dim K, as ONNX MatMulNBits blocks them.
"""
import torch
import torch.nn.functional as F

from .. import quant_format as Q
from ..dtypes import FLOAT_DTYPES
from ..registry import Attr, register_op
from ..types import TensorType
from . import infer as I

QATTRS = {"bits": Attr("int"), "group": Attr("int", 0)}


def _check_packed(op, ts, attrs):
    """Validate qweight/scales/zeros types; return the logical (out, in) shape."""
    qw, sc = ts[0], ts[1]
    zs = ts[2] if len(ts) > 2 else None
    bits, group = attrs["bits"], attrs["group"]
    Q.check_bits(bits, f"{op}: ")
    want = "u8" if bits == 4 else "i8"
    if qw.rank != 2 or qw.dtype != want:
        raise I.ShapeError(f"{op}: int{bits} qweight must be {want}[out, in{'/2' if bits == 4 else ''}], got {qw}")
    if sc.dtype not in FLOAT_DTYPES or sc.rank != 2:
        raise I.ShapeError(f"{op}: scales must be float [out, in/group], got {sc}")
    out, k = qw.shape[0], Q.logical_in_dim(qw.shape, bits)
    if isinstance(k, int) and isinstance(sc.shape[1], int):
        g = Q.group_size(group, k)
        if k % g or sc.shape[1] != k // g:
            raise I.ShapeError(f"{op}: scales {sc} do not match in={k} with group={group}")
    if zs is not None and ((zs.dtype != want and zs.dtype not in FLOAT_DTYPES) or zs.shape != sc.shape):
        raise I.ShapeError(f"{op}: zeros must be {want} (integer zero points) or float shaped like scales {sc}, "
                           f"got {zs}")
    return out, k


def _dequantize_type(ts, attrs):
    out, k = _check_packed("dequantize", ts, attrs)
    return TensorType(attrs["dtype"], (out, k))


@register_op("dequantize", inputs="qweight scales zeros?",
             attrs={**QATTRS, "dtype": Attr("dtype", "f32")}, infer=_dequantize_type, traits="reads_weight")
def dequantize(qweight, scales, zeros=None, *, bits, group, dtype):
    """Unpack a quantized weight to float W[out, in] (layout in the module docstring)."""
    from ..dtypes import to_torch
    return Q.dequantize(qweight, scales, zeros, bits, group, to_torch(dtype))


def _qlinear_type(ts, attrs):
    x, rest = ts[0], ts[1:]
    packed = rest[:3] if len(rest) >= 3 and Q.is_zeros(rest[2]) else rest[:2]
    out, k = _check_packed("qlinear", packed, attrs)
    if isinstance(x.shape[-1], int) and isinstance(k, int) and x.shape[-1] != k:
        raise I.ShapeError(f"qlinear: input {x} does not match weight in={k}")
    return TensorType(x.dtype, x.shape[:-1] + (out,))


@register_op("qlinear", inputs="x qweight scales zeros? bias?", attrs=QATTRS, infer=_qlinear_type, traits="reads_weight")
def qlinear(x, qweight, scales, zeros=None, bias=None, *, bits, group):
    """linear(x, dequantize(qweight, scales, zeros), bias). Symmetric with a bias has no zeros:
    a 1-D 4th input is the bias (`quant_format.is_zeros`)."""
    if zeros is not None and not Q.is_zeros(zeros):
        zeros, bias = None, zeros
    return F.linear(x, Q.dequantize(qweight, scales, zeros, bits, group, x.dtype), bias)


def _qembedding_type(ts, attrs):
    ids, packed = ts[0], ts[1:]
    if ids.dtype not in ("i32", "i64"):
        raise I.ShapeError(f"qembedding: ids must be i32/i64, got {ids}")
    _, k = _check_packed("qembedding", packed, attrs)
    return TensorType(attrs["dtype"], ids.shape + (k,))


@register_op("qembedding", inputs="ids qweight scales zeros?",
             attrs={**QATTRS, "dtype": Attr("dtype", "f32")}, infer=_qembedding_type, traits="reads_weight")
def qembedding(ids, qweight, scales, zeros=None, *, bits, group, dtype):
    """embedding(dequantize(qweight, scales, zeros), ids): the rows of `ids`, unpacked."""
    from ..dtypes import to_torch
    flat = ids.reshape(-1)
    if flat.numel():   # as embedding (F.embedding) does: a negative id would read a row from the end
        lo, hi = (int(x) for x in torch.aminmax(flat))
        if lo < 0 or hi >= qweight.shape[0]:
            raise IndexError(f"qembedding: id {lo if lo < 0 else hi} is outside 0..{qweight.shape[0] - 1} "
                             f"(the table's rows)")
    rows = Q.dequantize(qweight[flat], scales[flat], zeros[flat] if zeros is not None else None,
                        bits, group, to_torch(dtype))
    return rows.reshape(*ids.shape, rows.shape[-1])


# the largest |code| per bits: int8 keeps -128 out (symmetric); int16 keeps |q| <= 127 * 257 so that q splits into
# two int8 codes, q = 256 hi + lo with hi = floor((q + 128) / 256) in [-127, 127] and lo in [-128, 127]
ACT_QMAX = {8: 127, 16: 32639}


def _quantize_activation_type(ts, attrs):
    x = ts[0]
    if attrs["bits"] not in ACT_QMAX:
        raise I.ShapeError(f"quantize_activation: bits must be 8 (int8 activations) or 16 (int16, as two int8 "
                           f"codes), got {attrs['bits']}")
    if x.dtype not in FLOAT_DTYPES or x.rank < 1:
        raise I.ShapeError(f"quantize_activation: x must be a float tensor, got {x}")
    k, g = x.shape[-1], attrs["group"]
    if g < 0 or (isinstance(k, int) and g and k % g):
        raise I.ShapeError(f"quantize_activation: group={g} does not divide the last dim of {x}")
    return x


@register_op("quantize_activation", inputs="x", attrs={"bits": Attr("int", 8), "group": Attr("int", 0)},
             infer=_quantize_activation_type)
def quantize_activation(x, *, bits, group):
    """Dynamic symmetric quantization of x along its last dim, returned dequantized (x's dtype and shape):
    per row and group of `group` columns (0: the whole row), s = max|x| / Q, q = clamp(round_half_even(x / s),
    -Q, Q), out = q * s (a group of zeros stays zero), with Q = 127 for bits=8 and 32639 (127 * 257) for bits=16.

    A qlinear that reads it computes sum_k q_x[k] * q_w[k] in integers (W4A8 / W8A8: llama.cpp's Q8_0
    activations, torchao's int8 dynamic activation + int4 weight "8da4w"); the `cpu` target runs that
    with VNNI dot products, int16 codes as two int8 ones (q = 256 hi + lo: two dot products per weight load,
    which a decode step's memory-bound kernels hide). Inserted by the `quantize-activations` pass."""
    k = x.shape[-1]
    g = group or k
    qmax = ACT_QMAX[bits]
    xg = x.float().reshape(*x.shape[:-1], k // g, g)
    s = xg.abs().amax(-1, keepdim=True) / qmax
    q = torch.round(xg / torch.where(s > 0, s, torch.ones_like(s))).clamp(-qmax, qmax)
    return (q * s).reshape(x.shape).to(x.dtype)
