"""float_twin: a graph with its packed weights dequantized once and every float value in one dtype computes the
same function (reference interpreter: exactly, in f32), keeps the state contract, and drops what its outputs
do not need."""
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from strategies import graphs  # noqa: E402
from tiny_lm import tiny_llama  # noqa: E402

import slimgraph  # noqa: E402
from slimgraph.ir import run  # noqa: E402
from slimgraph.ir.twin import float_twin  # noqa: E402

INT4 = ("canonicalize,quantize-weights{bits=4,group=32},quantize-weights{bits=8,group=0,include=[lm_head.weight]},"
        "fuse-dequant-matmul,merge-sibling-linears,cse,dce")


@pytest.fixture(scope="module")
def int4():
    return slimgraph.optimize(tiny_llama(tie_word_embeddings=True), (torch.zeros(1, 4, dtype=torch.long),),
                              target="reference", pipeline=INT4 + ",insert-draft-heads{num_heads=2}")


def prefill(compiled, graph, ids):
    """The outputs by name of `graph` (compiled's graph or a twin of it) over `ids` with an empty cache, run by
    the reference interpreter through the decoder (positions, mask and cache as decoding makes them)."""
    from slimgraph.compiled import CompiledModel
    from slimgraph.targets.base import get_target
    m = CompiledModel(graph, "reference", "", get_target("reference").compile(graph), signature=compiled.signature,
                      kv=compiled.kv)
    return m.decoder(len(ids)).prefill(ids)


def test_the_f32_twin_of_an_int4_graph_is_the_same_function_without_packed_weights(int4):
    g = int4.graph
    assert {"qlinear", "qembedding"} <= set(g.op_counts())
    twin = float_twin(g, "f32")
    assert not {"qlinear", "qembedding", "dequantize"} & set(twin.op_counts())
    assert all(w.type.dtype not in ("u8", "i8") for w in twin.weights.values())
    # each packed weight becomes one float weight, however many nodes read it (the tied table: qembedding and
    # the lm_head's qlinear)
    packed = {n.inputs[1].name for n in g.nodes if n.op in ("qlinear", "qembedding")}
    assert len(packed) < g.op_counts()["qlinear"] + g.op_counts()["qembedding"]
    assert sorted(n for n in twin.weights if n.endswith(".twin")) == sorted(p + ".twin" for p in packed)
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    assert [v.name for v in twin.outputs] == [v.name for v in g.outputs]
    a, b = prefill(int4, g, ids), prefill(int4, twin, ids)
    assert set(a) == set(b) and "draft_logits_1" in a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)


def test_a_bf16_twin_keeps_only_the_outputs_asked_for_and_the_state(int4):
    g = int4.graph
    twin = float_twin(g, "bf16", outputs=["logits", "hidden_states"])
    states = {s.output.name for s in g.states}
    assert {v.name for v in twin.outputs} == {"logits", "hidden_states"} | states
    assert not any(n.startswith("draft_heads.") for n in twin.weights)          # the heads' nodes are gone
    assert len(twin.states) == len(g.states) and all(s.input.type.dtype == "bf16" for s in twin.states)
    assert {v.type.dtype for v in twin.values()} & {"f32", "f16", "f64"} == set()
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    ref, got = prefill(int4, g, ids), prefill(int4, twin, ids)
    assert got["logits"].dtype == torch.bfloat16
    err = (got["logits"].float() - ref["logits"]).abs().max() / ref["logits"].abs().max()
    assert err < 0.05, err                                                       # bf16 rounding, not a bug
    assert bool((got["logits"].float().argmax(-1) == ref["logits"].argmax(-1)).float().mean() > 0.9)


def test_the_twin_of_a_w4a8_graph_drops_the_activation_quantizer():
    c = slimgraph.optimize(tiny_llama(), (torch.zeros(1, 4, dtype=torch.long),), target="reference",
                           pipeline=INT4 + ",quantize-activations")
    assert "quantize_activation" in c.graph.op_counts()
    twin = float_twin(c.graph, "f32")
    assert "quantize_activation" not in twin.op_counts()
    ids = torch.randint(0, 96, (1, 6), generator=torch.Generator().manual_seed(2))
    a, b = prefill(c, c.graph, ids)["logits"], prefill(c, twin, ids)["logits"]
    assert float((a - b).abs().max() / a.abs().max()) < 0.1      # int8 activations vs float ones


@settings(max_examples=40, deadline=None)
@given(graphs(max_ops=8))
def test_the_f32_twin_of_a_random_f32_graph_computes_it_exactly(case):
    g, inputs = case
    assume(all(v.type.dtype not in ("f16", "bf16", "f64") for v in g.values()))
    twin = float_twin(g, "f32")
    for x, y in zip(run(g, *inputs), run(twin, *inputs)):
        torch.testing.assert_close(y, x, rtol=0, atol=0, equal_nan=True)


def test_clear_errors(int4):
    with pytest.raises(ValueError, match="not a float dtype"):
        float_twin(int4.graph, "i8")
    with pytest.raises(ValueError, match="no output draft_logits_9.*its outputs are"):
        float_twin(int4.graph, "bf16", outputs=["logits", "draft_logits_9"])
