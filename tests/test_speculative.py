"""Draft heads end to end on a tiny random Llama: self-distillation (deterministic, improves the heads,
kept by save/load) and speculative decoding (chain, tree) token-identical to plain greedy decoding."""
import pytest
import torch

import slimgraph
from slimgraph.draft import DraftTrainingError
from slimgraph.generate import GenerateError, generate

transformers = pytest.importorskip("transformers")
from tiny_lm import tiny_llama  # noqa: E402
VOCAB = 96




def compile_(target, heads=3, pipeline="canonicalize,"):
    return slimgraph.optimize(tiny_llama(), (torch.zeros(1, 4, dtype=torch.long),), target=target,
                              pipeline=f"{pipeline}insert-draft-heads{{num_heads={heads}}}")


def prompts(n, length=8, seed=1):
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def randomize_heads(compiled, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    for name, w in compiled.graph.weights.items():
        if name.startswith("draft_heads."):
            w.tensor = torch.randn(w.type.shape, generator=g) * scale
    slimgraph.draft.rebuild_runner(compiled)


@pytest.fixture(scope="module", params=["reference", "torch"])
def random_heads(request):
    c = compile_(request.param)
    randomize_heads(c)
    return c


@pytest.fixture(scope="module")
def trained():
    c = compile_("torch", heads=3)
    report = slimgraph.train_draft_heads(c, prompts=prompts(24, seed=5), new_tokens=40, steps=150,
                                         time_budget_s=None, lr=3e-3, seed=0, progress=False)
    return c, report


def check_identical(c, ps, new=24, tree=None):
    """Chain, fixed tree (`tree`, default the Medusa-style DEFAULT_TREE cut to the heads) and dynamic tree
    decoding equal plain greedy decoding; returns the chain's and the fixed tree's acceptance lengths (the
    dynamic tree's depends on timing: it verifies what pays off on this machine)."""
    from slimgraph.speculative import DEFAULT_TREE, num_heads
    fixed = tree or [t for t in DEFAULT_TREE if len(t) <= num_heads(c.graph)]
    acc = []
    for p in ps:
        want = generate(c, p[None], new, speculative=False)
        for mode, t in (("chain", None), ("tree", fixed), ("tree", "dynamic")):
            got = generate(c, p[None], new, speculative=mode, tree=t)
            assert torch.equal(got, want), (mode, t, p)
            st = c.last_generate_stats
            assert st.speculative == mode and st.new_tokens == new and st.verifies >= 1
            assert 1.0 <= st.mean_acceptance <= 1 + 3      # at most the bonus + all 3 heads per verify
            if t != "dynamic":
                acc.append(st.mean_acceptance)
    return acc


def test_speculative_output_equals_plain_greedy_with_random_heads(random_heads):
    check_identical(random_heads, prompts(3))


def test_training_is_deterministic_improves_the_heads_and_decoding_stays_identical(trained):
    c, report = trained
    assert report.steps == 150 and report.heads == 3 and report.positions > 0
    assert sum(report.heldout_top1) > sum(report.heldout_top1_before) + 0.1
    assert report.loss[-1] < report.loss[0]
    acc = check_identical(c, prompts(3, seed=9))       # prompts not trained on
    assert sum(acc) / len(acc) > 1.2                   # trained heads get drafts accepted
    again = compile_("torch", heads=3)
    slimgraph.train_draft_heads(again, prompts=prompts(24, seed=5), new_tokens=40, steps=150,
                                time_budget_s=None, lr=3e-3, seed=0, progress=False)
    for i in range(3):
        name = f"draft_heads.{i}.weight"
        assert torch.equal(again.graph.weights[name].tensor, c.graph.weights[name].tensor)
        assert c.graph.weights[name].tensor.abs().max() > 0


def test_trained_heads_survive_an_artifact_round_trip(trained, tmp_path):
    c, _ = trained
    c.save(tmp_path / "m.sg")
    back = slimgraph.load(tmp_path / "m.sg")
    for i in range(3):
        name = f"draft_heads.{i}.weight"
        assert torch.equal(back.graph.weights[name].tensor, c.graph.weights[name].tensor)
    p = prompts(1, seed=11)
    # a fixed tree: the dynamic one sizes its verifies from measured timings, so its verify count varies by run
    tree = [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]
    assert torch.equal(generate(back, p, 30, speculative="tree", tree=tree),
                       generate(c, p, 30, speculative="tree", tree=tree))
    assert back.last_generate_stats.verifies == c.last_generate_stats.verifies


def test_int4_base_with_float_heads_decodes_identically():
    c = compile_("torch", heads=2, pipeline="quantize-weights{bits=4,group=32},fuse-dequant-matmul,")
    randomize_heads(c)
    check_identical(c, prompts(2, seed=3), new=24)


def test_eos_and_max_new_tokens_match_plain_decoding(random_heads):
    c = random_heads
    p = prompts(1, seed=4)
    plain = generate(c, p, 20, speculative=False)
    eos = int(plain[0, 8 + 10])          # a token the greedy output produces: generation stops there
    want = generate(c, p, 20, speculative=False, eos_token_id=eos)
    for mode in ("chain", "tree"):
        assert torch.equal(generate(c, p, 20, speculative=mode, eos_token_id=eos), want)
        for n in (0, 1, 2, 7):
            assert torch.equal(generate(c, p, n, speculative=mode), plain[:, :8 + n])


def test_auto_mode_uses_the_heads_for_greedy_batch_1_only(random_heads):
    c = random_heads
    generate(c, prompts(1), 10)
    assert c.last_generate_stats.speculative == "tree"            # greedy: the dynamic tree
    generate(c, prompts(1), 10, do_sample=True)
    assert c.last_generate_stats.speculative == "chain"           # sampled: a chain (the rejection rule)
    generate(c, prompts(2), 10)
    assert c.last_generate_stats.speculative is None


def test_clear_errors():
    plain = slimgraph.optimize(tiny_llama(), (torch.zeros(1, 4, dtype=torch.long),), target="reference")
    with pytest.raises(GenerateError, match="needs draft heads"):
        generate(plain, prompts(1), 4, speculative=True)
    with pytest.raises(DraftTrainingError, match="no draft heads"):
        slimgraph.train_draft_heads(plain, prompts=prompts(2))
    c = compile_("reference", heads=2)
    with pytest.raises(GenerateError, match=r"depth 3; this graph has 2 draft heads"):
        generate(c, prompts(1), 4, speculative="tree", tree=[(0,), (0, 0), (0, 0, 0)])
    with pytest.raises(GenerateError, match=r"parent \(1,\) is not in the tree"):
        generate(c, prompts(1), 4, speculative="tree", tree=[(0,), (1, 0)])
    with pytest.raises(GenerateError, match="the speculative tree runs one prompt"):
        generate(c, prompts(2), 4, speculative="tree")
    with pytest.raises(GenerateError, match="the tree is greedy only"):
        generate(c, prompts(1), 4, speculative="tree", do_sample=True)
    with pytest.raises(GenerateError, match="speculative='beam'"):
        generate(c, prompts(1), 4, speculative="beam")


@pytest.mark.slow
@pytest.mark.real_model
def test_speculative_smollm2_example():
    import os
    import subprocess
    import sys
    from pathlib import Path
    from slimgraph import zoo
    if not zoo.available("smollm2-135m"):
        (pytest.fail if os.environ.get("CI") else pytest.skip)(zoo.MODELS["smollm2-135m"].install)
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(root / "examples" / "speculative_smollm2.py"), "--train-s", "10"],
                       capture_output=True, text=True, cwd=root, timeout=1800)
    assert p.returncode == 0, p.stderr[-4000:]
    for label in ("chain", "tree (fixed)", "tree (dynamic)", "tree+lookup (dynamic)"):
        assert f"{label}: same tokens as greedy: True" in p.stdout, (label, p.stdout[-2000:])


