"""Declared graph state: values a graph reads at entry and returns, updated, at exit.

A causal LM's cache is state. Each `State` pairs a graph input (the state before the call) with a
graph output (the state after it) and says how it evolves, so that runtimes and codegens never
recognise a cache by its pattern:

| kind     | memory          | how the output is computed                              | roll back n tokens      |
|----------|-----------------|----------------------------------------------------------|-------------------------|
| `append` | O(T)            | `cache_append(input, new){axis}`: the KV cache           | narrow along `axis`     |
| `ring`   | O(window+sinks) | `cache_window(cache_append(input, new)){axis,window,sinks}` | replay from a snapshot |
| `fixed`  | O(1)            | any value of the input's type (a recurrent state)        | replay from a snapshot  |

Text form, after the graph's `return` line:

    state key_0: %past_key_0 -> %present_key_0 append{axis=2}
    state s_3: %state_in_3 -> %state_out_3 fixed

The initial state is zeros of the input's type with the state axis (append, ring) of length 0 and
every other symbolic dim bound from the call (the batch). Attention over a ring state sees the
sinks and the last `window` tokens (StreamingLLM, Xiao et al. 2023, arXiv:2309.17453).
"""
from __future__ import annotations
from dataclasses import dataclass, field

import torch

from .dtypes import to_torch

KINDS = ("append", "ring", "fixed")


class StateError(ValueError):
    pass


@dataclass
class State:
    name: str
    input: object          # ir.graph.Value: a graph input
    output: object         # ir.graph.Value: a graph output
    kind: str
    attrs: dict = field(default_factory=dict)   # append/ring: axis; ring: window, sinks

    def __post_init__(self):
        if self.kind not in KINDS:
            raise StateError(f"state {self.name}: unknown kind {self.kind!r}; valid kinds: {', '.join(KINDS)}")
        need = {"append": ("axis",), "ring": ("axis", "window", "sinks"), "fixed": ()}[self.kind]
        missing = [k for k in need if k not in self.attrs]
        extra = sorted(set(self.attrs) - set(need))
        if missing or extra:
            raise StateError(f"state {self.name} ({self.kind}) takes attributes {list(need)}; "
                             f"missing {missing}, unknown {extra}")

    @property
    def axis(self) -> int | None:
        return self.attrs.get("axis")

    def format(self) -> str:
        from .printer import format_attr_value
        attrs = ", ".join(f"{k}={format_attr_value(v)}" for k, v in self.attrs.items())
        return f"state {self.name}: %{self.input.name} -> %{self.output.name} {self.kind}" + \
            (f"{{{attrs}}}" if attrs else "")


def check_states(graph) -> None:
    """The declarations agree with the graph: inputs/outputs are the graph's, each used once, and the
    output is computed as the kind says. Raises StateError naming the state."""
    seen_in, seen_out = set(), set()
    for s in graph.states:
        where = f"graph @{graph.name}: state {s.name}"
        if not any(v is s.input for v in graph.inputs):
            raise StateError(f"{where}: %{s.input.name} is not a graph input")
        if not any(v is s.output for v in graph.outputs):
            raise StateError(f"{where}: %{s.output.name} is not a graph output")
        if id(s.input) in seen_in or id(s.output) in seen_out:
            raise StateError(f"{where}: its input or output belongs to another state too")
        seen_in.add(id(s.input))
        seen_out.add(id(s.output))
        if s.input.type.dtype != s.output.type.dtype or s.input.type.rank != s.output.type.rank:
            raise StateError(f"{where}: input {s.input.type} and output {s.output.type} differ in dtype or rank")
        p = s.output.producer
        if s.kind == "append":
            ok = p is not None and p.op == "cache_append" and p.inputs[0] is s.input and \
                _axis(p, s.input.type.rank) == s.axis % s.input.type.rank
            if not ok:
                raise StateError(f"{where}: an append state's output must be cache_append(%{s.input.name}, ...)"
                                 f"{{axis={s.axis}}}; it is {p!r}")
        elif s.kind == "ring":
            inner = p.inputs[0].producer if p is not None and p.op == "cache_window" else None
            ok = inner is not None and inner.op == "cache_append" and inner.inputs[0] is s.input and all(
                p.attrs[k] == s.attrs[k] for k in ("window", "sinks"))
            if not ok:
                raise StateError(f"{where}: a ring state's output must be cache_window(cache_append(%{s.input.name},"
                                 f" ...)){{window={s.attrs['window']}, sinks={s.attrs['sinks']}}}; it is {p!r}")
        elif s.input.type.shape != s.output.type.shape:
            raise StateError(f"{where}: a fixed state keeps its shape; {s.input.type} -> {s.output.type}")


def _axis(node, rank):
    return node.attrs["axis"] % rank


def initial_state(graph, s, batch: int, device=None) -> torch.Tensor:
    """Zeros of state `s`'s input type, its state axis empty and the batch dim (input_ids' dim 0) = `batch`."""
    t = s.input.type
    shape = []
    for i, d in enumerate(t.shape):
        if s.axis is not None and i == s.axis % t.rank:
            shape.append(0)
        elif isinstance(d, int):
            shape.append(d)
        elif d == graph.inputs[0].type.shape[0]:
            shape.append(batch)
        else:
            raise StateError(f"state {s.name}: dim {i} ({d}) of {t} is neither the batch nor the state axis; "
                               "cannot size its initial value")
    return torch.zeros(shape, dtype=to_torch(t.dtype), device=device)
