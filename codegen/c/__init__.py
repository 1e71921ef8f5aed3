"""The `c` target: slimgraph IR -> plain C99 sources, a weights file and a Makefile, for hosts that only
have a C toolchain (embedded CPUs, FPGA HLS flows that take C).

    products = build(graph)              # model.c, model.h, slimgraph_kernels.c/.h, main.c, Makefile,
                                         # README.txt, weights.bin
    runner = load(graph, products)       # gcc -> libslimgraph_model.so in a cache dir, called via ctypes
    slimgraph.optimize(model, target="c", pipeline="bind-shapes{dims=[batch=1,seq=128]},canonicalize,cse,dce")

Design decision: this codegen emits C itself, from slimgraph's IR, through the `c` lowering table
(codegen/lowering.py; codegen/c/lower_*.py): each lowering returns the C statements of one node, mostly a
call into a hand-written kernel library shipped as package data (codegen/c/runtime/), with every shape
a literal resolved at build time (the c target is static-shape only: see `bind-shapes`). The output
must build with plain gcc and run with neither Python nor TVM. TVM (the `cpu` target's compiler) has no
way to do that any more: its C runtime and microTVM were phased out of the unity line (apache/tvm#17554,
"[Refactor] Phase out microTVM"; the last CRT leftovers went in #19622), and TVM 0.27's own `c` codegen,
checked with apache-tvm 0.27.0.post1 (`tvm.compile(prim_func, target="c")`), emits C that includes
tvm/ffi/c_api.h and tvm/runtime/c_backend_api.h and checks its arguments through TVMFFI* calls, so it
links against TVM's runtime library. The loop nests inside such generated functions (scheduled TIR
kernels) could still become a later source for this kernel library, once stripped of that calling
convention.

Memory: one arena for every intermediate value, planned by liveness at build time (codegen/c/emit.py);
weights and folded constants in weights.bin at 64-byte aligned offsets; no allocation at run time.
Numerics: f32 compute (kernels accumulate dot products in 8 f32 lanes, norms in f64); int8/int4 packed
weights stay packed (ir/quant_format.py layout) and are dequantized per block inside `qlinear`.
"""
from .emit import CTargetError, Unsupported
from .target import build, host, load

__all__ = ["build", "load", "host", "CTargetError", "Unsupported"]
