"""Clip-ratio search shared by AWQ and GPTQ: shrink each (row, group) range by the factor that
minimizes the output error tr(E_g H_gg E_g^T) of that group, E = dequant(quant(W)) - W."""
from __future__ import annotations
import torch

from ..ir import quant_format as Q

GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)


def search_clip(w: torch.Tensor, hessian: torch.Tensor | None, bits: int, group: int, sym: bool,
                grid=GRID, float_zero: bool = False) -> torch.Tensor:
    """Best clip ratio per (row, group), [out, in/group]."""
    out, k = w.shape
    g = Q.group_size(group, k)
    n = k // g
    wg = w.float().view(out, n, g)
    wmin, wmax = wg.amin(-1), wg.amax(-1)
    # block-diagonal of H per group: [n, g, g] (identity when no statistics: plain weight MSE)
    Hg = (torch.stack([hessian[j * g:(j + 1) * g, j * g:(j + 1) * g] for j in range(n)]).float()
          if hessian is not None else torch.eye(g).expand(n, g, g))
    best = torch.full((out, n), float("inf"))
    ratio = torch.ones(out, n)
    for c in grid:
        s, z = Q.qparams(wmin, wmax, bits, sym, c, float_zero)
        e = (Q.fake_codes(wg, s, z, bits) - z.unsqueeze(-1)) * s.unsqueeze(-1) - wg   # [out, n, g]
        err = torch.einsum("ong,ngh,onh->on", e, Hg, e)
        better = err < best
        best = torch.where(better, err, best)
        ratio = torch.where(better, torch.full_like(ratio, c), ratio)
    return ratio
