"""slimgraph.optimize / CompiledModel: call signatures, output structures, reports, errors."""
import collections
import importlib.util

import pytest
import torch
from torch.export import Dim

import slimgraph
from slimgraph import ir
from slimgraph.api import OptimizeError
from slimgraph.ir import TensorType
from slimgraph.targets import base as targets


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


Pair = collections.namedtuple("Pair", "lo hi")


class Structured(torch.nn.Module):
    """Keyword arguments in, a dict with a namedtuple and a list out."""
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x, bias=None, *, scale: float = 2.0):
        y = self.proj(x) * scale
        if bias is not None:
            y = y + bias
        return {"y": y, "parts": Pair(y[..., :4], y[..., 4:]), "stats": [y.mean(-1), y.amax(-1)]}


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return MLP().eval()


def test_mlp_matches_eager_and_reports(mlp):
    x = torch.randn(4, 16)
    fast = slimgraph.optimize(mlp, (x,), dynamic_shapes=({0: Dim("batch")},))
    for batch in (4, 7):
        xb = torch.randn(batch, 16)
        torch.testing.assert_close(fast(xb), mlp(xb), rtol=1e-5, atol=1e-5)
    assert fast.target == "torch" and fast.kv is None
    r = fast.report
    assert [p["name"] for p in r.passes] == fast.pipeline.split(",")
    assert r.weight_bytes_before == r.weight_bytes_after == sum(p.numel() * 4 for p in mlp.parameters())
    assert r.ops_after.get("linear") == 2 and r.seconds > 0
    text = str(r)
    assert "target 'torch'" in text and "nodes" in text and "KiB" in text


def test_structured_call_and_outputs():
    torch.manual_seed(0)
    model = Structured().eval()
    x, bias = torch.randn(2, 3, 8), torch.randn(8)
    fast = slimgraph.optimize(model, (x,), example_kwargs={"bias": bias})
    ref = model(x, bias=bias)
    for out in (fast(x, bias=bias), fast(x, bias)):  # positional binding by the forward's parameter names
        assert set(out) == {"y", "parts", "stats"}
        assert type(out["parts"]) is Pair and isinstance(out["stats"], list)
        torch.testing.assert_close(out["parts"].hi, ref["parts"].hi)
        torch.testing.assert_close(out["stats"][1], ref["stats"][1])
    with pytest.raises(TypeError, match="missing \\['bias'\\]"):
        fast(x)


def test_graph_input_is_copied_not_mutated():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("n", 4)))
    a = g.op("relu", x)
    g.op("neg", x)  # dead: dce removes it from the compiled copy only
    g.set_outputs([g.op("add", a, a)])
    before = str(g)
    fast = slimgraph.optimize(g)
    assert str(g) == before
    assert "neg" not in fast.graph.op_counts()
    t = torch.randn(3, 4)
    torch.testing.assert_close(fast(t), 2 * t.relu())
    assert isinstance(fast.run(t), list)
    with pytest.raises(TypeError, match=r"input %x \(#1 of 1\) expects f32\[n,4\], got f64\[3,4\]: dtype must be f32"):
        fast(t.double())


def test_unknown_target_and_pass_are_clear_errors(mlp):
    with pytest.raises(ValueError, match="unknown target 'tourch'.*Valid targets: .*torch"):
        slimgraph.optimize(mlp, (torch.randn(1, 16),), target="tourch")
    with pytest.raises(Exception, match="unknown pass 'dcee'"):
        slimgraph.optimize(mlp, (torch.randn(1, 16),), pipeline="dcee")


def test_plain_module_needs_example_inputs(mlp):
    with pytest.raises(OptimizeError, match="optimize\\(MLP\\): pass example_inputs"):
        slimgraph.optimize(mlp)


def test_verify_numerics_and_explicit_pipeline(mlp):
    fast = slimgraph.optimize(mlp, (torch.randn(2, 16),), pipeline="dce", verify="numerics")
    assert fast.pipeline == "dce" and [p["name"] for p in fast.report.passes] == ["dce"]
    assert fast.report.passes[0]["max_abs_err"] == 0.0


def test_fallback_to_torch_only_when_allowed(mlp, monkeypatch):
    def broken(graph):
        raise NotImplementedError("no kernel for gelu")
    monkeypatch.setitem(targets.TARGETS, "broken", targets.Target("broken", broken, load=None))
    x = torch.randn(2, 16)
    with pytest.raises(OptimizeError, match="(?s)target .broken. could not compile.*no kernel for gelu.*allow_fallback"):
        slimgraph.optimize(mlp, (x,), target="broken")
    fast = slimgraph.optimize(mlp, (x,), target="broken", allow_fallback=True)
    assert fast.target == "torch" and "fell back to 'torch'" in str(fast.report)
    torch.testing.assert_close(fast(x), mlp(x))


