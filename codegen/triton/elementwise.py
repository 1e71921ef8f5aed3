"""Generated Triton kernels for fused elementwise groups (the `cuda` target's codegen of what the
partitioner, `codegen/triton/partition.py`, groups together).

    src = kernel_source("fused_3", group)      # a @triton.jit kernel + its torch-facing launcher
    expr_lowering("silu")                      # -> the "triton-expr" Lowering for silu, or None

A group is a tree of elementwise IR nodes with one root (its output). The kernel computes the root at
every element of its output with one load per leaf input and no intermediate tensors:

- Index math: the flat output index is split into `rank` coordinates (sizes passed at launch), and
  each input is read at `sum(coord_d * stride_d)`, with the strides of the input expanded (stride 0
  where it broadcasts) to the output shape: any layout, any broadcasting, no copies.
- Numerics: floating values are computed in f32; a node whose IR dtype is f16/bf16 rounds its result
  to that dtype (as torch does op by op), so the fused result equals the unfused one up to f32
  operation order. Integer and bool values keep their dtype. 0-d literal constants are inlined.
- One launch per group: `grid = cdiv(numel, BLOCK)`; flat indices are int32, so an output must have
  fewer than 2**31 elements (checked by the launcher).

Per-op expression templates are the "triton-expr" lowering table (codegen/lowering.py):
`fn(args: list[str], node) -> str`, a Triton expression over the argument expressions (already f32 for
floating inputs of floating ops). An elementwise op without a template is not fused (it runs through
the target's kernel for it). NaN semantics follow torch: `maximum/minimum` and `clamp` propagate NaN,
`relu(nan) = nan`.
"""
from __future__ import annotations
import math

import torch

from ...ir.dtypes import FLOAT_DTYPES, promote, to_torch


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES
from ..lowering import get_lowering, register_lowering

TABLE = "triton-expr"

TL_DTYPES = {"f32": "tl.float32", "f16": "tl.float16", "bf16": "tl.bfloat16", "f64": "tl.float64",
             "i64": "tl.int64", "i32": "tl.int32", "i16": "tl.int16", "i8": "tl.int8", "u8": "tl.uint8",
             "bool": "tl.int1"}
HALF = ("f16", "bf16")
BLOCK = 1024


def expr_lowering(op: str):
    return get_lowering(TABLE, op)


def _t(op, fn):
    register_lowering(TABLE, op, fn)


def _lit(node, i):
    """The Python number of input i when it is an inlined 0-d literal constant, else None."""
    p = node.inputs[i].producer
    if p is not None and p.op == "constant" and isinstance(p.attrs.get("value"), (bool, int, float)):
        return p.attrs["value"]
    return None


for _op, _sym in {"add": "+", "sub": "-", "mul": "*"}.items():
    _t(_op, lambda a, n, _s=_sym: f"({a[0]} {_s} {a[1]})")
_t("div", lambda a, n: f"({a[0]} / {a[1]})")
for _op, _sym in {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}.items():
    _t(_op, lambda a, n, _s=_sym: f"({a[0]} {_s} {a[1]})")
_t("logical_and", lambda a, n: f"(({a[0]} != 0) & ({a[1]} != 0))")
_t("logical_or", lambda a, n: f"(({a[0]} != 0) | ({a[1]} != 0))")
_t("logical_xor", lambda a, n: f"(({a[0]} != 0) ^ ({a[1]} != 0))")
_t("logical_not", lambda a, n: f"({a[0]} == 0)")
_t("neg", lambda a, n: f"(-{a[0]})")
_t("abs", lambda a, n: f"tl.abs({a[0]})")
for _op in ("exp", "log", "sqrt", "rsqrt", "sin", "cos", "erf", "floor", "ceil", "sigmoid"):
    _t(_op, lambda a, n, _f=_op: f"tl.{_f}({a[0]})")
_t("reciprocal", lambda a, n: f"(1.0 / {a[0]})")
_t("silu", lambda a, n: f"({a[0]} * tl.sigmoid({a[0]}))")
# tanh(x) = 2 sigmoid(2x) - 1: core tl has no tanh on every supported triton (3.6-3.9) without libdevice
_t("tanh", lambda a, n: f"(2.0 * tl.sigmoid(2.0 * {a[0]}) - 1.0)")
_t("relu", lambda a, n: f"tl.where({a[0]} < 0, {'0.0' if is_float(n.output.type.dtype) else '0'}, {a[0]})")  # keeps NaN
_t("where", lambda a, n: f"tl.where({a[0]} != 0, {a[1]}, {a[2]})")
_t("isnan", lambda a, n: f"({a[0]} != {a[0]})")
_t("maximum", lambda a, n: f"tl.maximum({a[0]}, {a[1]}, propagate_nan=tl.PropagateNan.ALL)")
_t("minimum", lambda a, n: f"tl.minimum({a[0]}, {a[1]}, propagate_nan=tl.PropagateNan.ALL)")


