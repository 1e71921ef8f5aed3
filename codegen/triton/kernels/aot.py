"""Compile the Triton kernels a launcher would launch, for a chosen GPU architecture, without a GPU.

    from slimgraph.codegen.triton.kernels import _common, aot, qlinear
    calls = aot.record(lambda: qlinear.qlinear(x, qw, scales, bits=4, group=128))   # CPU tensors are fine
    for kernel, args, constexprs in calls:
        aot.compile_call(kernel, args, constexprs, arch=90)   # -> triton CompiledKernel (ptx, cubin)

`record` runs the launcher with `_common.RECORD` set: each launch is recorded, not run, so the launcher's
result is garbage. `compile_call` builds triton's signature from the recorded arguments (tensor -> pointer
of its dtype, int -> i32/i64, float -> fp32) and compiles with triton's bundled ptxas; no driver is needed.
Needs the kernel modules imported WITHOUT TRITON_INTERPRET (interpreted kernels cannot be compiled).
Used by tests/codegen/triton/test_triton_compile.py to catch what the interpreter accepts but the compiler
rejects (types, constexpr control flow, tl.dot shapes).
"""
from __future__ import annotations
import torch

from . import _common

_PTR = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "u8",
        torch.int8: "i8", torch.int32: "i32", torch.int64: "i64"}


def record(fn) -> list:
    """Run fn() with launches recorded instead of run; return [(kernel, args, constexprs)]."""
    prev, _common.RECORD = _common.RECORD, []
    try:
        fn()
        return _common.RECORD
    finally:
        _common.RECORD = prev


def signature(kernel, args, constexprs) -> dict[str, str]:
    """triton's {param: type} for a launch of `kernel` with positional `args` and keyword `constexprs`."""
    params = [p for p in kernel.params if not p.is_constexpr]
    if len(params) != len(args):
        raise ValueError(f"{kernel.__name__}: {len(args)} arguments for {len(params)} runtime parameters")
    sig = {}
    for p, a in zip(params, args):
        if isinstance(a, torch.Tensor):
            sig[p.name] = "*" + _PTR[a.dtype]
        elif isinstance(a, bool):
            sig[p.name] = "i1"
        elif isinstance(a, int):
            sig[p.name] = "i32" if -2 ** 31 <= a < 2 ** 31 else "i64"
        elif isinstance(a, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: argument {p.name} of type {type(a).__name__}")
    for p in kernel.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
    return sig


def compile_call(kernel, args, constexprs, arch: int = 90, warp_size: int = 32):
    """Compile one recorded launch for CUDA compute capability `arch` (90 = H100/H200)."""
    triton, _ = _common.import_triton()
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    if not hasattr(kernel, "params"):
        raise RuntimeError(f"{kernel!r} is an interpreted kernel: import the kernel modules without "
                           f"TRITON_INTERPRET to compile them")
    constexprs = dict(constexprs)
    options = {k: constexprs.pop(k) for k in ("num_warps", "num_stages") if k in constexprs}
    src = ASTSource(kernel, signature(kernel, args, constexprs), constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, warp_size), options=options)
