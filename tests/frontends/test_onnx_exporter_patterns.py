"""Patterns of real exporters' ONNX files that the corpus files do not cover (found by importing PyPI packages'
models and fresh torch.onnx exports): shape arithmetic over symbolic (dim_param) dims, each graph run at two
input sizes that the import never saw, and import errors that name the file, the node and the op.
Oracle: onnx.reference.ReferenceEvaluator."""
import warnings

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="needs pip install 'slimgraph[onnx]'")
from onnx import TensorProto as T, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import slimgraph  # noqa: E402
from slimgraph.frontends.onnx_import import OnnxImportError, UnsupportedOnnxFeature  # noqa: E402

TARGETS = ("reference", "torch", "onnx")


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _check(model, feeds_list, targets=TARGETS):
    for target in targets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = slimgraph.optimize(model, target=target)
        for feeds in feeds_list:
            want = ReferenceEvaluator(model).run(None, feeds)
            got = fast.run(*[torch.from_numpy(v) for v in feeds.values()])
            for w, g in zip(want, got):
                assert g.shape == w.shape, (target, g.shape, w.shape)
                np.testing.assert_allclose(g.numpy(), w, atol=1e-6, err_msg=target)


# ---- float Range over a Cast of shape arithmetic (YOLOv5/v8 anchors, DETR/ViT position grids) ----------
def _range_model(start, delta):
    """y[i] = start + i * delta for i < ceil((float(W) - start) / delta), plus 0.5 (YOLOv8's anchor centres:
    arange(float(w)) + 0.5), broadcast against x's last axis as the anchors are."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i3"], ["w"], axis=0),
             helper.make_node("Cast", ["w"], ["wf"], to=T.FLOAT),
             helper.make_node("Range", ["start", "wf", "delta"], ["r"]),
             helper.make_node("Add", ["r", "half"], ["y"]),
             helper.make_node("Shape", ["y"], ["ys"])]
    inits = [_const("i3", 3, np.int64), _const("start", start), _const("delta", delta), _const("half", 0.5)]
    return _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, ["b", 3, "h", "w"])],
                  [helper.make_tensor_value_info("y", T.FLOAT, None),
                   helper.make_tensor_value_info("ys", T.INT64, [1])], inits)


@pytest.mark.parametrize("start,delta", [(0.0, 1.0), (1.0, 2.0), (-2.0, 3.0)])
def test_float_range_of_a_cast_shape(start, delta):
    feeds = [{"x": np.zeros((1, 3, 4, w), np.float32)} for w in (10, 7)]
    _check(_range_model(start, delta), feeds)


def test_float_range_with_a_fractional_step_over_a_shape_is_refused_by_name():
    with pytest.raises(UnsupportedOnnxFeature, match=r"Range.*integer-valued start and delta"):
        slimgraph.optimize(_range_model(0.0, 0.5), target="reference")


def test_yolo_anchor_grid():
    """The YOLOv8 head's anchor grid (nudenet's 320n.onnx, ultralytics' export): Range over the feature
    map's height and width, Expand to [h, w], Stack, Reshape to [h*w, 2]."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i2"], ["h"], axis=0),
             helper.make_node("Gather", ["s", "i3"], ["w"], axis=0),
             helper.make_node("Cast", ["h"], ["hf"], to=T.FLOAT),
             helper.make_node("Cast", ["w"], ["wf"], to=T.FLOAT),
             helper.make_node("Range", ["zero", "wf", "one"], ["rw"]),
             helper.make_node("Range", ["zero", "hf", "one"], ["rh"]),
             helper.make_node("Add", ["rw", "half"], ["sx"]),
             helper.make_node("Add", ["rh", "half"], ["sy"]),
             helper.make_node("Unsqueeze", ["sy", "ax1"], ["sy1"]),
             helper.make_node("Concat", ["h", "w"], ["hw"], axis=0),
             helper.make_node("Expand", ["sx", "hw"], ["gx"]),
             helper.make_node("Expand", ["sy1", "hw"], ["gy"]),
             helper.make_node("Unsqueeze", ["gx", "ax2"], ["gx2"]),
             helper.make_node("Unsqueeze", ["gy", "ax2"], ["gy2"]),
             helper.make_node("Concat", ["gx2", "gy2"], ["g"], axis=-1),
             helper.make_node("Reshape", ["g", "shape"], ["grid"]),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0),
             helper.make_node("Reshape", ["m", "flat"], ["mf"]),
             helper.make_node("Mul", ["mf", "grid"], ["y"])]
    inits = [_const("i2", [2], np.int64), _const("i3", [3], np.int64), _const("zero", 0.0), _const("one", 1.0),
             _const("half", 0.5), _const("ax1", [1], np.int64), _const("ax2", [2], np.int64),
             _const("shape", [-1, 2], np.int64), _const("flat", [-1, 1], np.int64)]
    model = _model([n for n in nodes], [helper.make_tensor_value_info("x", T.FLOAT, [1, 3, "height", "width"])],
                   [helper.make_tensor_value_info("y", T.FLOAT, None)], inits, opset=17)
    # ReduceMean takes axes as an attribute up to opset 17
    rng = np.random.default_rng(0)
    _check(model, [{"x": rng.standard_normal((1, 3, h, w)).astype(np.float32)} for h, w in ((4, 6), (5, 3))])


