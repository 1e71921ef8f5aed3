"""all-MiniLM-L6-v2 latency on the `c` target (generated C + kernel library, gcc -O2, OpenMP) next to
transformers eager and slimgraph's `torch` target, side by side in one process.

    python benchmarks/bench_c_target.py [--seq 128] [--repeat 5] [--threads 2]

Batch 1, a `--seq`-token input. Wall time and process CPU time are both reported (CPU time, with
`--threads 1`, is the steadier figure on a shared machine). The runtimes alternate `--repeat` rounds (each round: 3 calls per
runtime, the best kept) and the median per runtime is reported, so noise from other jobs on a shared
machine hits all alike. Also reports the c target's build time (codegen + gcc) and its arena and
weights sizes. Prints a markdown table for benchmarks/RESULTS.md.
"""
import argparse
import os
import platform
import statistics
import subprocess
import time

import torch

import slimgraph
from slimgraph import zoo


def best_of(fn, n=3):
    """(best wall seconds, best process CPU seconds) of n calls. With --threads 1 the CPU time is the
    steadier figure on a loaded machine: it does not count the time other jobs held the core."""
    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    model, tok = zoo.load("minilm-l6")
    text = "slimgraph compiles neural networks to C for embedded hosts. " * 40
    enc = tok([text], truncation=True, max_length=args.seq, padding="max_length", return_tensors="pt")
    t0 = time.perf_counter()
    c = slimgraph.optimize(model, (), example_kwargs=dict(enc), target="c",
                           pipeline=f"bind-shapes{{dims=[batch=1,seq={args.seq}]}},canonicalize,cse,dce")
    build_s = time.perf_counter() - t0
    tt = slimgraph.optimize(model, (), example_kwargs=dict(enc), target="torch")
    with torch.inference_mode():
        ref = model(**enc).last_hidden_state
    err = (c(**enc).last_hidden_state - ref).abs().max().item()

    runs = {"transformers eager fp32": lambda: model(**enc), "slimgraph torch fp32": lambda: tt(**enc),
            "slimgraph c fp32 (gcc -O2)": lambda: c(**enc)}
    times = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    with torch.inference_mode():
        for fn in runs.values():
            fn()
        for _ in range(args.repeat):
            for k, fn in runs.items():
                w, c_ = best_of(fn)
                times[k].append(w)
                cpu[k].append(c_)
    base = statistics.median(times["transformers eager fp32"])
    cbase = statistics.median(cpu["transformers eager fp32"])
    cc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.machine())
    print(f"\nall-MiniLM-L6-v2, batch 1, seq {args.seq}, {args.threads} threads; {cpu_model}; torch {torch.__version__}; "
          f"{cc}")
    print(f"c target: build {build_s:.1f} s (import + passes + codegen + gcc), arena "
          f"{c.runner.products.meta['arena_bytes'] / 2**20:.1f} MiB, weights.bin "
          f"{c.runner.products.meta['weights_bytes'] / 2**20:.1f} MiB, max |c - transformers| = {err:.1e}\n")
    print("| runtime | wall ms (median) | vs eager | CPU ms (median) | vs eager |\n|---|---|---|---|---|")
    for k, ts in times.items():
        m, c_ = statistics.median(ts), statistics.median(cpu[k])
        print(f"| {k} | {m * 1e3:.1f} | {base / m:.2f}x | {c_ * 1e3:.1f} | {cbase / c_:.2f}x |")


if __name__ == "__main__":
    main()
