"""`c` lowerings of the neural-network ops: calls into the kernel library (runtime/slimgraph_kernels.h)
with every shape resolved at build time.

    %y: f32[1,8,64] = linear(%x, @w: f32[64,32], @b)  ->  sg_linear_f32(v_y, v_x, v_w, v_b, 8, 64, 32);

linear/matmul/qlinear/dequantize/embedding/layer_norm/rms_norm/softmax/rope/attention and the f32
reductions. Kernels compute in f32; a node on another float dtype is declined (Unsupported) with the
reason, and the build reports it. qlinear/dequantize follow ir/opset/quant.py (layout in
ir/quant_format.py); f16 scales are converted to f32 once, at build time.
"""
from __future__ import annotations
import math

import torch

from ...ir import quant_format as Q
from ...ir.dtypes import itemsize
from ..lowering import register_lowering
from .emit import Unsupported, broadcast_strides, contiguous_strides


def _f32(*values):
    for v in values:
        if v is not None and v.type.dtype != "f32":
            raise Unsupported(f"%{v.name} is {v.type.dtype}; this kernel computes in f32")


def _opt(em, v):
    return "NULL" if v is None else em.ptr(v)


def _float_const(em, v, hint):
    """A f32 pointer to `v`: itself when f32, else a build-time f32 copy (f16 scales)."""
    t = em.const(v)
    if v.type.dtype == "f32" or t is None:
        _f32(v)
        return em.ptr(v)
    return em.add_const(t.float(), hint)


def linear(em, node):
    x, w = node.inputs[:2]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    _f32(x, w, b, node.output)
    n, k = em.shape(w)
    m = em.numel(x) // k if k else 0
    return f"    sg_linear_f32({em.ptr(node.output)}, {em.ptr(x)}, {em.ptr(w)}, {_opt(em, b)}, {m}, {n}, {k});"


def matmul(em, node):
    a, b = node.inputs
    out = node.output
    _f32(a, b, out)
    sa, sb = list(em.shape(a)), list(em.shape(b))
    if len(sa) == 1:
        sa = [1] + sa
    if len(sb) == 1:
        sb = sb + [1]
    m, k, n = sa[-2], sa[-1], sb[-1]
    batch = list(torch.broadcast_shapes(tuple(sa[:-2]), tuple(sb[:-2])))
    if not batch or math.prod(batch) == 1:
        return f"    sg_matmul_f32({em.ptr(out)}, {em.ptr(a)}, {em.ptr(b)}, {m}, {n}, {k});"
    stra = [s * m * k for s in broadcast_strides(sa[:-2], batch)]
    strb = [s * k * n for s in broadcast_strides(sb[:-2], batch)]
    strc = [s * m * n for s in contiguous_strides(batch)]
    loops, idx = "", []
    for d, size in enumerate(batch):
        loops += f"for (long b{d} = 0; b{d} < {size}; b{d}++) "
        idx.append(f"b{d}")

    def off(strides):
        return " + ".join(f"{i} * {s}" for i, s in zip(idx, strides) if s) or "0"
    return (f"    {loops}sg_matmul_f32({em.ptr(out)} + {off(strc)}, {em.ptr(a)} + {off(stra)}, "
            f"{em.ptr(b)} + {off(strb)}, {m}, {n}, {k});")


def _packed(node):
    """(qweight, scales, zeros or None, bias or None) of a qlinear node (a 1-D 4th input is the bias)."""
    rest = list(node.inputs[1:])
    q, s = rest[0], rest[1]
    z = b = None
    if len(rest) > 2:
        if Q.is_zeros(rest[2].type):
            z = rest[2]
            b = rest[3] if len(rest) > 3 else None
        else:
            b = rest[2]
    return q, s, z, b


def _integer_zeros(z):
    if z is not None and z.type.dtype not in ("u8", "i8"):
        raise Unsupported(f"float zero points %{z.name} ({z.type}): the C kernels take integer ones; quantize "
                          f"with zero_point=int (the default) for the c target")