# ---- ceil_mode pooling over symbolic spatial dims (torch.onnx of MaxPool2d(ceil_mode=True)) --------------
@pytest.mark.parametrize("op,kernel,stride,pads", [("MaxPool", 2, 2, 0), ("MaxPool", 3, 2, 1),
                                                   ("AveragePool", 3, 2, 0), ("MaxPool", 3, 3, 0),
                                                   ("AveragePool", 3, 2, 1)])
def test_ceil_mode_pool_over_symbolic_dims(op, kernel, stride, pads):
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride],
                            pads=[pads] * 4, ceil_mode=1)
    model = _model([node], [helper.make_tensor_value_info("x", T.FLOAT, ["n", 2, "h", "w"])],
                   [helper.make_tensor_value_info("y", T.FLOAT, None)])
    rng = np.random.default_rng(0)
    _check(model, [{"x": rng.standard_normal((1, 2, h, w)).astype(np.float32)} for h, w in ((9, 8), (6, 11))])


def test_ceil_mode_pool_whose_last_window_depends_on_the_size_is_refused_by_name():
    """kernel 1, stride 2: ceil(7/2) = 4 windows for 7 but the 4th of 8 would start in the padding."""
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[1, 1], strides=[2, 2], pads=[0, 0, 1, 1],
                            ceil_mode=1)
    model = _model([node], [helper.make_tensor_value_info("x", T.FLOAT, ["n", 2, "h", "w"])],
                   [helper.make_tensor_value_info("y", T.FLOAT, None)])
    with pytest.raises(OnnxImportError, match=r"MaxPool.*ceil_mode.*static"):
        slimgraph.optimize(model, target="reference")


