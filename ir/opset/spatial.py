"""Spatial ops of vision/audio models: `resize` (ONNX Resize semantics), `conv_transpose2d`,
`grid_sample`, and `lstm` (one ONNX LSTM layer).

`resize` follows the ONNX Resize spec (opset 19, https://onnx.ai/onnx/operators/onnx__Resize.html):
separable per-axis interpolation, each output coordinate mapped to the input by
`coord` (half_pixel, half_pixel_symmetric, pytorch_half_pixel, align_corners, asymmetric,
tf_crop_and_resize), then `mode` nearest (rounded by `nearest_mode`), linear or cubic
(`cubic_a`, `exclude_outside`), optionally antialiased when downscaling. Index arithmetic is
done in f64 as ONNX's reference implementation does; neighbours outside the input take the
edge value (or `extrapolation` for tf_crop_and_resize coordinates outside the input).
"""
from __future__ import annotations
import math

import torch
import torch.nn.functional as F

from ..registry import Attr, register_op
from ..types import TensorType
from . import infer as I

COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
               "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _resize_type(ts, a):
    x = ts[0]
    if len(a["shape"]) != x.rank:
        raise I.ShapeError(f"resize: output shape {a['shape']} does not match the rank of {x}")
    if a["mode"] not in ("nearest", "linear", "cubic"):
        raise I.ShapeError(f"resize: mode {a['mode']!r} is not nearest, linear or cubic")
    if a["coord"] not in COORD_MODES:
        raise I.ShapeError(f"resize: coordinate mode {a['coord']!r} is not one of {', '.join(COORD_MODES)}")
    if a["nearest_mode"] not in NEAREST_MODES:
        raise I.ShapeError(f"resize: nearest_mode {a['nearest_mode']!r} is not one of {', '.join(NEAREST_MODES)}")
    if a["scales"] is not None and len(a["scales"]) != x.rank:
        raise I.ShapeError(f"resize: {len(a['scales'])} scales for rank {x.rank}")
    if a["coord"] == "tf_crop_and_resize" and (a["roi"] is None or len(a["roi"]) != 2 * x.rank):
        raise I.ShapeError("resize: tf_crop_and_resize needs a roi of 2 * rank numbers")
    return x.with_shape(tuple(a["shape"]))


_RESIZE_ATTRS = {"shape": Attr("dims"), "mode": Attr("str", "nearest"), "coord": Attr("str", "half_pixel"),
                 "nearest_mode": Attr("str", "round_prefer_floor"), "cubic_a": Attr("float", -0.75),
                 "exclude_outside": Attr("bool", False), "extrapolation": Attr("float", 0.0),
                 "antialias": Attr("bool", False), "scales": Attr("floats", None), "roi": Attr("floats", None)}


@register_op("resize", inputs="x", attrs=_RESIZE_ATTRS, infer=_resize_type)
def resize(x, *, shape, mode, coord, nearest_mode, cubic_a, exclude_outside, extrapolation, antialias, scales, roi):
    """x resized to `shape`. `scales[i]` (when given) is the scale the coordinate mapping uses on
    axis i; otherwise out/in. `roi`: [starts..., ends...] normalized, for tf_crop_and_resize."""
    rank = x.dim()
    out_dtype = x.dtype
    y = x if x.dtype == torch.float64 else x.to(torch.float64)
    for ax in range(rank):
        n_in, n_out = y.shape[ax], int(shape[ax])
        s = float(scales[ax]) if scales is not None else (n_out / n_in if n_in else 1.0)
        ax_roi = (roi[ax], roi[ax + rank]) if roi is not None else None
        if n_out == n_in and math.isclose(s, 1.0) and (ax_roi is None or ax_roi == (0.0, 1.0)):
            continue
        y = _resize_axis(y, ax, n_out, s, ax_roi, mode, coord, nearest_mode, cubic_a, exclude_outside,
                         extrapolation, antialias)
    if not out_dtype.is_floating_point:
        info = torch.iinfo(out_dtype)
        y = torch.round(y).clamp(info.min, info.max)  # saturate, as ONNX's reference casts back
    return y.to(out_dtype)


