"""ONNX files as the wild makes them, and ONNX spec semantics on edge cases.

Oracle: onnx.reference.ReferenceEvaluator (the spec's executable reference) unless noted."""
import itertools
import warnings

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="needs pip install 'slimgraph[onnx]'")
from onnx import TensorProto as T, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import slimgraph  # noqa: E402
from slimgraph.frontends.onnx_import import import_onnx  # noqa: E402
from slimgraph.ir import run  # noqa: E402


def _model(nodes, inputs, outputs, opset=18, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, dtype=T.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, dtype, shape)


def _check(model, feeds, targets=("reference",), equal_nan=True, atol=1e-6):
    want = ReferenceEvaluator(model).run(None, feeds)
    for target in targets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = slimgraph.optimize(model, target=target)
        got = fast.run(*[torch.from_numpy(np.asarray(v)) for v in feeds.values()])
        for w, g in zip(want, got):
            g = g.numpy()
            assert g.shape == np.asarray(w).shape, (target, g.shape, np.asarray(w).shape)
            np.testing.assert_allclose(g.astype(np.float64), np.asarray(w).astype(np.float64), atol=atol, rtol=1e-5,
                                       equal_nan=equal_nan, err_msg=f"target {target}")


# ---- the public entry points -------------------------------------------------------------------------
def _small_model(opset=18, batch="N"):
    node = helper.make_node("Relu", ["x"], ["y"])
    return _model([node], [_vi("x", shape=[batch, 3])], [_vi("y", shape=[batch, 3])], opset=opset)


def test_optimize_takes_path_bytes_and_modelproto(tmp_path):
    model = _small_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = torch.tensor([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]])
    for src in (str(path), path, model.SerializeToString(), model):
        assert torch.equal(slimgraph.optimize(src)(x), torch.relu(x))


def test_old_opset_is_converted_with_a_note():
    nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0]), helper.make_node("Squeeze", ["u"], ["y"], axes=[0])]
    model = _model(nodes, [_vi("x", shape=[2, 3])], [_vi("y", shape=[2, 3])], opset=11)
    fast = slimgraph.optimize(model)
    assert any("converted from opset 11" in n for n in fast.report.notes)
    x = torch.randn(2, 3)
    assert torch.equal(fast(x), x)


@pytest.mark.parametrize("dim", [-1, "?", ""])
def test_unknown_dims_become_symbols(dim):
    model = _small_model(batch=dim if dim != "" else None)
    g = import_onnx(model)
    assert not isinstance(g.inputs[0].type.shape[0], int)
    for n in (1, 5):  # any batch runs
        x = torch.randn(n, 3)
        assert torch.equal(run(g, x)[0], torch.relu(x))


def test_two_question_mark_dims_are_distinct_symbols():
    node = helper.make_node("Relu", ["x"], ["y"])
    model = _model([node], [_vi("x", shape=["?", "?"])], [_vi("y", shape=["?", "?"])])
    g = import_onnx(model)
    a, b = g.inputs[0].type.shape
    assert a != b
    x = torch.randn(2, 7)
    assert torch.equal(run(g, x)[0], torch.relu(x))


# ---- Resize: every mode, coordinate mode and nearest mode, scales or sizes ----------------------------
_COORDS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
           "tf_crop_and_resize"]
_GRID = ([("nearest", c, nm) for c in _COORDS for nm in ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]]
         + [(m, c, "round_prefer_floor") for m in ("linear", "cubic") for c in _COORDS])


@pytest.mark.parametrize("mode,coord,nearest", _GRID)
@pytest.mark.parametrize("by", ["scales", "sizes"])
def test_resize_matches_the_spec(mode, coord, nearest, by):
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 7)).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(np.array([0, 0, 0.1, 0.2, 1, 1, 0.9, 0.7], np.float32), "roi")]
    if by == "scales":
        inits.append(onnx.numpy_helper.from_array(np.array([1, 1, 1.7, 0.6], np.float32), "scales"))
        ins = ["x", "roi", "scales"]
    else:
        inits.append(onnx.numpy_helper.from_array(np.array([1, 2, 9, 4], np.int64), "sizes"))
        ins = ["x", "roi", "", "sizes"]
    node = helper.make_node("Resize", ins, ["y"], mode=mode, coordinate_transformation_mode=coord,
                            nearest_mode=nearest, extrapolation_value=-3.0)
    model = _model([node], [_vi("x", shape=list(x.shape))], [_vi("y")], opset=19, inits=inits)
    _check(model, {"x": x}, targets=("reference", "torch"), atol=1e-5)