# ---- auto_pad SAME over symbolic dims (Paddle2ONNX's PP-OCRv6 det/rec: 2x2 stride-1 Conv and MaxPool) -------
@pytest.mark.parametrize("auto", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("op,kernel,dilation", [("Conv", 2, 1), ("Conv", 3, 2), ("MaxPool", 2, 1), ("AveragePool", 3, 1)])
def test_auto_pad_same_with_stride_1_over_symbolic_dims(op, kernel, dilation, auto):
    attrs = dict(kernel_shape=[kernel, kernel], strides=[1, 1], auto_pad=auto)
    inits, ins = [], ["x"]
    if op == "Conv":
        attrs["dilations"] = [dilation, dilation]
        inits = [_const("w", np.random.default_rng(1).standard_normal((3, 2, kernel, kernel)))]
        ins = ["x", "w"]
    model = _model([helper.make_node(op, ins, ["y"], **attrs)],
                   [helper.make_tensor_value_info("x", T.FLOAT, ["n", 2, "h", "w"])],
                   [helper.make_tensor_value_info("y", T.FLOAT, None)], inits)
    rng = np.random.default_rng(0)
    _check(model, [{"x": rng.standard_normal((1, 2, h, w)).astype(np.float32)} for h, w in ((7, 8), (5, 4))])


def test_auto_pad_same_with_a_stride_over_a_symbolic_dim_is_refused_naming_the_stride():
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")
    model = _model([node], [helper.make_tensor_value_info("x", T.FLOAT, ["n", 2, "h", "w"])],
                   [helper.make_tensor_value_info("y", T.FLOAT, None)])
    with pytest.raises(UnsupportedOnnxFeature, match=r"MaxPool.*auto_pad SAME_UPPER with stride 2"):
        slimgraph.optimize(model, target="reference")


# ---- If on a shape test or a setting input (torch.jit.script's `if x.size(2) == 1: squeeze`; silero-vad v5's
# `if sr == 16000`): refused naming what the condition depends on, and imported once dims / the input are fixed ---
def _squeeze_if_model():
    then_g = helper.make_graph([helper.make_node("Squeeze", ["x", "ax"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", T.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", T.FLOAT, None)])
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "ax0"], ["t_len"], axis=0),
             helper.make_node("Equal", ["t_len", "one"], ["c"]),
             helper.make_node("If", ["c"], ["y0"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Mul", ["y0", "k"], ["y"])]
    inits = [_const("ax", [2], np.int64), _const("ax0", 2, np.int64), _const("one", 1, np.int64),
             helper.make_tensor("k", T.FLOAT, [], [2.0])]
    return _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, ["batch", 4, None]),
                          helper.make_tensor_value_info("k", T.FLOAT, [])],
                  [helper.make_tensor_value_info("y", T.FLOAT, None)], inits[:3])


def test_if_on_a_shape_test_names_the_dims_and_imports_once_they_are_fixed():
    from slimgraph.frontends.onnx_import import import_onnx
    model = _squeeze_if_model()
    with pytest.raises(UnsupportedOnnxFeature, match=r"If.*symbolic dims \['batch', 'x_dim2'\].*dims="):
        slimgraph.optimize(model, target="reference")
    for t_len in (1, 3):
        x = np.random.default_rng(t_len).standard_normal((2, 4, t_len)).astype(np.float32)
        want = ReferenceEvaluator(model).run(None, {"x": x, "k": np.float32(2.0)})[0]
        for target in TARGETS:
            fast = slimgraph.optimize(import_onnx(model, dims={"x_dim2": t_len}), target=target)
            got = fast.run(torch.from_numpy(x), torch.tensor(2.0))[0]
            assert got.shape == want.shape, (target, got.shape, want.shape)
            np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    with pytest.raises(OnnxImportError, match=r"dims: \['seq'\] name no symbolic dim.*x_dim2"):
        import_onnx(model, dims={"seq": 3})


def test_if_on_a_setting_input_names_it_and_imports_once_it_is_bound():
    from slimgraph.frontends.onnx_import import import_onnx
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", T.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", T.FLOAT, None)])
    nodes = [helper.make_node("Equal", ["sr", "rate"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    model = _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, ["n"]),
                           helper.make_tensor_value_info("sr", T.INT64, [])],
                   [helper.make_tensor_value_info("y", T.FLOAT, None)],
                   [_const("two", 2.0), _const("rate", 16000, np.int64)])
    with pytest.raises(UnsupportedOnnxFeature, match=r"values of graph input\(s\) \['sr'\].*bind="):
        slimgraph.optimize(model, target="reference")
    x = np.arange(3, dtype=np.float32)
    for sr, want in ((16000, 2 * x), (8000, -x)):
        fast = slimgraph.optimize(import_onnx(model, bind={"sr": np.array(sr, np.int64)}), target="torch")
        np.testing.assert_allclose(fast.run(torch.from_numpy(x))[0].numpy(), want)


