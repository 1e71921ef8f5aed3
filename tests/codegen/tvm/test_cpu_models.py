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


def test_w4a8_verify_equals_single_steps_bit_for_bit_so_speculative_decoding_is_exact():
    """With int8 activations (quantize-activations) a 1e-7 difference upstream can move an activation code, so
    a verify of k candidates must compute each row exactly as a one-token step does (attention's decode form
    whenever there is a past, however many candidates: kernels.PREFILL_MIN_Q): logits equal bit for bit, and
    prompt-lookup speculative decoding gives plain greedy decoding's tokens."""
    from slimgraph.codegen.tvm.kernels import PREFILL_MIN_Q, has_vnni
    model = tiny_llama(vocab_size=128)
    pipe = ("canonicalize,quantize-weights{bits=4,group=64},fuse-dequant-matmul,merge-sibling-linears,"
            "quantize-activations,cse,dce")
    fast = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="cpu", pipeline=pipe)
    assert ("int4_vnni_panel_gemv" in fast.runner.products.read_bytes("cpu_module.relax.py").decode()) == has_vnni()
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

    def run(c, ids, states, pos):
        n = ids.shape[1]
        past = states[0].shape[2]
        mask = torch.ones(1, 1, n, past + n, dtype=torch.bool).tril(past)
        outs = c.runner(ids, torch.arange(past, past + n)[None], mask, *states)
        return outs[0], outs[1:]

    zeros = [torch.zeros(1, 2, 0, 16) for _ in kv]
    ids = prompt(6)
    logits, states = run(fast, ids, zeros, 0)
    ref_logits, ref_states = run(ref, ids, zeros, 0)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    base = [s.untyped_storage().data_ptr() for s in states]
    a_logits, a_states = run(fast, prompt(1, seed=1), states, 6)          # in place: the same buffers
    assert [s.untyped_storage().data_ptr() for s in a_states] == base
    b_logits, b_states = run(fast, prompt(2, seed=2), states, 6)          # a branch from the same past
    assert all(s.untyped_storage().data_ptr() not in base for s in b_states)
    for got, (want, _) in ((a_logits, run(ref, prompt(1, seed=1), ref_states, 6)),
                           (b_logits, run(ref, prompt(2, seed=2), ref_states, 6))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a_states[0][:, :, :7], run(ref, prompt(1, seed=1), ref_states, 6)[1][0])
    cut = [fast.runner.truncate_state(s, 2, 6) for s in a_states]          # roll back, extend in place again
    c_logits, c_states = run(fast, prompt(1, seed=3), cut, 6)
    assert [s.untyped_storage().data_ptr() for s in c_states] == base
    torch.testing.assert_close(c_logits, run(ref, prompt(1, seed=3), ref_states, 6)[0], rtol=1e-4, atol=1e-4)


def test_kv_buffers_grow_past_their_headroom_and_decode_stays_exact(model):
    """200 steps: the buffers (prompt + 128 rows of headroom at first) are outgrown and moved; greedy tokens
    stay those of the reference target."""
    fast = slimgraph.optimize(model, EXAMPLE, target="cpu")
    ref = slimgraph.optimize(model, EXAMPLE, target="reference")
    ids = prompt(seed=21)
    assert torch.equal(fast.generate(ids, max_new_tokens=200, eos_token_id=[]),
                       ref.generate(ids, max_new_tokens=200, eos_token_id=[]))
