"""Linear attention with a learnable feature map, optionally hybrid with a sliding softmax window.

    %out, %kv_new, %z_new = linear_attention(%q, %k, %v, %kv, %z, @wq, @wk, @wf, %mask, %depth)
                            {feature_map="hedgehog", window=64, scale=0.125}

q [b, hq, s, d]; k, v [b, hk, n, d] / [b, hk, n, dv] (hk divides hq: GQA, query head h reads key head
h // (hq / hk)); the last s of the n keys are the new tokens', the n - s before them are a `ring` state's
rows (the `window` keys before the first new token; none without a window). kv [b, hk, f, dv] and
z [b, hk, f] are a `fixed` state: sum over every older key of phi(k) v^T and of phi(k). wq [hq, d, m],
wk [hk, d, m] are the feature maps' weights; f = 2m (hedgehog) or m (elu, relu2); wf [hq] is each head's
log window factor (LoLCATs' learnable weight of the softmax window against the linear part). mask (bool [b, 1, s, n],
optional) is over the n keys (True = may attend). depth (i64 [b, s], optional, after mask) places the new
tokens by position: query i sits at key index n - s + depth_i and new key m at n - s + depth_m (a chain:
depth = 0, 1, ..; a candidate tree: each node's depth, slimgraph/decoder.py verify), so a tree candidate's
window and sinks are those of the same tokens decoded as a chain. Causality stays by index (and the mask).

Feature maps phi(x) = F(x W) per head:
- `hedgehog` (Zhang et al. 2024, "The Hedgehog & the Porcupine", arXiv:2402.04347): [softmax(xW), softmax(-xW)]
- `elu` (Katharopoulos et al. 2020, arXiv:2006.16236): elu(xW) + 1
- `relu2`: relu(xW)^2

Query at key index p = n - s + i (i-th new token; n - s + depth_i with `depth`) sees key j <= n - s + i:
- with softmax scores over the window (p - j <= window) and the first `sinks` keys (attention sinks,
  StreamingLLM, arXiv:2309.17453; the ring's first rows): a_ij = exp(wf) exp(q.k * scale - max over them),
- with linear scores phi(q).phi(k) over every other older key (p - j > window, and the state's keys),
and both share ONE normalizer (LoLCATs, Zhang et al. 2024, arXiv:2410.10254, eq. 6):

    out_i = (sum_win a_ij v_j + sum_lin phi(q_i).phi(k_j) v_j + phi(q_i) kv) / (sum_win a_ij + sum_lin ... + phi(q_i).z)

window = 0 is pure linear attention (every key, the query's own included, is linear). The returned state
folds in every key that leaves the window: keys sinks <= j < n - window (the ring keeps the first `sinks`
and the last `window`), each
weighted by whether the last query may attend to it (mask[..., -1, j]: a padding mask's key column).
The mask is applied per (query, key) to the keys of this call; keys folded into kv/z by earlier calls are
seen by every query (a padding or causal mask: what the decoder passes; a tree mask is honoured within
the call only). This reference is the T x T masked form; the `torch` target runs a chunked form that never
builds T x T (codegen/torch_linear_attention.py), tested equal to it.
"""
import torch
import torch.nn.functional as F

from ..registry import Attr, register_op
from ..types import TensorType
from . import infer as I

FEATURE_MAPS = ("hedgehog", "elu", "relu2")
EPS = 1e-12     # the normalizer's floor (relu2 features can all be 0)


def features(x: torch.Tensor, w: torch.Tensor, kind: str) -> torch.Tensor:
    """phi(x W) per head: x [b, h, t, d], w [h, d, m] -> [b, h, t, f] (f = 2m for hedgehog, else m)."""
    y = torch.einsum("bhtd,hdm->bhtm", x, w.to(x.dtype))
    if kind == "hedgehog":
        return torch.cat((torch.softmax(y, -1), torch.softmax(-y, -1)), -1)
    if kind == "elu":
        return F.elu(y) + 1
    if kind == "relu2":
        return torch.relu(y).square()
    raise ValueError(f"linear_attention: unknown feature_map {kind!r}; valid: {', '.join(FEATURE_MAPS)}")


def feature_dim(kind: str, m: int) -> int:
    return 2 * m if kind == "hedgehog" else m


def _type(ts, a):
    q, k, v, kv, z, wq, wk, wf = ts[:8]
    if a["feature_map"] not in FEATURE_MAPS:
        raise I.ShapeError(f"linear_attention: unknown feature_map {a['feature_map']!r}; valid: {', '.join(FEATURE_MAPS)}")
    if q.rank != 4 or k.rank != 4 or v.rank != 4 or kv.rank != 4 or z.rank != 3 or wq.rank != 3 or wk.rank != 3:
        raise I.ShapeError(f"linear_attention: q, k, v [b, h, t, d], kv [b, hk, f, dv], z [b, hk, f], "
                           f"wq/wk [h, d, m]; got {q}, {k}, {v}, {kv}, {z}, {wq}, {wk}")
    f = feature_dim(a["feature_map"], wq.shape[2]) if isinstance(wq.shape[2], int) else None
    if f is not None and isinstance(kv.shape[2], int) and (kv.shape[2] != f or z.shape[2] != f):
        raise I.ShapeError(f"linear_attention: state feature dim {kv.shape[2]}/{z.shape[2]} != {f} "
                           f"({a['feature_map']} of {wq.shape[2]} per half)")
    if wf.rank != 1:
        raise I.ShapeError(f"linear_attention: wf (log window factor per query head) must be [hq], got {wf}")
    if a["sinks"] and not a["window"]:
        raise I.ShapeError("linear_attention: sinks need a window (pure linear attention has no softmax part)")
    if len(ts) > 8 and ts[8].dtype != "bool":
        raise I.ShapeError(f"linear_attention: the mask must be bool [b, 1, s, n], got {ts[8]}")
    if len(ts) > 9 and (ts[9].dtype != "i64" or ts[9].rank != 2):
        raise I.ShapeError(f"linear_attention: depth must be i64 [b, s], got {ts[9]}")
    return [TensorType(q.dtype, q.shape[:-1] + v.shape[-1:]), kv, z]


