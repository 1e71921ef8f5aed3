"""Candidate trees over windowed attention (issues 17 x 18): a tree node sits at position L + depth, not at
L + its index among the candidates, so the window, the sinks and the blocks must be placed by position.

On a tiny random Llama with a sequence well past the window, for every rewrite that windows attention
(sparsify-attention sliding_window over a ring, block_sparse over the append cache, the linearize-attention
hybrid over a ring + fixed state) and every target that runs it: tree verify gives each node the logits of its
path decoded token by token; accepting a path continues like a fresh decode; speculative generate with a
Medusa tree is token-identical to plain greedy; the interpreter agrees. A tree on an empty cache is refused,
and so is one past a model's own window left by index (plain canonicalize), which the rewrites place by position."""
import pytest
import torch

import slimgraph
from slimgraph.decoder import DecoderError
from slimgraph.draft import rebuild_runner
from slimgraph.generate import generate
from slimgraph.speculative import DEFAULT_TREE

transformers = pytest.importorskip("transformers")
import tiny_lm  # noqa: E402
from tiny_lm import tiny_llama, tree_mask  # noqa: E402
TOL = 1e-5

KINDS = {   # kind -> (pipeline, targets that compile and run it)
    "sliding_window": ("canonicalize,sparsify-attention{window=8,sinks=2},dce",
                       ["reference", "torch", "onnx", "cuda", "cpu"]),
    "block_sparse": ("canonicalize,sparsify-attention{kind=block_sparse,block=4,local=2,globals=1},dce",
                     ["reference", "torch", "onnx", "cuda", "cpu"]),
    "hybrid": ("canonicalize,linearize-attention{window=6,sinks=1},dce", ["reference", "torch", "cuda", "cpu"]),
}
# cuda runs in Triton's CPU interpreter here (minutes per case): slow
CASES = [pytest.param(k, t, marks=[pytest.mark.slow] if t == "cuda" else []) for k, (_, ts) in KINDS.items() for t in ts]
# whole speculative generations: not on cuda, whose tree verify the per-node test covers (the interpreter
# took 80-95 s per kind here, a fifth of the suite)
GENERATE_CASES = [(k, t) for k, (_, ts) in KINDS.items() for t in ts if t != "cuda"]
# a Medusa-like tree: root 0; node i's parent; depths 0,1,1,1,2,2,2,3,3,4,2,5 (index - depth up to 6)
PARENTS = [-1, 0, 0, 0, 1, 1, 2, 4, 4, 7, 3, 9]


def needs(target):
    if target == "onnx":
        pytest.importorskip("onnxruntime")
    if target == "cuda":
        pytest.importorskip("triton")
    if target == "cpu":
        pytest.importorskip("tvm", reason="the cpu target needs apache-tvm: pip install 'slimgraph[tvm]'")


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


_CACHE = {}


def compile_(model, kind, target, heads=0):
    """slimgraph.optimize once per (kind, target, heads); the hybrid's feature maps and the draft heads get
    seeded random weights (identity maps and untrained heads would hide mix-ups), the same on every target."""
    key = (kind, target, heads)
    if key not in _CACHE:
        needs(target)
        pipe = KINDS[kind][0] + (f",insert-draft-heads{{num_heads={heads}}}" if heads else "")
        c = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target=target, pipeline=pipe,
                               verify=True)
        gen = torch.Generator().manual_seed(0)
        for name, w in sorted(c.graph.weights.items()):
            if name.startswith("linear_attention."):
                w.tensor = w.tensor + 0.3 * torch.randn(w.tensor.shape, generator=gen)
            if name.startswith("draft_heads."):
                w.tensor = 0.3 * torch.randn(w.type.shape, generator=gen)
        rebuild_runner(c)
        _CACHE[key] = c
    return _CACHE[key]


def ids(n, seed=1, batch=1):
    return torch.randint(0, 96, (batch, n), generator=torch.Generator().manual_seed(seed))


def path_to(i, parents=PARENTS):
    return tiny_lm.path_to(i, parents)


def decoded(c, prompt, tokens):
    """Logits of the last of `tokens` decoded one step at a time after prefill(prompt), and the decoder."""
    dec = c.decoder()
    dec.prefill(prompt)
    for t in tokens:
        out = dec.step(torch.tensor([t]))
    return out["logits"][:, -1], dec


def tree_logits(c, prompt, tokens):
    dec = c.decoder()
    dec.prefill(prompt)
    return dec.verify(tokens, tree_mask=tree_mask(PARENTS))["logits"], dec


