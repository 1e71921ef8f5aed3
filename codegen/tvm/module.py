"""IR graph -> TVM Relax IRModule, through the "cpu" lowering table (codegen/lowering.py).

    mod, weights = to_relax(graph)      # IRModule with one function "main"; weights: its parameters after
                                        # the inputs: names (the graph's weights some op reads unpacked), then
                                        # {"node", "input", "weight"} per prepacked one

`main(*graph inputs, *weights)` returns a tuple of the graph's outputs. Weights are parameters, not
bound constants: the compiled library holds code only, and the runner passes the graph's own tensors
(no copy in the library, none in an artifact). A lowering with a `prepack` hook (f32 `linear`: weight
panels) gets its weight in the packed layout as one more parameter (one per distinct weight), which the
runner makes at load by running the same hook (memory: the packed copy sits beside the graph's tensor); a
weight that every reader takes prepacked is not a parameter itself (the VM checks each parameter on every
call: ~360 of them in a W4A8 SmolLM2).
Symbolic dims become `tir.Var`s (int64) named after the IR symbols; dims computed from them (`past+seq`)
become PrimExprs, so one library serves every batch, sequence and cache length.

`append` states (the KV cache) are updated in place (`inplace_states`): main's parameter for such a state
is a buffer with the state's layout and `kv_capacity_<i>` rows along the state axis, of which the first
`past` are the state; one more parameter `kv_lengths` (a shape) gives each state-axis symbol's value. The
state's `cache_append` writes the new rows into the buffer (call_tir_inplace) and returns the buffer itself,
which is then main's output for that state; attention reads the buffer's first past + new rows in place
(`lw.kv_view`), any other reader gets a copy of those rows. The runner owns the buffers (target.py).

`ring` states (StreamingLLM's sinks + window, `cache_window(cache_append(past, new))`) too, as the torch
target keeps them (codegen/torch_kv.py): the ring is rows [start, start + past) of its buffer, `start` one
more symbol `kv_start_<i>` in `kv_lengths`; the append writes at start + past, attention reads
[start, start + past + new) in place, and the `cache_window`, emitted after every other node (nothing reads
the buffer after it), copies the S sink rows to sit just before the last W rows (`make_ring_slide`): per step
n + S rows are written and nothing else is copied. The runner then hands out the view [start', start' + W + S)
and moves the ring to a fresh buffer when the capacity runs out (amortized O(1) per step), and right after a
call much longer than the ring (a long prompt: target.py `_ring_moved`), so that its rows are not kept.

Each node calls its op's "cpu" lowering `fn(lw, node, args) -> relax.Expr | [relax.Expr]`, where `lw`
is the `Lowerer` (its BlockBuilder `lw.bb`, `lw.dim`, `lw.shape`, `lw.const`) and `args` the Relax
values of the node's inputs. An op without a lowering is refused before any TVM work
(`unsupported_ops`).
"""
from __future__ import annotations
from dataclasses import dataclass

import sympy

from ...ir import symbolic
from ..lowering import get_lowering

DTYPES = {"f64": "float64", "f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64",
          "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8", "bool": "bool"}


class LoweringError(RuntimeError):
    pass


def unsupported_ops(graph) -> list[str]:
    """The ops of `graph` that have no "cpu" lowering (sorted, each once)."""
    return sorted({n.op for n in graph.nodes if get_lowering("cpu", n.op) is None})


def tvm_dtype(d: str) -> str:
    try:
        return DTYPES[d]
    except KeyError:
        raise LoweringError(f"cpu target: dtype {d!r} has no TVM equivalent") from None


