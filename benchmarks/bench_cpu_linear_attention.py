"""The `cpu` target's fused linear-attention kernel vs the same op as Relax ops, side by side (issue 17).

    taskset -c 0 python benchmarks/bench_cpu_linear_attention.py [--threads 1] [--context 8192] [--prefill 128,1024]

SmolLM2-135M with `linearize-attention{feature_map=hedgehog,window=64,sinks=4}` (the LoLCATs hybrid) and with
`window=0` (pure linear attention), W4A8 (int4 g64 weights, int8 head, `quantize-activations`). Two builds of each
in one process: `linear_attention` as one TIR kernel (codegen/tvm/linear_attention_kernel.py) and as the ~40 Relax
ops it was lowered to before (`fused_ok` forced False; another cache key). Prints, per build: a decode step at
`--context` (states filled with random values of their size, bench_attention.fill_states; median of interleaved
steps), prefill times of real eval text, and the largest logit difference between the two builds. The feature
maps are the untrained identity ones (speed does not depend on training); such a model's activations are far
from the source's, and W4A8 rounds them to int8 per row, so the two builds' logits differ by rounding flips
amplified through 30 layers (~3 in both against the reference target; in fp32 both agree with it to 1.6e-4:
tests/codegen/tvm/test_cpu_linear_attention.py and the linearize tests check the kernel op by op and per model).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_attention as B  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--context", type=int, default=8192)
ap.add_argument("--prefill", default="128,1024")
ap.add_argument("--steps", type=int, default=15)
args = ap.parse_args()
torch.set_num_threads(args.threads)
os.environ["TVM_NUM_THREADS"] = str(args.threads)

from slimgraph import evaluate, zoo  # noqa: E402
import slimgraph.codegen.tvm.linear_attention_kernel as K  # noqa: E402

W4A8 = B.Q4 + ",quantize-activations"
print(f"cpu linear attention, fused kernel vs Relax ops: W4A8, {args.threads} thread(s), torch {torch.__version__}, "
      f"load {os.getloadavg()}", flush=True)
model, tok = zoo.load("smollm2-135m")
ids = tok(evaluate.load_text("eval"), return_tensors="pt").input_ids
for label, pipe in B.LINEAR.items():
    pipe = pipe.replace("canonicalize,", f"canonicalize,{W4A8},")
    comp = {"fused": B.compile_(model, pipe, "cpu")}
    with B.cpu_codegen_as("relax-linear-attention", K, "fused_ok", lambda node: False):
        comp["relax ops"] = B.compile_(model, pipe, "cpu")
    decs = {}
    for name, c in comp.items():
        dec = c.decoder()
        B.fill_states(c, dec, args.context, torch.Generator().manual_seed(0))
        decs[name] = dec
    times = {n: [] for n in decs}
    with torch.inference_mode():
        for i in range(3 + args.steps):
            for name, dec in decs.items():
                t0 = time.perf_counter()
                dec.step(torch.tensor([[42]]))
                if i >= 3:
                    times[name].append(time.perf_counter() - t0)
    med = {n: sorted(t)[len(t) // 2] * 1e3 for n, t in times.items()}
    print(f"{label:22s} decode step at {args.context}: fused {med['fused']:.2f} ms, relax ops {med['relax ops']:.2f} ms "
          f"-> {med['relax ops'] / med['fused']:.2f}x (load {os.getloadavg()[0]:.1f})", flush=True)
    for n in [int(x) for x in args.prefill.split(",")]:
        took, logits = {}, {}
        with torch.inference_mode():
            for name, c in comp.items():
                t0 = time.perf_counter()
                logits[name] = c.decoder().prefill(ids[:, :n])["logits"]
                took[name] = time.perf_counter() - t0
        diff = float((logits["fused"] - logits["relax ops"]).abs().max())
        print(f"{'':22s} prefill {n:5d} tokens: fused {took['fused'] * 1e3:.0f} ms, relax ops "
              f"{took['relax ops'] * 1e3:.0f} ms -> {took['relax ops'] / took['fused']:.2f}x; max |logit diff| {diff:.1e}",
              flush=True)
