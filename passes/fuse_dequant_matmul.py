"""fuse-dequant-matmul: one `qlinear` op in place of a dequantize feeding a linear.

    linear(x, dequantize(qw, scales, zeros?) {bits, group}, bias?)  ->  qlinear(x, qw, scales, zeros?, bias?) {bits, group}

Codegens then run the matmul from the packed weights (torch: codegen/torch_qlinear.py), so no
float copy of the weight exists at run time. Put it after `quantize-weights`. A dequantize
whose output is also read by other ops stays for them.
"""
from __future__ import annotations
from .base import Pass, PassResult, register_pass


@register_pass("fuse-dequant-matmul")
class FuseDequantMatmul(Pass):
    """Rewrite linear(x, dequantize(...)) into qlinear."""

    def run(self, graph) -> PassResult:
        fused = 0
        for node in list(graph.nodes):
            dq = node.inputs[1].producer if node.op == "linear" else None
            if dq is None or dq.op != "dequantize" or dq.attrs["dtype"] != node.inputs[0].type.dtype:
                continue
            attrs = {"bits": dq.attrs["bits"], "group": dq.attrs["group"]}
            with graph.inserting_before(node):
                q = graph.add_node("qlinear", [node.inputs[0], *dq.inputs, *node.inputs[2:]], attrs,
                                   names=[graph.fresh_name(node.output.name)])
            graph.replace_node(node, [q.output])
            if not dq.output.uses and not any(o is dq.output for o in graph.outputs):
                graph.erase(dq)
            fused += 1
        return PassResult(fused > 0, {"fused": fused})