class Lowerer:
    """State of one graph's lowering: the BlockBuilder, the symbols and the Relax value of each IR value."""

    def __init__(self, graph):
        from tvm import relax, tirx
        self.relax, self.tir = relax, tirx
        self.graph = graph
        self.bb = relax.BlockBuilder()
        self.syms: dict[str, object] = {}
        self.env: dict[int, object] = {}
        self.kernels: dict[str, object] = {}
        self.memo: dict[tuple, object] = {}     # values lowerings share (keyed by IR value ids)
        self.inplace = {id(kv.node): kv for kv in inplace_states(graph)}   # cache_append node -> InplaceState
        self.slides = {id(kv.window): kv for kv in self.inplace.values() if kv.window is not None}  # ring cache_window
        self.views: dict[int, tuple] = {}      # IR value id -> (KV buffer, rows in use, axis, first row): kv_view

    def kernel(self, name: str, prim_func):
        """The GlobalVar of TIR kernel `name` in the module (added once, shared by every call)."""
        if name not in self.kernels:
            self.kernels[name] = self.bb.add_func(prim_func, name)
        return self.kernels[name]

    # ---- dims ---------------------------------------------------------------------------------
    def sym(self, name: str):
        if name not in self.syms:
            self.syms[name] = self.tir.Var(name, "int64")
        return self.syms[name]

    def dim(self, d):
        """An IR dim (int or symbolic expression string) as an int or a tir PrimExpr (int64)."""
        if isinstance(d, int):
            return d
        return self._prim(symbolic._expr(d), d)

    def _prim(self, e, text):
        tir = self.tir
        if e.is_Integer:
            return tir.IntImm("int64", int(e))
        if e.is_Symbol:
            return self.sym(str(e))
        if isinstance(e, sympy.Add):
            out = self._prim(e.args[0], text)
            for a in e.args[1:]:
                out = out + self._prim(a, text)
            return out
        if isinstance(e, sympy.Mul):
            num, den = e.as_numer_denom()
            if den != 1:
                return tir.floordiv(self._prim(num, text), self._prim(den, text))
            out = self._prim(e.args[0], text)
            for a in e.args[1:]:
                out = out * self._prim(a, text)
            return out
        if isinstance(e, (sympy.floor, sympy.ceiling)):
            # floor(x/2 - 1/2) (a conv or pool's output size over a symbolic dim): one fraction (x - 1)/2 with
            # an integer numerator, as tir's floordiv; ceiling(a/b) as floordiv(a + b - 1, b)
            num, den = e.args[0].as_numer_denom()
            if not den.is_Integer or den <= 0:
                raise LoweringError(f"cpu target: symbolic dim {text!r}: {e} divides by a symbolic value")
            n, d = self._prim(num, text), int(den)
            if d == 1:
                return n
            return tir.floordiv(n + (d - 1 if isinstance(e, sympy.ceiling) else 0), d)
        if isinstance(e, sympy.Mod):
            a, b = e.args
            return tir.floormod(self._prim(a, text), self._prim(b, text))
        if isinstance(e, (sympy.Max, sympy.Min)):
            fn = tir.max if isinstance(e, sympy.Max) else tir.min
            out = self._prim(e.args[0], text)
            for a in e.args[1:]:
                out = fn(out, self._prim(a, text))
            return out
        raise LoweringError(f"cpu target: symbolic dim {text!r} ({type(e).__name__}) has no TIR form")

    def shape(self, v) -> list:
        return [self.dim(d) for d in v.type.shape]

    def struct(self, v):
        return self.relax.TensorType(self.shape(v), tvm_dtype(v.type.dtype))

    def conform(self, x, dims, dtype=None):
        """Relax value `x` with shape `dims` (ints / PrimExprs): `x` itself when Relax proves its shape equal,
        else a match_cast to it (checked when run). IR shapes hold dims that are equal only for the inputs the
        model takes (a conv output `floor(h/2 - 1/2) + 1` beside a resize's `2*floor(h/4 - 1/2) + 2`) or that
        Relax's simplifier cannot show equal; after the cast, later ops see one spelling. An axis whose Relax dim
        is computed from symbol s is never cast to s itself: TVM 0.27 then substitutes s by the expression
        forever (a stack overflow in the compiler); it keeps the computed dim (`aligned` casts the other way)."""
        from tvm import tirx
        from tvm.sym.analyzer import Analyzer
        x = self.bb.normalize(x)
        ty = x.ty
        dtype = dtype or str(ty.dtype)
        shape = list(ty.shape.values) if isinstance(ty.shape, self.relax.ShapeExpr) else None
        if shape is not None and len(shape) == len(dims):
            ana = Analyzer()
            want = []
            for have, d in zip(shape, dims):
                if ana.can_prove_equal(have, d) or (isinstance(d, tirx.Var) and not isinstance(have, tirx.Var)
                                                    and any(v.same_as(d) for v in tirx.analysis.undefined_vars(have))):
                    want.append(have)
                else:
                    want.append(d)
            if all(a is b for a, b in zip(want, shape)):
                return x if str(ty.dtype) == dtype else self.relax.op.astype(x, dtype)
            dims = want
        if not isinstance(x, self.relax.Var):
            x = self.bb.emit(x)
        y = self.bb.match_cast(x, self.relax.TensorType(list(dims), str(ty.dtype)))
        return y if str(ty.dtype) == dtype else self.relax.op.astype(y, dtype)

    def aligned(self, node, args) -> list:
        """The arguments of a broadcasting (elementwise) op or a concat, cast (`conform`) to one spelling of each
        dim they share wherever Relax cannot prove their dims equal (the IR takes two symbolic dims as equal:
        ir/opset/infer.py broadcast "assume equal at run time"; Relax would give the result no shape). Per axis
        the spelling is the first computed one (`2*floor(h/4) + 2` rather than `h`: see `conform`)."""
        from tvm import tirx
        from tvm.sym.analyzer import Analyzer
        out = node.output.type.shape
        rank = len(out)
        concat = node.op == "concat"
        axis = node.attrs["dim"] % rank if concat and rank else None
        vals, shapes = [], []
        for v, a in zip(node.inputs, args):
            a = self.bb.normalize(a)
            if concat and v.type.rank == 1 and v.type.shape[0] == 0 and rank != 1:
                vals.append(a)
                shapes.append(None)   # torch's empty 1-d concat operand: the lowering drops it
                continue
            if not isinstance(a.ty.shape, self.relax.ShapeExpr):
                a = self.conform(a, self.shape(v))
            vals.append(a)
            shapes.append([None] * (rank - v.type.rank) + list(a.ty.shape.values))
        ana = Analyzer()
        target = [None] * rank
        for k in range(rank):
            if k == axis:
                continue
            dims = [s[k] for s in shapes if s is not None and s[k] is not None
                    and (concat or not (isinstance(s[k], tirx.IntImm) and s[k].value == 1))]
            if len(dims) < 2 or all(ana.can_prove_equal(dims[0], d) for d in dims[1:]):
                continue
            computed = [d for d in dims if not isinstance(d, (tirx.Var, tirx.IntImm))]
            target[k] = (computed or dims)[0]
        if all(t is None for t in target):
            return vals
        fixed = []
        for a, s in zip(vals, shapes):
            if s is None:
                fixed.append(a)
                continue
            lead = rank - len(a.ty.shape.values)
            want = [d if k < lead or target[k] is None or (not concat and isinstance(s[k], tirx.IntImm) and
                                                           s[k].value == 1) else target[k]
                    for k, d in enumerate(s)][lead:]
            fixed.append(self.conform(a, want))
        return fixed

    def kv_view(self, v):
        """(buffer, rows, start) when IR value `v` is an in-place KV state: its values are the buffer's `rows`
        rows from row `start` along the state axis (0 for an append state; the rest is capacity); else None. A
        lowering that reads `v` in place asks; otherwise its argument is a copy of those rows."""
        view = self.views.get(id(v))
        return None if view is None else (view[0], view[1], view[3])

    def prim(self, d):
        """An int or PrimExpr dim as a Relax int64 PrimValue (a scalar argument of a TIR kernel)."""
        return self.relax.prim_value(self.tir.IntImm("int64", d) if isinstance(d, int) else d)

    def const(self, value, dtype: str):
        import numpy as np
        return self.relax.const(np.array(value, dtype=tvm_dtype(dtype)), tvm_dtype(dtype))

    # ---- the function -------------------------------------------------------------------------
    def build(self):
        relax, bb = self.relax, self.bb
        params = []
        buffers = {id(kv.state.input): kv for kv in self.inplace.values()}
        for v in self.graph.inputs:
            kv = buffers.get(id(v))
            ty = self.struct(v) if kv is None else self.relax.TensorType(
                [self.sym(kv.capacity) if a == kv.axis else d for a, d in enumerate(self.shape(v))],
                tvm_dtype(v.type.dtype))
            p = relax.Var(_ident(v.name), ty)
            self.env[id(v)] = p
            params.append(p)
        if buffers:
            params.append(relax.Var("kv_lengths", relax.ShapeType([self.sym(n) for n in kv_length_symbols(list(self.inplace.values()))])))
        prepacked = [(j, node, run_prepack(node)) for j, node in enumerate(self.graph.nodes)]
        # a weight every reader of which takes it prepacked is not a parameter: the VM would check it each call
        unpacked_reads = {id(v) for _, node, packed in prepacked for i, v in enumerate(node.inputs) if i not in packed}
        unpacked_reads |= {id(v) for v in self.graph.outputs}
        weights: list = [name for name, w in self.graph.weights.items() if id(w) in unpacked_reads]
        for name in weights:
            w = self.graph.weights[name]
            p = relax.Var(_ident(name), self.struct(w))
            self.env[id(w)] = p
            params.append(p)
        self.packed = {}    # (id(node), input index) -> the parameter holding that weight prepacked
        shared = {}         # (op, weight, input index, attrs) -> its parameter: a weight two nodes pack alike
        for j, node, packed in prepacked:
            for i, t in packed.items():
                key = (node.op, node.inputs[i].name, i, repr(sorted(node.attrs.items())), tuple(t.shape))
                if key not in shared:
                    shared[key] = relax.Var(_ident(f"{node.inputs[i].name}_packed{j}"),
                                            relax.TensorType(list(t.shape), str(t.dtype).removeprefix("torch.")))
                    params.append(shared[key])
                    weights.append({"node": j, "input": i, "weight": node.inputs[i].name})
                self.packed[(id(node), i)] = shared[key]
        with bb.function("main", params):
            with bb.dataflow():
                for node in self.graph.nodes:
                    if id(node) not in self.slides:
                        self._emit(node)
                for node in self.graph.nodes:   # rings slide last: the move overwrites rows attention reads
                    if id(node) in self.slides:
                        self._emit(node)
                outs = [self.env[id(v)] for v in self.graph.outputs]
                result = bb.emit_output(relax.Tuple(outs))
            bb.emit_func_output(result)
        return bb.get(), weights

    def _emit(self, node):
        low = get_lowering("cpu", node.op)
        if low is None:
            raise LoweringError(f"cpu target: op {node.op!r} has no lowering (node {node!r})")
        args = [self.packed[(id(node), i)] if (id(node), i) in self.packed else self._value(v)
                for i, v in enumerate(node.inputs)]
        if len(args) > 1 and (node.op == "concat" or _broadcasts(node.op)):
            args = self.aligned(node, args)
        try:
            kv = self.inplace.get(id(node))
            if id(node) in self.slides:
                out = self._kv_slide(self.slides[id(node)], args)
            else:
                out = low.fn(self, node, args) if kv is None else self._kv_append(kv, args)
        except LoweringError:
            raise
        except Exception as e:
            raise LoweringError(f"cpu target: lowering {node.op} failed at node {node!r}: "
                                f"{type(e).__name__}: {e}") from e
        outs = out if isinstance(out, (list, tuple)) else [out]
        if len(outs) != len(node.outputs):
            raise LoweringError(f"cpu target: lowering of {node.op} gave {len(outs)} values for "
                                f"{len(node.outputs)} outputs (node {node!r})")
        for v, o in zip(node.outputs, outs):
            o = self.bb.emit(o) if not isinstance(o, self.relax.Var) else o
            if kv is None and id(node) not in self.slides and isinstance(o.ty, self.relax.TensorType) \
                    and not isinstance(o.ty.shape, self.relax.ShapeExpr):
                o = self.conform(o, self.shape(v))   # Relax could not infer it: the IR's, checked when run
            self.env[id(v)] = self._check(v, o, node)
        if kv is not None:
            self.views[id(node.output)] = (self.env[id(node.output)], self.dim(node.output.type.shape[kv.axis]),
                                           kv.axis, self._kv_start(kv))

    def _value(self, v):
        """The Relax value of IR value `v` as its lowering reads it: an in-place KV state's rows in use are
        sliced out of the buffer (a copy; not emitted unless used: lowerings that read the buffer in place
        ask `kv_view` instead)."""
        view = self.views.get(id(v))
        if view is None:
            return self.env[id(v)]
        buf, rows, axis, start = view
        return self.relax.op.strided_slice(buf, [axis], [start], [start + rows], assume_inbound=True)

    def _kv_start(self, kv):
        return 0 if kv.start is None else self.sym(kv.start)

    def _kv_append(self, kv, args):
        """cache_append(past, new) as the new rows written into past's buffer at row `past` (in place)."""
        from .kernels import make_kv_append
        dt = tvm_dtype(kv.state.input.type.dtype)
        new = args[1] if str(self.bb.normalize(args[1]).ty.dtype) == dt else self.relax.op.astype(args[1], dt)
        gv = self.kernel(f"kv_append_axis{kv.axis}_{dt}", make_kv_append(kv.axis, dt))
        past = self.dim(kv.state.input.type.shape[kv.axis])
        buf = args[0]
        return self.relax.call_tir_inplace(gv, [buf, new, self.prim(self._kv_start(kv) + past)], [0],
                                           self.bb.normalize(buf).ty)

    def _kv_slide(self, kv, args):
        """A ring's cache_window in place: the buffer, its sink rows copied before the last `window` rows."""
        from .kernels import make_ring_slide
        buf = self.views[id(kv.node.output)][0]     # the append's result (args[0] would be a copy of the rows)
        if not kv.sinks:
            return buf     # the runner's view [start + total - window, ...) needs no write
        dt = tvm_dtype(kv.state.input.type.dtype)
        gv = self.kernel(f"ring_slide_axis{kv.axis}_{dt}_w{kv.window_rows}_s{kv.sinks}",
                         make_ring_slide(kv.axis, dt, kv.window_rows, kv.sinks))
        total = self.dim(kv.node.output.type.shape[kv.axis])
        return self.relax.call_tir_inplace(gv, [buf, self.prim(self._kv_start(kv)), self.prim(total)], [0],
                                           self.bb.normalize(buf).ty)

    def _check(self, v, o, node):
        """The emitted value has the IR value's dtype and rank (shapes are checked by the VM at run time)."""
        sinfo = o.ty
        want = tvm_dtype(v.type.dtype)
        if str(sinfo.dtype) != want or sinfo.ndim != v.type.rank:
            raise LoweringError(f"cpu target: lowering of {node.op} gave {sinfo} for %{v.name}: {v.type} "
                                f"(node {node!r})")
        return o


