"""`c` lowerings of the elementwise ops: one generated loop nest per node, with broadcasting by strides.

    %y: f32[2,8,64] = add(%a: f32[2,8,64], %b: f32[64])
    ->  for (long i0 = 0; i0 < 16; i0++) for (long i1 = 0; i1 < 64; i1++) {
            float a = v_a[i0 * 64 + i1 * 1]; float b = v_b[i1 * 1];
            v_y[i0 * 64 + i1] = (float)((a + b));
        }

Each op is an expression over its operands (`EXPR`), evaluated in a compute type: the output's C type
for arithmetic, the promoted operand type for comparisons (ir/dtypes.py `promote`). Math functions come
from <tgmath.h>, so f32 operands call the float versions (expf, erff, ...). Dims where every operand is
contiguous are merged and a 0-d constant operand becomes a literal. Semantics follow the torch reference
implementations in ir/opset/elementwise.py (e.g. `remainder` takes the divisor's sign, `round` is to
nearest even, `relu`/`maximum` propagate NaN).
"""
from __future__ import annotations

from ...ir.dtypes import FLOAT_DTYPES, promote
from ..lowering import register_lowering
from .emit import Unsupported, broadcast_strides, c_type, contiguous_strides, literal

# op -> expression over x (unary) or a, b (binary); "{T}" is the compute C type
UNARY = {
    "neg": "(-x)", "relu": "(x < 0 ? ({T})0 : x)", "sign": "({T})((x > 0) - (x < 0))",
    "exp": "exp(x)", "log": "log(x)", "sqrt": "sqrt(x)", "rsqrt": "(({T})1 / sqrt(x))",
    "sin": "sin(x)", "cos": "cos(x)", "tan": "tan(x)", "tanh": "tanh(x)", "atan": "atan(x)",
    "asin": "asin(x)", "acos": "acos(x)", "sinh": "sinh(x)", "cosh": "cosh(x)", "asinh": "asinh(x)",
    "acosh": "acosh(x)", "atanh": "atanh(x)", "erf": "erf(x)", "log1p": "log1p(x)", "expm1": "expm1(x)",
    "sigmoid": "(({T})1 / (({T})1 + exp(-x)))", "silu": "(x / (({T})1 + exp(-x)))",
    "reciprocal": "(({T})1 / x)", "softplus": "(x > ({T})20 ? x : log1p(exp(x)))",
    "hardswish": "(x * fmin(fmax(x + ({T})3, ({T})0), ({T})6) / ({T})6)",
    "hardsigmoid": "(fmin(fmax(x + ({T})3, ({T})0), ({T})6) / ({T})6)",
    "mish": "(x * tanh(x > ({T})20 ? x : log1p(exp(x))))",
    "elu": "(x > 0 ? x : expm1(x))",
    "selu": "(({T})1.0507009873554805 * (x > 0 ? x : ({T})1.6732632423543772 * expm1(x)))",
    "isnan": "(x != x)", "logical_not": "(!x)",
}
FLOAT_ONLY = {"floor": "floor(x)", "ceil": "ceil(x)", "round": "rint(x)", "abs": "fabs(x)"}
INT_UNARY = {"floor": "x", "ceil": "x", "round": "x", "abs": "(x < 0 ? -x : x)", "bitwise_not": "(~x)"}
BINARY = {
    "add": "(a + b)", "sub": "(a - b)", "mul": "(a * b)", "div": "(a / b)",
    "maximum": "((a != a || a > b) ? a : b)", "minimum": "((a != a || a < b) ? a : b)",
    "bitwise_and": "(a & b)", "bitwise_or": "(a | b)", "bitwise_xor": "(a ^ b)",
}
FLOAT_BINARY = {"remainder": "(a - floor(a / b) * b)", "floor_divide": "floor(a / b)", "fmod": "fmod(a, b)",
                "pow": "pow(a, b)"}
