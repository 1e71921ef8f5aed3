"""Graph mutation API: use lists stay consistent; erasing used nodes is refused."""
import pytest
import torch

from slimgraph.ir import Graph, TensorType, parse_graph, print_graph, run, verify

F4 = TensorType("f32", (4,))


def build():
    g = Graph("m")
    x = g.add_input("x", F4)
    w = g.add_weight("w", torch.ones(4))
    a = g.op("add", x, w)
    b = g.op("exp", a)
    c = g.op("mul", a, b)
    g.set_outputs([c, a])
    return g, x, w, a, b, c


def test_builder_infers_types_and_records_uses():
    g, x, w, a, b, c = build()
    assert a.type == F4 and c.producer.op == "mul"
    assert [(n.op, i) for n, i in a.uses] == [("exp", 0), ("mul", 0)] and a.users == [b.producer, c.producer]
    assert w.is_weight and x.uses == [(a.producer, 0)]
    verify(g)


def test_replace_all_uses_with_updates_uses_and_outputs():
    g, x, w, a, b, c = build()
    n = a.replace_all_uses_with(x)
    assert n == 2 and a.uses == [] and g.outputs == [c, x]
    assert b.producer.inputs[0] is x and c.producer.inputs[0] is x
    assert sorted(i for _, i in x.uses) == [0, 0, 0]
    g.erase(a.producer)
    assert w.uses == []
    verify(g)


def test_erase_refuses_used_nodes_and_outputs():
    g, x, w, a, b, c = build()
    with pytest.raises(ValueError, match=r"cannot erase .*exp.*%exp is still used by .*mul"):
        g.erase(b.producer)
    with pytest.raises(ValueError, match="still used by graph outputs"):
        g.erase(c.producer)
    with pytest.raises(ValueError, match="cannot remove weight @w"):
        g.remove_weight("w")
    verify(g)


def test_erase_frees_the_name_and_replace_node():
    g, x, w, a, b, c = build()
    with g.inserting_before(b.producer):
        new = g.op("neg", a)
    g.replace_node(b.producer, [new])
    assert c.producer.inputs[1] is new and b.producer is not None and b.uses == []
    assert "exp" not in print_graph(g)
    verify(g)
    assert g.op("exp", x).name == "exp"  # the erased value's name is free again


def test_inserting_before_and_after_keep_topological_order():
    g, x, w, a, b, c = build()
    with g.inserting_before(b.producer):
        s = g.op("sigmoid", a)
        t = g.op("tanh", s)
    with g.inserting_after(a.producer):
        r = g.op("relu", x)
    assert [n.op for n in g.nodes] == ["add", "relu", "sigmoid", "tanh", "exp", "mul"]
    g.set_outputs([c, t, r])
    verify(g)
    assert g.op("neg", c).producer is g.nodes[-1]  # appends again once the context exits


def test_names_are_unique_and_validated():
    g = Graph("m")
    x = g.add_input("x", F4)
    assert [g.op("neg", x).name for _ in range(3)] == ["neg", "neg_0", "neg_1"]
    with pytest.raises(ValueError, match="already defined"):
        g.add_input("x", F4)
    with pytest.raises(ValueError, match="invalid value name"):
        g.add_input("bad name", F4)


def test_add_node_checks_op_arity_and_attrs():
    g = Graph("m")
    x = g.add_input("x", F4)
    with pytest.raises(TypeError, match="takes 2 inputs, got 1"):
        g.op("add", x)
    with pytest.raises(TypeError, match="missing required attribute 'dim'"):
        g.op("softmax", x)
    with pytest.raises(KeyError, match="unknown op"):
        g.op("frobnicate", x)


def test_copy_is_structural_and_independent():
    g, x, w, a, b, c = build()
    h = g.copy()
    assert print_graph(h) == print_graph(g)
    h.outputs = h.outputs[1:]
    h.erase(h.nodes[-1])
    assert len(g.nodes) == 3 and len(h.nodes) == 2
    xt = torch.randn(4)
    assert torch.equal(run(g, xt)[1], run(h, xt)[0])


def test_topo_sort_restores_order():
    g, x, w, a, b, c = build()
    g.nodes = list(reversed(g.nodes))  # reorder through the public setter
    g.topo_sort()
    assert [n.op for n in g.nodes] == ["add", "exp", "mul"]
    verify(g)
