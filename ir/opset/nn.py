"""Neural-network ops: linear algebra, normalization, attention, convolution, pooling."""

import torch
import torch.nn.functional as F

from .. import symbolic as S
from ..dtypes import promote
from ..registry import Attr, register_op
from ..types import TensorType
from . import infer as I


def _matmul_type(ts, attrs):
    a, b = ts
    if a.rank == 0 or b.rank == 0:
        raise I.ShapeError("matmul operands must be at least 1-d")
    if b.rank == 1:
        shape = a.shape[:-1]
    elif a.rank == 1:
        shape = b.shape[:-2] + b.shape[-1:]
    else:
        shape = I.broadcast(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    k_a, k_b = a.shape[-1], b.shape[0] if b.rank == 1 else b.shape[-2]
    if isinstance(k_a, int) and isinstance(k_b, int) and k_a != k_b:
        raise I.ShapeError(f"matmul inner dims differ: {a} @ {b}")
    return TensorType(promote((a.dtype, 1), (b.dtype, 1)), shape)


@register_op("matmul", inputs="a b", infer=_matmul_type)
def matmul(a, b):
    return torch.matmul(a, b)


def _linear_type(ts, attrs):
    x, w = ts[0], ts[1]
    if w.rank != 2:
        raise I.ShapeError(f"linear weight must be 2-d [out, in], got {w}")
    if isinstance(x.shape[-1], int) and isinstance(w.shape[1], int) and x.shape[-1] != w.shape[1]:
        raise I.ShapeError(f"linear: input {x} does not match weight {w} (in={w.shape[1]})")
    return TensorType(x.dtype, x.shape[:-1] + (w.shape[0],))


@register_op("linear", inputs="x weight bias?", infer=_linear_type, traits="reads_weight")
def linear(x, weight, bias=None):
    """y = x @ weight.T + bias, weight laid out [out, in] as in torch.nn.Linear."""
    return F.linear(x, weight, bias)


@register_op("embedding", inputs="weight ids",
             infer=lambda ts, a: TensorType(ts[0].dtype, ts[1].shape + ts[0].shape[1:]), traits="reads_weight")
def embedding(weight, ids):
    return F.embedding(ids, weight)


@register_op("softmax", inputs="x", attrs={"dim": Attr("int")}, infer=I.unary_float)
def softmax(x, dim):
    return torch.softmax(x, dim)


@register_op("log_softmax", inputs="x", attrs={"dim": Attr("int")}, infer=I.unary_float)
def log_softmax(x, dim):
    return torch.log_softmax(x, dim)


@register_op("layer_norm", inputs="x weight? bias?", attrs={"axes": Attr("int", 1), "eps": Attr("float", 1e-5)},
             infer=I.same)
def layer_norm(x, weight=None, bias=None, *, axes, eps):
    """Normalizes over the last `axes` dims."""
    return F.layer_norm(x, x.shape[-axes:], weight, bias, eps)


@register_op("rms_norm", inputs="x weight?", attrs={"eps": Attr("float", 1e-6)}, infer=I.same)
def rms_norm(x, weight=None, *, eps):
    """x * rsqrt(mean(x^2, -1) + eps) * weight, computed in f32 and cast back (as Llama does).
    The one definition: torch kernels call it for the dtypes their fast path does not cover."""
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y * weight if weight is not None else y


def _rope_type(ts, attrs):
    x, cos, sin = ts
    if cos.shape[-1:] != x.shape[-1:] or sin.shape[-1:] != x.shape[-1:] or not isinstance(x.shape[-1], int) \
            or x.shape[-1] % 2:
        raise I.ShapeError(f"rope: cos {cos} / sin {sin} must match the even last dim of x {x}")
    return TensorType(x.dtype, I.broadcast(x.shape, cos.shape, sin.shape))


@register_op("rope", inputs="x cos sin", infer=_rope_type)
def rope(x, cos, sin):
    """Rotary position embedding, rotate-half form (Llama/Qwen/Mistral): x * cos + rotate_half(x) * sin
    with rotate_half(x) = concat(-x[..., d/2:], x[..., :d/2]); cos/sin broadcast against x."""
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), -1) * sin


