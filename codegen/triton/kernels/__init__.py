"""Hand-written Triton kernels for IR ops, registered in the "triton" lowering table.

One module per kernel family; each launcher has the op's reference-impl signature
`fn(*inputs, **attrs) -> Tensor` (like codegen/torch_kernels.py) and falls back to the reference
impl, with a warning naming the op and the reason, for inputs it does not cover:

- `qlinear`    int4/int8 weight-only quantized linear: GEMV (split-K) and GEMM (tl.dot) paths
- `norms`      rms_norm, layer_norm (row-wise over the last axes)
- `rope`       rotary embedding, rotate-half form
- `attention`  flash-style prefill and split-KV decode, GQA, causal / window+sinks / mask
- `aot`        compile the variants a launcher launches for a GPU arch without a GPU (tests, AOT builds)

Kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter (`TRITON_INTERPRET=1`,
set before these modules are imported: triton decides at `@triton.jit` time).
Importing `slimgraph` never imports triton; importing a module here does (see `_common.triton`).
"""
