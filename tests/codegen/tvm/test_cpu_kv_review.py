"""Review of the `cpu` target's in-place KV cache (codegen/tvm/target.py TvmRunner._kv_inputs): cases a user can
reach by calling the runner directly or by loading an artifact saved by another cpu codegen."""
import pytest
import torch

import slimgraph

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


def prompt(n, seed):
    return torch.randint(0, 96, (1, n), generator=torch.Generator().manual_seed(seed))


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