def _source_coords(coord, n_out, n_in, s, roi):
    """Input coordinate of each output index (f64) and the tf_crop_and_resize out-of-range mask."""
    y = torch.arange(n_out, dtype=torch.float64)
    out_w = s * n_in
    outside = None
    if coord == "align_corners":
        x = torch.zeros(n_out, dtype=torch.float64) if out_w == 1 else y * (n_in - 1) / (out_w - 1)
    elif coord == "asymmetric":
        x = y / s
    elif coord == "tf_crop_and_resize":
        r0, r1 = roi
        x = (torch.full((n_out,), (r1 - r0) * (n_in - 1) / 2, dtype=torch.float64) if out_w == 1
             else y * (r1 - r0) * (n_in - 1) / (out_w - 1))
        x = x + r0 * (n_in - 1)
        outside = (x < 0) | (x > n_in - 1)
    elif coord == "pytorch_half_pixel":
        x = torch.full((n_out,), -0.5, dtype=torch.float64) if out_w == 1 else (y + 0.5) / s - 0.5
    elif coord == "half_pixel":
        x = (y + 0.5) / s - 0.5
    else:  # half_pixel_symmetric
        offset = n_in / 2 * (1 - n_out / out_w)
        x = offset + (y + 0.5) / s - 0.5
    return x, outside


def _cubic(t, a):
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def _taps(x, mode, nearest_mode, cubic_a, s, antialias):
    """(first neighbour index [out], coefficients [out, n]) for source coordinates x."""
    base = torch.floor(x)
    ratio = torch.where(x == base, torch.ones_like(x), x - base)  # in (0, 1]: prefer the left pixel
    if mode == "nearest":
        whole = x == base
        if nearest_mode == "round_prefer_floor":
            right = ratio > 0.5
        elif nearest_mode == "round_prefer_ceil":
            right = ratio >= 0.5
        elif nearest_mode == "floor":
            right = torch.zeros_like(whole)
        else:
            right = torch.ones_like(whole)
        right = right | whole  # an integer coordinate: ratio 1 picks x itself (the right tap)
        coeffs = torch.stack([(~right).double(), right.double()], dim=1)
        return _even_start(x, 2), coeffs
    if mode == "linear" and not antialias:
        return _even_start(x, 2), torch.stack([1 - ratio, ratio], dim=1)
    if mode == "cubic" and not antialias:
        r = ratio[:, None]
        coeffs = _cubic(torch.cat([r + 1, r, 1 - r, 2 - r], dim=1), cubic_a)
        return _even_start(x, 4), coeffs
    # antialiased linear/cubic: the kernel stretched by 1/scale when downscaling, normalized
    sc = min(s, 1.0)
    if mode == "linear":
        start = int(math.floor(-1 / sc) + 1)
        k = torch.arange(start, 2 - start, dtype=torch.float64)
        coeffs = (1 - ((k[None, :] - ratio[:, None]) * sc).abs()).clamp(0, 1)
    else:
        start = int(math.floor(-2 / sc) + 1)
        k = torch.arange(start, 2 - start, dtype=torch.float64)
        coeffs = _cubic(sc * (k[None, :] - ratio[:, None]), cubic_a)
    coeffs = coeffs / coeffs.sum(dim=1, keepdim=True)
    return _even_start(x, coeffs.shape[1]), coeffs


