"""The `torch` target's `linear_attention`: the chunked causal form, never T x T.

Queries go in chunks of CHUNK. For a chunk whose first query sits at key index a, every key j < a - window
is linear for all of its queries: those keys are folded once into a running (kv, z) state (the causal
cumulative sum, one [f, dv] matrix per kv head). The remaining keys a - window .. a + c - 1 form one local
block of [c, c + window] scores holding the softmax window and the newest linear keys. Cost O(T (c + W))
time and O(c (c + W)) extra memory, against O(T^2) for the reference's masked form
(ir/opset/linear_attention.py), which it equals up to float rounding (tests/passes/test_linearize_attention.py).

A `depth` input (new tokens placed by position) that is not 0, 1, .. (a candidate tree's depths) runs the
reference's masked form: the chunks assume consecutive key indices.

Each key folded into the running state is weighted by the last query's mask column (a padding mask's key
validity), as the reference does for the state it returns; inside the local block the mask is applied per
(query, key). The two agree for the masks the decoder passes (padding + causal). Differentiable (the
distillation, slimgraph/linear_attention.py, trains feature maps through it).
"""
from __future__ import annotations

import torch

from ..ir.opset import linear_attention as ref
from ..ir.opset.linear_attention import combine, features, fold, is_chain, key_valid, window_factor
from .lowering import lowering

CHUNK = 64


@lowering("torch", "linear_attention")
def linear_attention(q, k, v, kv, z, wq, wk, wf, mask=None, depth=None, *, feature_map="hedgehog", window=0, sinks=0,
                     scale=None, chunk: int = CHUNK):
    if depth is not None and not is_chain(depth):   # a candidate tree (a few tokens): the reference's masked form
        return ref.linear_attention(q, k, v, kv, z, wq, wk, wf, mask, depth, feature_map=feature_map, window=window,
                                    sinks=sinks, scale=scale)
    b, hq, s, d = q.shape
    hk, n = k.shape[1], k.shape[2]
    g, dv = hq // hk, v.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    if n == s and s > (window or chunk):
        return parallel_chunks(q, k, v, kv, z, wq, wk, wf, mask, feature_map=feature_map, window=window, sinks=sinks,
                               scale=scale, chunk=window or chunk)
    fq, fk = features(q, wq, feature_map), features(k, wk, feature_map)
    qg, fqg = q.reshape(b, hk, g, s, d), fq.reshape(b, hk, g, s, -1)
    valid = key_valid(mask, b, n, q.device)
    upto = min(sinks, n)                            # keys below are sinks: softmax for every query, never folded
    run_kv, run_z = kv, z
    outs = []
    for a in range(0, s, chunk):
        c = min(chunk, s - a)
        pa, hi = n - s + a, n - s + a + c           # key index of the chunk's first query, end of its keys
        lo = max(upto, pa - window)                 # keys in [upto, lo) are linear for every query here
        run_kv, run_z = fold(run_kv, run_z, fk, v, valid, lo, upto)
        upto = lo
        idx = torch.cat((torch.arange(min(sinks, lo), device=q.device), torch.arange(lo, hi, device=q.device)))
        rel = torch.arange(pa, hi, device=q.device)[:, None] - idx[None, :]
        causal = rel >= 0
        win = causal & ((rel <= window) | (idx < sinks)[None, :]) if window else None
        lin = causal & ~win if window else causal
        if mask is not None:
            m = mask[:, :, None, a:a + c].index_select(-1, idx)     # [b, 1, 1, c, keys]
            lin = lin & m
            win = win & m if window else None
        ks, fks, vs = (x if idx.numel() == x.shape[2] else x.index_select(2, idx) for x in (k, fk, v))
        outs.append(combine(qg[:, :, :, a:a + c], fqg[:, :, :, a:a + c], ks[:, :, None], fks[:, :, None],
                            vs[:, :, None], win, lin, run_kv[:, :, None], run_z[:, :, None], scale,
                            window_factor(wf, hk, 5)))
    out = torch.cat(outs, 3) if len(outs) > 1 else outs[0]
    kv2, z2 = fold(run_kv, run_z, fk, v, valid, n - window, upto)
    return out.reshape(b, hq, s, dv), kv2, z2


