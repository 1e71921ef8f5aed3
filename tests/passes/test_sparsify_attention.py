"""sparsify-attention{kind=sliding_window}: append KV states -> ring states, attention{window, sinks}.

On a tiny random Llama: the rewritten graph verifies; reference, torch and onnx agree; decoding token by
token through the ring equals one windowed forward; with window + sinks >= the sequence it is full attention
exactly; past the window the state stays window + sinks rows; generate(), verify/accept and quantize-weights
compose; bad options are clear errors. Kernels: attention{window, sinks} on every target vs the reference.
A model's own sliding window (Mistral, Qwen2, Gemma 3 local layers) is kept, and-ed with the rewrite's rule,
both by position: decode, chunks, chain and tree verify match HF with those masks written out; eager
models' additive masks are read as the bool mask."""
import numpy as np
import pytest
import torch

import slimgraph
from slimgraph import ir
from slimgraph.codegen import torch_kernels
from slimgraph.decoder import DecoderError
from slimgraph.generate import generate
from slimgraph.ir.verifier import verify
from slimgraph.passes.base import PassError
from slimgraph.passes.pipeline import parse_pipeline

transformers = pytest.importorskip("transformers")
from tiny_lm import own_window_logits, path_to, tiny_llama, tiny_windowed, tree_mask  # noqa: E402
TOL = 1e-5
PIPE = "canonicalize,sparsify-attention{{window={w},sinks={s}}},dce"
TARGETS = ["reference", "torch", "onnx", "cpu"]




@pytest.fixture(scope="module")
def model():
    return tiny_llama()


_CACHE = {}


def compile_(model, target="reference", w=8, s=2, pipeline=None):
    """slimgraph.optimize, once per (model, target, pipeline) in this module (compiling is the slow part)."""
    if target == "onnx":
        pytest.importorskip("onnxruntime")
    if target == "cpu":
        pytest.importorskip("tvm")
    key = (id(model), target, pipeline or PIPE.format(w=w, s=s))
    if key not in _CACHE:
        _CACHE[key] = _compile(model, target, w, s, pipeline)
    return _CACHE[key]


def _compile(model, target, w, s, pipeline):
    return slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target=target,
                              pipeline=pipeline or PIPE.format(w=w, s=s), verify=True)


def ids(n, seed=1, batch=1):
    return torch.randint(0, 96, (batch, n), generator=torch.Generator().manual_seed(seed))


def windowed_logits(model, x, w, s):
    """The HF model itself with a sliding-window + sinks mask over the whole sequence (the oracle)."""
    n = x.shape[1]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    keep = (j <= i) & ((j < s) | (i - j <= w))
    with torch.no_grad():
        return model(input_ids=x, attention_mask=keep[None, None].expand(x.shape[0], 1, n, n)).logits


def test_rewrite_makes_ring_states_windowed_attention_and_a_ring_mask(model):
    c = compile_(model)
    g = c.graph
    verify(g)
    assert [s.kind for s in g.states] == ["ring"] * 4
    assert all(s.attrs == {"axis": 2, "window": 8, "sinks": 2} for s in g.states)
    attn = [n for n in g.nodes if n.op == "attention"]
    # the band is in the mask, by position (a tree candidate at its depth), not the op's index-based band
    assert len(attn) == 2 and all(not n.attrs.get("window") and not n.attrs.get("sinks") for n in attn)
    mask = next(v for v in g.inputs if v.name == "attention_mask")
    assert mask.type.shape[-1] == "ctx"                        # no longer past + seq: the decoder's L + s
    assert all(n.inputs[3] is attn[0].inputs[3] and n.inputs[3] is not mask for n in attn)
    for st in g.states:                                        # cache_window(cache_append(past, new))
        assert st.output.producer.op == "cache_window"
        assert st.output.producer.inputs[0].producer.op == "cache_append"


@pytest.mark.parametrize("target", TARGETS)
def test_decoding_through_the_ring_equals_one_windowed_forward_and_the_hf_oracle(model, target):
    w, s, n = 8, 2, 40
    c = compile_(model, target, w, s)
    x = ids(n)
    full = c.decoder().prefill(x)["logits"]
    torch.testing.assert_close(full, windowed_logits(model, x, w, s), rtol=1e-4, atol=1e-4)
    dec = c.decoder()
    dec.prefill(x[:, :3])
    steps = torch.cat([dec.step(x[:, i])["logits"] for i in range(3, n)], 1)
    torch.testing.assert_close(steps, full[:, 3:], rtol=TOL, atol=TOL)
    assert all(t.shape[2] == w + s for t in dec.states)        # memory flat: S + W rows, not 40
    assert dec.length == n                                     # the decoder still counts every position
    chunked = c.decoder()                                      # chunks of several tokens across the wrap
    chunked.prefill(x[:, :5])
    got = torch.cat([chunked.step(x[:, i:i + 7])["logits"] for i in range(5, n, 7)], 1)
    torch.testing.assert_close(got, full[:, 5:], rtol=TOL, atol=TOL)


