"""canonicalize: local simplifications and op recognition, run to a fixed point.

Identities (only when the result type equals the operand's type, so broadcasting or promotion
is never dropped):
    reshape(x) / expand(x) / cast(x) to x's own type     -> x
    permute(x, [0,1,..])  /  slice(x, start=0, step=1) over the whole dim -> x
    x+0, 0+x, x-0, x*1, 1*x, x/1                          -> x   (x+0 turns -0.0 into 0.0: equal)
    x + full(0) (a zeros tensor that broadcasts to x)     -> x
Folds:
    permute(permute(x, p), q)     -> permute(x, p[q])    (identity removed next)
    reshape(reshape(x), s)        -> reshape(x, s)
    cast(cast(x, a), b)           -> cast(x, b)          when x -> a is exact (a widening cast)
Recognition (the chains torch.export produces):
    mul(x, rsqrt(add(mean(pow(x, 2), [-1], keepdim), eps)))   -> rms_norm(x){eps}   (f32 x)
    cast(rms_norm(cast(x, f32)), x.dtype)                     -> rms_norm(x)   (f16/bf16: HF Llama)
    mul(rms_norm(x), w)   with w: [hidden], same dtype        -> rms_norm(x, w)
    mul(x, sigmoid(x))                                        -> silu(x)
    add(mul(x, cos), mul(concat(neg(x[..., h:]), x[..., :h]), sin)) -> rope(x, cos, sin)   (h = d/2)
    mul(mul(x, 0.5), add(erf(div(x, sqrt 2)), 1))             -> gelu(x)   (also x * (1/sqrt 2))
    attention(q, repeat_kv(k), repeat_kv(v))                  -> attention(q, k, v)   (GQA is native)
    matmul(softmax(matmul(q, k^T) * c [+ m], -1), v)        -> attention(q, k, v, m){scale=c}
        the "eager" spelling (HF eager_attention_forward, GPT-2, BERT): the scale as mul or div on the
        scores or on q, a float additive mask m (ALiBi biases, padding), casts around the softmax. One
        difference, by design: a query row whose every key is masked with -inf gives NaN in the chain and
        0 in `attention` (as torch's SDPA defines it); HF's masks use the dtype's minimum, never -inf.
        Masking is peeled off the scores in any order: float masks or biases added (padding, ALiBi: MPT)
        and masked_fills of -inf or the dtype's minimum (MPT's where(m, min, s)), which become one additive mask
        where(m, fill, sum of the added ones) (a filled score and a fill added to it both weigh the key 0).
        The product may be taken over [batch * heads, ...] and reshaped back (GPT-2's reorder_and_upcast_attn)
    matmul(softmax(c * tanh(q k^T * s / c) [+ m]), v)            -> attention(q, k, v, m){scale=s, softcap=c}
        Gemma 2's attention logit soft-capping, applied before the mask as the op defines it
    attention(q, k, v, m & (key_idx > query_idx - W))         -> attention{window=W-1}(q, k, v, m)
        the sliding-window band HF's Mistral/Gemma/Qwen2 layers and-ed into the mask (frontends/hf.py),
        also in the additive form eager attention gets: where(~(m & band), min, 0)
    attention(q, k, v, key_pos <= query_pos)                  -> attention{causal}(q, k, v)
        when the mask compares aranges of key and query positions whose offset is kv_len - q_len
        (the causal mask HF builds from cache positions); kernels then skip building the mask.
"""
from __future__ import annotations
import math

from ..ir import symbolic
from ..ir.dtypes import FLOAT_DTYPES
from .base import Pass, PassResult, register_pass
from .rewrite import C, P, RuleSet, apply_rules, const_value

X, Y = P.var("x"), P.var("y")


def _same_type(root, x):
    return x if root.output.type.matches(x.type) else None