def _even_start(x, n):
    """First of the n input indices nearest to x, ties to the smaller index (ONNX's reference)."""
    pad = math.ceil(n / 2)
    xp = x + pad
    p = torch.floor(xp)
    frac = xp - p
    if n % 2 == 0:
        off = torch.where(frac == 0, torch.full_like(p, -(n // 2)), torch.full_like(p, -(n // 2) + 1))
    else:
        b = -((n - 1) // 2)
        off = torch.where(frac <= 0.5, torch.full_like(p, b), torch.full_like(p, b + 1))
    return p + off - pad


def _resize_axis(y, ax, n_out, s, roi, mode, coord, nearest_mode, cubic_a, exclude_outside, extrapolation,
                 antialias):
    n_in = y.shape[ax]
    shape = list(y.shape)
    if n_out == 0 or n_in == 0:
        shape[ax] = n_out
        return y.new_zeros(shape)
    x, outside = _source_coords(coord, n_out, n_in, s, roi)
    start, coeffs = _taps(x, mode, nearest_mode, cubic_a, s, antialias)
    n = coeffs.shape[1]
    idx = start[:, None].long() + torch.arange(n)[None, :]
    if exclude_outside:
        coeffs = torch.where((idx < 0) | (idx >= n_in), torch.zeros_like(coeffs), coeffs)
        total = coeffs.sum(dim=1, keepdim=True)
        coeffs = coeffs / torch.where(total == 0, torch.ones_like(total), total)
    idx = idx.clamp(0, n_in - 1)
    if mode == "nearest":  # pick the chosen neighbour: no arithmetic, so inf/NaN pass through
        pick = idx.gather(1, coeffs.argmax(dim=1, keepdim=True)).squeeze(1)
        out = y.index_select(ax, pick)
    else:
        g = y.index_select(ax, idx.reshape(-1))
        g = g.reshape(shape[:ax] + [n_out, n] + shape[ax + 1:])
        out = (g * coeffs.reshape([1] * ax + [n_out, n] + [1] * (len(shape) - ax - 1))).sum(dim=ax + 1)
    if outside is not None and bool(outside.any()):
        mask = outside.reshape([1] * ax + [n_out] + [1] * (len(shape) - ax - 1))
        out = torch.where(mask, torch.full_like(out, extrapolation), out)
    return out


# ---- transposed convolution -----------------------------------------------------------------------
def _deconv_out(size, k, s, p, d, op):
    from .. import symbolic as S
    if isinstance(size, int):
        return (size - 1) * s - 2 * p + d * (k - 1) + op + 1
    return S.canon(f"(({size})-1)*{s}+{d * (k - 1) + op + 1 - 2 * p}")


def _conv_transpose_type(ts, a):
    x, w = ts[0], ts[1]
    if x.rank != 4 or w.rank != 4:
        raise I.ShapeError(f"conv_transpose2d: wants 4-d input and weight, got {x} and {w}")
    g = a["groups"]
    (sh, sw), (ph, pw), (dh, dw), (oh, ow) = a["stride"], a["padding"], a["dilation"], a["output_padding"]
    return TensorType(x.dtype, (x.shape[0], _mul(w.shape[1], g),
                                _deconv_out(x.shape[2], w.shape[2], sh, ph, dh, oh),
                                _deconv_out(x.shape[3], w.shape[3], sw, pw, dw, ow)))


def _mul(d, g):
    from .. import symbolic as S
    return d * g if isinstance(d, int) else S.canon(f"({d})*{g}")


@register_op("conv_transpose2d", inputs="x weight bias?",
             attrs={"stride": Attr("ints", [1, 1]), "padding": Attr("ints", [0, 0]),
                    "output_padding": Attr("ints", [0, 0]), "dilation": Attr("ints", [1, 1]),
                    "groups": Attr("int", 1)}, infer=_conv_transpose_type)
def conv_transpose2d(x, weight, bias=None, *, stride, padding, output_padding, dilation, groups):
    """torch.nn.functional.conv_transpose2d; weight [in, out/groups, kh, kw]."""
    return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)


# ---- grid sample ----------------------------------------------------------------------------------
def _grid_sample_type(ts, a):
    x, grid = ts[0], ts[1]
    if x.rank not in (4, 5) or grid.rank != x.rank:
        raise I.ShapeError(f"grid_sample: 2-d or 3-d sampling (4-d/5-d input and grid), got {x} and {grid}")
    return x.with_shape(x.shape[:2] + grid.shape[1:-1])


@register_op("grid_sample", inputs="x grid",
             attrs={"mode": Attr("str", "bilinear"), "padding_mode": Attr("str", "zeros"),
                    "align_corners": Attr("bool", False)}, infer=_grid_sample_type)
def grid_sample(x, grid, *, mode, padding_mode, align_corners):
    """torch.nn.functional.grid_sample (= ONNX GridSample for 2-d; modes bilinear/nearest/bicubic)."""
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=padding_mode, align_corners=align_corners)


# ---- LSTM -------------------------------------------------------------------------------------------
def _lstm_type(ts, a):
    x, w, r = ts[0], ts[1], ts[2]
    if x.rank != 3 or w.rank != 3 or r.rank != 3:
        raise I.ShapeError(f"lstm: x [seq, batch, in], w [dirs, 4h, in], r [dirs, 4h, h]; got {x}, {w}, {r}")
    if a["direction"] not in ("forward", "reverse", "bidirectional"):
        raise I.ShapeError(f"lstm: direction {a['direction']!r}")
    dirs, h = w.shape[0], r.shape[2]
    state = x.with_shape((dirs, x.shape[1], h))
    return [x.with_shape((x.shape[0], dirs, x.shape[1], h)), state, state]


@register_op("lstm", inputs="x w r b h0 c0", attrs={"direction": Attr("str", "forward")}, infer=_lstm_type)
def lstm(x, w, r, b, h0, c0, *, direction):
    """One ONNX LSTM layer (https://onnx.ai/onnx/operators/onnx__LSTM.html), gates in ONNX order
    i, o, f, c; sigmoid/tanh/tanh. x [seq, batch, in]; w [dirs, 4h, in]; r [dirs, 4h, h];
    b [dirs, 8h] (Wb then Rb); h0, c0 [dirs, batch, h]. Returns Y [seq, dirs, batch, h], Y_h, Y_c."""
    seq = x.shape[0]
    outs, hs, cs = [], [], []
    for d in range(w.shape[0]):
        reverse = direction == "reverse" or d == 1
        wd, rd = w[d], r[d]
        bias = b[d, : wd.shape[0]] + b[d, wd.shape[0]:]
        h, c = h0[d], c0[d]
        xw = torch.matmul(x, wd.t()) + bias  # [seq, batch, 4h]
        ys = [None] * seq
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            g = xw[t] + torch.matmul(h, rd.t())
            i, o, f, cc = g.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cc)
            h = torch.sigmoid(o) * torch.tanh(c)
            ys[t] = h
        outs.append(torch.stack(ys, 0) if seq else x.new_zeros((0,) + tuple(h.shape)))
        hs.append(h)
        cs.append(c)
    return torch.stack(outs, 1), torch.stack(hs, 0), torch.stack(cs, 0)


# ---- GRU / simple RNN --------------------------------------------------------------------------------
def _recurrent_type(ts, a):
    x, w, r = ts[0], ts[1], ts[2]
    if x.rank != 3 or w.rank != 3 or r.rank != 3:
        raise I.ShapeError(f"recurrent: x [seq, batch, in], w [dirs, g*h, in], r [dirs, g*h, h]; got {x}, {w}, {r}")
    if a["cell"] not in ("gru", "rnn") or a["direction"] not in ("forward", "reverse", "bidirectional"):
        raise I.ShapeError(f"recurrent: cell {a['cell']!r} / direction {a['direction']!r}")
    dirs, h = w.shape[0], r.shape[2]
    return [x.with_shape((x.shape[0], dirs, x.shape[1], h)), x.with_shape((dirs, x.shape[1], h))]


@register_op("recurrent", inputs="x w r b h0",
             attrs={"cell": Attr("str"), "direction": Attr("str", "forward"), "linear_before_reset": Attr("bool", False)},
             infer=_recurrent_type)
def recurrent(x, w, r, b, h0, *, cell, direction, linear_before_reset):
    """One ONNX GRU (gates z, r, h; https://onnx.ai/onnx/operators/onnx__GRU.html) or RNN (tanh)
    layer. x [seq, batch, in]; w [dirs, g*h, in]; r [dirs, g*h, h]; b [dirs, 2*g*h] (Wb then Rb);
    h0 [dirs, batch, h]. Returns Y [seq, dirs, batch, h] and Y_h."""
    seq = x.shape[0]
    outs, hs = [], []
    for d in range(w.shape[0]):
        reverse = direction == "reverse" or d == 1
        wd, rd = w[d], r[d]
        n = wd.shape[0]
        wb, rb = b[d, :n], b[d, n:]
        h = h0[d]
        xw = torch.matmul(x, wd.t()) + wb
        ys = [None] * seq
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            if cell == "rnn":
                h = torch.tanh(xw[t] + torch.matmul(h, rd.t()) + rb)
            else:
                hh = n // 3
                xz, xr, xh = xw[t].split(hh, dim=-1)
                rz, rr, rh = rd.split(hh, dim=0)
                bz, br, bh = rb.split(hh)
                z = torch.sigmoid(xz + torch.matmul(h, rz.t()) + bz)
                rg = torch.sigmoid(xr + torch.matmul(h, rr.t()) + br)
                if linear_before_reset:
                    cand = torch.tanh(xh + rg * (torch.matmul(h, rh.t()) + bh))
                else:
                    cand = torch.tanh(xh + torch.matmul(rg * h, rh.t()) + bh)
                h = (1 - z) * cand + z * h
            ys[t] = h
        outs.append(torch.stack(ys, 0) if seq else x.new_zeros((0,) + tuple(h.shape)))
        hs.append(h)
    return torch.stack(outs, 1), torch.stack(hs, 0)


# ---- N-d pooling with ONNX semantics ---------------------------------------------------------------
def _pool_out(size, k, s, pb, pe, d, ceil):
    from .. import symbolic as S
    span = (k - 1) * d + 1
    if isinstance(size, int):
        total = size + pb + pe - span
        o = (-(-total // s) if ceil else total // s) + 1
        if ceil and (o - 1) * s >= size + pb:  # the last window may not start in the end padding
            o -= 1
        return o
    if ceil:
        # ceil rounds the window count up by r = (o - 1) * s - total in [0, s - 1]; the last window
        # then starts at size + pb + pe - span + r, in the end padding only when r >= span - pe: never
        # when s - 1 < span - pe (2x2/2, 3x3/2 with pads <= 1: every CNN's ceil-mode pool)
        if s - 1 >= span - pe:
            raise I.ShapeError(f"pool: ceil_mode with stride {s}, window {span} and end pad {pe} needs static "
                               f"spatial dims (whether the last window is dropped depends on the size)")
        return S.canon(f"ceiling((({size})+{pb + pe - span})/{s})+1")
    return S.canon(f"floor((({size})+{pb + pe - span})/{s})+1")


def _pool_nd_type(ts, a):
    x = ts[0]
    n = len(a["kernel"])
    if x.rank != n + 2 or a["kind"] not in ("max", "avg", "lp"):
        raise I.ShapeError(f"pool: {n}-d {a['kind']} pooling of {x}")
    pads, strides, dil = a["pads"], a["stride"], a["dilation"]
    return x.with_shape(x.shape[:2] + tuple(_pool_out(x.shape[2 + i], a["kernel"][i], strides[i], pads[i], pads[n + i],
                                                      dil[i], a["ceil_mode"]) for i in range(n)))


@register_op("pool_nd", inputs="x",
             attrs={"kind": Attr("str"), "kernel": Attr("ints"), "stride": Attr("ints"), "pads": Attr("ints"),
                    "dilation": Attr("ints"), "ceil_mode": Attr("bool", False),
                    "count_include_pad": Attr("bool", False), "p": Attr("float", 2.0)}, infer=_pool_nd_type)
def pool_nd(x, *, kind, kernel, stride, pads, dilation, ceil_mode, count_include_pad, p):
    """ONNX MaxPool / AveragePool / LpPool over the trailing len(kernel) dims (any n), with
    begin/end `pads` ([b1..bn, e1..en]), dilation and ceil_mode (a last window starting in the end
    padding is dropped). Average: explicit pads count only with count_include_pad; the extra
    ceil_mode border never counts. Windows are gathered with unfold; the result is exact."""
    n = len(kernel)
    spatial = list(x.shape[2:])
    outs = [_pool_out(spatial[i], kernel[i], stride[i], pads[i], pads[n + i], dilation[i], ceil_mode) for i in range(n)]
    extra = [max((outs[i] - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1 - (spatial[i] + pads[i] + pads[n + i]), 0)
             for i in range(n)]
    torch_pads, explicit = [], []
    for i in reversed(range(n)):
        torch_pads += [pads[i], pads[n + i] + extra[i]]
        explicit += [pads[i], pads[n + i]]
    fill = float("-inf") if kind == "max" else 0.0
    xf = x if kind != "lp" else x.abs().pow(p)
    xp = F.pad(xf, torch_pads, value=fill)
    # weights: 1 inside the input, count_include_pad on explicit pads, 0 on the ceil_mode border
    w = torch.ones([1, 1] + spatial, dtype=x.dtype if x.is_floating_point() else torch.float32)
    w = F.pad(w, explicit, value=1.0 if count_include_pad else 0.0)
    w = F.pad(w, [v for i in reversed(range(n)) for v in (0, extra[i])], value=0.0)

    def windows(t):
        for i in range(n):
            span = (kernel[i] - 1) * dilation[i] + 1
            t = t.unfold(2 + i, span, stride[i])[..., ::dilation[i]]
        return t.reshape(t.shape[: 2 + n] + (-1,))
    if kind == "max":
        return windows(xp).amax(dim=-1)
    s = windows(xp).sum(dim=-1)
    if kind == "lp":
        return s.pow(1.0 / p)
    return (s / windows(w).sum(dim=-1)).to(x.dtype)


# ---- Col2Im / determinant ---------------------------------------------------------------------------
def _col2im_type(ts, a):
    x = ts[0]
    k = a["block"]
    if x.rank != 3 or len(a["image"]) != 2 or len(k) != 2:
        raise I.ShapeError(f"col2im: 2-d images only: x [N, C*kh*kw, L], got {x}")
    c = x.shape[1] // (k[0] * k[1]) if isinstance(x.shape[1], int) else x.shape[1]
    return x.with_shape((x.shape[0], c) + tuple(a["image"]))


@register_op("col2im", inputs="x", attrs={"image": Attr("ints"), "block": Attr("ints"), "dilation": Attr("ints"),
                                        "padding": Attr("ints"), "stride": Attr("ints")}, infer=_col2im_type)
def col2im(x, *, image, block, dilation, padding, stride):
    """torch.nn.functional.fold (= ONNX Col2Im for 2-d images, symmetric pads)."""
    return F.fold(x, tuple(image), tuple(block), dilation=tuple(dilation), padding=tuple(padding), stride=tuple(stride))


@register_op("det", inputs="x", infer=lambda ts, a: ts[0].with_shape(ts[0].shape[:-2]))
def det(x):
    """Determinant of the trailing square matrices (torch.linalg.det)."""
    return torch.linalg.det(x)
