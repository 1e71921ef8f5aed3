"""Small IR subgraphs that frontends build from primitive ops, written once.

Each helper takes the builder's `op(name, *inputs, **attrs) -> Value` (a `Graph.op`, or a
frontend's `cx.op` / `imp.op`) and returns the value it built; the arithmetic matches the
reference helpers in ir/opset/nn.py (`causal_keep`, `repeat_kv`).

    keep = causal_keep(g.op, q_len, kv_len, diagonal=past)   # bool [q_len, kv_len]
    k = repeat_heads(g.op, k, 4)                             # [b, hk, s, d] -> [b, 4*hk, s, d]
"""
from __future__ import annotations


def causal_keep(op, q_len, kv_len, diagonal=0):
    """bool [q_len, kv_len]: query i may see key j iff j <= i + diagonal. `diagonal` = past length
    (kv_len - q_len) aligns the diagonal to the end, as the IR `attention{causal}` does; 0 is
    torch's top-left `is_causal`. Dims may be symbolic."""
    return op("tril", op("full", shape=[q_len, kv_len], value=True, dtype="bool"), diagonal=diagonal)


def repeat_heads(op, x, reps: int):
    """GQA: [b, hk, s, d] -> [b, hk*reps, s, d], each head repeated `reps` times in place."""
    if reps == 1:
        return x
    b, h, s, d = x.type.shape
    x = op("expand", op("unsqueeze", x, dim=2), shape=[b, h, reps, s, d])
    return op("reshape", x, shape=[b, h * reps, s, d])