# ---- reductions over no axes keep their elementwise part ----------------------------------------------
_REDUCTIONS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]


@pytest.mark.parametrize("op", _REDUCTIONS)
def test_reduce_noop_with_empty_axes_applies_the_elementwise_part(op):
    x = np.array([[-2.0, 3.0, 0.5], [1.5, -0.25, 4.0]], np.float32)
    if op == "ReduceLogSum":
        x = np.abs(x)
    node = helper.make_node(op, ["x"], ["y"], noop_with_empty_axes=1)
    model = _model([node], [_vi("x", shape=[2, 3])], [_vi("y")])
    _check(model, {"x": x}, targets=("reference", "torch", "onnx"), atol=1e-5)


# ---- NaN propagation (ONNX reference = numpy; ORT agrees except where noted) ---------------------------
_NAN_ROWS = np.array([[1.0, np.nan, 5.0, -2.0], [np.nan, 0.0, 3.0, np.inf], [4.0, -1.0, 2.0, 0.0]], np.float32)


@pytest.mark.parametrize("op,extra", [("Sign", {}), ("Abs", {}), ("Relu", {}), ("Neg", {}),
                                      ("ReduceMax", {"axes": [1]}), ("ReduceMin", {"axes": [1]}),
                                      ("ReduceSum", {"axes": [1]}), ("ReduceMean", {"axes": [1]}),
                                      ("ReduceProd", {"axes": [1]}), ("ReduceL1", {"axes": [1]}),
                                      ("ReduceL2", {"axes": [1]}), ("ReduceSumSquare", {"axes": [1]}),
                                      ("ReduceLogSumExp", {"axes": [1]}), ("ArgMax", {"axis": 1}),
                                      ("ArgMin", {"axis": 1})])
def test_nan_propagates_in_unary_and_reductions(op, extra):
    attrs = {k: v for k, v in extra.items() if k != "axes"}
    ins = ["x"]
    inits = []
    if "axes" in extra:
        inits.append(onnx.numpy_helper.from_array(np.array(extra["axes"], np.int64), "axes"))
        ins.append("axes")
    node = helper.make_node(op, ins, ["y"], **attrs)
    out = _vi("y", T.INT64) if op.startswith("Arg") else _vi("y")
    model = _model([node], [_vi("x", shape=[3, 4])], [out], inits=inits)
    _check(model, {"x": _NAN_ROWS}, targets=("reference", "torch", "onnx"))


@pytest.mark.parametrize("op", ["Max", "Min", "Clip"])
def test_nan_propagates_in_max_min_clip(op):
    lo = np.array(0.0, np.float32)
    if op == "Clip":
        inits = [onnx.numpy_helper.from_array(lo, "lo"), onnx.numpy_helper.from_array(np.array(2.0, np.float32), "hi")]
        node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
    else:
        inits = [onnx.numpy_helper.from_array(np.zeros(4, np.float32), "z")]
        node = helper.make_node(op, ["x", "z"], ["y"])
    model = _model([node], [_vi("x", shape=[3, 4])], [_vi("y")], inits=inits)
    _check(model, {"x": _NAN_ROWS}, targets=("reference", "torch", "onnx"))


def test_fold_constants_keeps_nan_semantics():
    """A graph of constants folded by fold-constants gives the reference's answer (the IR's sign is
    torch.sign: NaN -> 0; ONNX Sign keeps NaN through its importer: the elementwise NaN cases above)."""
    from slimgraph.ir.graph import Graph
    g = Graph("g")
    x = g.add_input("x", slimgraph.ir.types.TensorType("f32", (4,)))
    c = g.add_weight("c", torch.tensor([float("nan"), -2.0, 0.0, 3.0]))
    y = g.op("add", x, g.op("sign", c))
    g.set_outputs([y])
    xs = torch.zeros(4)
    want = run(g, xs)[0]
    assert want.tolist() == [0.0, -1.0, 0.0, 1.0]
    folded = slimgraph.optimize(g, target="torch", pipeline="fold-constants,dce")
    torch.testing.assert_close(folded(xs), want, equal_nan=True)


# ---- onnx target: bool ops and masks export correctly ---------------------------------------------------
def test_bool_invert_exports_as_not_and_bool_mask_index_exports():
    from slimgraph.ir.graph import Graph
    from slimgraph.ir.types import TensorType
    g = Graph("g")
    m = g.add_input("m", TensorType("bool", (5,)))
    x = g.add_input("x", TensorType("f32", (5, 3)))
    inv = g.op("bitwise_not", m)
    g.set_outputs([inv, g.op("index", x, m, axes=[0])])
    mask = torch.tensor([True, False, True, True, False])
    xs = torch.randn(5, 3)
    fast = slimgraph.optimize(g, target="onnx")
    got_inv, got_sel = fast.run(mask, xs)
    assert torch.equal(got_inv, ~mask) and torch.equal(got_sel, xs[mask])


