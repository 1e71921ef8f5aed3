"""The `cuda` target's lowerings of ops with the `generator` trait (constant, full, arange, dim_value,
shape_tensor): their reference impls make CPU tensors; here each result is made on the target's device
(`cuda.device()`: the GPU, or the CPU under Triton's interpreter), so a forward never mixes devices.
Literal 0-d constants never get here (the forward inlines them or keeps them as buffers, which the
runner moves to the device once)."""
from __future__ import annotations

from ...ir.registry import get_op, ops_with
from ..lowering import register_lowering


def _make(op: str):
    impl = get_op(op).impl

    def generate(*args, **attrs):
        from .cuda import device
        return impl(*args, **attrs).to(device())
    generate.__name__ = generate.__qualname__ = f"generate_{op}"
    generate.__module__ = __name__
    return generate


for _op in sorted(ops_with("generator")):
    globals()[f"generate_{_op}"] = register_lowering("triton", _op, _make(_op))
