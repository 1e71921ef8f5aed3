"""slimgraph.decoder: verify = k single steps; accept/truncate = a fresh decode of what was kept; left-padded
batches = each prompt alone. On a tiny random Llama (every target) and on the real SmolLM2 (slow)."""
import re

import pytest
import torch

import slimgraph
from slimgraph.decoder import DecoderError

transformers = pytest.importorskip("transformers")
from tiny_lm import path_to, tiny_llama, tree_mask  # noqa: E402
TOL = 1e-5




@pytest.fixture(scope="module", params=["torch", "reference", "onnx", "cuda", "cpu"])
def compiled(request):
    if request.param == "onnx":
        pytest.importorskip("onnxruntime")
    if request.param == "cuda":
        pytest.importorskip("triton")
    if request.param == "cpu":
        pytest.importorskip("tvm", reason="the cpu target needs apache-tvm: pip install 'slimgraph[tvm]'")
    model = tiny_llama()
    return model, slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target=request.param)


def ids(n, seed=1, batch=1):
    return torch.randint(0, 96, (batch, n), generator=torch.Generator().manual_seed(seed))


def check_verify_equals_steps(fast, prompt, cands, tol):
    """verify(k candidates) gives the logits of k single steps; accept(n) then decodes like a fresh prefix."""
    steps = fast.decoder()
    steps.prefill(prompt)
    one_by_one = torch.cat([steps.step(cands[:, i])["logits"] for i in range(cands.shape[1])], 1)
    dec = fast.decoder()
    dec.prefill(prompt)
    for k in range(1, cands.shape[1] + 1):
        got = dec.verify(cands[:, :k])["logits"]
        torch.testing.assert_close(got, one_by_one[:, :k], rtol=tol, atol=tol)
        dec.accept(0)                                   # roll back all k: the next verify starts from the prompt
    n = cands.shape[1] // 2
    dec.verify(cands)
    dec.accept(n)                                       # keep n, then continue
    nxt = torch.tensor([[7]])
    fresh = fast.decoder()
    fresh.prefill(torch.cat((prompt, cands[:, :n]), 1))
    torch.testing.assert_close(dec.step(nxt)["logits"], fresh.step(nxt)["logits"], rtol=tol, atol=tol)
    assert dec.length == fresh.length == prompt.shape[1] + n + 1


def test_verify_of_1_to_16_candidates_equals_single_steps_and_accept_continues_like_a_fresh_decode(compiled):
    _, fast = compiled
    check_verify_equals_steps(fast, ids(6), ids(16, seed=2), TOL)


def test_tree_verify_sees_only_ancestors_and_accepting_a_path_equals_decoding_it(compiled):
    _, fast = compiled
    prompt = ids(5)
    # tree: 0 -> {1 -> 3, 2 -> 4}; candidate tokens at each node
    parents = [-1, 0, 0, 1, 2]
    tokens = torch.tensor([[11, 22, 33, 44, 55]])
    tree = torch.eye(5, dtype=torch.bool)
    for i, p in enumerate(parents):
        while p >= 0:
            tree[i, p], p = True, parents[p]
    dec = fast.decoder()
    dec.prefill(prompt)
    out = dec.verify(tokens, tree_mask=tree)["logits"]
    for path in ([0, 1, 3], [0, 2, 4]):
        chain = fast.decoder()
        chain.prefill(prompt)
        want = chain.verify(tokens[:, path])["logits"]
        torch.testing.assert_close(out[:, path], want, rtol=TOL, atol=TOL)
    dec.accept(path=[0, 2, 4])
    chain = fast.decoder()
    chain.prefill(torch.cat((prompt, tokens[:, [0, 2, 4]]), 1))
    nxt = torch.tensor([[9]])
    torch.testing.assert_close(dec.step(nxt)["logits"], chain.step(nxt)["logits"], rtol=TOL, atol=TOL)


def test_truncate_rolls_back_without_copying_the_torch_cache():
    fast = slimgraph.optimize(tiny_llama(), (torch.zeros(1, 4, dtype=torch.long),), target="torch")
    dec = fast.decoder()
    dec.prefill(ids(8))
    dec.step(torch.tensor([3]))
    ptr = dec.states[0].data_ptr()
    dec.truncate(6)
    assert dec.length == 6 and dec.states[0].shape[2] == 6 and dec.states[0].data_ptr() == ptr
    dec.step(torch.tensor([4]))                          # appends over the freed rows, same buffer
    assert dec.states[0].data_ptr() == ptr
    fresh = fast.decoder()
    fresh.prefill(torch.cat((ids(8)[:, :6], torch.tensor([[4]])), 1))
    torch.testing.assert_close(dec.step(torch.tensor([5]))["logits"], fresh.step(torch.tensor([5]))["logits"],
                               rtol=TOL, atol=TOL)


