"""ONNX exporter and the `onnx` target: exported models pass onnx.checker and ONNX Runtime
matches the reference interpreter; ONNX -> IR -> ONNX round trips; int4/int8 weights."""
import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="needs pip install 'slimgraph[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="needs pip install 'slimgraph[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from slimgraph.codegen.onnx_export import OnnxExportError, export_onnx, save_onnx  # noqa: E402
from slimgraph.codegen.onnx_runtime import build_ort_runner  # noqa: E402
from slimgraph.frontends.onnx_import import import_onnx  # noqa: E402
from slimgraph.ir import Graph, TensorType, run  # noqa: E402
from slimgraph.targets.base import get_target  # noqa: E402


def assert_ort_matches_interpreter(g, *inputs, atol=1e-5):
    runner = build_ort_runner(g, ["CPUExecutionProvider"])
    for got, want in zip(runner(*inputs), run(g, *inputs), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=atol)


def transformer_block():
    """A llama-like block over symbolic [b, seq]: rms_norm, GQA causal attention, SiLU MLP."""
    torch.manual_seed(0)
    g = Graph("block")
    x = g.add_input("x", TensorType("f32", ("b", "seq", 32)))
    w = lambda name, *shape: g.add_weight(name, torch.randn(*shape) * 0.2)  # noqa: E731
    h = g.op("rms_norm", x, w("norm", 32), eps=1e-6)
    q = g.op("permute", g.op("reshape", g.op("linear", h, w("wq", 32, 32)), shape=["b", "seq", 4, 8]), dims=[0, 2, 1, 3])
    k = g.op("permute", g.op("reshape", g.op("linear", h, w("wk", 16, 32)), shape=["b", "seq", 2, 8]), dims=[0, 2, 1, 3])
    v = g.op("permute", g.op("reshape", g.op("linear", h, w("wv", 16, 32)), shape=["b", "seq", 2, 8]), dims=[0, 2, 1, 3])
    a = g.op("attention", q, k, v, causal=True)
    a = g.op("reshape", g.op("permute", a, dims=[0, 2, 1, 3]), shape=["b", "seq", 32])
    x = g.op("add", x, g.op("linear", a, w("wo", 32, 32)))
    mlp = g.op("mul", g.op("silu", g.op("linear", x, w("wg", 64, 32))), g.op("linear", x, w("wu", 64, 32)))
    y = g.op("add", x, g.op("linear", mlp, w("wd", 32, 64)))
    g.set_outputs([g.op("layer_norm", y, w("ln", 32), w("lb", 32), axes=1)])
    return g


@pytest.mark.parametrize("seq", [1, 6])
def test_transformer_block_runs_in_ort_with_symbolic_dims(seq):
    g = transformer_block()
    model = export_onnx(g)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["b", "seq", 32]
    assert_ort_matches_interpreter(g, torch.randn(2, seq, 32))


def test_shape_ops_and_generators_with_symbolic_dims():
    g = Graph()
    x = g.add_input("x", TensorType("f32", ("n", 4)))
    ids = g.add_input("ids", TensorType("i64", ("n",)))
    table = g.add_weight("table", torch.randn(10, 4))
    pos = g.op("cast", g.op("arange", end="n", dtype="i64"), dtype="f32")
    e = g.op("add", g.op("embedding", table, ids), g.op("unsqueeze", pos, dim=1))
    s = g.op("slice", e, dim=0, start=1, end="n")
    c = g.op("concat", s, g.op("full", shape=[1, 4], value=2.0, dtype="f32"), dim=0)
    m = g.op("where", g.op("gt", c, x), g.op("flip", c, dims=[0]), g.op("cumsum", x, dim=0))
    p = g.op("pad", g.op("softmax", m, dim=-1), pads=[1, 2], value=-1.0)
    r = g.op("floor_divide", g.op("dim_value", expr="n*2+1"), g.op("constant", value=2, dtype="i64"))
    g.set_outputs([p, g.op("var", m, dims=[1], keepdim=True), g.op("amax", x, dims=None), r,
                   g.op("remainder", x, g.op("constant", value=0.7, dtype="f32"))])
    for n in (3, 5):
        assert_ort_matches_interpreter(g, torch.randn(n, 4), torch.randint(0, 10, (n,)))


