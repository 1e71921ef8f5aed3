"""Import-time evaluation of ONNX nodes whose inputs are all known (shape arithmetic).

Works on numpy arrays; symbolic shapes are object arrays of sympy expressions, so
`Shape(x)[1] * 2` stays the expression `2*seq`. A folder returns None when it cannot decide
(e.g. `Equal(seq, 1)`), and the node is then lowered to run-time ops instead.
"""
from __future__ import annotations
import numpy as np
import sympy

from ..ir.dtypes import FLOAT_DTYPES
from .onnx_import import Known

FOLDERS: dict = {}
MAX_FOLD_ELEMENTS = 1024


def folder(*op_types):
    def deco(fn):
        for t in op_types:
            FOLDERS[t] = fn
        return fn
    return deco


# ops whose folding only moves or converts data, so float inputs fold exactly like ints
DATA_MOVEMENT = {"Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Concat", "Gather", "Slice", "Expand",
                 "Where", "Shape", "Size", "CastLike", "Transpose"}


def should_fold(op_type: str, ins: list[Known]) -> bool:
    if op_type not in FOLDERS or not ins:
        return False
    if any(k.symbolic for k in ins):
        return True
    return all((k.dtype not in FLOAT_DTYPES or op_type in DATA_MOVEMENT) and k.array.size <= MAX_FOLD_ELEMENTS
               for k in ins)


def _ints(k: Known) -> list[int]:
    return [int(x) for x in k.array.reshape(-1)]


