"""Graph storage: linked node list, use sets, node metadata, public rename."""
import pytest
import torch

from slimgraph.ir.graph import Graph
from slimgraph.ir.interpreter import run
from slimgraph.ir.node_list import NodeList, Uses
from slimgraph.ir.types import TensorType
from slimgraph.ir.verifier import verify


def chain(n=5):
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4,)))
    v = x
    for _ in range(n):
        v = g.op("neg", v)
    g.set_outputs([v])
    return g, x


def test_inserting_before_and_after_keep_insertion_order():
    g, x = chain(3)
    first, second, third = list(g.nodes)
    with g.inserting_after(first):
        a = g.op("relu", first.output)
        b = g.op("exp", a)
    with g.inserting_before(third):
        c = g.op("abs", second.output)
    assert [n.op for n in g.nodes] == ["neg", "relu", "exp", "neg", "abs", "neg"]
    assert g.nodes.prev(a.producer) is first and g.nodes.next(a.producer) is b.producer
    assert g.nodes.between(first, second) == [a.producer, b.producer]
    assert g.nodes[-2] is c.producer and g.nodes[1] is a.producer and len(g.nodes) == 6
    pos = g.nodes.positions()
    assert [pos[n] for n in g.nodes] == list(range(6))


def test_erase_while_iterating_visits_every_live_node_once():
    g, x = chain(6)
    g.set_outputs([x])
    seen = []
    for node in reversed(g.nodes):  # dce's sweep: erase the node the iterator stands on
        seen.append(node.op)
        g.erase(node)
    assert seen == ["neg"] * 6 and len(g.nodes) == 0 and not x.uses
    g, x = chain(4)
    nodes = list(g.nodes)
    it = iter(g.nodes)
    assert next(it) is nodes[0]
    g.replace_node(nodes[1], [nodes[0].output])   # erase the node after the iterator
    assert list(it) == nodes[2:]


def test_insertion_point_must_be_in_the_graph():
    g, _ = chain(2)
    n = g.nodes[0]
    h, _ = chain(1)
    with pytest.raises(ValueError, match="not a node of graph"):
        with g.inserting_before(h.nodes[0]):
            pass
    g2 = NodeList()
    with pytest.raises(ValueError, match="already in a graph"):
        g2.append(n)


def test_reorder_through_setter_checks_the_node_set():
    g, _ = chain(3)
    nodes = list(g.nodes)
    with pytest.raises(ValueError, match="each of its 3 nodes once"):
        g.nodes = nodes[:2]
    with pytest.raises(ValueError, match="each of its 3 nodes once"):
        g.nodes = [nodes[0], nodes[0], nodes[1]]
    g.nodes = nodes[::-1]
    assert list(g.nodes) == nodes[::-1]
    g.topo_sort()
    assert list(g.nodes) == nodes
    verify(g)


def test_uses_read_like_a_list_and_remove_in_constant_time():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4,)))
    a = g.op("add", x, x)
    assert x.uses == [(a.producer, 0), (a.producer, 1)] and x.uses[1] == (a.producer, 1)
    assert (a.producer, 0) in x.uses and len(x.uses) == 2 and x.users == [a.producer]
    u = Uses([(1, 0)])
    with pytest.raises(ValueError, match="not recorded"):
        u.remove((2, 0))


def test_meta_scope_and_copy_keep_node_metadata():
    g, x = chain(1)
    with g.meta_scope(source="m.py:3"):
        with g.meta_scope(**{"pass": "demo"}):
            y = g.op("relu", g.outputs[0])
        z = g.op("exp", y)
    g.set_outputs([z])
    assert y.producer.meta == {"source": "m.py:3", "pass": "demo"} and z.producer.meta == {"source": "m.py:3"}
    assert g.nodes[0].meta == {}
    h = g.copy()
    assert [n.meta for n in h.nodes] == [n.meta for n in g.nodes]
    assert "m.py" not in str(g)  # metadata is not part of the printed IR


def test_rename_values_and_weights():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3)))
    w = g.add_weight("w", torch.randn(4, 3))
    y = g.op("linear", x, w)
    g.set_outputs([y])
    g.rename(y, "logits")
    g.rename(w, "proj.weight")
    assert y.name == "logits" and list(g.weights) == ["proj.weight"] and g.has_name("logits")
    assert not g.has_name("w") and "@proj.weight" in str(g)
    with pytest.raises(ValueError, match="already defined"):
        g.rename(y, "x")
    with pytest.raises(ValueError, match="invalid value name"):
        g.rename(y, "a b")
    other = Graph().add_input("q", TensorType("f32", (1,)))
    with pytest.raises(ValueError, match="not a value of graph"):
        g.rename(other, "q2")
    verify(g)
    xt = torch.randn(2, 3)
    torch.testing.assert_close(run(g, xt)[0], xt @ g.weights["proj.weight"].tensor.T)


def test_unused_and_is_dead():
    g, x = chain(2)
    first, second = list(g.nodes)
    assert not first.output.unused and not second.output.unused  # read / a graph output
    g.set_outputs([first.output])
    assert second.output.unused and g.is_dead(second) and not g.is_dead(first)