# ---- QDQ ------------------------------------------------------------------------------------------------
def test_qdq_model_matches_onnxruntime():
    """QuantizeLinear -> DequantizeLinear around a QLinearMatMul-free MatMul, per-channel weights."""
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (8, 6)).astype(np.int8)
    inits = [onnx.numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
             onnx.numpy_helper.from_array(np.array(3, np.uint8), "xz"),
             onnx.numpy_helper.from_array(w, "w"),
             onnx.numpy_helper.from_array(rng.uniform(0.01, 0.02, 6).astype(np.float32), "ws"),
             onnx.numpy_helper.from_array(np.zeros(6, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    model = _model(nodes, [_vi("x", shape=[4, 8])], [_vi("y")], opset=13, inits=inits)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for target in ("reference", "torch", "onnx"):
        got = slimgraph.optimize(model, target=target).run(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=target)


def test_every_pad_mode_matches_the_spec():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for mode, pads in itertools.product(["constant", "reflect", "edge", "wrap"], [[1, 2, 2, 1], [0, 3, 1, 0]]):
        inits = [onnx.numpy_helper.from_array(np.array(pads, np.int64), "p")]
        node = helper.make_node("Pad", ["x", "p"], ["y"], mode=mode)
        model = _model([node], [_vi("x", shape=[3, 4])], [_vi("y")], inits=inits)
        _check(model, {"x": x}, targets=("reference", "onnx"))


# ---- random graphs with NaN/inf inputs: every target agrees with the reference -----------------------
def test_random_graphs_with_nan_and_inf_agree_across_targets():
    from hypothesis import HealthCheck, given, settings
    from strategies import graphs

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(graphs(max_ops=6, symbolic=False, special_values=True))
    def check(case):
        g, inputs = case
        want = run(g, *inputs)
        for target in ("torch", "onnx"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = slimgraph.optimize(g, target=target).run(*inputs)
            for w, o in zip(want, got):
                torch.testing.assert_close(o, w, equal_nan=True, atol=1e-4, rtol=1e-4, msg=lambda m: f"{target}: {m}")
    check()


@pytest.mark.parametrize("op", ["sigmoid", "tanh", "exp", "erf"])
def test_bf16_on_the_onnx_target_is_refused_at_optimize_time_naming_op_and_dtype(op):
    from slimgraph.ir.graph import Graph
    from slimgraph.ir.types import TensorType
    g = Graph("g")
    x = g.add_input("x", TensorType("bf16", (4, 4)))
    g.set_outputs([g.op(op, x)])
    with pytest.raises(Exception, match=rf"IR op {op} on bf16.*target='torch'"):
        slimgraph.optimize(g, target="onnx")
    # the same graph in f16 exports and runs
    g16 = Graph("g")
    x16 = g16.add_input("x", TensorType("f16", (4, 4)))
    g16.set_outputs([g16.op(op, x16)])
    xs = torch.randn(4, 4).half()
    torch.testing.assert_close(slimgraph.optimize(g16, target="onnx").run(xs)[0].float(),
                               run(g16, xs)[0].float(), atol=2e-3, rtol=2e-3)


# ---- negative indices, int64 extremes, empty tensors: every target agrees with the spec ----------------
def _init(name, arr):
    return onnx.numpy_helper.from_array(arr, name)


_X = np.arange(12, dtype=np.float32).reshape(3, 4)
_EDGE = {
    "gather_negative_const": ([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], {"x": _X},
                              [_init("i", np.array([-1, 0, -4], np.int64))], T.FLOAT),
    "gather_negative_runtime": ([helper.make_node("Gather", ["x", "i"], ["y"], axis=0)],
                                {"x": _X, "i": np.array([-1, 1], np.int64)}, [], T.FLOAT),
    "gather_elements_negative": ([helper.make_node("GatherElements", ["x", "i"], ["y"], axis=1)],
                                 {"x": _X, "i": np.array([[-1], [0], [-4]], np.int64)}, [], T.FLOAT),
    "gather_nd_negative": ([helper.make_node("GatherND", ["x", "i"], ["y"])],
                           {"x": _X, "i": np.array([[-1, -2], [0, 1]], np.int64)}, [], T.FLOAT),
    "scatter_elements_negative": ([helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=1)],
                                  {"x": _X, "i": np.array([[-1], [0], [-2]], np.int64),
                                   "u": np.ones((3, 1), np.float32)}, [], T.FLOAT),
    "scatter_nd_negative": ([helper.make_node("ScatterND", ["x", "i", "u"], ["y"])],
                            {"x": _X, "i": np.array([[-1]], np.int64), "u": np.ones((1, 4), np.float32)}, [], T.FLOAT),
    "slice_int64_extremes": ([helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])], {"x": _X},
                             [_init("s", np.array([-2 ** 63, 2 ** 63 - 1], np.int64)),
                              _init("e", np.array([2 ** 63 - 1, -2 ** 63], np.int64)),
                              _init("a", np.array([0, 1], np.int64)), _init("st", np.array([1, -1], np.int64))], T.FLOAT),
    "add_int64_extremes": ([helper.make_node("Add", ["x", "z"], ["y"])],
                           {"x": np.array([2 ** 63 - 1, -2 ** 63], np.int64), "z": np.zeros(2, np.int64)}, [], T.INT64),
    "add_empty": ([helper.make_node("Add", ["x", "z"], ["y"])],
                  {"x": np.zeros((0, 4), np.float32), "z": np.ones((1, 4), np.float32)}, [], T.FLOAT),
    "reduce_sum_empty": ([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)],
                         {"x": np.zeros((0, 4), np.float32)}, [], T.FLOAT),
    "reduce_max_empty_axis": ([helper.make_node("ReduceMax", ["x", "a"], ["y"], keepdims=0)],
                              {"x": np.zeros((3, 0), np.float32)}, [_init("a", np.array([1], np.int64))], T.FLOAT),
    "concat_empty": ([helper.make_node("Concat", ["x", "z"], ["y"], axis=0)],
                     {"x": np.zeros((0, 4), np.float32), "z": np.ones((2, 4), np.float32)}, [], T.FLOAT),
    "matmul_empty": ([helper.make_node("MatMul", ["x", "z"], ["y"])],
                     {"x": np.zeros((0, 4), np.float32), "z": np.ones((4, 2), np.float32)}, [], T.FLOAT),
    "argmax_inf_and_nan": ([helper.make_node("ArgMax", ["x"], ["y"], axis=1)],
                           {"x": np.array([[np.inf, -np.inf, np.nan]], np.float32)}, [], T.INT64),
}


