"""Tensor types: a dtype name and a shape of ints or symbolic dims."""
from dataclasses import dataclass
from . import symbolic
from .dtypes import to_torch
from .symbolic import Dim


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self):
        to_torch(self.dtype)  # validates the name
        object.__setattr__(self, "shape", tuple(symbolic.canon(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def numel(self) -> Dim:
        return symbolic.product(self.shape)

    def nbytes(self) -> Dim:
        return symbolic.mul(self.numel(), to_torch(self.dtype).itemsize)

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: str) -> "TensorType":
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"

    def matches(self, other: "TensorType") -> bool:
        return (self.dtype == other.dtype and self.rank == other.rank
                and all(symbolic.equal(a, b) for a, b in zip(self.shape, other.shape)))

    @staticmethod
    def of(t) -> "TensorType":
        from .dtypes import from_torch
        return TensorType(from_torch(t.dtype), tuple(t.shape))
