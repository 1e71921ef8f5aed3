"""The rewrite driver: pattern matching, captures, rule sets, fixed point, runaway and type checks."""
import pytest


from slimgraph.ir import parse_graph
from slimgraph.passes import C, P, RewriteError, Rule, RuleSet, apply_rules, const_value

X = P.var("x")
TEXT = """
graph @main(%x: f32[4], %y: f32[4]) {
  %s: f32[4] = sigmoid(%x)
  %a: f32[4] = mul(%s, %x)
  %b: f32[4] = mul(%x, %s)
  %c: f32[4] = mul(%y, %s)
  %two: f32[] = constant() {value=2.0, dtype="f32"}
  %p: f32[4] = pow(%a, %two)
  %m: f32[1] = mean(%p) {dims=[-1], keepdim=true}
  return %b, %c, %m
}"""


def node(g, name):
    return next(n for n in g.nodes if n.outputs[0].name == name)


def test_pattern_binds_repeated_names_to_the_same_value_and_tries_both_orders():
    g = parse_graph(TEXT)
    pat = P("mul", X, P("sigmoid", X))
    for name, ok in [("a", True), ("b", True), ("c", False)]:
        caps = {}
        assert pat.match(node(g, name).output, caps) is ok
        if ok:
            assert caps["x"] is g.inputs[0]


def test_pattern_attrs_where_and_constants():
    g = parse_graph(TEXT)
    m = node(g, "m").output
    assert P("mean", P("pow", X, C(2))).match(m, {})
    assert not P("mean", P("pow", X, C(3))).match(m, {})
    assert P("mean", attrs={"keepdim": True, "dims": lambda d: d == [-1]}, any_inputs=True).match(m, {})
    assert not P("mean", attrs={"keepdim": False}, any_inputs=True).match(m, {})
    assert P("mean", X, where=lambda v: v.type.shape == (1,)).match(m, {})
    assert not P(("sum", "amax"), X).match(m, {})
    assert const_value(node(g, "two").output) == 2.0 and const_value(m) is None


def test_rule_fn_params_must_be_captured():
    with pytest.raises(ValueError, match=r"\['z'\] are not captured"):
        Rule(P("neg", X), lambda x, z: x)
    with pytest.raises(ValueError, match="root pattern must name its op"):
        Rule(X, lambda x: x)
    with pytest.raises(KeyError, match="unknown op 'nope'"):
        RuleSet([(P("nope", X), lambda x: x)])


def test_apply_rules_to_fixed_point_counts_and_erases_dead_nodes():
    g = parse_graph("""
graph @main(%x: f32[4]) {
  %a: f32[4] = neg(%x)
  %b: f32[4] = neg(%a)
  %c: f32[4] = neg(%b)
  %d: f32[4] = neg(%c)
  %e: f32[4] = relu(%d)
  return %e
}""")
    rules = RuleSet([(P("neg", P("neg", X)), lambda x: x, "double-neg")], name="negs")
    stats = apply_rules(g, rules + RuleSet([(P("relu", P("relu", X, name="r")), lambda r: r)]))
    assert stats == {"double-neg": 2, "erased": 4}
    assert [n.op for n in g.nodes] == ["relu"] and g.nodes[0].inputs[0] is g.inputs[0]


def test_new_nodes_are_inserted_before_the_anchor_and_revisited():
    g = parse_graph("""
graph @main(%x: f32[4]) {
  %s: f32[4] = sigmoid(%x)
  %m: f32[4] = mul(%x, %s)
  %t: f32[4] = tanh(%m)
  return %t
}""")
    rules = RuleSet([(P("mul", X, P("sigmoid", X)), lambda g, x: g.op("silu", x)),
                     (P("tanh", P("silu", X)), lambda g, x: g.op("relu", x))])
    stats = apply_rules(g, rules)
    assert [n.op for n in g.nodes] == ["relu"] and stats["erased"] == 4


def test_runaway_rules_stop_with_a_clear_error():
    g = parse_graph(TEXT)
    rules = RuleSet([(P("sigmoid", X), lambda g, x: g.op("sigmoid", x), "self-loop")])
    with pytest.raises(RewriteError, match=r"does not converge .*self-loop"):
        apply_rules(g, rules, name="loopy", max_rewrites=50)


def test_type_changing_rule_is_reported():
    g = parse_graph(TEXT)
    rules = RuleSet([(P("mean", X), lambda x: x, "drop-mean")])
    with pytest.raises(RewriteError, match="drop-mean replaced %m: f32\\[1\\] by %p: f32\\[4\\]"):
        apply_rules(g, rules)


def test_rule_returning_none_leaves_no_trace():
    g = parse_graph(TEXT)
    before = str(g)

    def maybe(g, x):
        g.op("exp", x)  # built, then rejected: the driver erases it
        return None
    assert apply_rules(g, RuleSet([(P("sigmoid", X), maybe)])) == {}
    assert str(g) == before


def test_matching_is_fast_on_thousands_of_nodes():
    import time
    from llama_like import llama_like
    g = llama_like(layers=30, dtype="f32")
    rules = RuleSet([(P("mul", X, P("sigmoid", X)), lambda g, x: g.op("silu", x))])
    t = time.perf_counter()
    stats = apply_rules(g, rules)
    assert stats["mul-rule"] == 30 and time.perf_counter() - t < 1.0


def test_trace_records_applied_and_declined_rules_with_reasons():
    g = parse_graph("""
graph @main(%x: f32[4], %h: f16[4]) {
  %s: f32[4] = sigmoid(%x)
  %a: f32[4] = mul(%x, %s)
  %t: f16[4] = sigmoid(%h)
  %b: f16[4] = mul(%h, %t)
  return %a, %b
}""")

    def silu_f32(g, x):
        return g.op("silu", x) if x.type.dtype == "f32" else f"{x.type.dtype} is not f32"
    trace = []
    stats = apply_rules(g, RuleSet([(P("mul", X, P("sigmoid", X)), silu_f32)]), name="demo", trace=trace)
    assert stats["silu-f32"] == 1
    outcomes = [(e.rule, e.outcome) for e in trace]
    assert outcomes == [("silu-f32", "applied"), ("silu-f32", "declined (f16 is not f32)")]
    assert trace[1].anchor == "%b: f16[4] = mul(%h, %t)"
    assert str(trace[0]).startswith("[demo] silu-f32 applied")


def test_trace_to_stderr_from_env(monkeypatch, capsys):
    from slimgraph.passes import PassManager
    monkeypatch.setenv("SLIMGRAPH_TRACE_REWRITES", "1")
    g = parse_graph(TEXT)
    PassManager("canonicalize").run(g)
    err = capsys.readouterr().err
    assert "[canonicalize] silu applied: %a: f32[4] = mul(%s, %x)" in err
