"""frontends/export_cache.py: the second optimize() of a causal LM skips torch.export, and a cache entry that
is damaged, stale or not this model's is never used (the last tests are a reviewer's: inputs under which the
cache crashed an optimize() that works without it, or served a graph that was not the model's)."""
import pytest
import torch

import slimgraph
from slimgraph.frontends import export_cache
from slimgraph.frontends.hf import FlatCacheLM, export_causal_lm
from slimgraph.ir.interpreter import run
from slimgraph.ir.printer import print_graph
from tests.tiny_lm import tiny_llama


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMGRAPH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SLIMGRAPH_EXPORT_CACHE", raising=False)
    return tmp_path / "export"


def hits(notes):
    return [n for n in notes if "export cache hit" in n]


def test_a_second_optimize_skips_the_export_and_builds_the_same_graph(cache):
    model = tiny_llama()
    ids = torch.randint(0, 96, (1, 7), generator=torch.Generator().manual_seed(1))
    first = slimgraph.optimize(model, (ids,), target="reference")
    assert not hits(first.report.notes) and len(list(cache.glob("*.sgir"))) == 1
    second = slimgraph.optimize(model, (ids,), target="reference")
    assert hits(second.report.notes)
    assert print_graph(second.graph) == print_graph(first.graph)   # value names too: build caches key on them
    assert torch.equal(second.generate(ids, max_new_tokens=8), first.generate(ids, max_new_tokens=8))


def test_a_hit_binds_the_models_own_tensors_so_other_weights_give_their_own_outputs(cache):
    """Same code, config and tensor layout, other weights: one cache entry, and the graph computes with the
    weights of the model it was asked for (bound by name, shared, not copied)."""
    a, b = tiny_llama(), tiny_llama()
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(1.5)
    export_causal_lm(a)
    notes = []
    imp, _ = export_causal_lm(b, notes=notes)
    assert hits(notes) and len(list(cache.glob("*.sgir"))) == 1
    w = imp.graph.weights["model.layers.0.self_attn.q_proj.weight"].tensor
    assert w.data_ptr() == b.model.layers[0].self_attn.q_proj.weight.data_ptr()
    ids = torch.randint(0, 96, (1, 6), generator=torch.Generator().manual_seed(2))
    fast = slimgraph.optimize(b, (ids,), target="reference")
    assert torch.equal(fast.generate(ids, max_new_tokens=8, eos_token_id=[]),
                       b.generate(ids, max_new_tokens=8, do_sample=False))


def test_a_damaged_entry_is_exported_again_with_a_note(cache):
    model = tiny_llama()
    export_causal_lm(model)
    entry = next(cache.glob("*.sgir"))
    entry.write_bytes(entry.read_bytes()[:-200])   # truncated
    notes = []
    imp, _ = export_causal_lm(model, notes=notes)
    assert any("did not match its checksum" in n for n in notes) and not hits(notes)
    notes = []
    export_causal_lm(model, notes=notes)   # rewritten by the export above
    assert hits(notes)


def test_an_entry_that_does_not_reproduce_the_model_is_not_used(cache):
    """A wrong entry under the right key (what a key that missed something would give; here: an edited graph
    with a matching checksum) fails the check against the model and is exported again."""
    import hashlib
    model = tiny_llama()
    export_causal_lm(model)
    entry = next(cache.glob("*.sgir"))
    text = entry.read_text().replace("{scale=0.25}", "{scale=0.5}", 1)   # one layer's attention scale
    assert "{scale=0.5}" in text
    entry.write_text(text)
    entry.with_suffix(".sha256").write_text(hashlib.sha256(text.encode()).hexdigest())
    notes = []
    export_causal_lm(model, notes=notes)
    assert any("did not reproduce the model's outputs" in n for n in notes) and not hits(notes)


def test_what_the_key_sees(cache, monkeypatch):
    """Config and a method replaced on a class change the key; an instance-level forward makes the model
    uncacheable; SLIMGRAPH_EXPORT_CACHE=0 turns the cache off."""
    import transformers.models.llama.modeling_llama as llama
    model = tiny_llama()
    k = export_cache.key(model, {})
    assert k == export_cache.key(tiny_llama(), {})
    assert export_cache.key(tiny_llama(intermediate_size=96), {}) != k
    assert export_cache.key(model, {"example_seq": 6}) != k
    forward = llama.LlamaMLP.forward
    monkeypatch.setattr(llama.LlamaMLP, "forward", lambda self, x: forward(self, x))
    assert export_cache.key(model, {}) != k
    monkeypatch.undo()
    model.model.layers[0].mlp.forward = lambda x: x
    assert export_cache.key(model, {}) is None
    monkeypatch.setenv("SLIMGRAPH_CACHE_DIR", str(cache.parent))
    monkeypatch.setenv("SLIMGRAPH_EXPORT_CACHE", "0")
    export_causal_lm(tiny_llama())
    assert not cache.exists()


