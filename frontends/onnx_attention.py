"""ONNX Attention (opset 23+) and RMSNormalization, composed from IR primitives.

Attention follows the ONNX reference: 3-d inputs are split into heads, past K/V are
concatenated, the mask becomes an additive bias (bool -> 0/-inf; a shorter mask is padded),
`is_causal` aligns the diagonal to the past length, GQA repeats K/V heads, softcap is applied
to the scaled scores before the bias, and fully-masked rows give zeros rather than NaN.
Sliding windows and `nonpad_kv_seqlen` are rejected.
"""
from __future__ import annotations
import math

from ..ir import compose, symbolic as S
from .onnx_ops import _c, _same_dtype, onnx_op, reference_sum


@onnx_op("RMSNormalization")
def _rms_norm(imp, a):
    x, scale = imp.value(0), imp.value(1)
    axis = a.get("axis", -1) % x.type.rank
    eps = a.get("epsilon", 1e-5)
    if axis == x.type.rank - 1 and scale.type.dtype == x.type.dtype and scale.type.rank <= 1:
        return imp.op("rms_norm", x, scale, eps=eps)  # the IR op: same f32 statistics, cast back, scale
    xf = _same_dtype(imp, x, "f32")  # stash_type: the statistics are computed in f32
    ms = imp.op("mean", imp.op("mul", xf, xf), dims=list(range(axis, x.type.rank)), keepdim=True)
    y = imp.op("mul", xf, imp.op("rsqrt", imp.op("add", ms, _c(imp, ms, eps))))
    return imp.op("mul", _same_dtype(imp, y, x.type.dtype), scale)


def _heads(imp, x, n_heads):
    """[B, S, H*D] -> [B, H, S, D]."""
    b, s, hd = x.type.shape
    return imp.op("permute", imp.op("reshape", x, shape=[b, s, n_heads, -1]), dims=[0, 2, 1, 3])


def _safe_softmax(imp, x):
    """softmax over the last dim that maps a row of all -inf to zeros (ONNX semantics)."""
    m = imp.op("amax", x, dims=[-1], keepdim=True)
    m = imp.op("where", imp.op("isinf", m, pos=False, neg=True), _c(imp, m, 0), m)
    e = imp.op("exp", imp.op("sub", x, m))
    s = reference_sum(imp, e, x.type.rank - 1)
    s = imp.op("where", imp.op("eq", s, _c(imp, s, 0)), _c(imp, s, 1), s)
    return imp.op("div", e, s)


def _bias(imp, q_len, kv_len, past_len, dtype, a):
    """The additive bias [.., q, kv] from attn_mask and is_causal, or None."""
    bias = None
    if imp.has(3):
        mask = imp.value(3)
        pad = S.add(kv_len, S.mul(mask.type.shape[-1], -1))  # dims may be symbolic ('seq')
        if not isinstance(pad, int):
            raise imp.unsupported("attn_mask shorter than the key length by a symbolic amount is not supported")
        if pad > 0:
            fill = 0.0 if mask.type.dtype == "bool" else -math.inf
            mask = imp.op("pad", mask, pads=[0, pad], value=fill)
        if mask.type.dtype == "bool":
            zero = imp.op("constant", value=0.0, dtype=dtype)
            mask = imp.op("where", mask, zero, imp.op("constant", value=-math.inf, dtype=dtype))
        bias = mask
    if a.get("is_causal", 0):
        allowed = compose.causal_keep(imp.op, q_len, kv_len, diagonal=past_len)
        base = bias if bias is not None else imp.op("full", shape=[q_len, kv_len], value=0.0, dtype=dtype)
        bias = imp.op("where", allowed, base, imp.op("constant", value=-math.inf, dtype=dtype))
    return bias


@onnx_op("Attention")
def _attention(imp, a):
    if imp.has(6) or a.get("left_window_size", -1) != -1 or a.get("right_window_size", -1) != -1:
        raise imp.unsupported("nonpad_kv_seqlen and sliding windows are not supported")
    if a.get("softmax_precision") not in (None, 1):
        raise imp.unsupported("softmax_precision other than float is not supported")
    q, k, v = imp.value(0), imp.value(1), imp.value(2)
    out_dtype = q.type.dtype
    # f16/bf16: compute like the ONNX reference (and the op's function body) does, in the input
    # dtype with a rounding after each step and sqrt(scale) applied to q and to k, so the result
    # matches it to the last bit instead of differing by one rounding (> rtol for bf16).
    low = out_dtype in ("f16", "bf16") and k.type.dtype == v.type.dtype == out_dtype
    if not low:
        q, k, v = (_same_dtype(imp, t, "f32") for t in (q, k, v))
    rank3 = q.type.rank == 3
    if rank3:
        q, k, v = (_heads(imp, q, a["q_num_heads"]), _heads(imp, k, a["kv_num_heads"]),
                   _heads(imp, v, a["kv_num_heads"]))
    past_len = 0
    if imp.has(4):
        past_len = imp.type(4).shape[2]
        k = imp.op("concat", _same_dtype(imp, imp.value(4), k.type.dtype), k, dim=2)
        v = imp.op("concat", _same_dtype(imp, imp.value(5), v.type.dtype), v, dim=2)
    present_k, present_v = k, v
    scale = a.get("scale") or 1.0 / math.sqrt(q.type.shape[3])
    hq, hk = q.type.shape[1], k.type.shape[1]
    k, v = compose.repeat_heads(imp.op, k, hq // hk), compose.repeat_heads(imp.op, v, hq // hk)
    if low:
        root = _c(imp, q, math.sqrt(scale))
        scores = imp.op("matmul", imp.op("mul", q, root), imp.op("permute", imp.op("mul", k, root), dims=[0, 1, 3, 2]))
    else:
        scores = imp.op("mul", imp.op("matmul", q, imp.op("permute", k, dims=[0, 1, 3, 2])), _c(imp, q, scale))
    softcap = a.get("softcap", 0.0)
    if softcap > 0:
        scores = imp.op("mul", imp.op("tanh", imp.op("div", scores, _c(imp, scores, softcap))),
                        _c(imp, scores, softcap))
    qk_out = scores
    bias = _bias(imp, q.type.shape[2], k.type.shape[2], past_len, q.type.dtype, a)
    biased = scores if bias is None else imp.op("add", scores, bias)
    mode = a.get("qk_matmul_output_mode", 0)
    if mode == 2:
        qk_out = biased
    if low and a.get("softmax_precision") == 1:  # softmax in f32, then back to the input dtype
        probs = _same_dtype(imp, _safe_softmax(imp, _same_dtype(imp, biased, "f32")), out_dtype)
    else:
        probs = _safe_softmax(imp, biased)
    if bias is not None:  # rows the bias masks entirely attend to nothing
        row_masked = imp.op("isinf", imp.op("amax", bias, dims=[-1], keepdim=True), pos=False, neg=True)
        probs = imp.op("where", row_masked, _c(imp, probs, 0), probs)
    if mode == 3:
        qk_out = probs
    y = imp.op("matmul", probs, v)
    if rank3:
        b, h, s, d = y.type.shape
        y = imp.op("reshape", imp.op("permute", y, dims=[0, 2, 1, 3]), shape=[b, s, -1])
    return [_same_dtype(imp, t, out_dtype) for t in (y, present_k, present_v, qk_out)]
