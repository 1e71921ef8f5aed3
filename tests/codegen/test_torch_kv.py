"""codegen/torch_kv.py: the `cache_append` lowering grows in place and must equal torch.cat, step by step,
across branches and after a truncation."""
import pytest
import torch

from slimgraph import ir
from slimgraph.codegen.torch_fx import build_runner
from slimgraph.codegen.torch_kv import append, truncate
from slimgraph.ir import TensorType


def test_appends_equal_cat_and_reuse_the_buffer():
    past = torch.empty(1, 3, 0, 4)
    ref = past
    ptrs = set()
    for step in range(200):
        new = torch.randn(1, 3, 5 if step == 0 else 1, 4)
        past, ref = append(past, new, axis=-2), torch.cat((ref, new), -2)
        assert torch.equal(past, ref)
        ptrs.add(past.data_ptr())
    assert len(ptrs) < 8                         # grown a handful of times (1.5x), not copied every step


def test_two_branches_from_one_past_do_not_overwrite_each_other():
    base = append(torch.zeros(2, 1, 0, 3), torch.randn(2, 1, 4, 3), axis=2)
    a_new, b_new = torch.ones(2, 1, 1, 3), torch.full((2, 1, 1, 3), 2.0)
    a = append(base, a_new, axis=2)
    b = append(base, b_new, axis=2)              # the same past again: must not write into a's row
    assert torch.equal(a, torch.cat((base, a_new), 2)) and torch.equal(b, torch.cat((base, b_new), 2))
    a2 = append(a, b_new, axis=2)                 # a keeps growing in place from its own buffer
    assert torch.equal(a2[:, :, :5], torch.cat((base, a_new), 2)) and a2.data_ptr() == a.data_ptr()


def test_truncate_frees_rows_for_the_next_append_without_copying():
    full = append(torch.zeros(1, 2, 0, 3), torch.randn(1, 2, 6, 3), axis=2)
    kept = truncate(full, 2, 4)                  # a rejected draft: drop 2 rows
    assert kept.shape[2] == 4 and kept.data_ptr() == full.data_ptr()
    new = torch.randn(1, 2, 1, 3)
    nxt = append(kept, new, axis=2)               # written over the freed row, in the same buffer
    assert nxt.data_ptr() == full.data_ptr() and torch.equal(nxt, torch.cat((full[:, :, :4], new), 2))


def test_codegen_lowers_cache_append_and_leaves_concat_alone():
    g = ir.Graph()
    past = g.add_input("past", TensorType("f32", ("b", 2, "p", 4)))
    x = g.add_input("x", TensorType("f32", ("b", 2, "s", 4)))
    present = g.op("cache_append", past, x, axis=2)
    inner = g.op("concat", x, x, dim=-2)           # not state: stays torch.cat
    g.set_outputs([present, g.op("mul", inner, inner)])
    g.declare_state("kv", past, present, "append", axis=2)
    ir.verify(g)
    run = build_runner(g)
    code = run.code
    assert code.count("torch_kv_append(past, x") == 1 and "shape_concat(x, x" in code
    p, xs = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 2, 4)
    out = run(p, xs)
    torch.testing.assert_close(out[0], torch.cat((p, xs), -2))
    nxt = run(out[0], xs)                         # fed back: appended in place
    assert nxt[0].data_ptr() == out[0].data_ptr() and torch.equal(nxt[0][:, :, :5], out[0])


# ---- ring states: cache_window(cache_append(past, new)) slides in place -------------------------------------
from slimgraph.codegen.torch_kv import StaleStateError, keep_state, window_in_place  # noqa: E402
from slimgraph.ir.opset.state import cache_window  # noqa: E402


def ring_step(past, new, w, s):
    """What the generated forward does for a ring state: append, (attention reads it), then slide."""
    x = append(past, new, axis=2)
    seen = x.clone()
    return window_in_place(x, axis=2, window=w, sinks=s), seen


def ref_step(past, new, w, s):
    x = torch.cat((past, new), 2)
    return cache_window(x, axis=2, window=w, sinks=s), x


def test_ring_equals_cache_window_of_cat_through_prefill_chunks_and_buffer_wraps():
    w, s = 16, 4
    gen = torch.Generator().manual_seed(0)
    past = ref = torch.zeros(2, 3, 0, 5)
    buffers = set()
    sizes = [40] + [1] * 300 + [7, 3, 25] + [1] * 200       # prefill longer than the window, then steps and chunks
    for n in sizes:
        new = torch.randn(2, 3, n, 5, generator=gen)
        past, seen = ring_step(past, new, w, s)
        ref, want_seen = ref_step(ref, new, w, s)
        assert torch.equal(seen, want_seen)                  # attention read ring + new rows, chronologically
        assert torch.equal(past, ref)
        buffers.add(past._slimgraph_kv[0].data.data_ptr())
    # 576 rows appended to a ring of 20: the ring moves to a fresh buffer about once per 20 + 128 rows
    assert 2 <= len(buffers) <= 8


