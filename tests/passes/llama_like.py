"""A Llama-shaped IR graph built the way torch.export + the frontend spell it (bf16 RMSNorm
chains with casts, silu as x*sigmoid(x), no-op reshapes/casts), for canonicalize tests."""
from __future__ import annotations
import torch

from slimgraph.ir import Graph, TensorType


def rms_chain(g, x, w, eps=1e-5):
    xf = g.op("cast", x, dtype="f32")
    ms = g.op("mean", g.op("pow", xf, g.op("constant", value=2.0, dtype="f32")), dims=[-1], keepdim=True)
    h = g.op("mul", xf, g.op("rsqrt", g.op("add", ms, g.op("constant", value=eps, dtype="f32"))))
    return g.op("mul", w, g.op("cast", h, dtype=x.type.dtype))


def llama_like(layers: int = 2, hidden: int = 16, heads: int = 2, dtype: str = "bf16",
               seed: int = 0) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    tdt = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype]

    def weight(name, *shape):
        return g.add_weight(name, (torch.randn(shape, generator=gen) * 0.2).to(tdt))

    g = Graph("llama")
    x = g.add_input("x", TensorType(dtype, (1, "seq", hidden)))
    hd = hidden // heads
    for i in range(layers):
        h = rms_chain(g, x, weight(f"l{i}.ln1", hidden))
        q, k, v = (g.op("linear", h, weight(f"l{i}.{n}", hidden, hidden)) for n in "qkv")
        q, k, v = (g.op("permute", g.op("reshape", t, shape=[1, "seq", heads, hd]), dims=[0, 2, 1, 3])
                   for t in (q, k, v))
        a = g.op("attention", q, k, v, causal=True)
        a = g.op("reshape", g.op("permute", a, dims=[0, 2, 1, 3]), shape=[1, "seq", hidden])
        a = g.op("reshape", a, shape=[1, "seq", hidden])  # no-op reshape, as export emits
        x = g.op("add", x, g.op("linear", a, weight(f"l{i}.o", hidden, hidden)))
        h = rms_chain(g, x, weight(f"l{i}.ln2", hidden))
        gate = g.op("linear", h, weight(f"l{i}.gate", 2 * hidden, hidden))
        act = g.op("mul", gate, g.op("sigmoid", gate))
        up = g.op("linear", h, weight(f"l{i}.up", 2 * hidden, hidden))
        x = g.op("add", x, g.op("linear", g.op("mul", act, up), weight(f"l{i}.down", hidden, 2 * hidden)))
    g.set_outputs([rms_chain(g, x, weight("norm", hidden))])
    return g
