"""A graph's float twin: the same computation with every packed weight dequantized once and every float
value in one dtype (bf16 by default).

    twin = float_twin(graph, "bf16", outputs=["logits", "hidden_states"])

Use: making training data fast. A quantized graph's own kernels are built for batch-1 decoding (torch's
CPU int4 kernel costs about one 1-row product per row); its twin runs dense bf16 matmuls (AMX/VNNI on a
CPU, tensor cores on a GPU), so a 128-row batched step costs a few 1-row steps. The twin computes the
same function up to rounding: `qlinear(x, qw, s, z, b)` -> `linear(x, dequantize(qw, s, z), b)`,
`qembedding(ids, ...)` -> `embedding(dequantize(...), ids)`, `dequantize` -> its result as a weight,
`quantize_activation(x)` -> x (the twin of a W4A8 graph keeps float activations). Float inputs, weights,
states and `dtype` attributes (cast, constant, full, ...) take the twin's dtype; integer ones are kept.

Errors: ValueError for a non-float `dtype` or an `outputs` name the graph does not have.
"""
from __future__ import annotations

import torch

from .dtypes import FLOAT_DTYPES, to_torch
from .graph import Graph
from .registry import get_op
from .types import TensorType

# ops whose packed weight operands become one float weight, and what they become
_DEQUANT = {"qlinear": "linear", "qembedding": "embedding", "dequantize": None}


def float_twin(graph: Graph, dtype: str = "bf16", outputs: list[str] | None = None) -> Graph:
    """The float twin of `graph` in `dtype` (module docstring). `outputs`: the graph outputs to keep (by
    name; state outputs are always kept), others and the nodes only they need are dropped."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"float_twin(): dtype {dtype!r} is not a float dtype ({', '.join(sorted(FLOAT_DTYPES))})")
    names = {v.name for v in graph.outputs}
    missing = sorted(set(outputs or ()) - names)
    if missing:
        raise ValueError(f"float_twin(): graph @{graph.name} has no output {', '.join(missing)}; its outputs are "
                         f"{', '.join(sorted(names))}")
    tdt = to_torch(dtype)
    g = Graph(graph.name)
    m = {}

    def ty(t):
        return TensorType(dtype, t.shape) if t.dtype in FLOAT_DTYPES else t

    for v in graph.inputs:
        m[v] = g.add_input(v.name, ty(v.type))
    state_outs = {s.output for s in graph.states}
    keep = [v for v in graph.outputs if outputs is None or v.name in outputs or v in state_outs]
    needed = _needed_nodes(keep)

    def val(v):                                     # a weight enters the twin when a kept node first reads it
        if v not in m and v.is_weight:
            t = v.tensor
            m[v] = g.add_weight(v.name, t.to(tdt) if t.is_floating_point() else t)
        return m[v]

    for node in graph.nodes:
        if node not in needed:
            continue
        op = get_op(node.op)
        attrs = {k: (dtype if op.attrs.get(k) is not None and op.attrs[k].kind == "dtype" and v in FLOAT_DTYPES
                     else v) for k, v in node.attrs.items()}
        if node.op in _DEQUANT:
            w = _dequantized(g, node, tdt)
            if node.op == "qlinear":
                bias = _qlinear_bias(node)
                out = g.op("linear", val(node.inputs[0]), w, *([val(bias)] if bias is not None else []))
            elif node.op == "qembedding":
                out = g.op("embedding", w, val(node.inputs[0]))
            else:
                out = w
        elif node.op == "quantize_activation":
            out = val(node.inputs[0])
        else:
            n2 = g.add_node(node.op, [val(v) for v in node.inputs], attrs,
                            names=[g.fresh_name(o.name) for o in node.outputs])
            n2.meta = dict(node.meta)
            for o, o2 in zip(node.outputs, n2.outputs):
                m[o] = o2
            continue
        if out.kind == "node" and not g.has_name(node.output.name):
            g.rename(out, node.output.name)
        m[node.output] = out
    g.set_outputs([val(v) for v in keep])
    for s in graph.states:
        g.declare_state(s.name, m[s.input], m[s.output], s.kind, **s.attrs)
    return g


def _needed_nodes(outputs) -> set:
    """The nodes whose results `outputs` depend on (what the twin replays; the rest, e.g. draft heads, is left out)."""
    seen, stack = set(), [v.producer for v in outputs if v.producer is not None]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(v.producer for v in n.inputs if v.producer is not None and v.producer not in seen)
    return seen


def _n_packed(node) -> int:
    """How many inputs after x/ids are the packed weight (qweight, scales, zeros?)."""
    first = 0 if node.op == "dequantize" else 1
    rest = node.inputs[first:]
    if node.op == "qlinear":
        from .quant_format import is_zeros
        return 3 if len(rest) >= 3 and is_zeros(rest[2].type) else 2
    return len(rest)


def _packed_slice(node):
    first = 0 if node.op == "dequantize" else 1
    return node.inputs[first:first + _n_packed(node)]


def _qlinear_bias(node):
    rest = node.inputs[1 + _n_packed(node):]
    return rest[0] if rest else None


def _dequantized(g, node, tdt):
    """The node's packed weight dequantized once, as a twin weight (shared by nodes reading the same one)."""
    from . import quant_format as Q
    qw, sc, *z = [v.tensor for v in _packed_slice(node)]
    name = node.inputs[0 if node.op == "dequantize" else 1].name + ".twin"
    if g.has_name(name):
        return g.weights[name]
    w = Q.dequantize(qw, sc, z[0] if z else None, node.attrs["bits"], node.attrs["group"], torch.float32).to(tdt)
    return g.add_weight(name, w)