INT_BINARY = {"remainder": "sg_rem_i64(a, b)", "floor_divide": "sg_floordiv_i64(a, b)", "fmod": "(a % b)"}
PREDICATE = {"eq": "(a == b)", "ne": "(a != b)", "lt": "(a < b)", "le": "(a <= b)", "gt": "(a > b)",
             "ge": "(a >= b)", "logical_and": "(a != 0 && b != 0)", "logical_or": "(a != 0 || b != 0)",
             "logical_xor": "((a != 0) != (b != 0))"}


def loop_nest(em, out, operands, body) -> str:
    """C loops over `out`'s elements. operands: [(name, pointer, strides)], read into locals of their
    C type (or literals); body(locals) -> the expression stored to out."""
    shape = list(em.shape(out))
    strides = [contiguous_strides(shape)] + [s for _, _, s in operands if s is not None]
    # drop size-1 dims, merge dims that are contiguous for every operand
    dims = [i for i, n in enumerate(shape) if n != 1]
    merged: list[list[int]] = []   # [size, stride per operand...]
    for i in dims:
        cur = [shape[i]] + [s[i] for s in strides]
        if merged and all(p == c * cur[0] for p, c in zip(merged[-1][1:], cur[1:])):
            merged[-1] = [merged[-1][0] * cur[0]] + cur[1:]
        else:
            merged.append(cur)
    idx = [f"i{k}" for k in range(len(merged))]

    def offset(j):
        terms = [f"{v} * {m[j + 1]}" if m[j + 1] != 1 else v for v, m in zip(idx, merged) if m[j + 1]]
        return " + ".join(terms) or "0"
    lines, names, k = [], [], 1
    for name, pointer, s in operands:
        if s is None:   # a literal
            names.append(pointer)
            continue
        ct = pointer[1]
        lines.append(f"{ct} {name} = {pointer[0]}[{offset(k)}];")
        names.append(name)
        k += 1
    lines.append(f"{em.ptr(out)}[{offset(0)}] = ({em.cty(out)})({body(names)});")
    code = "{ " + " ".join(lines) + " }"
    indent = "    "
    for v, m in reversed(list(zip(idx, merged))):
        code = f"for (long {v} = 0; {v} < {m[0]}; {v}++) {code}"
    return f"{indent}{code}"


def _operand(em, v, out, name, as_dtype=None):
    """(name, (pointer, C type), strides) or a literal operand for a 0-d/size-1 constant."""
    t = em.const(v)
    dtype = as_dtype or v.type.dtype
    if t is not None and t.numel() == 1:
        return (name, literal(t.reshape(()).item(), dtype), None)
    return (name, (em.ptr(v), c_type(v.type.dtype)), broadcast_strides(em.shape(v), em.shape(out)))


def _emit(em, node, expr: str, compute: str):
    out = node.output
    T = c_type(compute)
    names = ["x"] if len(node.inputs) == 1 else ["a", "b", "c"][:len(node.inputs)]
    ops = [_operand(em, v, out, n, compute) for v, n in zip(node.inputs, names)]

    def body(locals_):
        e = expr.replace("{T}", T)
        for n, loc in zip(names, locals_):
            cast = f"(({T})({loc}))" if loc != n else f"(({T}){n})"
            e = _subst(e, n, cast)
        return e
    return loop_nest(em, out, ops, body)


def _subst(expr: str, name: str, by: str) -> str:
    import re
    return re.sub(rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])", by, expr)


def _unary(op):
    def lower(em, node):
        x = node.inputs[0]
        dt = node.output.type.dtype
        if op in UNARY:
            if op in ("isnan", "logical_not"):
                return _emit(em, node, UNARY[op], x.type.dtype)
            return _emit(em, node, UNARY[op], dt)
        table = FLOAT_ONLY if dt in FLOAT_DTYPES else INT_UNARY
        if op not in table:
            raise Unsupported(f"{op} on {dt}")
        expr = "(!x)" if op == "bitwise_not" and dt == "bool" else table[op]
        return _emit(em, node, expr, dt)
    return lower


