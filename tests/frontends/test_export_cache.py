"""frontends/export_cache.py: the second optimize() of a causal LM skips torch.export, and a cache entry that
is damaged, stale or not this model's is never used."""
import pytest
import torch

import slimgraph
from slimgraph.frontends import export_cache
from slimgraph.frontends.hf import export_causal_lm
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
