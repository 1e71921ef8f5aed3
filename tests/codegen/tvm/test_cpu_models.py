"""The `cpu` target on whole models: a tiny Llama decodes token-identically to the reference target (fp32 and
int4), MiniLM matches the interpreter, and artifacts carry the library (load without rebuilding; another
host rebuilds with a note)."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import slimgraph
from slimgraph import artifact, ir

tvm = pytest.importorskip("tvm", reason="the cpu target needs apache-tvm: pip install 'slimgraph[tvm]'")
transformers = pytest.importorskip("transformers")
from tiny_lm import tiny_llama  # noqa: E402

EXAMPLE = (torch.zeros(1, 4, dtype=torch.long),)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SLIMGRAPH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tvm-cache"))


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def prompt(n=7, seed=5):
    return torch.randint(0, 96, (1, n), generator=torch.Generator().manual_seed(seed))


def test_tiny_llama_fp32_decode_is_token_identical_to_the_reference_target(model):
    fast = slimgraph.optimize(model, EXAMPLE, target="cpu")
    ref = slimgraph.optimize(model, EXAMPLE, target="reference")
    ids = prompt()
    torch.testing.assert_close(fast(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)
    got = fast.generate(ids, max_new_tokens=24)
    assert torch.equal(got, ref.generate(ids, max_new_tokens=24))
    assert torch.equal(got, model.generate(ids, max_new_tokens=24, do_sample=False))


def test_tiny_llama_int4_qlinear_decode_matches_the_reference_target(model):
    pipe = "canonicalize,quantize-weights{bits=4,group=32},fuse-dequant-matmul,cse,dce"
    fast = slimgraph.optimize(model, EXAMPLE, target="cpu", pipeline=pipe)
    ref = slimgraph.optimize(model, EXAMPLE, target="reference", pipeline=pipe)
    assert fast.graph.op_counts().get("qlinear", 0) >= 7
    ids = prompt(seed=9)
    torch.testing.assert_close(fast(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(fast.generate(ids, max_new_tokens=16), ref.generate(ids, max_new_tokens=16))


@pytest.mark.slow
def test_minilm_matches_the_interpreter(minilm):
    model, tok = minilm
    enc = tok(["a compiled sentence embedding on the cpu target", "short"], padding=True, return_tensors="pt")
    fast = slimgraph.optimize(model, example_kwargs=dict(enc), target="cpu")
    flat = [enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]]
    ref = ir.run(fast.graph, *flat)
    got = fast.run(*flat)
    for r, o in zip(ref, got):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        hf = model(**enc)
    torch.testing.assert_close(fast(**enc).last_hidden_state, hf.last_hidden_state, rtol=1e-4, atol=1e-4)


W8A8 = "canonicalize,quantize-weights{bits=8,group=32},fuse-dequant-matmul,merge-sibling-linears,quantize-activations,cse,dce"


def test_a_bert_encoder_with_int8_activations_runs_vnni_panels_and_matches_the_reference_target():
    """W8A8 on an encoder (the MiniLM pipeline of benchmarks/bench_cpu_target.py): every linear becomes an int8
    qlinear on int8 activation codes, the VNNI panel kernel where the host has it, and the result equals the
    interpreter's qlinear(quantize_activation(x)) on the same graph (up to f32 summation order, which may move
    an activation code by one step: hence 1e-3, not 1e-4)."""
    from slimgraph.codegen.tvm.kernels import has_vnni
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)
    bert = transformers.BertModel(cfg).eval()
    enc = {"input_ids": torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(1)),
           "attention_mask": torch.ones(1, 12, dtype=torch.long)}
    fast = slimgraph.optimize(bert, example_kwargs=enc, target="cpu", pipeline=W8A8)
    counts = fast.graph.op_counts()
    # per layer: q/k/v merged into one, o, the two ffn linears (each reads its own activations); and the pooler
    assert counts.get("qlinear") == counts.get("quantize_activation") == 2 * 4 + 1
    assert ("int8_vnni_panel_gemv" in fast.runner.products.read_bytes("cpu_module.relax.py").decode()) == has_vnni()
    ref = slimgraph.optimize(bert, example_kwargs=enc, target="reference", pipeline=W8A8)
    torch.testing.assert_close(fast(**enc).last_hidden_state, ref(**enc).last_hidden_state, rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        want = bert(**enc).last_hidden_state
    got = fast(**enc).last_hidden_state
    assert float(torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), 0)) > 0.999


@pytest.mark.slow
def test_minilm_with_int8_weights_and_activations_keeps_its_sentence_embeddings(minilm):
    """MiniLM W8A8 g32 (the `cpu` target's fast encoder pipeline: 0.35x torch eager's latency in
    benchmarks/RESULTS.md): mean-pooled sentence embeddings keep cosine similarity >= 0.999 with fp32's."""
    from slimgraph import evaluate
    model, tok = minilm
    enc = tok(evaluate.sentences(16), padding=True, return_tensors="pt")
    fast = slimgraph.optimize(model, example_kwargs=dict(enc), target="cpu", pipeline=W8A8)
    mask = enc["attention_mask"].unsqueeze(-1).float()
    with torch.no_grad():
        want = (model(**enc).last_hidden_state * mask).sum(1) / mask.sum(1)
    got = (fast(**enc).last_hidden_state * mask).sum(1) / mask.sum(1)
    assert float(torch.nn.functional.cosine_similarity(got, want).min()) >= 0.999


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    fast = slimgraph.optimize(model, EXAMPLE, target="cpu")
    path = tmp_path_factory.mktemp("art") / "tiny.sg"
    fast.save(path)
    return fast, path