def roundtrip_models():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")
    conv = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("GlobalAveragePool", ["p"], ["gp"]), helper.make_node("Flatten", ["gp"], ["y"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    shapes = numpy_helper.from_array(np.array([0, -1, 2], np.int64), "shape")
    reshape = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s"], start=1, end=2), helper.make_node("Reshape", ["x", "shape"], ["r"]),
         helper.make_node("Softmax", ["r"], ["y"], axis=1), helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["y", "sf"], ["z"])],
        "reshape", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "seq", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", None, 2])], [shapes])
    return [(helper.make_model(conv, opset_imports=[helper.make_opsetid("", 17)]), (2, 2, 8, 8)),
            (helper.make_model(reshape, opset_imports=[helper.make_opsetid("", 17)]), (2, 3, 4))]


@pytest.mark.parametrize("case", range(2))
def test_roundtrip_onnx_ir_onnx_matches_original_in_ort(case):
    model, shape = roundtrip_models()[case]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = build_ort_runner(import_onnx(model), ["CPUExecutionProvider"])(torch.from_numpy(x))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5)


def test_roundtrip_torch_exported_mlp():
    import io
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).eval()
    f = io.BytesIO()
    torch.onnx.export(m, (torch.randn(2, 8),), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    x = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)
    want = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = build_ort_runner(import_onnx(f.getvalue()), ["CPUExecutionProvider"])(torch.from_numpy(x))[0]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def quantized_linear(bits, sym, group=32, bias=True):
    from slimgraph.ir import quant_format as Q
    torch.manual_seed(0)
    w = torch.randn(24, 64)
    q, scales, zeros = Q.quantize_rtn(w, bits, group, sym)
    qweight, scales, zeros = Q.store(q, scales, zeros, bits, sym)
    g = Graph("q")
    x = g.add_input("x", TensorType("f32", ("n", 64)))
    ins = [x, g.add_weight("qw", qweight), g.add_weight("sc", scales)]
    if zeros is not None:
        ins.append(g.add_weight("zp", zeros))
    if bias:
        ins.append(g.add_weight("bias", torch.randn(24)))
    g.set_outputs([g.op("qlinear", *ins, bits=bits, group=group)])
    return g


@pytest.mark.parametrize("sym", [True, False])
def test_int4_qlinear_exports_as_matmulnbits(sym):
    pytest.importorskip("slimgraph.ir.opset.quant")
    g = quantized_linear(4, sym)
    model = export_onnx(g)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 1 and nbits[0].domain == "com.microsoft"
    assert {a.name: helper.get_attribute_value(a) for a in nbits[0].attribute}["block_size"] == 32
    assert_ort_matches_interpreter(g, torch.randn(3, 64), atol=1e-4)


@pytest.mark.parametrize("sym", [True, False])
def test_int8_qlinear_and_dequantize_export(sym):
    pytest.importorskip("slimgraph.ir.opset.quant")
    g = quantized_linear(8, sym, bias=False)
    assert_ort_matches_interpreter(g, torch.randn(3, 64), atol=1e-4)
    g4 = quantized_linear(4, sym, bias=False)
    n = g4.nodes[0]
    with g4.inserting_before(n):
        w = g4.op("dequantize", *n.inputs[1:], bits=4, group=32)
    g4.set_outputs([g4.op("matmul", g4.inputs[0], g4.op("permute", w, dims=[1, 0]))])
    assert_ort_matches_interpreter(g4, torch.randn(2, 64), atol=1e-4)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_tied_head_exports_qembedding(bits):
    from slimgraph.passes.base import get_pass
    torch.manual_seed(0)
    g = Graph("tied")
    ids = g.add_input("ids", TensorType("i64", ("b", "s")))
    emb = g.add_weight("lm_head.weight", torch.randn(40, 32))
    g.set_outputs([g.op("linear", g.op("embedding", emb, ids), emb)])
    get_pass("quantize-weights")(bits=bits, group=16 if bits == 4 else 0, include=["lm_head.weight"]).run(g)
    get_pass("fuse-dequant-matmul")().run(g)
    assert g.op_counts()["qembedding"] == 1
    assert_ort_matches_interpreter(g, torch.randint(0, 40, (2, 3)), atol=1e-3)


