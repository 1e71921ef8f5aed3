"""Every way transformers spells attention becomes one `attention` op after `canonicalize`: Llama, Qwen2,
Mistral, Gemma 3, GPT-2 (decoders with a KV cache) and BERT (an encoder), each with `sdpa` and `eager`
attention; and the compiled model still computes what transformers computes (the eager spelling adds
the mask to the scores, so it must be the additive form, not the bool one the decoder passes)."""
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
import slimgraph  # noqa: E402

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256)


def build(arch, impl):
    t = transformers
    cfg, cls = {
        "llama": (lambda: t.LlamaConfig(num_key_value_heads=2, **COMMON), t.LlamaForCausalLM),
        "qwen2": (lambda: t.Qwen2Config(num_key_value_heads=2, **COMMON), t.Qwen2ForCausalLM),
        "mistral": (lambda: t.MistralConfig(num_key_value_heads=2, sliding_window=64, **COMMON), t.MistralForCausalLM),
        "gemma3": (lambda: t.Gemma3TextConfig(num_key_value_heads=2, head_dim=16, sliding_window=64, **COMMON),
                   t.Gemma3ForCausalLM),
        "gpt2": (lambda: t.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256, bos_token_id=0,
                                      eos_token_id=0), t.GPT2LMHeadModel),
        "falcon": (lambda: t.FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=256),
                   t.FalconForCausalLM),   # multi-query: k/v broadcast over the heads in the eager matmul
        "bert": (lambda: t.BertConfig(**COMMON), t.BertModel),
    }[arch]
    config = cfg()
    config._attn_implementation = impl
    torch.manual_seed(0)
    return cls(config).eval()


CASES = [(a, i) for a in ("llama", "qwen2", "mistral", "gemma3", "gpt2", "falcon", "bert") for i in ("sdpa", "eager")]


@pytest.mark.parametrize("arch,impl", [pytest.param(a, i, marks=pytest.mark.slow) if a == "gemma3" else (a, i)
                                       for a, i in CASES])
def test_every_attention_spelling_becomes_one_attention_op_and_matches_transformers(arch, impl):
    model = build(arch, impl)
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    example = {"example_kwargs": {"input_ids": ids, "attention_mask": mask}} if arch == "bert" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = slimgraph.optimize(model, () if example else (ids,), target="torch", **example)
    ops = fast.graph.op_counts()
    assert ops.get("attention") == 2 and "softmax" not in ops, ops
    with torch.no_grad():
        if arch == "bert":
            want = model(input_ids=ids, attention_mask=mask).last_hidden_state
            got = fast(input_ids=ids, attention_mask=mask)["last_hidden_state"]
            torch.testing.assert_close(got[:, :5], want[:, :5], rtol=1e-4, atol=1e-4)
            return
        want = model(ids).logits
        dec = fast.decoder()
        got = dec.prefill(ids)["logits"]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        nxt = torch.tensor([[5]])
        want_step = model(torch.cat((ids, nxt), 1)).logits[:, -1:]
        torch.testing.assert_close(dec.step(nxt)["logits"], want_step, rtol=1e-4, atol=1e-4)


def windowed(arch, impl):
    t = transformers
    cfg, cls = {
        "mistral": (lambda: t.MistralConfig(num_key_value_heads=2, sliding_window=8, **COMMON), t.MistralForCausalLM),
        "gemma3": (lambda: t.Gemma3TextConfig(num_key_value_heads=2, head_dim=16, sliding_window=8,
                                               layer_types=["sliding_attention", "full_attention"], **COMMON),
                   t.Gemma3ForCausalLM),
        "qwen2": (lambda: t.Qwen2Config(num_key_value_heads=2, sliding_window=8, use_sliding_window=True,
                                        max_window_layers=1, **COMMON), t.Qwen2ForCausalLM),
    }[arch]
    config = cfg()
    config._attn_implementation = impl
    torch.manual_seed(0)
    return cls(config).eval()


@pytest.mark.parametrize("arch,impl", [("mistral", "sdpa"), ("mistral", "eager"), ("qwen2", "sdpa"),
                                       pytest.param("gemma3", "sdpa", marks=pytest.mark.slow),
                                       pytest.param("gemma3", "eager", marks=pytest.mark.slow)])
def test_sliding_window_models_decode_like_transformers_past_their_window(arch, impl):
    """A window of 8 and 30 generated tokens: the windowed layers must drop old keys exactly as HF does
    (their cache grows here; the window is in the mask, then in `attention{window=7}`)."""
    model = windowed(arch, impl)
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = slimgraph.optimize(model, (ids,), target="torch")
    # the band (bool for sdpa, additive for eager) is recognized as the op's window on the sliding layers only
    windows = sorted(n.attrs["window"] for n in fast.graph.nodes if n.op == "attention")
    assert windows == ([7, 7] if arch == "mistral" else [0, 7]), windows
    got = fast.generate(ids, max_new_tokens=30, eos_token_id=None)
    want = model.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert got.tolist() == want.tolist()
    long = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(fast.decoder(batch=2).prefill(long)["logits"], model(long).logits,
                                   rtol=1e-4, atol=1e-4)


def test_an_alibi_model_is_a_clear_error_naming_the_convention():
    from slimgraph.frontends.torch_export import ConversionError
    config = transformers.FalconConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=256,
                                       alibi=True)
    with pytest.raises(ConversionError, match="(?s)FalconForCausalLM: exporting it as a causal LM failed.*ALiBi"):
        slimgraph.optimize(transformers.FalconForCausalLM(config).eval(), (torch.zeros(1, 4, dtype=torch.long),))
