"""dce: remove pure nodes whose outputs are unused, then weights nothing uses.

Graph inputs are kept (they are the signature). Impure ops (registry `pure=False`) are kept.
One reverse sweep suffices: a node's users come after it, so they are visited first.
"""
from __future__ import annotations

from ..ir.registry import get_op
from .base import Pass, PassResult, register_pass


@register_pass("dce")
class DeadCodeElimination(Pass):
    """Remove dead nodes and unused weights."""
    remove_weights: bool = True

    def run(self, graph) -> PassResult:
        outputs = {id(v) for v in graph.outputs}
        removed = 0
        for node in reversed(list(graph.nodes)):
            used = any(o.uses or id(o) in outputs for o in node.outputs)
            if not used and get_op(node.op).pure:
                graph.erase(node)
                removed += 1
        weights = 0
        if self.remove_weights:
            for name, w in list(graph.weights.items()):
                if not w.uses and id(w) not in outputs:
                    graph.remove_weight(name)
                    weights += 1
        return PassResult(removed + weights > 0, {"nodes": removed, "weights": weights})