def test_artifact_carries_the_library_and_loads_without_rebuilding(saved, tmp_path):
    fast, path = saved
    names = sorted(p.name for p in path.iterdir())
    assert "cpu_module.so" in names and "cpu_module.relax.py" in names
    ids = prompt(seed=11)
    want = fast.generate(ids, max_new_tokens=8)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import torch, slimgraph
        import slimgraph.codegen.tvm.target as T
        def no_codegen(*a, **k): raise AssertionError("codegen ran on load")
        T.build = T.compile_module = no_codegen
        m = slimgraph.load({str(path)!r})
        print(m.target, m.generate(torch.tensor({ids.tolist()}), max_new_tokens=8).tolist())
    """)], capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                            "SLIMGRAPH_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split(" ", 1) == ["cpu", f"{want.tolist()}\n"]


@pytest.mark.parametrize("key,value", [("llvm_target", '{"kind": "llvm", "mcpu": "elsewhere"}'),
                                       ("codegen", "elsewhere")])
def test_artifact_from_another_host_is_rebuilt_with_a_note(saved, key, value):
    """Another CPU, or a library made by other codegen sources (its calling convention may differ: e.g. before
    the KV cache was passed as buffers), is rebuilt from the graph with a note."""
    _, path = saved
    m = json.loads((path / "manifest.json").read_text())
    m["products"]["meta"]["host"][key] = value
    m["checksum"] = artifact._checksum(m)
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.warns(UserWarning, match=f"built for another host .*{key} .*elsewhere.* rebuilt"):
        loaded = slimgraph.load(path)
    assert any("rebuilt" in n for n in loaded.report.notes)
    ids = prompt(seed=12)
    assert torch.equal(loaded.generate(ids, max_new_tokens=6), saved[0].generate(ids, max_new_tokens=6))


@pytest.mark.parametrize("a8", [True, 16, False], ids=["w4a8", "w4a16", "int4"])
def test_int4_verify_equals_single_steps_bit_for_bit_so_speculative_decoding_is_exact(a8):
    """With int8 activations (quantize-activations) a 1e-7 difference upstream can move an activation code, so
    a verify of k candidates must compute each row exactly as a one-token step does (attention's decode form
    whenever there is a past, however many candidates: kernels.PREFILL_MIN_Q; the int4 kernels' row blocks do
    each row's arithmetic as a single row's): logits equal bit for bit, and prompt-lookup speculative decoding
    gives plain greedy decoding's tokens. Weight-only int4 (the lookup kernel) keeps the same property."""
    from slimgraph.codegen.tvm.kernels import PREFILL_MIN_Q, has_avx512, has_vnni
    model = tiny_llama(vocab_size=128)
    pipe = ("canonicalize,quantize-weights{bits=4,group=64},fuse-dequant-matmul,merge-sibling-linears,"
            + ("quantize-activations{bits=16}," if a8 == 16 else "quantize-activations," if a8 else "") + "cse,dce")
    fast = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="cpu", pipeline=pipe)
    source = fast.runner.products.read_bytes("cpu_module.relax.py").decode()
    assert ("int4_vnni_panel_gemv" in source) == (a8 and has_vnni())
    assert ("int4_lookup_gemv" in source) == (not a8 and has_avx512())
    gen = torch.Generator().manual_seed(3)
    prompt, cands = torch.randint(0, 128, (1, 7), generator=gen), torch.randint(0, 128, (1, 40), generator=gen)
    steps = fast.decoder()
    steps.prefill(prompt)
    one_by_one = torch.cat([steps.step(cands[:, i])["logits"] for i in range(cands.shape[1])], 1)
    dec = fast.decoder()
    dec.prefill(prompt)
    for k in (PREFILL_MIN_Q - 1, PREFILL_MIN_Q, 12, 40):   # 40: more than the blocked form's row count
        assert torch.equal(dec.verify(cands[:, :k])["logits"], one_by_one[:, :k]), k
        dec.accept(0)
    text = torch.tensor([[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7]])   # repeats: the lookup drafts get accepted
    plain = fast.generate(text, max_new_tokens=24, eos_token_id=None)
    spec = fast.generate(text, max_new_tokens=24, eos_token_id=None, lookup=4)
    assert torch.equal(spec, plain) and fast.last_generate_stats.verifies < 24


