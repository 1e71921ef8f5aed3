"""linearize-attention: softmax attention -> (hybrid) linear attention over fixed (+ ring) states.

On a tiny random Llama: the rewritten graph verifies; reference and torch agree; one prefill equals
token-by-token decoding through the recurrent state (and chunks across the window); the state stays the
same size however long the sequence; a window covering the sequence is softmax attention exactly;
verify/accept replays; quantize-weights composes; save/load keeps trained maps; bad options are clear
errors. The op: the torch kernels (loop and all-chunks forms) equal the T x T reference and a naive
per-query loop written here. Distillation: budget, seed, progress and that it lowers the held-out error."""
import pytest
import torch

import slimgraph
from slimgraph import ir
from slimgraph.codegen.torch_linear_attention import linear_attention as kernel, parallel_chunks
from slimgraph.ir.verifier import verify
from slimgraph.linear_attention import DistillationError
from slimgraph.passes.base import PassError
from slimgraph.passes.pipeline import parse_pipeline

transformers = pytest.importorskip("transformers")
from tiny_lm import tiny_llama, tiny_windowed  # noqa: E402
TOL = 1e-5
PIPE = "canonicalize,linearize-attention{{feature_map={fm},window={w},sinks={s}}},dce"
REF = ir.get_op("linear_attention").impl


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


_CACHE = {}


def compile_(model, target="reference", w=6, fm="hedgehog", pipeline=None, randomize=True, s=0):
    """slimgraph.optimize once per (target, pipeline); the feature maps get seeded random weights (the
    identity init would hide head/weight mix-ups), the same for every target."""
    key = (id(model), target, pipeline or PIPE.format(fm=fm, w=w, s=s), randomize)
    if target == "cpu":
        pytest.importorskip("tvm", reason="the cpu target needs apache-tvm")
    if key not in _CACHE:
        c = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target=target,
                               pipeline=pipeline or PIPE.format(fm=fm, w=w, s=s), verify=True)
        if randomize:
            gen = torch.Generator().manual_seed(0)
            for name, v in sorted(c.graph.weights.items()):
                if name.startswith("linear_attention."):
                    v.tensor = v.tensor + 0.3 * torch.randn(v.tensor.shape, generator=gen)
            from slimgraph.draft import rebuild_runner
            rebuild_runner(c)
        _CACHE[key] = c
    return _CACHE[key]


def ids(n, seed=1, batch=1):
    return torch.randint(0, 96, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_hybrid_rewrite_makes_ring_and_fixed_states(model):
    g = compile_(model).graph
    verify(g)
    kinds = [s.kind for s in g.states]
    assert kinds.count("ring") == 4 and kinds.count("fixed") == 4
    assert all(s.attrs == {"axis": 2, "window": 6, "sinks": 0} for s in g.states if s.kind == "ring")
    assert not any(n.op == "attention" for n in g.nodes)
    nodes = [n for n in g.nodes if n.op == "linear_attention"]
    assert len(nodes) == 2 and all(n.attrs["window"] == 6 and n.attrs["feature_map"] == "hedgehog" for n in nodes)
    fixed = {s.name: s.input.type.shape for s in g.states if s.kind == "fixed"}
    assert fixed["kv_0"] == ("batch", 2, 32, 16) and fixed["z_0"] == ("batch", 2, 32)     # f = 2 x 16 (hedgehog)
    assert g.weights["linear_attention.0.wq"].type.shape == (4, 16, 16)
    assert g.weights["linear_attention.0.wk"].type.shape == (2, 16, 16)
    assert next(v for v in g.inputs if v.name == "attention_mask").type.shape[-1] == "ctx"


def test_pure_rewrite_drops_the_kv_cache(model):
    g = compile_(model, w=0, fm="elu").graph
    verify(g)
    assert [s.kind for s in g.states] == ["fixed"] * 4
    assert not any(v.name.startswith("past_key") or v.name.startswith("past_value") for v in g.inputs)
    assert not any(n.op in ("cache_append", "cache_window") for n in g.nodes)
    assert {s.name: s.input.type.shape for s in g.states}["kv_1"] == ("batch", 2, 16, 16)   # f = 16 (elu)


@pytest.mark.parametrize("w", [6, 0])
def test_past_key_values_is_none_when_the_state_is_not_a_kv_cache(model, w):
    """model(ids).past_key_values is the KV cache as (key, value) pairs per layer. The linear states kv/z
    are no keys and values, and a hybrid's ring alone is not its cache: None (the Decoder holds every state).
    Before, the states were paired blindly: (kv, z) labelled as (key, value), 4 pairs for 2 layers."""
    x = ids(10)
    assert compile_(model, w=w)(x).past_key_values is None
    plain = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="reference",
                               pipeline="canonicalize,insert-draft-heads{num_heads=2},dce")
    pkv = plain(x).past_key_values      # draft heads' outputs are no pair either
    names = [v.name for v in plain.graph.outputs]
    assert len(pkv) == 2 and all(k.shape == v.shape == (1, 2, 10, 16) for k, v in pkv)
    dec = plain.decoder()
    dec.prefill(x)
    for (k, v), (dk, dv) in zip(pkv, zip(dec.states[::2], dec.states[1::2])):
        assert torch.equal(k, dk) and torch.equal(v, dv), names


