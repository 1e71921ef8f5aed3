"""Memory of the `cpu` target over a long decode and over prompts of many lengths (SmolLM2-135M, int4 g64).

    python benchmarks/bench_cpu_memory.py [--tokens 1024] [--lengths 16:400:6]

1. decode: a 10-token prompt, then `--tokens` single steps through the decoder runtime; the process RSS and the
   decode speed every 128 tokens. The KV cache is appended in place (codegen/tvm/module.py inplace_states), so
   the RSS should stay flat but for the cache itself (60 states x 3 heads x 64 x 4 bytes = 46 KB per token).
2. prefill: one prefill per prompt length in `--lengths` (start:stop:step); the RSS every 16 prompts. With
   TVM's pooled allocator every freed storage was kept for reuse at its exact size, so each new length added
   its intermediates for good; the runner uses the naive allocator.
Prints markdown for benchmarks/RESULTS.md.
"""
import argparse
import os
import platform
import time

import torch

import slimgraph
from slimgraph import zoo
from slimgraph.decoder import Decoder

PIPE = ("canonicalize,quantize-weights{bits=4,group=64},quantize-weights{bits=8,group=0,include=[lm_head.weight]},"
        "fuse-dequant-matmul,merge-sibling-linears,cse,dce")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--lengths", default="16:400:6")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import tvm
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; threads {args.threads}; torch {torch.__version__}, "
          f"tvm {tvm.__version__}; load average {os.getloadavg()[0]:.1f}")
    model, tok = zoo.load("smollm2-135m")
    ids = torch.randint(0, 40000, (1, 400), generator=torch.Generator().manual_seed(0))
    m = slimgraph.optimize(model, (ids[:, :8],), target="cpu", pipeline=PIPE)
    dec = Decoder(m)
    print(f"\n| decoded tokens | RSS MB | tok/s (last 128) |\n|---|---|---|\n| 0 (after optimize) | {rss_mb():.0f} | |")
    out = dec.prefill(ids[:, :10])
    t0 = time.perf_counter()
    for i in range(1, args.tokens + 1):
        out = dec.step(out["logits"][:, -1].argmax(-1))
        if i % 128 == 0:
            print(f"| {i} | {rss_mb():.0f} | {128 / (time.perf_counter() - t0):.1f} |", flush=True)
            t0 = time.perf_counter()
    del dec, out
    start, stop, step = (int(x) for x in args.lengths.split(":"))
    dec = Decoder(m)
    print(f"\n| prompts prefilled (lengths {start}..{stop - 1} step {step}) | RSS MB |\n|---|---|")
    for j, n in enumerate(range(start, stop, step), 1):
        dec.prefill(ids[:, :n])
        if j % 16 == 0:
            print(f"| {j} (last length {n}) | {rss_mb():.0f} |", flush=True)


if __name__ == "__main__":
    main()
