"""bind-shapes: give every symbolic dim a number (static-shape specialization, ir/specialize.py).

    bind-shapes{dims=[batch=1,seq=128]}        # %input_ids: i64[batch,seq] -> i64[1,128]

Ahead-of-time codegens that cannot size buffers at run time (the `c` target: C sources for
embedded/FPGA-like hosts) need it; run it first, then the cleanup passes fold what became constant:
`bind-shapes{dims=[batch=1,seq=128]},canonicalize,cse,dce`. Every symbol the graph uses must be bound
(a causal LM's `past` too: `past=0` compiles a forward without a cache). The specialized graph accepts
only inputs of exactly those shapes.
"""
from __future__ import annotations
from dataclasses import dataclass, field

from ..ir.causal_lm import check_context
from ..ir.specialize import free_dims, specialize
from .base import Pass, PassError, PassResult, register_pass


def parse_dims(items) -> dict[str, int]:
    """["batch=1", "seq=128"] -> {"batch": 1, "seq": 128}; PassError on another form."""
    out = {}
    for it in items:
        name, eq, val = str(it).partition("=")
        try:
            out[name.strip()] = int(val)
        except ValueError:
            eq = ""
        if not eq or not name.strip():
            raise PassError(f"bind-shapes: dims entries are name=int, e.g. dims=[batch=1,seq=128]; got {it!r}")
    return out


@register_pass("bind-shapes")
@dataclass
class BindShapes(Pass):
    """Substitute symbolic dims with the given numbers (in every type and dim attribute)."""
    dims: list[str] = field(default_factory=list)

    def validate(self):
        parse_dims(self.dims)

    def run(self, graph) -> PassResult:
        env = parse_dims(self.dims)
        before = free_dims(graph)
        if "ctx" in env and "ctx" not in before:
            raise PassError(f"bind-shapes: graph @{graph.name} has no dim ctx (its dims are "
                            f"{', '.join(sorted(before)) or 'all static'}): sparsify-attention and linearize-attention "
                            f"make it, the attention mask's columns; bind it in a second bind-shapes after that "
                            f"pass, to past + seq (e.g. ...,sparsify-attention{{...}},bind-shapes{{dims=[ctx=16]}} "
                            f"after bind-shapes{{dims=[batch=1,past=0,seq=16]}})")
        try:
            check_context(graph, env)
        except ValueError as e:
            raise PassError(f"bind-shapes: {e}") from None
        try:
            specialize(graph, env)
        except ValueError as e:
            raise PassError(f"bind-shapes: {e}; write e.g. bind-shapes{{dims=[{','.join(f'{s}=1' for s in sorted(before))}]}}") from None
        return PassResult(bool(before), {"bound": {k: env[k] for k in sorted(env)}})