def test_another_process_hits_the_entry(cache):
    """The key is the same in every process: nothing in it depends on string hashing (set constants of the
    model code) or object addresses (a function as a default argument)."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    code = ("from slimgraph.frontends.hf import export_causal_lm\n"
            "from tests.tiny_lm import tiny_llama\n"
            "notes = []\n"
            "export_causal_lm(tiny_llama(), notes=notes)\n"
            "print('HIT' if any('export cache hit' in n for n in notes) else 'MISS')\n")
    root = Path(__file__).resolve().parents[2]
    seen = []
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.returncode == 0, out.stderr[-2000:]
        seen.append(out.stdout.strip().splitlines()[-1])
    assert seen == ["MISS", "HIT"]


# ---- a fresh reviewer's cases -------------------------------------------------------------------------
def test_a_config_attribute_json_cannot_write_does_not_break_optimize(cache):
    """A config carrying a value json cannot write (here a torch.device) optimizes with
    SLIMGRAPH_EXPORT_CACHE=0; with the cache on, key() must not crash the export (the model can be
    uncacheable, not un-optimizable). Current main: TypeError: Object of type device is not JSON serializable."""
    model = tiny_llama()
    model.config.my_device = torch.device("cpu")
    ids = torch.randint(0, 96, (1, 7), generator=torch.Generator().manual_seed(1))
    compiled = slimgraph.optimize(model, (ids,), target="reference")
    assert torch.equal(compiled.generate(ids, max_new_tokens=6, eos_token_id=[]),
                       model.generate(ids, max_new_tokens=6, do_sample=False))


def _stretched_rope(beyond):
    """A patch of LlamaRotaryEmbedding.forward (position interpolation past `beyond`): a closure, so every
    `beyond` gives a function of the same code object."""
    import transformers.models.llama.modeling_llama as llama
    orig = llama.LlamaRotaryEmbedding.forward

    def forward(self, x, position_ids):
        pos = torch.where(position_ids >= beyond, beyond + (position_ids - beyond) // 2, position_ids)
        return orig(self, x, pos)
    return forward


def test_a_class_method_patched_with_another_closure_is_not_served_the_old_graph(cache, monkeypatch):
    """The key hashes a patched method's code object, not its closure: two patches made by one factory share a
    key. The hit check runs positions 3..7 only, so a patch that differs from position 12 on passes it, and the
    cached graph of the first patch is served for the second, silently wrong from position 12. Expected: the
    graph computes what the (patched) model computes on a 20-token prompt."""
    import transformers.models.llama.modeling_llama as llama
    model = tiny_llama()
    monkeypatch.setattr(llama.LlamaRotaryEmbedding, "forward", _stretched_rope(10 ** 6))   # a no-op here
    export_causal_lm(model)
    monkeypatch.setattr(llama.LlamaRotaryEmbedding, "forward", _stretched_rope(12))
    imp, kv = export_causal_lm(model)
    seq = 20
    ids = torch.randint(0, 96, (1, seq), generator=torch.Generator().manual_seed(4))
    positions = torch.arange(seq)[None]
    mask = torch.ones(seq, seq, dtype=torch.bool).tril()[None, None]
    past = [torch.zeros(1, kv.num_kv_heads, 0, kv.head_dim) for _ in range(2 * kv.num_layers)]
    with torch.no_grad():
        want = FlatCacheLM(model)(ids, positions, mask, *past)[0]
        got = run(imp.graph, ids, positions, mask, *past)[0]
    assert torch.allclose(got, want, atol=1e-4), f"max |diff| {float((got - want).abs().max()):.3g}"


def test_the_methods_digest_does_not_depend_on_who_else_holds_the_code():
    """marshal.dumps marks objects held more than once (FLAG_REF), so its bytes for one unchanged code object
    change with the interpreter's reference counts: a key built on them differs between two calls."""
    class A:
        def f(self):
            return ("a tuple", 12345678901, 3.5)
    before = export_cache._methods_digest(A)
    held = A.f.__code__.co_consts   # noqa: F841 - one more reference, no change to the code
    assert export_cache._methods_digest(A) == before


def test_an_unchanged_model_still_hits_after_another_model_is_built(cache):
    """What the digest above does to the cache: building a tied-embedding model runs
    PreTrainedModel.get_expanded_tied_weights_keys for the first time, which changes reference counts of its
    code's constants and so the key of every transformers model; the same untied model then misses (and writes
    a second entry). In a fresh interpreter, as a pytest process may have built tied models already."""
    import subprocess
    import sys
    code = (
        "from slimgraph.frontends.hf import export_causal_lm\n"
        "from tests.tiny_lm import tiny_llama\n"
        "m = tiny_llama()\n"
        "export_causal_lm(m)\n"
        "tiny_llama(tie_word_embeddings=True)\n"
        "notes = []\n"
        "export_causal_lm(m, notes=notes)\n"
        "print('HIT' if any('export cache hit' in n for n in notes) else 'MISS')\n")
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("HIT"), (out.stdout[-500:], sorted(p.name for p in cache.glob("*.sgir")))