@pytest.mark.parametrize("kind", ["medusa", "eagle"])
def test_draft_heads_decode_on_the_cpu_target_as_plain_greedy_does(model, kind):
    """insert-draft-heads compiles for `cpu` (the heads' logits and the hidden state are graph outputs like any
    other): its draft outputs equal the reference target's, and chain, fixed-tree and dynamic-tree speculative
    decoding give plain greedy decoding's tokens."""
    from slimgraph.generate import generate
    pipe = "canonicalize,insert-draft-heads{num_heads=3" + (",kind=eagle}" if kind == "eagle" else "}")
    fast = slimgraph.optimize(model, EXAMPLE, target="cpu", pipeline=pipe)
    ref = slimgraph.optimize(model, EXAMPLE, target="reference", pipeline=pipe)
    ids = torch.tensor([[3, 17, 5, 60, 9, 17, 5]])
    got, want = fast.decoder().prefill(ids), ref.decoder().prefill(ids)
    names = [n for n in want if n.startswith(("draft_logits", "hidden_states"))]
    assert "hidden_states" in names and (kind == "eagle" or "draft_logits_2" in names), sorted(want)
    for name in names:
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=1e-4, msg=name)
    plain = generate(fast, ids, 20, speculative=False)
    assert torch.equal(plain, generate(ref, ids, 20, speculative=False))
    for mode, tree in (("chain", None), ("tree", [(0,), (1,), (0, 0), (0, 1), (0, 0, 0)]), ("tree", "dynamic")):
        assert torch.equal(generate(fast, ids, 20, speculative=mode, tree=tree), plain), (mode, tree)
        assert fast.last_generate_stats.speculative == mode


@pytest.mark.parametrize("quant", ["", "quantize-weights{bits=4,group=32},fuse-dequant-matmul,quantize-activations{bits=16},"],
                         ids=["fp32", "w4a16"])
def test_sliding_window_with_sinks_decodes_in_a_bounded_ring_and_speculates_exactly(model, quant, tmp_path):
    """sparsify-attention on the cpu target: the ring states (cache_window) keep window + sinks rows however long
    the context; prefill and steps past the wrap match the reference target; a verify of k candidates equals k
    steps bit for bit, so prompt lookup keeps plain greedy's tokens; the artifact loads and decodes alike."""
    pipe = f"canonicalize,{quant}sparsify-attention{{window=8,sinks=2}},cse,dce"
    fast = slimgraph.optimize(model, EXAMPLE, target="cpu", pipeline=pipe)
    ref = slimgraph.optimize(model, EXAMPLE, target="reference", pipeline=pipe)
    x = prompt(30, seed=11)
    dec, want = fast.decoder(), ref.decoder()
    torch.testing.assert_close(dec.prefill(x[:, :20])["logits"], want.prefill(x[:, :20])["logits"],
                               rtol=1e-4, atol=1e-4)
    for i in range(20, 30):
        torch.testing.assert_close(dec.step(x[:, i])["logits"], want.step(x[:, i])["logits"], rtol=1e-4, atol=1e-4)
    assert all(t.shape[2] == 10 for t in dec.states) and dec.length == 30
    steps = fast.decoder()
    steps.prefill(x[:, :12])
    one_by_one = torch.cat([steps.step(x[:, i])["logits"] for i in range(12, 30)], 1)
    spec = fast.decoder()
    spec.prefill(x[:, :12])
    assert torch.equal(spec.verify(x[:, 12:30])["logits"], one_by_one)
    text = torch.tensor([[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7]])
    plain = fast.generate(text, max_new_tokens=24, eos_token_id=None)
    assert torch.equal(fast.generate(text, max_new_tokens=24, eos_token_id=None, lookup=4), plain)
    fast.save(tmp_path / "ring.sg")
    assert torch.equal(slimgraph.load(tmp_path / "ring.sg").generate(text, max_new_tokens=24, eos_token_id=None), plain)


