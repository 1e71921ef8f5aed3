"""Elementwise ops: arithmetic, comparisons, activations, casts and constants."""
import torch
import torch.nn.functional as F

from ..dtypes import to_torch
from ..registry import Attr, register_op
from ..types import TensorType
from . import infer as I

EW = ("elementwise",)
COMM = ("elementwise", "commutative")
_COMMUTATIVE = {"add", "mul", "maximum", "minimum", "bitwise_and", "bitwise_or", "bitwise_xor",
                "eq", "ne", "logical_and", "logical_or", "logical_xor"}

# ---- binary, with torch broadcasting and type promotion -----------------------------------------
_BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "maximum": torch.maximum,
    "minimum": torch.minimum, "remainder": torch.remainder, "floor_divide": torch.floor_divide,
    "bitwise_and": torch.bitwise_and, "bitwise_or": torch.bitwise_or, "bitwise_xor": torch.bitwise_xor,
}
for _name, _fn in _BINARY.items():
    register_op(_name, inputs="a b", infer=I.elementwise,
                traits=COMM if _name in _COMMUTATIVE else EW)(lambda a, b, _fn=_fn: _fn(a, b))

register_op("div", inputs="a b", infer=I.float_elementwise, traits=EW)(lambda a, b: torch.div(a, b))
@register_op("pow", inputs="a b", infer=I.elementwise, traits=EW)
def pow_(a, b):
    # a 0-d exponent is a scalar of the source program: torch's scalar kernel special-cases
    # x**2 as x*x (the tensor-exponent kernel calls pow and can differ by an ulp)
    if b.dim() == 0 and a.dim() > 0:
        return torch.pow(a, b.item())
    return torch.pow(a, b)

_PREDICATES = {
    "eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge,
    "logical_and": torch.logical_and, "logical_or": torch.logical_or, "logical_xor": torch.logical_xor,
}
for _name, _fn in _PREDICATES.items():
    register_op(_name, inputs="a b", infer=I.predicate,
                traits=COMM if _name in _COMMUTATIVE else EW)(lambda a, b, _fn=_fn: _fn(a, b))

# ---- unary -----------------------------------------------------------------------------------
_UNARY_SAME = {
    "neg": torch.neg, "abs": torch.abs, "relu": torch.relu, "sign": torch.sign,
    "floor": torch.floor, "ceil": torch.ceil, "round": torch.round, "bitwise_not": torch.bitwise_not,
}
for _name, _fn in _UNARY_SAME.items():
    register_op(_name, inputs="x", infer=I.same, traits=EW)(lambda x, _fn=_fn: _fn(x))

_UNARY_FLOAT = {
    "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt,
    "sin": torch.sin, "cos": torch.cos, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "silu": F.silu, "erf": torch.erf, "reciprocal": torch.reciprocal, "softplus": F.softplus,
    "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "log1p": torch.log1p, "expm1": torch.expm1,
    "tan": torch.tan, "atan": torch.atan, "mish": F.mish, "elu": F.elu, "selu": F.selu,
}
for _name, _fn in _UNARY_FLOAT.items():
    register_op(_name, inputs="x", infer=I.unary_float, traits=EW)(lambda x, _fn=_fn: _fn(x))

register_op("logical_not", inputs="x", infer=lambda ts, a: ts[0].with_dtype("bool"), traits=EW)(torch.logical_not)
register_op("isnan", inputs="x", infer=lambda ts, a: ts[0].with_dtype("bool"), traits=EW)(torch.isnan)


@register_op("gelu", inputs="x", attrs={"approximate": Attr("str", "none")}, infer=I.unary_float, traits=EW)
def gelu(x, approximate):
    return F.gelu(x, approximate=approximate)


@register_op("leaky_relu", inputs="x", attrs={"slope": Attr("float", 0.01)}, infer=I.unary_float, traits=EW)
def leaky_relu(x, slope):
    return F.leaky_relu(x, slope)


