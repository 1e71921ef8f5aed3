"""The `cpu` target's sliding-window ring, in place vs copied per step, beside full attention (issue 17).

    taskset -c 0 python benchmarks/bench_cpu_ring.py [--contexts 512,2048,8192] [--steps 15] [--threads 1] [--int4]

SmolLM2-135M, W4A8 (int4 g64 weights, int8 head, `quantize-activations`; `--int4`: weight-only int4 instead),
`sparsify-attention{window=256,sinks=4}`. Three builds in one process, steps interleaved so that load changes
hit all alike: full attention (the KV cache appended in place), the ring kept in place (codegen/tvm/module.py:
the append writes at the ring's first row + its length, attention reads the ring in its buffer, `ring_slide`
moves the 4 sink rows), and the ring as it was lowered before (`inplace_states` leaves rings out: cache_append
concatenates a new ring + row, cache_window gathers the next ring: two copies per state per step). The states
are filled with random K/V of their size at each context (a step's time does not depend on the values; see
bench_attention.fill_states). Prints per context the median step time of each build and the ratios.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_attention as B  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--contexts", default="512,2048,8192")
ap.add_argument("--steps", type=int, default=15)
ap.add_argument("--warm", type=int, default=3)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--int4", action="store_true", help="weight-only int4 instead of W4A8")
args = ap.parse_args()
torch.set_num_threads(args.threads)
os.environ["TVM_NUM_THREADS"] = str(args.threads)

from slimgraph import zoo  # noqa: E402
import slimgraph.codegen.tvm.module as M  # noqa: E402

extra = B.Q4 + ("" if args.int4 else ",quantize-activations")
full = B.FULL.replace("canonicalize,", f"canonicalize,{extra},")
ring = B.RING.replace("canonicalize,", f"canonicalize,{extra},")
print(f"cpu ring: {'int4' if args.int4 else 'W4A8'}, {args.threads} thread(s), torch {torch.__version__}, "
      f"load {os.getloadavg()}", flush=True)
model, _ = zoo.load("smollm2-135m")
comp = {"full": B.compile_(model, full, "cpu"), "ring in place": B.compile_(model, ring, "cpu")}
inplace = M.inplace_states
with B.cpu_codegen_as("ring-copied", M, "inplace_states", lambda g: [k for k in inplace(g) if k.window is None]):
    comp["ring copied"] = B.compile_(model, ring, "cpu")    # the lowering before: rings left out of the in-place states
assert any(k.window is not None for k in comp["ring in place"].runner.kv)
assert not any(k.window is not None for k in comp["ring copied"].runner.kv)

tok = torch.tensor([[42]])
for context in [int(c) for c in args.contexts.split(",")]:
    decs = {}
    for name, c in comp.items():
        dec = c.decoder()
        B.fill_states(c, dec, context, torch.Generator().manual_seed(0))
        decs[name] = dec
    times = {n: [] for n in decs}
    with torch.inference_mode():
        for i in range(args.warm + args.steps):
            for name, dec in decs.items():
                t0 = time.perf_counter()
                dec.step(tok)
                if i >= args.warm:
                    times[name].append(time.perf_counter() - t0)
    med = {n: sorted(t)[len(t) // 2] * 1e3 for n, t in times.items()}
    print(f"context {context:5d}: full {med['full']:.2f} ms, ring in place {med['ring in place']:.2f} ms, ring copied "
          f"{med['ring copied']:.2f} ms | in place vs copied {med['ring copied'] / med['ring in place']:.2f}x, "
          f"full / in place {med['full'] / med['ring in place']:.2f}x, full / copied {med['full'] / med['ring copied']:.2f}x"
          f" (load {os.getloadavg()[0]:.1f})", flush=True)