@pytest.mark.parametrize("target", ["reference", "torch", "cpu"])
@pytest.mark.parametrize("w,fm,s", [(6, "hedgehog", 0), (6, "hedgehog", 2), (0, "hedgehog", 0), (4, "elu", 3),
                                    (0, "relu2", 0)])
def test_prefill_equals_token_by_token_decoding(model, target, w, fm, s):
    n = 40
    c = compile_(model, target, w, fm, s=s)
    x = ids(n)
    full = c.decoder().prefill(x)["logits"]
    dec = c.decoder()
    dec.prefill(x[:, :3])
    shapes = [tuple(t.shape) for t in dec.states]
    steps = torch.cat([dec.step(x[:, i])["logits"] for i in range(3, n)], 1)
    torch.testing.assert_close(steps, full[:, 3:], rtol=TOL, atol=TOL)
    fixed = [i for i, s in enumerate(c.graph.states) if s.kind == "fixed"]
    assert [tuple(dec.states[i].shape) for i in fixed] == [shapes[i] for i in fixed]    # O(1) memory
    assert all(t.shape[2] == w + s for t, st in zip(dec.states, c.graph.states) if st.kind == "ring")
    chunked = c.decoder()                                       # chunks of several tokens across the window
    chunked.prefill(x[:, :5])
    got = torch.cat([chunked.step(x[:, i:i + 7])["logits"] for i in range(5, n, 7)], 1)
    torch.testing.assert_close(got, full[:, 5:], rtol=TOL, atol=TOL)


