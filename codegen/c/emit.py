"""The `c` target's code generator: a static-shape IR graph -> `model.c`, `model.h` and `weights.bin`.

    em = Emitter(graph)          # graph: every dim an int (ir/specialize.py)
    files = em.generate()        # {"model.c": str, "model.h": str, "weights.bin": bytes}

Steps, in order:
1. **Fold** what build time knows: a pure node whose inputs are all constants (weights, or values folded
   before it), that reads no weight and is no state op, runs its reference implementation now (arange,
   full, the attention-mask arithmetic of an encoder, ...). Weight-reading ops (dequantize, linear) stay
   run-time code so packed weights stay packed in `weights.bin`.
2. **Lower** every other node through the `c` lowering table (codegen/lowering.py, registered by
   codegen/c/lower_*.py): `fn(emitter, node)` returns the C statements for the node (usually a call into
   the kernel library, runtime/slimgraph_kernels.h, with every shape a literal) or `Alias(value)` when the
   output is the input's bytes reinterpreted (reshape, squeeze, unsqueeze). Ops without a lowering, and
   lowerings that decline a node (`Unsupported`), are collected and reported together.
3. **Plan memory**: graph inputs and outputs are the caller's buffers (a value that is a graph output is
   computed in place in it); constants live in `weights.bin` (64-byte aligned offsets); every other
   value gets a 64-byte aligned slice of one arena, reused once the value is dead (greedy by size over
   live intervals, as TFLite's arena planner does).
"""
from __future__ import annotations
import math
import re
from dataclasses import dataclass

import torch

from ...ir.interpreter import resolve_attrs
from ...ir.registry import get_op
from ..lowering import get_lowering, lowerings

ALIGN = 64
C_TYPES = {"f32": "float", "f64": "double", "i64": "int64_t", "i32": "int32_t", "i16": "int16_t",
           "i8": "int8_t", "u8": "uint8_t", "bool": "uint8_t"}
FOLD_LIMIT = 1 << 16   # fold a node at build time when its output has at most this many elements (or its inputs' total)


class CTargetError(ValueError):
    """The graph cannot be compiled by the `c` target (the message says why and what to do)."""


class Unsupported(Exception):
    """Raised by a lowering that cannot lower this particular node (the message says why)."""


@dataclass(frozen=True)
class Alias:
    """A lowering's result: the node's output is `source`'s bytes (same dtype, same element count)."""
    source: object


def c_type(dtype: str) -> str:
    try:
        return C_TYPES[dtype]
    except KeyError:
        raise Unsupported(f"dtype {dtype} (the c target computes in f32; cast the model to float32)") from None


def literal(value, dtype: str) -> str:
    """A C literal of `value` as IR dtype `dtype`."""
    if dtype in ("f32", "f64"):
        v = float(value)
        s = "NAN" if math.isnan(v) else ("INFINITY" if v > 0 else "-INFINITY") if math.isinf(v) else repr(v)
        return f"(({c_type(dtype)}){s})"
    if dtype == "bool":
        return "1" if bool(value) else "0"
    v = int(value)
    if dtype == "i64":
        return f"INT64_C({v})"
    return f"(({c_type(dtype)}){v})"


def contiguous_strides(shape) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


def broadcast_strides(shape, out_shape) -> list[int]:
    """Element strides of a contiguous tensor of `shape` read at every index of `out_shape` (0 where broadcast)."""
    lead = len(out_shape) - len(shape)
    strides = contiguous_strides(shape)
    return [0 if i < lead or shape[i - lead] == 1 and out_shape[i] != 1 else strides[i - lead]
            for i in range(len(out_shape))]


def _cname(name: str, taken: set) -> str:
    base = "v_" + re.sub(r"[^A-Za-z0-9_]", "_", name)
    c, i = base, 1
    while c in taken:
        c, i = f"{base}_{i}", i + 1
    taken.add(c)
    return c


