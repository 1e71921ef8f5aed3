"""The SSA graph: `Graph` holds ordered `Node`s; `Value`s know their producer and uses.

Values and nodes compare by identity. Weights are named constant values backed by tensors
(loaded lazily); graph inputs are values with no producer. All mutation goes through the
methods here so that use lists stay consistent.
"""
from __future__ import annotations
import itertools
import re
from contextlib import contextmanager
from typing import Any, Callable, Iterable

import torch

from .types import TensorType

NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")


class Value:
    __slots__ = ("name", "type", "producer", "uses", "kind", "_data", "_loader", "graph", "__weakref__")

    def __init__(self, name: str, type: TensorType, kind: str, producer: Node | None = None, data=None):
        self.name, self.type, self.kind, self.producer = name, type, kind, producer
        self.uses: list[tuple[Node, int]] = []
        self._data = data  # weights only: a tensor, or a zero-argument loader
        self._loader = data if callable(data) else None
        self.graph: Graph | None = None

    @property
    def is_weight(self) -> bool:
        return self.kind == "weight"

    @property
    def tensor(self) -> torch.Tensor:
        if not self.is_weight:
            raise TypeError(f"%{self.name} is not a weight; only weights carry data")
        if callable(self._data):
            self._data = self._data()
        return self._data

    @tensor.setter
    def tensor(self, t: torch.Tensor):
        self._data, self._loader = t, None

    def release(self) -> None:
        """Drop the loaded tensor of a lazily loaded weight (the next `.tensor` loads it again), so that
        a runtime holding its own (e.g. repacked) copy does not keep the stored one alive too."""
        if self._loader is not None:
            self._data = self._loader

    @property
    def users(self) -> list[Node]:
        return list(dict.fromkeys(n for n, _ in self.uses))

    def ref(self) -> str:
        return ("@" if self.is_weight else "%") + self.name

    def replace_all_uses_with(self, new: Value) -> int:
        """Route every use of this value (nodes, graph outputs, state outputs) to `new`. A graph output keeps
        its name: outputs are addressed by name (`logits`, `present_key_0`), so `new` takes this value's
        name when `new` is a plain node value that names no other output."""
        n = 0
        for node, i in list(self.uses):
            node.set_input(i, new)
            n += 1
        g = self.graph
        if g is not None and any(o is self for o in g.outputs):
            g.outputs = [new if o is self else o for o in g.outputs]
            for st in g.states:
                if st.output is self:
                    st.output = new
            if new.kind == "node" and new.graph is g and sum(o is new for o in g.outputs) == 1 \
                    and not any(o.name == self.name for o in g.outputs if o is not new):
                name = self.name
                g.rename(self, g.fresh_name(name + ".replaced"))
                g.rename(new, name)
        return n

    def __repr__(self):
        return f"{self.ref()}: {self.type}"


class Node:
    __slots__ = ("op", "inputs", "outputs", "attrs", "graph", "__weakref__")

    def __init__(self, op: str, inputs: list[Value], outputs: list[Value], attrs: dict[str, Any]):
        self.op, self.inputs, self.outputs, self.attrs = op, list(inputs), list(outputs), dict(attrs)
        self.graph: Graph | None = None
        for i, v in enumerate(self.inputs):
            v.uses.append((self, i))
        for o in self.outputs:
            o.producer = self

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"node {self.op} has {len(self.outputs)} outputs; use .outputs")
        return self.outputs[0]

    def set_input(self, i: int, v: Value):
        old = self.inputs[i]
        old.uses.remove((self, i))
        self.inputs[i] = v
        v.uses.append((self, i))

    def __repr__(self):
        from .printer import format_node
        return format_node(self)


