"""Fusion partitioning: which IR nodes the `cuda` target runs as one generated Triton kernel.

    groups = partition(graph)     # [Group(nodes=[...], root=node, inputs=[values])], only groups of >= 2 nodes
    print(describe(groups))       # one line per group: root, ops, inputs

What fuses is read from the op traits (ir/registry.py), not from op names: a group is a tree of
`elementwise` nodes with one root whose every non-root node is used only inside the group and is not a
graph output (so nothing a group computes is needed elsewhere, and no intermediate tensor is written).
Producers are absorbed greedily from the root upwards (reverse topological order), including ones whose
output broadcasts up to the root's shape (recomputed per element: cheaper than a round trip to memory
for elementwise work). Literal 0-d constants are inlined, never inputs. Heavier ops (qlinear, norms,
rope, attention) are their own kernels (codegen/triton/kernels); norm-into-linear prologues and
epilogues into matmuls are not fused yet.

The partition is checked with networkx: contracting every group to one vertex must leave the node graph
acyclic (a fused kernel cannot both feed and consume another kernel). Source of the approach: the
producer/consumer fusion of XLA's and TVM's FuseOps passes, restricted to injective elementwise trees.
"""
from __future__ import annotations
from dataclasses import dataclass, field

from ...ir.registry import get_op
from .elementwise import fusible


@dataclass
class Group:
    root: object                                  # the Node whose output the kernel writes
    nodes: list = field(default_factory=list)     # in topological order, root last
    inputs: list = field(default_factory=list)    # external Values read by the kernel, first-use order

    def __contains__(self, node) -> bool:
        return any(n is node for n in self.nodes)


def _literal(v) -> bool:
    p = v.producer
    return p is not None and p.op == "constant" and isinstance(p.attrs.get("value"), (bool, int, float))


def _candidate(node) -> bool:
    return get_op(node.op).has("elementwise") and fusible(node)


def partition(graph, max_nodes: int = 64, max_inputs: int = 16) -> list[Group]:
    """Groups of >= 2 fusible elementwise nodes (see the module docstring). `max_nodes` and
    `max_inputs` bound one kernel's size (registers, argument count)."""
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    taken: set[int] = set()
    groups: list[Group] = []
    for node in reversed(list(graph.nodes)):
        if id(node) in taken or not _candidate(node):
            continue
        members = {id(node): node}
        frontier = [node]
        while frontier:
            n = frontier.pop()
            for v in n.inputs:
                p = v.producer
                if (p is None or id(p) in members or id(p) in taken or not _candidate(p)
                        or graph.is_output(v) or _literal(v) or len(members) >= max_nodes):
                    continue
                if any(id(u) not in members for u in v.users):
                    continue
                members[id(p)] = p
                frontier.append(p)
        if len(members) < 2:
            continue
        nodes = sorted(members.values(), key=lambda n: order[id(n)])
        inputs, seen = [], set()
        for n in nodes:
            for v in n.inputs:
                if (v.producer is None or id(v.producer) not in members) and not _literal(v) and id(v) not in seen:
                    seen.add(id(v))
                    inputs.append(v)
        if not inputs or len(inputs) > max_inputs:
            continue
        taken.update(members)
        groups.append(Group(node, nodes, inputs))
    groups.reverse()
    check_acyclic(graph, groups)
    return groups


def check_acyclic(graph, groups: list[Group]) -> None:
    """Raise AssertionError if contracting each group to one vertex makes the node graph cyclic."""
    import networkx as nx
    g = graph.nx_graph()
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    blocks, grouped = [], set()
    for grp in groups:
        b = {index[id(n)] for n in grp.nodes}
        blocks.append(b)
        grouped |= b
    blocks += [{i} for i in g.nodes if i not in grouped]
    q = nx.quotient_graph(g, blocks)
    if not nx.is_directed_acyclic_graph(q):
        raise AssertionError("fusion partition would make a cycle between kernels")


def describe(groups: list[Group]) -> str:
    return "\n".join(f"%{g.root.output.name} <- {' '.join(n.op for n in g.nodes)} "
                     f"({len(g.inputs)} input{'s' if len(g.inputs) != 1 else ''})" for g in groups)
