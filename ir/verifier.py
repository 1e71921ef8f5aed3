"""Graph verifier: SSA well-formedness, use lists, op schemas and inferred types.

Run by the pass manager after every pass in debug mode and in tests. Errors name the node
and print the graph around it.
"""
from .registry import get_op


class VerifyError(ValueError):
    pass


def verify(graph, check_types: bool = True):
    defined: set[int] = set()
    names: set[str] = set()

    def define(v, where):
        if v.name in names:
            fail(f"value name %{v.name} is defined twice ({where})")
        if v.graph is not graph:
            fail(f"%{v.name} belongs to another graph ({where})")
        names.add(v.name)
        defined.add(id(v))

    def fail(msg, node=None):
        ctx = ""
        if node is not None:
            ctx = f"\n  at node: {node!r}\n{_context(graph, node)}"
        raise VerifyError(f"graph @{graph.name} failed verification: {msg}{ctx}")

    for v in graph.inputs:
        define(v, "graph input")
    for name, w in graph.weights.items():
        if name != w.name or not w.is_weight:
            fail(f"weight table entry {name!r} is inconsistent")
        define(w, "weight")
    uses: dict[int, list] = {}
    for node in graph.nodes:
        if node.graph is not graph:
            fail("node is not owned by this graph", node)
        try:
            opdef = get_op(node.op)
            opdef.check_arity(len(node.inputs))
            if opdef.normalize_attrs(node.attrs) != node.attrs:
                fail("attributes do not match the op schema (missing defaults?)", node)
        except (KeyError, TypeError) as e:
            fail(str(e), node)
        for i, v in enumerate(node.inputs):
            if id(v) not in defined:
                fail(f"input {i} (%{v.name}) is used before it is defined (graph not in topological order?)", node)
            uses.setdefault(id(v), []).append((node, i))
        for o in node.outputs:
            if o.producer is not node:
                fail(f"output %{o.name} does not record its producer", node)
            define(o, "node output")
        if check_types:
            try:
                inferred = opdef.infer([v.type for v in node.inputs], node.attrs)
            except Exception as e:  # noqa: BLE001 - report any inference failure with the node
                fail(f"type inference failed: {e}", node)
            for o, t in zip(node.outputs, inferred, strict=False):
                if not o.type.matches(t):
                    fail(f"%{o.name} is declared {o.type} but {node.op} infers {t}", node)
            if len(inferred) != len(node.outputs):
                fail(f"{node.op} produces {len(inferred)} outputs, node has {len(node.outputs)}", node)
    for v in graph.values():
        actual = uses.get(id(v), [])
        if sorted(map(_key, v.uses)) != sorted(map(_key, actual)):
            fail(f"use list of %{v.name} is stale: records {len(v.uses)} uses, graph has {len(actual)}")
    for o in graph.outputs:
        if id(o) not in defined:
            fail(f"graph output %{o.name} is not defined")
    from .state import StateError, check_states
    try:
        check_states(graph)
    except StateError as e:
        fail(str(e))


def _key(use):
    return (id(use[0]), use[1])


def _context(graph, node, radius=3):
    from .printer import format_node
    i = graph.nodes.index(node) if node in graph.nodes else 0
    lo, hi = max(0, i - radius), min(len(graph.nodes), i + radius + 1)
    return "\n".join(("> " if j == i else "  ") + format_node(graph.nodes[j]) for j in range(lo, hi))