def test_targets_agree_with_the_interpreter(model):
    x = ids(30, seed=3, batch=2)
    outs = {}
    for t in TARGETS:
        if t == "cpu":
            pytest.importorskip("tvm")
        dec = compile_(model, t).decoder(batch=2)
        dec.prefill(x[:, :20])
        outs[t] = torch.cat([dec.step(x[:, i])["logits"] for i in range(20, 30)], 1)
    torch.testing.assert_close(outs["torch"], outs["reference"], rtol=TOL, atol=TOL)
    torch.testing.assert_close(outs["onnx"], outs["reference"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs["cpu"], outs["reference"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", ["reference", "torch"])
def test_window_covering_the_sequence_is_full_attention_exactly(model, target):
    x = ids(12, seed=4)
    full = compile_(model, target, pipeline="canonicalize,dce")
    ring = compile_(model, target, w=10, s=2)
    a, b = full.decoder(), ring.decoder()
    got, want = b.prefill(x[:, :6])["logits"], a.prefill(x[:, :6])["logits"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for i in range(6, 12):
        torch.testing.assert_close(b.step(x[:, i])["logits"], a.step(x[:, i])["logits"], rtol=0, atol=0)
    torch.testing.assert_close(generate(ring, x[:, :6], 6), generate(full, x[:, :6], 6), rtol=0, atol=0)


def test_generate_through_the_ring_follows_the_windowed_model(model):
    w, s = 6, 1
    c = compile_(model, "torch", w, s)
    out = generate(c, ids(5, seed=5), 20)
    assert out.shape == (1, 25)
    want = windowed_logits(model, out[:, :-1], w, s)[0, 4:].argmax(-1)   # each new token is the argmax there
    assert torch.equal(out[0, 5:], want)


@pytest.mark.parametrize("target", ["torch", "cpu"])
def test_verify_accept_replays_the_ring(model, target):
    c = compile_(model, target, 4, 1)
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
    assert all(t.shape[2] == 5 for t in dec.states)


def test_composes_with_quantize_weights(model):
    pipe = "canonicalize,quantize-weights{bits=8,group=32},sparsify-attention{window=8,sinks=2},dce"
    c = compile_(model, "torch", pipeline=pipe)
    assert [s.kind for s in c.graph.states] == ["ring"] * 4
    assert c.graph.weight_bytes() < 0.5 * compile_(model, "torch").graph.weight_bytes()   # int8 weights
    ref = compile_(model, "reference", pipeline=pipe)
    x = ids(30, seed=8)
    got, want = c.decoder().prefill(x)["logits"], ref.decoder().prefill(x)["logits"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    close = windowed_logits(model, x, 8, 2)                    # int8 weights: near the float windowed model
    assert (got - close).abs().max() < 0.1 * close.abs().max()


@pytest.mark.parametrize("opts,match", [
    ("window=0", "window must be >= 1"),
    ("window=4,sinks=5", "sinks must be in 0..window"),
    ("window=250,sinks=6", "window \\+ sinks = 256 >= the model's context limit 256"),
    ("kind=dilated", "unknown kind 'dilated'"),
])
def test_bad_options_are_clear_errors(model, opts, match):
    with pytest.raises(PassError, match=match):
        compile_(model, pipeline=f"sparsify-attention{{{opts}}}")


def test_a_graph_without_kv_attention_names_its_attention_count():
    g = ir.Graph("mlp")
    x = g.add_input("x", ir.TensorType("f32", (2, 3, 4, 8)))
    g.set_outputs([g.op("attention", x, x, x, causal=True)])
    with pytest.raises(PassError, match="has 1 attention op\\(s\\).*none reads its keys"):
        parse_pipeline("sparsify-attention{window=4}")[0].run(g)


# ---- the op: attention{window, sinks} on the torch kernel and ONNX vs the reference ----------------------
@pytest.mark.parametrize("hq,hk,lq,lk,window,sinks,causal,mask", [
    (4, 2, 7, 7, 3, 1, True, None), (4, 2, 1, 9, 4, 2, False, "bool4d"), (2, 2, 5, 12, 4, 0, True, "bool4d"),
    (4, 1, 3, 11, 2, 3, False, "bool4d"), (2, 2, 6, 6, 1, 1, False, "float"),
])
def test_windowed_attention_kernel(hq, hk, lq, lk, window, sinks, causal, mask):
    gen = torch.Generator().manual_seed(lq * 7 + lk)
    q, k, v = (torch.randn(2, h, n, 8, generator=gen) for h, n in ((hq, lq), (hk, lk), (hk, lk)))
    m = None
    if mask == "bool4d":
        m = torch.rand(2, 1, lq, lk, generator=gen) > 0.2
        m[..., 0] = True
    elif mask == "float":
        m = torch.randn(lq, lk, generator=gen)
    ref = ir.get_op("attention").impl(q, k, v, m, causal=causal, scale=None, window=window, sinks=sinks)
    got = torch_kernels.attention(q, k, v, m, causal=causal, scale=None, window=window, sinks=sinks)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # the band itself: query i sees key j iff j < sinks or (i + lk - lq) - j <= window
    keep = ir.opset.nn.window_keep(lq, lk, window, sinks)
    i, j = torch.arange(lq)[:, None], torch.arange(lk)[None, :]
    assert torch.equal(keep, (j < sinks) | (i + lk - lq - j <= window))


@pytest.mark.parametrize("inference", [False, True])
def test_attention_kernel_drops_an_all_true_mask_and_sees_it_change_in_place(inference):
    """The torch kernel skips an all-True bool mask (remembered per tensor version, so the layers of one
    forward check it once); a mask changed in place afterwards must be seen."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(1, 4, 1, 8, generator=gen), torch.randn(1, 2, 9, 8, generator=gen), torch.randn(1, 2, 9, 8)
    ref = ir.get_op("attention").impl
    with torch.inference_mode(inference):
        m = torch.ones(1, 1, 1, 9, dtype=torch.bool)
        for _ in range(2):
            got = torch_kernels.attention(q, k, v, m, causal=False, scale=None, window=4, sinks=2)
            torch.testing.assert_close(got, ref(q, k, v, m, causal=False, scale=None, window=4, sinks=2))
        m[..., 3:6] = False
        got = torch_kernels.attention(q, k, v, m, causal=False, scale=None, window=4, sinks=2)
        want = ref(q, k, v, m, causal=False, scale=None, window=4, sinks=2)
        torch.testing.assert_close(got, want)
        assert not torch.allclose(want, ref(q, k, v, None, causal=False, scale=None, window=4, sinks=2))


@pytest.mark.parametrize("fuse", [True, False])
def test_windowed_attention_onnx(fuse):
    pytest.importorskip("onnxruntime")
    g = ir.Graph("w")
    q = g.add_input("q", ir.TensorType("f32", (1, 4, "s", 8)))
    k = g.add_input("k", ir.TensorType("f32", (1, 2, "t", 8)))
    m = g.add_input("m", ir.TensorType("bool", (1, 1, "s", "t")))
    g.set_outputs([g.op("attention", q, k, k, m, window=3, sinks=2)])
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(1, 4, 5, 8, generator=gen), torch.randn(1, 2, 11, 8, generator=gen),
            torch.ones(1, 1, 5, 11, dtype=torch.bool)]
    from slimgraph.codegen.onnx_runtime import build_ort_runner
    want = ir.run(g, *args)[0]
    got = build_ort_runner(g, ["CPUExecutionProvider"], fuse=fuse)(*args)[0]
    torch.testing.assert_close(torch.as_tensor(np.asarray(got)), want, rtol=1e-5, atol=1e-5)


# ---- kind=block_sparse: a mask-only rewrite ----------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_block_sparse_prefill_matches_the_hf_oracle_and_decode_applies_the_same_rule(model, target):
    b, local, glob, n = 4, 2, 1, 30
    c = compile_(model, target, pipeline=f"canonicalize,sparsify-attention{{kind=block_sparse,block={b},"
                                         f"local={local},globals={glob}}},dce")
    assert [s.kind for s in c.graph.states] == ["append"] * 4          # the cache is unchanged: O(T)
    x = ids(n, seed=9)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    keep = (j <= i) & ((i // b - j // b < local) | (j // b < glob))
    with torch.no_grad():
        want = model(input_ids=x, attention_mask=keep[None, None]).logits
    full = c.decoder().prefill(x)["logits"]
    torch.testing.assert_close(full, want, rtol=1e-4, atol=1e-4)
    dense = compile_(model, "reference", pipeline="canonicalize,dce").decoder().prefill(x)["logits"]
    assert (full - dense).abs().max() > 1e-3                            # the rule does mask something
    dec = c.decoder()
    dec.prefill(x[:, :3])
    steps = torch.cat([dec.step(x[:, k])["logits"] for k in range(3, n)], 1)
    torch.testing.assert_close(steps, full[:, 3:], rtol=TOL, atol=TOL)


@pytest.mark.parametrize("opts,match", [
    ("kind=sliding_window,window=8,block=16", "block=16 is an option of kind=block_sparse; kind=sliding_window"),
    ("window=8,sinks=2,local=2,globals=0", "local=2, globals=0 are options of kind=block_sparse"),
    ("kind=block_sparse,block=8,window=16", "window=16 is an option of kind=sliding_window; kind=block_sparse"),
    ("kind=block_sparse,block=8,sinks=0", "sinks=0 is an option of kind=sliding_window"),
])
def test_options_of_the_other_kind_are_refused_not_ignored(opts, match):
    """kind=block_sparse has no window or sinks, kind=sliding_window no blocks: such an option would be silently
    ignored (a user asking for block_sparse with window=16 would get no window), so the pipeline is refused
    when it is parsed, before the model is imported."""
    from slimgraph.passes.pipeline import parse_pipeline
    with pytest.raises(PassError, match=match):
        parse_pipeline(f"sparsify-attention{{{opts}}}")


def test_block_sparse_bad_options(model):
    with pytest.raises(PassError, match="block and local must be >= 1"):
        compile_(model, pipeline="sparsify-attention{kind=block_sparse,block=0}")
    with pytest.raises(PassError, match="block x \\(local \\+ globals\\) = 320 >= the model's context limit 256"):
        compile_(model, pipeline="sparsify-attention{kind=block_sparse,block=64,local=4,globals=1}")


def test_ring_model_saves_and_loads(model, tmp_path):
    c = compile_(model, "torch")
    c.save(tmp_path / "ring.sg")
    back = slimgraph.load(tmp_path / "ring.sg")
    assert [s.kind for s in back.graph.states] == ["ring"] * 4
    x = ids(20, seed=10)
    a, b = c.decoder(), back.decoder()
    a.prefill(x[:, :12])
    b.prefill(x[:, :12])
    for i in range(12, 20):
        torch.testing.assert_close(b.step(x[:, i])["logits"], a.step(x[:, i])["logits"], rtol=TOL, atol=TOL)


def _plain_greedy(c, prompt, n):
    dec = c.decoder()
    out, toks = dec.prefill(prompt), []
    for _ in range(n):
        toks.append(int(out["logits"][0, -1].argmax()))
        out = dec.step(torch.tensor([toks[-1]]))
    return toks, dec


def _speculative_greedy(c, prompt, n, oracle, tree):
    """Greedy decoding by verify/accept: drafts from `oracle` (the true stream) with every third guess wrong;
    chains of 4, or trees of two 2-token branches (one right, one wrong). Returns the tokens it commits (at
    least n; all but the last are in the cache) and the decoder."""
    dec = c.decoder()
    toks = [int(dec.prefill(prompt)["logits"][0, -1].argmax())]
    r = 0
    while len(toks) < n:
        r += 1
        guess = [t if (r + j) % 3 else (t + 1) % 96 for j, t in enumerate(oracle[len(toks):len(toks) + 3])]
        guess += [0] * (3 - len(guess))
        if not tree:
            cands = torch.tensor([[toks[-1]] + guess])
            logits = dec.verify(cands)["logits"][0]
            m = 1
            while m < 4 and int(logits[m - 1].argmax()) == cands[0, m]:
                m += 1
            dec.accept(m)
            toks += cands[0, 1:m].tolist() + [int(logits[m - 1].argmax())]
        else:                 # root, then branches (a1 -> a2) and (b1 -> b2); a is the guess, b the guess + 1
            other = [(g + 1) % 96 for g in guess]
            a, b = (guess, other) if r % 2 else (other, guess)
            cands = torch.tensor([[toks[-1], a[0], b[0], a[1], b[1]]])
            tree_mask = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 1, 0],
                                      [1, 0, 1, 0, 1]], dtype=torch.bool)
            logits = dec.verify(cands, tree_mask=tree_mask)["logits"][0]
            path, children = [0], {0: (1, 2), 1: (3,), 2: (4,), 3: (), 4: ()}
            while True:
                want = int(logits[path[-1]].argmax())
                nxt = [ch for ch in children[path[-1]] if int(cands[0, ch]) == want]
                if not nxt:
                    break
                path.append(nxt[0])
            dec.accept(path=path)
            toks += [int(cands[0, i]) for i in path[1:]] + [want]
    return toks, dec


def test_decoder_on_the_in_place_ring_is_token_identical_to_the_interpreter_and_plain_steps(model):
    """torch slides the ring in place (codegen/torch_kv.py): prefill longer than the window, 300 greedy steps
    (the ring moves to a new buffer every ~130 rows), verify/accept chains and trees (the verify snapshot is a
    copy; the call consumes the live ring) all commit the tokens the interpreter commits.
    Chains and trees over the full ring also commit the plain greedy stream: the window band places a tree
    candidate at slot L + depth (its position), not L + index (passes/sparsify_attention.py `slots`)."""
    w, s, n = 8, 2, 300
    prompt = ids(20, seed=11)
    fast, ref = compile_(model, "torch", w, s), compile_(model, "reference", w, s)
    want, ref_dec = _plain_greedy(ref, prompt, n)
    got, dec = _plain_greedy(fast, prompt, n)
    assert got == want
    assert all(t.shape[2] == w + s for t in dec.states)
    for a, b in zip(dec.states, ref_dec.states):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
    for tree in (False, True):
        spec, sdec = _speculative_greedy(fast, prompt, 60, want, tree)
        spec_ref, sref = _speculative_greedy(ref, prompt, 60, want, tree)
        assert spec == spec_ref, f"tree={tree}"
        assert spec[:60] == want[:60], f"tree={tree}"
        for a, b in zip(sdec.states, sref.states):
            torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
        fresh = fast.decoder()                                 # the accepted tokens replayed = a fresh decode
        assert sdec.length == prompt.shape[1] + len(spec) - 1
        fresh.prefill(torch.cat((prompt, torch.tensor([spec[:-1]])), 1))
        nxt = torch.tensor([[spec[-1]]])
        torch.testing.assert_close(sdec.step(nxt)["logits"], fresh.step(nxt)["logits"], rtol=TOL, atol=TOL)


def test_tree_verify_over_a_ring_that_is_not_full_commits_the_plain_greedy_stream(model):
    w, s = 100, 2
    prompt = ids(20, seed=11)
    fast = compile_(model, "torch", w, s)
    want, _ = _plain_greedy(fast, prompt, 60)
    assert _speculative_greedy(fast, prompt, 60, want, tree=True)[0][:60] == want


def test_a_ring_state_consumed_by_a_call_is_an_error_and_keep_state_branches(model):
    c = compile_(model, "torch", 4, 1)
    dec = c.decoder()
    dec.prefill(ids(9, seed=12))
    past = list(dec.states)
    kept = [c.runner.keep_state(t) for t in past]
    a = dec.step(torch.tensor([5]))["logits"]                 # slides each ring in place: `past` is consumed
    dec.states = past
    with pytest.raises(RuntimeError, match="keep_state"):
        dec.step(torch.tensor([6]))
    dec.states = kept
    dec.key_valid, dec.next_pos = dec.key_valid[:, :-1], dec.next_pos - 1
    b = dec.step(torch.tensor([5]))["logits"]                 # the kept copy: the same step again
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_torch_decode_steps_slide_the_ring_in_its_buffer_without_copying_it(model):
    c = compile_(model, "torch", 8, 2)
    dec = c.decoder()
    dec.prefill(ids(20, seed=13))
    storages, views = set(), set()
    for i in range(60):
        dec.step(torch.tensor([i % 96]))
        storages.add(dec.states[0].untyped_storage().data_ptr())
        views.add(dec.states[0].data_ptr())
    assert len(storages) <= 2 and len(views) == 60        # one buffer (maybe one move), a new view each step
    assert "window_in_place" in c.runner.code and "state_cache_window(present" not in c.runner.code


# ---- a model's own sliding window (Mistral, Qwen2's windowed layers, Gemma 3's local layers) -------------
# canonicalize makes HF's window `attention{window=w}` (w = sliding_window - 1), placed by index (the end-
# aligned diagonal). The rewritten model's attention is the model's own window AND the rewrite's rule, both by
# position: a query at position p sees the key at position k iff the decoder's mask allows it (causality,
# padding, a tree's ancestors), the rewrite's rule does (sliding_window: k < S or p - k <= W) and, on a
# windowed layer, p - k <= w. By position, so a tree candidate at depth d (position L + d) sees what its path
# decoded as a chain sees. Own windows: inside the ring's W = 8 (sw 6, w 5), between W and W + S (sw 10,
# w 9), past W + S (sw 20, w 19); 40 tokens decode well past all of them.
OWN_W, OWN_S, OWN_N = 8, 2, 40
TREE = [-1, 0, 0, 0, 1, 1, 2, 4, 4, 7, 3, 9]       # parents: depths 0,1,1,1,2,2,2,3,3,4,2,5
_OWN = {}


def own_model(arch, sw):
    if (arch, sw) not in _OWN:
        _OWN[arch, sw] = tiny_windowed(arch, sw)
    return _OWN[arch, sw]


def ring_rule(n, w=OWN_W, s=OWN_S):
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (j <= i) & ((j < s) | (i - j <= w))


def block_rule(n, b=4, local=2, glob=1):
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (j <= i) & ((i // b - j // b < local) | (j // b < glob))


def check_against_the_oracle(c, model, windowed, rule, tol=1e-4):
    """Prefill, token-by-token decode, chunked steps, chain verify and tree verify (each node vs the oracle on
    its own path) of compiled `c` equal HF with the explicit by-position masks (`own_window_logits`)."""
    x = ids(OWN_N, seed=21)
    want = own_window_logits(model, windowed, x, rule(OWN_N))
    close = dict(rtol=tol, atol=tol)
    torch.testing.assert_close(c.decoder().prefill(x)["logits"], want, **close, msg=lambda m: f"prefill: {m}")
    dec = c.decoder()
    dec.prefill(x[:, :3])
    steps = torch.cat([dec.step(x[:, i])["logits"] for i in range(3, OWN_N)], 1)
    torch.testing.assert_close(steps, want[:, 3:], **close, msg=lambda m: f"decode steps: {m}")
    dec = c.decoder()
    dec.prefill(x[:, :5])
    chunks = torch.cat([dec.step(x[:, i:i + 7])["logits"] for i in range(5, OWN_N, 7)], 1)
    torch.testing.assert_close(chunks, want[:, 5:], **close, msg=lambda m: f"chunked steps: {m}")
    dec = c.decoder()
    dec.prefill(x[:, :28])
    torch.testing.assert_close(dec.verify(x[:, 28:])["logits"], want[:, 28:], **close,
                               msg=lambda m: f"chain verify: {m}")
    cands = ids(len(TREE), seed=22)
    dec = c.decoder()
    dec.prefill(x[:, :28])                          # 28 + 12 candidates: past every window here
    assert dec.tree_ok(len(TREE))
    got = dec.verify(cands, tree_mask=tree_mask(TREE))["logits"]
    for i in range(len(TREE)):
        seq = torch.cat((x[:, :28], cands[:, path_to(i, TREE)]), 1)
        path_want = own_window_logits(model, windowed, seq, rule(seq.shape[1]))[:, -1]
        torch.testing.assert_close(got[:, i], path_want, **close, msg=lambda m: f"tree node {i}: {m}")


@pytest.mark.parametrize("target", ["reference", "torch"])
@pytest.mark.parametrize("sw", [6, 10, 20])
@pytest.mark.parametrize("arch", ["mistral", "qwen2", "gemma3"])
def test_a_models_own_sliding_window_is_placed_by_position_over_the_ring(arch, sw, target):
    model, windowed = own_model(arch, sw)
    c = compile_(model, target, OWN_W, OWN_S)
    check_against_the_oracle(c, model, windowed, ring_rule)
    attn = [n for n in c.graph.nodes if n.op == "attention"]     # both bands are in the masks, by position
    assert len(attn) == 2 and not any(n.attrs.get("window") or n.attrs.get("sinks") for n in attn)
    assert [n.inputs[3] is attn[0].inputs[3] for n in attn[1:]] == [all(windowed)]   # one mask per window
    assert [s.kind for s in c.graph.states] == ["ring"] * 4


@pytest.mark.parametrize("target", ["reference", "torch"])
@pytest.mark.parametrize("sw", [6, 20])
@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
def test_block_sparse_keeps_a_models_own_sliding_window_by_position(arch, sw, target):
    model, windowed = own_model(arch, sw)
    c = compile_(model, target, pipeline="canonicalize,sparsify-attention{kind=block_sparse,block=4,local=2,"
                                          "globals=1},dce")
    check_against_the_oracle(c, model, windowed, block_rule)
    assert not any(n.attrs.get("window") for n in c.graph.nodes if n.op == "attention")


@pytest.mark.parametrize("target", ["onnx", "cpu"])
def test_a_models_own_window_over_the_ring_on_onnx_and_cpu(target):
    model, windowed = own_model("gemma3", 20)
    check_against_the_oracle(compile_(model, target, OWN_W, OWN_S), model, windowed, ring_rule)


@pytest.mark.parametrize("kind", ["sliding_window", "block_sparse"])
def test_an_eager_models_additive_mask_is_read_as_the_bool_mask(kind):
    """HF eager layers get the decoder's mask as 0 / dtype-min biases (frontends/hf.py): canonicalize's
    attention reads where(~%attention_mask, min, 0). The rewrites read the bool mask instead (a dtype-min
    bias weighs a key exp(min + score - max) = 0, as False does) and match the same oracle as sdpa."""
    model, windowed = tiny_windowed("gemma3", 20, impl="eager")
    pipe = PIPE.format(w=OWN_W, s=OWN_S) if kind == "sliding_window" else \
        "canonicalize,sparsify-attention{kind=block_sparse,block=4,local=2,globals=1},dce"
    c = compile_(model, "torch", pipeline=pipe)
    assert all(n.inputs[3].type.dtype == "bool" for n in c.graph.nodes if n.op == "attention")
    check_against_the_oracle(c, model, windowed, ring_rule if kind == "sliding_window" else block_rule)


def test_soft_capped_attention_is_rewritten_and_keeps_its_cap():
    """Gemma 2 soft-caps its attention logits (tanh): canonicalize makes them `attention{softcap}`, which the
    rewrite keeps over the ring (tests/frontends/test_attention_families.py matches it against the model)."""
    t = transformers
    cfg = t.Gemma2Config(head_dim=16, sliding_window=10, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=96, max_position_embeddings=256,
                         layer_types=["sliding_attention", "full_attention"], attn_implementation="eager")
    torch.manual_seed(0)
    c = compile_(t.Gemma2ForCausalLM(cfg).eval(), pipeline=PIPE.format(w=8, s=2))
    assert [s.kind for s in c.graph.states] == ["ring"] * 4
    assert [n.attrs["softcap"] for n in c.graph.nodes if n.op == "attention"] == [50.0, 50.0]


def _padded(prompts):
    n = max(p.shape[1] for p in prompts)
    x = torch.zeros(len(prompts), n, dtype=torch.long)
    valid = torch.ones_like(x)
    for r, p in enumerate(prompts):
        x[r, n - p.shape[1]:], valid[r, :n - p.shape[1]] = p[0], 0
    return x, valid


@pytest.mark.parametrize("target", TARGETS)
def test_a_left_padded_batch_over_a_ring_with_sinks_decodes_each_prompt_as_it_decodes_alone(model, target):
    """The ring's sinks are its first S rows. The decoder's prefill moves a padded row's pads to just after its
    first S tokens (ir/causal_lm.py sinks_first), so those rows are the row's own first tokens, not pads, and
    every later token keeps its slot distance to the others; the prefill's logits come back in prompt order.
    Before, a padded row's sinks were pads: it decoded differently from the same prompt alone."""
    c = compile_(model, target, 8, 2)
    prompts = [ids(n, seed=40 + n) for n in (5, 19, 3, 12)]
    more = ids(16, seed=45)
    x, valid = _padded(prompts)
    dec = c.decoder(batch=4)
    first = dec.prefill(x, attention_mask=valid)["logits"]
    got = torch.cat([dec.step(more[0, i].expand(4))["logits"] for i in range(more.shape[1])], 1)
    tol = 1e-4 if target == "cpu" else 2e-5
    for r, p in enumerate(prompts):
        alone = c.decoder()
        head = alone.prefill(p)["logits"]
        torch.testing.assert_close(first[r:r + 1, x.shape[1] - p.shape[1]:], head, rtol=tol, atol=tol,
                                   msg=lambda m: f"prefill row {r}: {m}")
        want = torch.cat([alone.step(more[:, i])["logits"] for i in range(more.shape[1])], 1)
        torch.testing.assert_close(got[r:r + 1], want, rtol=tol, atol=tol, msg=lambda m: f"row {r}: {m}")


def test_a_padded_prompt_no_longer_than_the_sinks_is_a_clear_error(model):
    c = compile_(model, "torch", 8, 2)
    x, valid = _padded([ids(2, seed=46), ids(9, seed=47)])
    with pytest.raises(DecoderError, match=r"row\(s\) \[0\] have 2 token\(s\), not more than the 2 attention sinks"):
        c.decoder(batch=2).prefill(x, attention_mask=valid)
    # one call from empty state cannot place the sinks: it refuses a padded batch and names the way that can
    with pytest.raises(Exception, match="keeps 2 attention sinks in ring KV states.*generate"):
        c(x, attention_mask=valid)
    x, valid = _padded([ids(3, seed=46), ids(3, seed=47)])        # not padded: one call runs it
    assert c(x, attention_mask=valid) is not None


def test_the_c_target_says_how_to_bind_the_mask_columns_and_a_ctx_no_call_has_is_refused(model):
    """sparsify-attention makes the mask's columns a dim of its own, ctx = positions before the call + seq. It
    exists only after the pass, so the c target's advice is a second bind-shapes after it; a ctx that does not
    fit the bound state (or a ctx bound before the pass) is a clear error, not a crash in the build."""
    bind, rewrite = "bind-shapes{dims=[batch=1,past=0,seq=16]},canonicalize,", "sparsify-attention{window=8,sinks=2}"
    x = torch.zeros(1, 16, dtype=torch.long)
    with pytest.raises(Exception, match=r"exists only after that pass.*<the pass that made ctx>,"
                                        r"bind-shapes\{dims=\[ctx=16\]\},dce"):
        slimgraph.optimize(model, (x,), target="c", pipeline=f"{bind}{rewrite},dce")
    with pytest.raises(PassError, match=r"has no dim ctx .*bind it in a second bind-shapes after that pass"):
        slimgraph.optimize(model, (x,), target="reference", pipeline=f"bind-shapes{{dims=[ctx=16]}},{bind}{rewrite}")
    for ctx, fix in [(1, 16), (17, 16)]:
        with pytest.raises(PassError, match=rf"ctx={ctx} does not fit .*ctx = the positions before the call \+ "
                                            rf"seq.*bind ctx={fix}"):
            slimgraph.optimize(model, (x,), target="reference",
                               pipeline=f"{bind}{rewrite},bind-shapes{{dims=[ctx={ctx}]}}")
    # a ring holds at most window + sinks rows: a larger bound past is refused whatever ctx (not advised in a loop)
    for ctx in (21, 11):
        with pytest.raises(PassError, match=r"ring of window \+ sinks = 10 rows, bound to hold 20.*at most 10"):
            slimgraph.optimize(model, (x,), target="reference", pipeline=f"bind-shapes{{dims=[batch=1,past=20,seq=1]}},"
                               f"canonicalize,{rewrite},bind-shapes{{dims=[ctx={ctx}]}}")
    c = slimgraph.optimize(model, (x,), target="reference",
                           pipeline=f"{bind}{rewrite},bind-shapes{{dims=[ctx=16]}},dce")
    p = ids(16)
    torch.testing.assert_close(c(p).logits, compile_(model, "reference", 8, 2)(p).logits)


@pytest.mark.parametrize("pipeline", [PIPE.format(w=40, s=2), "canonicalize,linearize-attention{window=40,sinks=2},dce",
                                      "canonicalize,dce"])
def test_a_mask_that_is_not_left_padding_is_refused_by_every_entry_point(model, pipeline):
    """The decoding convention has left pads only (0s before a row's first token). A 0 inside a row was taken
    for a pad: with sinks, sinks_first reordered the row's real tokens around it (silently wrong logits); a 0
    at the end of a row, or a row of 0s, has no token to decode from. prefill and generate refuse them;
    model() (one forward) refuses holes and empty rows and takes HF's right padding where no sinks are kept,
    with transformers' logits on the real positions."""
    c = compile_(model, "reference", pipeline=pipeline)
    x = ids(12, seed=5, batch=2)
    hole, right, empty = (torch.ones(2, 12, dtype=torch.long) for _ in range(3))
    hole[1, 5], right[1, -2:], empty[1] = 0, 0, 0
    for mask in (hole, right, empty):
        with pytest.raises(DecoderError, match=r"prefill\(\): attention_mask row 1 is .*0s may only stand before "
                                               r"a row's first token .*left padding"):
            c.decoder(batch=2).prefill(x, attention_mask=mask)
        with pytest.raises(DecoderError, match="row 1 .*0s may only stand before a row's first token"):
            generate(c, x, 3, attention_mask=mask)
    for mask in (hole, empty):
        with pytest.raises(Exception, match=r"model\(input_ids, attention_mask\): attention_mask row 1 .*0s may only "
                                            r"stand before a row's first token or after its last"):
            c(x, attention_mask=mask)
    if "sinks" in pipeline:
        with pytest.raises(Exception, match="keeps 2 attention sinks"):
            c(x, attention_mask=right)
    else:
        with torch.no_grad():
            want = model(x, attention_mask=right).logits
        got = c(x, attention_mask=right).logits
        torch.testing.assert_close(got[right.bool()], want[right.bool()], rtol=1e-4, atol=1e-4)
    left = torch.ones(2, 12, dtype=torch.long)
    left[1, :3] = 0
    assert c.decoder(batch=2).prefill(x, attention_mask=left)["logits"].shape[:2] == (2, 12)


@pytest.mark.parametrize("sinks", [0, OWN_S])
def test_a_left_padded_batch_over_a_models_own_window_and_the_ring_equals_each_prompt_alone(sinks):
    """Slots count pads, positions do not: both windows compare slot differences, which left pads do not change.
    With sinks the decoder puts a row's pads after its sinks (ir/causal_lm.py `sinks_first`): the model's own window
    then compares positions (a slot past the sinks minus the row's pads), so a sink leaves it when it would alone."""
    model, _ = own_model("gemma3", 10)
    c = compile_(model, "torch", OWN_W, sinks)
    prompts = [ids(n, seed=30 + n) for n in (6, 19, 12)]
    more = ids(14, seed=33)
    x = torch.zeros(3, 19, dtype=torch.long)
    valid = torch.ones_like(x)
    for r, p in enumerate(prompts):
        x[r, 19 - p.shape[1]:], valid[r, :19 - p.shape[1]] = p[0], 0
    dec = c.decoder(batch=3)
    outs = [dec.prefill(x, attention_mask=valid)["logits"][:, -1:]]
    outs += [dec.step(more[0, i].expand(3))["logits"] for i in range(more.shape[1])]
    got = torch.cat(outs, 1)
    for r, p in enumerate(prompts):
        alone = c.decoder()
        want = [alone.prefill(p)["logits"][:, -1:]] + [alone.step(more[:, i])["logits"] for i in range(more.shape[1])]
        torch.testing.assert_close(got[r:r + 1], torch.cat(want, 1), rtol=1e-4, atol=1e-4, msg=lambda m: f"row {r}: {m}")


def test_speculative_trees_run_past_a_models_own_window_once_rewritten():
    """Plain canonicalize keeps Mistral's window placed by index (the decoder refuses trees past it); after
    sparsify-attention it is placed by position, so a tree greedy decode commits the plain greedy stream."""
    model, _ = own_model("mistral", 10)
    plain = compile_(model, "torch", pipeline="canonicalize,dce")
    dec = plain.decoder()
    dec.prefill(ids(20, seed=34))
    assert not dec.tree_ok(5)
    c = compile_(model, "torch", OWN_W, OWN_S)
    prompt = ids(20, seed=34)
    want, _ = _plain_greedy(c, prompt, 40)
    for tree in (False, True):
        assert _speculative_greedy(c, prompt, 40, want, tree)[0][:40] == want, f"tree={tree}"


def test_an_unmasked_attention_with_its_own_window_composes_by_index_or_is_a_clear_error():
    def graph(window):
        g = ir.Graph("own")
        q = g.add_input("q", ir.TensorType("f32", (1, 4, "s", 8)))
        outs = []
        for i in range(2):
            past = g.add_input(f"past_key_{i}", ir.TensorType("f32", (1, 2, "p", 8)))
            k = g.op("cache_append", past, g.op("slice", q, dim=1, start=0, end=2), axis=2)
            g.declare_state(f"key_{i}", past, k, "append", axis=2)
            outs.append(g.op("attention", q, k, k, causal=True, window=window))
        g.set_outputs(outs + [s.output for s in g.states])
        return g
    g = graph(5)
    parse_pipeline("sparsify-attention{window=8,sinks=2}")[0].run(g)
    assert [(n.attrs["window"], n.attrs["sinks"]) for n in g.nodes if n.op == "attention"] == [(5, 0)] * 2
    with pytest.raises(PassError, match="has its own sliding window \\(window=9, sinks=0\\) and no mask"):
        parse_pipeline("sparsify-attention{window=8,sinks=2}")[0].run(graph(9))


@pytest.mark.parametrize("pipeline", [
    "canonicalize,sparsify-attention{window=8,sinks=2},dce",
    "canonicalize,linearize-attention{feature_map=hedgehog,window=6,sinks=3},dce",
    "canonicalize,sparsify-attention{kind=block_sparse,block=4,local=2,globals=1},dce",
])
def test_a_left_padded_batch_keeps_each_rows_own_sinks_and_blocks(model, pipeline):
    """A ring keeps the first `sinks` cache slots: with plain left padding those are a shorter prompt's pads, and
    its real first tokens, the attention sinks, were dropped once they left the window (StreamingLLM without
    sinks). The decoder lays a padded prompt out with each row's first `sinks` tokens in the first slots, its pads
    after them: each row then computes what it computes alone, through the prefill and past the window, and the
    outputs keep the caller's left-padded layout. Blocks (block_sparse) are counted from each row's first
    token, not from the first pad."""
    c = compile_(model, "torch", pipeline=pipeline)
    prompts = [ids(n, seed=40 + n) for n in (5, 19, 12)]
    more = ids(14, seed=43)
    width = max(p.shape[1] for p in prompts)
    x = torch.zeros(3, width, dtype=torch.long)
    valid = torch.ones_like(x)
    for r, p in enumerate(prompts):
        x[r, width - p.shape[1]:], valid[r, :width - p.shape[1]] = p[0], 0
    dec = c.decoder(batch=3)
    first = dec.prefill(x, attention_mask=valid)["logits"]
    got = torch.cat([first[:, -1:]] + [dec.step(more[0, i].expand(3))["logits"] for i in range(more.shape[1])], 1)
    for r, p in enumerate(prompts):
        alone = c.decoder()
        pre = alone.prefill(p)["logits"]
        torch.testing.assert_close(first[r:r + 1, width - p.shape[1]:], pre, rtol=1e-4, atol=1e-4,
                                   msg=lambda m: f"row {r} prefill: {m}")
        want = [pre[:, -1:]] + [alone.step(more[:, i])["logits"] for i in range(more.shape[1])]
        torch.testing.assert_close(got[r:r + 1], torch.cat(want, 1), rtol=1e-4, atol=1e-4,
                                   msg=lambda m: f"row {r}: {m}")
    out = c.generate(x, 12, attention_mask=valid)
    for r, p in enumerate(prompts):
        assert torch.equal(out[r, width - p.shape[1]:], c.generate(p, 12)[0]), f"row {r}"


def test_a_bf16_ring_runs_on_the_cpu_target():
    """bf16 attention takes the cpu target's unfused path (the fused kernel is f32): there the ring's mask
    (last dim Min(ctx - seq, W + S) + seq) and the keys (past + seq) are the same length spelled two ways, cast
    to one (checked when run) as the fused kernel does, instead of a TVM assertion at compile time."""
    pytest.importorskip("tvm", reason="the cpu target needs apache-tvm")
    model = tiny_llama().to(torch.bfloat16)
    pipe = "canonicalize,sparsify-attention{window=8,sinks=2},dce"
    c = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="cpu", pipeline=pipe)
    ref = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="reference", pipeline=pipe)
    x = ids(24, seed=11)
    got, want = c.decoder(), ref.decoder()
    outs = [(got.prefill(x[:, :6])["logits"], want.prefill(x[:, :6])["logits"])]
    outs += [(got.step(x[:, i])["logits"], want.step(x[:, i])["logits"]) for i in range(6, 24)]
    for a, b in outs:
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.05)