def test_rope_exports():
    g = Graph("rope")
    x = g.add_input("x", TensorType("f32", ("b", 3, "s", 8)))
    cs = g.add_input("angles", TensorType("f32", (1, 1, "s", 8)))
    g.set_outputs([g.op("rope", x, g.op("cos", cs), g.op("sin", cs))])
    assert_ort_matches_interpreter(g, torch.randn(2, 3, 5, 8), torch.randn(1, 1, 5, 8))


def test_unexportable_graph_names_the_node_and_writes_nothing(tmp_path):
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3)))
    g.set_outputs([g.op("adaptive_avg_pool2d", g.op("reshape", x, shape=[1, 1, 2, 3]), output_size=[2, 2])])
    path = tmp_path / "m.onnx"
    with pytest.raises(OnnxExportError, match="adaptive_avg_pool2d"):
        save_onnx(g, str(path))
    assert list(tmp_path.iterdir()) == []


def test_save_writes_a_loadable_model(tmp_path):
    g = transformer_block()
    path = save_onnx(g, str(tmp_path / "out" / "block.onnx"))
    x = torch.randn(1, 3, 32)
    g2 = import_onnx(path)
    torch.testing.assert_close(run(g2, x)[0], run(g, x)[0], rtol=1e-5, atol=1e-5)


def test_onnx_target_compiles_and_checks_signature():
    runner = get_target("onnx").compile(transformer_block())
    assert runner(torch.randn(1, 4, 32))[0].shape == (1, 4, 32)
    with pytest.raises(TypeError, match="rank"):
        runner(torch.randn(4, 32))


