"""verify: run the IR verifier as a pipeline step (changes nothing; raises on a broken graph)."""
from __future__ import annotations

from ..ir.verifier import verify
from .base import Pass, PassResult, register_pass


@register_pass("verify")
class Verify(Pass):
    """Check SSA form, use lists, op schemas and (optionally) inferred types."""
    check_types: bool = True

    def run(self, graph) -> PassResult:
        verify(graph, check_types=self.check_types)
        return PassResult(False, {"nodes": len(graph.nodes)})
