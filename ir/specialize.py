"""Bind a graph's symbolic dims to numbers: the static-shape specialization that ahead-of-time codegens
(the `c` target) need.

    free_dims(graph)                          # {"batch", "seq", "past"}: the symbols graph inputs use
    specialize(graph, {"batch": 1, "seq": 128, "past": 0})   # in place: every type and dim attribute

After `specialize` every value's shape is made of ints, `dim` attributes (`slice{end="seq"}`,
`arange{end="batch"}`, `reshape{shape=["batch","seq",384]}`) hold their values, and the graph's inputs
accept only tensors of exactly those shapes (the interpreter checks them). Every symbol the graph uses
must be bound; a missing one is a ValueError naming it and the inputs that use it. Extra names are an
error too (a typo would otherwise leave the graph unchanged).
"""
from __future__ import annotations

from . import symbolic as S
from .registry import get_op
from .types import TensorType


def free_dims(graph) -> set[str]:
    """The symbols in the graph's input, weight and node value types."""
    return {s for v in graph.values() for d in v.type.shape for s in S.free_symbols(d)}


def specialize(graph, dims: dict[str, int]):
    """Substitute `dims` (symbol -> int) everywhere in `graph` (in place); returns the graph."""
    used = free_dims(graph)
    unknown = sorted(set(dims) - used)
    if unknown:
        raise ValueError(f"graph @{graph.name}: cannot bind {', '.join(unknown)}: the graph's dims are "
                         f"{', '.join(sorted(used)) or 'all static'}")
    missing = sorted(used - set(dims))
    if missing:
        users = [f"%{v.name}: {v.type}" for v in graph.inputs if any(S.free_symbols(d) & set(missing)
                                                                       for d in v.type.shape)]
        raise ValueError(f"graph @{graph.name}: symbolic dims {', '.join(missing)} are not bound (used by "
                         f"{', '.join(users[:4]) or 'internal values'}); give a value for each")
    env = {k: int(v) for k, v in dims.items()}
    for k, v in env.items():
        if v < 0:
            raise ValueError(f"graph @{graph.name}: dim {k}={v} is negative")

    def ev(d):
        return S.evaluate(d, env) if isinstance(d, str) else d

    for v in graph.values():
        if not v.type.is_static:
            v.type = TensorType(v.type.dtype, tuple(ev(d) for d in v.type.shape))
    for n in graph.nodes:
        for k in get_op(n.op).symbolic_attrs:
            a = n.attrs.get(k)
            if isinstance(a, str):
                n.attrs[k] = ev(a)
            elif isinstance(a, list):
                n.attrs[k] = [ev(x) for x in a]
    return graph
