"""Decode speed as the context grows: SmolLM2 int4 g64 + int8 head on the torch target vs transformers eager
fp32, 1024 greedy tokens after a 32-token prompt; tokens/s over 128-token windows starting every 256 tokens.

    python benchmarks/bench_long_decode.py
"""
import torch, slimgraph, time
from slimgraph import zoo
from slimgraph.generate import TokenClock
torch.set_num_threads(2)
model, tok = zoo.load("smollm2-135m")
ids = tok("The history of computing is a story of abstraction. " * 4, return_tensors="pt").input_ids[:, :32]
P = "canonicalize,quantize-weights{bits=4,group=64},quantize-weights{bits=8,group=0,include=[lm_head.weight]},fuse-dequant-matmul,merge-sibling-linears,cse,dce"
fast = slimgraph.optimize(model, (ids,), target="torch", pipeline=P)
N = 1024
def rates(times):
    d = [b - a for a, b in zip(times[1:-1], times[2:-1])]
    return [round(len(d[i:i+128]) / sum(d[i:i+128]), 1) for i in range(0, len(d), 256)]
with torch.inference_mode():
    c = TokenClock(); fast.generate(ids, max_new_tokens=N, eos_token_id=None, streamer=c); print("sg tok/s by position (every 256)", rates(c.times))
    c = TokenClock(); model.generate(ids, max_new_tokens=N, min_new_tokens=N, do_sample=False, streamer=c); print("hf tok/s by position", rates(c.times))