def qlinear(em, node):
    x = node.inputs[0]
    q, s, z, b = _packed(node)
    _integer_zeros(z)
    _f32(x, b, node.output)
    bits = node.attrs["bits"]
    n, k = em.shape(q)[0], Q.logical_in_dim(em.shape(q), bits)
    g = Q.group_size(node.attrs["group"], k)
    m = em.numel(x) // k if k else 0
    kern = "sg_qlinear_i8_f32" if bits == 8 else "sg_qlinear_i4_f32"
    return (f"    {kern}({em.ptr(node.output)}, {em.ptr(x)}, {em.ptr(q)}, {_float_const(em, s, 'scales')}, "
            f"{_opt(em, z)}, {_opt(em, b)}, {m}, {n}, {k}, {g});")


def dequantize(em, node):
    q, s = node.inputs[:2]
    z = node.inputs[2] if len(node.inputs) > 2 else None
    _integer_zeros(z)
    _f32(node.output)
    bits = node.attrs["bits"]
    n, k = em.shape(q)[0], Q.logical_in_dim(em.shape(q), bits)
    g = Q.group_size(node.attrs["group"], k)
    kern = "sg_dequantize_i8_f32" if bits == 8 else "sg_dequantize_i4_f32"
    return (f"    {kern}({em.ptr(node.output)}, {em.ptr(q)}, {_float_const(em, s, 'scales')}, {_opt(em, z)}, "
            f"{n}, {k}, {g});")


def embedding(em, node):
    w, ids = node.inputs
    if ids.type.dtype != "i64":
        raise Unsupported(f"ids %{ids.name} are {ids.type.dtype}; the kernel takes i64")
    vocab, dim = em.shape(w)[0], math.prod(em.shape(w)[1:])
    size = itemsize(w.type.dtype)
    return (f"    SG_TRY(sg_embedding({em.ptr(node.output)}, {em.ptr(w)}, {em.ptr(ids)}, {em.numel(ids)}, "
            f"{vocab}, {dim}, {size}));")


def layer_norm(em, node):
    x = node.inputs[0]
    w = node.inputs[1] if len(node.inputs) > 1 else None
    b = node.inputs[2] if len(node.inputs) > 2 else None
    _f32(x, w, b)
    n = math.prod(em.shape(x)[-node.attrs["axes"]:])
    rows = em.numel(x) // n if n else 0
    return (f"    sg_layer_norm_f32({em.ptr(node.output)}, {em.ptr(x)}, {_opt(em, w)}, {_opt(em, b)}, {rows}, {n}, "
            f"{float(node.attrs['eps'])!r}f);")


def rms_norm(em, node):
    x = node.inputs[0]
    w = node.inputs[1] if len(node.inputs) > 1 else None
    _f32(x, w)
    if w is not None and em.shape(w) != em.shape(x)[-1:]:
        raise Unsupported(f"rms_norm weight {w.type} is not [{em.shape(x)[-1]}]")
    n = em.shape(x)[-1]
    return (f"    sg_rms_norm_f32({em.ptr(node.output)}, {em.ptr(x)}, {_opt(em, w)}, {em.numel(x) // n if n else 0}, "
            f"{n}, {float(node.attrs['eps'])!r}f);")


def _softmax(log):
    def lower(em, node):
        x = node.inputs[0]
        _f32(x)
        shape = em.shape(x)
        d = node.attrs["dim"] % max(len(shape), 1)
        outer, n, inner = math.prod(shape[:d]), shape[d] if shape else 1, math.prod(shape[d + 1:])
        return f"    sg_softmax_f32({em.ptr(node.output)}, {em.ptr(x)}, {outer}, {n}, {inner}, {int(log)});"
    return lower


def rope(em, node):
    x, cos, sin = node.inputs
    out = node.output
    _f32(x, cos, sin)
    if em.shape(x) != em.shape(out):
        raise Unsupported(f"x {x.type} is broadcast to {out.type}; the kernel takes x at the output's shape")
    if em.shape(cos) != em.shape(sin):
        raise Unsupported(f"cos {cos.type} and sin {sin.type} differ in shape")
    shape = em.shape(out)
    lead, d = shape[:-1], shape[-1]
    cs = broadcast_strides(em.shape(cos), shape)[:-1]
    return (f"    sg_rope_f32({em.ptr(out)}, {em.ptr(x)}, {em.ptr(cos)}, {em.ptr(sin)}, {len(lead)}, "
            f"{em.table(lead or [1])}, {em.table(cs or [0])}, {d});")


