"""The reference interpreter: input checking, symbol binding, error context."""
import pytest
import torch

from slimgraph.ir import InterpreterError, parse_graph, run

TEXT = """
graph @main(%x: f32[b,seq,4], %ids: i64[seq]) {
  weight @w: f32[3,4]
  %l: f32[b,seq,3] = linear(%x, @w)
  %s: f32[b,seq,3] = softmax(%l) {dim=-1}
  %n: i64[] = dim_value() {expr="b*seq"}
  %r: f32[b,seq*3] = reshape(%s) {shape=["b","seq*3"]}
  return %r, %n
}"""


def graph(w=None):
    return parse_graph(TEXT, weights={"w": torch.randn(3, 4) if w is None else w})


def test_runs_and_matches_torch_with_symbols_bound_from_inputs():
    w = torch.randn(3, 4)
    x, ids = torch.randn(2, 5, 4), torch.arange(5)
    r, n = run(graph(w), x, ids)
    assert torch.allclose(r, torch.softmax(x @ w.T, -1).reshape(2, 15)) and int(n) == 10


@pytest.mark.parametrize("args, msg", [
    (lambda: (torch.randn(2, 5, 4),), "takes 2 inputs (%x: f32[b,seq,4], %ids: i64[seq]), got 1"),
    (lambda: (torch.randn(2, 5, 4).double(), torch.arange(5)),
     "input %x expects dtype f32, got torch.float64"),
    (lambda: (torch.randn(5, 4), torch.arange(5)), "input %x expects rank 3"),
    (lambda: (torch.randn(2, 5, 3), torch.arange(5)), "input %x expects shape f32[b,seq,4] (dim 2 = 4 here)"),
    (lambda: (torch.randn(2, 5, 4), torch.arange(6)), "input %ids expects shape i64[seq] (dim 0 = 5 here)"),
    (lambda: ([1.0], torch.arange(5)), "input %x must be a tensor"),
])
def test_bad_inputs_are_rejected_with_the_signature(args, msg):
    with pytest.raises(TypeError) as e:
        run(graph(), *args())
    assert msg in str(e.value)


def test_failures_name_the_executing_node():
    g = graph(w=torch.randn(3, 7))  # weight data disagrees with its declared type
    with pytest.raises(InterpreterError) as e:
        run(g, torch.randn(2, 5, 4), torch.arange(5))
    msg = str(e.value)
    assert msg.startswith("While executing %l: f32[b,seq,3] = linear(%x, @w)") and "RuntimeError" in msg
    assert isinstance(e.value.__cause__, RuntimeError)


def test_unbound_symbol_is_reported():
    g = parse_graph("graph @m(%x: f32[n+1]) {\n  %y: f32[n+1] = neg(%x)\n  return %y\n}")
    with pytest.raises(TypeError, match="dim 0 is n\\+1, which no input binds"):
        run(g, torch.randn(3))


def test_outputs_survive_freeing_and_inputs_can_be_outputs():
    g = parse_graph("""
graph @m(%x: f32[3]) {
  %a: f32[3] = exp(%x)
  %b: f32[3] = neg(%a)
  %c: f32[3] = add(%b, %a)
  return %a, %c, %x
}""")
    x = torch.randn(3)
    a, c, x2 = run(g, x)
    assert torch.allclose(a, x.exp()) and torch.allclose(c, torch.zeros(3)) and x2 is x


def test_symbolic_dims_evaluate_exactly():
    """Conv/pool output sizes over symbolic dims (floor(h/3 - 2/3) + 1) in integer arithmetic: math.floor of the
    floats 5/3 - 2/3 gave 0 at h = 5, a wrong dim for the interpreter's shape attrs and checks."""
    import sympy
    from slimgraph.ir import symbolic
    for text in ["floor(h/3-2/3)+1", "(floor(h/3-2/3)+1)*(w+1)", "ceiling((h-1)/3)", "ceiling(h/7)",
                 "2*floor(floor(h/2-1/2)/2)+2", "Max(h,w)-Min(h,3)", "Mod(h,3)+h*w"]:
        d = symbolic.canon(text)
        e = symbolic._expr(d)
        for h in range(1, 50):
            for w in (1, 4):
                want = e.subs({sympy.Symbol("h", integer=True): h, sympy.Symbol("w", integer=True): w})
                assert symbolic.evaluate(d, {"h": h, "w": w}) == int(want), (d, h, w)