# ---- EAGLE heads (kind=eagle) ---------------------------------------------------------------------------
def compile_eagle(target, steps=3, pipeline="canonicalize,"):
    return slimgraph.optimize(tiny_llama(), (torch.zeros(1, 4, dtype=torch.long),), target=target,
                              pipeline=f"{pipeline}insert-draft-heads{{num_heads={steps},kind=eagle}}")


@pytest.fixture(scope="module", params=["reference", "torch"])
def random_eagle(request):
    return compile_eagle(request.param)      # the pass's seeded random init: drafts are poor but real


def test_eagle_speculative_output_equals_plain_greedy(random_eagle):
    check_identical(random_eagle, prompts(3))
    check_identical(random_eagle, prompts(1, seed=8), new=24, tree=[(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])


def test_eagle_layer_is_a_llama_decoder_layer():
    """eagle.layer (q/k/v and gate/up fused, as training and drafting both run it) computes transformers'
    LlamaDecoderLayer with the same weights (RMSNorm eps 1e-6, RoPE theta 10000, SwiGLU, no biases): the
    independent oracle for the layer's math, in float32 and, within bf16 rounding, in the drafter's bf16."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
    from slimgraph import eagle as E
    g = compile_eagle("reference").graph
    gen = torch.Generator().manual_seed(0)
    P = {n: t + torch.randn(t.shape, generator=gen) * 0.1 for n, t in E.params(g).items()}
    _, heads, _ = E.config(g)
    d, inter = P["q.weight"].shape[1], P["gate.weight"].shape[0]
    cfg = LlamaConfig(hidden_size=d, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=heads,
                      rms_norm_eps=E.EPS, rope_theta=E.ROPE_THETA, attn_implementation="sdpa")
    hf = LlamaDecoderLayer(cfg, 0).eval()
    names = {"input_layernorm.weight": "ln1.weight", "post_attention_layernorm.weight": "ln2.weight",
             "self_attn.q_proj.weight": "q.weight", "self_attn.k_proj.weight": "k.weight",
             "self_attn.v_proj.weight": "v.weight", "self_attn.o_proj.weight": "o.weight",
             "mlp.gate_proj.weight": "gate.weight", "mlp.up_proj.weight": "up.weight",
             "mlp.down_proj.weight": "down.weight"}
    hf.load_state_dict({k: P[v] for k, v in names.items()})
    x, pos = torch.randn(1, 7, d, generator=gen), torch.arange(3, 10)
    with torch.no_grad():
        want = hf(x, position_embeddings=LlamaRotaryEmbedding(cfg)(x, pos[None]))
        want = want[0] if isinstance(want, tuple) else want
        got = E.layer(E.weights(P), heads, x, pos)[0]
        got16 = E.layer(E.weights(P, torch.bfloat16), heads, x, pos)[0]
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), float((got - want).abs().max())
    assert float((got16 - want).abs().max()) < 0.05 * float(want.abs().max())


def test_eagle_drafter_cache_matches_a_full_recomputation():
    """Drafting with the drafter's KV cache (extend in pieces, then a chain) equals recomputing the layer
    over the whole sequence each step (slimgraph/eagle.py's math, no cache)."""
    from slimgraph import eagle as E
    from slimgraph.speculative import chain
    c = compile_eagle("reference")
    g = c.graph
    W, (steps, heads, _) = E.weights(E.params(g)), E.config(g)
    torch.manual_seed(0)
    feats, toks = torch.randn(9, 64), torch.randint(0, VOCAB, (9,))
    d = E.EagleDrafter(g, dtype=torch.float32)     # the cache logic, exactly (drafting defaults to bf16)
    d.extend(feats[:4], toks[:4])
    d.extend(feats[4:], toks[4:])
    got = d.draft_tree(chain(3))
    f, t, want = feats, toks, []
    for _ in range(3):
        out = E.layer(W, heads, E.fuse(W, f, d.embed[t])[None], torch.arange(len(t)))[0][0]
        nxt = int(d.logits(out[-1:]).argmax())
        want.append(nxt)
        f, t = torch.cat((f, out[-1:])), torch.cat((t, torch.tensor([nxt])))
    # f's appended rows are the predicted features; the token after each is the drafted one
    assert got == want


def test_unrolled_training_drafts_equal_the_drafters_chains_from_every_start():
    """eagle.unrolled (all chains at once, as training measures them) drafts what EagleDrafter drafts:
    from every real start i, step j's argmax at position i + j - 1 is the chain's j-th token, when the
    chain's own drafted tokens are fed as the tokens after (teacher forcing on an accepted path)."""
    from slimgraph import eagle as E
    from slimgraph.speculative import chain
    c = compile_eagle("reference", steps=4)
    randomize_eagle = torch.Generator().manual_seed(3)
    for name in E.PARAMS:                           # larger random weights: drafts that vary with the context
        w = c.graph.weights[E.EAGLE + name]
        w.tensor = w.tensor + torch.randn(w.type.shape, generator=randomize_eagle) * 0.2
    g = c.graph
    W, (steps, heads, _) = E.weights(E.params(g)), E.config(g)
    torch.manual_seed(0)
    feats, toks = torch.randn(10, 64), torch.randint(0, VOCAB, (10,))
    seen = set()
    for i in range(1, 6):
        d = E.EagleDrafter(g, dtype=torch.float32)
        d.extend(feats[:i + 1], toks[:i + 1])
        drafted = d.draft_tree(chain(4))
        seen.add(tuple(drafted))
        nxt = torch.cat((toks[:i + 1], torch.tensor(drafted[:3]), toks[i + 4:]))   # x_{t+1} read at t
        outs = E.unrolled(W, heads, feats[None], d.embed[nxt][None], 4)
        got = [int(d.vocab_ids[d.logits(outs[j][0, i + j:i + j + 1]).argmax()]) for j in range(4)]
        assert got == drafted, i
        # chain_acceptance counts the whole chain from start i when the base's tokens are the drafted ones;
        # a later start s reaches a missing target (-100) within 4 steps: only start i accepts 4 tokens
        targets = torch.full((1, 10), -100, dtype=torch.long)
        inv = {int(t): r for r, t in enumerate(d.vocab_ids.tolist())}
        for j in range(4):
            targets[0, i + j] = inv[drafted[j]]
        per = E.chain_acceptance(outs, lambda o: d.logits(o.reshape(-1, 64)).view(*o.shape[:-1], -1), targets, i)
        assert per[-1] == pytest.approx(1 / (6 - i))      # starts i..5 have all 4 targets in 10 positions
    assert len(seen) > 1                            # the starts drafted different chains


@pytest.fixture(scope="module")
def trained_eagle():
    c = compile_eagle("torch", steps=3)
    report = slimgraph.train_draft_heads(c, prompts=prompts(24, seed=5), new_tokens=40, steps=150,
                                         time_budget_s=None, lr=3e-3, seed=0, progress=False, draft_vocab=64)
    return c, report


def test_eagle_training_is_deterministic_improves_and_survives_save_load(trained_eagle, tmp_path):
    c, report = trained_eagle
    assert report.steps == 150 and report.cpu_seconds > 0
    assert "an EAGLE layer drafting 3 tokens" in str(report) and "top-1 of its next-token draft" in str(report)
    assert report.heldout_top1[0] > report.heldout_top1_before[0] + 0.1
    assert report.loss[-1] < report.loss[0]
    assert int(c.graph.weights["draft_heads.eagle.config"].tensor[2]) == 64       # the draft vocabulary
    acc = check_identical(c, prompts(3, seed=9))
    assert sum(acc) / len(acc) > 1.2
    again = compile_eagle("torch", steps=3)
    slimgraph.train_draft_heads(again, prompts=prompts(24, seed=5), new_tokens=40, steps=150,
                                time_budget_s=None, lr=3e-3, seed=0, progress=False, draft_vocab=64)
    for name, w in c.graph.weights.items():
        if name.startswith("draft_heads."):
            assert torch.equal(again.graph.weights[name].tensor, w.tensor), name
    c.save(tmp_path / "e.sg")
    back = slimgraph.load(tmp_path / "e.sg")
    p = prompts(1, seed=11)
    # a fixed tree: the dynamic one sizes its verifies from measured timings, so its verify count varies by run
    tree = [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]
    assert torch.equal(generate(back, p, 30, speculative="tree", tree=tree),
                       generate(c, p, 30, speculative="tree", tree=tree))
    assert back.last_generate_stats.verifies == c.last_generate_stats.verifies


def test_the_held_out_chain_does_not_depend_on_the_evaluation_chunks(monkeypatch):
    """Held-out EAGLE evaluation runs in chunks of sequences (memory); the figures are those of one pass."""
    import slimgraph.draft as D
    reports = []
    for positions in (141, 10**9):                  # 3 sequences per chunk (47 positions each; 20 held out), or one pass
        monkeypatch.setattr(D, "EVAL_POSITIONS", positions)
        c = compile_eagle("torch", steps=3)
        reports.append(slimgraph.train_draft_heads(c, prompts=prompts(40, seed=5), new_tokens=40, steps=20,
                                                   time_budget_s=None, lr=3e-3, seed=0, progress=False,
                                                   draft_vocab=64, heldout=0.5))
    a, b = reports
    assert a.heldout_top1 == pytest.approx(b.heldout_top1) and a.heldout_chain == pytest.approx(b.heldout_chain)
    assert len(a.heldout_chain) == 3 and a.heldout_tokens_per_verify == pytest.approx(1 + sum(b.heldout_chain))


def test_eagle_on_an_int4_base_and_dce_keeps_its_weights():
    c = compile_eagle("torch", pipeline="quantize-weights{bits=4,group=32},fuse-dequant-matmul,")
    check_identical(c, prompts(2, seed=3), new=24)
    g = compile_eagle("reference", pipeline="canonicalize,").graph
    from slimgraph.passes.manager import run_pipeline
    run_pipeline(g, "dce")
    assert "draft_heads.eagle.fc.weight" in g.weights


@pytest.mark.parametrize("pipeline", ["canonicalize,", "canonicalize,merge-sibling-linears,",
                                      "canonicalize,quantize-weights{bits=4,group=32},fuse-dequant-matmul,"
                                      "merge-sibling-linears,"])
def test_the_eagle_layer_takes_the_models_own_mlp_width(pipeline):
    """tiny_llama's MLP is 128 wide: also after merge-sibling-linears made gate and up one [256, 64] matrix."""
    g = compile_eagle("reference", pipeline=pipeline).graph
    assert tuple(g.weights["draft_heads.eagle.gate.weight"].type.shape) == (128, 64)
    assert tuple(g.weights["draft_heads.eagle.down.weight"].type.shape) == (64, 128)


# ---- sampling: the rejection rule keeps the distribution ---------------------------------------------------
def exact_joint(c, prompt, n, temperature, top_k):
    """P(first n new tokens) of plain sampling, by enumeration: {tuple: prob}."""
    from slimgraph.generate import _probs
    dec = c.decoder(1)
    out = {(): 1.0}
    for _ in range(n):
        nxt = {}
        for seq, pr in out.items():
            ids = torch.cat((prompt, torch.tensor([seq], dtype=torch.long)), 1) if seq else prompt
            p = _probs(dec.prefill(ids)["logits"][:, -1], temperature, top_k)[0]
            for t in torch.nonzero(p).flatten().tolist():
                nxt[seq + (t,)] = pr * float(p[t])
        out = nxt
    return out


def chi_square_p(counts: dict, probs: dict, n: int) -> float:
    """p-value of Pearson's chi-square goodness of fit (cells with expected count < 5 pooled)."""
    cells = sorted(probs, key=probs.get, reverse=True)
    big = [k for k in cells if probs[k] * n >= 5]
    obs = [counts.get(k, 0) for k in big] + [n - sum(counts.get(k, 0) for k in big)]
    exp = [probs[k] * n for k in big] + [n * (1 - sum(probs[k] for k in big))]
    if exp[-1] < 1e-9:
        obs, exp = obs[:-1], exp[:-1]
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    df = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64),
                                         torch.tensor(stat / 2.0, dtype=torch.float64)))


