"""GPTQ (Frantar et al. 2022): quantize a weight column by column, each rounding error
compensated on the not-yet-quantized columns through the inverse Hessian of the layer input.

    W[out, in], H = X^T X / n  ->  codes, scales, zeros   (layout: ir/quant_format.py)

Damping (`damp` x mean diag), act-order (columns in order of decreasing H diagonal), lazy
batch updates (`block` columns at a time, then one matmul for the rest). Groups stay contiguous
along the input dim so the result packs into the standard layout: with act-order the scales
of each group are fixed up front from the weights (AutoGPTQ's static groups), with the clip
ratio searched on the H-weighted error (`clip_search`). With `refit`, for symmetric int4 the search
also tries the two scales that put a group's largest |w| exactly on a grid end (+7 or -8 levels: the grid
-8..7 is not symmetric, llama.cpp's Q4_0 quantizer picks its scale the same way).

`refit` (after the column loop, codes fixed): each row's group scales are re-solved by least
squares on the output error, min_s (W - Q(s)) H (W - Q(s))^T with Q(s) = (codes - zeros) * s per
group: a [groups x groups] linear system per row (GPTQ's codes were chosen with compensation, so
the scales fixed up front are no longer the best ones for them). Zero points stay as they are (integer,
or float with `float_zero`), so the result keeps slimgraph's (and GGUF Q4_0/Q4_1's) layout.
"""
from __future__ import annotations
import torch

from ..ir import quant_format as Q
from .clip import GRID, search_clip


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, bits: int, group: int, sym: bool, *,
                  damp: float = 0.01, act_order: bool = True, block: int = 128,
                  clip_search: bool = True, refit: bool = False, float_zero: bool = False):
    # the column loop is thousands of tiny ops: one thread avoids OpenMP barrier costs
    # (15x faster on a busy 2-core machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        codes, scales, zeros = _gptq(w, hessian, bits, group, sym, damp, act_order, block, clip_search, refit,
                                     float_zero)
    finally:
        torch.set_num_threads(threads)
    if refit:
        scales = refit_scales(w.detach().float(), hessian.float(), codes, scales, zeros, group)
    return codes, scales, zeros


def _gptq(w, hessian, bits, group, sym, damp, act_order, block, clip_search, refit, float_zero=False):
    W = w.detach().float().clone()
    out, k = W.shape
    g = Q.group_size(group, k)
    H = hessian.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    clip = (search_clip(W, H, bits, group, sym, _grid(bits, sym) if refit else GRID, float_zero)
            if clip_search else 1.0)
    _, scales, zeros = Q.quantize_rtn(W, bits, group, sym, clip, float_zero)   # per (row, group), fixed
    col_group = torch.arange(k) // g

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k)
    W, H, col_group = W[:, perm], H[perm][:, perm], col_group[perm]
    H.diagonal().add_(damp * torch.diag(H).mean())
    Hinv = _upper_inverse_cholesky(H)

    codes = torch.zeros_like(W)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            gi = col_group[i1 + i]
            s, z = scales[:, gi], zeros[:, gi]
            q = Q.round_codes(W1[:, i], s, z, bits)
            codes[:, i1 + i] = q
            err = (W1[:, i] - (q - z) * s) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    codes = codes[:, torch.argsort(perm)]
    return codes, scales, zeros


def _grid(bits: int, sym: bool):
    """Clip candidates: the shared grid, plus for symmetric int4 the ratios that map the largest |w|
    onto code +7 (ratio 7.5 / 7) or -8 (7.5 / 8), qparams' scale being amax / 7.5."""
    if bits == 4 and sym:
        return tuple(sorted(set(GRID) | {7.5 / 7, 7.5 / 7.25, 7.5 / 7.75, 7.5 / 8}, reverse=True))
    return GRID


def refit_scales(w, hessian, codes, scales, zeros, group):
    """Least-squares group scales for fixed codes: per row r, solve A s = b with
    A[g, h] = m_g H[g, h] m_h^T and b[g] = m_g (H w_r^T)[g], m = codes - zeros of the row restricted to
    a group (shapes: w, codes f32[out, in]; H f32[in, in]; scales, zeros [out, groups]). A tiny ridge
    towards the old scales keeps all-zero groups solvable; a row whose solution has a scale <= 0
    keeps its old scales."""
    out, k = w.shape
    g = Q.group_size(group, k)
    n = k // g
    dead = torch.diag(hessian) == 0
    H = hessian.clone()
    H[dead, dead] = 1
    m = (codes.float().view(out, n, g) - zeros.float().unsqueeze(-1)).reshape(out, k)
    b = (m * (w @ H)).view(out, n, g).sum(-1)
    A = torch.empty(out, n, n)
    for j in range(n):
        A[:, j, :] = ((m[:, j * g:(j + 1) * g] @ H[j * g:(j + 1) * g, :]) * m).view(out, n, g).sum(-1)
    lam = 1e-6 * A.diagonal(dim1=1, dim2=2).mean(-1, keepdim=True).clamp_min(1e-12)
    A = A + torch.diag_embed(lam.expand(out, n))
    s = torch.linalg.solve(A, (b + lam * scales).unsqueeze(-1)).squeeze(-1)
    ok = (s > 0).all(-1, keepdim=True) & torch.isfinite(s).all(-1, keepdim=True)
    return torch.where(ok, s, scales.float()).to(scales.dtype)


def _upper_inverse_cholesky(H):
    """Upper Cholesky factor of H^-1 (GPTQ's numerically stable form); adds damping on failure."""
    for extra in (0.0, 0.01, 0.1, 1.0):
        try:
            Hd = H + extra * torch.diag(H).mean() * torch.eye(len(H))
            L = torch.linalg.cholesky(Hd)
            return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
        except torch.linalg.LinAlgError:
            continue
    raise ValueError("gptq: the calibration Hessian is not positive definite even with damping 1.0; "
                     "use more (or more varied) calibration tokens")
