"""Triton kernels for `qlinear` (ir/opset/quant.py): y = x @ dequantize(qweight, scales, zeros)^T + bias,
int4 and int8 weight-only quantization, computed from packed weights (no float weight is kept).

Shapes and dtypes: x f32|f16|bf16 [..., K] -> y [..., N] in x's dtype; bias [N] (any float dtype);
scales f32|f16; zeros optional (int4 implied zero 8, int8 implied 0), groups along K (group 0 = per row).

Packed layout (made once by `prepack`, or per call when the weight inputs are not constants). K is
padded to Kp = a multiple of CHUNK = 64, split into chunks of 64 values; chunk c covers k = 64c .. 64c+63:
- int4 qweight: u8 [Kp/2, N] (K-major, so a program's loads run along N, coalesced). Byte row
  32c + i holds code k = 64c + i in its low nibble and k = 64c + 32 + i in its high nibble (a "half-split"
  nibble order: the two nibbles of a byte row feed two [32, BLOCK_N] tiles, no interleave in registers).
- int8 qweight: i8 [Kp, N] (K-major).
- table: [K/group, 2, N] in the scales' dtype: [g, 0, n] = scale, [g, 1, n] = zero point (exact small
  integers), so w = (q - zero) * scale is computed in f32 exactly as ir/quant_format.py does.
- zeros input: replaced by an empty 2-D tensor (the zero points live in the table).
The launcher recognizes a prepacked call by the 3-d table in the scales position.

Paths (chosen per call from M = rows of x):
- GEMV, M <= GEMV_MAX_M (decode): grid (N blocks, K splits, M). Each program dequantizes [32, BLOCK_N]
  tiles in registers and accumulates x * w elementwise into a [32, BLOCK_N] f32 tile, reduced over k once
  after its loop. Codes become floats by the exponent trick ((q | 0x4B000000) read as f32 = 2**23 + q: an
  integer op, not a conversion); when a group spans whole chunks, scale and zero point are one load per
  column and chunk. Split-K writes f32 partials [splits, M, N] that `_splitk_sum_kernel` adds in a fixed
  order with the bias (deterministic, no atomics); without a split the kernel writes y itself.
- GEMM, larger M (prefill): grid (M blocks, N blocks, K splits; split-K only while M x N blocks are
  fewer than `waves` per SM, e.g. M=16 at N=4096, with the same partials + sum); each chunk is two tl.dot of
  x [BLOCK_M, 32] with dequantized w [32, BLOCK_N] tiles cast to x's dtype (as the reference casts the
  weight), f32 accumulation; f32 inputs use input_precision="ieee" (no TF32). Block sizes: BLOCK_M = next power
  of two of M in [16, 64]; BLOCK_N, warps and split-K occupancy from `GEMV` / `GEMM` (`Config`; no
  autotune yet). Measured on an H200 (benchmarks/RESULTS.md): 17-25% of the copy bandwidth, 0.85-1.17x
  cuBLAS bf16 in CUDA graphs; far from the issue's bar, and only one sweep of the old kernel informs `Config`.

Tolerance vs the reference impl (tests/codegen/triton/test_triton_qlinear.py): f32 atol/rtol 1e-4
(summation order only); f16/bf16 compared as (y - ref).abs().max() <= 2e-2 * ref.abs().max() (the
reference rounds the dequantized weight and the output to x's dtype; GEMV keeps the weight in f32).

Source: the packed format is ONNX MatMulNBits-style (ir/quant_format.py); split-K GEMV as in
"Stream-K" / FasterTransformer weight-only GEMV; the half-split nibble order is this module's own.
"""
from __future__ import annotations
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ....ir import quant_format as Q
from ...lowering import lowering
from ...torch_kernels import SlowPath
from ._common import (FLOATS, dot_precision, fallback, import_triton, launch, next_pow2, num_sms, runnable,
                      upcast_dot, warn_once)

triton, tl = import_triton()

CHUNK = 64            # K values per packed chunk
HALF = CHUNK // 2     # byte rows per chunk (int4)
GEMV_MAX_M = 4
SUM_BLOCK = 512       # columns per program of the split-K sum


@dataclass(frozen=True)
class Config:
    """Launch parameters of one path: BLOCK_N, warps per program, and `waves` = programs per SM that
    split-K aims for. The defaults are the best of one H200 sweep of the previous kernel (RESULTS.md);
    benchmarks/bench_triton.py --sweep measures alternatives on a GPU."""
    block_n: int = 64
    num_warps: int = 4
    waves: int = 2