class Graph:
    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.weights: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.states: list = []  # ir.state.State: declared state (a causal LM's cache), see ir/state.py
        self._names: set[str] = set()
        self._counter = itertools.count()
        self._insert_at: int | None = None  # None = append

    # --- naming -------------------------------------------------------------------------------
    def fresh_name(self, hint: str = "v") -> str:
        hint = re.sub(r"[^A-Za-z0-9_.\-]", "_", hint) or "v"
        name = hint
        while name in self._names:
            name = f"{hint}_{next(self._counter)}"
        return name

    def _claim(self, name: str) -> str:
        if not NAME_RE.fullmatch(name):
            raise ValueError(f"invalid value name {name!r}: use letters, digits, '_', '.', '-'")
        if name in self._names:
            raise ValueError(f"value name {name!r} is already defined in graph @{self.name}")
        self._names.add(name)
        return name

    def _new_value(self, name, type, kind, data=None) -> Value:
        v = Value(self._claim(name), type, kind, data=data)
        v.graph = self
        return v

    # --- building ------------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        v = self._new_value(name, type, "input")
        self.inputs.append(v)
        return v

    def add_weight(self, name: str, data: torch.Tensor | Callable[[], torch.Tensor],
                   type: TensorType | None = None) -> Value:
        if type is None:
            if callable(data):
                raise ValueError(f"weight {name!r}: a lazily loaded weight needs its type")
            type = TensorType.of(data)
        v = self._new_value(name, type, "weight", data=data)
        self.weights[name] = v
        return v

    def add_node(self, op: str, inputs: Iterable[Value], attrs: dict[str, Any] | None = None,
                 out_types: list[TensorType] | None = None, names: list[str] | None = None) -> Node:
        """Create a node at the insertion point; output types are inferred from the op registry."""
        from .registry import get_op
        inputs = list(inputs)
        opdef = get_op(op)
        attrs = opdef.normalize_attrs(attrs or {})
        if out_types is None:
            out_types = opdef.infer([v.type for v in inputs], attrs)
        names = names or [self.fresh_name(op) for _ in out_types]
        outs = [self._new_value(self.fresh_name(n) if n in self._names else n, t, "node")
                for n, t in zip(names, out_types)]
        node = Node(op, inputs, outs, attrs)
        node.graph = self
        if self._insert_at is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self._insert_at, node)
            self._insert_at += 1
        return node

    def op(self, op: str, *inputs: Value, **attrs) -> Value | tuple[Value, ...]:
        """Builder shorthand: `g.op("add", a, b)` returns the output value(s)."""
        node = self.add_node(op, inputs, attrs)
        return node.outputs[0] if len(node.outputs) == 1 else tuple(node.outputs)

    def set_outputs(self, values: Iterable[Value]):
        self.outputs = list(values)

    def declare_state(self, name: str, input: Value, output: Value, kind: str, **attrs):
        """Declare that graph input `input` and graph output `output` are one state (ir/state.py)."""
        from .state import State
        if any(s.name == name for s in self.states):
            raise ValueError(f"state {name!r} is declared twice in graph @{self.name}")
        st = State(name, input, output, kind, dict(attrs))
        self.states.append(st)
        return st

    def state_of(self, v: Value):
        """The declared state whose input or output is `v`, or None."""
        return next((s for s in self.states if s.input is v or s.output is v), None)

    @contextmanager
    def inserting_before(self, node: Node):
        saved, self._insert_at = self._insert_at, self.nodes.index(node)
        try:
            yield
        finally:
            self._insert_at = saved

    @contextmanager
    def inserting_after(self, node: Node):
        saved, self._insert_at = self._insert_at, self.nodes.index(node) + 1
        try:
            yield
        finally:
            self._insert_at = saved

    # --- mutation ------------------------------------------------------------------------------
    def erase(self, node: Node):
        """Remove a node whose outputs are unused."""
        for o in node.outputs:
            if o.uses or any(x is o for x in self.outputs):
                users = ", ".join(repr(u) for u in o.users) or "graph outputs"
                raise ValueError(f"cannot erase {node!r}: %{o.name} is still used by {users}")
        for i, v in enumerate(node.inputs):
            v.uses.remove((node, i))
        self.nodes.remove(node)
        for o in node.outputs:
            self._names.discard(o.name)
        node.graph = None

    def rename(self, value: Value, new_name: str) -> None:
        """Give `value` the name `new_name` (free, or `value`'s own)."""
        if new_name == value.name:
            return
        self._claim(new_name)
        self._names.discard(value.name)
        if value.is_weight:
            self.weights = {(new_name if k == value.name else k): w for k, w in self.weights.items()}
        value.name = new_name

    def remove_weight(self, name: str):
        w = self.weights[name]
        if w.uses or any(x is w for x in self.outputs):
            raise ValueError(f"cannot remove weight @{name}: it is still used")
        del self.weights[name]
        self._names.discard(name)

    def remove_input(self, v: Value):
        if self.state_of(v) is not None:
            raise ValueError(f"cannot remove input %{v.name}: it is declared state")
        if v.uses:
            raise ValueError(f"cannot remove input %{v.name}: it is still used")
        self.inputs.remove(v)
        self._names.discard(v.name)

    def replace_node(self, node: Node, new_values: list[Value]):
        """Route every use of `node`'s outputs to `new_values`, then erase `node`."""
        for old, new in zip(node.outputs, new_values, strict=True):
            old.replace_all_uses_with(new)
        self.erase(node)

    # --- queries -------------------------------------------------------------------------------
    def values(self) -> Iterable[Value]:
        yield from self.inputs
        yield from self.weights.values()
        for n in self.nodes:
            yield from n.outputs

    def nx_graph(self):
        """A networkx DiGraph over nodes (edges producer -> consumer)."""
        import networkx as nx
        g = nx.DiGraph()
        g.add_nodes_from(range(len(self.nodes)))
        index = {id(n): i for i, n in enumerate(self.nodes)}
        for i, n in enumerate(self.nodes):
            for v in n.inputs:
                if v.producer is not None and id(v.producer) in index:
                    g.add_edge(index[id(v.producer)], i)
        return g

    def topo_sort(self):
        """Reorder nodes topologically (stable: keeps the current order where it can)."""
        import networkx as nx
        order = list(nx.lexicographical_topological_sort(self.nx_graph()))
        self.nodes = [self.nodes[i] for i in order]

    def weight_bytes(self) -> int:
        return sum(w.type.nbytes() for w in self.weights.values() if w.type.is_static)

    def op_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.op] = out.get(n.op, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def copy(self) -> Graph:
        """A structural copy; weight tensors are shared, not cloned."""
        from .printer import print_graph
        from .parser import parse_graph
        g = parse_graph(print_graph(self), weights={k: w._data for k, w in self.weights.items()})
        return g

    def __str__(self):
        from .printer import print_graph
        return print_graph(self)