def _gelu(a, n):
    x = a[0]
    if n.attrs.get("approximate", "none") == "tanh":
        inner = f"0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})"
        return f"(0.5 * {x} * (2.0 * tl.sigmoid(2.0 * ({inner}))))"
    return f"(0.5 * {x} * (1.0 + tl.erf({x} * 0.7071067811865476)))"


_t("gelu", _gelu)


def _clamp(a, n):
    x, lo, hi = a[0], n.attrs.get("min"), n.attrs.get("max")
    if lo is not None:
        x = f"tl.where({x} < {_num(lo)}, {_num(lo)}, {x})"
    if hi is not None:
        x = f"tl.where({x} > {_num(hi)}, {_num(hi)}, {x})"
    return x


_t("clamp", _clamp)


def _pow(a, n):
    e = _lit(n, 1)
    forms = {2: f"({a[0]} * {a[0]})", 3: f"({a[0]} * {a[0]} * {a[0]})", 1: a[0], 0.5: f"tl.sqrt({a[0]})",
             -0.5: f"tl.rsqrt({a[0]})", -1: f"(1.0 / {a[0]})"}
    if e is None or isinstance(e, bool) or e not in forms:
        raise NotFusible("pow with a non-literal or uncommon exponent")
    return forms[e]


_t("pow", _pow)


def _cast(a, n):
    return a[0]  # the conversion itself is the generic rounding to the node's dtype (see _round)


_t("cast", _cast)


class NotFusible(Exception):
    """A template declines this node (e.g. pow with a tensor exponent): it is not fused."""


def fusible(node) -> bool:
    """Whether `node` has an expression template that accepts it."""
    low = expr_lowering(node.op)
    if low is None or any(v.type.dtype not in TL_DTYPES or v.type.dtype == "f64" for v in (*node.inputs, *node.outputs)):
        return False   # f64 is not fused: the f32 carrier would lose its precision
    try:   # a template may decline a node (pow with an exponent it has no form for)
        low.fn(["x"] * len(node.inputs), node)
    except NotFusible:
        return False
    if node.op in ("div", "floor", "ceil") and not is_float(node.output.type.dtype):
        return False
    return True


def _num(x) -> str:
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, float):
        if math.isnan(x):
            return "float('nan')"
        if math.isinf(x):
            return "float('inf')" if x > 0 else "float('-inf')"
        return repr(x)
    return str(int(x))


