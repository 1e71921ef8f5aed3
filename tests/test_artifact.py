"""Artifacts: save, load in a fresh process (no model code, no pickle), refuse corrupt ones."""
import json
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

import slimgraph
from slimgraph import artifact, ir
from slimgraph.artifact import ArtifactError
from slimgraph.ir import TensorType


class Net(torch.nn.Module):
    """Defined only here: the loading subprocess cannot import it."""
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 8)
        self.head = torch.nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.mix = torch.nn.Parameter(torch.randn(8, 8).t())  # non-contiguous

    def forward(self, ids, scale):
        h = self.emb(ids) @ self.mix * scale
        return {"logits": self.head(h), "h": (h, h.sum(-1))}


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    model = Net().eval()
    ids, scale = torch.randint(0, 20, (2, 5)), torch.tensor(0.5)
    return slimgraph.optimize(model, (ids, scale), dynamic_shapes=({1: torch.export.Dim("seq")}, None))


def run_fresh(code: str, cwd) -> str:
    """Run `code` in a new interpreter (no test module, no model classes) and return its stdout."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_round_trip_in_fresh_process(compiled, tmp_path):
    path = tmp_path / "net.sg"
    compiled.save(path)
    assert sorted(p.name for p in path.iterdir()) == ["graph.sgir", "manifest.json", "torch_buffers.safetensors",
                                                      "torch_forward.py", "weights.safetensors"]
    ids = torch.randint(0, 20, (2, 7))
    save_file({"ids": ids, "scale": torch.tensor(2.0)}, str(tmp_path / "in.safetensors"))
    stdout = run_fresh(f"""
        import pickle, torch, slimgraph
        from safetensors.torch import load_file, save_file
        def refuse(*a, **k): raise AssertionError("pickle used")
        pickle.load = pickle.loads = torch.load = refuse
        import slimgraph.codegen.torch_fx as fx
        def no_codegen(*a, **k): raise AssertionError("codegen ran on load")
        fx.build = fx._Builder.build = fx._Builder._prepack = no_codegen   # loading must not generate code
        m = slimgraph.load({str(path)!r})
        x = load_file({str(tmp_path / 'in.safetensors')!r})
        out = m(x["ids"], x["scale"])
        print(type(out).__name__, sorted(out), type(out["h"]).__name__, m.target, m.pipeline)
        save_file({{"logits": out["logits"], "h0": out["h"][0], "h1": out["h"][1]}}, {str(tmp_path / 'out.safetensors')!r})
    """, tmp_path)
    assert stdout.split() == ["dict", "['h',", "'logits']", "tuple", "torch", compiled.pipeline]
    got = load_file(str(tmp_path / "out.safetensors"))
    want = compiled(ids, torch.tensor(2.0))
    assert torch.equal(got["logits"], want["logits"]) and torch.equal(got["h1"], want["h"][1])


def test_load_in_process_restores_report(compiled, tmp_path):
    compiled.save(tmp_path / "a.sg")
    m = slimgraph.load(tmp_path / "a.sg")
    assert str(m.report) == str(compiled.report)
    assert str(m.graph) == str(compiled.graph)


def test_loaded_int4_model_keeps_only_the_packed_weights(tmp_path):
    """After load, the torch runner holds int4 weights in the kernel's packed form only: the stored
    qweight is neither a module buffer nor kept by the graph (it reloads on demand, e.g. to save again)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.SiLU(), torch.nn.Linear(32, 16)).eval()
    x = torch.randn(3, 64)
    fast = slimgraph.optimize(model, (x,), pipeline="quantize-weights{bits=4,group=32},fuse-dequant-matmul")
    fast.save(tmp_path / "q.sg")
    m = slimgraph.load(tmp_path / "q.sg")
    torch.testing.assert_close(m(x), fast(x))
    buffers = dict(m.runner.module.named_buffers())
    assert any(n.endswith("qlinear_packed") for n in buffers)
    assert not any(n.endswith("qweight") for n in buffers), sorted(buffers)
    assert all(callable(w._data) for w in m.graph.weights.values())
    m.save(tmp_path / "again.sg")
    torch.testing.assert_close(slimgraph.load(tmp_path / "again.sg")(x), fast(x))