def sampled_counts(c, prompt, n, runs, **kw):
    counts = {}
    for seed in range(runs):
        out = generate(c, prompt, n, do_sample=True, generator=torch.Generator().manual_seed(seed), **kw)
        key = tuple(out[0, prompt.shape[1]:].tolist())
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.slow      # 2 x 500 sampled generations: ~1 min idle, far more on a loaded machine
@pytest.mark.parametrize("kind", ["medusa", "eagle"])
def test_speculative_sampling_keeps_the_distribution(kind, monkeypatch):
    """Joint law of the first 3 sampled tokens (token 1 from prefill, tokens 2-3 verified drafts): speculative
    sampling vs the exact law of plain sampling, chi-square p > 1e-3 over 500 seeds; the same test with
    every draft accepted (no rejection test) must fail it."""
    from slimgraph import speculative
    c = compile_eagle("torch") if kind == "eagle" else compile_("torch", heads=3)
    if kind == "medusa":
        randomize_heads(c, scale=1.0)
    kw = dict(temperature=0.02, top_k=3)
    prompt = prompts(1, seed=21)
    probs = exact_joint(c, prompt, 3, **kw)
    counts = sampled_counts(c, prompt, 3, 500, speculative="chain", **kw)
    st = c.last_generate_stats
    assert st.speculative == "chain"
    assert chi_square_p(counts, probs, 500) > 1e-3
    # the test can fail: a rule that keeps every draft (no rejection) samples the drafts' law instead
    def accept_all(drafts, q, p, generator):
        return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator))
    monkeypatch.setattr(speculative, "_rejection", accept_all)
    bad = sampled_counts(c, prompt, 3, 500, speculative="chain", **kw)
    assert chi_square_p(bad, probs, 500) < 1e-3