# ---- identities ---------------------------------------------------------------------------------
def _noop_permute(root, x):
    rank = x.type.rank
    return x if [d % max(rank, 1) for d in root.attrs["dims"]] == list(range(rank)) else None


def _add_zeros(root, x, z):
    return _same_type(root, x) if z.producer.attrs["value"] == 0 else None


def _noop_slice(root, x):
    a = root.attrs
    return _same_type(root, x) if a["start"] == 0 and a["step"] == 1 else None


identities = RuleSet([
    (P(("reshape", "expand", "cast"), X), _same_type, "noop-reshape-expand-cast"),
    (P("permute", X), _noop_permute, "noop-permute"),
    (P("slice", X), _noop_slice, "noop-slice"),
    (P("add", X, C(0)), _same_type, "add-zero"),
    (P("add", X, P("full", name="z")), _add_zeros, "add-zeros"),
    (P("sub", X, C(0)), _same_type, "sub-zero"),
    (P("mul", X, C(1)), _same_type, "mul-one"),
    (P("div", X, C(1)), _same_type, "div-one"),
], name="identities")


# ---- folds of op pairs --------------------------------------------------------------------------
def _permute_permute(g, root, inner, x):
    p, q = inner.producer.attrs["dims"], root.attrs["dims"]
    rank = x.type.rank
    return g.op("permute", x, dims=[p[d % rank] % rank for d in q])


def _reshape_reshape(g, root, x):
    new = g.op("reshape", x, shape=root.attrs["shape"])
    return new if new.type.matches(root.output.type) else None


# x.dtype -> dtypes that hold every value of x exactly (so a later cast sees the original value).
EXACT_CASTS = {
    "bool": {"u8", "i8", "i16", "i32", "i64", "f16", "bf16", "f32", "f64"},
    "u8": {"i16", "i32", "i64", "f16", "bf16", "f32", "f64"},
    "i8": {"i16", "i32", "i64", "f16", "bf16", "f32", "f64"},
    "i16": {"i32", "i64", "f32", "f64"},
    "i32": {"i64", "f64"},
    "f16": {"f32", "f64"},
    "bf16": {"f32", "f64"},
    "f32": {"f64"},
}


def _cast_cast(g, root, inner, x):
    if inner.type.dtype not in EXACT_CASTS.get(x.type.dtype, ()):
        return None
    return g.op("cast", x, dtype=root.attrs["dtype"])


folds = RuleSet([
    (P("permute", P("permute", X, name="inner")), _permute_permute),
    (P("reshape", P("reshape", X)), _reshape_reshape),
    (P("cast", P("cast", X, name="inner")), _cast_cast),
], name="folds")


# ---- recognition --------------------------------------------------------------------------------
def _last_dim_only(dims):
    return dims is not None and len(dims) == 1


_MEAN_SQ = P("mean", P("pow", X, C(2)), name="ms", attrs={"keepdim": True, "dims": _last_dim_only})
_RMS_CORE = P("mul", X, P("rsqrt", P("add", _MEAN_SQ, C(name="eps"))))


def _rms_core(g, x, ms, eps):
    if x.type.dtype != "f32":
        return f"rms_norm computes in f32; this chain is {x.type.dtype} (surrounding casts match separately)"
    if ms.producer.attrs["dims"][0] not in (-1, x.type.rank - 1):
        return "mean is not over the last dim"
    return g.op("rms_norm", x, eps=float(const_value(eps)))


def _rms_upcast(g, root, x, n):
    if x.type.dtype not in ("f16", "bf16") or root.attrs["dtype"] != x.type.dtype:
        return f"not a {x.type.dtype} -> f32 -> {x.type.dtype} round trip of a half-precision input"
    return g.op("rms_norm", x, eps=n.producer.attrs["eps"])