@register_op("clamp", inputs="x", attrs={"min": Attr("any", None), "max": Attr("any", None)}, infer=I.same,
             traits=EW)
def clamp(x, min, max):
    return torch.clamp(x, min, max)


@register_op("where", inputs="cond a b",
             infer=lambda ts, a: TensorType(I.elementwise(ts[1:], a).dtype, I.broadcast(*[t.shape for t in ts])),
             traits=EW)
def where(cond, a, b):
    return torch.where(cond, a, b)


@register_op("cast", inputs="x", attrs={"dtype": Attr("dtype")}, infer=lambda ts, a: ts[0].with_dtype(a["dtype"]),
             traits=EW)
def cast(x, dtype):
    return x.to(to_torch(dtype))


# ---- constants and generators (no tensor inputs; shapes may be symbolic) ------------------------------
@register_op("constant", attrs={"value": Attr("any"), "dtype": Attr("dtype")},
             infer=lambda ts, a: TensorType(a["dtype"], ()), traits="generator")
def constant(value, dtype):
    """A 0-d tensor; `value` is a number (scalars of the source program become these)."""
    return torch.tensor(value, dtype=to_torch(dtype))


@register_op("dim_value", attrs={"expr": Attr("dim")}, infer=lambda ts, a: TensorType("i64", ()),
             traits="generator")
def dim_value(expr):
    """A 0-d i64 tensor holding a symbolic dim's run-time value (e.g. `past+seq`)."""
    return torch.tensor(expr, dtype=torch.int64)


@register_op("full", attrs={"shape": Attr("dims"), "value": Attr("any"), "dtype": Attr("dtype")},
             infer=lambda ts, a: TensorType(a["dtype"], tuple(a["shape"])), traits="generator")
def full(shape, value, dtype):
    return torch.full(tuple(shape), value, dtype=to_torch(dtype))


def _arange_len(a):
    from .. import symbolic as S
    start, end, step = a["start"], a["end"], a["step"]
    if all(isinstance(x, int) for x in (start, end, step)):
        return max(0, -(-(end - start) // step))
    if step == 1:
        return S.canon(f"({end})-({start})")
    return S.canon(f"ceiling((({end})-({start}))/({step}))")


@register_op("arange", attrs={"start": Attr("dim", 0), "end": Attr("dim"), "step": Attr("dim", 1),
                              "dtype": Attr("dtype", "i64")},
             infer=lambda ts, a: TensorType(a["dtype"], (_arange_len(a),)), traits="generator")
def arange(start, end, step, dtype):
    return torch.arange(start, end, step, dtype=to_torch(dtype))


_INT_BITS = {"u8": 8, "i8": 8, "i16": 16, "i32": 32, "i64": 64}


def _bit_shift_type(ts, a):
    if ts[0].dtype not in _INT_BITS or ts[1].dtype != ts[0].dtype:
        raise I.ShapeError(f"bit_shift: integer operands of one dtype expected, got {ts[0]} and {ts[1]}")
    return I.elementwise(ts, a)


@register_op("bit_shift", inputs="a b", attrs={"left": Attr("bool")}, infer=_bit_shift_type)
def bit_shift(a, b, left):
    """a << b or a >> b (ONNX BitShift): left shifts wrap in two's complement, right shifts of signed
    values are arithmetic; a shift < 0 or >= the bit width gives 0 (right shift of a negative: -1)."""
    bits = a.element_size() * 8
    a, b = torch.broadcast_tensors(a, b)
    out = (b < 0) | (b >= bits)
    s = torch.where(out, torch.zeros_like(b), b)
    if left:
        return torch.where(out, torch.zeros_like(a), torch.bitwise_left_shift(a, s))
    fill = torch.where(a < 0, torch.full_like(a, -1), torch.zeros_like(a)) if a.is_signed() else torch.zeros_like(a)
    return torch.where(out, fill, torch.bitwise_right_shift(a, s))