# ---- batch > 1: chains -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["medusa", "eagle"])
def test_batched_chains_equal_plain_batched_greedy(kind):
    c = compile_eagle("torch") if kind == "eagle" else compile_("torch", heads=3)
    if kind == "medusa":
        randomize_heads(c, scale=0.1)
    ids = prompts(3, length=8, seed=13)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[2, :1] = 0
    want = generate(c, ids, 20, speculative=False, attention_mask=mask)
    got = generate(c, ids, 20, speculative="chain", attention_mask=mask)
    assert torch.equal(got, want)
    st = c.last_generate_stats
    assert st.speculative == "chain" and 1 <= st.verifies <= 19
    for row in range(3):            # each row is what it generates alone
        alone = generate(c, ids[row:row + 1, int((mask[row] == 0).sum()):], 20, speculative="chain")
        assert torch.equal(alone[0, -20:], got[row, -20:])
    eos = int(want[1, 8 + 6])       # row 1 stops there; the batch runs on until every row has stopped
    want_e = generate(c, ids, 20, speculative=False, attention_mask=mask, eos_token_id=eos)
    assert torch.equal(generate(c, ids, 20, speculative="chain", attention_mask=mask, eos_token_id=eos), want_e)


def test_eagle_reads_a_quantized_embedding_table():
    """A tied int8 head quantizes the embedding too (a `qembedding` lookup): the drafter still finds the table."""
    from slimgraph.eagle import embedding_table
    m = tiny_llama()
    c = slimgraph.optimize(m, (torch.zeros(1, 4, dtype=torch.long),), target="reference",
                           pipeline="quantize-weights{bits=8,group=0,include=[lm_head.weight,model.embed_tokens.weight]},"
                                    "fuse-dequant-matmul,insert-draft-heads{num_heads=2,kind=eagle}")
    ids = next(v for v in c.graph.inputs if v.name == "input_ids")
    assert [n.op for n in ids.users] == ["qembedding"]
    torch.testing.assert_close(embedding_table(c.graph), m.model.embed_tokens.weight.detach(), rtol=0, atol=2e-3)