def _rms_weight(g, root, x, n, w):
    hidden = x.type.shape[-1] if x.type.rank else None
    if len(n.uses) != 1:
        return "the unweighted rms_norm has other users"
    if (w.type.rank != 1 or not isinstance(hidden, int) or w.type.shape[0] != hidden
            or w.type.dtype != x.type.dtype):
        return f"scale {w.type} is not a [{hidden}] vector of the input dtype {x.type.dtype}"
    return g.op("rms_norm", x, w, eps=n.producer.attrs["eps"])


def _silu(g, root, x):
    return g.op("silu", x) if x.type.dtype in FLOAT_DTYPES and root.output.type.matches(x.type) else None


_GELU = P("mul", P("mul", X, C(0.5)), P("add", P("erf", P(("div", "mul"), X, C(name="s"), name="arg")), C(1)))


def _gelu(g, root, x, s, arg):
    want = math.sqrt(2.0) if arg.producer.op == "div" else 1 / math.sqrt(2.0)
    if not math.isclose(const_value(s), want, rel_tol=1e-6) or x.type.dtype not in FLOAT_DTYPES:
        return None
    return g.op("gelu", x) if root.output.type.matches(x.type) else None


_HALF = lambda which: P("slice", X, name=which)  # noqa: E731
_ROPE = P("add", P("mul", X, P.var("cos")),
          P("mul", P("concat", P("neg", _HALF("hi")), _HALF("lo"), name="rot", commutative=False), P.var("sin")))


def _rope(g, root, x, cos, sin, rot, hi, lo):
    d = x.type.shape[-1] if x.type.rank else None
    if not isinstance(d, int) or d % 2 or rot.producer.attrs["dim"] not in (-1, x.type.rank - 1):
        return "not a rotate-half over the last dim"
    h, last = d // 2, (-1, x.type.rank - 1)
    a, b = hi.producer.attrs, lo.producer.attrs
    if not (a["dim"] in last and b["dim"] in last and a["step"] == 1 and b["step"] == 1
            and a["start"] == h and a["end"] >= d and b["start"] == 0 and b["end"] == h):
        return f"the halves are not x[..., {h}:] and x[..., :{h}]"
    if x.type.dtype not in FLOAT_DTYPES or cos.type.dtype != x.type.dtype or sin.type.dtype != x.type.dtype:
        return "cos/sin/x dtypes differ"
    out = g.op("rope", x, cos, sin)
    return out if out.type.matches(root.output.type) else "cos/sin broadcast x to another shape"


# HF `repeat_kv`: k[:, :, None].expand(b, hk, rep, s, d).reshape(b, hk*rep, s, d) == repeat_interleave(rep,
# dim=1), which `attention` already does for k/v with fewer heads (GQA): feed it the unrepeated k/v.
_REPEAT_KV = P("reshape", P("expand", P("unsqueeze", X, attrs={"dim": lambda d: d in (2, -3)}), name="e"))


def _unrepeated(v):
    caps: dict = {}
    if not _REPEAT_KV.match(v, caps) or caps["x"].type.rank != 4 or caps["e"].type.rank != 5:
        return None
    x, (b, hk, rep, s, d) = caps["x"], caps["e"].type.shape
    want_x, want_v = (b, hk, s, d), (b, symbolic.mul(hk, rep), s, d)
    pairs = list(zip(x.type.shape, want_x)) + list(zip(v.type.shape, want_v))
    return x if len(pairs) == 8 and all(symbolic.equal(a, c) for a, c in pairs) else None


def _attention_gqa(g, root):
    q, k, v, *mask = root.inputs
    k2, v2 = _unrepeated(k), _unrepeated(v)
    if k2 is None or v2 is None:  # attention repeats k and v by the same factor: both or neither
        return None if k2 is v2 else "only one of k/v is a repeat_kv"
    return g.op("attention", q, k2, v2, *mask, **root.attrs)