def attention(em, node):
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    out = node.output
    _f32(q, k, v, out)
    sq, sk, sv = em.shape(q), em.shape(k), em.shape(v)
    if len(sq) < 3 or len(sk) != len(sq) or len(sv) != len(sq) or sq[:-3] != sk[:-3] or sk[:-1] != sv[:-1]:
        raise Unsupported(f"q {q.type}, k {k.type}, v {v.type} must be [..., heads, seq, dim] with equal leading dims")
    hq, lq, dd = sq[-3:]
    hk, lk, _ = sk[-3:]
    dv = sv[-1]
    if hq % hk:
        raise Unsupported(f"{hq} query heads are not a multiple of {hk} key heads")
    if node.attrs.get("softcap"):
        raise Unsupported(f"attention with a logit soft-cap (softcap={node.attrs['softcap']}, Gemma 2): the C "
                          "kernel has no tanh cap; use the torch, onnx or cpu target")
    bsz = math.prod(sq[:-3])
    kind, ms = 0, [0, 0, 0, 0]
    if mask is not None:
        if mask.type.dtype == "bool":
            kind = 1
        elif mask.type.dtype == "f32":
            kind = 2
        else:
            raise Unsupported(f"mask %{mask.name} is {mask.type.dtype}; bool or f32 masks only")
        full = tuple(sq[:-3]) + (hq, lq, lk)
        st = broadcast_strides(em.shape(mask), full)
        lead = st[:-3]
        msb = lead[-1] if lead else 0
        if lead != [msb * c for c in contiguous_strides(sq[:-3])]:
            raise Unsupported(f"mask {mask.type} broadcasts over part of the leading dims of {q.type}; the "
                              "kernel indexes the mask by the flattened batch")
        ms = [msb] + st[-3:]
    scale = node.attrs["scale"]
    scale = 1 / math.sqrt(dd) if scale is None else scale
    return (f"    sg_attention_f32({em.ptr(out)}, {em.ptr(q)}, {em.ptr(k)}, {em.ptr(v)}, {_opt(em, mask)}, {kind}, "
            f"{ms[0]}, {ms[1]}, {ms[2]}, {ms[3]}, {bsz}, {hq}, {hk}, {lq}, {lk}, {dd}, {dv}, {float(scale)!r}f, "
            f"{int(node.attrs['causal'])}, {node.attrs['window']}, {node.attrs['sinks']});")


def _reduce(kind):
    def lower(em, node):
        x = node.inputs[0]
        _f32(x, node.output)
        shape = em.shape(x)
        dims = node.attrs["dims"]
        red = set(range(len(shape))) if not dims else {d % len(shape) for d in dims}
        return (f"    sg_reduce_f32({em.ptr(node.output)}, {em.ptr(x)}, {len(shape)}, {em.table(shape or [1])}, "
                f"{em.table([int(i in red) for i in range(len(shape))] or [0], 'int')}, {kind});")
    return lower


register_lowering("c", "linear", linear)
register_lowering("c", "matmul", matmul)
register_lowering("c", "qlinear", qlinear)
register_lowering("c", "dequantize", dequantize)
register_lowering("c", "embedding", embedding)
register_lowering("c", "layer_norm", layer_norm)
register_lowering("c", "rms_norm", rms_norm)
register_lowering("c", "softmax", _softmax(False))
register_lowering("c", "log_softmax", _softmax(True))
register_lowering("c", "rope", rope)
register_lowering("c", "attention", attention)
for _k, _op in enumerate(("sum", "mean", "amax", "amin", "prod")):
    register_lowering("c", _op, _reduce(_k))


def conv2d(em, node):
    x, w = node.inputs[:2]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    _f32(x, w, b)
    n, c, h, wd = em.shape(x)
    oc, _, kh, kw = em.shape(w)
    _, _, oh, ow = em.shape(node.output)
    (sh, sw), (ph, pw), (dh, dw) = node.attrs["stride"], node.attrs["padding"], node.attrs["dilation"]
    return (f"    sg_conv2d_f32({em.ptr(node.output)}, {em.ptr(x)}, {em.ptr(w)}, {_opt(em, b)}, {n}, {c}, {h}, {wd}, "
            f"{oc}, {kh}, {kw}, {oh}, {ow}, {sh}, {sw}, {ph}, {pw}, {dh}, {dw}, {node.attrs['groups']});")


