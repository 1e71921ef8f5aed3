"""generate(): greedy output must be token-identical to the source model's HF generate()."""
import types

import pytest
import torch

import slimgraph
from slimgraph.generate import GenerateError, generate

transformers = pytest.importorskip("transformers")

PROMPT_LEN = 7


def tiny_lm(**config):
    """A random 2-layer GQA Llama (seeded), with no special tokens unless `config` says otherwise."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**{**dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                             bos_token_id=None, eos_token_id=None, pad_token_id=None), **config})
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny_llama():
    model = tiny_lm()
    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT_LEN))
    return model, slimgraph.optimize(model, (ids,), target="torch")


def hf_greedy(model, ids, n, eos=None):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=eos,
                              pad_token_id=eos if eos is not None else 0)


def prompt(batch=1, seed=1, vocab=96):
    return torch.randint(0, vocab, (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(seed))


def test_greedy_matches_hf(tiny_llama):
    model, compiled = tiny_llama
    ids = prompt()
    ref = hf_greedy(model, ids, 24)
    got = generate(compiled, ids, 24)
    assert got.dtype == torch.long and got.shape == ref.shape
    assert got.tolist() == ref.tolist()


def test_prompt_length_differs_from_example(tiny_llama):
    model, compiled = tiny_llama
    ids = torch.randint(0, 96, (1, 13), generator=torch.Generator().manual_seed(5))
    assert generate(compiled, ids, 10).tolist() == hf_greedy(model, ids, 10).tolist()


def test_stops_at_eos(tiny_llama):
    model, compiled = tiny_llama
    ids = prompt()
    free = hf_greedy(model, ids, 24)[0, PROMPT_LEN:].tolist()
    stop_at = 5
    eos = free[stop_at]
    first = free.index(eos)  # generation ends at the first occurrence of the eos token
    got = generate(compiled, ids, 24, eos_token_id=eos)
    assert got.shape[1] == PROMPT_LEN + first + 1
    assert got[0, -1].item() == eos
    assert got.tolist() == hf_greedy(model, ids, 24, eos=eos).tolist()
    assert compiled.last_generate_stats.new_tokens == first + 1


def test_batch_pads_finished_rows_like_hf(tiny_llama):
    model, compiled = tiny_llama
    ids = prompt(batch=2, seed=3)
    eos = hf_greedy(model, ids[:1], 8)[0, PROMPT_LEN + 2].item()  # row 0 finishes early
    got = generate(compiled, ids, 16, eos_token_id=[eos])
    assert got.tolist() == hf_greedy(model, ids, 16, eos=eos).tolist()


def test_stats_and_streamer(tiny_llama):
    _, compiled = tiny_llama
    seen = []

    class Recorder:
        def put(self, t):
            seen.append(t.tolist())

        def end(self):
            seen.append("end")

    got = generate(compiled, prompt(), 6, streamer=Recorder())
    assert seen[0] == got[:, :PROMPT_LEN].tolist()
    assert [s[0] for s in seen[1:-1]] == got[0, PROMPT_LEN:].tolist() and seen[-1] == "end"
    stats = compiled.last_generate_stats
    assert (stats.prompt_tokens, stats.new_tokens) == (PROMPT_LEN, 6)
    assert stats.prefill_s > 0 and stats.decode_s > 0 and stats.decode_tokens_per_s > 0


def test_sampling_is_seeded_and_top1_is_greedy(tiny_llama):
    _, compiled = tiny_llama
    ids = prompt()

    def sample(seed, **kw):
        return generate(compiled, ids, 12, do_sample=True, generator=torch.Generator().manual_seed(seed), **kw)
    assert sample(0, temperature=1.5).tolist() == sample(0, temperature=1.5).tolist()
    assert sample(0, top_k=1).tolist() == generate(compiled, ids, 12).tolist()
    high = {tuple(sample(s, temperature=50.0)[0].tolist()) for s in range(4)}
    assert len(high) > 1  # a flat distribution gives different continuations for different seeds


def test_zero_new_tokens_returns_prompt(tiny_llama):
    _, compiled = tiny_llama
    ids = prompt()
    assert generate(compiled, ids, 0).tolist() == ids.tolist()


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(1, 4), "int64"),
    (torch.zeros(4, dtype=torch.long), r"\[batch, seq\]"),
    (torch.zeros(1, 0, dtype=torch.long), "empty"),
])
def test_bad_input_ids(tiny_llama, bad, match):
    with pytest.raises(GenerateError, match=match):
        generate(tiny_llama[1], bad, 4)


def test_bad_options(tiny_llama):
    with pytest.raises(GenerateError, match="temperature"):
        generate(tiny_llama[1], prompt(), 4, do_sample=True, temperature=0)
    with pytest.raises(GenerateError, match="top_k"):
        generate(tiny_llama[1], prompt(), 4, do_sample=True, top_k=0)


def test_not_a_causal_lm():
    with pytest.raises(GenerateError, match="causal LM"):
        generate(types.SimpleNamespace(graph=slimgraph.ir.Graph()), torch.zeros(1, 3, dtype=torch.long), 4)


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("target", ["torch", "cpu"])
def test_smollm2_greedy_64_tokens_identical(smollm2, target):
    if target == "cpu":
        pytest.importorskip("tvm", reason="the cpu target needs apache-tvm: pip install 'slimgraph[tvm]'")
    model, tok = smollm2
    ids = tok("The three primary colors are", return_tensors="pt").input_ids
    compiled = slimgraph.optimize(model, (ids,), target=target)
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=64, do_sample=False)
    got = compiled.generate(ids, max_new_tokens=64, eos_token_id=model.generation_config.eos_token_id)
    assert got.tolist() == ref.tolist()


def test_compiled_generate_defaults_to_the_models_eos():
    """Like HF, `compiled.generate` stops at the generation config's eos without being told."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, bos_token_id=None,
                                   eos_token_id=None, pad_token_id=None)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = prompt()
    eos = hf_greedy(model, ids, 12)[0, PROMPT_LEN + 3].item()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    compiled = slimgraph.optimize(model, (ids,), target="torch")
    assert compiled.kv.eos_token_ids == (eos,)
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=12, do_sample=False)
    got = compiled.generate(ids, max_new_tokens=12)
    assert got.tolist() == ref.tolist() and got.shape[1] < PROMPT_LEN + 12


