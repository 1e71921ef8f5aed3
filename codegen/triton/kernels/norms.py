"""Triton kernels for the row-wise norms of ir/opset/nn.py: `rms_norm(x, weight?){eps}` and
`layer_norm(x, weight?, bias?){axes, eps}`.

Shapes and layout: any leading shape; the normalized dims (rms_norm: the last; layer_norm: the last
`axes`, flattened to D) are one row of D contiguous values; one program per row, the whole row in one
block (D <= MAX_D, else the reference impl runs). dtypes: x f32|f16|bf16; statistics in f32.

Semantics follow the reference impls exactly in rounding order:
- rms_norm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", Llama's form):
  y = (x * rsqrt(mean(x^2) + eps)) rounded to x's dtype, then times weight in the promoted dtype of
  (x, weight), which is also the output dtype (as the reference's `y * weight`).
- layer_norm (Ba et al. 2016; torch.nn.functional.layer_norm): biased variance, (x - mean) * rstd *
  weight + bias in f32, output in x's dtype; weight/bias must have x's dtype (else the reference runs).

Tolerance vs the reference (tests/codegen/triton/test_triton_norms.py): f32 atol/rtol 1e-5; f16/bf16
within one unit of the last place (atol 1e-2 at |y| ~ 1, rtol 1e-2).
"""
from __future__ import annotations
import math

import torch

from ...lowering import lowering
from ._common import FLOATS, launch, fallback, import_triton, next_pow2, runnable

triton, tl = import_triton()

MAX_D = 1 << 16


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, D, eps, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < D
    xf = tl.load(x_ptr + row * D + offs, mask=m, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / D + eps)
    y = (xf * r).to(x_ptr.dtype.element_ty)
    if HAS_W:
        y = y.to(tl.float32) * tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * D + offs, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _layer_norm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, D, eps, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                       BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < D
    xf = tl.load(x_ptr + row * D + offs, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(xf, axis=0) / D
    xc = tl.where(m, xf - mean, 0.0)
    y = xc * (1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps))
    if HAS_W:
        y = y * tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(b_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * D + offs, y.to(y_ptr.dtype.element_ty), mask=m)


def _why_not(x, params, d):
    why = runnable(x, *params)
    if why is None and (x.dtype not in FLOATS or any(p is not None and p.dtype not in FLOATS for p in params)):
        why = f"dtypes {[str(t.dtype) for t in (x, *params) if t is not None]}"
    if why is None and d > MAX_D:
        why = f"a row of {d} > {MAX_D} values"
    if why is None and x.numel() == 0:
        why = "an empty input"
    return why


@lowering("triton", "rms_norm")
def rms_norm(x, weight=None, *, eps):
    """The `rms_norm` op: one program per row (module docstring)."""
    d = x.shape[-1]
    why = _why_not(x, (weight,), d)
    if why is None and weight is not None and weight.numel() != d:
        why = f"weight of shape {tuple(weight.shape)}"
    if why is not None:
        return fallback("rms_norm", why, x, weight, eps=eps)
    out_dtype = x.dtype if weight is None else torch.promote_types(x.dtype, weight.dtype)
    x2 = x.reshape(-1, d).contiguous()
    y = torch.empty(x2.shape, dtype=out_dtype, device=x.device)
    w = weight.contiguous() if weight is not None else x2
    launch(_rms_norm_kernel, (x2.shape[0],), x2, w, y, d, float(eps), HAS_W=weight is not None, BLOCK=next_pow2(d))
    return y.reshape(x.shape)


@lowering("triton", "layer_norm")
def layer_norm(x, weight=None, bias=None, *, axes, eps):
    """The `layer_norm` op over the last `axes` dims: one program per row (module docstring)."""
    d = math.prod(x.shape[x.dim() - axes:]) if 0 < axes <= x.dim() else -1
    why = _why_not(x, (weight, bias), d) if d > 0 else f"axes={axes} for a rank-{x.dim()} input"
    if why is None and any(p is not None and (p.dtype != x.dtype or p.numel() != d) for p in (weight, bias)):
        why = "weight/bias not of x's dtype and normalized shape"
    if why is not None:
        return fallback("layer_norm", why, x, weight, bias, axes=axes, eps=eps)
    x2 = x.reshape(-1, d).contiguous()
    y = torch.empty_like(x2)
    w = weight.contiguous() if weight is not None else x2
    b = bias.contiguous() if bias is not None else x2
    launch(_layer_norm_kernel, (x2.shape[0],), x2, w, b, y, d, float(eps), HAS_W=weight is not None,
                                       HAS_B=bias is not None, BLOCK=next_pow2(d))
    return y.reshape(x.shape)