def _positions(v):
    """(offset, length) when v holds offset + arange(length) along its single non-1 axis (an
    arange, shifted by constants or `dim_value`s, unsqueezed), else None."""
    node = v.producer
    if node is None:
        return None
    if node.op == "arange" and node.attrs["step"] == 1:
        start = node.attrs["start"]
        return start, symbolic.add(node.attrs["end"], -start if isinstance(start, int) else f"-({start})")
    if node.op == "unsqueeze":
        return _positions(node.inputs[0])
    if node.op == "add":
        for a, b in (node.inputs, node.inputs[::-1]):
            pos, shift = _positions(a), _shift(b)
            if pos is not None and shift is not None and a.type.shape == v.type.shape:
                return symbolic.add(pos[0], shift), pos[1]
    return None


def _shift(v):
    node = v.producer
    if node is not None and node.op == "dim_value":
        return node.attrs["expr"]
    c = const_value(v)
    return c if isinstance(c, int) and not isinstance(c, bool) else None


def _along(v, axis, length) -> bool:
    """v varies only along `axis` (from the end), which has `length` entries: every other dim is 1."""
    shape = v.type.shape
    if len(shape) < -axis:
        return False
    return symbolic.equal(shape[axis], length) and all(
        isinstance(d, int) and d == 1 for i, d in enumerate(shape) if i != len(shape) + axis)


def _causal_offset(mask):
    """(kv_len, q_len, offset) if `mask` keeps the keys at positions <= each query's position, where
    queries sit at offset + arange(q_len) and keys at arange(kv_len); else None."""
    node = mask.producer
    while node is not None and node.op == "expand":
        node = node.inputs[0].producer
    if node is None or node.op not in ("le", "ge"):
        return None
    key, query = node.inputs if node.op == "le" else node.inputs[::-1]
    kp, qp = _positions(key), _positions(query)
    if kp is None or qp is None or not _along(key, -1, kp[1]) or not _along(query, -2, qp[1]):
        return None
    return kp[1], qp[1], symbolic.add(qp[0], f"-({kp[0]})")


def _attention_causal(g, root):
    q, k, v, *mask = root.inputs
    if not mask or mask[0].type.dtype != "bool":
        return None
    found = _causal_offset(mask[0])
    if found is None:
        return "the mask is not a comparison of key and query positions"
    k_len, q_len, offset = found
    lq, lk = q.type.shape[-2], k.type.shape[-2]
    if not (symbolic.equal(k_len, lk) and symbolic.equal(q_len, lq) and symbolic.equal(offset, symbolic.add(lk, f"-({lq})"))):
        return f"positions (keys {k_len}, queries {q_len}, offset {offset}) are not causal for q_len {lq}, kv_len {lk}"
    if any(not (isinstance(d, int) and d == 1) and not symbolic.equal(d, b)
           for d, b in zip(mask[0].type.shape[:-2], q.type.shape[:-2])):
        return "the mask does not broadcast over the batch/head dims"
    return g.op("attention", q, k, v, **{**root.attrs, "causal": True})


def _through_casts(v):
    while v.producer is not None and v.producer.op == "cast" and v.producer.inputs[0].type.dtype in FLOAT_DTYPES:
        v = v.producer.inputs[0]
    return v


def _scaled(v):
    """(x, factor) where v = x * factor or x / (1/factor) by a scalar constant, else (v, 1.0)."""
    node = v.producer
    if node is not None and node.op in ("mul", "div"):
        for i, j in ((0, 1), (1, 0)) if node.op == "mul" else ((0, 1),):
            c = const_value(node.inputs[j])
            if isinstance(c, (int, float)) and not isinstance(c, bool) and c != 0 and \
                    node.inputs[i].type.shape == v.type.shape:
                return node.inputs[i], float(c) if node.op == "mul" else 1.0 / float(c)
    return v, 1.0


