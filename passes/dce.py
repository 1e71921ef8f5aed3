"""dce: remove pure nodes whose outputs are unused, then weights nothing uses.

Graph inputs are kept (they are the signature). Impure ops (registry `pure=False`) are kept, and so are
weights named `draft_heads.*` (draft heads that the decode-time drafter reads outside the graph's nodes,
e.g. the EAGLE layer of passes/draft_heads.py).
One reverse sweep suffices: a node's users come after it, so they are visited first.
"""
from __future__ import annotations

from .base import Pass, PassResult, register_pass


KEEP_WEIGHT_PREFIXES = ("draft_heads.",)


@register_pass("dce")
class DeadCodeElimination(Pass):
    """Remove dead nodes and unused weights."""
    ensures = ("no-dead-nodes",)
    remove_weights: bool = True

    def run(self, graph) -> PassResult:
        removed = 0
        for node in reversed(graph.nodes):  # erasing the current node is safe while iterating
            if graph.is_dead(node):
                graph.erase(node)
                removed += 1
        weights = 0
        if self.remove_weights:
            for name, w in list(graph.weights.items()):
                if w.unused and not name.startswith(KEEP_WEIGHT_PREFIXES):
                    graph.remove_weight(name)
                    weights += 1
        return PassResult(removed + weights > 0, {"nodes": removed, "weights": weights})