class Emitter:
    def __init__(self, graph):
        self.graph = graph
        self.nodes = list(graph.nodes)
        self.consts: dict[int, torch.Tensor] = {}      # id(value) -> tensor known at build time
        self.alias: dict[int, object] = {}             # id(value) -> value whose bytes it is
        self._names: dict[int, str] = {}
        self._taken: set[str] = set()
        self._used: dict[int, object] = {}            # values the code refers to
        self._blobs: list[tuple[str, str, torch.Tensor]] = []   # (c name, c type, tensor) in weights.bin
        self._blob_of: dict[int, str] = {}
        self._tables: list[str] = []
        self._ntables = 0
        self._body: list[tuple[int, str]] = []         # (node index, code)

    # ---- what lowerings call -----------------------------------------------------------------
    def shape(self, v) -> tuple[int, ...]:
        return tuple(v.type.shape)

    def numel(self, v) -> int:
        return math.prod(v.type.shape)

    def cty(self, v) -> str:
        return c_type(v.type.dtype)

    def const(self, v) -> torch.Tensor | None:
        """The value's tensor when build time knows it (a weight or a folded value), else None."""
        return self.consts.get(id(v))

    def ptr(self, v) -> str:
        """The C pointer variable holding value `v` (typed as its dtype)."""
        if v.type.dtype not in C_TYPES:
            raise Unsupported(f"%{v.name} has dtype {v.type.dtype}; the c target computes in f32 "
                              "(cast the model to float32 before compiling)")
        self._used[id(v)] = v
        if id(v) not in self._names:
            self._names[id(v)] = _cname(v.name, self._taken)
        return self._names[id(v)]

    def add_const(self, t: torch.Tensor, hint: str = "const") -> str:
        """Store a tensor computed at build time (a converted scale, an offset table) in weights.bin;
        returns its C pointer name."""
        dtype = {torch.float32: "f32", torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8",
                 torch.int8: "i8", torch.bool: "bool", torch.float64: "f64"}[t.dtype]
        name = _cname(hint, self._taken)
        self._blobs.append((name, c_type(dtype), t))
        return name

    def table(self, values, ctype: str = "long") -> str:
        """A small static const array in model.c (shapes, strides); returns its name."""
        name = f"sg_t{self._ntables}"
        self._ntables += 1
        vals = ", ".join(str(int(x)) for x in values) or "0"
        self._tables.append(f"static const {ctype} {name}[] = {{{vals}}};")
        return name

    # ---- the build -----------------------------------------------------------------------------
    def generate(self) -> dict:
        g = self.graph
        for w in g.weights.values():
            self.consts[id(w)] = w.tensor.detach()
        self._fold()
        problems: list[str] = []
        missing: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            if all(id(o) in self.consts for o in node.outputs):
                continue
            lw = get_lowering("c", node.op)
            if lw is None:
                missing[node.op] = missing.get(node.op, 0) + 1
                continue
            try:
                for o in node.outputs:
                    c_type(o.type.dtype)
                res = lw.fn(self, node)
            except Unsupported as e:
                problems.append(f"{node!r}: {e}")
                continue
            if isinstance(res, Alias):
                src = res.source
                self.alias[id(node.output)] = self.alias.get(id(src), src)
                continue
            self._body.append((i, f"    /* {_comment(node)} */\n{res}"))
        if missing or problems:
            msg = [f"the c target cannot compile graph @{g.name}:"]
            if missing:
                ops = ", ".join(f"{op} (x{n})" for op, n in sorted(missing.items()))
                msg.append(f"  ops without a c lowering: {ops}")
            msg += [f"  {p}" for p in problems[:12]] + ([f"  ... and {len(problems) - 12} more"] if len(problems) > 12 else [])
            msg.append(f"  the c target lowers {len(lowerings('c'))} ops (`slimgraph ops --target c`), for static "
                       "shapes and f32 compute with int8/int4 packed weights; use another target (torch, onnx) "
                       "for the rest, or rewrite the model")
            raise CTargetError("\n".join(msg))
        return self._render()

    def _fold(self):
        for node in self.nodes:
            op = get_op(node.op)
            if not op.pure or op.traits & {"reads_weight", "state", "random"}:
                continue
            ins = [self.consts.get(id(v)) for v in node.inputs]
            if any(t is None for t in ins):
                continue
            size = sum(math.prod(o.type.shape) for o in node.outputs)
            if node.inputs and size > max(FOLD_LIMIT, sum(t.numel() for t in ins)):   # generators: always
                continue
            out = op.impl(*ins, **resolve_attrs(op, node.attrs, {}))
            for o, t in zip(node.outputs, out if isinstance(out, (tuple, list)) else (out,)):
                self.consts[id(o)] = t

    def _root(self, v):
        return self.alias.get(id(v), v)

    def _render(self) -> dict:
        g = self.graph
        inputs = {id(v): i for i, v in enumerate(g.inputs)}
        end = len(self.nodes)
        # which values hold storage, and where
        bound_out: dict[int, int] = {}      # id(root) -> output index computed in place
        copies: list[tuple[int, object]] = []
        for i, o in enumerate(g.outputs):
            r = self._root(o)
            if (id(r) not in inputs and id(r) not in self.consts and id(r) not in bound_out
                    and r.type.nbytes() == o.type.nbytes()):
                bound_out[id(r)] = i
            else:
                copies.append((i, o))
                self.ptr(o)
        for i, o in copies:
            self._used[id(self._root(o))] = self._root(o)
        # live intervals of arena values (roots only)
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for idx, node in enumerate(self.nodes):
            for o in node.outputs:
                r = self._root(o)
                if id(o) in self._used or id(r) in self._used:
                    first.setdefault(id(r), idx)
            for v in node.inputs:
                r = self._root(v)
                last[id(r)] = max(last.get(id(r), -1), idx)
        for _, o in copies:
            last[id(self._root(o))] = end
        for v in list(self._used.values()):
            self.ptr(self._root(v))
        roots = {}
        for v in self._used.values():
            r = self._root(v)
            if id(r) not in inputs and id(r) not in self.consts and id(r) not in bound_out:
                roots[id(r)] = r
                self.ptr(r)
        arena, arena_bytes = _plan({k: (first.get(k, 0), max(last.get(k, first.get(k, 0)), first.get(k, 0)),
                                        _aligned(r.type.nbytes())) for k, r in roots.items()})
        # declarations
        decl: list[str] = []
        blobs: list[bytes] = []
        off = 0

        def blob(t: torch.Tensor) -> int:
            nonlocal off
            data = _bytes(t)
            at = off
            blobs.append(data + b"\0" * (_aligned(len(data)) - len(data)))
            off += _aligned(len(data))
            return at

        alias_decl: list[str] = []
        for vid, v in sorted(self._used.items(), key=lambda kv: self._names[kv[0]]):
            name, ct = self._names[vid], self.cty(v)
            r = self._root(v)
            if r is not v:
                qual = "const " if (id(r) in inputs or id(r) in self.consts) else ""
                alias_decl.append(f"    {qual}{ct} *const {name} = ({qual}{ct} *){self._names[id(r)]};")
            elif vid in inputs:
                decl.append(f"    const {ct} *const {name} = (const {ct} *)inputs[{inputs[vid]}];")
            elif vid in self.consts:
                decl.append(f"    const {ct} *const {name} = (const {ct} *)(weights + {blob(self.consts[vid])});")
            elif vid in bound_out:
                decl.append(f"    {ct} *const {name} = ({ct} *)outputs[{bound_out[vid]}];")
            else:
                decl.append(f"    {ct} *const {name} = ({ct} *)(arena + {arena[vid]});")
        for name, ct, t in self._blobs:
            decl.append(f"    const {ct} *const {name} = (const {ct} *)(weights + {blob(t)});")
        decl += alias_decl
        tail = [f"    memcpy(outputs[{i}], {self.ptr(o)}, {o.type.nbytes()});  /* output {i} %{o.name} */"
                for i, o in copies if o.type.nbytes()]
        weights = b"".join(blobs)
        body = "\n".join(code for _, code in self._body)
        return {"model.c": _model_c(g, decl, body, tail, self._tables, arena_bytes, len(weights)),
                "model.h": _model_h(g, arena_bytes, len(weights)), "weights.bin": weights,
                "meta": {"arena_bytes": arena_bytes, "weights_bytes": len(weights)}}


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.view(torch.uint8).numpy().tobytes()


