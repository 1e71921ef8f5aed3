"""Fast torch kernels for the `torch` target: its lowerings (codegen/lowering.py, target "torch").

The fx codegen calls an op's registered reference implementation unless a kernel is
registered for it. A kernel has the reference impl's signature, `fn(*inputs, **attrs)`, and
must compute the same thing; it exists to cut per-call Python overhead (direct torch calls,
no wrapper lambdas) or to use a faster algorithm (SDPA with native GQA, fused norms).

    @lowering("torch", "qlinear", prepack=repack_int4)
    def qlinear_int4(x, packed, scales, ..., **attrs): ...

`prepack(node, const_inputs) -> dict[int, Tensor]` runs ONCE at build time on the node's
weight inputs (input index -> tensor) and returns replacements for some of them (e.g. int4
weights repacked for `torch.ops.aten._weight_int4pack_mm_for_cpu`); it must not mutate the
graph or its tensors. It raises `SlowPath(reason)` when the node can only take the kernel's slow
generic path: the codegen then keeps the inputs as they are and reports the reason (counted per
reason) in `runner.notes`, which optimize() puts in the report and warns about. `scalars=True` declares that the kernel accepts Python numbers in
place of 0-d tensors, so the codegen may inline literal `constant` inputs.

Other modules register kernels on import: list them in `LOWERING_MODULES["torch"]`.
"""
from __future__ import annotations
import operator

import torch
import torch.nn.functional as F

from ..ir.opset import nn as nn_ref  # the reference arithmetic (causal mask, GQA repeat, rms_norm)
from .lowering import lowering, register_lowering
from ..ir.opset.nn import window_keep

class SlowPath(Exception):
    """Raised by a prepack hook: this node runs the kernel's slow generic path (the message says why)."""


# ---- elementwise: operator forms accept scalars on either side and skip wrapper lambdas -------
for _op, _fn in {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
                 "pow": operator.pow, "remainder": operator.mod, "floor_divide": operator.floordiv,
                 "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
                 "gt": operator.gt, "ge": operator.ge}.items():
    register_lowering("torch", _op, _fn, scalars=True)

for _op, _fn in {"maximum": torch.maximum, "minimum": torch.minimum, "neg": torch.neg, "abs": torch.abs,
                 "relu": torch.relu, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
                 "rsqrt": torch.rsqrt, "sin": torch.sin, "cos": torch.cos, "tanh": torch.tanh,
                 "sigmoid": torch.sigmoid, "silu": torch._C._nn.silu, "erf": torch.erf,
                 "reciprocal": torch.reciprocal, "logical_not": torch.logical_not,
                 "matmul": torch.matmul, "linear": torch._C._nn.linear,
                 "logical_and": torch.logical_and, "logical_or": torch.logical_or}.items():
    register_lowering("torch", _op, _fn)

register_lowering("torch", "where", torch.where, scalars=True)


@lowering("torch", "embedding")
def embedding(weight, ids):
    return torch.embedding(weight, ids)


@lowering("torch", "gelu")
def gelu(x, approximate):
    return torch._C._nn.gelu(x, approximate=approximate)


@lowering("torch", "cast")
def cast(x, dtype):
    from ..ir.dtypes import TORCH_DTYPES
    return x.to(TORCH_DTYPES[dtype])


# ---- shape ops (reshape, permute, expand, ... run their reference impls, already direct calls)
@lowering("torch", "slice")
def slice_(x, dim, start, end, step):
    if step == 1 and start >= 0 and 0 <= end < 2 ** 62:  # the common case: one narrow, no index tuple
        size = x.shape[dim]
        start, end = min(start, size), min(end, size)
        return x.narrow(dim, start, max(end - start, 0))
    return torch.ops.aten.slice.Tensor(x, dim, start, end, step)


@lowering("torch", "split")
def split(x, dim, sizes):
    return x.split(sizes, dim)


# ---- reductions and nn ---------------------------------------------------------------------
@lowering("torch", "softmax")
def softmax(x, dim):
    return torch.softmax(x, dim)


@lowering("torch", "mean")
def mean(x, dims, keepdim):
    return x.mean(dims, keepdim=keepdim) if dims else x.mean(tuple(range(x.dim())), keepdim=keepdim)