def _transposed(g, v):
    """k such that v = k^T (the last two dims swapped), v being a permute: k is a permute of the same
    source (or the source itself) when the transpose was folded into another permute."""
    node = v.producer
    dims = [d % v.type.rank for d in node.attrs["dims"]]
    dims[-2], dims[-1] = dims[-1], dims[-2]
    x = node.inputs[0]
    return x if dims == list(range(len(dims))) else g.op("permute", x, dims=dims)


def _softcapped(v):
    """(x, cap) where v = cap * tanh(x / cap) (or x * (1/cap)) by a positive scalar constant cap: Gemma 2's
    attention logit soft-capping; else (v, 0.0)."""
    node = v.producer
    if node is None or node.op != "mul":
        return v, 0.0
    for t, c in (node.inputs, node.inputs[::-1]):
        cap, th = const_value(c), t.producer
        if isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap > 0 and th is not None and \
                th.op == "tanh" and t.type.shape == v.type.shape:
            x, f = _scaled(th.inputs[0])
            if math.isclose(f * cap, 1.0, rel_tol=1e-6) and x.type.shape == v.type.shape:
                return x, float(cap)
    return v, 0.0


# a masked_fill value read as a mask: -inf or at most half the dtype's minimum (HF's and MPT's fill is the minimum).
# Filled or added to a score, it weighs the key 0 alike, and a row with every key masked is uniform both ways
# (score + min rounds to min); a milder fill (BERT-era -1e4) is left to the chain, which computes it exactly
_DTYPE_MIN = {"f16": -65504.0, "bf16": -3.3895313892515355e38, "f32": -3.4028234663852886e38,
              "f64": -1.7976931348623157e308}


def _filled(v):
    """(x, (cond, fill, masked)) where v = where(cond, fill, x) (masked) or where(cond, x, fill) (cond keeps):
    a masked_fill of the scores with -inf or their dtype's minimum (a scalar constant); else None."""
    node = v.producer
    if node is None or node.op != "where" or node.inputs[0].type.dtype != "bool":
        return None
    cond, a, b = node.inputs
    for fill, x, masked in ((a, b, True), (b, a, False)):
        c = const_value(fill)
        if isinstance(c, (int, float)) and not isinstance(c, bool) and c <= _DTYPE_MIN.get(v.type.dtype, 0) / 2 and \
                x.type.shape == v.type.shape and x.type.dtype == v.type.dtype:
            return x, (cond, fill, masked)
    return None


def _masked_scores(scores):
    """(raw scores, additive terms, fills) peeling the masking of eager attention off its scores: adds of
    float masks or biases (padding, ALiBi) and masked_fills of a very negative constant, in any order, above
    the product (scaled, maybe soft-capped). None when no matmul is under them."""
    terms, fills, cur = [], [], scores
    for _ in range(8):
        if _product(cur) is not None:
            return cur, terms, fills
        node = cur.producer
        filled = _filled(cur)
        if filled is not None:
            cur = filled[0]
            fills.append(filled[1])
            continue
        if node is None or node.op != "add":
            return None
        for a, b in (node.inputs, node.inputs[::-1]):
            if a.type.shape == cur.type.shape and b.type.dtype in FLOAT_DTYPES and _reaches_scores(a):
                cur = a
                terms.append(b)
                break
        else:
            return None
    return None