def _plan(bufs: dict[int, tuple[int, int, int]]) -> tuple[dict[int, int], int]:
    """Greedy-by-size offsets: each buffer (first use, last use, bytes) takes the lowest offset that
    overlaps no buffer already placed whose live interval intersects its own."""
    placed: list[tuple[int, int, int, int]] = []   # (offset, size, first, last)
    out: dict[int, int] = {}
    for k, (a, b, size) in sorted(bufs.items(), key=lambda kv: (-kv[1][2], kv[1][0])):
        conflicts = sorted((o, s) for o, s, f, l in placed if not (l < a or b < f))
        at = 0
        for o, s in conflicts:
            if at + size <= o:
                break
            at = max(at, o + s)
        placed.append((at, size, a, b))
        out[k] = at
    return out, max((o + s for o, s, _, _ in placed), default=0)


def _comment(node) -> str:
    text = repr(node).replace("*/", "* /")
    return text if len(text) < 160 else text[:157] + "..."


def _sig_tables(g):
    def rows(vals, what):
        names = ", ".join(f'"{v.name}"' for v in vals) or "0"
        dtypes = ", ".join(f'"{v.type.dtype}"' for v in vals) or "0"
        nbytes = ", ".join(str(v.type.nbytes()) for v in vals) or "0"
        ranks = ", ".join(str(v.type.rank) for v in vals) or "0"
        shapes = ", ".join(", ".join(str(d) for d in v.type.shape) or "0" for v in vals) or "0"
        return (f"const char *const slimgraph_{what}_names[] = {{{names}}};\n"
                f"const char *const slimgraph_{what}_dtypes[] = {{{dtypes}}};\n"
                f"const long slimgraph_{what}_bytes[] = {{{nbytes}}};\n"
                f"const int slimgraph_{what}_ranks[] = {{{ranks}}};\n"
                f"const long slimgraph_{what}_dims[] = {{{shapes}}};  /* each's shape in turn (rank-0: a 0) */\n")
    return rows(g.inputs, "input") + rows(g.outputs, "output")


