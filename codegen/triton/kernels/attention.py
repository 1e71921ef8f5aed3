"""Triton kernels for `attention(q, k, v, mask?){causal, scale, window, sinks}` (ir/opset/nn.py):
softmax(q k^T * scale + mask) v, flash-style (online softmax over key blocks; no [Lq, Lk] score
matrix is ever stored, only the caller's mask is read, tile by tile).

Shapes: q [..., H, Lq, D], k [..., Hk, Lk, D], v [..., Hk, Lk, Dv] with H % Hk == 0 (GQA: query head h
reads key/value head h // (H / Hk), as `repeat_kv`); the leading dims of q, k, v are equal. mask
optional, bool (True = keep) or additive float, broadcastable to [..., H, Lq, Lk] (read through stride-0
views; the causal-LM convention's bool [b, 1, s, L+s] costs no copy). dtypes f32|f16|bf16 (q, k, v alike);
output [..., H, Lq, Dv] in q's dtype. scale defaults to 1/sqrt(D).

Keep rule per (query i, key j), with off = Lk - Lq (the end-aligned diagonal, a KV cache before the
queries): causal: j <= i + off; window > 0: j < sinks or (i + off) - j <= window (StreamingLLM,
arXiv:2309.17453); and the mask. Rows with no kept key give 0 (as torch's SDPA does).

Two kernels:
- prefill (Dao et al. 2022, FlashAttention, arXiv:2205.14135): grid (Lq blocks, batch*H); each program
  keeps its query block's running max / sum / accumulator in registers and loops over key blocks,
  skipping blocks that causal or the window (outside the sinks) exclude entirely.
- decode (split-KV, "Flash-Decoding", Dao et al. 2023): for Lq <= DECODE_MAX_Q; grid (batch*Hk, splits).
  The G = H/Hk query heads sharing a KV head and the Lq queries are stacked into one block of G*Lq rows,
  so each K/V tile is read once for all of them. Only the kept key range is split: the sinks followed by
  the window/causal span. Each split writes f32 (acc, max, sum) partials; a second pass (torch ops)
  rescales and adds them.

Tolerance vs the reference (tests/codegen/triton/test_triton_attention.py): f32 atol/rtol 1e-4;
f16/bf16 atol/rtol 2e-2 (probabilities are rounded to v's dtype before the P.V product).
"""
from __future__ import annotations
import math

import torch

from ...lowering import lowering
from ._common import (FLOATS, dot_precision, fallback, gpu_config, import_triton, launch, next_pow2, num_sms,
                      runnable, upcast_dot)

triton, tl = import_triton()

DECODE_MAX_Q = 16
DECODE_MAX_ROWS = 64


@triton.jit
def _tile(q, k_base, v_base, m_base, offs_m, offs_j, m_ok, off, Lk, scale, window, sinks,
          skn, skd, svn, svd, smm, smn, offs_d, offs_dv, D, DV,
          CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, MASK_KIND: tl.constexpr, PRECISION: tl.constexpr,
          UPCAST: tl.constexpr):
    """Scores of one key tile (real key indices offs_j) with every keep rule applied, and its V tile."""
    j_ok = (offs_j < Lk) & (offs_j >= 0)
    k = tl.load(k_base + offs_j[None, :] * skn + offs_d[:, None] * skd,
                mask=j_ok[None, :] & (offs_d < D)[:, None], other=0.0)
    if UPCAST:
        s = tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision=PRECISION) * scale
    else:
        s = tl.dot(q, k, input_precision=PRECISION) * scale
    keep = j_ok[None, :] & m_ok[:, None]
    diag = offs_m[:, None] + off
    if CAUSAL:
        keep = keep & (offs_j[None, :] <= diag)
    if HAS_WINDOW:
        keep = keep & ((offs_j[None, :] < sinks) | (diag - offs_j[None, :] <= window))
    if MASK_KIND == 1:
        mk = tl.load(m_base + offs_m[:, None] * smm + offs_j[None, :] * smn, mask=keep, other=0)
        keep = keep & (mk != 0)
    if MASK_KIND == 2:
        s = s + tl.load(m_base + offs_m[:, None] * smm + offs_j[None, :] * smn, mask=keep, other=0.0).to(tl.float32)
    s = tl.where(keep, s, float("-inf"))
    v = tl.load(v_base + offs_j[:, None] * svn + offs_dv[None, :] * svd,
                mask=j_ok[:, None] & (offs_dv < DV)[None, :], other=0.0)
    return s, v