# ---- transformers models -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    return model, slimgraph.optimize(model)


@pytest.fixture(scope="module")
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(cfg).eval()
    return model, slimgraph.optimize(model)


@pytest.mark.parametrize("batch,seq", [(1, 5), (3, 9)])
def test_bert_keeps_hf_outputs(tiny_bert, batch, seq):
    model, fast = tiny_bert
    ids = torch.randint(0, 64, (batch, seq), generator=torch.Generator().manual_seed(seq))
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # padding
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask)
    out = fast(input_ids=ids, attention_mask=mask)
    assert type(out) is type(ref)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, rtol=1e-5, atol=1e-5)


def test_llama_logits_and_generate(tiny_llama):
    model, fast = tiny_llama
    assert fast.kv is not None and fast.kv.num_layers == 2 and fast.kv.num_kv_heads == 2
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids)
    out = fast(ids)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    assert len(out.past_key_values) == 2 and out.past_key_values[0][0].shape == (2, 2, 7, 8)
    torch.testing.assert_close(fast(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, ref.logits,
                               rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        want = model.generate(ids[:1], max_new_tokens=6, do_sample=False)
    got = fast.generate(ids[:1], max_new_tokens=6, eos_token_id=model.generation_config.eos_token_id)
    assert torch.equal(got, want)


def test_llama_call_with_left_padding_matches_the_unpadded_row(tiny_llama):
    model, fast = tiny_llama
    ids = torch.randint(0, 96, (1, 4), generator=torch.Generator().manual_seed(3))
    padded = torch.cat((torch.zeros(1, 2, dtype=torch.long), ids), 1)
    out = fast(padded, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]]))
    torch.testing.assert_close(out.logits[:, 2:], model(ids).logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="pad on the left|unsupported"):
        fast(ids, cache_position=torch.arange(4))


@pytest.mark.slow
def test_real_minilm_matches(minilm):
    model, tok = minilm
    fast = slimgraph.optimize(model)
    enc = tok(["a compiled sentence embedding", "short"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc)
    out = fast(**enc)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target, pipeline, ops", [
    ("onnx", "canonicalize,linearize-attention{window=0}", "linear_attention"),
    ("c", "canonicalize,quantize-weights{bits=8},fuse-dequant-matmul,quantize-activations{bits=16}",
     "quantize_activation"),
])
def test_a_pass_whose_ops_the_target_does_not_run_is_refused_before_the_import(target, pipeline, ops, monkeypatch):
    """A pass whose ops the target cannot run (linearize-attention on `onnx`; sparsify- and linearize-attention on
    `cpu` before it lowered them) failed only after the import and every pass (a GPTQ calibration first), with a
    codegen error naming an op and no pass. Now optimize names the pass, its
    ops and the targets that run them before doing any work; allow_fallback=True still runs it on 'torch'."""
    import slimgraph.api as api
    if importlib.util.find_spec({"cpu": "tvm", "onnx": "onnxruntime", "c": "torch"}[target]) is None:
        pytest.skip(f"target {target} is not installed")

    def no_import(*a, **k):
        raise AssertionError("the model was imported before the pipeline was checked against the target")
    monkeypatch.setattr(api, "_import", no_import)
    bad = [p for p in ("sparsify-attention", "linearize-attention", "quantize-activations") if p in pipeline][0]
    with pytest.raises(OptimizeError, match=rf"pass {bad}.* makes ops? {ops}, which target '{target}' does not "
                                            rf"run .*use target=.*'torch'.*allow_fallback=True"):
        slimgraph.optimize(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), target=target, pipeline=pipeline)


def test_block_sparse_attention_is_not_refused_on_the_cpu_target():
    """kind=block_sparse only masks: no op the cpu target lacks (it runs there)."""
    from slimgraph.passes.pipeline import parse_pipeline
    assert parse_pipeline("sparsify-attention{kind=block_sparse}")[0].introduced_ops() == ()
    assert parse_pipeline("sparsify-attention{kind=sliding_window}")[0].introduced_ops() == ("cache_window",)


def test_calibration_ids_past_the_vocabulary_are_refused_before_any_pass(tiny_llama):
    """Token ids of another tokenizer (here past the 96-row embedding) name the model's vocabulary, not an
    IndexError from inside GPTQ."""
    model = tiny_llama[0]
    rows = model.get_input_embeddings().num_embeddings
    ids = torch.full((2, 16), rows + 3, dtype=torch.long)
    with pytest.raises(OptimizeError, match=rf"calibration= holds token id {rows + 3}, but the model's embedding "
                                            rf"has {rows} rows.*model's own tokenizer"):
        slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="torch",
                           pipeline="canonicalize,quantize-weights{bits=4,group=32,method=gptq}", calibration=ids)
