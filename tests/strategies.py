"""Hypothesis strategies for random valid graphs (reused by IR, pass and codegen tests).

    from strategies import graphs
    @given(graphs())
    def test_x(case):
        g, inputs = case          # a verified Graph and matching example input tensors

Graphs mix elementwise, shape, reduce, matmul and constant ops over f32 values with static
or symbolic (`n`) leading dims, with random weights. They deliberately contain what cleanup
passes act on: duplicates (cse), dead nodes (dce), constant subexpressions (fold-constants),
identities and expanded rms_norm/silu chains (canonicalize). Values stay O(1) so tolerances
of ~1e-4 hold.
"""
from __future__ import annotations
import torch
from hypothesis import strategies as st

from slimgraph.ir import Graph, TensorType

UNARY = ["neg", "abs", "relu", "tanh", "sigmoid", "sin", "cos", "silu"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]
REDUCE = ["sum", "mean", "amax"]


def _const(g, value, dtype="f32"):
    return g.op("constant", value=value, dtype=dtype)


def _rand(gen, shape):
    return torch.rand(shape, generator=gen) * 2 - 1


def _static(v) -> bool:
    return v.type.is_static


def _step(draw, g, pool, gen):
    """Append random op(s) to `g` using values from `pool`; returns the new value(s) or None."""
    kind = draw(st.sampled_from(["unary", "binary", "binary", "const", "identity", "permute", "reshape",
                                 "reduce", "matmul", "dup", "rms", "silu", "fold", "softmax", "slice",
                                 "split", "concat", "unsqueeze", "expand"]))
    x = draw(st.sampled_from(pool))
    t = x.type
    if kind == "unary":
        return g.op(draw(st.sampled_from(UNARY)), x)
    if kind == "binary":
        same = [v for v in pool if v.type.matches(t)]
        y = draw(st.sampled_from(same))
        if draw(st.booleans()) and t.is_static and t.rank:
            y = g.add_weight(g.fresh_name("w"), _rand(gen, [int(d) for d in t.shape]))
        return g.op(draw(st.sampled_from(BINARY)), *draw(st.permutations([x, y])))
    if kind == "const":
        c = _const(g, draw(st.sampled_from([0.5, -1.5, 2.0])))
        return g.op(draw(st.sampled_from(["add", "mul", "sub"])), x, c)
    if kind == "identity":
        which = draw(st.sampled_from(["add0", "mul1", "div1", "reshape", "cast", "castcast", "permute"]))
        if which in ("add0", "mul1", "div1"):
            op, val = {"add0": ("add", 0.0), "mul1": ("mul", 1.0), "div1": ("div", 1.0)}[which]
            return g.op(op, x, _const(g, val))
        if which == "reshape":
            return g.op("reshape", x, shape=list(t.shape))
        if which == "cast":
            return g.op("cast", x, dtype="f32")
        if which == "castcast":
            return g.op("cast", g.op("cast", x, dtype="f64"), dtype="f32")
        return g.op("permute", x, dims=list(range(t.rank)))
    if kind == "permute" and t.rank >= 2:
        perm = draw(st.permutations(range(t.rank)))
        y = g.op("permute", x, dims=list(perm))
        if draw(st.booleans()):  # permute of permute
            return g.op("permute", y, dims=list(draw(st.permutations(range(t.rank)))))
        return y
    if kind == "reshape" and t.rank >= 2 and all(isinstance(d, int) for d in t.shape[1:]):
        flat = g.op("reshape", x, shape=[t.shape[0], -1])
        return g.op("reshape", flat, shape=list(t.shape)) if draw(st.booleans()) else flat
    if kind == "reduce" and t.rank >= 1:
        return g.op(draw(st.sampled_from(REDUCE)), x, dims=[-1], keepdim=draw(st.booleans()))
    if kind == "matmul" and t.rank >= 1 and isinstance(t.shape[-1], int):
        w = g.add_weight(g.fresh_name("mm"), _rand(gen, [t.shape[-1], draw(st.integers(1, 4))]) * 0.5)
        return g.op("matmul", x, w)
    if kind == "dup" and g.nodes:
        n = draw(st.sampled_from([n for n in g.nodes if n.op != "constant"] or g.nodes))
        return g.add_node(n.op, n.inputs, n.attrs).outputs[0]
    if kind == "rms" and t.rank >= 1 and isinstance(t.shape[-1], int):
        ms = g.op("mean", g.op("pow", x, _const(g, 2.0)), dims=[-1], keepdim=True)
        h = g.op("mul", x, g.op("rsqrt", g.op("add", ms, _const(g, 1e-5))))
        w = g.add_weight(g.fresh_name("norm"), _rand(gen, [t.shape[-1]]))
        return g.op("mul", *draw(st.permutations([w, h])))
    if kind == "silu":
        return g.op("mul", *draw(st.permutations([x, g.op("sigmoid", x)])))
    if kind == "fold":
        a, b = _const(g, draw(st.sampled_from([0.5, 2.0, 3.0]))), _const(g, 0.25)
        c = g.op(draw(st.sampled_from(["add", "mul", "sub", "maximum"])), a, b)
        small = g.add_weight(g.fresh_name("small"), _rand(gen, [2]))
        if t.rank >= 1 and t.shape[-1] == 2 and draw(st.booleans()):
            return g.op("add", x, g.op("neg", small))
        return g.op("mul", x, c)
    if kind == "softmax" and t.rank >= 1:
        return g.op("softmax", x, dim=-1)
    if kind == "slice" and t.rank >= 1 and isinstance(t.shape[-1], int):
        n = t.shape[-1]
        start = draw(st.integers(0, n - 1))
        if draw(st.booleans()):
            start = 0
        return g.op("slice", x, dim=-1, start=start, end=n if draw(st.booleans()) else 2 ** 63 - 1)
    if kind == "split" and t.rank >= 1 and isinstance(t.shape[-1], int) and t.shape[-1] >= 2:
        k = draw(st.integers(1, t.shape[-1] - 1))
        return list(g.op("split", x, dim=-1, sizes=[k, t.shape[-1] - k]))
    if kind == "concat" and t.rank >= 1:
        return g.op("concat", x, *[v for v in pool if v.type.matches(t)][:2], dim=-1)
    if kind == "unsqueeze":
        u = g.op("unsqueeze", x, dim=draw(st.integers(0, t.rank)))
        return g.op("squeeze", u, dims=[u.type.shape.index(1)]) if draw(st.booleans()) else u
    if kind == "expand":
        u = g.op("unsqueeze", x, dim=0)
        return g.op("expand", u, shape=[draw(st.integers(1, 2))] + [-1] * t.rank)
    return None