def _obj(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == object else np.vectorize(sympy.Integer, otypes=[object])(a) if a.size else a.astype(object)


def _result(arr, dtype, like) -> Known:
    arr = np.asarray(arr, dtype=object if any(k.symbolic for k in like) else None)
    if arr.dtype == object and all(getattr(x, "is_Integer", False) or isinstance(x, int)
                                   for x in arr.reshape(-1)):
        arr = np.array([int(x) for x in arr.reshape(-1)], dtype=np.int64).reshape(arr.shape)
    return Known(arr, dtype)


@folder("Identity")
def _identity(ins, a):
    return ins[0]


@folder("Cast")
def _cast(ins, a):
    from .onnx_import import ONNX_DTYPES
    to = ONNX_DTYPES.get(a["to"])
    if to is None or to == "bf16" or (ins[0].symbolic and (to in FLOAT_DTYPES or to == "bool")):
        return None
    if ins[0].symbolic:
        return Known(ins[0].array, to)
    from ..ir.dtypes import to_torch
    import torch
    return Known(torch.from_numpy(np.array(ins[0].array)).to(to_torch(to)).numpy(), to)


@folder("CastLike")
def _cast_like(ins, a):
    from .onnx_import import IR_TO_ONNX
    return _cast(ins[:1], {"to": IR_TO_ONNX[ins[1].dtype]})


@folder("Gather")
def _gather(ins, a):
    x, idx = ins
    return _result(np.take(x.array, idx.array.astype(np.int64), axis=a.get("axis", 0)), x.dtype, [x])


@folder("Concat")
def _concat(ins, a):
    arrs = [_obj(k.array) if any(k.symbolic for k in ins) else k.array for k in ins]
    return _result(np.concatenate(arrs, axis=a["axis"]), ins[0].dtype, ins)


@folder("Unsqueeze")
def _unsqueeze(ins, a):
    arr = ins[0].array
    rank = arr.ndim + len(_ints(ins[1]))
    for ax in sorted(d % rank for d in _ints(ins[1])):
        arr = np.expand_dims(arr, ax)
    return Known(arr, ins[0].dtype)


@folder("Squeeze")
def _squeeze(ins, a):
    axes = tuple(_ints(ins[1])) if len(ins) > 1 else None
    return Known(np.squeeze(ins[0].array, axis=axes), ins[0].dtype)


@folder("Reshape")
def _reshape(ins, a):
    shape = _ints(ins[1])
    shape = [ins[0].array.shape[i] if d == 0 and not a.get("allowzero") else d for i, d in enumerate(shape)]
    return Known(ins[0].array.reshape(shape), ins[0].dtype)


@folder("Transpose")
def _transpose(ins, a):
    x = ins[0].array
    return Known(np.transpose(x, a.get("perm", list(range(x.ndim))[::-1])), ins[0].dtype)


@folder("Slice")
def _slice(ins, a):
    x = ins[0].array
    starts, ends = _ints(ins[1]), _ints(ins[2])
    axes = _ints(ins[3]) if len(ins) > 3 else list(range(len(starts)))
    steps = _ints(ins[4]) if len(ins) > 4 else [1] * len(starts)
    idx = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        idx[ax] = slice(s, e, st)
    return Known(x[tuple(idx)], ins[0].dtype)


def _trunc_div(p, q):
    if isinstance(p, sympy.Basic) or isinstance(q, sympy.Basic):
        return sympy.floor(sympy.sympify(p) / q)  # shapes are non-negative: floor == trunc
    return int(p / q) if q else 0


_BINARY = {"Add": lambda p, q: p + q, "Sub": lambda p, q: p - q, "Mul": lambda p, q: p * q,
           "Div": _trunc_div}


def _binary(op_type):
    def fold(ins, a):
        x, y = ins
        if not any(k.symbolic for k in ins):
            if op_type == "Div":
                q = np.where(y.array == 0, 1, y.array)
                return Known((np.trunc(x.array / q)).astype(x.array.dtype), x.dtype)
            return Known(np.asarray(_BINARY[op_type](x.array, y.array)).astype(x.array.dtype), x.dtype)
        f = np.vectorize(_BINARY[op_type], otypes=[object])
        return _result(f(_obj(x.array), _obj(y.array)), x.dtype, ins)
    return fold


for _op in _BINARY:
    folder(_op)(_binary(_op))


def _decided(p, q):
    d = sympy.simplify(sympy.sympify(p) - q)
    return d.is_number


@folder("Equal")
def _equal(ins, a):
    x, y = (_obj(k.array) for k in ins)
    xb, yb = np.broadcast_arrays(x, y)
    if not all(_decided(p, q) for p, q in zip(xb.reshape(-1), yb.reshape(-1))):
        return None
    eq = np.vectorize(lambda p, q: bool(sympy.simplify(sympy.sympify(p) - q) == 0), otypes=[bool])
    return Known(eq(x, y), "bool")


@folder("Where")
def _where(ins, a):
    c, x, y = ins
    if c.symbolic:
        return None
    sym = x.symbolic or y.symbolic
    return _result(np.where(c.array, _obj(x.array) if sym else x.array, _obj(y.array) if sym else y.array),
                   x.dtype, ins)


@folder("Max", "Min")
def _maxmin(ins, a):
    return None if any(k.symbolic for k in ins) else Known(
        np.maximum.reduce([k.array for k in ins]) if a["_op"] == "Max" else np.minimum.reduce([k.array for k in ins]),
        ins[0].dtype)


@folder("Expand")
def _expand(ins, a):
    shape = _ints(ins[1])
    out = np.broadcast_shapes(ins[0].array.shape, tuple(shape))
    return Known(np.broadcast_to(ins[0].array, out).copy(), ins[0].dtype)


@folder("Neg")
def _neg(ins, a):
    return _result(-ins[0].array, ins[0].dtype, ins)


@folder("ReduceProd")
def _reduce_prod(ins, a):
    if any(k.symbolic for k in ins) or a.get("keepdims", 1) != 0:
        return None
    axes = tuple(_ints(ins[1])) if len(ins) > 1 else None
    return Known(np.asarray(np.prod(ins[0].array, axis=axes)), ins[0].dtype)


@folder("Range")
def _range(ins, a):
    if any(k.symbolic for k in ins):
        return None
    start, limit, delta = (k.array.item() for k in ins)
    return Known(np.arange(start, limit, delta).astype(ins[0].array.dtype), ins[0].dtype)


@folder("Size")
def _size(ins, a):
    return Known(np.asarray(ins[0].array.size, dtype=np.int64), "i64")


@folder("Shape")
def _shape(ins, a):
    shape = ins[0].array.shape
    return Known(np.asarray(shape[slice(a.get("start", 0), a.get("end", len(shape)))], dtype=np.int64), "i64")


_CONCRETE = {"Mod": None, "Not": np.logical_not, "And": np.logical_and, "Or": np.logical_or,
             "Xor": np.logical_xor, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
             "GreaterOrEqual": np.greater_equal, "Abs": np.abs}


def _concrete(op_type):
    """Integer/bool ops folded only when every input is a concrete number."""
    def fold(ins, a):
        if any(k.symbolic for k in ins):
            return None
        arrs = [k.array for k in ins]
        if op_type == "Mod":
            out = (np.fmod if a.get("fmod", 0) else np.mod)(*arrs)
        else:
            out = _CONCRETE[op_type](*arrs)
        dtype = "bool" if out.dtype == bool else ins[0].dtype
        return Known(np.asarray(out), dtype)
    return fold


for _op in _CONCRETE:
    folder(_op)(_concrete(_op))


def fold(op_type: str, ins: list[Known], attrs: dict):
    """Known outputs of the node, or None when it must run at run time."""
    out = FOLDERS[op_type](ins, {**attrs, "_op": op_type})
    return None if out is None else [out]
