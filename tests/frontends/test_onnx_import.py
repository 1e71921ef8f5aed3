"""ONNX importer: hand-made graphs (onnx.helper), symbolic shape folding, loading paths,
malformed inputs, and models exported by torch.onnx."""
import copy
import io
import os

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="needs pip install 'slimgraph[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from slimgraph.frontends.onnx_import import (NeedsConstantError, OnnxImportError, import_onnx,  # noqa: E402
                                             supported_ops)
from slimgraph.ir import run, verify  # noqa: E402


def make_model(nodes, inputs, outputs, inits=(), opset=18, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def mlp_model():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["y"])]
    return make_model(nodes, [vi("x", TensorProto.FLOAT, ["batch", 8])], [vi("y", TensorProto.FLOAT, ["batch", 4])],
                      [w, b]), w, b


def test_mlp_matches_numpy_and_keeps_dim_param_symbolic():
    model, w, b = mlp_model()
    g = import_onnx(model)
    verify(g)
    assert g.inputs[0].type.shape == ("batch", 8)
    for n in (1, 5):
        x = torch.randn(n, 8)
        want = np.maximum(x.numpy() @ numpy_helper.to_array(w) + numpy_helper.to_array(b), 0)
        np.testing.assert_allclose(run(g, x)[0].numpy(), want, rtol=1e-5, atol=1e-6)