@pytest.mark.slow
def test_int4_llama_generates_like_the_reference_target_on_ort():
    transformers = pytest.importorskip("transformers")
    import slimgraph
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(cfg).eval()
    pipe = "canonicalize,quantize-weights{bits=4,group=32},fuse-dequant-matmul,cse,dce"
    ref = slimgraph.optimize(lm, target="reference", pipeline=pipe)
    onx = slimgraph.optimize(lm, target="onnx", pipeline=pipe)
    assert any(n.op_type == "MatMulNBits" for n in export_onnx(onx.graph).graph.node)
    ids = torch.randint(0, 128, (1, 6))
    torch.testing.assert_close(onx(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(onx.generate(ids, max_new_tokens=12), ref.generate(ids, max_new_tokens=12))


def test_missing_onnx_package_names_the_extra(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'slimgraph\[onnx\]'"):
        export_onnx(transformer_block())
    with pytest.raises(ImportError, match=r"pip install 'slimgraph\[onnx\]'"):
        import_onnx(b"")


def test_runner_provides_the_model_file_for_artifacts():
    runner = build_ort_runner(transformer_block(), ["CPUExecutionProvider"])
    data = runner.products.read_bytes("model.onnx")
    onnx.checker.check_model(onnx.load_from_string(data))


def kv_attention_block(mask: bool):
    """Decode-style GQA attention over a KV cache: past [b, 2, past, 8] ++ new [b, 2, seq, 8]."""
    g = Graph("kv")
    q = g.add_input("q", TensorType("f32", ("b", 4, "seq", 8)))
    k = g.add_input("k", TensorType("f32", ("b", 2, "seq", 8)))
    v = g.add_input("v", TensorType("f32", ("b", 2, "seq", 8)))
    pk = g.add_input("pk", TensorType("f32", ("b", 2, "past", 8)))
    pv = g.add_input("pv", TensorType("f32", ("b", 2, "past", 8)))
    k, v = g.op("concat", pk, k, dim=2), g.op("concat", pv, v, dim=2)
    extra = [g.op("full", shape=["b", 1, "seq", "past+seq"], value=True, dtype="bool")] if mask else []
    a = g.op("attention", q, k, v, *extra, causal=True)
    g.set_outputs([g.op("reshape", g.op("permute", a, dims=[0, 2, 1, 3]), shape=["b", "seq", 32]), k, v])
    return g


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("past,seq", [(0, 5), (4, 1), (3, 2)])
def test_attention_exports_as_one_opset23_attention_node(mask, past, seq):
    g = kv_attention_block(mask)
    model = export_onnx(g)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Attention") == 1 and "Softmax" not in ops and "Expand" not in ops
    assert {o.domain: o.version for o in model.opset_import}[""] == 23
    b = 2
    ins = [torch.randn(b, 4, seq, 8), torch.randn(b, 2, seq, 8), torch.randn(b, 2, seq, 8),
           torch.randn(b, 2, past, 8), torch.randn(b, 2, past, 8)]
    assert_ort_matches_interpreter(g, *ins)


def test_unfused_export_keeps_opset18_and_decomposed_attention():
    model = export_onnx(kv_attention_block(False), fuse=False)
    ops = [n.op_type for n in model.graph.node]
    assert "Attention" not in ops and "Softmax" in ops
    assert {o.domain: o.version for o in model.opset_import}[""] == 18


def test_reshape_and_rms_norm_export_in_ort_fusable_form():
    """Reshapes to symbolic shapes use 0/-1 (a constant shape, no per-run Shape/Concat); rms_norm
    uses Pow(x, 2), the pattern ORT fuses into SimplifiedLayerNormalization."""
    model = export_onnx(transformer_block())
    ops = [n.op_type for n in model.graph.node]
    assert "Pow" in ops and "Attention" in ops, ops
    reshape_shapes = {n.input[1] for n in model.graph.node if n.op_type == "Reshape"}
    assert reshape_shapes <= {t.name for t in model.graph.initializer}


def test_int4_accuracy_level_is_opt_in():
    g = quantized_linear(4, True)
    plain = [n for n in export_onnx(g).graph.node if n.op_type == "MatMulNBits"]
    assert plain and not any(a.name == "accuracy_level" for a in plain[0].attribute)
    fast = [n for n in export_onnx(g, int4_accuracy_level=4).graph.node if n.op_type == "MatMulNBits"]
    assert {a.name: a.i for a in fast[0].attribute}["accuracy_level"] == 4
    with pytest.raises(OnnxExportError, match="accuracy_level"):
        export_onnx(g, int4_accuracy_level=7)


def _advanced_index_graph():
    """torch advanced indexing with several index tensors: adjacent axes (the broadcast index dims stay in place),
    axes apart (they go in front), broadcast [2, 1] x [3] indices, negative entries, an i32 index."""
    g = Graph("index")
    x = g.add_input("x", TensorType("f32", ("b", 3, 4, 5)))
    i = g.add_input("i", TensorType("i64", (2, 1)))
    j = g.add_input("j", TensorType("i32", (3,)))
    g.set_outputs([g.op("index", x, i, j, axes=[1, 3]), g.op("index", x, i, j, axes=[2, 3]),
                   g.op("index", x, j, axes=[3]), g.op("index", x, i, j, axes=[1, 2])])
    return g


def test_advanced_indexing_with_several_index_tensors_exports_as_gathernd():
    g = _advanced_index_graph()
    for b in (1, 3):
        assert_ort_matches_interpreter(g, torch.randn(b, 3, 4, 5), torch.tensor([[-1], [1]]),
                                       torch.tensor([0, -2, 3], dtype=torch.int32))


@pytest.mark.parametrize("dilation", [[1, 1], [2, 1]])
def test_average_pool_nd_exports_with_dilations_only_where_needed(dilation):
    """AveragePool-18 has no dilations attribute (onnx.checker refused every average pool_nd); a dilated one
    raises the model's opset to 19."""
    g = Graph("pool")
    x = g.add_input("x", TensorType("f32", (1, 2, 9, 8)))
    g.set_outputs([g.op("pool_nd", x, kind="avg", kernel=[2, 3], stride=[1, 2], pads=[1, 0, 1, 1], dilation=dilation,
                        ceil_mode=True, count_include_pad=False),
                   g.op("pool_nd", x, kind="max", kernel=[3, 2], stride=[2, 2], pads=[1, 1, 1, 1], dilation=dilation,
                        ceil_mode=True)])
    model = export_onnx(g)
    assert model.opset_import[0].version == (19 if dilation != [1, 1] else 18)
    assert_ort_matches_interpreter(g, torch.randn(1, 2, 9, 8))


def test_arange_of_any_dtype():
    """ONNX Range takes f32/f64/i16/i32/i64 only: an arange of u8 (XLNet), i8 or f16 counts in i64/f32 and is
    cast (before: ONNX Runtime refused the model at session creation)."""
    g = Graph("ar")
    x = g.add_input("x", TensorType("f32", ("seq",)))
    outs = [g.op("arange", start=0, end="seq", dtype=d) for d in ("u8", "i8", "f16", "i32")]
    g.set_outputs(outs + [g.op("add", x, g.op("cast", outs[0], dtype="f32"))])
    assert_ort_matches_interpreter(g, torch.randn(7))