@dataclass(frozen=True)
class InplaceState:
    """An `append` state the cpu target updates in place: graph input `inputs[input]` (the past) is read only
    by `node` (its cache_append), whose output is graph output `outputs[output]`. The past's length along
    `axis` is symbol `length`; the new rows number `new_rows`: an int, or (input index, dim) of a graph input
    with exactly that dim. `capacity` names the buffer's row count in main's signature."""
    state: object
    node: object
    input: int
    output: int
    axis: int
    length: str
    new_rows: int | tuple
    capacity: str
    window: object = None       # a ring: its cache_window node (emitted last); None for an append state
    window_rows: int = 0        # a ring's `window` ...
    sinks: int = 0              # ... and `sinks`
    start: str | None = None    # a ring: the symbol of its first row in the buffer (in kv_lengths)

    @property
    def keep(self) -> int:
        """A ring's rows (window + sinks); 0 for an append state."""
        return self.window_rows + self.sinks if self.window is not None else 0


def inplace_states(graph) -> list[InplaceState]:
    """The graph's `append` and `ring` states of rank 4 whose past is read only by its cache_append and whose
    state-axis length is a plain symbol (a KV cache: [batch, heads, past, head_dim]), in state order; a ring's
    cache_append output must be no graph output and its cache_window's output only the state's (read by no
    node). Other states are lowered as written (a copy per call). Deterministic: build and runner agree on it
    from the graph alone."""
    out = []
    ins = {id(v): i for i, v in enumerate(graph.inputs)}
    outs = {id(v): i for i, v in enumerate(graph.outputs)}
    dims = {}
    for i, v in enumerate(graph.inputs):
        for j, d in enumerate(v.type.shape):
            dims.setdefault(d, (i, j))
    syms = {n for v in graph.inputs for d in v.type.shape if isinstance(d, str) for n in symbolic.free_symbols(d)}
    for k, st in enumerate(graph.states):
        past = st.input
        if st.kind not in ("append", "ring") or past.type.rank != 4:
            continue
        axis = st.axis % 4
        users = past.users
        window = _ring_window(st, users[0].output) if st.kind == "ring" and len(users) == 1 \
            and users[0].op == "cache_append" and id(users[0].output) not in outs else None
        if st.kind == "ring" and window is None:
            continue
        if len(users) != 1 or users[0].op != "cache_append" or users[0].inputs[0] is not past \
                or (users[0].output is not st.output if window is None else window.output is not st.output) \
                or any(v is past for v in users[0].inputs[1:]) \
                or sum(v is st.output for v in graph.outputs) != 1:   # returned once: main returns the buffer
            continue
        length = past.type.shape[axis]
        if not (isinstance(length, str) and length.isidentifier()):
            continue
        n = users[0].inputs[1].type.shape[axis]
        src = n if isinstance(n, int) else dims.get(n)
        if src is None or (isinstance(src, tuple) and graph.inputs[src[0]] is past):
            continue
        capacity = f"kv_capacity_{k}"
        if capacity in syms:
            continue
        if window is None:
            out.append(InplaceState(st, users[0], ins[id(past)], outs[id(st.output)], axis, length, src, capacity))
        elif f"kv_start_{k}" not in syms:
            out.append(InplaceState(st, users[0], ins[id(past)], outs[id(st.output)], axis, length, src, capacity,
                                    window, int(st.attrs["window"]), int(st.attrs["sinks"]), f"kv_start_{k}"))
    return out


