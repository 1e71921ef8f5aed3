"""The `cpu` target: IR -> TVM Relax (+ slimgraph's own TIR kernels) -> one LLVM shared library.

    relax_lower.py   the "cpu" lowering table: one Relax emitter per IR op (BlockBuilder)
    relax_lower_more.py  the table's vision/audio ops (conv, pools, batch norm, pad, resize, topk, einsum)
    module.py        graph -> Relax IRModule (symbols as tir.Var, weights as parameters)
    kernels.py       hand-scheduled TIR kernels: int4/int8 qlinear and f32 linear GEMV, fused attention,
                     qembedding (only the looked-up rows unpacked)
    target.py        build / load / host, the build cache, the Runner

Nothing here is imported by `import slimgraph`; `tvm` is imported by these modules only.
"""