DECODE_PIPELINE = ("canonicalize,quantize-weights{bits=4,group=16},"
                   "quantize-weights{bits=8,group=0,include=[lm_head.weight]},"   # tied: also the embedding
                   "fuse-dequant-matmul,merge-sibling-linears,cse,dce")


@pytest.mark.parametrize("target", ["torch", "onnx"])
def test_quantized_decode_pipeline_matches_reference(target):
    """The decode pipeline of benchmarks/bench_quant.py on a tied tiny Llama: rope recognized, attention
    with the runtime's mask, int4 linears + int8 tied head/embedding, merged siblings; prefill and a
    decode step agree with the reference interpreter running the same graph."""
    if target == "onnx":
        pytest.importorskip("onnxruntime")
    from slimgraph.decoder import causal_lm_inputs
    model = tiny_lm(tie_word_embeddings=True)
    ids = prompt()
    ref = slimgraph.optimize(model, (ids,), target="reference", pipeline=DECODE_PIPELINE)
    fast = slimgraph.optimize(model, (ids,), target=target, pipeline=DECODE_PIPELINE)
    ops = fast.graph.op_counts()
    assert ops["rope"] == 4 and ops["qembedding"] == 1 and ops["qlinear"] == 2 * 4 + 1 and ops["split"] == 4
    assert all(n.inputs[3].name == "attention_mask" for n in fast.graph.nodes if n.op == "attention")
    inputs = causal_lm_inputs(fast.graph, ids)
    want, got = ref.run(*inputs), fast.run(*inputs)   # prefill
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2 * float(w.abs().max()))
    pos, mask = torch.tensor([[ids.shape[1]]]), torch.ones(1, 1, 1, ids.shape[1] + 1, dtype=torch.bool)
    step = [ids[:, -1:], pos, mask, *want[1:]]        # one decode step on the reference's cache
    for w, g in zip(ref.run(*step), fast.run(*step), strict=True):
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2 * float(w.abs().max()))
