"""Triton kernel for `rope(x, cos, sin)` (ir/opset/nn.py): rotary position embedding in the
rotate-half form of Llama/Qwen/Mistral (Su et al. 2021, "RoFormer", arXiv:2104.09864):

    y = x * cos + rotate_half(x) * sin,  rotate_half(x) = concat(-x[..., D/2:], x[..., :D/2])

Shapes: x, cos, sin broadcast against each other (numpy rules) to the output shape [..., D], D even;
typically x [b, heads, seq, D] and cos/sin [seq, D] or [b, 1, seq, D]. The output is contiguous in the
promoted dtype of (x, cos, sin). Inputs are read in place through their (broadcast, stride-0) strides,
up to 4 dims; more leading dims are merged by a reshape (which may copy a broadcast input).
One program per output row of D values.

Rounding follows the reference: each product is rounded to the output dtype before the sum, so f32 is
exact up to fma contraction and f16/bf16 match to one unit in the last place.
Tolerance vs the reference (tests/codegen/triton/test_triton_rope.py): f32 1e-6; f16/bf16 atol 1e-2.
"""
from __future__ import annotations
import torch

from ...lowering import lowering
from ._common import FLOATS, launch, fallback, import_triton, next_pow2, runnable

triton, tl = import_triton()


@triton.jit
def _rope_kernel(x_ptr, c_ptr, s_ptr, y_ptr, B, C, D,
                 sxa, sxb, sxc, sxd, sca, scb, scc, scd, ssa, ssb, ssc, ssd,
                 BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    a = pid // (B * C)
    b = (pid // C) % B
    c = pid % C
    h = D // 2
    offs = tl.arange(0, BLOCK)
    m = offs < D
    partner = tl.where(offs < h, offs + h, offs - h)
    xb = x_ptr + a * sxa + b * sxb + c * sxc
    xv = tl.load(xb + offs * sxd, mask=m, other=0.0).to(tl.float32)
    xr = tl.load(xb + partner * sxd, mask=m, other=0.0).to(tl.float32)
    rot = tl.where(offs < h, -xr, xr)
    cv = tl.load(c_ptr + a * sca + b * scb + c * scc + offs * scd, mask=m, other=0.0).to(tl.float32)
    sv = tl.load(s_ptr + a * ssa + b * ssb + c * ssc + offs * ssd, mask=m, other=0.0).to(tl.float32)
    odt = y_ptr.dtype.element_ty
    t1 = (xv * cv).to(odt).to(tl.float32)
    t2 = (rot * sv).to(odt).to(tl.float32)
    tl.store(y_ptr + pid * D + offs, (t1 + t2).to(odt), mask=m)


@lowering("triton", "rope")
def rope(x, cos, sin):
    """The `rope` op (module docstring)."""
    why = runnable(x, cos, sin)
    if why is None and any(t.dtype not in FLOATS for t in (x, cos, sin)):
        why = f"dtypes {x.dtype}, {cos.dtype}, {sin.dtype}"
    try:
        shape = torch.broadcast_shapes(x.shape, cos.shape, sin.shape)
    except RuntimeError:
        shape = None
    if why is None and (shape is None or len(shape) < 1 or shape[-1] % 2 or shape[-1] != x.shape[-1]):
        why = f"shapes {tuple(x.shape)}, {tuple(cos.shape)}, {tuple(sin.shape)}"
    if why is None and 0 in shape:
        why = "an empty input"
    if why is not None:
        return fallback("rope", why, x, cos, sin)
    out_dtype = torch.promote_types(torch.promote_types(x.dtype, cos.dtype), sin.dtype)
    d = shape[-1]
    views = [t.expand(shape) for t in (x, cos, sin)]
    if len(shape) > 4:
        views = [v.reshape(-1, *shape[-3:]) for v in views]
    views = [v.reshape((1,) * (4 - v.dim()) + tuple(v.shape)) if v.dim() < 4 else v for v in views]
    # reshape of an expanded tensor keeps stride 0 where it can; size-1 dims get stride 0 too
    strides = []
    for v in views:
        strides += [0 if n == 1 else s for n, s in zip(v.shape, v.stride())]
    a, b, c = views[0].shape[:3]
    y = torch.empty(a, b, c, d, dtype=out_dtype, device=x.device)
    launch(_rope_kernel, (a * b * c,), *views, y, b, c, d, *strides, BLOCK=next_pow2(d))
    return y.reshape(shape)
