"""Packed low-bit weight storage shared by the `dequantize`/`qlinear` ops, the quantize passes
and the codegens.

Layout of a weight W[out, in] quantized with `bits` and `group` (0 = one group per row):

- qweight: int8 -> i8[out, in] (q in -128..127); int4 -> u8[out, in/2], two values per byte,
  column 2k in the low nibble and 2k+1 in the high nibble (q in 0..15).
- scales:  f32 or f16 [out, in/group]; groups run along the input dim (K), as ONNX
  MatMulNBits and torch's int4 kernels block them.
- zeros:   optional, same shape as scales: integer zero points stored as u8 (int4) or i8 (int8), or
  float zero points (f32, `zero_point=float`), which put the grid anywhere: W = d * q + m with
  d = scale and m = -zero * scale, the form of GGUF's Q4_1 and of torch's int4 kernel (its zero is a
  float offset). Without zeros the code is symmetric: int4 uses the implied zero point 8, int8 uses 0.

    W[o, k] = (q[o, k] - zero[o, k // group]) * scale[o, k // group]

`qlinear`'s optional 4th input is the zeros when it is 2-D ([out, in/group]) and the bias when 1-D
([out]) (`is_zeros`).
"""
from __future__ import annotations
import torch

SUPPORTED_BITS = (4, 8)


def qrange(bits: int) -> tuple[int, int]:
    """Range of the stored integer codes."""
    return (0, 15) if bits == 4 else (-128, 127)


def is_zeros(t) -> bool:
    """Is `t` (a tensor, or anything with `.dim()`/`.rank`) zero points [out, groups] rather than a bias [out]?"""
    return (t.rank if hasattr(t, "rank") else t.dim()) == 2


def implied_zero(bits: int) -> int:
    return 8 if bits == 4 else 0


def check_bits(bits: int, where: str = ""):
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"{where}bits={bits} is not supported; use 8 (int8) or 4 (int4, two per byte)")


def group_size(group: int, in_dim: int) -> int:
    return in_dim if group == 0 else group


