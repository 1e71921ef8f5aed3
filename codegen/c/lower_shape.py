"""`c` lowerings of the shape and data-movement ops, and of the state ops (a cache at a fixed length).

- reshape, squeeze, unsqueeze (and a permute/slice/expand that moves nothing): `Alias` — the output is
  the input's bytes, no code.
- permute, slice, select, expand: one strided copy (`sg_copy_strided`) with the strides and start offset
  computed here.
- concat, cache_append, split: row copies (`sg_copy_rows`) into/out of the blocks of the concat dim.
- flip, tile, cache_window, and gather/index/index_select whose indices are build-time constants: the
  op's own reference implementation runs now on the element numbers 0..n-1 of its data input, which
  gives the source element of every output element; the C code gathers by that offset table
  (`sg_gather_offsets`). So these lowerings are exact by construction.
- index_select with run-time indices: `sg_index_select` (an out-of-range index makes slimgraph_forward
  return SG_ERR_INDEX).
"""
from __future__ import annotations
import math

import torch

from ...ir.dtypes import itemsize
from ...ir.interpreter import resolve_attrs
from ...ir.registry import get_op
from ..lowering import register_lowering
from .emit import Alias, Unsupported, broadcast_strides, contiguous_strides, literal


def _elem(v) -> int:
    return itemsize(v.type.dtype)


def _alias(em, node):
    return Alias(node.inputs[0])


def _strided(em, node, shape, strides, offset):
    x, out = node.inputs[0], node.output
    live = [(n, s) for n, s in zip(shape, strides) if n != 1]
    if offset == 0 and [s for _, s in live] == [s for n, s in zip(shape, contiguous_strides(shape)) if n != 1] \
            and em.numel(out) == em.numel(x):
        return Alias(x)
    if em.numel(out) == 0:
        return "    /* empty */"
    return (f"    sg_copy_strided({em.ptr(out)}, {em.ptr(x)}, {_elem(x)}, {len(shape)}, {em.table(shape or [1])}, "
            f"{em.table(strides or [0])}, {offset});")


def permute(em, node):
    xs = contiguous_strides(em.shape(node.inputs[0]))
    dims = [d % len(xs) for d in node.attrs["dims"]]
    return _strided(em, node, list(em.shape(node.output)), [xs[d] for d in dims], 0)


def slice_(em, node):
    shape = list(em.shape(node.inputs[0]))
    xs = contiguous_strides(shape)
    d = node.attrs["dim"] % len(shape)
    start, _, step = slice(node.attrs["start"], node.attrs["end"], node.attrs["step"]).indices(shape[d])
    strides = list(xs)
    strides[d] = xs[d] * step
    return _strided(em, node, list(em.shape(node.output)), strides, start * xs[d] if em.numel(node.output) else 0)


def select(em, node):
    shape = list(em.shape(node.inputs[0]))
    xs = contiguous_strides(shape)
    d = node.attrs["dim"] % len(shape)
    i = node.attrs["index"] % shape[d]
    return _strided(em, node, list(em.shape(node.output)), xs[:d] + xs[d + 1:], i * xs[d])


def expand(em, node):
    out = list(em.shape(node.output))
    return _strided(em, node, out, broadcast_strides(em.shape(node.inputs[0]), out), 0)


def _concat_into(em, out, pieces, d):
    shape = em.shape(out)
    outer, inner = math.prod(shape[:d]), math.prod(shape[d + 1:])
    total, acc, lines, e = shape[d], 0, [], _elem(out)
    for p in pieces:
        if p.type.dtype != out.type.dtype:
            raise Unsupported(f"%{p.name} is {p.type.dtype}, the result {out.type.dtype}; cast it first")
        n = em.numel(p)
        if n == 0:
            continue
        step = em.shape(p)[d] if p.type.rank == len(shape) else 0
        lines.append(f"    sg_copy_rows({em.ptr(out)} + {acc * inner}, {total * inner * e}, {em.ptr(p)}, "
                     f"{step * inner * e}, {outer}, {step * inner * e});")
        acc += step
    return "\n".join(lines) or "    /* empty */"


def concat(em, node):
    return _concat_into(em, node.output, node.inputs, node.attrs["dim"] % node.output.type.rank)


def cache_append(em, node):
    return _concat_into(em, node.output, node.inputs, node.attrs["axis"] % node.output.type.rank)


def split(em, node):
    x = node.inputs[0]
    shape = em.shape(x)
    d = node.attrs["dim"] % len(shape)
    outer, inner, e = math.prod(shape[:d]), math.prod(shape[d + 1:]), _elem(x)
    acc, lines = 0, []
    for o in node.outputs:
        n = em.shape(o)[d]
        if n and outer and inner:
            lines.append(f"    sg_copy_rows({em.ptr(o)}, {n * inner * e}, {em.ptr(x)} + {acc * inner}, "
                         f"{shape[d] * inner * e}, {outer}, {n * inner * e});")
        acc += n
    return "\n".join(lines) or "    /* empty */"


