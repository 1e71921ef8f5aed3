"""ONNX lowerings of the spatial ops (ir/opset/spatial.py: resize, conv_transpose2d, grid_sample,
lstm) and scatter / scatter_nd: each maps to its ONNX operator with the same attributes."""
from __future__ import annotations

import numpy as np

from .lowering import lowering


@lowering("onnx", "resize")
def _resize(ex, node, ins):
    a = node.attrs
    t = node.inputs[0].type
    kw = dict(mode=a["mode"], coordinate_transformation_mode=a["coord"], nearest_mode=a["nearest_mode"],
              cubic_coeff_a=float(a["cubic_a"]), exclude_outside=int(a["exclude_outside"]),
              extrapolation_value=float(a["extrapolation"]), antialias=int(a["antialias"]))
    if a["coord"] == "half_pixel_symmetric":
        ex.opset = max(ex.opset, 19)
    roi = ex.const(np.asarray(a["roi"] if a["roi"] is not None else [], "float32"), "roi")
    if a["scales"] is not None:  # the scales drive the coordinate mapping: export them, not sizes
        scales = ex.const(np.asarray(a["scales"], "float32"), "scales")
        return [ex.one("Resize", ins[0], roi, scales, **kw)]
    assert len(a["shape"]) == t.rank
    return [ex.one("Resize", ins[0], roi, "", ex.dims(a["shape"]), **kw)]


@lowering("onnx", "conv_transpose2d")
def _conv_transpose(ex, node, ins):
    a = node.attrs
    return [ex.one("ConvTranspose", *ins, strides=a["stride"], pads=list(a["padding"]) * 2, dilations=a["dilation"],
                   output_padding=a["output_padding"], group=a["groups"])]


@lowering("onnx", "grid_sample")
def _grid_sample(ex, node, ins):
    a = node.attrs
    ex.opset = max(ex.opset, 20)  # linear/cubic mode names (opset 16 spells them bilinear/bicubic)
    mode = {"bilinear": "linear", "bicubic": "cubic", "nearest": "nearest"}[a["mode"]]
    return [ex.one("GridSample", *ins, mode=mode, padding_mode=a["padding_mode"], align_corners=int(a["align_corners"]))]


@lowering("onnx", "lstm")
def _lstm(ex, node, ins):
    x, w, r, b, h0, c0 = ins
    return ex.node("LSTM", [x, w, r, b, "", h0, c0], n_out=3, direction=node.attrs["direction"],
                   hidden_size=int(node.inputs[2].type.shape[2]))


@lowering("onnx", "scatter_nd")
def _scatter_nd(ex, node, ins):
    kw = {} if node.attrs["reduce"] == "none" else {"reduction": node.attrs["reduce"]}
    return [ex.one("ScatterND", ins[0], ex.cast(ins[1], node.inputs[1].type.dtype, "i64"), ins[2], **kw)]


@lowering("onnx", "recurrent")
def _recurrent(ex, node, ins):
    x, w, r, b, h0 = ins
    op = "GRU" if node.attrs["cell"] == "gru" else "RNN"
    kw = {"linear_before_reset": int(node.attrs["linear_before_reset"])} if op == "GRU" else {}
    return ex.node(op, [x, w, r, b, "", h0], n_out=2, direction=node.attrs["direction"],
                   hidden_size=int(node.inputs[2].type.shape[2]), **kw)


@lowering("onnx", "bit_shift")
def _bit_shift(ex, node, ins):
    from .onnx_export import OnnxExportError
    dtype = node.inputs[0].type.dtype
    if dtype != "u8":  # ONNX Runtime implements BitShift for unsigned types only
        raise OnnxExportError(f"op bit_shift on dtype {dtype} has no ONNX Runtime kernel (BitShift is unsigned-only "
                              f"there) ({node!r}); use target='torch'")
    return [ex.one("BitShift", *ins, direction="LEFT" if node.attrs["left"] else "RIGHT")]


@lowering("onnx", "pool_nd")
def _pool_nd(ex, node, ins):
    a = node.attrs
    kw = dict(kernel_shape=a["kernel"], strides=a["stride"], pads=a["pads"], dilations=a["dilation"])
    if a["kind"] == "lp":
        return [ex.one("LpPool", ins[0], p=int(a["p"]), ceil_mode=int(a["ceil_mode"]), **kw)]
    if a["kind"] == "max":
        return [ex.one("MaxPool", ins[0], ceil_mode=int(a["ceil_mode"]), **kw)]
    if any(d != 1 for d in a["dilation"]):
        ex.opset = max(ex.opset, 19)  # AveragePool takes dilations from opset 19
    else:
        del kw["dilations"]
    return [ex.one("AveragePool", ins[0], ceil_mode=int(a["ceil_mode"]), count_include_pad=int(a["count_include_pad"]), **kw)]


@lowering("onnx", "col2im")
def _col2im(ex, node, ins):
    a = node.attrs
    return [ex.one("Col2Im", ins[0], ex.ints(a["image"]), ex.ints(a["block"]), dilations=a["dilation"],
                   pads=list(a["padding"]) * 2, strides=a["stride"])]


@lowering("onnx", "det")
def _det(ex, node, ins):
    return [ex.one("Det", ins[0])]
