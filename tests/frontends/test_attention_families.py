"""The attention family, not only its named members (test_attention_spellings.py has Llama, Qwen2, Mistral,
Gemma 3, GPT-2, Falcon and BERT): transformers causal LMs and encoders of every kind of attention, each with
`sdpa` and `eager` attention where transformers has both. After `slimgraph.optimize(..., target="torch")`
every layer's attention is one `attention` op (no `softmax` left) and prefill and a decode step compute what
transformers computes. The kinds these members add:

  * logit soft-capping (Gemma 2: softmax(c * tanh(q k^T * s / c) + mask)): `attention{softcap=c}`, on
    every target that lowers `attention` (the C target refuses it by name);
  * ALiBi spelled as a bias added to the scores and a masked_fill of the dtype's minimum (MPT): one additive
    mask where(masked, min, bias);
  * scores computed over [batch * heads, ...] by baddbmm and reshaped back (GPT-2's reorder_and_upcast_attn,
    GPT-NeoX-Japanese, whose keys are flattened before their transpose);
  * multi-query (GPTBigCode, Falcon), partial rotary (Phi, GPT-NeoX, GPT-J, CodeGen), q/k norms (Qwen3,
    OLMo2, Cohere), scaled attention (Granite's attention_multiplier), parallel blocks, learned positions.

`sparsify-attention{kind=sliding_window,window=4,sinks=2}` then applies to the decoders of several kinds and
matches the model itself run with that band written out by position."""
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
import slimgraph  # noqa: E402
from slimgraph import ir  # noqa: E402

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256)
GQA = dict(COMMON, num_key_value_heads=2, pad_token_id=0, bos_token_id=0, eos_token_id=0)
GPT = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=64, bos_token_id=0, eos_token_id=0)
SDPA_EAGER, EAGER = ("sdpa", "eager"), ("eager",)   # transformers refuses sdpa for the second kind