def test_tied_overlapping_and_strided_weights(tmp_path):
    base = torch.randn(6, 4)
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("n", 4)))
    ws = {"a": base, "tied": base, "rows": base[2:], "t": base.t()}  # tied, overlapping view, transposed view
    w = {k: g.add_weight(k, v) for k, v in ws.items()}
    outs = [g.op("linear", x, w["a"]), g.op("linear", x, w["tied"]), g.op("linear", x, w["rows"]),
            g.op("matmul", x, w["t"])]
    g.set_outputs(outs)
    fast = slimgraph.optimize(g, pipeline="")
    fast.save(tmp_path / "w.sg")
    assert json.loads((tmp_path / "w.sg" / "manifest.json").read_text())["weight_aliases"] == {"tied": "a"}
    assert json.loads((tmp_path / "w.sg" / "manifest.json").read_text())["weight_layouts"] == {"t": [1, 0]}
    assert sorted(load_file(str(tmp_path / "w.sg" / "weights.safetensors"))) == ["a", "rows", "t"]
    m = slimgraph.load(tmp_path / "w.sg")
    for k, v in ws.items():
        assert torch.equal(m.graph.weights[k].tensor, v)
    t = torch.randn(3, 4)
    assert m.graph.weights["t"].tensor.stride() == base.t().stride()  # same layout: same summation order
    for a, b in zip(m(t), fast(t)):
        assert torch.equal(a, b)


def test_hf_causal_lm_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    fast = slimgraph.optimize(transformers.LlamaForCausalLM(cfg).eval())
    fast.save(tmp_path / "lm.sg")
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(3))
    want = fast.generate(ids, max_new_tokens=5)
    stdout = run_fresh(f"""
        import torch, slimgraph
        m = slimgraph.load({str(tmp_path / 'lm.sg')!r})
        print(m.kv.num_layers, type(m(torch.tensor({ids.tolist()}))).__name__)
        print(m.generate(torch.tensor({ids.tolist()}), max_new_tokens=5).tolist())
    """, tmp_path)
    lines = stdout.splitlines()
    assert lines[0] == "2 CausalLMOutputWithPast"
    assert lines[1] == str(want.tolist())


# ---- refusing corrupt artifacts -----------------------------------------------------------------
@pytest.fixture
def saved(compiled, tmp_path):
    path = tmp_path / "m.sg"
    compiled.save(path)
    return path