# ---- Loop with a trip count known at import (torch.onnx of a scripted `for i in range(x.size(0))`) --------
def _loop_model(rows, early_exit=False):
    """acc += x[i] * i for i < rows (stop after i == 1 when early_exit); scan output: acc after each step."""
    body_nodes = [helper.make_node("Gather", ["x", "i"], ["xi"], axis=0),
                  helper.make_node("Cast", ["i"], ["fi"], to=T.FLOAT),
                  helper.make_node("Mul", ["xi", "fi"], ["t"]),
                  helper.make_node("Add", ["acc", "t"], ["acc2"]),
                  helper.make_node("Identity", ["acc2"], ["step"]),
                  (helper.make_node("Less", ["i", "one"], ["c2"]) if early_exit else
                   helper.make_node("Identity", ["c"], ["c2"]))]
    body = helper.make_graph(body_nodes, "body",
                             [helper.make_tensor_value_info("i", T.INT64, []),
                              helper.make_tensor_value_info("c", T.BOOL, []),
                              helper.make_tensor_value_info("acc", T.FLOAT, None)],
                             [helper.make_tensor_value_info("c2", T.BOOL, []),
                              helper.make_tensor_value_info("acc2", T.FLOAT, None),
                              helper.make_tensor_value_info("step", T.FLOAT, None)])
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("ReduceSum", ["x", "ax0"], ["init"], keepdims=0),
             helper.make_node("Loop", ["n", "true", "init"], ["acc_final", "steps"], body=body)]
    inits = [_const("zero", 0, np.int64), _const("ax0", [0], np.int64), _const("one", 1, np.int64),
             helper.make_tensor("true", T.BOOL, [], [True])]
    return _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [rows, 3])],
                  [helper.make_tensor_value_info("acc_final", T.FLOAT, None),
                   helper.make_tensor_value_info("steps", T.FLOAT, None)], inits)


@pytest.mark.parametrize("early_exit", [False, True])
def test_loop_with_a_known_trip_count_is_unrolled(early_exit):
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    _check(_loop_model(4, early_exit), [{"x": x}])


def test_loop_over_a_symbolic_dim_is_refused_naming_it():
    with pytest.raises(UnsupportedOnnxFeature, match=r"Loop.*trip count.*symbolic dims \['rows'\].*dims="):
        slimgraph.optimize(_loop_model("rows"), target="reference")


# ---- import errors name the file, the node and the op -----------------------------------------------------
def test_import_errors_name_the_file_node_and_op(tmp_path, monkeypatch):
    node = helper.make_node("Loop", ["n", "", "x"], ["y"], name="the_loop",
                            body=helper.make_graph([], "b", [], []))
    model = _model([node], [helper.make_tensor_value_info("x", T.FLOAT, ["n"]),
                            helper.make_tensor_value_info("n", T.INT64, [])],
                   [helper.make_tensor_value_info("y", T.FLOAT, None)])
    path = tmp_path / "loopy.onnx"
    onnx.save(model, str(path))
    with pytest.raises(OnnxImportError, match=r"loopy\.onnx: node 'the_loop' \(Loop\)"):
        slimgraph.optimize(str(path), target="reference")
    # a handler's own bug (here: a KeyError) is an import error naming all three, not a bare KeyError
    from slimgraph.frontends import onnx_ops
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="r")], [helper.make_tensor_value_info("x", T.FLOAT, [2])],
                   [helper.make_tensor_value_info("y", T.FLOAT, None)])
    onnx.save(model, str(path))
    monkeypatch.setitem(onnx_ops.ONNX_OPS, "Relu", lambda imp, a: a["missing"])
    with pytest.raises(OnnxImportError, match=r"loopy\.onnx: node 'r' \(Relu\): internal error .*KeyError"):
        slimgraph.optimize(path, target="reference")