def test_ring_states_slide_in_place_and_a_consumed_ring_is_refused(model):
    """sparsify-attention's ring states are kept in place like the append ones (module.inplace_states): a step
    writes its new rows and the sink rows into the ring's buffer and attention reads the ring there, so 40 steps
    past the wrap use one buffer (before: two copies of every ring per layer per step, cache_append's concat
    and cache_window's gather). A step that slides a ring consumes the state it was given (its sink rows land on
    rows the old view shows): passing that view again is an error, never a wrong answer; a kept copy
    (runner.keep_state) runs again and gives the step's logits."""
    from slimgraph.codegen.torch_kv import StaleStateError
    from slimgraph.codegen.tvm.module import inplace_states
    pipe = "canonicalize,sparsify-attention{window=8,sinks=2},cse,dce"
    fast = slimgraph.optimize(model, EXAMPLE, target="cpu", pipeline=pipe)
    ref = slimgraph.optimize(model, EXAMPLE, target="reference", pipeline=pipe)
    kv = inplace_states(fast.graph)
    assert len(kv) == 4 and all(k.window is not None and (k.window_rows, k.sinks) == (8, 2) for k in kv)
    assert "ring_slide" in fast.runner.products.read_bytes("cpu_module.relax.py").decode()
    x = prompt(52, seed=4)
    dec, want = fast.decoder(), ref.decoder()
    torch.testing.assert_close(dec.prefill(x[:, :12])["logits"], want.prefill(x[:, :12])["logits"],
                               rtol=1e-4, atol=1e-4)
    storages = set()
    for i in range(12, 52):
        torch.testing.assert_close(dec.step(x[:, i])["logits"], want.step(x[:, i])["logits"], rtol=1e-4, atol=1e-4)
        assert all(t.shape[2] == 10 for t in dec.states)
        storages.add(dec.states[0].untyped_storage().data_ptr())
    assert len(storages) == 1
    for t, w in zip(dec.states, want.states):
        torch.testing.assert_close(t, w, rtol=1e-4, atol=1e-4)

    old = list(dec.states)
    kept = [fast.runner.keep_state(t) for t in old]
    n = dec.length
    args = (x[:, 51:52], torch.tensor([[n]]), torch.ones(1, 1, 1, n + 1, dtype=torch.bool))
    stepped = dec.step(x[:, 51])["logits"]
    with pytest.raises(StaleStateError, match="keep_state"):
        fast.runner(*args, *old)
    torch.testing.assert_close(fast.runner(*args, *kept)[0], stepped, rtol=0, atol=0)