def _edit_manifest(path, fn, rechecksum=False):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    if rechecksum:
        m["checksum"] = artifact._checksum(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_refuses_edited_graph(saved):
    text = (saved / "graph.sgir").read_text()
    (saved / "graph.sgir").write_text(text.replace("linear(", "matmul(", 1).replace("matmul(", "linear(", 1)[:-2] + " \n")
    with pytest.raises(ArtifactError, match="graph.sgir was modified"):
        slimgraph.load(saved)


def test_refuses_truncated_weights(saved):
    data = (saved / "weights.safetensors").read_bytes()
    (saved / "weights.safetensors").write_bytes(data[:-100])
    with pytest.raises(ArtifactError, match="weights.safetensors was modified or truncated"):
        slimgraph.load(saved)


def test_refuses_flipped_weight_byte(saved):
    data = bytearray((saved / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (saved / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.safetensors was modified: its sha256"):
        slimgraph.load(saved)


@pytest.mark.parametrize("name", ["weights.safetensors", "graph.sgir", "manifest.json"])
def test_refuses_missing_file(saved, name):
    (saved / name).unlink()
    with pytest.raises(ArtifactError, match=f"{name} is missing"):
        slimgraph.load(saved)


def test_refuses_unsupported_format_version(saved):
    _edit_manifest(saved, lambda m: m.update(format_version=99))
    with pytest.raises(ArtifactError, match="format_version 99 is not supported .*reads format_version 2"):
        slimgraph.load(saved)


def test_refuses_a_version_1_artifact_saying_how_to_recreate_it(saved):
    _edit_manifest(saved, lambda m: m.update(format_version=1))
    with pytest.raises(ArtifactError, match=r"format_version 1 .*predate declared graph state.*re-create it: "
                                            r"slimgraph.optimize\(model, ...\).save\(path\)"):
        slimgraph.load(saved)


def test_products_built_for_another_host_are_rebuilt_with_a_note(saved):
    _edit_manifest(saved, lambda m: m["products"]["meta"]["host"].update(torch="0.0-elsewhere"), rechecksum=True)
    with pytest.warns(UserWarning, match="built for another host .*torch 0.0-elsewhere -> .*rebuilt"):
        m = slimgraph.load(saved)
    assert any("rebuilt" in n for n in m.report.notes)


def test_refuses_a_product_file_missing_from_the_hash_list(saved):
    _edit_manifest(saved, lambda m: m["products"]["files"].append("extra.bin"), rechecksum=True)
    with pytest.raises(ArtifactError, match=r"build products \['extra.bin'\] have no hashed entry"):
        slimgraph.load(saved)


def test_refuses_edited_manifest(saved):
    _edit_manifest(saved, lambda m: m.update(pipeline="dce"))
    with pytest.raises(ArtifactError, match="manifest.json was modified after it was written"):
        slimgraph.load(saved)


def test_refuses_manifest_with_bad_schema(saved):
    _edit_manifest(saved, lambda m: m.pop("signature"), rechecksum=True)
    with pytest.raises(ArtifactError, match="required key 'signature' is missing"):
        slimgraph.load(saved)
    _edit_manifest(saved, lambda m: m.update(signature={"kind": "flat"}, files=[]), rechecksum=True)
    with pytest.raises(ArtifactError, match="key 'files' has the wrong type"):
        slimgraph.load(saved)


def test_refuses_unknown_target(saved):
    _edit_manifest(saved, lambda m: m.update(target="nope"), rechecksum=True)
    with pytest.raises(ArtifactError, match="unknown target 'nope'"):
        slimgraph.load(saved)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="no artifact directory"):
        slimgraph.load(tmp_path / "absent")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        slimgraph.load(tmp_path)


# ---- atomic writes --------------------------------------------------------------------------------
def test_failing_save_leaves_nothing(compiled, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr("safetensors.torch.save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        compiled.save(tmp_path / "x.sg")
    assert list(tmp_path.iterdir()) == []


def test_failing_overwrite_keeps_the_old_artifact(compiled, tmp_path, monkeypatch):
    path = tmp_path / "x.sg"
    compiled.save(path)
    before = (path / "manifest.json").read_text()
    monkeypatch.setattr(artifact, "_checksum", lambda m: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        compiled.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["x.sg"]
    assert (path / "manifest.json").read_text() == before


def test_overwrite_and_refuse_foreign_directory(compiled, tmp_path):
    path = tmp_path / "x.sg"
    compiled.save(path)
    compiled.save(path)  # replacing an artifact is fine
    slimgraph.load(path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not a slimgraph artifact; refusing to overwrite"):
        compiled.save(tmp_path / "data")
    assert (tmp_path / "data" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "x.sg"]


def test_graph_only_model_round_trip(tmp_path):
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("n", 3)))
    w = torch.randn(4, 3)
    g.set_outputs([g.op("linear", x, g.add_weight("w", w)), g.op("relu", x)])
    fast = slimgraph.optimize(g, pipeline="")
    fast.save(tmp_path / "g.sg")
    m = slimgraph.load(tmp_path / "g.sg")
    t = torch.randn(5, 3)
    a, b = m(t)
    assert torch.equal(a, fast(t)[0]) and torch.equal(b, t.relu())
    assert pickle  # the module is imported only to prove loading never needs it


def test_onnx_target_ships_its_model_file(tmp_path):
    """The `onnx` target's build product (model.onnx) is in the artifact, hashed, and runs in plain ORT."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    x = torch.randn(3, 8)
    fast = slimgraph.optimize(mlp, (x,), target="onnx")
    fast.save(tmp_path / "m.sg")
    manifest = json.loads((tmp_path / "m.sg" / "manifest.json").read_text())
    assert "model.onnx" in manifest["files"]
    sess = ort.InferenceSession(str(tmp_path / "m.sg" / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), mlp(x).detach(), atol=1e-5, rtol=1e-5)
    (tmp_path / "m.sg" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="model.onnx"):
        slimgraph.load(tmp_path / "m.sg")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_artifact_modes_follow_the_umask(compiled, tmp_path, umask):
    """Artifacts are meant to be shared: not mkdtemp's 0700 (nor 0600 files), but what the umask gives."""
    import os
    import stat
    old = os.umask(umask)
    try:
        compiled.save(tmp_path / "m.sg")
        compiled.save(tmp_path / "m.sg")        # replacing keeps the same modes
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    assert mode(tmp_path / "m.sg") == 0o777 & ~umask
    files = list((tmp_path / "m.sg").iterdir())
    assert {f.name for f in files} >= {"manifest.json", "graph.sgir", "weights.safetensors"}
    assert {mode(f) for f in files} == {0o666 & ~umask}