def _binary(op):
    def lower(em, node):
        dt = node.output.type.dtype
        if op in PREDICATE:
            a, b = node.inputs
            return _emit(em, node, PREDICATE[op], promote((a.type.dtype, a.type.rank), (b.type.dtype, b.type.rank)))
        if op == "pow":
            return _pow(em, node)
        if op in BINARY:
            return _emit(em, node, BINARY[op], dt)
        table = FLOAT_BINARY if dt in FLOAT_DTYPES else INT_BINARY
        if op not in table:
            raise Unsupported(f"{op} on {dt}")
        return _emit(em, node, table[op], dt if dt in FLOAT_DTYPES else "i64")
    return lower


def _pow(em, node):
    dt = node.output.type.dtype
    e = em.const(node.inputs[1])
    if e is not None and e.numel() == 1:   # x**2 as x*x, as torch's scalar-exponent kernel does
        v = float(e.reshape(()).item())
        special = {1.0: "x", 2.0: "(x * x)", 3.0: "(x * x * x)", 0.5: "sqrt(x)", -1.0: "(({T})1 / x)",
                   0.0: "(({T})1)"}
        if v in special and dt in FLOAT_DTYPES:
            out = node.output
            op = _operand(em, node.inputs[0], out, "x", dt)
            T = c_type(dt)
            return loop_nest(em, out, [op], lambda ls: _subst(special[v].replace("{T}", T), "x", f"(({T}){ls[0]})"))
    if dt not in FLOAT_DTYPES:
        raise Unsupported(f"pow on {dt}")
    return _emit(em, node, FLOAT_BINARY["pow"], dt)


def _gelu(em, node):
    if node.attrs["approximate"] == "tanh":
        expr = "(({T})0.5 * x * (({T})1 + tanh(({T})0.7978845608028654 * (x + ({T})0.044715 * x * x * x))))"
    else:
        expr = "(({T})0.5 * x * (({T})1 + erf(x * ({T})0.7071067811865476)))"
    return _emit(em, node, expr, node.output.type.dtype)


def _leaky_relu(em, node):
    return _emit(em, node, f"(x > 0 ? x : x * ({{T}}){float(node.attrs['slope'])!r})", node.output.type.dtype)


def _clamp(em, node):
    dt = node.output.type.dtype
    lo, hi = node.attrs["min"], node.attrs["max"]
    e = "x"
    if lo is not None:
        e = f"({e} < {literal(lo, dt)} ? {literal(lo, dt)} : {e})"
    if hi is not None:
        e = f"({e} > {literal(hi, dt)} ? {literal(hi, dt)} : {e})"
    return _emit(em, node, e, dt)


def _isinf(em, node):
    pos, neg = node.attrs["pos"], node.attrs["neg"]
    e = " || ".join(([f"x == INFINITY"] if pos else []) + ([f"x == -INFINITY"] if neg else [])) or "0"
    return _emit(em, node, f"({e})", node.inputs[0].type.dtype)


def _where(em, node):
    out = node.output
    dt = out.type.dtype
    T = c_type(dt)
    ops = [_operand(em, node.inputs[0], out, "c", "bool"), _operand(em, node.inputs[1], out, "a", dt),
           _operand(em, node.inputs[2], out, "b", dt)]
    return loop_nest(em, out, ops, lambda ls: f"({ls[0]} ? (({T}){ls[1]}) : (({T}){ls[2]}))")


def _cast(em, node):
    out = node.output
    dt = out.type.dtype
    op = _operand(em, node.inputs[0], out, "x", node.inputs[0].type.dtype)
    if dt == "bool":
        return loop_nest(em, out, [op], lambda ls: f"({ls[0]} != 0)")
    return loop_nest(em, out, [op], lambda ls: f"(({c_type(dt)}){ls[0]})")


for _op in [*UNARY, *FLOAT_ONLY, "bitwise_not"]:
    register_lowering("c", _op, _unary(_op))
for _op in {*BINARY, *FLOAT_BINARY, *PREDICATE}:
    register_lowering("c", _op, _binary(_op))
register_lowering("c", "gelu", _gelu)
register_lowering("c", "leaky_relu", _leaky_relu)
register_lowering("c", "clamp", _clamp)
register_lowering("c", "isinf", _isinf)
register_lowering("c", "where", _where)
register_lowering("c", "cast", _cast)
