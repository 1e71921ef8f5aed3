"""A compiled model checks its inputs at the call (`model(...)` and `model.run(...)`): a wrong count,
dtype, rank, static dim or inconsistent symbolic dim is refused with the input, the expected and the
given type, instead of running silently or failing deep in a kernel."""
import pytest
import torch
from torch import nn

import slimgraph
from slimgraph.guards import GuardError
from slimgraph import ir
from slimgraph.ir.types import TensorType
from slimgraph.signature import InputCheck, SignatureError


def mlp_compiled_for_4x16():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    return model, slimgraph.optimize(model, (torch.randn(4, 16),), target="torch")


def test_static_dims_specialized_from_the_example_are_refused():
    model, fast = mlp_compiled_for_4x16()
    assert str(fast.graph.inputs[0].type) == "f32[4,16]"
    x = torch.randn(4, 16)
    torch.testing.assert_close(fast(x), model(x))                     # the compiled shape runs
    with pytest.raises(GuardError, match=r"argument 'input' dim 0 was compiled for size 4 .*got shape \(8, 16\)"):
        fast(torch.randn(8, 16))                                      # the call: the export's guards say it first
    for call in (fast.run,):                                          # graph inputs: the signature check
        with pytest.raises(SignatureError, match=r"input %\w+ \(#1 of 1\) expects f32\[4,16\], got f32\[8,16\]: "
                                                 r"dim 0 must be 4"):
            call(torch.randn(8, 16))                                  # ran silently before
        with pytest.raises(SignatureError, match=r"expects f32\[4,16\], got f32\[4,17\]: dim 1 must be 16"):
            call(torch.randn(4, 17))                                  # a raw matmul error before
        with pytest.raises(SignatureError, match=r"got i64\[4,16\]: dtype must be f32"):
            call(torch.ones(4, 16, dtype=torch.int64))
        with pytest.raises(SignatureError, match=r"got f32\[16\]: has rank 1, not 2"):
            call(torch.randn(16))


def test_dynamic_dims_vary_and_stay_consistent():
    g = ir.Graph()
    a = g.add_input("a", TensorType("f32", ("b", 4)))
    c = g.add_input("c", TensorType("f32", ("b", 4)))
    g.set_outputs([g.op("add", a, c)])
    fast = slimgraph.optimize(g, target="torch")
    for n in (1, 3, 7):
        assert fast.run(torch.ones(n, 4), torch.ones(n, 4))[0].shape == (n, 4)
    with pytest.raises(SignatureError, match=r"input %c \(#2 of 2\) expects f32\[b,4\], got f32\[3,4\]: "
                                             r"dim 0 \(b\) is 3 but another input bound b=2"):
        fast.run(torch.ones(2, 4), torch.ones(3, 4))
    with pytest.raises(SignatureError, match=r"takes 2 input\(s\) \(%a: f32\[b,4\], %c: f32\[b,4\]\), got 1"):
        fast.run(torch.ones(2, 4))
    with pytest.raises(SignatureError, match=r"input %a \(#1 of 2\) expects f32\[b,4\], got a list"):
        fast.run([1.0], torch.ones(2, 4))


def test_derived_dims_are_checked():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("n", 4)))
    y = g.add_input("y", TensorType("f32", ("2*n", 4)))
    check = InputCheck(g.inputs)
    check([torch.ones(3, 4), torch.ones(6, 4)])
    with pytest.raises(SignatureError, match=r"input %y \(#2 of 2\) expects f32\[2\*n,4\], got f32\[5,4\]: "
                                             r"dim 0 must be 2\*n = 6"):
        check([torch.ones(3, 4), torch.ones(5, 4)])


def test_reloaded_artifact_checks_too(tmp_path):
    _, fast = mlp_compiled_for_4x16()
    fast.save(tmp_path / "m.sg")
    again = slimgraph.load(tmp_path / "m.sg")
    with pytest.raises(SignatureError, match=r"expects f32\[4,16\], got f32\[8,16\]"):
        again.run(torch.randn(8, 16))
    with pytest.raises(GuardError, match=r"compiled for size 4"):
        again(torch.randn(8, 16))