def test_a_long_prompt_through_a_ring_leaves_only_the_ring_in_memory():
    """After a prompt (or chunk) far longer than the ring, the ring moves to a buffer of its own size: before, the
    prompt's buffer (1.5x its rows) stayed alive behind a 20-row ring for as many steps as it had rows (a 4096-token
    prompt into SmolLM2's 256 + 4 ring: ~280 MB held for ~2000 steps). The ring still equals the reference."""
    from slimgraph.codegen.torch_kv import HEADROOM
    w, s = 16, 4
    gen = torch.Generator().manual_seed(1)
    past = ref = torch.zeros(2, 3, 0, 5)
    bound = 2 * (w + s + HEADROOM)
    for n in [600] + [1] * 50 + [900] + [1] * 50:
        new = torch.randn(2, 3, n, 5, generator=gen)
        past, seen = ring_step(past, new, w, s)
        ref, want_seen = ref_step(ref, new, w, s)
        assert torch.equal(seen, want_seen) and torch.equal(past, ref)
        assert past._slimgraph_kv[0].data.shape[2] <= bound


def test_a_slid_ring_view_is_consumed_and_keep_state_is_a_copy_that_branches():
    w, s = 6, 2
    past = ref = torch.zeros(1, 2, 0, 3)
    for n in (10, 1, 1):
        new = torch.randn(1, 2, n, 3)
        past, _ = ring_step(past, new, w, s)
        ref, _ = ref_step(ref, new, w, s)
    kept = keep_state(past)
    assert kept.data_ptr() != past.data_ptr() and torch.equal(kept, ref)
    a_new, b_new = torch.ones(1, 2, 1, 3), torch.full((1, 2, 1, 3), 2.0)
    a, _ = ring_step(past, a_new, w, s)                      # slides in place: `past` is consumed
    with pytest.raises(StaleStateError, match="keep_state"):
        append(past, b_new, axis=2)                          # reusing it is an error, not overwritten rows
    with pytest.raises(StaleStateError):
        keep_state(past)
    b, _ = ring_step(kept, b_new, w, s)                      # the kept copy branches correctly
    assert torch.equal(a, ref_step(ref, a_new, w, s)[0]) and torch.equal(b, ref_step(ref, b_new, w, s)[0])
    a2, _ = ring_step(a, b_new, w, s)                        # and `a` keeps sliding in its own buffer
    assert a2._slimgraph_kv[0] is a._slimgraph_kv[0]


def test_ring_branches_before_the_window_is_full_and_without_sinks_need_no_copy():
    base = append(torch.zeros(1, 1, 0, 2), torch.randn(1, 1, 3, 2), axis=2)   # 3 rows: nothing slides yet
    a_new, b_new = torch.ones(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)
    a, _ = ring_step(base, a_new, 4, 1)
    b, _ = ring_step(base, b_new, 4, 1)                      # a second branch: copied into a new buffer
    assert torch.equal(a, torch.cat((base, a_new), 2)) and torch.equal(b, torch.cat((base, b_new), 2))
    ring = ref = torch.zeros(1, 1, 0, 2)
    for _ in range(12):                                      # sinks=0: the ring is a moving narrow, no row rewritten
        new = torch.randn(1, 1, 1, 2)
        old, old_vals = ring, ring.clone()
        ring, _ = ring_step(ring, new, 4, 0)
        ref, _ = ref_step(ref, new, 4, 0)
        assert torch.equal(old, old_vals) and torch.equal(ring, ref)
    keep_state(old)                                          # still valid: not consumed


def ring_graph(extra_reader=False, return_all=False):
    g = ir.Graph()
    q = g.add_input("q", TensorType("f32", ("b", 2, "s", 4)))
    past = g.add_input("past", TensorType("f32", ("b", 2, "p", 4)))
    x = g.add_input("x", TensorType("f32", ("b", 2, "s", 4)))
    allk = g.op("cache_append", past, x, axis=2)
    ring = g.op("cache_window", allk, axis=2, window=4, sinks=1)
    out = g.op("attention", q, allk, allk, causal=False, scale=0.5)
    if extra_reader:
        out = g.op("add", out, g.op("slice", allk, dim=2, start=0, end="s"))
    g.set_outputs([out, ring] + ([allk] if return_all else []))
    g.declare_state("kv", past, ring, "ring", axis=2, window=4, sinks=1)
    ir.verify(g)
    return g


@pytest.mark.parametrize("case", ["attention only", "another reader", "returned"])
def test_codegen_slides_in_place_only_after_attention_alone_read_the_rows(case):
    g = ring_graph(extra_reader=case == "another reader", return_all=case == "returned")
    run = build_runner(g)
    lines = run.code.splitlines()
    in_place = [i for i, line in enumerate(lines) if "window_in_place" in line]
    if case == "attention only":
        assert len(in_place) == 1 and in_place[0] > max(i for i, line in enumerate(lines) if "attention(" in line or "attention_ring(" in line)
    else:
        assert not in_place and "state_cache_window(" in run.code
    gen = torch.Generator().manual_seed(0)
    state = ref_state = torch.zeros(1, 2, 0, 4)
    for n in (6, 1, 1, 3, 1):
        q, x = torch.randn(1, 2, n, 4, generator=gen), torch.randn(1, 2, n, 4, generator=gen)
        got = run(q, state, x)
        want = ir.run(g, q, ref_state, x)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
        state, ref_state = got[1], want[1]