# name -> (config class, config kwargs, model class, attention implementations transformers has)
DECODERS = {
    "gemma2": ("Gemma2Config", dict(GQA, head_dim=16, sliding_window=64), "Gemma2ForCausalLM", EAGER),
    "mpt": ("MptConfig", dict(d_model=64, n_heads=4, n_layers=2, vocab_size=256, expansion_ratio=2), "MptForCausalLM",
            EAGER),
    "gpt-bigcode": ("GPTBigCodeConfig", dict(GPT, multi_query=True), "GPTBigCodeForCausalLM", SDPA_EAGER),
    "opt": ("OPTConfig", dict(COMMON, ffn_dim=128, word_embed_proj_dim=64), "OPTForCausalLM", SDPA_EAGER),
    "qwen3": ("Qwen3Config", dict(GQA, head_dim=16), "Qwen3ForCausalLM", SDPA_EAGER),
    "phi": ("PhiConfig", dict(COMMON, partial_rotary_factor=0.5), "PhiForCausalLM", SDPA_EAGER),
    "phi3": ("Phi3Config", GQA, "Phi3ForCausalLM", SDPA_EAGER),
    "gemma": ("GemmaConfig", dict(GQA, head_dim=16), "GemmaForCausalLM", SDPA_EAGER),
    "gpt-neox": ("GPTNeoXConfig", dict(COMMON, rotary_pct=0.5), "GPTNeoXForCausalLM", SDPA_EAGER),
    "gptj": ("GPTJConfig", dict(GPT, rotary_dim=8), "GPTJForCausalLM", SDPA_EAGER),
    "stablelm": ("StableLmConfig", GQA, "StableLmForCausalLM", SDPA_EAGER),
    "starcoder2": ("Starcoder2Config", dict(GQA, sliding_window=None), "Starcoder2ForCausalLM", SDPA_EAGER),
    "olmo": ("OlmoConfig", GQA, "OlmoForCausalLM", SDPA_EAGER),
    "olmo2": ("Olmo2Config", GQA, "Olmo2ForCausalLM", SDPA_EAGER),
    "cohere": ("CohereConfig", GQA, "CohereForCausalLM", SDPA_EAGER),
    "granite": ("GraniteConfig", dict(GQA, attention_multiplier=0.3), "GraniteForCausalLM", SDPA_EAGER),
    "codegen": ("CodeGenConfig", dict(GPT, n_ctx=64, rotary_dim=8), "CodeGenForCausalLM", SDPA_EAGER),
    "falcon-new": ("FalconConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=256,
                                        new_decoder_architecture=True, num_kv_heads=2), "FalconForCausalLM",
                   SDPA_EAGER),
    "smollm3": ("SmolLM3Config", GQA, "SmolLM3ForCausalLM", SDPA_EAGER),
    "biogpt": ("BioGptConfig", COMMON, "BioGptForCausalLM", SDPA_EAGER),
    "persimmon": ("PersimmonConfig", COMMON, "PersimmonForCausalLM", SDPA_EAGER),
    "nemotron": ("NemotronConfig", GQA, "NemotronForCausalLM", SDPA_EAGER),
    "glm4": ("Glm4Config", dict(GQA, head_dim=16), "Glm4ForCausalLM", SDPA_EAGER),
    "exaone4": ("Exaone4Config", dict(GQA, sliding_window=64), "Exaone4ForCausalLM", SDPA_EAGER),
    "cohere2": ("Cohere2Config", dict(GQA, sliding_window=64), "Cohere2ForCausalLM", SDPA_EAGER),
    "olmo3": ("Olmo3Config", dict(GQA, sliding_window=64), "Olmo3ForCausalLM", SDPA_EAGER),
    "ministral": ("MinistralConfig", dict(GQA, head_dim=16, sliding_window=64), "MinistralForCausalLM", SDPA_EAGER),
    "vaultgemma": ("VaultGemmaConfig", dict(GQA, head_dim=16), "VaultGemmaForCausalLM", EAGER),   # Gemma 2's cap
    "diffllama": ("DiffLlamaConfig", GQA, "DiffLlamaForCausalLM", SDPA_EAGER),   # two softmax maps per layer
    # scores over [batch * heads, ...] (baddbmm) reshaped back to [batch, heads, ...]
    "gpt2-reorder": ("GPT2Config", dict(GPT, reorder_and_upcast_attn=True), "GPT2LMHeadModel", SDPA_EAGER),
    "gpt-neox-japanese": ("GPTNeoXJapaneseConfig", dict(COMMON, intermediate_multiple_size=2),
                          "GPTNeoXJapaneseForCausalLM", EAGER),
    "gpt2-layer-scaled": ("GPT2Config", dict(GPT, scale_attn_by_inverse_layer_idx=True), "GPT2LMHeadModel",
                          SDPA_EAGER),
    "jais2": ("Jais2Config", GQA, "Jais2ForCausalLM", SDPA_EAGER),
    "bitnet": ("BitNetConfig", GQA, "BitNetForCausalLM", SDPA_EAGER),
    "helium": ("HeliumConfig", dict(GQA, head_dim=16), "HeliumForCausalLM", SDPA_EAGER),
    "nanochat": ("NanoChatConfig", GQA, "NanoChatForCausalLM", SDPA_EAGER),
}
ATTENTION_PER_LAYER = {"diffllama": 2}
ENCODERS = {
    "roberta": ("RobertaConfig", dict(COMMON, pad_token_id=1), "RobertaModel", SDPA_EAGER),
    "distilbert": ("DistilBertConfig", dict(vocab_size=256, dim=64, hidden_dim=128, n_layers=2, n_heads=4),
                   "DistilBertModel", SDPA_EAGER),
    "electra": ("ElectraConfig", dict(COMMON, embedding_size=32), "ElectraModel", SDPA_EAGER),
}
# the default run: the kinds this module adds and two encoders; the rest are slow (a ~50 s fast set, cold caches)
FAST = {("gemma2", "eager"), ("mpt", "eager"), ("gpt2-reorder", "eager"), ("distilbert", "eager"), ("roberta", "sdpa")}


def build(arch, impl, **overrides):
    cfg_cls, kw, model_cls, _ = {**DECODERS, **ENCODERS}[arch]
    config = getattr(transformers, cfg_cls)(**{**kw, **overrides})
    config._attn_implementation = impl
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(config).eval()


IDS = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(1))
MASK = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])