def test_a_long_prompt_through_a_ring_leaves_only_the_ring_in_memory(model):
    """A ring's memory stays bounded by its window + sinks after a prompt (or a chunk) longer than the ring: the
    ring's buffer then holds the prompt's rows only during the call, and the ring moves to a buffer of its own
    size once (codegen/tvm/target.py `_ring_moved`; one copy of window + sinks rows). Before, the 300-token
    prompt's buffer (600 rows per state: the prompt and as many again of headroom) stayed alive as the ring's
    buffer for the next ~300 steps (a 4096-token prompt into SmolLM2's W=256 + 4 ring: 377 MB held instead of
    24 MB), and the call itself allocated twice the prompt's rows."""
    from slimgraph.codegen.torch_kv import HEADROOM
    from slimgraph.codegen.tvm.target import _kv_buffer
    pipe = "canonicalize,sparsify-attention{window=8,sinks=2},cse,dce"
    fast = slimgraph.optimize(model, EXAMPLE, target="cpu", pipeline=pipe)
    ref = slimgraph.optimize(model, EXAMPLE, target="reference", pipeline=pipe)
    bound = 2 * (10 + 1 + max(HEADROOM, 10 + 1))     # rows: twice a decode step's buffer for a ring of 10 rows

    def held(states):   # rows of the buffers behind the state views
        return [t.untyped_storage().nbytes() // (t.shape[0] * t.shape[1] * t.shape[3] * t.element_size())
                for t in states]

    x = prompt(700, seed=8)
    dec, want = fast.decoder(), ref.decoder()
    torch.testing.assert_close(dec.prefill(x[:, :300])["logits"], want.prefill(x[:, :300])["logits"],
                               rtol=1e-4, atol=1e-4)
    assert all(t.shape[2] == 10 for t in dec.states) and max(held(dec.states)) <= bound < 300
    storages = set()
    for i in range(300, 360):
        torch.testing.assert_close(dec.step(x[:, i])["logits"], want.step(x[:, i])["logits"], rtol=1e-4, atol=1e-4)
        storages.add(dec.states[0].untyped_storage().data_ptr())
    assert len(storages) == 1                       # the moved ring slides in place again
    torch.testing.assert_close(dec.step(x[:, 360:660])["logits"], want.step(x[:, 360:660])["logits"],
                               rtol=1e-4, atol=1e-4)   # a long chunk mid-decode: its rows are dropped too
    assert max(held(dec.states)) <= bound
    for i in range(660, 700):
        torch.testing.assert_close(dec.step(x[:, i])["logits"], want.step(x[:, i])["logits"], rtol=1e-4, atol=1e-4)
    for t, w in zip(dec.states, want.states):
        torch.testing.assert_close(t, w, rtol=1e-4, atol=1e-4)
    # during the call: the prompt's rows and no headroom (the ring moves out right after)
    assert _kv_buffer(torch.zeros(1, 2, 0, 16), 2, 0, 300, keep=10)[0].data.shape[2] == 300


@pytest.mark.parametrize("rewrite", ["sparsify-attention{window=5,sinks=3}", "linearize-attention{window=6,sinks=1}"])
def test_nothing_reads_a_ring_buffer_after_its_slide_once_tvm_has_lowered_main(model, rewrite):
    """The ring slide overwrites rows that this call's attention (and the hybrid's copies of the ring for its
    linear part) read, so it must run after every reader. The Lowerer emits it last inside a dataflow block,
    whose bindings TVM may reorder; so check the order in `main` after the cpu target's whole Relax pipeline
    (legalize, fuse, memory planning, VM lowering): each ring buffer parameter is written in place by its slide
    (not a copy of it), and no kernel call after the slide reads it."""
    import re
    import tvm as tvm_
    from slimgraph.codegen.tvm.module import inplace_states, to_relax
    from slimgraph.codegen.tvm.pipeline import relax_pipeline
    from slimgraph.codegen.tvm.target import _target_spec
    c = slimgraph.optimize(model, EXAMPLE, target="reference", pipeline=f"canonicalize,{rewrite},cse,dce")
    rings = [c.graph.inputs[k.input].name for k in inplace_states(c.graph) if k.window is not None]
    assert len(rings) == 4
    mod, _ = to_relax(c.graph)
    target = tvm_.target.Target(_target_spec())
    with target:
        lines = relax_pipeline(target)(mod)["main"].script().splitlines()
    calls = [(i, m.group(1), [a.strip() for a in m.group(2).split(",")]) for i, line in enumerate(lines)
             if (m := re.match(r"\s*(\w+)\((.*)\)\s*$", line))]
    for p in rings:
        slides = [i for i, name, args in calls if name.startswith("ring_slide") and args[0] == p]
        assert len(slides) == 1, (p, slides)
        readers = [name for i, name, args in calls if p in args and not name.startswith("ring_slide")]
        assert len(readers) >= 2, (p, readers)     # its append and a reader: attention in place, or a copy
        if rewrite.startswith("sparsify"):         # (the hybrid's linear_attention reads a copy of the rows)
            assert any(name.startswith("attention") for name in readers), (p, readers)
        late = [lines[i].strip() for i, name, args in calls if i > slides[0] and p in args]
        assert not late, f"{p} read after its slide: {late}"