def shape_subgraph_model():
    """y = Reshape(x, [Shape(x)[0], Shape(x)[1], 2, 4]): the classic exported head split."""
    c = lambda name, v: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(v, np.int64)))  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["s"]), c("i0", 0), c("i1", 1), c("tail", [2, 4]), c("ax", [0]),
             helper.make_node("Gather", ["s", "i0"], ["d0"]), helper.make_node("Gather", ["s", "i1"], ["d1"]),
             helper.make_node("Unsqueeze", ["d0", "ax"], ["u0"]), helper.make_node("Unsqueeze", ["d1", "ax"], ["u1"]),
             helper.make_node("Concat", ["u0", "u1", "tail"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    return make_model(nodes, [vi("x", TensorProto.FLOAT, ["b", "seq", 8])], [vi("y", TensorProto.FLOAT, ["b", "seq", 2, 4])])


def test_shape_subgraph_folds_to_symbolic_reshape():
    g = import_onnx(shape_subgraph_model())
    assert [n.op for n in g.nodes] == ["reshape"]  # Shape/Gather/Concat are gone
    assert g.nodes[0].attrs["shape"] == ["b", "seq", 2, 4]
    for seq in (3, 7):
        x = torch.randn(2, seq, 8)
        torch.testing.assert_close(run(g, x)[0], x.reshape(2, seq, 2, 4))


def test_symbolic_shape_value_as_output_is_computed_at_run_time():
    nodes = [helper.make_node("Shape", ["x"], ["s"])]
    g = import_onnx(make_model(nodes, [vi("x", TensorProto.FLOAT, ["n", 3])], [vi("s", TensorProto.INT64, [2])]))
    assert run(g, torch.zeros(5, 3))[0].tolist() == [5, 3]
    assert run(g, torch.zeros(2, 3))[0].tolist() == [2, 3]


def test_load_from_path_bytes_and_external_data(tmp_path):
    model, *_ = mlp_model()
    x = torch.randn(3, 8)
    want = run(import_onnx(model), x)[0]
    path = tmp_path / "m.onnx"
    onnx.save(copy.deepcopy(model), str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    assert os.path.exists(tmp_path / "w.bin")
    torch.testing.assert_close(run(import_onnx(str(path)), x)[0], want)
    torch.testing.assert_close(run(import_onnx(model.SerializeToString()), x)[0], want)


def test_truncated_file_is_a_clear_error(tmp_path):
    model, *_ = mlp_model()
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString()[:40])
    with pytest.raises(OnnxImportError, match="truncated or corrupt"):
        import_onnx(str(path))


def test_missing_initializer_names_node_and_input():
    model, *_ = mlp_model()
    del model.graph.initializer[0]  # "w"
    with pytest.raises(OnnxImportError, match=r"MatMul.*'w'.*missing initializer"):
        import_onnx(model)


def test_unknown_domain_names_node_and_op():
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    model = make_model([node], [vi("x", TensorProto.FLOAT, [2])], [vi("y", TensorProto.FLOAT, [2])],
                       domains=["com.example"])
    with pytest.raises(OnnxImportError, match=r"\(Frobnicate\).*domain 'com.example'"):
        import_onnx(model)


def test_old_opset_is_converted_or_refused_naming_the_converter(monkeypatch):
    model, *_ = mlp_model()
    model.opset_import[0].version = 12
    notes = []
    import_onnx(model, notes=notes)  # up-converted by onnx.version_converter, with a note
    assert notes and "opset 12" in notes[0] and "version_converter" in notes[0]
    from onnx import version_converter

    def fail(m, v):
        raise RuntimeError("No adapter for op Frobnicate")
    monkeypatch.setattr(version_converter, "convert_version", fail)
    with pytest.raises(OnnxImportError, match="opset 12.*version_converter could not convert it: No adapter"):
        import_onnx(model, notes=[])


def test_unsupported_op_and_control_flow_name_the_node():
    node = helper.make_node("NonZero", ["x"], ["y"], name="nz")
    model = make_model([node], [vi("x", TensorProto.FLOAT, [4])], [vi("y", TensorProto.INT64, [1, None])])
    with pytest.raises(OnnxImportError, match=r"node 'nz' \(NonZero\).*not supported"):
        import_onnx(model)
    branch = helper.make_graph([], "b", [], [vi("x", TensorProto.FLOAT, [4])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    model = make_model([node], [vi("c", TensorProto.BOOL, []), vi("x", TensorProto.FLOAT, [4])],
                       [vi("y", TensorProto.FLOAT, [4])])
    with pytest.raises(OnnxImportError, match=r"\(If\): control flow"):
        import_onnx(model)


def test_data_dependent_parameter_can_be_bound():
    nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["y"])]
    model = make_model(nodes, [vi("x", TensorProto.FLOAT, [3]), vi("axes", TensorProto.INT64, [1])],
                       [vi("y", TensorProto.FLOAT, [1, 3])])
    with pytest.raises(NeedsConstantError) as e:
        import_onnx(model)
    assert e.value.name == "axes"
    g = import_onnx(model, bind={"axes": np.array([0])})
    assert len(g.inputs) == 1 and run(g, torch.ones(3))[0].shape == (1, 3)


def test_supported_op_list_is_declared_once_and_sorted():
    ops = supported_ops()
    assert ops == sorted(ops) and len(ops) == len(set(ops))
    assert {"MatMul", "Gemm", "Conv", "Softmax", "Reshape", "LayerNormalization", "Attention"} <= set(ops)


def test_torch_onnx_export_mlp_matches_torch():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.LayerNorm(16),
                            torch.nn.Linear(16, 4)).eval()
    f = io.BytesIO()
    torch.onnx.export(m, (torch.randn(2, 8),), f, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}}, opset_version=17)
    g = import_onnx(f.getvalue())
    for n in (1, 6):
        x = torch.randn(n, 8)
        torch.testing.assert_close(run(g, x)[0], m(x).detach(), rtol=1e-4, atol=1e-4)


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, ids):
            return self.lm(input_ids=ids, use_cache=False).logits
    return Logits().eval()


@pytest.mark.slow
def test_torch_onnx_export_tiny_llama_matches_torch_at_two_lengths():
    pytest.importorskip("onnxscript", reason="torch.onnx dynamo exporter needs onnxscript")
    model = tiny_llama()
    seq = torch.export.Dim("seq", min=2, max=32)
    prog = torch.onnx.export(model, (torch.randint(0, 64, (1, 7)),), dynamo=True, input_names=["ids"],
                             dynamic_shapes=({1: seq},), verbose=False)
    g = import_onnx(prog.model_proto)
    assert isinstance(g.inputs[0].type.shape[1], str)  # seq stayed symbolic
    for n in (5, 11):
        ids = torch.randint(0, 64, (1, n))
        torch.testing.assert_close(run(g, ids)[0], model(ids).detach(), rtol=1e-4, atol=1e-4)


