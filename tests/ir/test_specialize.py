"""ir/specialize.py: binding symbolic dims to numbers in types and dim attributes."""
import pytest
import torch

from slimgraph.ir.graph import Graph
from slimgraph.ir.interpreter import run
from slimgraph.ir.specialize import free_dims, specialize
from slimgraph.ir.types import TensorType
from slimgraph.ir.verifier import verify


def graph():
    g = Graph()
    x = g.add_input("x", TensorType("f32", ("batch", "seq", 4)))
    past = g.add_input("past", TensorType("f32", ("batch", "past", 4)))
    cat = g.op("cache_append", past, x, axis=1)
    win = g.op("cache_window", cat, axis=1, window=3, sinks=1)
    flat = g.op("reshape", x, shape=["batch", -1])
    head = g.op("slice", flat, dim=1, end="seq")
    n = g.op("arange", end="batch", dtype="f32")
    g.set_outputs([win, head, g.op("add", g.op("sum", flat, dims=[1]), n)])
    return g


def test_specialize_binds_types_and_attributes():
    g = graph()
    assert free_dims(g) == {"batch", "seq", "past"}
    specialize(g, {"batch": 2, "seq": 3, "past": 5})
    verify(g)
    assert free_dims(g) == set()
    assert [str(v.type) for v in g.outputs] == ["f32[2,4,4]", "f32[2,3]", "f32[2]"]
    slice_ = next(n for n in g.nodes if n.op == "slice")
    assert slice_.attrs["end"] == 3
    x, past = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    ref = run(graph(), x, past)
    for a, b in zip(ref, run(g, x, past)):
        torch.testing.assert_close(a, b)
    with pytest.raises(TypeError, match="expects shape"):
        run(g, torch.randn(2, 4, 4), past)


def test_specialize_names_missing_and_unknown_dims():
    with pytest.raises(ValueError, match=r"past are not bound \(used by %past"):
        specialize(graph(), {"batch": 1, "seq": 2})
    with pytest.raises(ValueError, match="cannot bind sequence"):
        specialize(graph(), {"batch": 1, "seq": 2, "past": 0, "sequence": 4})