def kernel_source(name: str, group) -> str:
    """Python source of `name` (the launcher) and `name_kernel` (the @triton.jit kernel) for `group`
    (a partition.Group: `nodes` in topological order, `root`, external `inputs`)."""
    root, rank = group.root, group.root.output.type.rank
    args = [f"in{i}" for i in range(len(group.inputs))]
    index_of = {id(v): i for i, v in enumerate(group.inputs)}
    body, env = [], {}

    def value(v, want_float: bool, want_int: str | None = None) -> str:
        """v's expression: as f32 when the op computes in floats; converted to `want_int` (the op's
        promoted integer dtype, torch's rules) when it computes in integers."""
        if id(v) in env:
            e, dt = env[id(v)]
        else:
            lit = v.producer.attrs["value"] if (v.producer is not None and v.producer.op == "constant"
                                               and id(v) not in index_of) else None
            if lit is not None:     # a Python number: written in the type the op computes in
                return _num(float(lit) if want_float else lit)
            e, dt = f"x{index_of[id(v)]}", v.type.dtype
        if want_float and not is_float(dt):
            return f"{e}.to(tl.float32)"
        if want_int is not None and not is_float(dt) and dt != want_int:
            return f"{e}.to({TL_DTYPES[want_int]})"
        return e

    for i, v in enumerate(group.inputs):
        load = f"tl.load(in{i} + ({_offset(i, rank)}), mask=m, other=0)"
        body.append(f"    x{i} = {load}{'.to(tl.float32)' if is_float(v.type.dtype) else ''}")
    for k, node in enumerate(group.nodes):
        out_dt = node.output.type.dtype
        operands = [j for j in range(len(node.inputs)) if not (node.op == "where" and j == 0)]
        # the dtype the op computes in: its result's, or (comparisons, logical ops) its operands' promotion
        compute = out_dt if out_dt != "bool" or node.op in ("logical_and", "logical_or", "logical_xor",
                                                            "logical_not", "cast") else \
            promote(*((node.inputs[j].type.dtype, node.inputs[j].type.rank) for j in operands))
        float_op = is_float(compute) or node.op == "div"
        want_int = compute if not float_op and compute not in ("bool",) and node.op != "cast" else None
        ins = [value(v, float_op and j in operands, want_int if j in operands else None)
               for j, v in enumerate(node.inputs)]
        if node.op == "cast":
            src = node.inputs[0]
            if id(src) not in env and id(src) not in index_of:   # cast of a literal: fold it here
                folded = torch.tensor(src.producer.attrs["value"]).to(to_torch(out_dt)).item()
                env[id(node.output)] = (_num(float(folded) if is_float(out_dt) else folded), out_dt)
                continue
            ins = [value(src, is_float(out_dt))]
        expr = expr_lowering(node.op).fn(ins, node)
        body.append(f"    t{k} = {_round(expr, out_dt, node.op)}")
        env[id(node.output)] = (f"t{k}", out_dt)
    out_dt = root.output.type.dtype
    result = env[id(root.output)][0]
    store_val = result if not is_float(out_dt) or out_dt == "f32" else f"{result}.to({TL_DTYPES[out_dt]})"
    if out_dt == "bool":
        store_val = f"({result} != 0)"
    sizes = ", ".join(f"s{d}" for d in range(rank))
    strides = ", ".join(f"st{i}_{d}" for i in range(len(args)) for d in range(rank))
    params = ", ".join([*args, "out", "n", *(x for x in (sizes, strides) if x)])
    lines = [
        "@triton.jit",
        f"def {name}_kernel({params}, BLOCK: tl.constexpr):",
        "    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)",
        "    m = idx < n",
    ]
    if rank:
        lines.append("    r = idx")
        for d in reversed(range(rank)):
            if d:
                lines.append(f"    c{d} = r % s{d}")
                lines.append(f"    r = r // s{d}")
            else:
                lines.append(f"    c{d} = r")
    lines += body
    lines.append(f"    tl.store(out + idx, {store_val}, mask=m)")
    torch_dt = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "i64": "int64",
                "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8", "bool": "bool"}[out_dt]
    ops = ", ".join(n.op for n in group.nodes)
    lines += [
        "",
        "",
        f"def {name}({', '.join(args)}):",
        f'    """fused {ops} -> %{root.output.name}"""',
        f"    shape = torch.broadcast_shapes({', '.join(f'{a}.shape' for a in args)}{',' if len(args) == 1 else ''})",
        f"    out = torch.empty(shape, dtype=torch.{torch_dt}, device={args[0]}.device)",
        "    n = out.numel()",
        "    if n == 0:",
        "        return out",
        "    if n >= 2 ** 31:",
        f"        raise ValueError('fused kernel {name}: output of ' + str(n) + ' elements needs 64-bit indexing')",
    ]
    for a in args:
        lines.append(f"    {a} = {a}.expand(shape)")
    stride_args = " + ".join(f"list({a}.stride())" for a in args) if rank else "[]"
    lines += [
        f"    {name}_kernel[(triton.cdiv(n, {BLOCK}),)]({', '.join(args)}, out, n, *shape, *({stride_args}), "
        f"BLOCK={BLOCK})",
        "    return out",
    ]
    return "\n".join(lines) + "\n"


def _offset(i: int, rank: int) -> str:
    if not rank:
        return "0 * idx"
    return " + ".join(f"c{d} * st{i}_{d}" for d in range(rank))


def _round(expr: str, dtype: str, op: str) -> str:
    """The node's result in its IR dtype's precision (f32 carrier for floats)."""
    if dtype in HALF:
        return f"({expr}).to({TL_DTYPES[dtype]}).to(tl.float32)"
    if dtype == "bool":
        return f"(({expr}) != 0)" if op == "cast" else expr
    if not is_float(dtype):
        return f"({expr}).to({TL_DTYPES[dtype]})"
    return f"({expr}).to(tl.float32)" if op == "cast" else expr


HEADER = '''"""Triton kernels generated by slimgraph for fused elementwise groups (codegen/triton/elementwise.py).
Each `fused_N(*inputs) -> Tensor` launches `fused_N_kernel` once over the broadcast output."""
import torch
import triton
import triton.language as tl
'''
