"""Cost of the input check a compiled model runs at every call (slimgraph.signature.InputCheck), for a
SmolLM2-shaped decode step: input_ids i64[batch,1] and 60 KV-cache tensors f32[batch,3,past,64].

    python benchmarks/bench_input_check.py
"""
import time

import torch

from slimgraph import ir
from slimgraph.ir.types import TensorType
from slimgraph.signature import InputCheck


def main(n_kv: int = 60, calls: int = 2000):
    g = ir.Graph()
    g.add_input("input_ids", TensorType("i64", ("batch", 1)))
    for i in range(n_kv):
        g.add_input(f"past_{i}", TensorType("f32", ("batch", 3, "past", 64)))
    tensors = [torch.ones(1, 1, dtype=torch.int64)] + [torch.zeros(1, 3, 40, 64) for _ in range(n_kv)]
    check = InputCheck(g.inputs)
    check(tensors)
    t0 = time.perf_counter()
    for _ in range(calls):
        check(tensors)
    per_call = (time.perf_counter() - t0) / calls
    print(f"{len(tensors)} inputs: {per_call * 1e6:.1f} us per call, {per_call * 1e6 / len(tensors):.2f} us per input")


if __name__ == "__main__":
    main()
