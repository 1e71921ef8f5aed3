"""frontends.hf: causal LMs exported over flat KV caches; prefill + decode steps through the
interpreter match Hugging Face's own cached forward (fp32, max abs error <= 1e-5)."""
import inspect
import json
import time

import pytest
import torch

from slimgraph import ir

transformers = pytest.importorskip("transformers")
from slimgraph.frontends.hf import KVLayout, export_causal_lm  # noqa: E402

TOL = 1e-5


def tiny(name):
    tf = transformers
    torch.manual_seed(0)
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
    if name == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4,
                                                bos_token_id=0, eos_token_id=0)).eval()
    cfg, cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
                "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
                "mistral": (tf.MistralConfig, tf.MistralForCausalLM)}[name]
    return cls(cfg(**common)).eval()


def check_graph(g):
    ir.verify(g)
    text = str(g)
    assert str(ir.parse_graph(text, {k: w.tensor for k, w in g.weights.items()})) == text


def decode_matches_hf(model, imp, kv, ids, steps=3):
    """Prefill on `ids` from empty state, then `steps` greedy decode steps, through the interpreter
    driven by the decoder runtime (which feeds the declared states back)."""
    from slimgraph.compiled import CompiledModel
    from slimgraph.targets.base import get_target
    errs = []
    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    dec = CompiledModel(imp.graph, "reference", "", get_target("reference").compile(imp.graph)).decoder()
    with torch.no_grad():
        ref = model(ids, use_cache=True)
        out = dec.prefill(ids)
        errs.append((out["logits"] - ref.logits).abs().max().item())
        hf_cache, nxt = getattr(ref, arg), ref.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            ref = model(nxt, use_cache=True, **{arg: hf_cache})
            out = dec.step(nxt)
            errs.append((out["logits"] - ref.logits).abs().max().item())
            hf_cache, nxt = getattr(ref, arg), ref.logits[:, -1:].argmax(-1)
    assert dec.states[0].shape[2] == ids.shape[1] + steps == dec.length  # the cache grew by one per step
    return errs


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "gpt2"])
def test_prefill_and_decode_match_hf(name):
    model = tiny(name)
    imp, kv = export_causal_lm(model)
    g = imp.graph
    check_graph(g)
    n = kv.num_layers
    caches = [f"past_{k}_{i}" for i in range(n) for k in ("key", "value")]
    assert imp.input_names == ["input_ids", "position_ids", "attention_mask"] + caches
    assert imp.output_names == ["logits"] + [f"present_{k}_{i}" for i in range(n) for k in ("key", "value")]
    assert [str(v.type) for v in g.inputs[:3]] == ["i64[batch,seq]", "i64[batch,seq]", "bool[batch,1,seq,past+seq]"]
    assert str(g.inputs[3].type) == f"f32[batch,{kv.num_kv_heads},past,{kv.head_dim}]"
    assert str(g.outputs[1].type) == f"f32[batch,{kv.num_kv_heads},past+seq,{kv.head_dim}]"
    # the cache is declared state, appended by cache_append (no concat left for a codegen to recognise)
    assert [(s.input.name, s.output.name, s.kind) for s in g.states] == \
        [(c, c.replace("past_", "present_"), "append") for c in caches]
    assert g.op_counts()["cache_append"] == 2 * n
    assert g.op_counts()["attention"] == n
    torch.manual_seed(1)
    errs = decode_matches_hf(model, imp, kv, torch.randint(0, 128, (3, 6)))  # batch 3 != export's 2
    assert max(errs) <= TOL, errs


def test_static_batch():
    model = tiny("llama")
    imp, kv = export_causal_lm(model, dynamic_batch=False)
    assert str(imp.graph.inputs[0].type) == "i64[1,seq]"
    assert max(decode_matches_hf(model, imp, kv, torch.randint(0, 128, (1, 4)), steps=1)) <= TOL


def test_kv_layout_round_trips_through_json():
    kv = KVLayout(num_layers=30, num_kv_heads=3, head_dim=64, dtype="f32")
    assert KVLayout.from_dict(json.loads(json.dumps(kv.to_dict()))) == kv
    with pytest.raises(ValueError, match="unknown field"):
        KVLayout.from_dict({**kv.to_dict(), "heads": 3})
    caches = kv.empty_cache(batch=2)
    assert len(caches) == 60 and caches[0].shape == (2, 3, 0, 64)


@pytest.mark.slow
@pytest.mark.real_model
def test_real_smollm2_kv_graph(smollm2):
    model, tok = smollm2
    t0 = time.perf_counter()
    imp, kv = export_causal_lm(model)
    export_s = time.perf_counter() - t0
    g = imp.graph
    check_graph(g)
    assert kv == KVLayout(num_layers=30, num_kv_heads=3, head_dim=64, dtype="f32", eos_token_ids=(2,))
    ops = g.op_counts()
    # lean: one attention and 7 projections per layer, the lm_head, a single cast (positions -> f32)
    assert ops["attention"] == 30 and ops["linear"] == 30 * 7 + 1 and ops.get("cast", 0) <= 1
    # tied embedding/lm_head: one weight, shared with the model (no copy)
    emb = model.model.embed_tokens.weight
    tied = [w for w in g.weights.values() if w.tensor.data_ptr() == emb.data_ptr()]
    assert len(tied) == 1 and len(tied[0].uses) == 2
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    errs = decode_matches_hf(model, imp, kv, ids)
    print(f"\nSmolLM2 KV graph: export+import {export_s:.1f} s, {len(g.nodes)} nodes, {ops}, errors {errs}")
    assert max(errs) <= TOL, errs