def parallel_chunks(q, k, v, kv, z, wq, wk, wf, mask=None, *, feature_map, window, scale, chunk, sinks=0):
    """The same computation with every chunk at once (no Python loop over chunks), for a call without ring
    rows (n == s: a prefill, or pure linear attention). Chunk size C = window (or `chunk` without a window):
    chunk c's queries see chunks c - 1 and c in one [C, 2C] local block (softmax window + newest linear
    keys) and chunks <= c - 2 through an exclusive cumulative sum of per-chunk phi(k) v^T (<= c - 1 and
    [C, C] blocks without a window). Sinks: the first `sinks` keys are S more softmax columns of every block
    (and left out of the blocks and the sums)."""
    b, hq, s, d = q.shape
    hk, dv = k.shape[1], v.shape[-1]
    g = hq // hk
    C = chunk
    nc = -(-s // C)
    pad = nc * C - s
    fq, fk = features(q, wq, feature_map), features(k, wk, feature_map)
    valid = key_valid(mask, b, s, q.device)
    S = min(sinks, s)
    kv2, z2 = fold(kv, z, fk, v, valid, s - window, S)

    def chunks(x):          # [b, h, s, e] -> [b, h, nc, C, e] (zero padded at the end)
        x = torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x
        return x.reshape(x.shape[0], x.shape[1], nc, C, x.shape[-1])

    folded = torch.nn.functional.pad(valid, (0, pad))
    if S:
        folded = torch.cat((torch.zeros_like(folded[:, :S]), folded[:, S:]), 1)
    vw = folded.reshape(b, 1, nc, C, 1).to(fk.dtype)
    kc, fkc, vc = chunks(k), chunks(fk), chunks(v)
    per_kv = (fkc * vw).transpose(-1, -2) @ vc                          # [b, hk, nc, f, dv]
    per_z = (fkc * vw).sum(3)                                           # [b, hk, nc, f]
    shift = 2 if window else 1
    cs_kv, cs_z = per_kv.cumsum(2), per_z.cumsum(2)
    st_kv = torch.cat((per_kv.new_zeros(*per_kv.shape[:2], shift, *per_kv.shape[3:]), cs_kv[:, :, :nc - shift]), 2)
    st_z = torch.cat((per_z.new_zeros(*per_z.shape[:2], shift, per_z.shape[3]), cs_z[:, :, :nc - shift]), 2)
    st_kv, st_z = st_kv[:, :, :nc] + kv[:, :, None], st_z[:, :, :nc] + z[:, :, None]
    i = torch.arange(C, device=q.device)[:, None]
    if window:              # keys: chunk c - 1 then chunk c (chunk -1 is zeros, masked out)
        def local(x):
            prev = torch.cat((torch.zeros_like(x[:, :, :1]), x[:, :, :-1]), 2)
            return torch.cat((prev, x), 3)
        kc, fkc, vc = local(kc), local(fkc), local(vc)
        rel = i + C - torch.arange(2 * C, device=q.device)[None, :]
        first = torch.ones(nc, 1, 2 * C, dtype=torch.bool, device=q.device)
        first[0, :, :C] = False
        causal = (rel >= 0) & first                                     # [nc, C, 2C]
        if S:
            absj = (torch.arange(nc, device=q.device)[:, None] - 1) * C + torch.arange(2 * C, device=q.device)
            causal = causal & (absj >= S)[:, None, :]
        win = causal & (rel <= window)
        lin = causal & ~win
    else:
        causal = (i - torch.arange(C, device=q.device)[None, :]) >= 0
        win, lin = None, causal
    if mask is not None:
        width = 2 * C if window else C
        m = torch.nn.functional.pad(mask, (C if window else 0, pad + (0 if window else 0), 0, pad))
        m = m.expand(b, 1, nc * C, m.shape[-1]).unfold(3, width, C)    # [b, 1, nc*C, nc', width]
        m = m.reshape(b, 1, nc, C, -1, width).diagonal(dim1=2, dim2=4)  # [b, 1, C, width, nc]
        m = m.permute(0, 1, 4, 2, 3)[:, :, None]                        # [b, 1, 1, nc, C, width]
        lin = lin & m
        win = win & m if window else None
    if S:                   # the sink columns first: softmax, causal (query c*C + i sees sink j <= it)
        p = torch.arange(nc * C, device=q.device).reshape(nc, C, 1)
        sink_win = p >= torch.arange(S, device=q.device)
        if mask is not None:
            ms = torch.nn.functional.pad(mask[..., :S], (0, 0, 0, pad)).reshape(b, 1, 1, nc, C, S)
            sink_win = sink_win & ms
        lead = torch.broadcast_shapes(lin.shape[:-1], sink_win.shape[:-1])
        lin = torch.cat((sink_win.new_zeros(*lead, S), lin.expand(*lead, lin.shape[-1])), -1)
        win = torch.cat((sink_win.expand(*lead, S), win.expand(*lead, win.shape[-1])), -1)

        def with_sinks(x, rows):        # [b, h, nc, W, e] -> [b, h, nc, S + W, e]
            return torch.cat((rows[:, :, None].expand(-1, -1, nc, -1, -1), x), 3)
        kc, fkc, vc = with_sinks(kc, k[:, :, :S]), with_sinks(fkc, fk[:, :, :S]), with_sinks(vc, v[:, :, :S])
    qg = chunks(q).reshape(b, hk, g, nc, C, d)
    fqg = chunks(fq).reshape(b, hk, g, nc, C, -1)
    out = combine(qg, fqg, kc[:, :, None], fkc[:, :, None], vc[:, :, None], win, lin, st_kv[:, :, None],
                  st_z[:, :, None], scale, window_factor(wf, hk, 6))                              # [b, hk, g, nc, C, dv]
    out = out.reshape(b, hq, nc * C, dv)[:, :, :s]
    return out, kv2, z2
