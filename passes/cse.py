"""cse: merge pure nodes with the same op, the same input values and the same attributes.

    %a = exp(%x); %b = exp(%x); %c = add(%a, %b)   ->   %a = exp(%x); %c = add(%a, %a)

One forward sweep: inputs are replaced before their users are keyed, so chains of duplicates
collapse in a single run. Attributes are compared by their JSON text (so 1 and 1.0 differ,
which is conservative).
"""
from __future__ import annotations
import json

from ..ir.registry import get_op
from .base import Pass, PassResult, register_pass


@register_pass("cse")
class CommonSubexpressionElimination(Pass):
    """Merge duplicate pure computations."""

    def run(self, graph) -> PassResult:
        seen: dict[tuple, object] = {}
        merged = 0
        for node in list(graph.nodes):
            if not get_op(node.op).pure:
                continue
            key = (node.op, tuple(id(v) for v in node.inputs), _attr_key(node.attrs))
            first = seen.setdefault(key, node)
            if first is not node:
                graph.replace_node(node, first.outputs)
                merged += 1
        return PassResult(merged > 0, {"merged": merged})


def _attr_key(attrs: dict) -> str:
    return json.dumps(attrs, sort_keys=True, default=repr)
