"""The `cpu` target's GEMV kernels out of cache, as a fraction of one core's read bandwidth (issue 20's goal:
>= 70% of the machine's measured read bandwidth).

    python benchmarks/bench_cpu_kernels.py [--spread-mb 96] [--rounds 3]

For SmolLM2-135M's decode shapes (M = 1), each TIR kernel of codegen/tvm/kernels.py is compiled alone and run
over enough different weight tensors in turn to fill `--spread-mb` (well above the last-level cache), so every
call reads its weights from memory, not from cache:
- W4A8 panel GEMV (int4 g64 codes in 16-row panels, int8 activation codes; AVX-512 VNNI hosts only),
- weight-only int4 g64 lookup GEMV (f32 activations; AVX-512 hosts),
- the int8 head GEMV (49152 x 576, one group per row): f32 activations, and W8A8 on panels (the W4A8 pipeline).
Bandwidth: weight bytes (codes + scales + zero points) / time. The reference is `torch.sum` over a 64 MB f32
tensor on one thread in the same process (a plain streaming read). Run pinned to one core
(`taskset -c 0 ... `, TVM_NUM_THREADS=1 is set here); prints markdown for benchmarks/RESULTS.md.
"""
import argparse
import os
import platform
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np
import torch

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]   # q/k/v merged, o, gate/up merged, down


def read_bandwidth() -> float:
    a = torch.ones(64 * 2**20 // 4)
    for _ in range(3):
        a.sum()
    t = time.perf_counter()
    for _ in range(20):
        a.sum()
    return 64 * 2**20 * 20 / (time.perf_counter() - t) / 1e9


def timed(fn, weights, rest_before, rest_after, rounds):
    """Best-of-rounds seconds per call, cycling through the weight copies."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(len(weights) * 4):
            fn(*rest_before, *weights[i % len(weights)], *rest_after)
        best = min(best, (time.perf_counter() - t) / (len(weights) * 4))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spread-mb", type=float, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", default="1", help="comma-separated M (activation rows: 1 = a decode step, k = a "
                    "verify of k tokens); the W4A8 and int4 lookup kernels are timed at each, the int8 head at M = 1")
    args = ap.parse_args()
    rows_m = [int(v) for v in args.rows.split(",")]
    if min(rows_m) < 1:
        ap.error(f"--rows {args.rows}: every M must be >= 1")
    torch.set_num_threads(1)
    import tvm
    from slimgraph.codegen.tvm import kernels as K
    from slimgraph.codegen.tvm.target import _target_spec
    target = tvm.target.Target(_target_spec())

    def build(f):
        return tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=target)["main"]

    def arr(a):
        return tvm.runtime.tensor(a)
    rng = np.random.default_rng(0)
    bw = read_bandwidth()
    print(f"machine: {platform.machine()}, {tvm.target.codegen.llvm_get_system_cpu()}, 1 thread; tvm {tvm.__version__}; "
          f"load average {os.getloadavg()[0]:.1f}; one core's read bandwidth (torch.sum, 64 MB): {bw:.1f} GB/s\n")
    print("| kernel | n x k | us per call | weight GB/s | of read bandwidth |\n|---|---|---|---|---|")
    g = 64
    rows = []
    for n, k in SHAPES:
        ng = k // g
        copies = max(2, int(args.spread_mb * 2**20 / (n * k // 2)))
        x = arr(rng.standard_normal((1, k)).astype("float32"))
        y = arr(np.zeros((1, n), "float32"))
        if K.has_vnni():
            fn = build(K.make_vnni_panel_gemv(n, k, g, 4, "uint8"))
            ws = [(arr(rng.integers(0, 256, (n // 16, k // 8, 64)).astype("uint8")),
                   arr(rng.random((n // 16, ng, 16)).astype("float32")),
                   arr(rng.integers(0, 16, (n // 16, ng, 16)).astype("uint8"))) for _ in range(copies)]
            for m in rows_m:
                xq = (arr(rng.integers(-127, 128, (m, k)).astype("int8")),
                      arr(np.concatenate([rng.random((m, ng)), rng.integers(-500, 500, (m, ng))], 1).astype("float32")))
                rows.append(("W4A8 panels" + (f", M = {m}" if m > 1 else ""), n, k,
                             timed(fn, ws, xq, (arr(np.zeros((1, m, n), "float32")),), args.rounds),
                             n * k // 2 + n * ng * 5))
        if K.has_avx512():
            fn = build(K.make_int4_lookup_gemv(n, k, g, "float32", "uint8"))
            ws = [(arr(rng.integers(0, 256, (n, k // 2)).astype("uint8")), arr(rng.random((n, ng)).astype("float32")),
                   arr(rng.integers(0, 16, (n, ng)).astype("uint8"))) for _ in range(copies)]
            for m in rows_m:
                rows.append(("int4 lookup (f32 x)" + (f", M = {m}" if m > 1 else ""), n, k,
                             timed(fn, ws, (arr(rng.standard_normal((m, k)).astype("float32")),),
                                   (arr(np.zeros((m, n), "float32")),), args.rounds), n * k // 2 + n * ng * 5))
    n, k = 49152, 576
    fn = build(K.make_int8_gemv(n, k, k, "float32", None))
    ws = [(arr(rng.integers(-127, 128, (n, k)).astype("int8")), arr(rng.random((n, 1)).astype("float32")),
           arr(np.zeros((1, 1), "int8"))) for _ in range(max(2, int(args.spread_mb * 2**20 / (n * k))))]
    x = arr(rng.standard_normal((1, k)).astype("float32"))
    rows.append(("int8 head (f32 x)", n, k, timed(fn, ws, (x,), (arr(np.zeros((1, n), "float32")),), args.rounds),
                 n * k + n * 4))
    if K.has_vnni():
        fn = build(K.make_vnni_panel_gemv(n, k, k, 8, None))
        ws = [(arr(rng.integers(0, 256, (n // 16, k // 4, 64)).astype("uint8")),
               arr(rng.random((n // 16, 1, 16)).astype("float32")), arr(np.zeros((1, 1, 1), "float32")))
              for _ in range(max(2, int(args.spread_mb * 2**20 / (n * k))))]
        xq = (arr(rng.integers(-127, 128, (1, k)).astype("int8")), arr(np.array([[0.5, 120.0]], "float32")))
        rows.append(("int8 head W8A8 panels", n, k, timed(fn, ws, xq, (arr(np.zeros((1, 1, n), "float32")),),
                                                          args.rounds), n * k + n * 4))
    for name, n, k, s, nbytes in rows:
        print(f"| {name} | {n} x {k} | {s * 1e6:.1f} | {nbytes / s / 1e9:.1f} | {nbytes / s / 1e9 / bw:.0%} |")


if __name__ == "__main__":
    main()