@triton.jit
def _update(acc, l_i, m_i, s, v, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Online-softmax step: fold a tile's scores s and values v into (acc, sum, max)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    if UPCAST:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision=PRECISION)
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _prefill_kernel(q_ptr, k_ptr, v_ptr, m_ptr, o_ptr, H, GROUPS, Lq, Lk, D, DV, scale, window, sinks,
                    sqz, sqh, sqm, sqd, skz, skh, skn, skd, svz, svh, svn, svd,
                    smz, smh, smm, smn, soz, soh, som, sod,
                    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, MASK_KIND: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_zh = tl.program_id(1)
    z = pid_zh // H
    h = pid_zh % H
    hk = h // GROUPS
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_ok = offs_m < Lq
    q = tl.load(q_ptr + z * sqz + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=m_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    k_base = k_ptr + z * skz + hk * skh
    v_base = v_ptr + z * svz + hk * svh
    m_base = m_ptr + z * smz + h * smh
    off = Lk - Lq
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    hi = Lk
    if CAUSAL:
        hi = tl.minimum(Lk, tl.maximum(start_m + BLOCK_M + off, 0))
    lo = 0
    if HAS_WINDOW:   # keys before the window of this block's first query, except the sinks, are never kept
        lo = (tl.maximum(start_m + off - window, 0) // BLOCK_N) * BLOCK_N
        for start_n in range(0, tl.minimum(sinks, lo), BLOCK_N):
            s, v = _tile(q, k_base, v_base, m_base, offs_m, start_n + tl.arange(0, BLOCK_N), m_ok, off, Lk, scale,
                         window, sinks, skn, skd, svn, svd, smm, smn, offs_d, offs_dv, D, DV,
                         CAUSAL, HAS_WINDOW, MASK_KIND, PRECISION, UPCAST)
            acc, l_i, m_i = _update(acc, l_i, m_i, s, v, PRECISION, UPCAST)
    for start_n in range(lo, hi, BLOCK_N):
        s, v = _tile(q, k_base, v_base, m_base, offs_m, start_n + tl.arange(0, BLOCK_N), m_ok, off, Lk, scale,
                     window, sinks, skn, skd, svn, svd, smm, smn, offs_d, offs_dv, D, DV,
                     CAUSAL, HAS_WINDOW, MASK_KIND, PRECISION, UPCAST)
        acc, l_i, m_i = _update(acc, l_i, m_i, s, v, PRECISION, UPCAST)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(o_ptr + z * soz + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod,
             out.to(o_ptr.dtype.element_ty), mask=m_ok[:, None] & (offs_dv < DV)[None, :])


@triton.jit
def _decode_kernel(q_ptr, k_ptr, v_ptr, m_ptr, acc_ptr, ml_ptr, HK, GROUPS, Lq, Lk, D, DV, scale, window, sinks,
                   SINK_HI, LO, EFF, KPS, SPLITS,
                   sqz, sqh, sqm, sqd, skz, skh, skn, skd, svz, svh, svn, svd, smz, smh, smm, smn,
                   CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, MASK_KIND: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    pid_zk = tl.program_id(0)
    split = tl.program_id(1)
    z = pid_zk // HK
    hk = pid_zk % HK
    rows = tl.arange(0, BLOCK_R)                 # row r: query head hk*GROUPS + r // Lq, query r % Lq
    r_ok = rows < GROUPS * Lq
    h = hk * GROUPS + rows // Lq
    offs_m = rows % Lq
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + z * sqz + h[:, None] * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=r_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    k_base = k_ptr + z * skz + hk * skh
    v_base = v_ptr + z * svz + hk * svh
    off = Lk - Lq
    acc = tl.zeros([BLOCK_R, BLOCK_DV], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    m_i = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    # the mask's head stride is folded into its row pointer: m_base + offs_m * smm then reads row (h, i)
    m_base2 = m_ptr + z * smz + (h * smh)[:, None]
    for p0 in range(split * KPS, tl.minimum(split * KPS + KPS, EFF), BLOCK_N):
        offs_p = p0 + tl.arange(0, BLOCK_N)      # position in the kept key range: sinks, then [LO, ...)
        offs_j = tl.where(offs_p < SINK_HI, offs_p, offs_p - SINK_HI + LO)
        offs_j = tl.where(offs_p < EFF, offs_j, -1)
        s, v = _tile(q, k_base, v_base, m_base2, offs_m, offs_j, r_ok, off, Lk, scale, window, sinks,
                     skn, skd, svn, svd, smm, smn, offs_d, offs_dv, D, DV, CAUSAL, HAS_WINDOW, MASK_KIND, PRECISION,
                     UPCAST)
        acc, l_i, m_i = _update(acc, l_i, m_i, s, v, PRECISION, UPCAST)
    base = pid_zk * SPLITS + split
    tl.store(acc_ptr + (base * BLOCK_R + rows)[:, None] * BLOCK_DV + offs_dv[None, :], acc)
    tl.store(ml_ptr + (base * 2) * BLOCK_R + rows, m_i)
    tl.store(ml_ptr + (base * 2 + 1) * BLOCK_R + rows, l_i)


def _blocks(device):
    """(BLOCK_M, BLOCK_N) of the prefill kernel: 64x64 on a GPU; 16x16 under the interpreter, so that
    small test shapes span several blocks."""
    return (64, 64) if gpu_config(device) else (16, 16)


def _strides4(t):
    return [0 if n == 1 else s for n, s in zip(t.shape, t.stride())]


def _check(q, k, v, mask):
    why = runnable(q, k, v, mask)
    if why is not None:
        return why
    if q.dtype not in FLOATS or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtypes q {q.dtype}, k {k.dtype}, v {v.dtype}"
    if q.dim() < 3 or k.dim() != q.dim() or v.dim() != q.dim():
        return f"ranks q {q.dim()}, k {k.dim()}, v {v.dim()}"
    if q.shape[:-3] != k.shape[:-3] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        return f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if k.shape[-3] == 0 or q.shape[-3] % k.shape[-3]:
        return f"{q.shape[-3]} query heads over {k.shape[-3]} key/value heads"
    if mask is not None and mask.dtype != torch.bool and mask.dtype not in FLOATS:
        return f"mask dtype {mask.dtype}"
    if max(q.shape[-1], v.shape[-1]) > 256:
        return f"head dim {max(q.shape[-1], v.shape[-1])} > 256"
    if 0 in q.shape or 0 in v.shape[-1:] or k.shape[-2] == 0:
        return "an empty input"
    return None


@lowering("triton", "attention")
def attention(q, k, v, mask=None, *, causal=False, scale=None, window=0, sinks=0, softcap=0.0):
    """The `attention` op: decode kernel for Lq <= DECODE_MAX_Q, else prefill (module docstring); a
    soft-capped one (Gemma 2) runs the reference (the kernels have no tanh cap)."""
    if softcap:
        return fallback("attention", "a logit soft-cap", q, k, v, mask, causal=causal, scale=scale, window=window,
                        sinks=sinks, softcap=softcap)
    why = _check(q, k, v, mask)
    mask4 = None
    if why is None and mask is not None:
        try:
            mask4 = mask.expand(*q.shape[:-1], k.shape[-2])
        except RuntimeError:
            why = f"mask {tuple(mask.shape)} does not broadcast to the scores"
    if why is not None:
        return fallback("attention", why, q, k, v, mask, causal=causal, scale=scale, window=window, sinks=sinks,
                        softcap=softcap)
    lead, (h, lq, d), (hk, lk, dv) = q.shape[:-3], q.shape[-3:], v.shape[-3:]
    q4, k4, v4 = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
    kind = 0
    if mask4 is not None:
        mask4 = mask4.reshape(-1, h, lq, lk)
        kind = 1 if mask4.dtype == torch.bool else 2
        if kind == 1:
            mask4 = mask4.view(torch.uint8)
    m_arg = mask4 if mask4 is not None else q4
    m_strides = _strides4(mask4) if mask4 is not None else [0, 0, 0, 0]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    groups = h // hk
    consts = dict(CAUSAL=bool(causal), HAS_WINDOW=window > 0, MASK_KIND=kind, BLOCK_D=max(16, next_pow2(d)),
                  BLOCK_DV=max(16, next_pow2(dv)), PRECISION=dot_precision(q.dtype),
                  UPCAST=upcast_dot(q.dtype))
    common = (scale, int(window), int(sinks))
    if lq <= DECODE_MAX_Q and groups * lq <= DECODE_MAX_ROWS:
        out = _decode(q4, k4, v4, m_arg, m_strides, groups, common, consts)
    else:
        out = torch.empty(q4.shape[0], h, lq, dv, dtype=q.dtype, device=q.device)
        block_m, block_n = _blocks(q.device)
        grid = (triton.cdiv(lq, block_m), q4.shape[0] * h)
        launch(_prefill_kernel, grid, q4, k4, v4, m_arg, out, h, groups, lq, lk, d, dv, *common,
               *q4.stride(), *k4.stride(), *v4.stride(), *m_strides, *out.stride(),
               BLOCK_M=block_m, BLOCK_N=block_n, **consts)
    return out.reshape(*lead, h, lq, dv)


def kept_range(lq: int, lk: int, window: int, sinks: int) -> tuple[int, int, int]:
    """(sink_hi, lo, hi): every kept key lies in [0, sink_hi) or [lo, hi), for all queries together
    (causal never cuts the end: the last query's end-aligned diagonal is the last key)."""
    lo = max(0, lk - lq - window) if window > 0 else 0
    sink_hi = min(sinks, lo) if window > 0 else 0
    return sink_hi, lo, lk


def _decode(q4, k4, v4, m_arg, m_strides, groups, common, consts):
    z, h, lq, _ = q4.shape
    hk, lk, dv = v4.shape[1:]
    sink_hi, lo, hi = kept_range(lq, lk, common[1], common[2])
    eff = sink_hi + hi - lo
    block_n = 64 if gpu_config(q4.device) else 16
    n_blocks = max(1, triton.cdiv(eff, block_n))
    want = max(1, min(n_blocks, (2 * num_sms(q4.device)) // (z * hk)))
    kps = triton.cdiv(n_blocks, want) * block_n
    splits = max(1, triton.cdiv(eff, kps))
    block_r = max(16, next_pow2(groups * lq))
    bdv = consts["BLOCK_DV"]
    acc = torch.empty(z * hk, splits, block_r, bdv, dtype=torch.float32, device=q4.device)
    ml = torch.empty(z * hk, splits, 2, block_r, dtype=torch.float32, device=q4.device)
    launch(_decode_kernel, (z * hk, splits), q4, k4, v4, m_arg, acc, ml, hk, groups, lq, lk, q4.shape[-1], dv,
           *common, sink_hi, lo, eff, kps, splits, *q4.stride(), *k4.stride(), *v4.stride(), *m_strides,
           BLOCK_R=block_r, BLOCK_N=block_n, **consts)
    rows = groups * lq
    acc, m, l = acc[:, :, :rows, :dv], ml[:, :, 0, :rows], ml[:, :, 1, :rows]
    mx = m.amax(1, keepdim=True)
    w = torch.exp(m - torch.where(torch.isinf(mx), torch.zeros_like(mx), mx))   # 0 for splits that kept nothing
    total = (l * w).sum(1)
    out = (acc * w[..., None]).sum(1) / torch.where(total == 0, torch.ones_like(total), total)[..., None]
    return out.view(z, hk, groups, lq, dv).reshape(z, h, lq, dv).to(q4.dtype)
