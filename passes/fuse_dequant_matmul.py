"""fuse-dequant-matmul: one `qlinear` op in place of a dequantize feeding a linear.

    linear(x, dequantize(qw, scales, zeros?) {bits, group}, bias?)  ->  qlinear(x, qw, scales, zeros?, bias?) {bits, group}
    embedding(dequantize(qw, scales, zeros?) {bits, group, dtype}, ids)  ->  qembedding(ids, qw, scales, zeros?) {...}

Codegens then run the matmul from the packed weights (torch: codegen/torch_qlinear.py), so no
float copy of the weight exists at run time. A dequantize whose output is also read by other
ops stays for them.

Contract: requires "quantized" (dequantize ops in the graph, or quantize-weights / select-precision
ran earlier in the pipeline; else the pass manager raises PassError saying so: the pass would do
nothing); ensures "dequant-fused" (no fusible dequantize -> linear/embedding pair is left).
"""
from __future__ import annotations
from .base import Pass, PassResult, register_pass, register_property

register_property("dequant-fused", "no linear/embedding reads a dequantize that fuse-dequant-matmul fuses",
                  lambda g: not any(_fused(n)[0] for n in g.nodes))


@register_pass("fuse-dequant-matmul")
class FuseDequantMatmul(Pass):
    """Rewrite linear(x, dequantize(...)) into qlinear, embedding(dequantize(...), ids) into qembedding."""
    requires = ("quantized",)
    ensures = ("dequant-fused",)

    def run(self, graph) -> PassResult:
        fused = 0
        for node in list(graph.nodes):
            fused_op, dq = _fused(node)
            if fused_op is None:
                continue
            attrs = {"bits": dq.attrs["bits"], "group": dq.attrs["group"]}
            if node.op == "linear":
                inputs = [node.inputs[0], *dq.inputs, *node.inputs[2:]]
            else:
                inputs, attrs["dtype"] = [node.inputs[1], *dq.inputs], dq.attrs["dtype"]
            with graph.inserting_before(node):
                q = graph.add_node(fused_op, inputs, attrs, names=[graph.fresh_name(node.output.name)])
            old_name = node.output.name
            graph.replace_node(node, [q.output])
            graph.rename(q.output, old_name)    # outputs are addressed by name (`logits`): keep it
            if dq.output.unused:
                graph.erase(dq)
            fused += 1
        return PassResult(fused > 0, {"fused": fused})


def _fused(node):
    """(fused op, its dequantize) when `node` reads a dequantized weight: qlinear or qembedding; else (None, None)."""
    weight = {"linear": 1, "embedding": 0}.get(node.op)
    dq = node.inputs[weight].producer if weight is not None else None
    if dq is None or dq.op != "dequantize":
        return None, None
    if node.op == "embedding":
        return "qembedding", dq
    return ("qlinear", dq) if dq.attrs["dtype"] == node.inputs[0].type.dtype else (None, None)