def test_batch_of_prompts_of_different_lengths_generates_what_each_generates_alone(compiled):
    model, fast = compiled
    prompts = [ids(n, seed=n) for n in (3, 9, 5, 12)]
    width = max(p.shape[1] for p in prompts)
    batch = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, width - p.shape[1]:], mask[i, width - p.shape[1]:] = p[0], 1
    together = fast.generate(batch, max_new_tokens=12, attention_mask=mask)
    for i, p in enumerate(prompts):
        alone = fast.generate(p, max_new_tokens=12)
        assert together[i, width:].tolist() == alone[0, p.shape[1]:].tolist()
        hf = model.generate(p, max_new_tokens=12, do_sample=False, pad_token_id=0)
        assert alone.tolist() == hf.tolist()


def test_errors_name_the_problem(compiled):
    _, fast = compiled
    dec = fast.decoder()
    with pytest.raises(DecoderError, match="accept\\(\\) follows verify"):
        dec.accept(1)
    dec.prefill(ids(4))
    dec.verify(ids(3))
    with pytest.raises(DecoderError, match="accept\\(5\\): verify ran 3 candidates"):
        dec.accept(5)
    with pytest.raises(DecoderError, match="tree_mask must be \\[k, k\\]"):
        dec.verify(ids(3), tree_mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(DecoderError, match="pad on the left"):
        dec.prefill(ids(3), attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(DecoderError, match="int64 tensor"):
        dec.step(torch.zeros(1, 1))
    mlp = slimgraph.optimize(torch.nn.Linear(4, 4), (torch.randn(2, 4),))
    with pytest.raises(DecoderError, match="not a causal LM with declared state"):
        mlp.decoder()


@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_verify_equals_steps_and_accept_continues(smollm2):
    model, tok = smollm2
    prompt = tok("The three primary colors are", return_tensors="pt").input_ids
    fast = slimgraph.optimize(model, (prompt,), target="torch")
    cands = tok(" red, yellow and blue. They cannot be made by mixing", return_tensors="pt").input_ids[:, :16]
    check_verify_equals_steps(fast, prompt, cands, 1e-4)


def test_output_names_survive_a_rewriting_pipeline():
    """Outputs are addressed by name: passes that replace the producer of `logits` keep the name."""
    pipeline = ("canonicalize,quantize-weights{bits=4,group=32},quantize-weights{bits=8,group=0,"
                "include=[lm_head.weight]},fuse-dequant-matmul,merge-sibling-linears,cse,dce")
    model = tiny_llama()
    fast = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="torch", pipeline=pipeline)
    names = [v.name for v in fast.graph.outputs]
    assert names[0] == "logits" and fast.graph.outputs[0].producer.op == "qlinear"
    assert names[1:] == [s.output.name for s in fast.graph.states] == \
        [f"present_{k}_{i}" for i in range(2) for k in ("key", "value")]
    assert fast.generate(ids(5), max_new_tokens=4).shape == (1, 9)


@pytest.mark.parametrize("pipeline", ["canonicalize,cse,dce",   # append KV states: accept narrows the cache
                                      "canonicalize,sparsify-attention{kind=sliding_window,window=6,sinks=2},dce"])
def test_accept_takes_only_what_the_last_verify_ran_and_only_its_paths(pipeline):
    """accept() answers the verify() just before it: a step or another call in between makes the verified
    candidates part of the sequence (accept then has nothing to accept), and a path must be a path of what
    ran (a chain's prefix, a tree's root-to-node path): keeping other candidates would keep keys computed
    with the wrong tokens before them (append states) or replay them as if they were a chain (ring states)."""
    model = tiny_llama()
    fast = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="torch", pipeline=pipeline)
    dec = fast.decoder()
    dec.prefill(ids(8))
    dec.verify(ids(3, seed=2))
    dec.step(ids(1, seed=3))                          # the 3 candidates stay: the cache holds 8 + 3 + 1
    assert dec.length == 12
    with pytest.raises(DecoderError, match="accept\\(\\) follows verify"):
        dec.accept(1)
    dec.verify(ids(3, seed=2))
    with pytest.raises(DecoderError, match="accept\\(path=\\[0, 2\\]\\): not a root-to-node path of the verified chain"):
        dec.accept(path=[0, 2])
    with pytest.raises(DecoderError, match="accept\\(\\) needs n .* or path"):
        dec.accept()
    with pytest.raises(DecoderError, match="either n or path"):
        dec.accept(1, path=[0])
    dec.accept(path=[0, 1])                           # a chain's prefix as a path is accept(2)
    assert dec.length == 14
    tm = tree_mask([-1, 0, 0, 1])                     # node 3's path is 0, 1, 3
    for bad in ([0, 3], [1, 3], [3], [0, 2, 3]):
        dec.verify(ids(4, seed=4), tree_mask=tm)
        with pytest.raises(DecoderError, match=re.escape(f"accept(path={bad}): not a root-to-node path of the verified tree")):
            dec.accept(path=bad)
        dec.accept(0)                                 # a refused accept leaves the verify to accept: drop it
    dec.verify(ids(4, seed=4), tree_mask=tm)
    dec.accept(path=[0, 1, 3])
    assert dec.length == 17


