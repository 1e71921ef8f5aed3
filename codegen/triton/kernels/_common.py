"""Shared plumbing of the Triton kernel modules: the lazy triton import with a clear error, where
a launcher may run (CUDA, or CPU under the interpreter), and the reference fallback."""
from __future__ import annotations
import functools
import os
import warnings

import torch

from ....ir.registry import get_op


def import_triton():
    """`(triton, triton.language)`, or ImportError naming the install command."""
    try:
        import triton
        import triton.language as tl
    except ImportError as e:
        raise ImportError("slimgraph's Triton kernels need triton: pip install triton "
                          "(3.6-3.9; `pip install --no-deps triton==3.9.0` keeps your torch)") from e
    if interpreting():
        fix_interpreter_index()
    return triton, tl


def interpreting() -> bool:
    """Whether triton decorates kernels for its CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


INTERPRET = interpreting()   # fixed when the kernel modules are imported, as triton.jit fixes it


def fix_interpreter_index():
    """Make the Triton interpreter's scalar-tensor `__index__` work with NumPy >= 2.4.

    The interpreter runs a kernel as Python, so `for i in range(lo, hi)` (or tl.range) with runtime bounds
    (kernel int args, tl.program_id, anything computed from them) calls `tl.tensor.__index__` on scalars
    held as 1-element 1-d arrays. Triton <= 3.6 does `int(data)`, which NumPy 2.4 rejects ("only
    0-dimensional arrays can be converted to Python scalars"); later triton does `int(data.squeeze())`
    (triton-lang/triton#9171). This installs that same definition (a no-op change where triton has it);
    compiled kernels are untouched. Idempotent; skipped if the private hook is gone (the kernel tests'
    runtime-bounded loops then tell)."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "slimgraph_index_fix", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_lang_tensor.slimgraph_index_fix = True
    interpreter._patch_lang_tensor = patch_lang_tensor


FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def runnable(*tensors) -> str | None:
    """None if the kernels can run on these tensors here, else why not."""
    if RECORD is not None:
        return None
    devs = {t.device.type for t in tensors if t is not None}
    if len(devs) > 1:
        return f"inputs on several devices {sorted(devs)}"
    dev = devs.pop() if devs else "cpu"
    if dev == "cuda" and not INTERPRET:
        return None
    if dev == "cpu" and INTERPRET:
        return None
    return (f"{dev} tensors with TRITON_INTERPRET={'1' if INTERPRET else '0'} (the kernels run on CUDA, or on "
            f"CPU under the Triton interpreter)")


_warned: set[tuple[str, str]] = set()


class SlowPathWarning(UserWarning):
    """A Triton launcher ran the op's reference impl instead of its kernel (the message says why)."""


def warn_once(op: str, why: str):
    """Warn (once per op and reason) that a launcher runs `op` without its Triton kernel."""
    if (op, why) not in _warned:
        _warned.add((op, why))
        warnings.warn(f"triton {op}: {why}; running the op's reference impl instead", SlowPathWarning,
                      stacklevel=3)


def fallback(op: str, why: str, *inputs, **attrs):
    """Run IR op `op`'s reference impl, warning once per (op, reason)."""
    warn_once(op, why)
    return get_op(op).impl(*inputs, **attrs)


def tl_dtype(tl, dt: torch.dtype):
    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dt]


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def gpu_config(device) -> bool:
    """Whether launchers pick their GPU block sizes: on CUDA, and while recording launches for an
    ahead-of-time compile (aot.py); the interpreter gets small blocks so tiny test shapes span several."""
    return device.type == "cuda" or RECORD is not None


def num_sms(device) -> int:
    """Streaming multiprocessors of `device` (split-K / split-KV target more programs than this);
    132 (H100 SXM) while recording; 4 under the interpreter so tests exercise the splits on tiny shapes."""
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return 132 if RECORD is not None else 4


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def upcast_dot(dtype: torch.dtype) -> bool:
    """Whether tl.dot operands of `dtype` are cast to f32 first: only bf16 under the interpreter, whose
    bf16 tl.dot returns garbage (triton 3.9: errors ~1e10 on a 16x16 product of randn values)."""
    return INTERPRET and dtype == torch.bfloat16


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input_precision: "ieee" for f32 operands (no TF32 rounding: the reference is exact f32)."""
    return "ieee" if dtype == torch.float32 or upcast_dot(dtype) else "tf32"


RECORD: list | None = None
"""When a list, `launch` appends (kernel, args, constexprs) instead of running, and every launcher takes its
kernel path on any device: tests/codegen/triton/test_triton_compile.py uses it to compile each launched
kernel variant for a GPU architecture on a machine without one (the launchers' results are then garbage)."""


def launch(kernel, grid, *args, **constexprs):
    """kernel[grid](*args, **constexprs), or a record of the call (see RECORD)."""
    if RECORD is not None:
        RECORD.append((kernel, args, constexprs))
        return
    kernel[grid](*args, **constexprs)
