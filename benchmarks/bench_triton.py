"""int4 g128 `qlinear` Triton GEMV/GEMM (codegen/triton/kernels/qlinear.py) vs the memory-bandwidth limit and
cuBLAS bf16 F.linear (issue 19's must-show numbers).

    python benchmarks/bench_triton.py           # GPU: (N,K) = (4096,4096), (11008,4096), (4096,11008); M=1, 16
    python benchmarks/bench_triton.py --smoke   # tiny shapes under the Triton interpreter (automatic without CUDA)

Per row: our kernel's time (median of triton.testing.do_bench on a GPU; of a few perf_counter runs in
smoke mode), the bytes it must move (packed weight + scale/zero table + x + y) over that time as GB/s, that
as a fraction of the copy bandwidth measured in the same run (a torch clone of a 1 GiB tensor: read + write),
bf16 F.linear's time on the dequantized weight (cuBLAS on a GPU), and the speedup over it; plus the max
error vs the op's reference impl relative to the output's max. Smoke-mode times measure the interpreter
(numpy), not a kernel: they only show that the script and kernels run.

Two timings per kernel: launched from Python call by call ("eager": on a GPU this is mostly the host's
launch overhead for kernels of a few microseconds, for cuBLAS too) and replayed from a CUDA graph
("graph": the kernel's own time, what a graph-captured decode step pays); GB/s and % of copy use the graph time.

--sweep: per shape and M, the fastest three of BLOCK_N {64,128,256} x warps {4,8} x waves {1,2,4,8}
(qlinear.Config, graph-timed), to pick the defaults on a GPU.
"""
import argparse
import os
import statistics
import sys
import time

import torch

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--smoke", action="store_true", help="tiny shapes under TRITON_INTERPRET=1 (default without CUDA)")
ap.add_argument("--sweep", action="store_true", help="also time launch configs (BLOCK_N x warps x split-K waves)")
args = ap.parse_args()
SMOKE = args.smoke or not torch.cuda.is_available()
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"   # before the kernel module is imported: triton.jit reads it
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from slimgraph.codegen.triton.kernels import qlinear as QL  # noqa: E402
from slimgraph.ir import quant_format as Q  # noqa: E402
from slimgraph.ir.registry import get_op  # noqa: E402

DEV = torch.device("cpu" if SMOKE else "cuda")
SHAPES = [(256, 256), (512, 256), (256, 512)] if SMOKE else [(4096, 4096), (11008, 4096), (4096, 11008)]
MS = (1, 16)
GROUP = 128


def bench(fn, graph=False):
    """Median seconds of fn(): launched from Python one call at a time (what an eager decode loop pays:
    the host's launch overhead is in it when it exceeds the kernel), or with graph=True replayed from a
    CUDA graph (the kernels' own time, what a graph-captured decode step pays)."""
    if not SMOKE:
        if graph:
            with torch.cuda.stream(torch.cuda.Stream()):
                return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median") / 1e3
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    fn()
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def copy_bandwidth():
    n = (1 << 22) if SMOKE else (1 << 30)
    src = torch.empty(n, dtype=torch.uint8, device=DEV)
    return 2 * n / bench(lambda: src.clone())


def main():
    torch.manual_seed(0)
    bw = copy_bandwidth()
    dev = "interpreter (CPU, numpy): NOT kernel speed" if SMOKE else torch.cuda.get_device_name()
    print(f"# {dev}; torch {torch.__version__}, triton {triton.__version__}; int4 g{GROUP} sym, bf16 x, f16 scales")
    print(f"# copy bandwidth (clone, read+write): {bw / 1e9:.1f} GB/s")
    print("| M | N | K | path | ours us eager | bf16 linear us eager | speedup eager | ours us graph | GB/s graph "
          "| % of copy | bf16 linear us graph | speedup graph | max rel err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ref_impl = get_op("qlinear").impl
    sweeps = []
    for n, k in SHAPES:
        w = torch.randn(n, k)
        q, s, z = Q.quantize_rtn(w, 4, GROUP, True)
        qw, sc, _ = Q.store(q, s, z, 4, True, torch.float16)
        packed, table = (t.to(DEV) for t in QL.pack_weight(qw, sc, None, 4, GROUP))
        wf = Q.dequantize(qw, sc, None, 4, GROUP, torch.bfloat16).to(DEV)
        for m in MS:
            x = (torch.randn(m, k) * 0.1).to(torch.bfloat16).to(DEV)
            ours = bench(lambda: QL.run_packed(x, packed, table, None, 4))
            lin = bench(lambda: F.linear(x, wf))
            ours_g = bench(lambda: QL.run_packed(x, packed, table, None, 4), graph=True)
            lin_g = bench(lambda: F.linear(x, wf), graph=True)
            nbytes = packed.numel() + table.numel() * table.element_size() + (x.numel() + m * n) * 2
            y = QL.run_packed(x, packed, table, None, 4).float().cpu()
            ref = ref_impl(x.cpu().float(), qw, sc, bits=4, group=GROUP)
            err = ((y - ref).abs().max() / ref.abs().max()).item()
            path = "gemv" if m <= QL.GEMV_MAX_M else "gemm"
            print(f"| {m} | {n} | {k} | {path} | {ours * 1e6:.1f} | {lin * 1e6:.1f} | {lin / ours:.2f}x | "
                  f"{ours_g * 1e6:.1f} | {nbytes / ours_g / 1e9:.0f} | {100 * nbytes / ours_g / bw:.1f}% | "
                  f"{lin_g * 1e6:.1f} | {lin_g / ours_g:.2f}x | {err:.1e} |", flush=True)
            if args.sweep:
                timed = sweep(x, packed, table)
                sweeps.append((path, timed))
                best = ", ".join(f"{c.block_n}/{c.num_warps}/{c.waves}: {t * 1e6:.1f} us "
                                 f"({100 * nbytes / t / bw:.0f}%)" for t, c in timed[:3])
                print(f"# sweep M={m} N={n} K={k} (BLOCK_N/warps/waves): {best}", flush=True)
    for path in ("gemv", "gemm"):   # the config whose times are nearest each shape's best (geometric mean)
        runs = [dict((c, t / timed[0][0]) for t, c in timed) for p, timed in sweeps if p == path]
        if runs:
            score = {c: statistics.geometric_mean(r[c] for r in runs) for c in runs[0]}
            c = min(score, key=score.get)
            print(f"# best {path} config over the shapes: BLOCK_N {c.block_n}, warps {c.num_warps}, waves {c.waves} "
                  f"({score[c]:.2f}x the per-shape best)\nBEST {path} {c.block_n},{c.num_warps},{c.waves}")


def sweep(x, packed, table):
    """[(seconds, Config)] fastest first."""
    blocks = (64, 128) if SMOKE else (64, 128, 256)
    configs = [QL.Config(b, w, v) for b in blocks for w in (4, 8) for v in ((2,) if SMOKE else (1, 2, 4, 8))]
    return sorted(((bench(lambda: QL.run_packed(x, packed, table, None, 4, config=c), graph=True), c)
                   for c in configs),
                  key=lambda tc: tc[0])


if __name__ == "__main__":
    sys.exit(main())