@pytest.mark.parametrize("w", [6, 0])
def test_targets_agree_with_the_interpreter_on_a_left_padded_batch(model, w):
    x = ids(30, seed=3, batch=2)
    valid = torch.ones(2, 30, dtype=torch.long)
    valid[1, :4] = 0
    outs = {}
    for t in ("reference", "torch", "cpu"):
        dec = compile_(model, t, w).decoder(batch=2)
        first = dec.prefill(x[:, :20], attention_mask=valid[:, :20])["logits"]
        outs[t] = torch.cat([first] + [dec.step(x[:, i])["logits"] for i in range(20, 30)], 1)
    torch.testing.assert_close(outs["torch"][:, 4:], outs["reference"][:, 4:], rtol=TOL, atol=TOL)
    torch.testing.assert_close(outs["cpu"][:, 4:], outs["reference"][:, 4:], rtol=1e-4, atol=1e-4)
    alone = compile_(model, "torch", w).decoder()                # the padded row computes what it computes alone
    want = torch.cat([alone.prefill(x[1:, 4:20])["logits"]] + [alone.step(x[1:, i])["logits"] for i in range(20, 30)], 1)
    torch.testing.assert_close(outs["torch"][1:, 4:], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", ["reference", "torch", "cpu"])
def test_a_left_padded_batch_with_sinks_decodes_each_prompt_as_alone(model, target):
    """The hybrid's ring keeps its first 2 rows as sinks: the decoder puts a padded row's pads after its first
    2 tokens (ir/causal_lm.py sinks_first), so the sinks are its own and the pads are never folded in."""
    c = compile_(model, target, 6, s=2)
    prompts = [ids(n, seed=50 + n) for n in (4, 17, 9)]
    more = ids(12, seed=55)
    n = 17
    x, valid = torch.zeros(3, n, dtype=torch.long), torch.ones(3, n, dtype=torch.long)
    for r, p in enumerate(prompts):
        x[r, n - p.shape[1]:], valid[r, :n - p.shape[1]] = p[0], 0
    dec = c.decoder(batch=3)
    dec.prefill(x, attention_mask=valid)
    got = torch.cat([dec.step(more[0, i].expand(3))["logits"] for i in range(more.shape[1])], 1)
    for r, p in enumerate(prompts):
        alone = c.decoder()
        alone.prefill(p)
        want = torch.cat([alone.step(more[:, i])["logits"] for i in range(more.shape[1])], 1)
        torch.testing.assert_close(got[r:r + 1], want, rtol=1e-4, atol=1e-4, msg=lambda m: f"row {r}: {m}")


@pytest.mark.parametrize("target", ["reference", "torch", "cpu"])
def test_a_window_covering_the_sequence_is_softmax_attention_exactly(model, target):
    x = ids(12, seed=4)
    full = compile_(model, target, pipeline="canonicalize,dce", randomize=False).decoder().prefill(x)["logits"]
    hybrid = compile_(model, target, w=11)                      # every key of 12 tokens is inside the window
    torch.testing.assert_close(hybrid.decoder().prefill(x)["logits"], full, rtol=1e-5, atol=1e-5)
    narrow = compile_(model, target, w=3).decoder().prefill(x)["logits"]
    torch.testing.assert_close(narrow[:, :4], full[:, :4], rtol=1e-5, atol=1e-5)   # rows 0..3: all in the window
    assert (narrow[:, 4:] - full[:, 4:]).abs().max() > 1e-3     # later rows: older keys are linear


@pytest.mark.parametrize("w,s", [(4, 1), (0, 0)])
def test_generate_through_the_fixed_state_follows_the_graphs_own_forward(model, w, s):
    from slimgraph.generate import generate
    c = compile_(model, "torch", w, s=s)
    out = generate(c, ids(5, seed=5), 20)
    assert out.shape == (1, 25)
    want = c.decoder().prefill(out[:, :-1])["logits"][0, 4:].argmax(-1)    # each new token is the argmax there
    assert torch.equal(out[0, 5:], want)


@pytest.mark.parametrize("target", ["torch", "cpu"])
def test_verify_accept_replays_the_fixed_state(model, target):
    c = compile_(model, target, 4)
    prompt, cands = ids(9, seed=6), ids(6, seed=7)
    steps = c.decoder()
    steps.prefill(prompt)
    one_by_one = torch.cat([steps.step(cands[:, i])["logits"] for i in range(6)], 1)
    dec = c.decoder()
    dec.prefill(prompt)
    torch.testing.assert_close(dec.verify(cands)["logits"], one_by_one, rtol=TOL, atol=TOL)
    dec.accept(3)
    fresh = c.decoder()
    fresh.prefill(torch.cat((prompt, cands[:, :3]), 1))
    nxt = torch.tensor([[7]])
    torch.testing.assert_close(dec.step(nxt)["logits"], fresh.step(nxt)["logits"], rtol=TOL, atol=TOL)


def test_composes_with_quantize_weights(model):
    pipe = "canonicalize,quantize-weights{bits=4,group=64},linearize-attention{feature_map=hedgehog,window=6,sinks=2},dce"
    c = compile_(model, "torch", pipeline=pipe)
    assert any(n.op in ("qlinear", "dequantize") for n in c.graph.nodes)
    assert sum(s.kind == "fixed" for s in c.graph.states) == 4
    ref = compile_(model, "reference", pipeline=pipe)
    x = ids(30, seed=8)
    got, want = c.decoder().prefill(x)["logits"], ref.decoder().prefill(x)["logits"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    dec = c.decoder()
    dec.prefill(x[:, :10])
    steps = torch.cat([dec.step(x[:, i])["logits"] for i in range(10, 30)], 1)
    torch.testing.assert_close(steps, got[:, 10:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("opts,match", [
    ("feature_map=cosformer", "unknown feature_map 'cosformer'; valid: hedgehog, elu, relu2"),
    ("window=250,sinks=6", "window 250 \\+ sinks 6 >= the model's context limit 256: every key would stay in "
                           "the softmax window of its 2 attention op.*use a window below 250 with 6 sinks"),
    ("window=252,sinks=4", "use a window below 252 with 4 sinks"),      # 252 < 256 is what was refused
    ("window=256", "window 256 \\+ sinks 0 >= .*use a window below 256 \\("),
    ("window=0,sinks=4", "sinks must be >= 0, and 0 without a window"),
    ("window=-1", "window must be >= 0"),
])
def test_bad_options_are_clear_errors(model, opts, match):
    with pytest.raises(PassError, match=match):
        compile_(model, pipeline=f"canonicalize,linearize-attention{{{opts}}}", randomize=False)


@pytest.mark.parametrize("pipeline,match", [
    ("sparsify-attention{window=8,sinks=2},linearize-attention{window=4}", "linearize-attention.*ran sparsify-attention"
                                                                          " \\(a KV ring\\)"),
    ("sparsify-attention{kind=block_sparse,block=4,local=2,globals=1},linearize-attention{window=4}",
     "linearize-attention.*ran sparsify-attention \\(a block-sparse mask\\)"),
    ("linearize-attention{window=4},sparsify-attention{window=8}", "sparsify-attention.*runs linearize-attention"),
    ("linearize-attention{window=0},sparsify-attention{kind=block_sparse,block=4,local=2,globals=1}",
     "sparsify-attention.*runs linearize-attention"),
])
def test_sparsify_and_linearize_attention_do_not_combine_in_either_order(model, pipeline, match):
    """Each pass rewrites the softmax attention over an `append` KV cache. Before, linearize after sparsify said
    "run linearize-attention before sparsify-attention", and that order failed with "0 attention op(s)"."""
    with pytest.raises(PassError, match=match + ".*sparsify-attention and linearize-attention do not combine, "
                                                "in either order"):
        compile_(model, pipeline=f"canonicalize,{pipeline}", randomize=False)


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
def test_a_models_own_sliding_window_is_refused_and_the_error_says_what_to_do(arch):
    """Linear attention folds every key older than its softmax window into each later query: it cannot drop
    the keys a model's own window drops. The error names the window and points to sparsify-attention."""
    model, _ = tiny_windowed(arch, 10)
    with pytest.raises(PassError, match=f"(?s)has the model's own sliding window \\(attention\\{{window=9\\}}: "
                                        f"{2 if arch == 'mistral' else 1} of its 2 attention op.*reads only its last 9 "
                                        f"keys: bound its KV cache with sparsify-attention"):
        compile_(model, pipeline="canonicalize,linearize-attention{window=6}", randomize=False)


@pytest.mark.parametrize("w", [0, 6])
def test_an_eager_model_linearizes_like_its_sdpa_twin(model, w):
    """Eager attention's additive mask where(~%attention_mask, min, 0) is read as the bool mask: the eager
    model's rewrite computes what the sdpa model's does (same weights, same random feature maps)."""
    eager = tiny_llama(attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    x = ids(20, seed=40)
    got = compile_(eager, "torch", w=w).decoder().prefill(x)["logits"]
    torch.testing.assert_close(got, compile_(model, "torch", w=w).decoder().prefill(x)["logits"], rtol=1e-5, atol=1e-5)


def test_a_graph_without_kv_attention_names_its_attention_count():
    g = ir.Graph("mlp")
    x = g.add_input("x", ir.TensorType("f32", (2, 3, 4, 8)))
    g.set_outputs([g.op("attention", x, x, x, causal=True)])
    with pytest.raises(PassError, match="linearize-attention.*has 1 attention op\\(s\\), none reads its keys"):
        parse_pipeline("linearize-attention{window=4}")[0].run(g)


# ---- the op: torch kernels vs the T x T reference vs a naive per-query loop ------------------------------
def naive(q, k, v, kv, z, wq, wk, wf, valid, fm, window, sinks, scale):
    """Per query, per key, in plain Python loops over the definition (module docstring of the op)."""
    phi = {"hedgehog": lambda y: torch.cat((y.softmax(-1), (-y).softmax(-1)), -1),
           "elu": lambda y: torch.nn.functional.elu(y) + 1, "relu2": lambda y: torch.relu(y) ** 2}[fm]
    b, hq, s, _ = q.shape
    hk, n = k.shape[1], k.shape[2]
    out = torch.zeros(b, hq, s, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for h in range(hq):
            kh = h // (hq // hk)
            for i in range(s):
                p = n - s + i
                fq = phi(q[bi, h, i] @ wq[h])
                num, den = fq @ kv[bi, kh], fq @ z[bi, kh]
                win = [j for j in range(n) if j <= p and (p - j <= window or j < sinks) and window and valid[bi, j]]
                m = max((float(q[bi, h, i] @ k[bi, kh, j]) * scale for j in win), default=0.0)
                for j in range(p + 1):
                    if not valid[bi, j]:
                        continue
                    if j in win:
                        a = torch.exp(q[bi, h, i] @ k[bi, kh, j] * scale - m) * wf[h].exp()
                    else:
                        a = fq @ phi(k[bi, kh, j] @ wk[kh])
                    num, den = num + a * v[bi, kh, j], den + a
                out[bi, h, i] = num / den.clamp_min(1e-12)     # relu2: phi(q) may be all zero
    return out.float()


CASES = [  # hq, hk, s (new tokens), ring rows, window, sinks, chunk
    (4, 2, 37, 0, 0, 0, 8), (4, 2, 37, 0, 5, 0, 8), (4, 2, 3, 5, 5, 0, 8), (2, 2, 1, 6, 6, 0, 4), (4, 1, 20, 4, 4, 0, 3),
    (4, 2, 50, 0, 3, 0, 7), (4, 2, 64, 0, 8, 0, 8), (4, 2, 37, 0, 5, 2, 8), (4, 2, 3, 7, 5, 2, 8), (4, 1, 20, 6, 4, 2, 3),
    (4, 2, 64, 0, 8, 3, 8), (4, 2, 40, 0, 8, 12, 8), (2, 2, 1, 8, 6, 2, 4),
]


@pytest.mark.parametrize("fm", ["hedgehog", "elu", "relu2"])
@pytest.mark.parametrize("hq,hk,s,ring,window,sinks,chunk", CASES)
def test_kernels_equal_the_reference_and_the_definition(fm, hq, hk, s, ring, window, sinks, chunk):
    gen = torch.Generator().manual_seed(s * 31 + ring + window)
    n, f = s + ring, 16 if fm == "hedgehog" else 8
    q, k, v = torch.randn(2, hq, s, 8, generator=gen), torch.randn(2, hk, n, 8, generator=gen), \
        torch.randn(2, hk, n, 5, generator=gen)
    kv, z = torch.rand(2, hk, f, 5, generator=gen), torch.rand(2, hk, f, generator=gen) + 0.5
    wq, wk, wf = torch.randn(hq, 8, 8, generator=gen), torch.randn(hk, 8, 8, generator=gen), torch.randn(hq, generator=gen)
    valid = torch.ones(2, n, dtype=torch.bool)
    valid[1, :3] = False                                       # a left-padded row: its first 3 keys are pads
    mask = (valid[:, None, None, :] & torch.ones(s, n, dtype=torch.bool).tril(ring)).clone()
    args = (q, k, v, kv, z, wq, wk, wf)
    kw = dict(feature_map=fm, window=window, sinks=sinks, scale=0.3)
    want = REF(*args, mask, **kw)
    torch.testing.assert_close(want[0][0], naive(*args, valid, fm, window, sinks, 0.3)[0], rtol=1e-4, atol=1e-4)
    real = slice(max(0, 3 - ring), None)                       # row 1's pad queries are junk by definition
    torch.testing.assert_close(want[0][1, :, real], naive(*args, valid, fm, window, sinks, 0.3)[1, :, real],
                               rtol=1e-4, atol=1e-4)
    for m in (None, mask):
        ref = REF(*args, m, **kw)
        got = kernel(*args, m, **kw, chunk=chunk)
        rows = slice(None) if m is None else real
        torch.testing.assert_close(got[0][:, :, rows], ref[0][:, :, rows], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got[2], ref[2], rtol=1e-5, atol=1e-4)
        if ring == 0:
            par = parallel_chunks(*args, m, **kw, chunk=window or chunk)
            torch.testing.assert_close(par[0][:, :, rows], want[0][:, :, rows] if m is not None else ref[0],
                                       rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(par[0][:, :, rows], ref[0][:, :, rows], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(par[1], ref[1], rtol=1e-5, atol=1e-4)


def test_the_op_declares_its_types():
    g = ir.Graph("la")
    q = g.add_input("q", ir.TensorType("f32", ("b", 4, "s", 8)))
    k = g.add_input("k", ir.TensorType("f32", ("b", 2, "n", 8)))
    kv = g.add_input("kv", ir.TensorType("f32", ("b", 2, 16, 8)))
    z = g.add_input("z", ir.TensorType("f32", ("b", 2, 16)))
    ws = [g.add_weight(n, torch.zeros(*shape)) for n, shape in (("wq", (4, 8, 8)), ("wk", (2, 8, 8)), ("wf", (4,)))]
    out, kv2, z2 = g.op("linear_attention", q, k, k, kv, z, *ws, window=2)
    assert out.type.shape == ("b", 4, "s", 8) and kv2.type == kv.type and z2.type == z.type
    with pytest.raises(Exception, match="state feature dim 16/16 != 8"):
        g.op("linear_attention", q, k, k, kv, z, *ws, feature_map="elu")


# ---- distillation -------------------------------------------------------------------------------------
def _distilled(model, seed, **kw):
    c = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="torch",
                           pipeline=PIPE.format(fm="hedgehog", w=4, s=1))
    data = ids(6 * 48, seed=11).view(6, 48)
    report = slimgraph.distill_attention(c, ids=data, seed=seed, progress=False, **kw)
    return c, report


def test_distillation_lowers_the_heldout_error_is_seeded_and_saved(model, tmp_path):
    c, r = _distilled(model, 0, steps=40, time_budget_s=None, lr=3e-2)
    assert r.steps == 40 and r.layers == 2 and r.tokens == 5 * 48 and r.tokens_seen == 40 * 48
    assert sum(r.heldout_rel_mse) < 0.95 * sum(r.heldout_rel_mse_before)     # it learns something
    assert r.loss[-1] < r.loss[0]
    c2, _ = _distilled(model, 0, steps=40, time_budget_s=None, lr=3e-2)
    c3, _ = _distilled(model, 1, steps=40, time_budget_s=None, lr=3e-2)
    name = "linear_attention.0.wq"
    assert torch.equal(c.graph.weights[name].tensor, c2.graph.weights[name].tensor)    # same seed, same maps
    assert not torch.equal(c.graph.weights[name].tensor, c3.graph.weights[name].tensor)
    assert not torch.equal(c.graph.weights[name].tensor, torch.eye(16).expand(4, 16, 16))
    c.save(tmp_path / "linear.sg")
    back = slimgraph.load(tmp_path / "linear.sg")
    assert torch.equal(back.graph.weights[name].tensor, c.graph.weights[name].tensor)
    x = ids(20, seed=12)
    torch.testing.assert_close(back.decoder().prefill(x)["logits"], c.decoder().prefill(x)["logits"],
                               rtol=TOL, atol=TOL)


def test_distillation_stops_at_its_time_budget(model):
    _, r = _distilled(model, 0, steps=10_000, time_budget_s=0.5)
    assert 0 < r.steps < 10_000 and r.seconds < 5


def test_steps_caps_the_updates_of_both_stages_and_0_trains_nothing(model):
    """`steps` is the number of updates at most, stage 1 and the end-to-end stage together. Before, each stage
    ran max(1, its share): steps=0, 1 and 2 all ran 2 updates, and steps=0 marked the maps trained."""
    for steps, e2e in [(0, 0.6), (1, 0.6), (2, 0.6), (5, 0.6), (0, 0.0), (3, 0.0)]:
        c, r = _distilled(model, 0, steps=steps, time_budget_s=None, end_to_end=e2e)
        assert r.steps == steps, (steps, e2e, r.steps, r.e2e_steps)
        if steps == 0:
            assert c.report.untrained, "no update ran: the maps still hold their initial values"
        if e2e == 0.0 and steps:
            assert not c.report.untrained
    c, r = _distilled(model, 0, steps=5, time_budget_s=None, end_to_end=0.6)
    assert (r.steps - r.e2e_steps, r.e2e_steps) == (2, 3)


@pytest.mark.parametrize("kw,match", [
    ({"heldout": -1}, "heldout=-1: how many of the sequences .* an int >= 0"),
    ({"heldout": 0.5}, "heldout=0.5: how many of the sequences"),
    ({"heldout": 6}, "n > heldout \\(6\\)"),
    ({"steps": -1}, "steps=-1: the number of updates at most, an int >= 0"),
    ({"lr": 0}, "lr=0: a learning rate, a finite number > 0"),
    ({"lr": float("inf")}, "lr=inf: a learning rate, a finite number > 0"),
    ({"e2e_lr": -1e-3}, "e2e_lr=-0.001: a learning rate"),
    ({"cpu_budget_s": -5}, "cpu_budget_s=-5: seconds >= 0, or None"),
    ({"time_budget_s": "300"}, "time_budget_s='300': seconds >= 0"),
])
def test_distillation_arguments_out_of_range_are_clear_errors(model, kw, match):
    """heldout=-1 was a bare RuntimeError from torch.arange; the others trained with nonsense or failed deep."""
    with pytest.raises(DistillationError, match=match):
        _distilled(model, 0, **{"steps": 2, **kw})


def test_data_or_updates_that_change_nothing_leave_the_maps_untrained(model):
    """One-token sequences through pure linear attention: each query reads only its own key, weighed 1 whatever
    the maps (relative MSE 0 -> 0, the maps were marked trained): refused, like sequences within the hybrid's
    softmax window. An end-to-end update that early stopping undoes leaves the initial maps: not trained."""
    c = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="torch",
                           pipeline=PIPE.format(fm="elu", w=0, s=0))
    with pytest.raises(DistillationError, match="sequences of 1 token give each query only its own key.*2 tokens"):
        slimgraph.distill_attention(c, ids=ids(3).view(3, 1), steps=3, time_budget_s=None, progress=False)
    with pytest.warns(UserWarning, match="distill_attention\\(\\): the attention feature maps keep the parameters they "
                      "had before this call"):
        c, r = _distilled(model, 0, steps=1, end_to_end=0.6, e2e_lr=1e3, time_budget_s=None)   # a step that hurts
    assert r.e2e_steps == 1 and not r.heldout_kl < r.heldout_kl_before
    assert c.report.untrained


def test_distillation_needs_linear_attention(model):
    c = compile_(model, "torch", pipeline="canonicalize,dce", randomize=False)
    with pytest.raises(DistillationError, match="no linear_attention op \\(2 softmax"):
        slimgraph.distill_attention(c, ids=ids(40).view(2, 20))


def test_distillation_refuses_data_that_cannot_train_the_feature_maps(model):
    """Sequences no longer than window + sinks + 1 keep every key in the softmax window (no key is ever linear):
    the feature maps would get no gradient, and the report would show a held-out error of 0 -> 0. Ids that are not
    int64 name their dtype."""
    c = compile_(model, "torch", w=6, s=2)
    with pytest.raises(DistillationError, match="9 tokens.*window 6 \\+ 2 sinks.*longer than 9"):
        slimgraph.distill_attention(c, ids=ids(27).view(3, 9), steps=2, progress=False)
    slimgraph.distill_attention(c, ids=ids(30).view(3, 10), steps=0, progress=False)   # 10 tokens: one linear key
    with pytest.raises(DistillationError, match="torch.int32"):
        slimgraph.distill_attention(c, ids=ids(30).view(3, 10).int(), steps=2, progress=False)

    class CharTokenizer:     # one token per character
        def __call__(self, text, return_tensors=None):
            return type("Enc", (), {"input_ids": torch.tensor([[ord(ch) % 96 for ch in text]])})()
    with pytest.raises(DistillationError, match="the given text has 11 tokens; 12 x 1024 requested.*num_seqs"):
        slimgraph.distill_attention(c, texts="hello there", tokenizer=CharTokenizer(), progress=False)


@pytest.mark.parametrize("target", ["reference", "torch"])
def test_a_bf16_model_linearizes_in_its_own_dtype(target):
    """The feature maps and window factors are weights of the model's dtype (f32 ones made a bf16 model's
    window scores f32, and the op failed on f32 @ bf16); the rewrite decodes, distils and keeps its dtype."""
    model = tiny_llama().to(torch.bfloat16)
    c = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target=target,
                           pipeline="canonicalize,linearize-attention{feature_map=hedgehog,window=6,sinks=2},dce")
    assert {str(w.type.dtype) for n, w in c.graph.weights.items() if n.startswith("linear_attention.")} == {"bf16"}
    r = slimgraph.distill_attention(c, ids=ids(48).view(3, 16), steps=4, time_budget_s=None, progress=False,
                                    end_to_end=0.5)         # the whole-model stage runs in bf16 too
    assert r.e2e_steps == 2 and r.heldout_kl == r.heldout_kl
    x = ids(20, seed=3)
    full = c.decoder().prefill(x)["logits"]
    assert full.dtype == torch.bfloat16
    dec = c.decoder()
    steps = [dec.prefill(x[:, :4])["logits"]] + [dec.step(x[:, i])["logits"] for i in range(4, 20)]
    torch.testing.assert_close(torch.cat(steps, 1).float(), full.float(), rtol=0.05, atol=0.05)


def test_the_end_to_end_stage_lowers_the_models_heldout_kl_from_softmax_attention(model):
    # stage 1 alone, then the same budget with half of it spent end to end: the second stage trains every
    # feature map together on the model's output (KL from the softmax model's logits) and must improve it
    c1, r1 = _distilled(model, 0, steps=20, time_budget_s=None, lr=3e-2, end_to_end=0)
    c2, r2 = _distilled(model, 0, steps=40, time_budget_s=None, lr=3e-2, end_to_end=0.5, e2e_lr=1e-2)
    assert r1.e2e_steps == 0 and r2.e2e_steps == 20 and r2.steps == 40
    assert r2.heldout_kl < 0.9 * r2.heldout_kl_before        # measured after stage 1: the second stage helped
    assert "end to end: 20 steps" in str(r2)
    assert not torch.equal(c1.graph.weights["linear_attention.0.wq"].tensor,
                           c2.graph.weights["linear_attention.0.wq"].tensor)


def test_the_end_to_end_fraction_is_checked(model):
    c = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="torch",
                           pipeline=PIPE.format(fm="hedgehog", w=4, s=1))
    with pytest.raises(DistillationError, match="end_to_end is the fraction of the budget.*got 1.0"):
        slimgraph.distill_attention(c, ids=ids(96).view(2, 48), end_to_end=1.0)


def test_the_end_to_end_stage_refuses_a_graph_whose_outputs_no_gradient_connects_to_the_maps():
    m = tiny_llama()
    with torch.no_grad():
        for layer in m.model.layers:        # attention's output never reaches the logits
            layer.self_attn.o_proj.weight.zero_()
    c = slimgraph.optimize(m, (torch.zeros(1, 4, dtype=torch.long),), target="torch",
                           pipeline=PIPE.format(fm="hedgehog", w=4, s=1))
    with pytest.raises(DistillationError, match="no gradient reaches the feature maps"):
        slimgraph.distill_attention(c, ids=ids(6 * 48, seed=11).view(6, 48), steps=4, time_budget_s=None,
                                    end_to_end=0.5, progress=False)
    # by default (end_to_end=None) the second stage is left out where it cannot train, not an error
    r = slimgraph.distill_attention(c, ids=ids(6 * 48, seed=11).view(6, 48), steps=4, time_budget_s=None,
                                    progress=False)
    assert r.steps == 4 and r.e2e_steps == 0


def test_by_default_a_language_model_gets_the_end_to_end_stage(model):
    """end_to_end=None gives E2E_DEFAULT of the steps to the second stage on a model with logits (the setting that
    measured best on SmolLM2, benchmarks/RESULTS.md), and none to a graph without a `logits` output."""
    from slimgraph.linear_attention import E2E_DEFAULT
    _, r = _distilled(model, 0, steps=10, time_budget_s=None)
    assert r.e2e_steps == round(10 * E2E_DEFAULT) and r.steps == 10
    assert r.heldout_kl == r.heldout_kl and "end to end" in str(r)


def test_the_end_to_end_stage_needs_a_logits_output_and_by_default_is_left_out_without_one(model):
    c = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="torch",
                           pipeline=PIPE.format(fm="hedgehog", w=4, s=1))
    next(v for v in c.graph.outputs if v.name == "logits").name = "scores"     # not a language model's output
    with pytest.raises(DistillationError, match="no `logits` output.*scores"):
        slimgraph.distill_attention(c, ids=ids(6 * 48, seed=11).view(6, 48), steps=2, end_to_end=0.5, progress=False)
    r = slimgraph.distill_attention(c, ids=ids(6 * 48, seed=11).view(6, 48), steps=2, time_budget_s=None,
                                    progress=False)
    assert r.steps == 2 and r.e2e_steps == 0
