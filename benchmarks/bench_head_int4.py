"""What an int4 head buys on ONNX Runtime and what it costs: SmolLM2 int4 g32 RTN linears with the tied
head float vs int4 g32 (perplexity through the torch target on the shipped eval text; ORT decode tok/s,
32 new tokens, median of 3).

    python benchmarks/bench_head_int4.py
"""
import torch, slimgraph, statistics
from slimgraph import zoo, evaluate
torch.set_num_threads(2)
model, tok = zoo.load("smollm2-135m")
ids = tok("The history of computing is a story of abstraction. " * 4, return_tensors="pt").input_ids[:, :32]
BASE = "canonicalize,quantize-weights{bits=4,group=32},"
P = {"int4 g32, float head": BASE + "fuse-dequant-matmul,merge-sibling-linears,cse,dce",
     "int4 g32 + int4 g32 head": BASE + "quantize-weights{bits=4,group=32,include=[lm_head.weight]},fuse-dequant-matmul,merge-sibling-linears,cse,dce"}
for name, p in P.items():
    t = slimgraph.optimize(model, (ids,), target="torch", pipeline=p)
    ppl = evaluate.perplexity(t, tok, max_tokens=4096)
    o = slimgraph.optimize(model, (ids,), target="onnx", pipeline=p)
    speeds = []
    for _ in range(3):
        o.generate(ids, max_new_tokens=32, eos_token_id=[])
        speeds.append(o.last_generate_stats.decode_tokens_per_s)
    print(f"| {name} | {ppl:.4f} ({100 * (ppl / 13.0840 - 1):+.2f}%) | ORT {statistics.median(speeds):.1f} tok/s |", flush=True)