def groups_that_fit(in_dim: int) -> list[int]:
    """The even group sizes from 8 to 256 that divide `in_dim` (e.g. 72: [8, 12, 18, 24, 36, 72]); group=0
    (per channel) always fits."""
    return [g for g in range(8, min(in_dim, 256) + 1, 2) if in_dim % g == 0]


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes [out, in] (any int dtype, already in `qrange`) -> stored qweight."""
    if bits == 8:
        return q.to(torch.int8)
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even input dim, got {tuple(q.shape)}")
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """Stored qweight -> integer codes [out, in] as int32."""
    if bits == 8:
        return qweight.to(torch.int32)
    lo, hi = qweight & 0xF, qweight >> 4
    return torch.stack([lo, hi], -1).flatten(-2).to(torch.int32)


def logical_in_dim(qweight_shape, bits: int):
    return qweight_shape[-1] * 2 if bits == 4 else qweight_shape[-1]


def dequantize(qweight, scales, zeros, bits: int, group: int, dtype=torch.float32) -> torch.Tensor:
    q = unpack(qweight, bits)
    out, k = q.shape
    g = group_size(group, k)
    z = zeros.to(torch.float32) if zeros is not None else torch.full_like(scales, implied_zero(bits),
                                                                          dtype=torch.float32)
    w = (q.view(out, k // g, g).float() - z.unsqueeze(-1)) * scales.float().unsqueeze(-1)
    return w.view(out, k).to(dtype)


def quantize_rtn(w: torch.Tensor, bits: int, group: int, sym: bool, clip: torch.Tensor | float = 1.0,
                 float_zero: bool = False):
    """Round-to-nearest with min/max scales per (row, group). `clip` (scalar or [out, groups])
    shrinks the range, as AWQ's clip search and GPTQ's mse grid do. Returns codes, scales, zeros."""
    out, k = w.shape
    g = group_size(group, k)
    wg = w.float().view(out, k // g, g)
    scales, zeros = qparams(wg.amin(-1), wg.amax(-1), bits, sym, clip, float_zero)
    q = fake_codes(wg, scales, zeros, bits)
    return q.view(out, k), scales, zeros


def qparams(wmin, wmax, bits: int, sym: bool, clip=1.0, float_zero: bool = False):
    """Scales and zero points (as float) for ranges [wmin, wmax] (any shape). Integer zero points need a
    range that includes 0; float ones (`float_zero`, asymmetric only) map wmin to code `lo` and wmax to
    `hi` exactly (llama.cpp's Q4_1 quantizer: d = (max - min) / 15, m = min), and `clip` shrinks the
    range around its middle instead of towards 0."""
    lo, hi = qrange(bits)
    if float_zero and not sym:
        mid, half = (wmax + wmin) / 2, (wmax - wmin) / 2 * clip
        scales = (2 * half / (hi - lo)).clamp_min(1e-8)
        return scales, lo - (mid - half) / scales
    wmin, wmax = wmin * clip, wmax * clip
    if sym:
        amax = torch.maximum(wmin.abs(), wmax.abs()).clamp_min(1e-8)
        # int4 symmetric: codes 0..15 around the implied zero 8 (GPTQ's convention)
        scales = amax * 2 / 15 if bits == 4 else amax / 127
        zeros = torch.full_like(scales, implied_zero(bits))
    else:
        wmin, wmax = wmin.clamp_max(0), wmax.clamp_min(0)
        scales = ((wmax - wmin) / (hi - lo)).clamp_min(1e-8)
        zeros = (lo - torch.round(wmin / scales)).clamp(lo, hi)
    return scales, zeros


def fake_codes(wg, scales, zeros, bits: int):
    """Codes of weights `wg` [..., g] for per-group `scales`, `zeros` [...] (`round_codes`)."""
    return round_codes(wg, scales.unsqueeze(-1), zeros.unsqueeze(-1), bits)


def round_codes(w, s, z, bits: int):
    """clamp(round(w / s + z)) with integer zero points added after rounding (so integer results do not
    depend on how a tie rounds after the shift) and float ones before it."""
    lo, hi = qrange(bits)
    zi = torch.round(z)
    return torch.clamp(torch.round(w / s + (z - zi)) + zi, lo, hi)


def store(q, scales, zeros, bits: int, sym: bool, scale_dtype=torch.float32, float_zero: bool = False):
    """Codes/scales/zeros from a quantizer -> (qweight, scales, zeros or None) as stored (float zero
    points in f32 whatever the scales' dtype: |zero| reaches hundreds when a group's range is far from 0).
    A float zero point follows its scale's rounding: the group minimum (lo - zero) * scale (lo: the lowest code,
    0 for int4, -128 for int8) keeps its f32 value with f32 scales and is rounded to the scales' dtype with f16
    ones (GGUF Q4_1's block: an f16 scale and an f16 minimum; the `cpu` target's W4A8/W8A8 panels then hold it
    in f16, kernels.pack_vnni_panels)."""
    zdt = torch.float32 if float_zero else torch.uint8 if bits == 4 else torch.int8
    stored = scales.to(scale_dtype)
    if scale_dtype != torch.float32:   # keep every scale a normal number of its dtype (1e-8 is 0 in f16)
        stored = stored.clamp_min(torch.finfo(scale_dtype).tiny)
    if float_zero and not sym:         # keep the (negated) minimum m = (z - lo) * s, in the scales' dtype
        lo = qrange(bits)[0]
        m = (zeros - lo) * scales
        if scale_dtype != torch.float32:
            m16 = m.to(scale_dtype).float()
            m = torch.where(torch.isfinite(m16), m16, m)
        zeros = m / stored.float() + lo
    return pack(q.to(torch.int32), bits), stored, (None if sym else zeros.to(zdt))