@register_op("batch_norm", inputs="x mean var weight? bias?", attrs={"eps": Attr("float", 1e-5)}, infer=I.same)
def batch_norm(x, mean, var, weight=None, bias=None, *, eps):
    """Inference batch norm over dim 1 with running statistics."""
    return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)


def causal_keep(lq: int, lk: int, device=None) -> torch.Tensor:
    """bool [lq, lk]: query i may see key j iff j <= i + lk - lq (the causal diagonal aligned to the
    end, so with a cache of lk - lq past keys the last query sees every key)."""
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(lk - lq)


def and_mask(mask: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor:
    """Restrict an attention mask to `keep` (bool): a bool mask is and-ed, an additive (float)
    mask gets -inf where `keep` is False; no mask becomes `keep` itself."""
    if mask is None:
        return keep
    return mask & keep if mask.dtype == torch.bool else mask.masked_fill(~keep, float("-inf"))


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """GQA: [..., hk, seq, d] -> [..., hk * groups, seq, d], each key/value head repeated `groups`
    times in place (head h serves query heads h*groups .. h*groups + groups-1)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=-3)


def _attention_type(ts, attrs):
    q, k, v = ts[:3]
    return TensorType(q.dtype, q.shape[:-1] + v.shape[-1:])


@register_op("attention", inputs="q k v mask?",
             attrs={"causal": Attr("bool", False), "scale": Attr("float", None),
                    "window": Attr("int", 0), "sinks": Attr("int", 0), "softcap": Attr("float", 0.0)},
             infer=_attention_type)
def attention(q, k, v, mask=None, *, causal=False, scale=None, window=0, sinks=0, softcap=0.0):
    """softmax(q k^T * scale + mask) v over [..., heads, seq, dim]; k/v may have fewer heads (GQA).
    `causal` aligns the causal diagonal to the end (query i sees keys <= i + kv_len - q_len).
    `window` > 0 (a sliding window with attention sinks, StreamingLLM, arXiv:2309.17453): query i sees
    key j only if j < `sinks` or (i + kv_len - q_len) - j <= window, i.e. the first `sinks` keys and the
    `window` keys before its end-aligned diagonal; this composes (and) with `mask` and `causal`. Over a
    `ring` state (ir/state.py) the keys are the ring's rows followed by the new ones, and the rule keeps
    exactly what a full-length cache would show.
    `softcap` > 0 (Gemma 2's attention logit soft-capping) bounds the scaled scores before the mask:
    softmax(softcap * tanh(q k^T * scale / softcap) + mask) v."""
    groups = q.shape[-3] // k.shape[-3]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    if causal:
        mask = and_mask(mask, causal_keep(q.shape[-2], k.shape[-2], q.device))
    if window:
        mask = and_mask(mask, window_keep(q.shape[-2], k.shape[-2], window, sinks, q.device))
    if softcap:
        return softcapped_attention(q, k, v, mask, scale, softcap)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def softcapped_attention(q, k, v, mask, scale, softcap):
    """softmax(softcap * tanh(q k^T * scale / softcap) + mask) v over k/v with q's head count; a bool `mask`
    keeps where True; a query row with every key masked gives 0 (as SDPA's does)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    s = torch.tanh(s / softcap) * softcap
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    p = torch.softmax(s, dim=-1)
    if mask is not None:
        p = p.masked_fill((s == float("-inf")).all(-1, keepdim=True), 0.0)
    return torch.matmul(p, v)


def window_keep(lq: int, lk: int, window: int, sinks: int, device=None):
    """bool [lq, lk] of `attention{window, sinks}`: key j < sinks, or within `window` keys before query i's
    end-aligned diagonal i + lk - lq (keys after it are kept: causality is the mask's or `causal`'s job)."""
    keep = torch.ones(lq, lk, dtype=torch.bool, device=device).triu(lk - lq - window)
    if sinks:
        keep[:, :sinks] = True
    return keep


def _conv_out(size, k, s, p, d):
    if isinstance(size, int):
        return (size + 2 * p - d * (k - 1) - 1) // s + 1
    return S.canon(f"floor((({size})+{2 * p - d * (k - 1) - 1})/{s})+1")


def _conv2d_type(ts, a):
    x, w = ts[0], ts[1]
    kh, kw = w.shape[2], w.shape[3]
    (sh, sw), (ph, pw), (dh, dw) = a["stride"], a["padding"], a["dilation"]
    return TensorType(x.dtype, (x.shape[0], w.shape[0], _conv_out(x.shape[2], kh, sh, ph, dh),
                                _conv_out(x.shape[3], kw, sw, pw, dw)))


_CONV_ATTRS = {"stride": Attr("ints", [1, 1]), "padding": Attr("ints", [0, 0]),
               "dilation": Attr("ints", [1, 1]), "groups": Attr("int", 1)}


@register_op("conv2d", inputs="x weight bias?", attrs=_CONV_ATTRS, infer=_conv2d_type, traits="reads_weight")
def conv2d(x, weight, bias=None, *, stride, padding, dilation, groups):
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def _pool_type(ts, a):
    x = ts[0]
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"] or a["kernel"], a["padding"]
    if a.get("ceil_mode"):
        raise I.ShapeError("ceil_mode pooling is not supported")
    return x.with_shape(x.shape[:-2] + (_conv_out(x.shape[-2], kh, sh, ph, 1), _conv_out(x.shape[-1], kw, sw, pw, 1)))


_POOL_ATTRS = {"kernel": Attr("ints"), "stride": Attr("ints", None), "padding": Attr("ints", [0, 0]),
               "ceil_mode": Attr("bool", False)}


@register_op("max_pool2d", inputs="x", attrs=_POOL_ATTRS, infer=_pool_type)
def max_pool2d(x, *, kernel, stride, padding, ceil_mode):
    return F.max_pool2d(x, kernel, stride or kernel, padding, ceil_mode=ceil_mode)


@register_op("avg_pool2d", inputs="x", attrs={**_POOL_ATTRS, "count_include_pad": Attr("bool", True)},
             infer=_pool_type)
def avg_pool2d(x, *, kernel, stride, padding, ceil_mode, count_include_pad):
    return F.avg_pool2d(x, kernel, stride or kernel, padding, ceil_mode, count_include_pad)


@register_op("adaptive_avg_pool2d", inputs="x", attrs={"output_size": Attr("ints")},
             infer=lambda ts, a: ts[0].with_shape(ts[0].shape[:-2] + tuple(a["output_size"])))
def adaptive_avg_pool2d(x, *, output_size):
    return F.adaptive_avg_pool2d(x, output_size)


def _grouped_mm_type(ts, attrs):
    x, w, offs = ts
    if x.rank != 2 or w.rank != 3 or offs.rank != 1:
        raise I.ShapeError(f"grouped_mm takes x [rows, in], w [groups, in, out], offs [groups]; got {x}, {w}, {offs}")
    if offs.dtype not in ("i32", "i64"):
        raise I.ShapeError(f"grouped_mm: offs must be i32/i64, got {offs}")
    if isinstance(x.shape[1], int) and isinstance(w.shape[1], int) and x.shape[1] != w.shape[1]:
        raise I.ShapeError(f"grouped_mm: x {x} does not match w {w} (in={w.shape[1]})")
    return TensorType(x.dtype, (x.shape[0], w.shape[2]))


@register_op("grouped_mm", inputs="x w offs", infer=_grouped_mm_type)
def grouped_mm(x, w, offs):
    """Rows sorted by group: rows [offs[g-1], offs[g]) of `x` times `w[g]` (offs: cumulative row counts, as
    torch._grouped_mm and transformers' MoE experts take them); rows past offs[-1] are zero. A mixture of
    experts' expert matmuls (Mixtral, Qwen3-MoE, OLMoE, ... in transformers >= 5: grouped_mm_experts_forward)."""
    out = torch.zeros(x.shape[0], w.shape[2], dtype=x.dtype, device=x.device)
    start = 0
    for g, end in enumerate(offs.tolist()):
        end = min(max(int(end), start), x.shape[0])
        if end > start:
            out[start:end] = x[start:end] @ w[g].to(x.dtype)
        start = end
    return out