@pytest.mark.parametrize("kind", ["medusa", "eagle"])
def test_a_bf16_model_trains_its_heads_in_its_own_dtype_and_decodes_identically(kind):
    """A model traced in bf16: the heads (and the lm_head they share) are bf16 weights; training reads the
    lm_head at the model's dtype, trains in float, stores the heads back in bf16, and decoding stays greedy."""
    c = slimgraph.optimize(tiny_llama().to(torch.bfloat16), (torch.zeros(1, 4, dtype=torch.long),), target="torch",
                           pipeline=f"canonicalize,insert-draft-heads{{num_heads=2,kind={kind}}}")
    before = {n: w.tensor.clone() for n, w in c.graph.weights.items() if n.startswith("draft_heads.")}
    report = slimgraph.train_draft_heads(c, prompts=prompts(8, seed=5), new_tokens=12, steps=20,
                                         time_budget_s=None, seed=0, progress=False)
    assert report.steps == 20
    heads = {n: w.tensor for n, w in c.graph.weights.items() if n.startswith("draft_heads.")}
    assert all(heads[n].dtype == before[n].dtype for n in before)
    assert any(not torch.equal(heads[n], before[n]) for n in before if heads[n].is_floating_point())
    p = prompts(1, seed=7)
    want = generate(c, p, 16, speculative=False)
    assert torch.equal(generate(c, p, 16, speculative="chain"), want)


def test_a_tokenizers_all_ones_attention_mask_is_no_padding(random_heads):
    """tokenizer(...) returns an attention_mask of ones with the ids: passing it along (as with HF generate) is
    one unpadded prompt, so the tree, lookup and auto mode decode speculatively as without it."""
    p = prompts(1)
    ones = torch.ones_like(p)
    want = generate(random_heads, p, 12, speculative=False)
    for kw in (dict(speculative="tree"), dict(lookup=3), {}):
        assert torch.equal(generate(random_heads, p, 12, attention_mask=ones, **kw), want), kw
        assert random_heads.last_generate_stats.speculative, kw


# --- prompt lookup drafting (slimgraph.speculative.NgramIndex) ---------------------------------------------

def test_ngram_index_drafts_what_followed_the_last_occurrence_of_the_longest_suffix():
    """The draft follows the most recent earlier occurrence of the longest suffix n-gram; a match shorter
    than nmax drafts half as many tokens per missing token (at least one)."""
    from slimgraph.speculative import NgramIndex
    idx = NgramIndex([5, 6, 7, 8, 9, 1, 6, 7, 2, 6, 7], nmax=3)
    assert idx.draft(8) == [2, 6, 7]          # suffix (6, 7): most recent earlier occurrence is followed by 2;
    assert idx.draft(4) == [2, 6]             # a 2-gram match drafts k / 2
    idx.extend([8])                           # suffix (6, 7, 8) occurred once, followed by 9 1 6
    assert idx.draft(3) == [9, 1, 6]          # a full 3-gram match drafts k
    assert idx.draft(10) == [9, 1, 6, 7, 2, 6, 7, 8]   # runs to the end of the context
    assert idx.draft(0) == []
    assert NgramIndex([1, 2, 3]).draft(4) == []        # no suffix n-gram occurred before
    assert NgramIndex([4, 4, 5, 4]).draft(8) == [5, 4]   # a 1-gram (nmax 3): k / 4 tokens after the last earlier 4
    assert NgramIndex([4, 4]).draft(2) == [4]          # ... and at least one
    with pytest.raises(Exception, match="nmin <= nmax"):
        NgramIndex([], nmax=1, nmin=2)