def _product(v):
    """(q, kt, factor, softcap, k) where v = (q @ kt) * factor, or softcap * tanh((q @ kt) * factor / softcap), by
    scalar constants, k None; the product may be taken over [batch * heads, ...] and reshaped to [batch, heads,
    ...] (GPT-2's reorder_and_upcast_attn, GPT-NeoX-Japanese), q and kt then the 4-d values flattened into it,
    or, where the keys were flattened before their transpose, k the 4-d keys and kt None. Else None."""
    v, softcap = _softcapped(v)
    factor, lead = 1.0, None
    for _ in range(4):
        v, f = _scaled(v)
        factor *= f
        node = v.producer
        if node is None:
            return None
        if node.op == "matmul":
            break
        if node.op != "reshape" or lead is not None or v.type.rank != 4 or node.inputs[0].type.rank != 3:
            return None
        x = node.inputs[0]
        b, h, *rest = v.type.shape
        if not (symbolic.equal(x.type.shape[0], symbolic.mul(b, h))
                and all(symbolic.equal(p, r) for p, r in zip(x.type.shape[1:], rest))):
            return None
        v, lead = x, (b, h)
    else:
        return None
    q, kt = node.inputs
    k = None
    if lead is not None:
        q, kt4 = _unflattened(q, lead), _unflattened(kt, lead)
        t = kt.producer
        if kt4 is None and t is not None and t.op == "permute" and [d % 3 for d in t.attrs["dims"]] == [0, 2, 1]:
            k = _unflattened(t.inputs[0], lead)   # (k flattened)^T
        if q is None or (kt4 is None and k is None):
            return None
        kt = kt4
    return q, kt, factor, softcap, k


def _unflattened(x, lead):
    """The 4-d [*lead, m, n] value that x [lead[0] * lead[1], m, n] is a reshape of, else None."""
    node = x.producer
    if node is None or node.op != "reshape" or node.inputs[0].type.rank != 4:
        return None
    src = node.inputs[0]
    shape = src.type.shape
    if all(symbolic.equal(a, b) for a, b in zip(shape, (*lead, *x.type.shape[1:]))):
        return src
    return None


def _reaches_scores(v, depth=8):
    if _product(v) is not None:
        return True
    node = v.producer
    if depth == 0 or node is None:
        return False
    filled = _filled(v)
    if filled is not None:
        return _reaches_scores(filled[0], depth - 1)
    return node.op == "add" and any(_reaches_scores(a, depth - 1) for a in node.inputs if a.type.shape == v.type.shape)


def _attention_eager(g, root):
    probs, v = root.inputs
    sm = _through_casts(probs).producer
    if sm is None or sm.op != "softmax" or sm.attrs["dim"] % sm.output.type.rank != sm.output.type.rank - 1:
        return None
    peeled = _masked_scores(_through_casts(sm.inputs[0]))
    if peeled is None:
        return None
    scores, terms, fills = peeled
    q, kt, factor, softcap, k = _product(scores)
    q, q_factor = _scaled(q)
    if q.type.rank != 4 or (k if kt is None else kt).type.rank != 4 or v.type.rank != 4:
        return "not q @ k^T over [batch, heads, seq, dim]"
    if kt is not None and (kt.producer is None or kt.producer.op != "permute"):
        return "the key operand is not a transpose"
    k_len, k_dim = (kt.type.shape[-1], kt.type.shape[-2]) if kt is not None else k.type.shape[-2:]
    if not (symbolic.equal(k_len, v.type.shape[-2]) and symbolic.equal(q.type.shape[-1], k_dim)):
        return "k and v lengths or q and k dims differ"
    hq, hk, hv = q.type.shape[-3], (k if kt is None else kt).type.shape[-3], v.type.shape[-3]
    if q.type.dtype != root.output.type.dtype or not symbolic.equal(hk, hv) or \
            not (symbolic.equal(hq, hv) or hv == 1):   # k/v heads broadcast over q's: multi-query = GQA
        return "dtype or head count changes between q and the output"
    k = _transposed(g, kt) if kt is not None else k
    scale = factor * q_factor
    mask = None
    for t in terms:
        mask = t if mask is None else g.op("add", mask, t)
    for cond, fill, masked in fills:   # a filled score weighs its key 0, as the fill added to it does
        if mask is None:
            mask = g.op("constant", value=0.0, dtype=fill.type.dtype)
        mask = g.op("where", cond, fill, mask) if masked else g.op("where", cond, mask, fill)
    if mask is not None and mask.type.rank == 0:
        return "the mask is a scalar"
    attrs = {"causal": False, "scale": scale} | ({"softcap": softcap} if softcap else {})
    return g.op("attention", q, k, v, *([mask] if mask is not None else []), **attrs)