@pytest.mark.parametrize("kind,target", CASES)
def test_tree_verify_past_the_window_gives_every_node_its_paths_plain_decoding(model, kind, target):
    c = compile_(model, kind, target)
    prompt, tokens = ids(40, seed=3), ids(len(PARENTS), seed=4)       # 40 tokens >> window + sinks, blocks
    got, dec = tree_logits(c, prompt, tokens)
    for i in range(len(PARENTS)):
        want, _ = decoded(c, prompt, tokens[0, path_to(i)].tolist())
        torch.testing.assert_close(got[:, i], want, rtol=TOL, atol=TOL, msg=lambda m: f"node {i}: {m}")
    path = path_to(9)                                                   # the deepest path: depth 4
    dec.accept(path=path)
    _, fresh = decoded(c, prompt, tokens[0, path].tolist())
    nxt = torch.tensor([5])
    torch.testing.assert_close(dec.step(nxt)["logits"], fresh.step(nxt)["logits"], rtol=TOL, atol=TOL)
    assert dec.length == fresh.length == 40 + len(path) + 1


@pytest.mark.parametrize("kind", list(KINDS))
def test_targets_agree_with_the_interpreter_on_the_tree_and_the_window_matters(model, kind):
    prompt, tokens = ids(40, seed=5), ids(len(PARENTS), seed=6)
    ref, _ = tree_logits(compile_(model, kind, "reference"), prompt, tokens)
    for target in KINDS[kind][1][1:]:
        if target == "cuda":            # the Triton interpreter: the slow tree test above compares it
            continue
        try:
            needs(target)
        except pytest.skip.Exception:
            continue
        got, _ = tree_logits(compile_(model, kind, target), prompt, tokens)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4, msg=lambda m: f"{target}: {m}")
    full = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="reference",
                              pipeline="canonicalize,dce")
    dense, _ = tree_logits(full, prompt, tokens)
    assert (dense - ref).abs().amax() > 1e-3                           # the window/blocks do drop keys here