@pytest.mark.parametrize("case", sorted(_EDGE))
def test_negative_indices_extremes_and_empty_tensors(case):
    nodes, feeds, inits, out_type = _EDGE[case]
    ins = [_vi(k, T.FLOAT if v.dtype == np.float32 else T.INT64, list(v.shape)) for k, v in feeds.items()]
    model = _model(nodes, ins, [_vi("y", out_type)], inits=inits)
    _check(model, feeds, targets=("reference", "torch", "onnx"))


@pytest.mark.parametrize("per_channel,zero", [(True, 0), (False, 0), (True, 3)])
def test_int8_weight_dequantize_imports_as_slimgraph_quant_op(per_channel, zero):
    """A QDQ weight (constant int8, per-tensor or per-column scale) becomes the IR `dequantize`
    op on its transposed [out, in] layout: int8 stays in the graph, the answer is ORT's."""
    import onnxruntime as ort
    rng = np.random.default_rng(1)
    w = rng.integers(-127, 128, (8, 6)).astype(np.int8)
    scale = rng.uniform(0.01, 0.02, 6 if per_channel else ()).astype(np.float32)
    zp = np.full(6 if per_channel else (), zero, np.int8)
    inits = [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(scale, "ws"),
             onnx.numpy_helper.from_array(zp, "wz")]
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
             helper.make_node("MatMul", ["x", "wd"], ["y"])]
    model = _model(nodes, [_vi("x", shape=["n", 8])], [_vi("y")], opset=13, inits=inits)
    g = import_onnx(model)
    dq = [n for n in g.nodes if n.op == "dequantize"]
    assert len(dq) == 1 and dq[0].inputs[0].type.dtype == "i8" and dq[0].inputs[0].type.shape == (6, 8)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    opts = ort.SessionOptions()  # ORT's default optimizations fuse DQ+MatMul into a dynamically quantized
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # matmul (0.03 off here)
    want = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(want, x @ ((w.astype(np.float32) - zp.astype(np.float32)) * scale), atol=1e-5)
    for target in ("reference", "torch", "onnx"):
        got = slimgraph.optimize(model, target=target).run(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=target)