def _window_of(keep, lq, lk):
    """w when bool `keep` [.., lq, lk] holds key index > query index - (w + 1) (HF's sliding-window overlay,
    queries at lk - lq + arange(lq), keys at arange(lk)), i.e. `attention{window=w}`'s band; else None."""
    node = keep.producer
    if node is None or node.op not in ("gt", "lt", "ge", "le"):
        return None
    key, qexpr = node.inputs if node.op in ("gt", "ge") else node.inputs[::-1]
    qn, shift = qexpr.producer, None
    if qn is not None and qn.op in ("sub", "add"):
        c = const_value(qn.inputs[1])
        if isinstance(c, int) and not isinstance(c, bool):
            qexpr, shift = qn.inputs[0], (c if qn.op == "sub" else -c)
    if shift is None:
        return None
    kp, qp = _positions(key), _positions(qexpr)
    if kp is None or qp is None or not _along(key, -1, kp[1]) or not _along(qexpr, -2, qp[1]):
        return None
    if not (symbolic.equal(kp[1], lk) and symbolic.equal(qp[1], lq)
            and symbolic.equal(symbolic.add(qp[0], f"-({kp[0]})"), symbolic.add(lk, f"-({lq})"))):
        return None
    window = shift - 1 if node.op in ("gt", "lt") else shift   # strict: q - k < shift
    return window if window > 0 else None


def _attention_window(g, root):
    q, k, v, *mask = root.inputs
    if not mask or root.attrs.get("window") or mask[0].producer is None:
        return None
    keep_mask, additive = mask[0], None
    node = keep_mask.producer
    if node.op == "where" and keep_mask.type.dtype in FLOAT_DTYPES:   # eager: where(~keep, min, 0)
        c = node.inputs[0].producer
        if c is None or c.op not in ("bitwise_not", "logical_not"):
            return None
        keep_mask, additive = c.inputs[0], node.inputs[1:]
    band = keep_mask.producer
    if band is None or band.op not in ("bitwise_and", "logical_and") or keep_mask.type.dtype != "bool":
        return None
    lq, lk = q.type.shape[-2], k.type.shape[-2]
    for other, keep in (band.inputs, band.inputs[::-1]):
        window = _window_of(keep, lq, lk)
        if window is not None and other.type.dtype == "bool" and other.type.shape == keep_mask.type.shape:
            rest = other if additive is None else g.op("where", g.op("bitwise_not", other), *additive)
            return g.op("attention", q, k, v, rest, **{**root.attrs, "window": window, "sinks": 0})
    return None


recognize = RuleSet([
    (P("matmul", any_inputs=True), _attention_eager, "attention-eager"),
    (P("attention", any_inputs=True), _attention_window, "attention-window-mask"),
    (P("attention", any_inputs=True), _attention_gqa, "attention-gqa"),
    (P("attention", any_inputs=True), _attention_causal, "attention-causal-mask"),
    (_RMS_CORE, _rms_core),
    (P("cast", P("rms_norm", P("cast", X, attrs={"dtype": "f32"}), name="n")), _rms_upcast),
    (P("mul", P("rms_norm", X, name="n"), P.var("w")), _rms_weight),
    (P("mul", X, P("sigmoid", X)), _silu),
    (_ROPE, _rope),
    (_GELU, _gelu),
], name="recognize")

RULES = identities + folds + recognize


@register_pass("canonicalize")
class Canonicalize(Pass):
    """Simplify identities, fold op pairs, recognize rms_norm/silu/gelu chains."""
    max_rewrites: int = 0  # 0: the driver's default cap (10 x nodes + 100)

    def run(self, graph) -> PassResult:
        stats = apply_rules(graph, RULES, name="canonicalize", max_rewrites=self.max_rewrites or None)
        return PassResult(bool(stats), stats)