def _pool(kind):
    def lower(em, node):
        x = node.inputs[0]
        _f32(x)
        shape = em.shape(x)
        h, w = shape[-2:]
        oh, ow = em.shape(node.output)[-2:]
        kh, kw = node.attrs["kernel"]
        sh, sw = node.attrs["stride"] or node.attrs["kernel"]
        ph, pw = node.attrs["padding"]
        cip = int(node.attrs.get("count_include_pad", True))
        return (f"    sg_pool2d_f32({em.ptr(node.output)}, {em.ptr(x)}, {math.prod(shape[:-2])}, {h}, {w}, {oh}, {ow}, "
                f"{kh}, {kw}, {sh}, {sw}, {ph}, {pw}, {kind}, {cip});")
    return lower


def adaptive_avg_pool2d(em, node):
    x = node.inputs[0]
    _f32(x)
    shape = em.shape(x)
    oh, ow = em.shape(node.output)[-2:]
    return (f"    sg_adaptive_avg_pool2d_f32({em.ptr(node.output)}, {em.ptr(x)}, {math.prod(shape[:-2])}, "
            f"{shape[-2]}, {shape[-1]}, {oh}, {ow});")


def batch_norm(em, node):
    """(x - mean) / sqrt(var + eps) * weight + bias over dim 1: one generated loop nest."""
    from .lower_elementwise import loop_nest
    x, mean, var = node.inputs[:3]
    w = node.inputs[3] if len(node.inputs) > 3 else None
    b = node.inputs[4] if len(node.inputs) > 4 else None
    _f32(x, mean, var, w, b)
    out = node.output
    shape = em.shape(out)
    chan = [1] * len(shape)
    chan[1] = shape[1]
    ops = [("x", (em.ptr(x), "float"), broadcast_strides(shape, shape))]
    for name, v in (("m", mean), ("v", var), ("w", w), ("b", b)):
        if v is not None:
            ops.append((name, (em.ptr(v), "float"), broadcast_strides(chan, shape)))
    eps = float(node.attrs["eps"])

    def body(ls):
        d = dict(zip([o[0] for o in ops], ls))
        e = f"(({d['x']} - {d['m']}) / sqrt({d['v']} + (float){eps!r}))"
        if "w" in d:
            e = f"({e} * {d['w']})"
        if "b" in d:
            e = f"({e} + {d['b']})"
        return e
    return loop_nest(em, out, ops, body)


def _argmax(is_min):
    def lower(em, node):
        x = node.inputs[0]
        _f32(x)
        shape = em.shape(x) or (1,)
        d = node.attrs["dim"] % len(shape)
        return (f"    sg_argmax_f32({em.ptr(node.output)}, {em.ptr(x)}, {math.prod(shape[:d])}, {shape[d]}, "
                f"{math.prod(shape[d + 1:])}, {int(is_min)});")
    return lower


def qembedding(em, node):
    ids, q, s = node.inputs[:3]
    z = node.inputs[3] if len(node.inputs) > 3 else None
    _integer_zeros(z)
    _f32(node.output)
    if ids.type.dtype != "i64":
        raise Unsupported(f"ids %{ids.name} are {ids.type.dtype}; the kernel takes i64")
    bits = node.attrs["bits"]
    vocab, k = em.shape(q)[0], Q.logical_in_dim(em.shape(q), bits)
    g = Q.group_size(node.attrs["group"], k)
    return (f"    SG_TRY(sg_qembedding_f32({em.ptr(node.output)}, {em.ptr(ids)}, {em.numel(ids)}, {em.ptr(q)}, "
            f"{_float_const(em, s, 'scales')}, {_opt(em, z)}, {vocab}, {k}, {g}, {bits}));")


register_lowering("c", "conv2d", conv2d)
register_lowering("c", "max_pool2d", _pool(0))
register_lowering("c", "avg_pool2d", _pool(1))
register_lowering("c", "adaptive_avg_pool2d", adaptive_avg_pool2d)
register_lowering("c", "batch_norm", batch_norm)
register_lowering("c", "argmax", _argmax(False))
register_lowering("c", "argmin", _argmax(True))
register_lowering("c", "qembedding", qembedding)
