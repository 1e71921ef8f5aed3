"""merge-sibling-linears: linears that read the same input become one wider linear and a split.

    %q = linear(%x, @wq)  %k = linear(%x, @wk)  %v = linear(%x, @wv)
        ->  %qkv = linear(%x, @wq+wk+wv)  %q, %k, %v = split(%qkv) {dim=-1, sizes=[nq, nk, nv]}

Works for `linear` and `qlinear` alike: every input after x is a weight whose dim 0 is the output
channel (weight, bias; qweight, scales, zeros), so concatenating them along dim 0 is the merged
layer, exactly: each output channel is computed from its own row as before. Siblings merge only
when they have the same op, attributes, input count and weight dtypes/trailing shapes. One call
instead of 3 (q/k/v) or 2 (gate/up) per block: fewer kernel launches and larger matmuls. Run it
after quantize-weights/fuse-dequant-matmul (quantization selects layers by their original names).
"""
from __future__ import annotations
import torch

from .base import Pass, PassResult, register_pass

MERGEABLE = ("linear", "qlinear")


@register_pass("merge-sibling-linears")
class MergeSiblingLinears(Pass):
    """Merge linear/qlinear nodes reading the same input into one node + split."""

    def run(self, graph) -> PassResult:
        groups: dict[tuple, list] = {}
        for node in graph.nodes:
            key = _key(node)
            if key is not None:
                groups.setdefault(key, []).append(node)
        merged = 0
        for nodes in groups.values():
            if len(nodes) > 1:
                _merge(graph, nodes)
                merged += len(nodes)
        return PassResult(merged > 0, {"merged": merged})


def _key(node):
    if node.op not in MERGEABLE or len(node.outputs) != 1:
        return None
    x, params = node.inputs[0], node.inputs[1:]
    out = node.output.type.shape[-1] if node.output.type.rank else None
    if not isinstance(out, int) or not all(p.is_weight and p.type.is_static and p.type.rank >= 1
                                           and p.type.shape[0] == out for p in params):
        return None
    sig = tuple((p.type.dtype, p.type.shape[1:]) for p in params)
    return node.op, id(x), repr(sorted(node.attrs.items())), sig


def _merge(graph, nodes):
    first = nodes[0]  # groups are collected in program order
    params = []
    for i in range(1, len(first.inputs)):
        parts = [n.inputs[i] for n in nodes]
        params.append(graph.add_weight(graph.fresh_name(f"{parts[0].name}.merged"),
                                       torch.cat([p.tensor for p in parts], 0)))
    sizes = [n.output.type.shape[-1] for n in nodes]
    with graph.inserting_before(first):
        wide = graph.add_node(first.op, [first.inputs[0], *params], first.attrs,
                              names=[graph.fresh_name(f"{nodes[0].output.name}_merged")])
        split = graph.add_node("split", [wide.output], {"dim": -1, "sizes": sizes},
                               names=[graph.fresh_name(n.output.name) for n in nodes])
    old = {p.name for n in nodes for p in n.inputs[1:]}
    for n, out in zip(nodes, split.outputs):
        graph.replace_node(n, [out])
    for name in old:
        if graph.weights[name].unused:
            graph.remove_weight(name)
