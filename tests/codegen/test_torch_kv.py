"""codegen/torch_kv.py: the `cache_append` lowering grows in place and must equal torch.cat, step by step,
across branches and after a truncation."""
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