def test_kv_cache_is_appended_in_place_and_branches_never_overwrite_each_other(model):
    """The KV states are updated in place (module.inplace_states): main takes each state's buffer plus the
    past length, writes the new rows into it, and the runner returns views of the buffer, so a decode step
    copies and allocates no cache (before, every step allocated every layer's whole cache and the VM's pooled
    allocator kept each old size: 10 GB of RSS after 1024 SmolLM2 tokens). A second call from a past that an
    earlier call already extended (two branches) gets a new buffer, never rows another view shows; a
    truncated state (the decoder's rollback) is extended in place again."""
    from slimgraph.codegen.tvm.module import inplace_states
    fast = slimgraph.optimize(model, EXAMPLE, target="cpu")
    ref = slimgraph.optimize(model, EXAMPLE, target="reference")
    kv = inplace_states(fast.graph)
    assert len(kv) == 4 == len(fast.graph.states)              # 2 layers x (key, value)
    src = fast.runner.products.read_bytes("cpu_module.relax.py").decode()
    assert "kv_append" in src and "kv_lengths" in src
    assert not [line for line in src.splitlines() if "concat" in line and "past" in line]   # no cache copied

    zeros = [torch.zeros(1, 2, 0, 16) for _ in kv]
    ids = prompt(6)
    logits, states = run(fast, ids, zeros)
    ref_logits, ref_states = run(ref, ids, zeros)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    base = [s.untyped_storage().data_ptr() for s in states]
    a_logits, a_states = run(fast, prompt(1, seed=1), states)          # in place: the same buffers
    assert [s.untyped_storage().data_ptr() for s in a_states] == base
    b_logits, b_states = run(fast, prompt(2, seed=2), states)          # a branch from the same past
    assert all(s.untyped_storage().data_ptr() not in base for s in b_states)
    for got, (want, _) in ((a_logits, run(ref, prompt(1, seed=1), ref_states)),
                           (b_logits, run(ref, prompt(2, seed=2), ref_states))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a_states[0][:, :, :7], run(ref, prompt(1, seed=1), ref_states)[1][0])
    cut = [fast.runner.truncate_state(s, 2, 6) for s in a_states]          # roll back, extend in place again
    c_logits, c_states = run(fast, prompt(1, seed=3), cut)
    assert [s.untyped_storage().data_ptr() for s in c_states] == base
    torch.testing.assert_close(c_logits, run(ref, prompt(1, seed=3), ref_states)[0], rtol=1e-4, atol=1e-4)


def test_kv_buffers_grow_past_their_headroom_and_decode_stays_exact(model):
    """200 steps: the buffers (prompt + 128 rows of headroom at first) are outgrown and moved; greedy tokens
    stay those of the reference target."""
    fast = slimgraph.optimize(model, EXAMPLE, target="cpu")
    ref = slimgraph.optimize(model, EXAMPLE, target="reference")
    ids = prompt(seed=21)
    assert torch.equal(fast.generate(ids, max_new_tokens=200, eos_token_id=[]),
                       ref.generate(ids, max_new_tokens=200, eos_token_id=[]))


# ---- the in-place KV cache reached directly through the runner (a fresh reviewer's cases) ----------------
def run(c, ids, states):
    n, past = ids.shape[1], states[0].shape[2]
    mask = torch.ones(1, 1, n, past + n, dtype=torch.bool).tril(past)
    outs = c.runner(ids, torch.arange(past, past + n)[None], mask, *states)
    return outs[0], list(outs[1:])


def test_one_view_passed_for_two_states_is_not_appended_to_twice(model):
    """The same tensor given for two KV states of one call (here layer 0's key and value): each state's new rows
    go to their own buffer, as on the torch target; before, both states appended in place into the one buffer
    (the value's rows overwrote the key's): wrong logits and a wrong key state, silently."""
    fast = slimgraph.optimize(model, EXAMPLE, target="cpu")
    ref = slimgraph.optimize(model, EXAMPLE, target="reference")
    zeros = [torch.zeros(1, 2, 0, 16) for _ in range(4)]
    _, states = run(fast, prompt(5, 1), zeros)
    _, ref_states = run(ref, prompt(5, 1), zeros)
    got, got_states = run(fast, prompt(1, 2), [states[0], states[0], states[2], states[3]])
    want, want_states = run(ref, prompt(1, 2), [ref_states[0], ref_states[0], ref_states[2], ref_states[3]])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for g, w in zip(got_states, want_states):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(states[0], ref_states[0], rtol=1e-4, atol=1e-4)   # the shared past is unchanged