def _model_c(g, decl, body, tail, tables, arena_bytes, weights_bytes) -> str:
    sig = "\n".join(f" *   input  {i}: %{v.name}: {v.type}" for i, v in enumerate(g.inputs))
    sig += "\n" + "\n".join(f" *   output {i}: %{v.name}: {v.type}" for i, v in enumerate(g.outputs))
    return f"""/* model.c: generated by slimgraph's `c` target from graph @{g.name}. Do not edit; regenerate.
{sig}
 * arena {arena_bytes} bytes, weights.bin {weights_bytes} bytes.
 */
#include <stdint.h>
#include <string.h>
#include <tgmath.h>

#include "model.h"
#include "slimgraph_kernels.h"

#define SG_TRY(call) do {{ int sg_err_ = (call); if (sg_err_) return sg_err_; }} while (0)

{_sig_tables(g)}
{chr(10).join(tables)}

long slimgraph_arena_bytes(void) {{ return SLIMGRAPH_ARENA_BYTES; }}

int slimgraph_forward(const void *const *inputs, void *const *outputs, const unsigned char *weights,
                      unsigned char *arena) {{
    (void)inputs; (void)outputs; (void)weights; (void)arena;
{chr(10).join(decl)}

{body}
{chr(10).join(tail)}
    return 0;
}}
"""


def _model_h(g, arena_bytes, weights_bytes) -> str:
    return f"""/* model.h: the interface of the generated model (slimgraph `c` target, graph @{g.name}). */
#ifndef SLIMGRAPH_MODEL_H
#define SLIMGRAPH_MODEL_H
#ifdef __cplusplus
extern "C" {{
#endif

#define SLIMGRAPH_NUM_INPUTS {len(g.inputs)}
#define SLIMGRAPH_NUM_OUTPUTS {len(g.outputs)}
#define SLIMGRAPH_ARENA_BYTES {arena_bytes}L    /* scratch memory slimgraph_forward needs */
#define SLIMGRAPH_WEIGHTS_BYTES {weights_bytes}L  /* size of weights.bin */

/* Run the model. inputs[i] / outputs[i]: dense row-major buffers of slimgraph_input_bytes[i] /
 * slimgraph_output_bytes[i] bytes (dtypes and shapes in the tables below; bool is one byte 0/1).
 * weights: the contents of weights.bin (any address aligned to 64 bytes is best; 16 is required).
 * arena: SLIMGRAPH_ARENA_BYTES bytes of scratch memory, same alignment (a static array works).
 * Returns 0, or SG_ERR_INDEX (slimgraph_kernels.h) when an index input (a token id) is out of range. */
int slimgraph_forward(const void *const *inputs, void *const *outputs, const unsigned char *weights,
                      unsigned char *arena);
long slimgraph_arena_bytes(void);

extern const char *const slimgraph_input_names[], *const slimgraph_input_dtypes[];
extern const long slimgraph_input_bytes[], slimgraph_input_dims[];
extern const int slimgraph_input_ranks[];
extern const char *const slimgraph_output_names[], *const slimgraph_output_dtypes[];
extern const long slimgraph_output_bytes[], slimgraph_output_dims[];
extern const int slimgraph_output_ranks[];

#ifdef __cplusplus
}}
#endif
#endif
"""