def offset_gather(em, node):
    """Any data movement whose non-data inputs are build-time constants: run the reference impl on the
    element numbers of input 0, gather by the resulting offsets."""
    x, out = node.inputs[0], node.output
    consts = [em.const(v) for v in node.inputs[1:]]
    if any(t is None for t in consts):
        raise Unsupported("its index inputs are computed at run time; the c target needs them constant "
                          "(index_select and embedding take run-time indices)")
    n = em.numel(x)
    if n >= 2 ** 31:
        raise Unsupported(f"input has {n} elements; offset tables are int32")
    op = get_op(node.op)
    numbers = torch.arange(n, dtype=torch.int64).reshape(em.shape(x))
    offsets = op.impl(numbers, *consts, **resolve_attrs(op, node.attrs, {}))
    offsets = offsets.reshape(-1).to(torch.int32)
    if em.numel(out) == 0:
        return "    /* empty */"
    table = em.add_const(offsets, f"{out.name}_offsets")
    return f"    sg_gather_offsets({em.ptr(out)}, {em.ptr(x)}, {_elem(x)}, {table}, {em.numel(out)});"


def index_select(em, node):
    x, idx = node.inputs
    if em.const(idx) is not None:
        return offset_gather(em, node)
    if idx.type.dtype != "i64":
        raise Unsupported(f"index %{idx.name} is {idx.type.dtype}; the kernel takes i64")
    shape = em.shape(x)
    d = node.attrs["dim"] % len(shape)
    return (f"    SG_TRY(sg_index_select({em.ptr(node.output)}, {em.ptr(x)}, {em.ptr(idx)}, {em.numel(idx)}, "
            f"{math.prod(shape[:d])}, {shape[d]}, {math.prod(shape[d + 1:])}, {_elem(x)}));")


for _op in ("reshape", "squeeze", "unsqueeze"):
    register_lowering("c", _op, _alias)
register_lowering("c", "permute", permute)
register_lowering("c", "slice", slice_)
register_lowering("c", "select", select)
register_lowering("c", "expand", expand)
register_lowering("c", "concat", concat)
register_lowering("c", "cache_append", cache_append)
register_lowering("c", "split", split)
register_lowering("c", "index_select", index_select)
for _op in ("flip", "tile", "cache_window", "index", "gather"):
    register_lowering("c", _op, offset_gather)


def pad(em, node):
    """Any pad mode: the reference impl on element numbers (constant mode fills with -1) gives each output
    element's source, or -1 where the constant goes."""
    x, out = node.inputs[0], node.output
    if em.numel(out) == 0:
        return "    /* empty */"
    n = em.numel(x)
    numbers = torch.arange(n, dtype=torch.int64).reshape(em.shape(x))
    attrs = dict(node.attrs)
    if attrs["mode"] == "constant":
        attrs["value"] = -1
    op = get_op("pad")
    offsets = op.impl(numbers, **attrs).reshape(-1).to(torch.int32)
    table = em.add_const(offsets, f"{out.name}_offsets")
    fill = literal(node.attrs["value"], out.type.dtype)
    return (f"    for (long i = 0; i < {em.numel(out)}; i++) {em.ptr(out)}[i] = {table}[i] < 0 ? {fill} : "
            f"{em.ptr(x)}[{table}[i]];")


def _triangle(upper):
    def lower(em, node):
        x, out = node.inputs[0], node.output
        shape = em.shape(x)
        if len(shape) < 2:
            raise Unsupported("tril/triu need at least 2 dims")
        r, c = shape[-2:]
        keep = "(j - i >= {d})" if upper else "(j - i <= {d})"
        keep = keep.format(d=node.attrs["diagonal"])
        return (f"    for (long o = 0; o < {math.prod(shape[:-2])}; o++) for (long i = 0; i < {r}; i++) "
                f"for (long j = 0; j < {c}; j++) {{ long at = (o * {r} + i) * {c} + j; "
                f"{em.ptr(out)}[at] = {keep} ? {em.ptr(x)}[at] : 0; }}")
    return lower


def cumsum(em, node):
    x, out = node.inputs[0], node.output
    shape = em.shape(x) or (1,)
    d = node.attrs["dim"] % len(shape)
    outer, n, inner = math.prod(shape[:d]), shape[d], math.prod(shape[d + 1:])
    ct = em.cty(out)
    return (f"    for (long o = 0; o < {outer}; o++) for (long j = 0; j < {inner}; j++) {{ {ct} acc = 0; "
            f"for (long i = 0; i < {n}; i++) {{ long at = (o * {n} + i) * {inner} + j; acc += ({ct}){em.ptr(x)}[at]; "
            f"{em.ptr(out)}[at] = acc; }} }}")


def folded(em, node):
    """Generators (no tensor inputs) are evaluated at build time by the emitter; never reached."""
    raise Unsupported("internal: a generator op was not folded at build time")


register_lowering("c", "pad", pad)
register_lowering("c", "gather_nd", offset_gather)
register_lowering("c", "tril", _triangle(False))
register_lowering("c", "triu", _triangle(True))
register_lowering("c", "cumsum", cumsum)
for _op in ("constant", "full", "arange", "dim_value", "shape_tensor"):
    register_lowering("c", _op, folded)
