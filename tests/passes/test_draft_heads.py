"""insert-draft-heads: K Medusa heads as extra named outputs; base outputs untouched; composes with quantize-weights."""
import pytest
import torch

import slimgraph
from slimgraph.ir.verifier import verify as verify_graph
from slimgraph.passes.base import PassError
from slimgraph.passes.manager import run_pipeline

transformers = pytest.importorskip("transformers")
from tiny_lm import tiny_llama  # noqa: E402




@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def compile_(model, pipeline, target="reference"):
    return slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target=target, pipeline=pipeline)


PROMPT = torch.tensor([[5, 17, 3, 60, 2, 9]])


@pytest.mark.parametrize("target", ["reference", "torch"])
def test_heads_are_extra_outputs_and_base_logits_are_identical(model, target):
    base = compile_(model, "canonicalize", target)
    drafted = compile_(model, "canonicalize,insert-draft-heads{num_heads=3}", target)
    verify_graph(drafted.graph)
    names = [v.name for v in drafted.graph.outputs]
    assert names[:len(base.graph.outputs)] == [v.name for v in base.graph.outputs]
    assert names[len(base.graph.outputs):] == ["draft_logits_0", "draft_logits_1", "draft_logits_2", "hidden_states"]
    assert sorted(w for w in drafted.graph.weights if w.startswith("draft_heads.")) == \
        [f"draft_heads.{i}.weight" for i in range(3)]
    want, got = base.decoder().prefill(PROMPT), drafted.decoder().prefill(PROMPT)
    assert torch.equal(want["logits"], got["logits"])
    for i in range(3):
        assert got[f"draft_logits_{i}"].shape == (1, 6, 96)
        # zero-initialised heads predict what the base predicts (Medusa's initialisation)
        torch.testing.assert_close(got[f"draft_logits_{i}"], got["logits"], rtol=1e-5, atol=1e-5)
    assert got["hidden_states"].shape == (1, 6, 64)


def test_trained_like_heads_differ_and_match_a_hand_computation(model):
    drafted = compile_(model, "insert-draft-heads{num_heads=2}")
    g = drafted.graph
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(3)) * 0.1
    g.weights["draft_heads.1.weight"].tensor = w
    out = drafted.decoder().prefill(PROMPT)
    h = out["hidden_states"]
    want = torch.nn.functional.linear(h + torch.nn.functional.silu(h @ w.T), g.weights["lm_head.weight"].tensor)
    torch.testing.assert_close(out["draft_logits_1"], want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out["draft_logits_1"], out["logits"], atol=1e-3)


@pytest.mark.parametrize("order", ["before", "after"])
def test_composes_with_int4_quantization_and_heads_stay_float(model, order):
    q = "quantize-weights{bits=4,group=32}"
    ins = "insert-draft-heads{num_heads=2}"
    pipe = f"{q},{ins}" if order == "after" else f"{ins},{q}"
    base = compile_(model, q, "torch")
    drafted = compile_(model, pipe, "torch")
    verify_graph(drafted.graph)
    assert all(drafted.graph.weights[f"draft_heads.{i}.weight"].type.dtype == "f32" for i in range(2))
    assert any(n.op == "qlinear" or n.op == "dequantize" for n in drafted.graph.nodes)
    want, got = base.decoder().prefill(PROMPT), drafted.decoder().prefill(PROMPT)
    torch.testing.assert_close(got["logits"], want["logits"], rtol=0, atol=0)
    torch.testing.assert_close(got["draft_logits_1"], got["logits"], rtol=1e-5, atol=1e-5)


def test_int8_lm_head_is_shared_by_the_heads(model):
    drafted = compile_(model, "quantize-weights{bits=8,group=0,include=[lm_head.weight]},fuse-dequant-matmul,"
                              "insert-draft-heads{num_heads=2}", "torch")
    heads = [n for n in drafted.graph.nodes if n.op == "qlinear" and n.inputs[1].name.startswith("lm_head")]
    assert len(heads) == 2      # the base's lm_head and ONE stacked call for both heads
    out = drafted.decoder().prefill(PROMPT)
    torch.testing.assert_close(out["draft_logits_0"], out["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec, msg", [
    ("insert-draft-heads{num_heads=0}", "num_heads=0 is out of range; use 1..8"),
    ("insert-draft-heads{num_heads=9}", "num_heads=9 is out of range; use 1..8"),
    ("insert-draft-heads{kind=eagle9}", "unknown head kind 'eagle9'; valid kinds: eagle, medusa"),
    ("insert-draft-heads,insert-draft-heads", "already has draft heads"),
])
def test_bad_options_are_clear_errors(model, spec, msg):
    g = compile_(model, "").graph
    with pytest.raises(PassError, match=msg):
        run_pipeline(g, spec)


def test_a_graph_without_logits_is_refused():
    g = slimgraph.optimize(torch.nn.Linear(4, 4), (torch.zeros(2, 4),), target="reference", pipeline="").graph
    with pytest.raises(PassError, match="has no output named 'logits'"):
        run_pipeline(g, "insert-draft-heads{num_heads=2}")


@pytest.mark.parametrize("kind", ["medusa", "eagle"])
def test_a_masked_lm_is_refused_it_has_logits_but_no_kv_cache(kind):
    """BERT's masked-LM head gives `logits` too, but nothing decodes it token by token: refused by the pass,
    not later by training or generate()."""
    import transformers
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    bert = transformers.BertForMaskedLM(cfg).eval()
    g = slimgraph.optimize(bert, (torch.zeros(1, 6, dtype=torch.long),), target="reference", pipeline="").graph
    with pytest.raises(PassError, match="is not a causal LM with a KV cache.*masked LM or an encoder"):
        run_pipeline(g, f"canonicalize,insert-draft-heads{{num_heads=2,kind={kind}}}")


def test_training_refuses_a_quantized_head_instead_of_shifting_the_others(model):
    """include=[draft_heads.0.weight] packs head 0; train_draft_heads listed the float heads only, so it trained
    draft_heads.1 as head 0 (the token 2 ahead instead of 3) and left head 0 at zero, silently."""
    from slimgraph.draft import DraftTrainingError
    fast = compile_(model, "insert-draft-heads{num_heads=2},quantize-weights{bits=4,group=32,"
                           "include=[draft_heads.0.weight]},fuse-dequant-matmul", "torch")
    assert "draft_heads.0.weight.qweight" in fast.graph.weights
    with pytest.raises(DraftTrainingError, match=r"draft head 0 .*@draft_heads\.0\.weight.* not a float weight .*"
                                                 r"quantized.*include"):
        slimgraph.train_draft_heads(fast, prompts=torch.randint(0, 96, (4, 6)), new_tokens=8, steps=2,
                                    progress=False)
