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

from ..ir.opset.linear_attention import combine, features, fold, key_valid
from .lowering import lowering

CHUNK = 64


@lowering("torch", "linear_attention")
def linear_attention(q, k, v, kv, z, wq, wk, mask=None, *, feature_map="hedgehog", window=0, scale=None,
                     chunk: int = CHUNK):
    b, hq, s, d = q.shape
    hk, n = k.shape[1], k.shape[2]
    g, dv = hq // hk, v.shape[-1]
    scale = d ** -0.5 if scale is None else scale
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
                            v[:, :, None, lo:hi], win, lin, run_kv[:, :, None], run_z[:, :, None], scale))
    out = torch.cat(outs, 3) if len(outs) > 1 else outs[0]
    kv2, z2 = fold(run_kv, run_z, fk[:, :, upto:], v[:, :, upto:], valid[:, upto:], n - window - upto)
    return out.reshape(b, hq, s, dv), kv2, z2
