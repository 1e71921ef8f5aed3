"""AWQ (Lin et al. 2023): activation-aware scaling before weight quantization.

For the linears that read one input x, search per-input-channel scales s such that
quantizing W*diag(s) (and feeding x/s) loses the least output, then fold 1/s into the op that
produced x so the float function is unchanged:

    rms_norm(h, g) -> linear(., Wq), linear(., Wk), ...   =>  rms_norm(h, g/s) -> linear(., Wq*s), ...
    mul(a, linear(y, Wup)) -> linear(., Wdown)           =>  mul(a, linear(y, Wup/s[:,None])) -> linear(., Wdown*s)
    linear(y, W1) -> linear(., W2)                        =>  linear(y, W1/s[:,None]) -> linear(., W2*s)

Other producers (e.g. attention with grouped KV heads before o_proj) are left unscaled. The
loss of a candidate s is tr(E H E^T) with E = Q(W s)/s - W and H = X^T X/n from calibration,
so the search needs only each input's statistics. s = x^a (AWQ) or x^a / w^(1-a) (AutoAWQ's
duo scaling), a on a grid, normalized by sqrt(max*min). The loss is evaluated on at most `max_rows`
output rows (every k-th row of the stacked weights): e @ H costs rows x in^2 per candidate, and
the scales are per input channel, so a strided sample of rows ranks the candidates nearly as well
(3x faster search on SmolLM2; `max_rows=0` uses every row).
"""
from __future__ import annotations
import torch

from ..ir import quant_format as Q
from .calibration import Stats


def fake_quant(w, bits, group, sym):
    q, s, z = Q.quantize_rtn(w, bits, group, sym)
    out, k = w.shape
    g = Q.group_size(group, k)
    return ((q.view(out, k // g, g) - z.unsqueeze(-1)) * s.unsqueeze(-1)).view(out, k)


def output_error(ws, scales, H, bits, group, sym) -> float:
    err = 0.0
    for w in ws:
        e = fake_quant(w * scales, bits, group, sym) / scales - w
        err += float(((e @ H) * e).sum())
    return err


def awq_scales(ws: list[torch.Tensor], stats: Stats, bits: int, group: int, sym: bool,
               grid: int = 10, max_rows: int = 256) -> torch.Tensor:
    """Best per-input-channel scales for the weights `ws` that share one input."""
    ws = [w.float() for w in ws]
    x = stats.absmean.float().clamp_min(1e-8)
    k = ws[0].shape[1]
    g = Q.group_size(group, k)
    wn = torch.cat([(w.view(-1, g).abs() / w.view(-1, g).abs().amax(1, keepdim=True).clamp_min(1e-8))
                    .view(w.shape) for w in ws]).mean(0).clamp_min(1e-8)
    H = stats.hessian.float()
    rows = sum(len(w) for w in ws)
    if max_rows and rows > max_rows:
        step = -(-rows // max_rows)
        ws = [w[::step].contiguous() for w in ws]   # rows are quantized independently: a subset is exact for its rows
    best_s, best = torch.ones(k), output_error(ws, torch.ones(k), H, bits, group, sym)
    for duo in (False, True):
        for a in (i / grid for i in range(1, grid)):
            s = (x.pow(a) / wn.pow(1 - a) if duo else x.pow(a)).clamp_min(1e-4)
            s = s / (s.max() * s.min()).sqrt()
            err = output_error(ws, s, H, bits, group, sym)
            if err < best:
                best, best_s = err, s
    return best_s


def scaled_stats(stats: Stats, s: torch.Tensor) -> Stats:
    """Statistics of x/s given those of x."""
    return Stats(stats.hessian / torch.outer(s, s), stats.absmean / s, stats.tokens)


# ---- folding in the IR ---------------------------------------------------------------------
def _sole_weight(v, node) -> bool:
    return v.is_weight and all(u is node for u in v.users)


def fold_target(x):
    """A function folding 1/s into the producer of value `x`, or None when it cannot."""
    p = x.producer
    if p is None:
        return None
    if p.op in ("rms_norm", "layer_norm") and len(p.inputs) > 1 and _sole_weight(p.inputs[1], p):
        params = [v for v in p.inputs[1:] if _sole_weight(v, p)]

        def fold_norm(s):
            for v in params:
                v.tensor = (v.tensor / s).to(v.tensor.dtype)
        return fold_norm
    if p.op == "mul":
        for v in p.inputs:
            lin = v.producer
            if lin is not None and lin.op == "linear" and v.users == [p] and lin.outputs[0] is v \
                    and x.users and _linear_rows_foldable(lin):
                return lambda s, lin=lin: _fold_rows(lin, s)
        return None
    if p.op == "linear" and _linear_rows_foldable(p):
        return lambda s: _fold_rows(p, s)
    return None


def _linear_rows_foldable(lin) -> bool:
    return all(_sole_weight(v, lin) for v in lin.inputs[1:])


def _fold_rows(lin, s):
    w = lin.inputs[1]
    w.tensor = (w.tensor / s.unsqueeze(1)).to(w.tensor.dtype)
    if len(lin.inputs) > 2:
        b = lin.inputs[2]
        b.tensor = (b.tensor / s).to(b.tensor.dtype)
