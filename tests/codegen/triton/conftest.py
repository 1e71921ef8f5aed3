"""The Triton kernel tests run on CPU tensors under triton's interpreter when there is no GPU
(tests/conftest.py sets TRITON_INTERPRET=1 at collection, before any kernel module is imported:
triton decides at @triton.jit time)."""
import os

import pytest
import torch


@pytest.fixture(scope="session")
def device():
    """Where the kernels run: cuda when available, else cpu under the interpreter."""
    try:
        import triton  # noqa: F401
    except ImportError:
        msg = "triton is not installed (make setup installs it: pip install --no-deps triton==3.9.0)"
        if os.environ.get("CI"):   # CI runs make setup: a missing triton is a failure there, not a skip
            pytest.fail(msg)
        pytest.skip(msg)
    from slimgraph.codegen.triton.kernels import _common
    if not torch.cuda.is_available() and not _common.INTERPRET:
        pytest.fail("the triton kernel modules were imported before TRITON_INTERPRET=1 was set: "
                    "their launchers would only run the reference fallback")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def close():
    """assert_close with the per-dtype tolerance of the kernel tests: f32 1e-4; f16 1e-2; bf16 2**-5
    (the interpreter rounds f32 -> bf16 toward zero, the GPU and torch to nearest: one ulp per
    rounding, 2**-7 relative). `dtype` picks the tolerance; y and ref must have the same dtype."""
    def check(y, ref, dtype):
        tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2 ** -5}[dtype]
        assert y.dtype == ref.dtype, (y.dtype, ref.dtype)
        torch.testing.assert_close(y.float().cpu(), ref.float().cpu(), atol=tol, rtol=tol)
    return check
