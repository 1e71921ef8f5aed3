"""The reference interpreter: runs any graph with the registry's torch implementations.

It is the oracle that every pass and every codegen is tested against. Inputs are checked
against the graph's signature (dtype, rank, static dims, consistent symbolic dims), values
are freed after their last use, and failures say which node was executing.
"""
import torch

from . import symbolic
from .registry import get_op
from .dtypes import to_torch


class InterpreterError(RuntimeError):
    pass


def bind_symbols(graph, tensors) -> dict[str, int]:
    """Check `tensors` against the graph inputs and bind symbolic dims from their shapes."""
    if len(tensors) != len(graph.inputs):
        sig = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
        raise TypeError(f"graph @{graph.name} takes {len(graph.inputs)} inputs ({sig}), got {len(tensors)}")
    env: dict[str, int] = {}
    for v, t in zip(graph.inputs, tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"input %{v.name} must be a tensor, got {type(t).__name__}")
        if t.dtype != to_torch(v.type.dtype):
            raise TypeError(f"input %{v.name} expects dtype {v.type.dtype}, got {t.dtype}")
        if t.dim() != v.type.rank:
            raise TypeError(f"input %{v.name} expects rank {v.type.rank} ({v.type}), got shape {tuple(t.shape)}")
        for d, n in zip(v.type.shape, t.shape):
            if isinstance(d, str) and symbolic.free_symbols(d) == {d}:
                env.setdefault(d, int(n))
    for v, t in zip(graph.inputs, tensors):
        for i, (d, n) in enumerate(zip(v.type.shape, t.shape)):
            try:
                want = symbolic.evaluate(d, env)
            except Exception:  # noqa: BLE001 - a symbol bound nowhere
                raise TypeError(f"input %{v.name} dim {i} is {d}, which no input binds") from None
            if want != n:
                raise TypeError(f"input %{v.name} expects shape {v.type} (dim {i} = {want} here), "
                                f"got {tuple(t.shape)}")
    return env


def resolve_attrs(opdef, attrs, env):
    if not opdef.symbolic_attrs:
        return attrs
    out = dict(attrs)
    for k in opdef.symbolic_attrs:
        v = out[k]
        if isinstance(v, str):
            out[k] = symbolic.evaluate(v, env)
        elif isinstance(v, list):
            out[k] = [symbolic.evaluate(x, env) if isinstance(x, str) else x for x in v]
    return out


def last_uses(graph) -> dict[int, list]:
    """node index -> values whose last use is that node (so they can be freed)."""
    last: dict[int, int] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            if not v.is_weight:
                last[id(v)] = i
    keep = {id(v) for v in graph.outputs}
    out: dict[int, list] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            if last.get(id(v)) == i and id(v) not in keep and not v.is_weight:
                dead = out.setdefault(i, [])
                if not any(d is v for d in dead):  # a node may use a value twice: free it once
                    dead.append(v)
    return out


class Interpreter:
    grad = False        # record autograd (a subclass that trains some weights through the graph sets it)

    def __init__(self, graph):
        self.graph = graph
        self._free = last_uses(graph)

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        g = self.graph
        symbols = bind_symbols(g, inputs)
        env = {id(v): t for v, t in zip(g.inputs, inputs)}
        for w in g.weights.values():
            env[id(w)] = w.tensor
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            for i, node in enumerate(g.nodes):
                env.update(zip(map(id, node.outputs), self.run_node(node, [env[id(v)] for v in node.inputs], symbols)))
                for v in self._free.get(i, ()):
                    del env[id(v)]
        return [env[id(v)] for v in g.outputs]

    def run_node(self, node, args, symbols):
        opdef = get_op(node.op)
        try:
            out = opdef.impl(*args, **resolve_attrs(opdef, node.attrs, symbols))
        except Exception as e:
            raise InterpreterError(f"While executing {node!r}\n  {type(e).__name__}: {e}") from e
        return out if isinstance(out, (tuple, list)) else (out,)


def run(graph, *inputs):
    return Interpreter(graph).run(*inputs)
