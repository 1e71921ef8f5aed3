"""IR dtype names and their torch equivalents.

Packed low-bit weights are stored as `u8`/`i8` tensors (two int4 per byte); the logical
bit width lives in the attributes of the op that unpacks them (`dequantize`, `qlinear`).
"""
import torch

TORCH_DTYPES: dict[str, torch.dtype] = {
    "f64": torch.float64, "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
    "i64": torch.int64, "i32": torch.int32, "i16": torch.int16, "i8": torch.int8,
    "u8": torch.uint8, "bool": torch.bool,
}
IR_DTYPES: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}
FLOAT_DTYPES = frozenset({"f64", "f32", "f16", "bf16"})


def to_torch(name: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(TORCH_DTYPES)}") from None


def from_torch(dtype: torch.dtype) -> str:
    try:
        return IR_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"torch dtype {dtype} has no slimgraph equivalent; supported: "
                         f"{', '.join(map(str, IR_DTYPES))}") from None


def itemsize(name: str) -> int:
    return to_torch(name).itemsize


def promote(*operands: tuple[str, int]) -> str:
    """Result dtype of an elementwise op; operands are (dtype, rank) so that 0-d tensors
    promote the way torch scalars do (they never widen a tensor of the same category)."""
    acc = None
    for d, r in operands:
        t = torch.empty((1,) * min(r, 1), dtype=to_torch(d))
        acc = t if acc is None else torch.empty((1,) * max(acc.dim(), t.dim()), dtype=torch.result_type(acc, t))
    return from_torch(acc.dtype)