def test_candidates_merge_a_lookup_chain_into_the_tree_as_a_trie():
    from slimgraph.speculative import Candidates, Tree
    tree = Tree([(0,), (1,), (0, 0)], heads=2)          # nodes: 0, (0,), (1,), (0, 0)
    c = Candidates(10, tree, [11, 12, 13], chains=[[11, 13, 14]])   # shares (0,) and (0, 0), adds one node
    assert c.ids == [10, 11, 12, 13, 14] and c.parent == [-1, 0, 0, 1, 3] and c.depth == [0, 1, 1, 2, 3]
    assert c.mask[4].tolist() == [True, True, False, True, True]    # node 4 sees its ancestors only
    # base argmax per node: after 10 -> 11, after 11 -> 13, after 13 -> 14, after 14 -> 99: all accepted
    assert c.accepted_path([11, 13, 0, 14, 99]) == [0, 1, 3, 4]
    assert c.accepted_path([12, 0, 0, 0, 0]) == [0, 2]
    chain_only = Candidates(10, None, (), chains=[[1, 2, 3]])
    assert chain_only.is_chain and chain_only.mask is None and chain_only.ids == [10, 1, 2, 3]


def repetitive_prompt():
    return torch.tensor([[7, 8, 9, 10, 11, 7, 8, 9, 10, 11, 7, 8, 9, 10, 11, 7, 8]])


@pytest.mark.parametrize("target", ["reference", "torch"])
def test_lookup_alone_needs_no_heads_and_keeps_the_greedy_output(target):
    c = slimgraph.optimize(tiny_llama(), (torch.zeros(1, 4, dtype=torch.long),), target=target,
                           pipeline="canonicalize")
    for p in [repetitive_prompt(), *prompts(2)[:, None]]:
        want = generate(c, p, 24)
        got = generate(c, p, 24, lookup=6)
        assert torch.equal(got, want)
        st = c.last_generate_stats
        assert st.speculative == "lookup" and st.new_tokens == 24 and 1.0 <= st.mean_acceptance <= 7
    # a tiny random model's greedy output repeats: lookup must have accepted drafts somewhere
    accs = []
    for p in [repetitive_prompt(), *prompts(3, seed=4)[:, None]]:
        generate(c, p, 32, lookup=6)
        accs.append(c.last_generate_stats.mean_acceptance)
    assert max(accs) > 1.5, accs


def test_lookup_joins_the_heads_chain_and_tree_and_keeps_the_greedy_output(random_heads):
    for p in [repetitive_prompt(), *prompts(2, seed=3)[:, None]]:
        want = generate(random_heads, p, 24, speculative=False)
        for mode in ("chain", "tree"):
            got = generate(random_heads, p, 24, speculative=mode, lookup=5)
            assert torch.equal(got, want), mode
            assert random_heads.last_generate_stats.speculative == mode + "+lookup"


def test_lookup_errors_name_the_fix():
    c = compile_("reference")
    with pytest.raises(GenerateError, match="batch 1"):
        generate(c, prompts(2), 4, lookup=4)
    with pytest.raises(GenerateError, match="greedy only"):
        generate(c, prompts(1), 4, lookup=4, do_sample=True)
    with pytest.raises(GenerateError, match="int >= 0"):
        generate(c, prompts(1), 4, lookup=-1)
    with pytest.raises(GenerateError, match="drop speculative=False"):
        generate(c, prompts(1), 4, lookup=4, speculative=False)
    plain = slimgraph.optimize(tiny_llama(), (torch.zeros(1, 4, dtype=torch.long),), target="reference",
                               pipeline="canonicalize")
    with pytest.raises(GenerateError, match="lookup=8"):
        generate(plain, prompts(1), 4, speculative="chain")


def test_training_and_prompt_options_that_cannot_work_are_clear_errors():
    from slimgraph.draft import prompt_ids

    class CharTokenizer:                       # one token per character, ids below VOCAB
        def __call__(self, text, return_tensors="pt"):
            class Out:
                input_ids = torch.tensor([[ord(ch) % VOCAB for ch in text]])
            return Out()
    tok = CharTokenizer()
    with pytest.raises(DraftTrainingError, match="fewer prompts"):
        prompt_ids(tok, "too short", n=2, prompt_tokens=8)
    with pytest.raises(DraftTrainingError, match="fewer prompts"):
        prompt_ids(tok, "", n=1, prompt_tokens=8)
    with pytest.raises(DraftTrainingError, match="no document has 50 tokens"):
        prompt_ids(tok, ["short", "also short"], n=2, prompt_tokens=50)
    rows = prompt_ids(tok, ["a" * 40 + "b" * 40, "c" * 60], n=7, prompt_tokens=16)   # cycles over 2 documents
    assert rows.shape == (7, 16)
    assert torch.equal(rows, prompt_ids(tok, ["a" * 40 + "b" * 40, "c" * 60], n=7, prompt_tokens=16))
    c = compile_("reference", heads=2)
    for kw, msg in (({"new_tokens": 1}, "new_tokens >= 2"), ({"draft_vocab": 1}, "at least 2 tokens"),
                    ({"heldout": 1.0}, "0 <= heldout < 1"), ({"data": (None, None)}, "prompts` it was made from")):
        with pytest.raises(DraftTrainingError, match=msg):
            slimgraph.train_draft_heads(c, **({"prompts": prompts(2)} if "data" not in kw else {}), **kw,
                                        progress=False)


