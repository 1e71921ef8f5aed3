"""Torch kernels for `qlinear` that compute from packed weights (no float weight kept).

- int8, per-channel, symmetric: `aten._weight_int8pack_mm` (scales prepacked to [out]).
- int4, group in {32, 64, 128, 256}, out % 16 == 0: `aten._weight_int4pack_mm_for_cpu`; the
  weight is repacked once at build time by `_convert_weight_to_int4pack_for_cpu` and the
  scales/zeros folded into its [in/group, out, 2] table, w = (q - 8) * scale + (8 - zero) * scale.
- anything else: dequantize on the fly inside the call (transient float weight, freed after); prepack
  raises SlowPath so the report says which nodes run this way and why.

Both kernels take activations and scales in bf16 (output cast back): on CPU their f32 paths
measured 320 us (int4) and 143-300 us (int8) vs 13-18 us in bf16 at 576x576, and 25.7 vs 4.0 ms
for int8 at SmolLM2's 49152x576 head (torch 2.13, this 2-core Zen). The cost is bf16 rounding of x
and of the scales (~3 significant digits): inside int4's own quantization error, and for int8
per-channel measured on SmolLM2 perplexity (benchmarks/RESULTS.md); tests bound it.

Each path is chosen at prepack time and recognized by the prepacked tensors' shapes, so the
kernel keeps the reference signature qlinear(x, qweight, scales, zeros?, bias?, bits, group).
"""
from __future__ import annotations
import torch
import torch.nn.functional as F

from ..ir import quant_format as Q
from .lowering import lowering
from .torch_kernels import SlowPath

INT4_GROUPS = (32, 64, 128, 256)


def _split_zeros_bias(zeros, bias):
    if zeros is not None and not Q.is_zeros(zeros):   # symmetric with a bias: 4th input is the bias
        return None, zeros
    return zeros, bias


def prepack_qlinear(node, const: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    bits, group = node.attrs["bits"], node.attrs["group"]
    if 1 not in const or 2 not in const:
        raise SlowPath("qlinear with computed (non-weight) packed inputs dequantizes them on every call")
    qweight, scales = const[1], const[2]
    zeros = const.get(3)
    zeros = zeros if zeros is not None and Q.is_zeros(zeros) else None
    out, k = qweight.shape[0], Q.logical_in_dim(qweight.shape, bits)
    if bits == 8 and group in (0, k) and zeros is None:
        return {1: _aligned(qweight), 2: scales.reshape(-1).to(torch.bfloat16).contiguous()}
    if bits == 4 and Q.group_size(group, k) in INT4_GROUPS and out % 16 == 0:
        try:
            return _prepack_int4(qweight, scales, zeros, Q.group_size(group, k))
        except RuntimeError as e:  # a shape this torch build's int4 kernel rejects
            raise SlowPath(f"int4 qlinear rejected by torch's int4 kernel ({e}) dequantizes its weight on every "
                           f"call") from None
    if bits == 8:
        raise SlowPath("int8 qlinear with groups or zero points dequantizes its weight on every call (torch's "
                       "packed int8 kernel is per-channel symmetric: quantize-weights{bits=8,group=0})")
    g = Q.group_size(group, k)
    why = f"group {g}" if g not in INT4_GROUPS else "an output dim not a multiple of 16"
    raise SlowPath(f"int4 qlinear with {why} dequantizes its weight on every call (torch's packed int4 kernel "
                   f"takes groups {'/'.join(map(str, INT4_GROUPS))} and output dims that are multiples of 16)")


def _aligned(t):
    """t itself if 64-byte aligned and contiguous, else an aligned copy: the int8 kernel's multi-row path
    (oneDNN) segfaults on a weight at an unaligned address, e.g. one read from a safetensors file
    (buffers made here are aligned again when a build is loaded: codegen/torch_fx.py)."""
    return t if t.is_contiguous() and t.data_ptr() % 64 == 0 else t.clone(memory_format=torch.contiguous_format)


def _prepack_int4(qweight, scales, zeros, g):
    codes = Q.unpack(qweight, 4)
    z = zeros.float() if zeros is not None else torch.full_like(scales, 8, dtype=torch.float32)
    s = scales.float()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
    # bf16 table: the CPU kernel's fast path takes bf16 activations (f32 runs ~20x slower, see module doc)
    table = torch.stack([s.t(), ((8 - z) * s).t()], -1).to(torch.bfloat16).contiguous()  # [in/group, out, 2]
    return {1: packed, 2: table}


@lowering("torch", "qlinear", prepack=prepack_qlinear)
def qlinear(x, qweight, scales, zeros=None, bias=None, *, bits, group):
    zeros, bias = _split_zeros_bias(zeros, bias)
    lead, k = x.shape[:-1], x.shape[-1]
    if bits == 4 and scales.dim() == 3:          # prepacked for the int4 CPU kernel
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, k).to(torch.bfloat16), qweight,
                                                       k // scales.shape[0], scales).to(x.dtype)
    elif bits == 8 and scales.dim() == 1:        # prepacked for the int8 per-channel kernel
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, k).to(torch.bfloat16), qweight, scales).to(x.dtype)
    else:
        return F.linear(x, Q.dequantize(qweight, scales, zeros, bits, group, x.dtype), bias)
    y = y.reshape(*lead, y.shape[-1])
    return y + bias if bias is not None else y
