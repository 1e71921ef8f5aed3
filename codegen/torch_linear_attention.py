"""The `torch` target's `linear_attention`: the chunked causal form, never T x T.

Queries go in chunks of CHUNK. For a chunk whose first query sits at key index a, every key j < a - window
is linear for all of its queries: those keys are folded once into a running (kv, z) state (the causal
cumulative sum, one [f, dv] matrix per kv head). The remaining keys a - window .. a + c - 1 form one local
block of [c, c + window] scores holding the softmax window and the newest linear keys. Cost O(T (c + W))
time and O(c (c + W)) extra memory, against O(T^2) for the reference's masked form
(ir/opset/linear_attention.py), which it equals up to float rounding (tests/passes/test_linearize_attention.py).

Each key folded into the running state is weighted by the last query's mask column (a padding mask's key
validity), as the reference does for the state it returns; inside the local block the mask is applied per
(query, key). The two agree for the masks the decoder passes (padding + causal). Differentiable (the
distillation, slimgraph/linear_attention.py, trains feature maps through it).
"""
from __future__ import annotations

import torch

from ..ir.opset.linear_attention import combine, features, fold, key_valid, window_factor
from .lowering import lowering

CHUNK = 64


@lowering("torch", "linear_attention")
def linear_attention(q, k, v, kv, z, wq, wk, wf, mask=None, *, feature_map="hedgehog", window=0, scale=None,
                     chunk: int = CHUNK):
    b, hq, s, d = q.shape
    hk, n = k.shape[1], k.shape[2]
    g, dv = hq // hk, v.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    if n == s and s > (window or chunk):
        return parallel_chunks(q, k, v, kv, z, wq, wk, wf, mask, feature_map=feature_map, window=window, scale=scale,
                               chunk=window or chunk)
    fq, fk = features(q, wq, feature_map), features(k, wk, feature_map)
    qg, fqg = q.reshape(b, hk, g, s, d), fq.reshape(b, hk, g, s, -1)
    valid = key_valid(mask, b, n, q.device)
    run_kv, run_z, upto = kv, z, 0
    outs = []
    for a in range(0, s, chunk):
        c = min(chunk, s - a)
        pa = n - s + a                              # key index of the chunk's first query
        lo = max(0, pa - window)                    # keys before lo are linear for every query here
        run_kv, run_z = fold(run_kv, run_z, fk[:, :, upto:], v[:, :, upto:], valid[:, upto:], lo - upto)
        upto = max(upto, lo)
        hi = pa + c
        rel = torch.arange(pa, hi, device=q.device)[:, None] - torch.arange(lo, hi, device=q.device)[None, :]
        causal = rel >= 0
        win = causal & (rel <= window) if window else None
        lin = causal & ~win if window else causal
        if mask is not None:
            m = mask[:, :, None, a:a + c, lo:hi]    # [b, 1, 1, c, keys]
            lin = lin & m
            win = win & m if window else None
        outs.append(combine(qg[:, :, :, a:a + c], fqg[:, :, :, a:a + c], k[:, :, None, lo:hi], fk[:, :, None, lo:hi],
                            v[:, :, None, lo:hi], win, lin, run_kv[:, :, None], run_z[:, :, None], scale,
                            window_factor(wf, hk, 5)))
    out = torch.cat(outs, 3) if len(outs) > 1 else outs[0]
    kv2, z2 = fold(run_kv, run_z, fk[:, :, upto:], v[:, :, upto:], valid[:, upto:], n - window - upto)
    return out.reshape(b, hq, s, dv), kv2, z2


def parallel_chunks(q, k, v, kv, z, wq, wk, wf, mask=None, *, feature_map, window, scale, chunk):
    """The same computation with every chunk at once (no Python loop over chunks), for a call without ring
    rows (n == s: a prefill, or pure linear attention). Chunk size C = window (or `chunk` without a window):
    chunk c's queries see chunks c - 1 and c in one [C, 2C] local block (softmax window + newest linear
    keys) and chunks <= c - 2 through an exclusive cumulative sum of per-chunk phi(k) v^T (<= c - 1 and
    [C, C] blocks without a window)."""
    b, hq, s, d = q.shape
    hk, dv = k.shape[1], v.shape[-1]
    g = hq // hk
    C = chunk
    nc = -(-s // C)
    pad = nc * C - s
    fq, fk = features(q, wq, feature_map), features(k, wk, feature_map)
    valid = key_valid(mask, b, s, q.device)
    kv2, z2 = fold(kv, z, fk, v, valid, s - window)

    def chunks(x):          # [b, h, s, e] -> [b, h, nc, C, e] (zero padded at the end)
        x = torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x
        return x.reshape(x.shape[0], x.shape[1], nc, C, x.shape[-1])

    vw = torch.nn.functional.pad(valid, (0, pad)).reshape(b, 1, nc, C, 1).to(fk.dtype)
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
    qg = chunks(q).reshape(b, hk, g, nc, C, d)
    fqg = chunks(fq).reshape(b, hk, g, nc, C, -1)
    out = combine(qg, fqg, kc[:, :, None], fkc[:, :, None], vc[:, :, None], win, lin, st_kv[:, :, None],
                  st_z[:, :, None], scale, window_factor(wf, hk, 6))                              # [b, hk, g, nc, C, dv]
    out = out.reshape(b, hq, nc * C, dv)[:, :, :s]
    return out, kv2, z2