def _ring_window(st, appended):
    """The cache_window node that slides ring state `st` in place, or None: it reads `appended` (the
    cache_append output), its output is the state's output and read by no node, and
    its attributes are the state's."""
    if st.output.producer is None or st.output.users:
        return None
    node = st.output.producer
    a = st.attrs
    if node.op != "cache_window" or node.inputs[0] is not appended or appended.producer is None \
            or node.attrs.get("axis") % 4 != a.get("axis") % 4 or node.attrs.get("window") != a.get("window") \
            or node.attrs.get("sinks", 0) != a.get("sinks", 0):
        return None
    return node


def kv_length_symbols(kvs: list[InplaceState]) -> list[str]:
    """The state-axis symbols of in-place states `kvs` (inplace_states), each once, in order, then the rings'
    start symbols: the dims of main's `kv_lengths`."""
    return list(dict.fromkeys([kv.length for kv in kvs] + [kv.start for kv in kvs if kv.start is not None]))


def run_prepack(node) -> dict:
    """{input index: tensor} from the node's "cpu" prepack hook on its weight inputs ({} when it has none or
    raises SlowPath). The build declares a parameter per packed tensor; the runner packs again at load."""
    from ..torch_kernels import SlowPath
    low = get_lowering("cpu", node.op)
    if low is None or low.prepack is None:
        return {}
    consts = {i: v.tensor for i, v in enumerate(node.inputs) if v.is_weight}
    try:
        packed = low.prepack(node, consts)
    except SlowPath:
        return {}
    bad = set(packed) - set(consts)
    if bad:
        raise LoweringError(f"cpu target: prepack for {node.op} replaced inputs {sorted(bad)}, which are not "
                            f"weights of node {node!r}")
    return packed


_WHY = {op: "a recurrence over the time steps, which this target does not lower" for op in ("lstm", "recurrent")}


def to_relax(graph):
    """(IRModule, parameters after the graph inputs: weight names, then {node, input, weight} for each
    prepacked weight). Raises LoweringError naming unsupported ops."""
    missing = unsupported_ops(graph)
    if missing:
        counts = {op: sum(n.op == op for n in graph.nodes) for op in missing}
        what = ", ".join(f"{op} ({k} node{'s' if k > 1 else ''}{', ' + _WHY[op] if op in _WHY else ''})"
                         for op, k in counts.items())
        raise LoweringError(f"target 'cpu' has no lowering for op{'s' if len(missing) > 1 else ''} {what} "
                            f"(graph @{graph.name}); `slimgraph ops --target cpu` lists what it lowers, or use "
                            "target='torch'")
    from . import relax_lower, relax_lower_index, relax_lower_more  # noqa: F401  (fill the table; also done by LOWERING_MODULES)
    return Lowerer(graph).build()


def _broadcasts(op: str) -> bool:
    from ...ir.registry import get_op
    return get_op(op).has("elementwise")


def _ident(name: str) -> str:
    import re
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else "v_" + s
