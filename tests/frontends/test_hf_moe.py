"""Mixture-of-experts causal LMs (transformers >= 5 routes the experts through `grouped_mm_experts_forward`:
sort by expert, torch.histc for the tokens per expert, transformers' grouped_mm custom op / torch._grouped_mm,
index_put). They import (`histc` -> a one-hot count, the grouped matmul -> the `grouped_mm` IR op), match eager
on the reference, torch and onnx targets, and decode greedily token for token as transformers does. Before:
"unsupported ATen op aten.histc.default" for every one of them."""
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
import slimgraph  # noqa: E402

V = 96
DEC = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64)
MOE = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(DEC, num_local_experts=4, num_experts_per_tok=2)),
    "qwen3-moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(DEC, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(DEC, num_experts=4, num_experts_per_tok=2)),
}
TARGETS = ["reference", "torch", pytest.param("onnx", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("onnxruntime") is None, reason="needs onnxruntime"))]


def _build(name):
    cfg, cls, kw = MOE[name]
    torch.manual_seed(0)
    return getattr(transformers, cls)(getattr(transformers, cfg)(**kw)).eval()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list(MOE))
def test_moe_matches_eager_and_decodes_greedily(name, target):
    model = _build(name)
    ids = torch.randint(2, V, (2, 7), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = slimgraph.optimize(model, (ids,), target=target)
    assert fast.graph.op_counts().get("grouped_mm", 0) == 2 * DEC["num_hidden_layers"]
    for call in (ids, torch.randint(2, V, (3, 9), generator=torch.Generator().manual_seed(5))):
        with torch.no_grad():
            want = model(call).logits
        assert (fast(call)["logits"] - want).abs().max().item() < 1e-4
    if target == "torch":
        with torch.no_grad():
            ref = model.generate(ids[:1], max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(fast.generate(ids[:1], max_new_tokens=8), ref)


def test_histc_and_grouped_mm_semantics():
    """histc's bins (values on the edges and outside the range) and a grouped matmul with an empty group and
    rows past the last offset."""
    class Histc(torch.nn.Module):
        def forward(self, x):
            return torch.histc(x, bins=4, min=0, max=3)

    x = torch.tensor([0.0, 3.0, 2.99, 1.0, -1.0, 4.0, 1.5, 3.0, 0.75])
    for target in ("reference", "torch"):
        fast = slimgraph.optimize(Histc(), (x,), target=target)
        assert torch.equal(fast(x), torch.histc(x, bins=4, min=0, max=3))
    from slimgraph.ir.opset.nn import grouped_mm
    xs, w = torch.randn(6, 3), torch.randn(3, 3, 2)
    out = grouped_mm(xs, w, torch.tensor([2, 2, 5]))
    assert torch.allclose(out[:2], xs[:2] @ w[0]) and torch.allclose(out[2:5], xs[2:5] @ w[2])
    assert not out[5:].any()


def test_deepseek_v3_cache_of_two_shapes_is_refused_by_name():
    """DeepSeek V3 (MoE + multi-head latent attention) caches keys and values of different head dims: optimize
    refuses it naming both shapes (before: a concatenation error from inside the export, under a hint about
    ALiBi masks)."""
    cfg = transformers.DeepseekV3Config(**dict(DEC, num_key_value_heads=4), moe_intermediate_size=32, n_routed_experts=4,
                                        num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
                                        kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                        v_head_dim=16, n_group=1, topk_group=1)
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(cfg).eval()
    with pytest.raises(NotImplementedError, match="multi-head latent attention"):
        slimgraph.optimize(model, (torch.randint(2, V, (1, 5)),), target="torch")