def test_matmulnbits_imports_as_qlinear_with_the_same_numbers():
    pytest.importorskip("slimgraph.ir.opset.quant")
    from slimgraph.codegen.onnx_export import export_onnx
    from slimgraph.ir import Graph, TensorType
    from slimgraph.ir import quant_format as Q
    torch.manual_seed(0)
    for sym in (True, False):
        qweight, scales, zeros = Q.store(*Q.quantize_rtn(torch.randn(16, 64), 4, 32, sym), 4, sym)
        g = Graph()
        x = g.add_input("x", TensorType("f32", ("n", 64)))
        packed = [g.add_weight("qw", qweight), g.add_weight("sc", scales)]
        packed += [g.add_weight("zp", zeros)] if zeros is not None else []
        g.set_outputs([g.op("qlinear", x, *packed, g.add_weight("b", torch.randn(16)), bits=4, group=32)])
        back = import_onnx(export_onnx(g))
        assert [n.op for n in back.nodes] == ["qlinear"]
        xs = torch.randn(3, 64)
        torch.testing.assert_close(run(back, xs)[0], run(g, xs)[0])


def test_ort_fused_ops_import():
    rng = np.random.default_rng(0)
    init = lambda name, *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)  # noqa: E731
    nodes = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["ln", "", "", "sum"],
                              domain="com.microsoft", epsilon=1e-5),
             helper.make_node("FusedMatMul", ["ln", "w"], ["mm"], domain="com.microsoft", transB=1, alpha=0.5),
             helper.make_node("FastGelu", ["mm", "bias"], ["y"], domain="com.microsoft")]
    model = make_model(nodes, [vi("x", TensorProto.FLOAT, [2, 8]), vi("skip", TensorProto.FLOAT, [2, 8])],
                       [vi("y", TensorProto.FLOAT, [2, 4]), vi("sum", TensorProto.FLOAT, [2, 8])],
                       [init("gamma", 8), init("beta", 8), init("w", 4, 8), init("bias", 4)], domains=["com.microsoft"])
    x, skip = torch.randn(2, 8), torch.randn(2, 8)
    y, s = run(import_onnx(model), x, skip)
    arr = {t.name: torch.from_numpy(numpy_helper.to_array(t)) for t in model.graph.initializer}
    ln = torch.nn.functional.layer_norm(x + skip, (8,), arr["gamma"], arr["beta"], 1e-5)
    want = torch.nn.functional.gelu(0.5 * ln @ arr["w"].T + arr["bias"], approximate="tanh")
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(s, x + skip)


@pytest.mark.slow
def test_torch_onnx_export_real_minilm_matches_torch(minilm):
    """The real all-MiniLM-L6-v2, exported by torch.onnx (dynamo exporter), imports and matches torch."""
    model, tok = minilm

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = model

        def forward(self, ids, mask):
            return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state

    wrapped = Hidden().eval()
    batch = tok(["The quick brown fox jumps over the lazy dog.", "slimgraph compiles models."],
                padding=True, return_tensors="pt")
    pytest.importorskip("onnxscript", reason="torch.onnx dynamo exporter needs onnxscript")
    dims = {0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("seq", max=512)}
    prog = torch.onnx.export(wrapped, (batch.input_ids, batch.attention_mask), dynamo=True,
                             input_names=["ids", "mask"], dynamic_shapes=(dims, dims), verbose=False)
    g = import_onnx(prog.model_proto)
    verify(g)
    other = tok(["A different, somewhat longer sentence about compilers and inference speed."], return_tensors="pt")
    for b in (batch, other):
        with torch.no_grad():
            want = wrapped(b.input_ids, b.attention_mask)
        torch.testing.assert_close(run(g, b.input_ids, b.attention_mask)[0], want, rtol=1e-4, atol=1e-4)