@st.composite
def graphs(draw, max_ops: int = 10, symbolic: bool | None = None, special_values: bool = False):
    """(graph, inputs): a random verified graph and example inputs for it. `special_values=True`
    puts NaN, +inf and -inf at random positions of the inputs (targets must agree on them)."""
    sym = draw(st.booleans()) if symbolic is None else symbolic
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    n = draw(st.integers(1, 3))
    rank = draw(st.integers(1, 3))
    shape = [("n" if sym else n)] + [draw(st.integers(1, 4)) for _ in range(rank - 1)]
    g = Graph("rand")
    pool = [g.add_input("x", TensorType("f32", tuple(shape)))]
    inputs = [_rand(gen, [n] + shape[1:])]
    if draw(st.booleans()):
        pool.append(g.add_input("y", TensorType("f32", tuple(shape))))
        inputs.append(_rand(gen, [n] + shape[1:]))
    for _ in range(draw(st.integers(1, max_ops))):
        v = _step(draw, g, pool, gen)
        if v is not None:
            pool.extend(v if isinstance(v, list) else [v])
    if special_values:
        specials = torch.tensor([float("nan"), float("inf"), float("-inf")])
        for x in inputs:
            flat = x.view(-1)
            for i in draw(st.lists(st.integers(0, flat.numel() - 1), max_size=3)):
                flat[i] = specials[draw(st.integers(0, 2))]
    computed = [v for v in pool if v.producer is not None] or pool[:1]
    outs = [computed[-1]] + draw(st.lists(st.sampled_from(computed), max_size=2))
    g.set_outputs(list(dict.fromkeys(outs)))
    return g, inputs