@lowering("torch", "rms_norm")
def rms_norm(x, weight=None, *, eps):
    if x.dtype == torch.float32:  # torch's kernel: one call, same f32 math as the reference
        return torch.rms_norm(x, (x.shape[-1],), weight, eps)
    return nn_ref.rms_norm(x, weight, eps=eps)  # other dtypes: the reference's upcast and cast back


_ROPE_SIGNS: dict = {}


@lowering("torch", "rope")
def rope(x, cos, sin):
    """x * cos + rotate_half(x) * sin as 4 ops instead of 7: rotate_half(x) = roll(x, d/2) * [-1.., +1..]."""
    h = x.shape[-1] // 2
    key = (h, sin.dtype, sin.device)
    sign = _ROPE_SIGNS.get(key)
    if sign is None:
        sign = _ROPE_SIGNS[key] = torch.cat([-torch.ones(h, dtype=sin.dtype, device=sin.device),
                                             torch.ones(h, dtype=sin.dtype, device=sin.device)])
    return torch.addcmul(x * cos, x.roll(h, -1), sin * sign)


@lowering("torch", "layer_norm")
def layer_norm(x, weight=None, bias=None, *, axes, eps):
    return torch.layer_norm(x, x.shape[-axes:], weight, bias, eps)


def _all_true(mask: torch.Tensor) -> bool:
    """bool(mask.all()), computed once per mask tensor and version when torch tracks its version (the
    layers of one forward share the mask); inference-mode tensors do not, so there it is computed per call."""
    if mask.is_inference():
        return bool(mask.all())
    memo = getattr(mask, "_slimgraph_all", None)
    if memo is None or memo[0] != mask._version:
        memo = mask._slimgraph_all = (mask._version, bool(mask.all()))
    return memo[1]


STEP_ROWS = 64     # at most this many queries after a cache run one by one, each as a decode step would


