"""Cleanup passes on graphs produced by the torch.export frontend from a (tiny, random) HF Llama:
the RMSNorm chains that export emits must become `rms_norm`, numerics must hold."""
import pytest
import torch

from slimgraph.passes import PassManager

pytestmark = pytest.mark.slow  # torch.export of the model takes ~10 s per dtype on 2 shared cores


@pytest.fixture(scope="module")
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_canonicalize_recognizes_exported_llama_rms_norm(tiny_llama, dtype, atol):
    from slimgraph.frontends.hf import export_causal_lm
    imp, _ = export_causal_lm(tiny_llama.to(dtype))
    g = imp.graph
    before = g.op_counts()
    assert before["rsqrt"] == 5 and "rms_norm" not in before  # export spells RMSNorm out
    gen = torch.Generator().manual_seed(0)
    past, seq = 3, 4   # the causal-LM convention (ir/causal_lm.py): ids, positions, 4-D bool mask, caches
    keep = torch.ones(seq, past + seq, dtype=torch.bool).tril(past)
    inputs = [torch.randint(0, 64, (2, seq), generator=gen), torch.arange(past, past + seq).expand(2, seq),
              keep.expand(2, 1, seq, past + seq)]
    inputs += [torch.randn(2, 2, past, 8, generator=gen).to(dtype) for _ in range(4)]
    assert [v.name for v in g.inputs][:3] == ["input_ids", "position_ids", "attention_mask"]
    rep = PassManager("canonicalize,cse,fold-constants,dce", verify="numerics", example_inputs=inputs,
                      atol=atol, rtol=atol).run(g)
    after = g.op_counts()
    assert after["rms_norm"] == 5 and not {"rsqrt", "pow", "mean"} & set(after)
    assert rep[0].stats["rms-weight"] == 5
    # the causal mask is a graph input now (ir/causal_lm.py), so only GQA's repeat_kv is left to fold away
    assert rep[0].stats["attention-gqa"] == 2 and "attention-causal-mask" not in rep[0].stats
    assert before["expand"] == 4 and "expand" not in after and "le" not in after
    assert sum(after.values()) < sum(before.values()) - 30
