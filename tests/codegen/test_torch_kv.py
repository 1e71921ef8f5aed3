"""codegen/torch_kv.py: a KV cache that grows in place must equal torch.cat, step by step and across branches."""
import torch

from slimgraph import ir
from slimgraph.codegen.torch_fx import build_runner
from slimgraph.codegen.torch_kv import append
from slimgraph.ir import TensorType


def test_appends_equal_cat_and_reuse_the_buffer():
    past = torch.empty(1, 3, 0, 4)
    ref = past
    ptrs = set()
    for step in range(200):
        new = torch.randn(1, 3, 5 if step == 0 else 1, 4)
        past, ref = append(past, new, dim=-2), torch.cat((ref, new), -2)
        assert torch.equal(past, ref)
        ptrs.add(past.data_ptr())
    assert len(ptrs) < 8                         # grown a handful of times (1.5x), not copied every step


def test_two_branches_from_one_past_do_not_overwrite_each_other():
    base = append(torch.zeros(2, 1, 0, 3), torch.randn(2, 1, 4, 3), dim=2)
    a_new, b_new = torch.ones(2, 1, 1, 3), torch.full((2, 1, 1, 3), 2.0)
    a = append(base, a_new, dim=2)
    b = append(base, b_new, dim=2)              # the same past again: must not write into a's row
    assert torch.equal(a, torch.cat((base, a_new), 2)) and torch.equal(b, torch.cat((base, b_new), 2))
    a2 = append(a, b_new, dim=2)                 # a keeps growing in place from its own buffer
    assert torch.equal(a2[:, :, :5], torch.cat((base, a_new), 2)) and a2.data_ptr() == a.data_ptr()


def test_codegen_uses_append_only_for_returned_state():
    g = ir.Graph()
    past = g.add_input("past", TensorType("f32", ("b", 2, "p", 4)))
    x = g.add_input("x", TensorType("f32", ("b", 2, "s", 4)))
    present = g.op("concat", past, x, dim=-2)
    inner = g.op("concat", x, x, dim=-2)           # not state: stays torch.cat
    g.set_outputs([present, g.op("mul", inner, inner)])
    run = build_runner(g)
    code = run.graph_module.code
    assert code.count("torch_kv_append(past, x") == 1 and "shape_concat(x, x" in code
    p, xs = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 2, 4)
    out = run(p, xs)
    torch.testing.assert_close(out[0], torch.cat((p, xs), -2))
    nxt = run(out[0], xs)                         # fed back: appended in place
    assert nxt[0].data_ptr() == out[0].data_ptr() and torch.equal(nxt[0][:, :, :5], out[0])
