"""fold-constants: evaluate nodes whose inputs are all known, using the op's reference impl.

    %c = constant() {value=2.0}; %d = mul(%c, %c)   ->   %d = constant() {value=4.0}
    neg(@small_w)                                   ->   @folded (a new weight)

"Known" means produced by a `constant` node or a weight with at most `max_elements` elements.
Zero-input generators (`full`, `arange`, `dim_value`) fold when their attributes are static.
A 0-d result becomes a `constant` node; anything else becomes a new weight, and only if it has
at most `max_elements` elements, so large weights are never duplicated (e.g. `cast(@embed)`).
Run `dce` afterwards to drop the inputs that became unused.
"""
from __future__ import annotations
import math

import torch

from ..ir.dtypes import from_torch
from ..ir.interpreter import resolve_attrs
from ..ir.registry import get_op
from .base import Pass, PassResult, register_pass
from .rewrite import erase_dead


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Evaluate constant subexpressions at compile time."""
    max_elements: int = 1024

    def run(self, graph) -> PassResult:
        folded = to_weights = 0
        for node in list(graph.nodes):
            if node.graph is not graph or not self._foldable(node):
                continue
            try:
                outs = _evaluate(node)
            except Exception:  # noqa: BLE001 - an op that fails at compile time is left for run time
                continue
            with graph.inserting_before(node):
                new = [self._materialize(graph, node, o, t) for o, t in zip(node.outputs, outs)]
            to_weights += sum(v.is_weight for v in new)
            for old, v in zip(node.outputs, new):
                old.replace_all_uses_with(v)
            for v in node.inputs:
                if v.producer is not None:
                    erase_dead(graph, v.producer)
            erase_dead(graph, node)
            folded += 1
        return PassResult(folded > 0, {"folded": folded, "new_weights": to_weights})

    def _known(self, v) -> bool:
        if v.producer is not None:
            return v.producer.op == "constant"
        return v.is_weight and v.type.is_static and math.prod(v.type.shape) <= self.max_elements

    def _foldable(self, node) -> bool:
        opdef = get_op(node.op)
        if node.op == "constant" or not opdef.pure or not all(map(self._known, node.inputs)):
            return False
        if any(_is_symbolic(node.attrs[k]) for k in opdef.symbolic_attrs):
            return False
        return all(o.type.is_static and math.prod(o.type.shape) <= self.max_elements for o in node.outputs)

    def _materialize(self, graph, node, old, t: torch.Tensor):
        if t.dim() == 0 and old.type.rank == 0:
            return graph.add_node("constant", [], {"value": t.item(), "dtype": old.type.dtype},
                                  names=[old.name + ".c"]).output
        return graph.add_weight(graph.fresh_name(f"folded.{old.name}"), t.contiguous().clone())


def _is_symbolic(v) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and any(isinstance(x, str) for x in v))


def _evaluate(node) -> list[torch.Tensor]:
    opdef = get_op(node.op)
    args = [v.tensor if v.is_weight else _constant(v.producer) for v in node.inputs]
    with torch.no_grad():
        out = opdef.impl(*args, **resolve_attrs(opdef, node.attrs, {}))
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    for o, t in zip(node.outputs, outs):
        if list(t.shape) != list(o.type.shape) or from_torch(t.dtype) != o.type.dtype:
            raise ValueError(f"{node.op} produced {t.dtype}{list(t.shape)}, declared {o.type}")
    return outs


def _constant(node) -> torch.Tensor:
    return get_op("constant").impl(**node.attrs)
