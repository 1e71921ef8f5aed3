"""Helpers for pass tests: parse IR text, run a pipeline with numerics checked against the
interpreter on random inputs, return the rewritten graph and the report."""
from __future__ import annotations
import torch

from slimgraph.ir import parse_graph, symbolic, to_torch
from slimgraph.passes import PassManager


def random_inputs(graph, sizes: dict[str, int] | None = None, seed: int = 0) -> list[torch.Tensor]:
    sizes = {"b": 2, "seq": 3, "n": 2, **(sizes or {})}
    gen = torch.Generator().manual_seed(seed)
    out = []
    for v in graph.inputs:
        shape = [symbolic.evaluate(d, sizes) for d in v.type.shape]
        dt = to_torch(v.type.dtype)
        if dt.is_floating_point:
            t = torch.randn(shape, generator=gen)
        else:
            t = torch.randint(0, 4, shape, generator=gen)
        out.append(t.to(dt))
    return out


def random_weights(text: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for every `weight @name: type` line of IR text."""
    g = parse_graph(text)
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn([int(d) for d in w.type.shape], generator=gen).to(to_torch(w.type.dtype))
            for n, w in g.weights.items()}


def run_passes(text: str, pipeline: str, atol: float = 1e-5, sizes=None, weights=None):
    """Parse `text`, run `pipeline` with verify='numerics'; returns (graph, report)."""
    g = parse_graph(text, weights=weights if weights is not None else random_weights(text))
    pm = PassManager(pipeline, verify="numerics", example_inputs=random_inputs(g, sizes),
                     atol=atol, rtol=atol)
    return g, pm.run(g)