def test_a_layer_whose_key_and_value_buffers_differ_in_capacity_runs(model):
    """A state replaced by a copy (a user's out-of-place edit of one state) gets a new buffer while the other
    state of its layer is appended to in place: key and value buffers of different capacities reach attention.
    Before, its kernel took one capacity for both and the call failed ("Mismatched v.shape[2]")."""
    fast = slimgraph.optimize(model, EXAMPLE, target="cpu")
    ref = slimgraph.optimize(model, EXAMPLE, target="reference")
    zeros = [torch.zeros(1, 2, 0, 16) for _ in range(4)]
    _, states = run(fast, prompt(5, 1), zeros)
    _, ref_states = run(ref, prompt(5, 1), zeros)
    states[1] = states[1].clone()
    got, _ = run(fast, prompt(1, 2), states)
    torch.testing.assert_close(got, run(ref, prompt(1, 2), ref_states)[0], rtol=1e-4, atol=1e-4)
    dec, want = fast.decoder(), ref.decoder()
    dec.prefill(prompt(5, 1))
    want.prefill(prompt(5, 1))
    dec.states[3] = dec.states[3].clone()
    torch.testing.assert_close(dec.step(torch.tensor([3]))["logits"], want.step(torch.tensor([3]))["logits"],
                               rtol=1e-4, atol=1e-4)


def test_an_artifact_built_by_another_cpu_codegen_is_rebuilt_not_run(model, tmp_path, monkeypatch):
    """An artifact's library follows the codegen that built it: one saved before the in-place KV cache (main took
    no KV buffers nor `kv_lengths`) failed at the first call with TVM's "Invoking function main expects 44
    arguments ... but 45 arguments were provided", since slimgraph's version (the host key) had not changed.
    The host now names the cpu codegen's sources, so such an artifact is rebuilt with a note."""
    import slimgraph.codegen.tvm.module as M
    import slimgraph.codegen.tvm.target as T
    ids = prompt(6, 3)
    with monkeypatch.context() as old:     # an older codegen: no in-place states, another source digest
        old.setattr(M, "inplace_states", lambda graph: [])
        old.setattr(T, "_codegen_digest", lambda: "an-older-cpu-codegen")
        fast = slimgraph.optimize(model, EXAMPLE, target="cpu")
        want = fast.generate(ids, max_new_tokens=8)
        fast.save(tmp_path / "old.sg")
    with pytest.warns(UserWarning, match="built for another host .*codegen.*rebuilt"):
        loaded = slimgraph.load(tmp_path / "old.sg")
    assert torch.equal(loaded.generate(ids, max_new_tokens=8), want)


def test_a_state_the_runner_cannot_own_is_a_clear_error(model):
    """A KV state off the cpu (here on torch's meta device) passes the interpreter's dtype/shape check; the
    error names the input, the device and what the cpu target needs (before: "state input past_key_0")."""
    fast = slimgraph.optimize(model, EXAMPLE, target="cpu")
    states = [torch.zeros(1, 2, 0, 16, device="meta")] + [torch.zeros(1, 2, 0, 16) for _ in range(3)]
    with pytest.raises(TypeError, match=r"%past_key_0 must be a rank-4 float32 tensor on the cpu, got .* on meta"):
        run(fast, prompt(2, 1), states)


def test_an_artifact_saved_again_at_the_same_path_loads_its_own_library(model, tmp_path):
    """Re-saving another model to a path an artifact was loaded from, then loading it again in the same process
    (a notebook's compile/save/load loop), runs the new library: dlopen hands back a library already loaded from
    the same file name, so the runner must not dlopen the artifact's file by its own name. The two pipelines
    differ only in code (int8 vs int16 activation codes), not in main's parameters, so a reused library would
    run silently, with the first model's arithmetic."""
    base = "canonicalize,quantize-weights{bits=4,group=32},fuse-dequant-matmul,quantize-activations{bits=%d},cse,dce"
    path, ids = tmp_path / "same.sg", prompt(n=12, seed=13)
    for bits in (8, 16):
        fast = slimgraph.optimize(model, EXAMPLE, target="cpu", pipeline=base % bits)
        fast.save(path)
        loaded = slimgraph.load(path)
        assert torch.equal(loaded(ids).logits, fast(ids).logits), f"bits={bits}: the loaded artifact ran other code"