def optimize(model, encoder=False, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if encoder:
            return slimgraph.optimize(model, example_kwargs={"input_ids": IDS, "attention_mask": MASK},
                                      target="torch", **kw)
        return slimgraph.optimize(model, (IDS,), target="torch", **kw)


def cases(table):
    return [pytest.param(a, i, marks=() if (a, i) in FAST else pytest.mark.slow)
            for a, spec in table.items() for i in spec[3]]


@pytest.mark.parametrize("arch,impl", cases(DECODERS) + cases(ENCODERS))
def test_every_family_member_has_one_attention_op_per_layer_and_matches_transformers(arch, impl):
    encoder = arch in ENCODERS
    model = build(arch, impl)
    fast = optimize(model, encoder)
    ops = fast.graph.op_counts()
    assert ops.get("attention") == 2 * ATTENTION_PER_LAYER.get(arch, 1) and "softmax" not in ops, ops
    with torch.no_grad():
        if encoder:
            want = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
            got = fast(input_ids=IDS, attention_mask=MASK)["last_hidden_state"]
            torch.testing.assert_close(got[:, :5], want[:, :5], rtol=1e-4, atol=1e-4)
            return
        dec = fast.decoder()
        torch.testing.assert_close(dec.prefill(IDS)["logits"], model(IDS).logits, rtol=1e-4, atol=1e-4)
        nxt = torch.tensor([[5]])
        want_step = model(torch.cat((IDS, nxt), 1)).logits[:, -1:]
        torch.testing.assert_close(dec.step(nxt)["logits"], want_step, rtol=1e-4, atol=1e-4)


def test_gemma2_soft_capping_is_the_ops_softcap_and_the_cap_matters():
    """Gemma 2's attn_logit_softcapping (50 by default) becomes `attention{softcap=50}` with Gemma's
    query_pre_attn_scalar ** -0.5 as the scale; a small cap, which changes the logits, is matched too."""
    model = build("gemma2", "eager")
    fast = optimize(model)
    attn = [n for n in fast.graph.nodes if n.op == "attention"]
    scale = model.config.query_pre_attn_scalar ** -0.5
    assert [(n.attrs["softcap"], n.attrs["scale"]) for n in attn] == [(50.0, pytest.approx(scale))] * 2
    model = build("gemma2", "eager", attn_logit_softcapping=0.5, query_pre_attn_scalar=4)
    fast = optimize(model)
    assert {n.attrs["softcap"] for n in fast.graph.nodes if n.op == "attention"} == {0.5}
    with torch.no_grad():
        want = model(IDS).logits
        torch.testing.assert_close(fast.decoder().prefill(IDS)["logits"], want, rtol=1e-4, atol=1e-4)
        uncapped = build("gemma2", "eager", attn_logit_softcapping=None, query_pre_attn_scalar=4)(IDS).logits
    assert not torch.allclose(uncapped, want, atol=1e-3)   # the cap is not a no-op on these logits


def test_mpt_alibi_bias_and_masked_fill_become_one_additive_mask():
    """MPT adds its ALiBi bias to the scores and masked_fills the masked ones with the dtype's minimum:
    one `attention` whose mask is where(masked, min, bias), over 30 decoded tokens (the bias moves with
    the keys)."""
    model = build("mpt", "eager")
    fast = optimize(model)
    attn = [n for n in fast.graph.nodes if n.op == "attention"]
    assert len(attn) == 2 and all(n.inputs[3].type.dtype == "f32" and n.inputs[3].producer.op == "where"
                                  for n in attn)
    got = fast.generate(IDS, max_new_tokens=30, eos_token_id=None)
    want = model.generate(IDS, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert got.tolist() == want.tolist()


MIXED = ["sliding_attention", "full_attention"]
OWN_WINDOW = [("gemma2", "eager", MIXED)] + [
    pytest.param(a, i, types, marks=pytest.mark.slow) for a, i, types in (
        ("cohere2", "sdpa", MIXED), ("cohere2", "eager", MIXED), ("exaone4", "eager", MIXED), ("olmo3", "sdpa", MIXED),
        ("ministral", "eager", None), ("starcoder2", "eager", None), ("phi3", "sdpa", None))]


@pytest.mark.parametrize("arch,impl,types", OWN_WINDOW)
def test_models_with_their_own_window_decode_like_transformers_past_it(arch, impl, types):
    """A window of 8 and 30 generated tokens: Gemma 2 (soft-capped and windowed), Cohere2, EXAONE 4 and OLMo3
    (sliding and full layers), Ministral, Starcoder2 and Phi3 (every layer) give transformers' tokens."""
    model = build(arch, impl, sliding_window=8, **({"layer_types": types} if types else {}))
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(2))
    fast = optimize(model)
    windows = sorted(n.attrs["window"] for n in fast.graph.nodes if n.op == "attention")
    assert windows == ([0, 7] if types else [7, 7]), windows
    got = fast.generate(ids, max_new_tokens=30, eos_token_id=None)
    want = model.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert got.tolist() == want.tolist()


# ---- attention{softcap} on each target ---------------------------------------------------------------------
def capped_graph(mask_dtype):
    g = ir.Graph("capped")
    q = g.add_input("q", ir.TensorType("f32", (1, 4, 5, 8)))
    k = g.add_input("k", ir.TensorType("f32", (1, 2, 9, 8)))
    v = g.add_input("v", ir.TensorType("f32", (1, 2, 9, 8)))
    m = g.add_input("m", ir.TensorType(mask_dtype, (1, 1, 5, 9)))
    g.set_outputs([g.op("attention", q, k, v, m, causal=True, scale=0.5, window=3, sinks=1, softcap=2.0)])
    return g


def capped_inputs(mask_dtype):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (3 * torch.randn(1, h, n, 8, generator=gen) for h, n in ((4, 5), (2, 9), (2, 9)))
    keep = torch.rand(1, 1, 5, 9, generator=gen) > 0.3
    keep[..., 0] = True
    m = keep if mask_dtype == "bool" else torch.randn(1, 1, 5, 9, generator=gen).masked_fill(~keep, -1e30)
    return q, k, v, m


def capped_spec(q, k, v, m):
    """The op's definition written out: cap the scaled scores, then the mask, the causal diagonal and the
    window (query i at position i + 4 sees key j if j < 1 or i + 4 - j <= 3), softmax, values."""
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = 2.0 * torch.tanh(q @ k.transpose(-1, -2) * 0.5 / 2.0)
    i, j = torch.arange(5)[:, None] + 4, torch.arange(9)[None, :]
    band = (j <= i) & ((j < 1) | (i - j <= 3))
    s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m
    return torch.softmax(s.masked_fill(~band, float("-inf")), -1) @ v


@pytest.mark.parametrize("target", ["reference", "torch", "onnx", "cpu"])
@pytest.mark.parametrize("mask_dtype", ["bool", "f32"])
def test_softcapped_attention_on_every_target_is_the_written_out_definition(target, mask_dtype):
    if target == "onnx":
        pytest.importorskip("onnxruntime")
    if target == "cpu":
        pytest.importorskip("tvm")
    q, k, v, m = capped_inputs(mask_dtype)
    fast = slimgraph.optimize(capped_graph(mask_dtype), target=target, pipeline="dce")
    got = torch.as_tensor(fast.run(q, k, v, m)[0])
    want = capped_spec(q, k, v, m)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    uncapped = ir.get_op("attention").impl(q, k, v, m, causal=True, scale=0.5, window=3, sinks=1)
    assert not torch.allclose(uncapped, want, atol=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnx", "cpu"])
def test_gemma2_decodes_like_transformers_on_the_onnx_and_cpu_targets(target):
    """The capped attention over the KV cache (the cpu target's in-place buffers included)."""
    pytest.importorskip("onnxruntime" if target == "onnx" else "tvm")
    model = build("gemma2", "eager", attn_logit_softcapping=0.5, query_pre_attn_scalar=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = slimgraph.optimize(model, (IDS,), target=target)
    dec = fast.decoder()
    with torch.no_grad():
        torch.testing.assert_close(dec.prefill(IDS)["logits"], model(IDS).logits, rtol=1e-4, atol=1e-4)
        nxt = torch.tensor([[5]])
        want = model(torch.cat((IDS, nxt), 1)).logits[:, -1:]
        torch.testing.assert_close(dec.step(nxt)["logits"], want, rtol=1e-4, atol=1e-4)


def test_the_c_target_refuses_a_softcap_by_name():
    from slimgraph.targets.base import get_target
    with pytest.raises(Exception, match="soft-cap.*softcap=2.0"):
        get_target("c").build(capped_graph("bool"))


def test_linearize_attention_refuses_soft_capped_attention():
    from slimgraph.passes.base import PassError
    with pytest.raises(PassError, match="soft-caps its logits"):
        optimize(build("gemma2", "eager", num_hidden_layers=1, layer_types=["full_attention"]), pipeline="canonicalize,linearize-attention{window=4},dce")


# ---- sparsify-attention over the family ---------------------------------------------------------------------
W, S = 4, 2
SPARSE = [("gemma2", "eager"), pytest.param("gpt-bigcode", "sdpa", marks=pytest.mark.slow),
          pytest.param("qwen3", "sdpa", marks=pytest.mark.slow), pytest.param("phi", "eager", marks=pytest.mark.slow),
          pytest.param("olmo2", "sdpa", marks=pytest.mark.slow), pytest.param("codegen", "sdpa", marks=pytest.mark.slow)]


def banded_logits(model, impl, x):
    """The model itself with the sliding-window + sinks band over its whole sequence (the oracle); eager
    attention adds a 4-D mask to the scores, so it gets the 0 / dtype-min form."""
    n = x.shape[1]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    keep = ((j <= i) & ((j < S) | (i - j <= W)))[None, None]
    mask = keep if impl == "sdpa" else torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    with torch.no_grad():
        return model(input_ids=x, attention_mask=mask).logits


@pytest.mark.parametrize("arch,impl", SPARSE)
def test_sparsify_attention_applies_to_the_family_and_matches_the_banded_model(arch, impl):
    model = build(arch, impl)
    fast = optimize(model, pipeline=f"canonicalize,sparsify-attention{{kind=sliding_window,window={W},sinks={S}}},dce")
    assert [s.kind for s in fast.graph.states] == ["ring"] * 4
    x = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(4))
    dec = fast.decoder()
    got = torch.cat([dec.prefill(x[:, :3])["logits"]] + [dec.step(x[:, i:i + 1])["logits"] for i in range(3, 16)], 1)
    torch.testing.assert_close(got, banded_logits(model, impl, x), rtol=1e-4, atol=1e-4)
    assert all(t.shape[2] == W + S for t in dec.states)