INT4 = ("canonicalize,quantize-weights{bits=4,group=32},quantize-weights{bits=8,group=0,include=[lm_head.weight]},"
        "fuse-dequant-matmul,merge-sibling-linears,cse,dce")   # every matmul a packed-int kernel, as in SmolLM2 int4


def _steps(fast, prompt, tokens):
    """Logits [k, vocab] of decoding `tokens` one step at a time after `prompt`: plain greedy decoding's."""
    dec = fast.decoder()
    dec.prefill(prompt)
    return torch.cat([dec.step(torch.tensor([t]))["logits"][0] for t in tokens])


def _verified(fast, prompt, cands, parents=None):
    """Logits [k, vocab] of ONE verify of `cands` (a chain, or the tree of `parents`) after `prompt`."""
    dec = fast.decoder()
    dec.prefill(prompt)
    return dec.verify(torch.tensor([cands]), tree_mask=None if parents is None else tree_mask(parents))["logits"][0]


def _assert_tree_rows_are_steps(fast, prompt, cands, parents, leaves):
    got = _verified(fast, prompt, cands, parents)
    for leaf in leaves:
        path = path_to(leaf, parents)
        assert torch.equal(got[path], _steps(fast, prompt, [cands[i] for i in path])), (prompt.shape[1], leaf, path)


@pytest.mark.parametrize("past", [5, 17, 40, 97])
def test_verify_rows_on_a_quantized_base_are_bit_identical_to_single_steps(past):
    """The greedy contract exactly: on the torch target with packed int4 weights (row-invariant kernels, bf16
    activations that turn a last-bit difference into a 0.1 logit jump), each row of a chain or tree verify is
    bit for bit the one-token step at its place, at any cache length (codegen/torch_kernels._rows_as_steps)."""
    model = tiny_llama(layers=3, hidden_size=128, intermediate_size=256, num_attention_heads=8)
    fast = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="torch", pipeline=INT4)
    prompt, cands = ids(past), ids(9, seed=3)[0].tolist()
    assert torch.equal(_verified(fast, prompt, cands), _steps(fast, prompt, cands))
    # a tree: node 3 = 0 -> 1 -> 3, node 8 = 0 -> 2 -> 5 -> 7 -> 8
    _assert_tree_rows_are_steps(fast, prompt, cands, [-1, 0, 0, 1, 1, 2, 3, 5, 7], (4, 6, 8))


def test_verify_rows_with_float_medusa_heads_on_a_quantized_base_are_bit_identical_to_single_steps():
    """Medusa heads are float linears on the last hidden state: they choose candidates but feed neither the logits
    nor the cache, so the verify stays exact with them (SmolLM2's attention shape: 9 heads of 64 over 3; the
    one-call attention that float GEMMs select differs from the steps here at 4 candidates after 12 tokens)."""
    model = tiny_llama(layers=2, hidden_size=576, intermediate_size=1152, num_attention_heads=9, num_key_value_heads=3)
    fast = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="torch",
                              pipeline=INT4 + ",insert-draft-heads{num_heads=2}")
    g = torch.Generator().manual_seed(0)
    for past, k in ((12, 2), (12, 4), (12, 9), (30, 4), (30, 15)):
        prompt = torch.randint(0, 96, (1, past), generator=g)
        cands = torch.randint(0, 96, (k,), generator=g).tolist()
        assert torch.equal(_verified(fast, prompt, cands), _steps(fast, prompt, cands)), (past, k)


@pytest.mark.parametrize("pipe", ["sparsify-attention{window=8,sinks=2}", "sparsify-attention{window=8,sinks=0}"])
def test_verify_rows_over_a_ring_state_on_a_quantized_base_are_bit_identical_to_single_steps(pipe):
    """Over a ring state (a sliding window with sinks) the step at a verified row's place sees the ring after
    it slid: the rows that left the window are gone from its keys, not masked. The verify computes each chain
    or tree row over exactly those keys (codegen/torch_kernels._ring_rows), so it is bit for bit the steps; with
    the rows masked instead, past the window, logits differed by ~1e-2 and greedy lookup decoding diverged."""
    model = tiny_llama(layers=2, hidden_size=576, intermediate_size=1152, num_attention_heads=9, num_key_value_heads=3)
    fast = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="torch",
                              pipeline=INT4.replace("canonicalize,", f"canonicalize,{pipe},"))
    assert [s.kind for s in fast.graph.states] == ["ring"] * 4
    g = torch.Generator().manual_seed(0)
    parents = [-1, 0, 0, 1, 1, 2, 3, 5, 7]
    for past, k in ((3, 4), (20, 9), (40, 20)):
        prompt = torch.randint(0, 96, (1, past), generator=g)
        cands = torch.randint(0, 96, (k,), generator=g).tolist()
        assert torch.equal(_verified(fast, prompt, cands), _steps(fast, prompt, cands)), (past, k)
        if k == 9:
            _assert_tree_rows_are_steps(fast, prompt, cands, parents, (4, 6, 8))