GEMV = Config(128, 4, 4)    # the best of the first H200 sweep (old kernel, RESULTS.md); re-swept since
GEMM = Config(128, 4, 2)


def _zeros_bias(zeros, bias):
    if zeros is not None and not Q.is_zeros(zeros):  # symmetric with a bias: the 4th input is the bias
        return None, zeros
    return zeros, bias


def pack_weight(qweight, scales, zeros, bits: int, group: int):
    """(qweight [N, K or K/2], scales, zeros?) in ir/quant_format.py's layout -> (packed weight, table)
    in this module's layout (module docstring)."""
    n, k = qweight.shape[0], Q.logical_in_dim(qweight.shape, bits)
    kp = -(-k // CHUNK) * CHUNK
    codes = Q.unpack(qweight, bits)
    if kp != k:
        codes = F.pad(codes, (0, kp - k))
    if bits == 4:
        c = codes.to(torch.uint8).view(n, kp // CHUNK, 2, HALF)
        packed = (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(n, kp // 2)
    else:
        packed = codes.to(torch.int8)
    z = zeros if zeros is not None else torch.full_like(scales, Q.implied_zero(bits))
    dt = torch.promote_types(scales.dtype, z.dtype)     # f32 float zero points keep f16 scales' table in f32
    table = torch.stack([scales.t().to(dt), z.t().to(dt)], 1)   # [G, 2, N]
    return packed.t().contiguous(), table.contiguous()


def unpack_weight(packed, table, bits: int, k: int, dtype=torch.float32):
    """Inverse of `pack_weight`, to float W [N, K] (the fallback for prepacked inputs)."""
    w = packed.t()
    n = w.shape[0]
    if bits == 4:
        lo, hi = (w & 0xF).view(n, -1, 1, HALF), (w >> 4).view(n, -1, 1, HALF)
        codes = torch.cat([lo, hi], 2).reshape(n, -1)
    else:
        codes = w
    codes = codes[:, :k].float()
    g = k // table.shape[0]
    s = table[:, 0].t().float().repeat_interleave(g, 1)
    z = table[:, 1].t().float().repeat_interleave(g, 1)
    return ((codes - z) * s).to(dtype)


def prepack_qlinear(node, const: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Lowering prepack hook: {1: packed weight, 2: table, 3: empty zeros} for constant weights;
    SlowPath (pack on every call) when the packed inputs are computed."""
    if 1 not in const or 2 not in const:
        raise SlowPath("qlinear with computed (non-weight) packed inputs repacks them on every call")
    bits, group = node.attrs["bits"], node.attrs["group"]
    zeros = const.get(3)
    has_zeros = zeros is not None and Q.is_zeros(zeros)
    packed, table = pack_weight(const[1], const[2], zeros if has_zeros else None, bits, group)
    out = {1: packed, 2: table}
    if has_zeros:
        out[3] = torch.empty(0, 0, dtype=zeros.dtype, device=zeros.device)   # 2-D: still read as zeros
    return out


@triton.jit
def _qgemv_kernel(x_ptr, w_ptr, t_ptr, b_ptr, y_ptr, M, N, K, GSIZE, CPS, NCH, stride_xm, stride_ym,
                  BITS: tl.constexpr, H: tl.constexpr, BLOCK_N: tl.constexpr, UNIFORM: tl.constexpr,
                  EVEN_N: tl.constexpr, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    offs_i = tl.arange(0, H)
    # codes become floats by the exponent trick: (q | 0x4B000000) read as f32 is 2**23 + q exactly (an integer
    # op instead of a conversion, which runs at a quarter of the FMA rate); subtracting OFF gives the code
    # exactly (int8 codes are first shifted by +128 to be non-negative). The zero point is subtracted after, not
    # folded into OFF: float zero points (Q4_1) would lose their fraction at 2**23.
    OFF: tl.constexpr = 8388608.0 if BITS == 4 else 8388736.0
    acc = tl.zeros([H, BLOCK_N], dtype=tl.float32)     # reduced across k once, after the loop
    c0 = pid_s * CPS
    c1 = tl.minimum(c0 + CPS, NCH)
    for c in range(c0, c1):
        k_lo = c * 2 * H + offs_i
        k_hi = k_lo + H
        x_lo = tl.load(x_ptr + m * stride_xm + k_lo, mask=k_lo < K, other=0.0).to(tl.float32)
        x_hi = tl.load(x_ptr + m * stride_xm + k_hi, mask=k_hi < K, other=0.0).to(tl.float32)
        if BITS == 4:   # the packed rows are padded to whole chunks: only N needs a mask
            w_rows = (c * H + offs_i)[:, None] * N + offs_n[None, :]
            if EVEN_N:
                b = tl.load(w_ptr + w_rows).to(tl.int32)
            else:
                b = tl.load(w_ptr + w_rows, mask=nmask[None, :], other=0).to(tl.int32)
            q_lo = ((b & 15) | 0x4B000000).to(tl.float32, bitcast=True) - OFF
            q_hi = ((b >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - OFF
        else:
            lo_rows = k_lo[:, None] * N + offs_n[None, :]
            hi_rows = k_hi[:, None] * N + offs_n[None, :]
            if EVEN_N:
                b_lo = tl.load(w_ptr + lo_rows).to(tl.int32)
                b_hi = tl.load(w_ptr + hi_rows).to(tl.int32)
            else:
                b_lo = tl.load(w_ptr + lo_rows, mask=nmask[None, :], other=0).to(tl.int32)
                b_hi = tl.load(w_ptr + hi_rows, mask=nmask[None, :], other=0).to(tl.int32)
            q_lo = ((b_lo + 128) | 0x4B000000).to(tl.float32, bitcast=True) - OFF
            q_hi = ((b_hi + 128) | 0x4B000000).to(tl.float32, bitcast=True) - OFF
        if UNIFORM:   # the whole chunk is in one group: one scale and zero point per column
            g = (c * 2 * H) // GSIZE
            if EVEN_N:
                s = tl.load(t_ptr + g * 2 * N + offs_n).to(tl.float32)
                z = tl.load(t_ptr + g * 2 * N + N + offs_n).to(tl.float32)
            else:
                s = tl.load(t_ptr + g * 2 * N + offs_n, mask=nmask, other=0.0).to(tl.float32)
                z = tl.load(t_ptr + g * 2 * N + N + offs_n, mask=nmask, other=0.0).to(tl.float32)
            acc += x_lo[:, None] * ((q_lo - z[None, :]) * s[None, :])
            acc += x_hi[:, None] * ((q_hi - z[None, :]) * s[None, :])
        else:
            g_lo = (tl.minimum(k_lo, K - 1) // GSIZE)[:, None] * 2 * N + offs_n[None, :]
            g_hi = (tl.minimum(k_hi, K - 1) // GSIZE)[:, None] * 2 * N + offs_n[None, :]
            tm = nmask[None, :] & (offs_i >= 0)[:, None]
            w_lo = (q_lo - tl.load(t_ptr + g_lo + N, mask=tm, other=0.0).to(tl.float32)) \
                * tl.load(t_ptr + g_lo, mask=tm, other=0.0).to(tl.float32)
            w_hi = (q_hi - tl.load(t_ptr + g_hi + N, mask=tm, other=0.0).to(tl.float32)) \
                * tl.load(t_ptr + g_hi, mask=tm, other=0.0).to(tl.float32)
            acc += x_lo[:, None] * w_lo + x_hi[:, None] * w_hi
    y = tl.sum(acc, axis=0)
    if PARTIAL:   # split-K: f32 partials [splits, M, N], added (with the bias) by _splitk_sum_kernel
        tl.store(y_ptr + (pid_s * M + m) * N + offs_n, y, mask=nmask)
    else:
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
        tl.store(y_ptr + m * stride_ym + offs_n, y.to(y_ptr.dtype.element_ty), mask=nmask)


@triton.jit
def _splitk_sum_kernel(p_ptr, b_ptr, y_ptr, M, N, S, stride_ym, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr):
    """y[m, n] = sum_s partials[s, m, n] (+ bias[n]) in a fixed order (deterministic, no atomics)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = tl.program_id(1)
    mask = offs < N
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(0, S):
        acc += tl.load(p_ptr + (s * M + m) * N + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_ym + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _qgemm_kernel(x_ptr, w_ptr, t_ptr, b_ptr, y_ptr, M, N, K, GSIZE, CPS, stride_xm, stride_ym,
                  BITS: tl.constexpr, H: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                  UNIFORM: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = offs_m < M
    nmask = offs_n < N
    offs_i = tl.arange(0, H)
    OFF: tl.constexpr = 8388608.0 if BITS == 4 else 8388736.0   # the exponent trick of _qgemv_kernel
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for c in range(pid_s * CPS, tl.minimum(pid_s * CPS + CPS, tl.cdiv(K, 2 * H))):
        k_lo = c * 2 * H + offs_i
        k_hi = k_lo + H
        lo_ok = k_lo < K
        hi_ok = k_hi < K
        x_lo = tl.load(x_ptr + offs_m[:, None] * stride_xm + k_lo[None, :], mask=mmask[:, None] & lo_ok[None, :],
                       other=0.0)
        x_hi = tl.load(x_ptr + offs_m[:, None] * stride_xm + k_hi[None, :], mask=mmask[:, None] & hi_ok[None, :],
                       other=0.0)
        wm = nmask[None, :] & (offs_i >= 0)[:, None]    # packed rows are padded to whole chunks
        if BITS == 4:
            b = tl.load(w_ptr + (c * H + offs_i)[:, None] * N + offs_n[None, :], mask=wm, other=0).to(tl.int32)
            q_lo = ((b & 15) | 0x4B000000).to(tl.float32, bitcast=True) - OFF
            q_hi = ((b >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - OFF
        else:
            b_lo = tl.load(w_ptr + k_lo[:, None] * N + offs_n[None, :], mask=wm, other=0).to(tl.int32)
            b_hi = tl.load(w_ptr + k_hi[:, None] * N + offs_n[None, :], mask=wm, other=0).to(tl.int32)
            q_lo = ((b_lo + 128) | 0x4B000000).to(tl.float32, bitcast=True) - OFF
            q_hi = ((b_hi + 128) | 0x4B000000).to(tl.float32, bitcast=True) - OFF
        if UNIFORM:   # one group per chunk: a scale and zero point per column
            g = (c * 2 * H) // GSIZE
            s = tl.load(t_ptr + g * 2 * N + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
            z = tl.load(t_ptr + g * 2 * N + N + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
            w_lo = (q_lo - z) * s
            w_hi = (q_hi - z) * s
        else:
            g_lo = (tl.minimum(k_lo, K - 1) // GSIZE)[:, None] * 2 * N + offs_n[None, :]
            g_hi = (tl.minimum(k_hi, K - 1) // GSIZE)[:, None] * 2 * N + offs_n[None, :]
            w_lo = (q_lo - tl.load(t_ptr + g_lo + N, mask=wm, other=0.0).to(tl.float32)) \
                * tl.load(t_ptr + g_lo, mask=wm, other=0.0).to(tl.float32)
            w_hi = (q_hi - tl.load(t_ptr + g_hi + N, mask=wm, other=0.0).to(tl.float32)) \
                * tl.load(t_ptr + g_hi, mask=wm, other=0.0).to(tl.float32)
        if UPCAST:
            acc = tl.dot(x_lo.to(tl.float32), w_lo.to(x_lo.dtype).to(tl.float32), acc, input_precision=PRECISION)
            acc = tl.dot(x_hi.to(tl.float32), w_hi.to(x_hi.dtype).to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(x_lo, w_lo.to(x_lo.dtype), acc, input_precision=PRECISION)
            acc = tl.dot(x_hi, w_hi.to(x_hi.dtype), acc, input_precision=PRECISION)
    if PARTIAL:   # split-K: f32 partials [splits, M, N], added (with the bias) by _splitk_sum_kernel
        tl.store(y_ptr + (pid_s * M + offs_m)[:, None] * N + offs_n[None, :], acc,
                 mask=mmask[:, None] & nmask[None, :])
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=mmask[:, None] & nmask[None, :])


def split_k(n_chunks: int, n_blocks: int, device, waves: int = 2) -> tuple[int, int]:
    """(splits, chunks per split): about `waves` programs per SM over (M x N blocks) x K splits."""
    want = max(1, min(n_chunks, (waves * num_sms(device)) // max(1, n_blocks)))
    cps = -(-n_chunks // want)
    return -(-n_chunks // cps), cps


def run_packed(x2, packed, table, bias, bits: int, force: str | None = None, config: Config | None = None):
    """y [M, N] = x2 [M, K] (contiguous) times the packed weight (module docstring), + bias. `force`
    picks the path ("gemv" | "gemm") instead of M; `config` overrides that path's launch parameters."""
    m, k = x2.shape
    n = packed.shape[1]
    gsize = k // table.shape[0]
    path = force or ("gemv" if m <= GEMV_MAX_M else "gemm")
    if path == "gemv":
        n_chunks = -(-k // CHUNK)
        cfg = config or GEMV
        n_blocks = triton.cdiv(n, cfg.block_n)
        splits, cps = split_k(n_chunks, n_blocks * m, x2.device, cfg.waves)
        y, part, b = _outputs(x2, n, splits, bias, table)
        launch(_qgemv_kernel, (n_blocks, splits, m), x2, packed, table, b, part, m, n, k, gsize, cps, n_chunks,
               x2.stride(0), y.stride(0), BITS=bits, H=HALF, BLOCK_N=cfg.block_n, UNIFORM=gsize % CHUNK == 0,
               EVEN_N=n % cfg.block_n == 0, HAS_BIAS=bias is not None, PARTIAL=splits > 1, num_warps=cfg.num_warps)
        return _add_partials(part, b, y, bias is not None)
    cfg = config or GEMM
    block_m, block_n = min(64, max(16, next_pow2(m))), cfg.block_n
    grid_mn = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    splits, cps = split_k(-(-k // CHUNK), grid_mn[0] * grid_mn[1], x2.device, cfg.waves)
    y, part, b = _outputs(x2, n, splits, bias, table)
    launch(_qgemm_kernel, (*grid_mn, splits), x2, packed, table, b, part, m, n, k, gsize, cps, x2.stride(0),
           part.stride(-2), BITS=bits, H=HALF, BLOCK_M=block_m, BLOCK_N=block_n, HAS_BIAS=bias is not None,
           PARTIAL=splits > 1, PRECISION=dot_precision(x2.dtype), UPCAST=upcast_dot(x2.dtype),
           UNIFORM=gsize % CHUNK == 0, num_warps=cfg.num_warps)
    return _add_partials(part, b, y, bias is not None)


def _outputs(x2, n: int, splits: int, bias, table):
    """(y [M, n] in x's dtype, where the kernel writes: y itself, or f32 partials [splits, M, n] under split-K,
    the bias pointer: the bias, or any tensor when there is none)."""
    y = torch.empty(x2.shape[0], n, dtype=x2.dtype, device=x2.device)
    part = torch.empty(splits, *y.shape, dtype=torch.float32, device=x2.device) if splits > 1 else y
    return y, part, bias if bias is not None else table


def _add_partials(part, b, y, has_bias: bool):
    """y = the split-K partials summed in order (+ bias) by _splitk_sum_kernel; y as is without a split."""
    if part is not y:
        m, n = y.shape
        launch(_splitk_sum_kernel, (triton.cdiv(n, SUM_BLOCK), m), part, b, y, m, n, part.shape[0], y.stride(0),
               BLOCK=SUM_BLOCK, HAS_BIAS=has_bias, num_warps=4)
    return y


def _check_k(k, qweight, scales, bits, group, prepacked):
    """ValueError unless x's last dim k is the weight's input dim (a wrong k would read the wrong groups)."""
    if prepacked:
        kp = qweight.shape[0] * (2 if bits == 4 else 1)
        groups = scales.shape[0]
        ok = kp == -(-k // CHUNK) * CHUNK and k % groups == 0 \
            and (groups == 1 if group == 0 else k // groups == group)     # one group of `group` columns is fine
        w = f"prepacked weight for in={kp} (padded) with {scales.shape[0]} groups"
    else:
        ok = k == Q.logical_in_dim(qweight.shape, bits)
        w = f"weight in={Q.logical_in_dim(qweight.shape, bits)}"
    if not ok:
        raise ValueError(f"triton qlinear: input last dim {k} does not match the {w} (group={group})")


@lowering("triton", "qlinear", prepack=prepack_qlinear)
def qlinear(x, qweight, scales, zeros=None, bias=None, *, bits, group):
    """The `qlinear` op on prepacked (`prepack_qlinear`) or raw (ir/quant_format.py) weights."""
    zeros, bias = _zeros_bias(zeros, bias)
    prepacked = scales.dim() == 3
    why = runnable(x, qweight, scales, bias)
    if why is None and x.dtype not in FLOATS:
        why = f"activation dtype {x.dtype}"
    if why is None and bits not in (4, 8):
        why = f"bits={bits}"
    if why is not None:
        if prepacked:
            w = unpack_weight(qweight, scales, bits, x.shape[-1], x.dtype)
            warn_once("qlinear", why)   # the reference impl cannot read the packed layout
            return F.linear(x, w, bias)
        return fallback("qlinear", why, x, qweight, scales, zeros, bias, bits=bits, group=group)
    lead, k = x.shape[:-1], x.shape[-1]
    _check_k(k, qweight, scales, bits, group, prepacked)
    if not prepacked:
        qweight, scales = pack_weight(qweight, scales, zeros, bits, group)
    if x.numel() == 0:
        return x.new_zeros(*lead, qweight.shape[1])
    y = run_packed(x.reshape(-1, k).contiguous(), qweight, scales, bias, bits)
    return y.reshape(*lead, y.shape[-1])