@pytest.mark.parametrize("kind,target", GENERATE_CASES)
def test_speculative_medusa_tree_is_token_identical_to_plain_greedy(model, kind, target):
    c = compile_(model, kind, target, heads=3)
    accepted = []
    for seed in (7, 8):
        p = ids(14, seed=seed)                                          # 14 + 36 tokens: well past the window
        want = generate(c, p, 36, speculative=False)
        for mode in ("tree", "chain"):
            # a fixed tree: random heads' drafts would not pay for a dynamic tree's rows (it verifies 1 row)
            tree = [t for t in DEFAULT_TREE if len(t) <= 3] if mode == "tree" else None
            got = generate(c, p, 36, speculative=mode, tree=tree)
            assert torch.equal(got, want), (mode, seed)
            st = c.last_generate_stats
            assert st.speculative == mode and st.verifies >= 1
            accepted.append(st.mean_acceptance)
    assert max(accepted) > 1.0            # some drafts were accepted: accept(path) replays ran, not only the bonus


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_left_padded_batch_prefill_still_counts_slots_by_index(model, kind):
    """At L = 0 slots are indices (the pads share a position; the decoder puts them after each row's sinks):
    a left-padded batch's prefill over the whole sequence equals its prefill of the prompts + decode steps."""
    c = compile_(model, kind, "torch")
    prompts = [ids(n, seed=n) for n in (5, 17, 11)]
    width, more = 17, ids(16, seed=9)[0]
    x = torch.zeros(len(prompts), width + len(more), dtype=torch.long)
    valid = torch.ones_like(x)
    for i, p in enumerate(prompts):
        x[i, width - p.shape[1]:width], valid[i, :width - p.shape[1]] = p[0], 0
    x[:, width:] = more
    full = c.decoder(batch=3).prefill(x, attention_mask=valid)["logits"][:, width - 1:-1]
    dec = c.decoder(batch=3)
    steps = [dec.prefill(x[:, :width], attention_mask=valid[:, :width])["logits"][:, -1:]]
    steps += [dec.step(x[:, i])["logits"] for i in range(width, x.shape[1] - 1)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_a_tree_on_an_empty_cache_is_refused_and_a_chain_is_not(model):
    c = compile_(model, "sliding_window", "torch")
    dec = c.decoder()
    with pytest.raises(DecoderError, match="a candidate tree needs a prefilled sequence"):
        dec.verify(ids(len(PARENTS)), tree_mask=tree_mask(PARENTS))
    chain = dec.verify(ids(12))["logits"]
    torch.testing.assert_close(chain, c.decoder().prefill(ids(12))["logits"], rtol=TOL, atol=TOL)


def test_a_tree_past_a_models_own_index_placed_window_is_refused_and_within_it_is_exact():
    """A model's own sliding window (Mistral: canonicalize makes `attention{window}`) stays placed by index:
    the decoder refuses a tree once the sequence passes it (it would drop keys), and runs one that fits."""
    t = transformers
    cfg = t.MistralConfig(num_key_value_heads=2, sliding_window=24, hidden_size=64, intermediate_size=96,
                          num_hidden_layers=2, num_attention_heads=4, vocab_size=96, max_position_embeddings=128)
    torch.manual_seed(0)
    mistral = t.MistralForCausalLM(cfg).eval()
    c = slimgraph.optimize(mistral, (torch.zeros(1, 4, dtype=torch.long),), target="torch")
    windows = [n.attrs.get("window") for n in c.graph.nodes if n.op == "attention"]
    assert windows and all(w for w in windows)                          # the model's window is attention{window}
    tokens = ids(len(PARENTS), seed=4)
    got, _ = tree_logits(c, ids(8, seed=3), tokens)                     # 8 + 12 <= the window: exact
    for i in (9, 11):
        want, _ = decoded(c, ids(8, seed=3), tokens[0, path_to(i)].tolist())
        torch.testing.assert_close(got[:, i], want, rtol=TOL, atol=TOL)
    dec = c.decoder()
    dec.prefill(ids(40, seed=3))
    with pytest.raises(DecoderError, match="past the model's own sliding window"):
        dec.verify(tokens, tree_mask=tree_mask(PARENTS))
    dec.verify(tokens)                                                  # a chain is fine
    # generate(): past the window every verify is one chain (the lookup's, else the tree's greedy path), so fixed
    # trees, wide or deep, with or without lookup, decode as plain greedy does on either side of the window
    from slimgraph.generate import generate
    heads = slimgraph.optimize(mistral, (torch.zeros(1, 4, dtype=torch.long),), target="torch",
                               pipeline="canonicalize,insert-draft-heads{num_heads=3}")
    for p, n in ((ids(8, seed=3), 30), (ids(20, seed=5), 4), (ids(22, seed=6), 5)):
        plain = generate(heads, p, n, speculative=False)
        for tree in ([(0,), (1,), (0, 0)], [(0,), (1,), (2,), (0, 0), (1, 0), (0, 0, 0)], [(0,), (0, 0)]):
            for lookup in (0, 2):
                assert torch.equal(generate(heads, p, n, speculative="tree", tree=tree, lookup=lookup), plain), \
                    (p.shape, n, tree, lookup)


@pytest.mark.parametrize("kind", ["sliding_window", "block_sparse"])
def test_after_a_rewrite_a_models_own_window_is_placed_by_position_and_trees_run_past_it(kind):
    """sparsify-attention moves Mistral's own window into the mask, by position (and-ed with its ring band or
    blocks): the decoder takes the tree the plain model refuses above, each node gets its path's plain-decoding
    logits, and speculative generate with a Medusa tree is token-identical to plain greedy."""
    t = transformers
    cfg = t.MistralConfig(num_key_value_heads=2, sliding_window=12, hidden_size=64, intermediate_size=96,
                          num_hidden_layers=2, num_attention_heads=4, vocab_size=96, max_position_embeddings=128,
                          bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    mistral = t.MistralForCausalLM(cfg).eval()
    c = slimgraph.optimize(mistral, (torch.zeros(1, 4, dtype=torch.long),), target="torch",
                           pipeline=KINDS[kind][0] + ",insert-draft-heads{num_heads=3}")
    assert not any(n.attrs.get("window") for n in c.graph.nodes if n.op == "attention")
    gen = torch.Generator().manual_seed(0)
    for name, w in sorted(c.graph.weights.items()):
        if name.startswith("draft_heads."):
            w.tensor = 0.3 * torch.randn(w.type.shape, generator=gen)
    rebuild_runner(c)
    prompt, tokens = ids(40, seed=3), ids(len(PARENTS), seed=4)    # 40 + 12 candidates: past the window 11
    got, dec = tree_logits(c, prompt, tokens)
    for i in range(len(PARENTS)):
        want, _ = decoded(c, prompt, tokens[0, path_to(i)].tolist())
        torch.testing.assert_close(got[:, i], want, rtol=TOL, atol=TOL, msg=lambda m: f"node {i}: {m}")
    p = ids(14, seed=7)
    want = generate(c, p, 36, speculative=False)
    assert torch.equal(generate(c, p, 36, speculative="tree"), want)
    assert c.last_generate_stats.speculative == "tree" and c.last_generate_stats.verifies >= 1
