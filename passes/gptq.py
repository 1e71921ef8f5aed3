"""GPTQ (Frantar et al. 2022): quantize a weight column by column, each rounding error
compensated on the not-yet-quantized columns through the inverse Hessian of the layer input.

    W[out, in], H = X^T X / n  ->  codes, scales, zeros   (layout: ir/quant_format.py)

Damping (`damp` x mean diag), act-order (columns in order of decreasing H diagonal), lazy
batch updates (`block` columns at a time, then one matmul for the rest). Groups stay contiguous
along the input dim so the result packs into the standard layout: with act-order the scales
of each group are fixed up front from the weights (AutoGPTQ's static groups), with the clip
ratio searched on the H-weighted error (`clip_search`).
"""
from __future__ import annotations
import torch

from ..ir import quant_format as Q
from .clip import search_clip


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, bits: int, group: int, sym: bool, *,
                  damp: float = 0.01, act_order: bool = True, block: int = 128,
                  clip_search: bool = True):
    # the column loop is thousands of tiny ops: one thread avoids OpenMP barrier costs
    # (15x faster on a busy 2-core machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _gptq(w, hessian, bits, group, sym, damp, act_order, block, clip_search)
    finally:
        torch.set_num_threads(threads)


def _gptq(w, hessian, bits, group, sym, damp, act_order, block, clip_search):
    W = w.detach().float().clone()
    out, k = W.shape
    g = Q.group_size(group, k)
    H = hessian.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    clip = search_clip(W, H, bits, group, sym) if clip_search else 1.0
    _, scales, zeros = Q.quantize_rtn(W, bits, group, sym, clip)   # per (row, group), fixed
    col_group = torch.arange(k) // g

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k)
    W, H, col_group = W[:, perm], H[perm][:, perm], col_group[perm]
    H.diagonal().add_(damp * torch.diag(H).mean())
    Hinv = _upper_inverse_cholesky(H)

    lo, hi = Q.qrange(bits)
    codes = torch.zeros_like(W)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            gi = col_group[i1 + i]
            s, z = scales[:, gi], zeros[:, gi]
            q = torch.clamp(torch.round(W1[:, i] / s) + z, lo, hi)
            codes[:, i1 + i] = q
            err = (W1[:, i] - (q - z) * s) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    codes = codes[:, torch.argsort(perm)]
    return codes, scales, zeros


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
