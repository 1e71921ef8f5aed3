"""The verifier catches each broken invariant, with a message naming the node."""
import pytest

from slimgraph.ir import Graph, TensorType, VerifyError, parse_graph, verify

TEXT = """
graph @main(%x: f32[b,4], %y: f32[b,4]) {
  weight @w: f32[4]
  %a: f32[b,4] = add(%x, @w)
  %s: f32[b,4] = softmax(%a) {dim=-1}
  %m: f32[b,4] = mul(%s, %y)
  return %m
}"""


def graph():
    g = parse_graph(TEXT)
    verify(g)
    return g


def node(g, name):
    return next(n for n in g.nodes if n.outputs[0].name == name)


def check(g, *fragments):
    with pytest.raises(VerifyError) as e:
        verify(g)
    for f in fragments:
        assert f in str(e.value), str(e.value)
    return str(e.value)


def test_use_before_def():
    g = graph()
    g.nodes = [g.nodes[1], g.nodes[0], *list(g.nodes)[2:]]
    msg = check(g, "input 0 (%a) is used before it is defined", "at node: %s: f32[b,4] = softmax(%a)")
    assert "> %s: f32[b,4] = softmax" in msg  # the context listing marks the node


def test_stale_use_list_extra_and_missing():
    g = graph()
    g.inputs[1].uses.append((node(g, "a"), 0))
    check(g, "use list of %y is stale: records 2 uses, graph has 1")
    g = graph()
    g.weights["w"].uses.clear()
    check(g, "use list of %w is stale")


def test_wrong_declared_type():
    g = graph()
    node(g, "s").outputs[0].type = TensorType("f16", ("b", 4))
    check(g, "%s is declared f16[b,4] but softmax infers f32[b,4]", "at node: %s: f16[b,4] = softmax(%a)")
    g = graph()
    node(g, "m").outputs[0].type = TensorType("f32", ("b", 5))
    check(g, "but mul infers f32[b,4]")


def test_unknown_op():
    g = graph()
    node(g, "s").op = "softmaxx"
    check(g, "unknown op 'softmaxx'", "Did you mean softmax", "at node: %s")


def test_bad_and_missing_attrs():
    g = graph()
    node(g, "s").attrs["dim"] = "last"
    check(g, "op softmax: attribute dim='last' is not a valid int", "at node: %s")
    g = graph()
    del node(g, "s").attrs["dim"]
    check(g, "missing required attribute 'dim'")
    g = graph()
    node(g, "s").attrs["axis"] = 1
    check(g, "unknown attribute(s) ['axis']")


def test_wrong_arity():
    g = graph()
    n = node(g, "s")
    n.inputs.append(g.inputs[1])
    g.inputs[1].uses.append((n, 1))
    check(g, "op softmax(x) takes 1 inputs, got 2")


def test_duplicate_names_foreign_values_and_undefined_outputs():
    g = graph()
    node(g, "m").outputs[0].name = "a"
    check(g, "value name %a is defined twice")
    g = graph()
    other = Graph("other")
    stray = other.op("neg", other.add_input("z", TensorType("f32", ("b", 4))))
    g.outputs = [stray]
    check(g, "graph output %neg is not defined")
    g = graph()
    n = node(g, "a")
    n.graph = None
    check(g, "node is not owned by this graph")


def test_producer_link():
    g = graph()
    node(g, "a").outputs[0].producer = node(g, "s")
    check(g, "output %a does not record its producer")


def test_type_checks_can_be_skipped():
    g = graph()
    node(g, "s").outputs[0].type = TensorType("f16", ("b", 4))
    verify(g, check_types=False)