def _rows_as_steps(q, k, v, mask, causal, scale, ring=False):
    """Attention of lq queries that follow a cache (a speculative `verify` of candidates, a short chunk),
    computed row by row, each row exactly as the one-token decode step at its place computes it: the same
    SDPA call on the same keys in the same order (the cache's, then the row's visible new rows: its
    predecessors in a chain, its ancestors in a tree), the same padding mask. SDPA's arithmetic depends on
    the number of query rows and of keys (blocking, vector tails): batched, a row differs from its step by
    ~1e-7, which a bf16 activation rounding downstream (torch's int4/int8 kernels) turns into logit
    differences of 0.1-0.4 and flipped near-tied argmaxes. The torch target's other kernels are row-invariant
    (per-row norms and elementwise ops, the int4/int8 packed matmuls; fp32 GEMMs are not, ~1e-5), so on a
    quantized base a verify gives the greedy tokens of plain decoding exactly (tests/test_speculative.py).
    Cost: one SDPA call per row instead of one per call (~8% of a 9-token verify of SmolLM2 int4 at 128
    keys), and for a tree one copy of the cache per call. It grows with the cache: each row reads every key
    (a 4-layer 576-wide int4 model at 1500 keys: a 15-node tree verify 1.7x, a 32-token chunk step of a batch
    of 4 1.8x the one-call attention; 2.3-2.5x with 8 KV heads of 8). None when the mask is not that shape (a new row seeing a later one, rows or heads seeing different new
    rows): the caller's batched path runs.

    `ring`: the cache is a ring state's rows (sinks, then the last window, chronological: codegen/torch_kv.py),
    which the step at row i's place sees after the ring slid by i: the cache rows that row 0 sees and row i no
    longer does (they left its window) are gone from its keys, not masked. Rows hidden from row 0 too (pads)
    stay masked, as in a step; where that would differ between the rows of a padded batch, None."""
    lq, lk = q.shape[-2], k.shape[-2]
    past = lk - lq
    new = torch.ones(lq, lq, dtype=torch.bool, device=q.device).tril() if causal else None
    if mask is not None:
        if mask.dim() < 2:
            return None
        if tuple(mask.shape[-2:]) != (lq, lk):   # broadcast over the queries ([b, 1, 1, lk]) or the keys ([.., lq, 1])
            mask = mask.expand(*mask.shape[:-2], lq, lk)
        m = mask[..., past:]
        first = m.reshape(-1, lq, lq)[0]
        if not bool((m == first).all()):
            return None
        new = first if new is None else new & first
    if new is None or not bool(new.diagonal().all()) or bool(new.triu(1).any()):
        return None
    if mask is not None and _all_true(mask[..., :past]):
        mask = None         # no padding in the cache: every step's mask is all True, which the step drops
    if ring and mask is not None:
        return _ring_rows(q, k, v, mask, new, scale)
    chain = int(new.sum()) == lq * (lq + 1) // 2     # every row sees all the rows before it
    if not chain:           # a tree: node i's keys are the cache then its path, copied after a copy of the cache
        seen = new.sum(1)
        kb, vb = (torch.empty(*t.shape[:-2], past + int(seen.max()), t.shape[-1], dtype=t.dtype, device=t.device)
                  for t in (k, v))
        kb[..., :past, :], vb[..., :past, :] = k[..., :past, :], v[..., :past, :]
    hq, hk, hd = q.shape[-3], k.shape[-3], q.shape[-1]
    if chain and mask is None and hq != hk:
        # the common verify (no padding, GQA): the step's call, `attention_batched` for one query, inlined
        rows = q.reshape(*q.shape[:-3], hk, hq // hk, lq, hd)
        outs = [F.scaled_dot_product_attention(rows[..., i, :], k[..., :past + i + 1, :], v[..., :past + i + 1, :],
                                               scale=scale) for i in range(lq)]
        return torch.stack(outs, -2).reshape(*q.shape[:-1], v.shape[-1])
    outs = []
    for i in range(lq):
        if chain:           # the cache and the rows before it: a view, as the step's cache is
            n = past + i + 1
            ki, vi = k[..., :n, :], v[..., :n, :]
            mi = None if mask is None else mask[..., i:i + 1, :n]
        else:
            path = past + new[i].nonzero().flatten()
            n = past + int(seen[i])
            kb[..., past:n, :], vb[..., past:n, :] = k[..., path, :], v[..., path, :]
            ki, vi = kb[..., :n, :], vb[..., :n, :]
            mi = None if mask is None else torch.cat((mask[..., i:i + 1, :past], mask[..., i:i + 1, path]), -1)
        outs.append(attention_batched(q[..., i:i + 1, :], ki, vi, mi, causal=False, scale=scale))
    return torch.cat(outs, -2)


def _ring_rows(q, k, v, mask, new, scale):
    """`_rows_as_steps` over a ring (see there): row i's keys are the cache rows it sees or row 0 does not see,
    then its visible new rows, gathered in order."""
    lq, past = q.shape[-2], k.shape[-2] - q.shape[-2]
    seen = mask[..., :past].reshape(-1, lq, past)
    keep = seen | ~seen[:, :1]
    if not bool((keep == keep[:1]).all()):
        return None
    outs = []
    for i in range(lq):
        idx = torch.cat((keep[0, i].nonzero().flatten(), past + new[i].nonzero().flatten()))
        outs.append(attention_batched(q[..., i:i + 1, :], k.index_select(-2, idx), v.index_select(-2, idx),
                                      mask[..., i:i + 1, :].index_select(-1, idx), causal=False, scale=scale))
    return torch.cat(outs, -2)


def _attention(q, k, v, mask, causal, scale, window, sinks, softcap, ring):
    lq, lk = q.shape[-2], k.shape[-2]
    if 1 < lq <= STEP_ROWS and lk > lq and not window and not softcap and (mask is None or mask.dtype == torch.bool):
        out = _rows_as_steps(q, k, v, mask, causal, scale, ring)
        if out is not None:
            return out
    return attention_batched(q, k, v, mask, causal=causal, scale=scale, window=window, sinks=sinks, softcap=softcap)


@lowering("torch", "attention")
def attention(q, k, v, mask=None, *, causal, scale, window=0, sinks=0, softcap=0.0):
    """The reference `attention`, faster on CPU (`attention_batched`); up to STEP_ROWS queries that follow a
    cache (a speculative verify) run row by row as the decode steps at their places would (`_rows_as_steps`)."""
    return _attention(q, k, v, mask, causal, scale, window, sinks, softcap, False)


def attention_ring(q, k, v, mask=None, *, causal, scale, window=0, sinks=0, softcap=0.0):
    """`attention` whose keys are a ring state's rows then the new ones (the codegen emits it for those:
    torch_kv.ring_attention): a verified row's step sees the ring after it slid (`_rows_as_steps`, ring)."""
    return _attention(q, k, v, mask, causal, scale, window, sinks, softcap, True)


# ops whose torch kernels are float GEMMs: a k-row product rounds differently from k 1-row products (~1e-5)
FLOAT_GEMMS = frozenset({"linear", "matmul", "einsum", "conv2d", "conv_transpose2d"})


def verify_as_steps(graph) -> bool:
    """Whether computing a verify's attention rows as steps (`attention`) makes the whole verify bit-identical to
    steps: only where no float GEMM runs (those differ anyway, and the row-by-row attention costs ~5-10% of a
    verify); the codegen (codegen/torch_fx.py) emits `attention_batched` otherwise. Only the GEMMs that the base
    model's outputs (logits, states) depend on count: Medusa draft heads (`draft_logits_*`, float `linear`s on the
    last hidden state) choose the candidates, never the verified tokens. An int4/int8 `qlinear` whose prepack
    takes the slow path (a float GEMM of the dequantized weight) is not detected."""
    from ..passes.draft_heads import draft_outputs
    drafts = {id(v) for v in draft_outputs(graph)}
    need = [v for v in graph.outputs if id(v) not in drafts]
    seen = set()
    while need:
        node = need.pop().producer
        if node is None or id(node) in seen:
            continue
        if node.op in FLOAT_GEMMS:
            return False
        seen.add(id(node))
        need.extend(node.inputs)
    return True


def attention_batched(q, k, v, mask=None, *, causal, scale, window=0, sinks=0, softcap=0.0):
    """`attention` with all the query rows in one SDPA call. GQA folds each group of query heads into the rows
    of its key/value head (SDPA's enable_gqa path and repeat_interleave are both much slower), when
    the mask is shared by the heads; no mask is built where causality is trivial (one query), nor a
    window band where every key is inside it (decoding over a ring state: kv_len <= window + sinks + 1),
    and an all-True bool mask (no padding) is dropped. A soft-capped one (`softcap`) runs the reference's
    explicit scores (SDPA has no logit cap)."""
    if softcap:
        return nn_ref.attention(q, k, v, mask, causal=causal, scale=scale, window=window, sinks=sinks,
                                softcap=softcap)
    hq, hk = q.shape[-3], k.shape[-3]
    lq, lk = q.shape[-2], k.shape[-2]
    if mask is not None and mask.dtype == torch.bool and _all_true(mask):
        mask = None         # a decode step without padding: SDPA without a mask skips converting and repeating it
    if window and lk > window + sinks + 1:
        band = window_keep(lq, lk, window, sinks, q.device)
        if causal:
            band = band & torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
            causal = False
        mask = band if mask is None else (mask & band if mask.dtype == torch.bool
                                          else mask.masked_fill(~band, float("-inf")))
    if causal and lq > 1:
        if mask is None and lq == lk and hq == hk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        mask = nn_ref.and_mask(mask, nn_ref.causal_keep(lq, lk, q.device))
    if hq == hk:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    g = hq // hk
    if mask is not None and mask.dim() >= 3 and mask.shape[-3] != 1:  # a per-head mask: repeat k/v
        k, v = nn_ref.repeat_kv(k, g), nn_ref.repeat_kv(v, g)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    rows = q.reshape(*q.shape[:-3], hk, g * lq, q.shape[-1])  # row r*lq+i = query i of head kv*g+r
    if mask is not None and mask.dim() >= 2 and mask.shape[-2] != 1:   # one mask row per query: one per folded row
        mask = mask.repeat(*[1] * (mask.dim() - 2), g, 1)
    out = F.scaled_dot_product_attention(rows, k, v, attn_mask=mask, scale=scale)
    return out.reshape(*q.shape[:-1], v.shape[-1])