def split_scores(s: int, n: int, window: int, sinks: int = 0, device=None, depth=None):
    """(softmax keep, linear keep): bool [s, n] for the s queries at key indices n - s .. n - 1; with `depth`
    [b, s] (module docstring) bool [b, s, n], the window and sinks by the depths' key indices."""
    p = torch.arange(n - s, n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    causal = p - j >= 0
    if depth is not None and not is_chain(depth):
        at = depth + (n - s)                                            # [b, s]: each new token's key index
        past = torch.arange(n - s, device=device).expand(depth.shape[0], n - s)
        p, j = at[:, :, None], torch.cat((past, at), 1)[:, None, :]
    rel = p - j
    win = causal & ((rel <= window) | (j < sinks)) if window else torch.zeros_like(causal)
    return win, causal & ~win


def is_chain(depth) -> bool:
    """True when `depth` [b, s] is 0, 1, .., s - 1 in every row (the new tokens at consecutive key indices)."""
    return bool((depth == torch.arange(depth.shape[-1], device=depth.device)).all())


def combine(q, fq, k, fk, v, win, lin, kv, z, scale, factor):
    """The LoLCATs output over grouped heads: q/fq [b, hk, g, s, .], k/fk/v [b, hk, 1, n, .], win/lin
    broadcastable to [b, hk, g, s, n], kv [b, hk, 1, f, dv], z [b, hk, 1, f], factor (the window's
    weight) broadcastable to [b, hk, g, s, 1] -> [b, hk, g, s, dv]."""
    a_lin = (fq @ fk.transpose(-1, -2)) * lin
    num = a_lin @ v + fq @ kv
    den = a_lin.sum(-1) + (fq @ z.unsqueeze(-1)).squeeze(-1)
    if win is not None:
        sc = (q @ k.transpose(-1, -2)) * scale
        sc = sc.masked_fill(~win, torch.finfo(sc.dtype).min)
        e = torch.exp(sc - sc.amax(-1, keepdim=True)) * win * factor
        num = num + e @ v
        den = den + e.sum(-1)
    return num / den.clamp_min(EPS).unsqueeze(-1)


def fold(kv, z, fk, v, valid, upto: int, start: int = 0):
    """kv + sum_{start <= j < upto} valid_j phi(k_j) v_j^T, z + sum valid_j phi(k_j) (fk [b, hk, n, f], valid [b, n])."""
    if upto <= start:
        return kv, z
    fk = fk[:, :, start:upto] * valid[:, None, start:upto, None].to(fk.dtype)
    return kv + fk.transpose(-1, -2) @ v[:, :, start:upto], z + fk.sum(2)


def key_valid(mask, b, n, device):
    """Each key's column for the last query (a padding mask's key validity), or all True."""
    if mask is None:
        return torch.ones(b, n, dtype=torch.bool, device=device)
    return mask[:, 0, -1, :].expand(b, n)


def window_factor(wf, hk: int, rank: int):
    """exp(wf) [hq] -> broadcastable over grouped heads [b, hk, g, <rank - 3 dims>]."""
    return wf.exp().reshape(hk, -1, *[1] * (rank - 3))


@register_op("linear_attention", inputs="q k v kv z wq wk wf mask? depth?",
             attrs={"feature_map": Attr("str", "hedgehog"), "window": Attr("int", 0), "sinks": Attr("int", 0),
                    "scale": Attr("float", None)},
             infer=_type)
def linear_attention(q, k, v, kv, z, wq, wk, wf, mask=None, depth=None, *, feature_map="hedgehog", window=0,
                     sinks=0, scale=None):
    """Reference: the T x T masked form (module docstring). Returns (out [b, hq, s, dv], kv', z')."""
    b, hq, s, d = q.shape
    hk, n = k.shape[1], k.shape[2]
    g = hq // hk
    scale = d ** -0.5 if scale is None else scale
    fq, fk = features(q, wq, feature_map), features(k, wk, feature_map)
    win, lin = split_scores(s, n, window, sinks, q.device, depth)
    if win.dim() == 3:                                         # [b, s, n] -> [b, 1, 1, s, n]
        win, lin = win[:, None, None], lin[:, None, None]
    if mask is not None:
        m = mask[:, :, None]                                   # [b, 1, 1, s, n] over [b, hk, g, s, n]
        win, lin = win & m, lin & m
    out = combine(q.reshape(b, hk, g, s, d), fq.reshape(b, hk, g, s, -1), k[:, :, None], fk[:, :, None],
                  v[:, :, None], win if window else None, lin, kv[:, :, None], z[:, :, None], scale,
                  window_factor(wf, hk, 5))
    kv2, z2 = fold(kv, z, fk, v, key_valid(mask, b, n, q.device), n - window, min(sinks, n))
    return out.reshape(b, hq, s, v.shape[-1]), kv2, z2