def test_generate_refuses_a_tree_argument_it_would_ignore(random_heads):
    with pytest.raises(GenerateError, match="speculative='tree' only"):
        generate(random_heads, prompts(1), 4, speculative="chain", tree=[(0,)])
    with pytest.raises(GenerateError, match="batch 1, no padding"):
        generate(random_heads, prompts(2), 4, tree=[(0,)])            # a batch verifies chains
    with pytest.raises(GenerateError, match="ranks must be in"):
        generate(random_heads, prompts(1), 4, speculative="tree", tree=[(0,), (VOCAB + 5,)])
    with pytest.raises(GenerateError, match="give 1..63 paths, got 0"):     # not silently the default tree
        generate(random_heads, prompts(1), 4, speculative="tree", tree=[])


def test_lookup_with_heads_on_an_index_windowed_model_falls_back_to_one_chain():
    """Mistral's own window (attention{window}, placed by index) refuses candidate trees past it: a heads
    chain + lookup branch (a tree when they disagree) then verifies one chain instead, never fails."""
    cfg = transformers.MistralConfig(num_key_value_heads=2, sliding_window=12, hidden_size=64, intermediate_size=96,
                                     num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
                                     max_position_embeddings=128)
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(cfg).eval()
    c = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="torch",
                           pipeline="canonicalize,insert-draft-heads{num_heads=3}")
    randomize_heads(c)
    p = repetitive_prompt()
    want = generate(c, p, 40, speculative=False)
    assert torch.equal(generate(c, p, 40, speculative="chain", lookup=6), want)     # runs past the window
    assert torch.equal(generate(c, p, 40, lookup=6), want)                          # the dynamic tree too


def test_bench_speculative_lookup_list_and_modes_are_checked_before_any_model_loads():
    """benchmarks/bench_speculative.py --lookup 7,11 runs the `lookup` mode once per draft length; a length that
    is not a positive integer, a repeated one (its rows would be counted twice) or an unknown mode is an
    argument error naming the fix (it was a ValueError traceback, or a KeyError after loading and training)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_speculative.py"
    spec = importlib.util.spec_from_file_location("bench_speculative", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse_modes("plain,lookup,medusa-tree+lookup", "7,11") == (
        [7, 11], ["plain", "lookup7", "lookup11", "medusa-tree+lookup"])
    assert bench.parse_modes("plain,lookup", "8") == ([8], ["plain", "lookup"])
    assert bench.parse_modes("lookup3,lookup", "5")[1] == ["lookup3", "lookup"]
    for modes, lookup, match in (("lookup", "7,", "comma-separated positive integers"),
                                 ("lookup", "seven", "comma-separated positive integers"),
                                 ("lookup", "0", "distinct positive integers"),
                                 ("lookup", "7,7", "distinct positive integers"),
                                 ("plain,medusa-trees", "8", "unknown medusa-trees"),
                                 ("lookup,lookup7", "7,11", "listed twice")):
        with pytest.raises(ValueError, match=match):
            bench.parse_modes(modes, lookup)


def test_a_long_lookup_draft_is_cut_to_the_rows_a_verify_runs_as_steps(monkeypatch):
    """lookup=100 asks for up to 100 drafted tokens, but a verify runs at most MAX_VERIFY (64) candidates: the torch
    target computes that many rows after a cache as the decode steps at their places (codegen/torch_kernels.
    STEP_ROWS), so on a quantized base the greedy output stays the plain greedy output bit for bit; a 65-row
    verify ran the one-call attention (logits ~1e-2 off the steps)."""
    from slimgraph import speculative
    from slimgraph.decoder import Decoder
    c = slimgraph.optimize(tiny_llama(), (torch.zeros(1, 4, dtype=torch.long),), target="torch", pipeline=(
        "canonicalize,quantize-weights{bits=4,group=32},quantize-weights{bits=8,group=0,include=[lm_head.weight]},"
        "fuse-dequant-matmul,cse,dce"))
    p = prompts(1, seed=2)
    want = generate(c, p, 90, speculative=False)
    monkeypatch.setattr(speculative.NgramIndex, "draft", lambda self, k: [int(t) for t in want[0, -k:]] if k else [])
    sizes = []
    verify = Decoder.verify
    monkeypatch.setattr(Decoder, "verify", lambda self, cands, **kw: sizes.append(cands.shape[1]) or verify(self, cands, **kw))
    assert torch.equal(generate(c, p, 90, lookup=100), want)
    assert max(sizes) == 64, sizes
    assert speculative.MAX_VERIFY == 64


def test_training_never_leaves_medusa_heads_worse_than_it_found_them():
    """The loss ranks only the tokens of the base's continuations (the training vocabulary); on a model that
    keeps repeating itself that is a handful of tokens, and the heads learn to order them while tokens outside
    rise above them in the full-vocabulary argmax that decoding runs. The initial heads are then kept."""
    c = compile_("torch", heads=2)
    p = torch.randint(0, VOCAB, (8, 4), generator=torch.Generator().manual_seed(0))
    report = slimgraph.train_draft_heads(c, prompts=p, new_tokens=48, steps=300, time_budget_s=None, progress=False)
    assert report.heldout_top1_before == [1.0, 1.0]               # zero heads: the base repeats its next token
    assert sum(report.heldout_top1) >= sum(report.heldout_top1_before)
    assert report.reverted and report.kept_step == 0 and "kept the initial parameters" in str(report)
    assert all(not c.graph.weights[f"draft_heads.{i}.weight"].tensor.any() for i in range(2))


def test_a_fixed_tree_is_cut_near_a_learned_position_tables_end():
    """GPT-2's positions are a table (n_positions): plain decoding fills it exactly, and a fixed tree deeper
    than the tokens still allowed is cut to them, so no verify reads a position past the table."""
    import transformers
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32,
                                  bos_token_id=None, eos_token_id=None)
    c = slimgraph.optimize(transformers.GPT2LMHeadModel(cfg).eval(), (torch.zeros(1, 4, dtype=torch.long),),
                           target="torch", pipeline="canonicalize,insert-draft-heads{num_heads=4}")
    p = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8]])
    want = generate(c, p, 24, speculative=False)                      # positions up to 30 of 0..31
    for tree in ([(0,), (0, 0), (0, 0, 0), (0, 0, 0, 0)], [(0,), (1,), (0, 0), (1, 0), (0, 0, 0)]):
        assert torch.equal(generate(c, p, 24, speculative="tree", tree=tree), want), tree
        assert torch.equal(generate(c, p, 24, speculative="tree", tree=tree, lookup=4), want), tree


def test_generate_refuses_a_non_integer_token_count_and_a_non_finite_temperature(random_heads):
    for bad in (1.5, True, "3"):
        with pytest.raises(GenerateError, match="max_new_tokens must be an int >= 0"):
            generate(random_heads, prompts(1), bad)
    for t in (float("nan"), float("inf"), 0.0):
        with pytest.raises(GenerateError, match="temperature must be a finite number > 0"):
            generate(random_heads, prompts(1), 4, do_sample=True, temperature=t)


@pytest.mark.parametrize("kwargs, match", [
    ({"new_tokens": 3}, r"give head 3 no target .* new_tokens >= 4 for 3 heads"),
    ({"prompts": torch.zeros(0, 8, dtype=torch.long)}, r"prompts must be .* got torch.int64 tensor of shape \(0, 8\)"),
    ({"prompts": torch.zeros(4, 0, dtype=torch.long)}, r"prompts must be .* shape \(4, 0\)"),
    ({"steps": -1}, "steps=-1"), ({"steps": 2.5}, "steps=2.5"),
    ({"time_budget_s": -1}, "time_budget_s=-1"), ({"cpu_budget_s": -0.5}, "cpu_budget_s=-0.5"),
    ({"batch_positions": 0}, "batch_positions=0"), ({"batch_positions": -3}, "batch_positions=-3"),
    ({"lr": float("inf")}, "lr=inf"), ({"lr": 0}, "lr=0"), ({"cpu_budget_s": float("nan")}, "cpu_budget_s=nan"),
])
def test_training_arguments_that_cannot_work_are_refused_before_any_work(random_heads, kwargs, match):
    args = {"prompts": prompts(4), "new_tokens": 8, "steps": 2, "time_budget_s": None, "progress": False, **kwargs}
    with pytest.raises(DraftTrainingError, match=match):
        slimgraph.train_draft_heads(random_heads, **args)


def test_numpy_numbers_are_training_arguments_too():
    import numpy as np
    c = compile_("torch", heads=2)
    r = slimgraph.train_draft_heads(c, prompts=prompts(6), new_tokens=np.int64(8), steps=np.int64(3),
                                    lr=np.float32(1e-3), time_budget_s=None, cpu_budget_s=np.float64(60),
                                    batch_positions=np.int32(64), progress=False)
    assert r.steps == 3


@pytest.mark.parametrize("kind", ["medusa", "eagle"])
def test_heads_that_end_as_they_began_stay_marked_untrained(recwarn, kind):
    """Training that keeps the initial heads (reverted: they lost held-out top-1; or the held-out loss was
    best before the first update) warns and leaves the model's report saying UNTRAINED, as a budget too small
    for one update does."""
    from slimgraph.trainable import untrained_components
    c = compile_("torch", heads=3) if kind == "medusa" else compile_eagle("torch")
    assert untrained_components(c)
    began = {n: w.tensor.clone() for n, w in c.graph.weights.items() if n.startswith("draft_heads.")}
    report = slimgraph.train_draft_heads(c, prompts=prompts(12, seed=5), new_tokens=12, steps=40,
                                         time_budget_s=None, lr=10.0, seed=0, progress=False, draft_vocab=16)
    assert report.reverted or report.kept_step == 0, str(report)      # lr 10 wrecks the heads
    assert untrained_components(c), str(report)
    for n, t in began.items():                      # exactly as they began: EAGLE's draft vocabulary and config too
        assert torch.equal(c.graph.weights[n].tensor, t), n
    assert any("keep the parameters they had before this call" in str(w.message) for w in recwarn)
