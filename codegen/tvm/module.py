"""IR graph -> TVM Relax IRModule, through the "cpu" lowering table (codegen/lowering.py).

    mod, weights = to_relax(graph)      # IRModule with one function "main"; weights: its parameters after
                                        # the inputs: names, then {"node", "input", "weight"} per prepacked one

`main(*graph inputs, *weights)` returns a tuple of the graph's outputs. Weights are parameters, not
bound constants: the compiled library holds code only, and the runner passes the graph's own tensors
(no copy in the library, none in an artifact). A lowering with a `prepack` hook (f32 `linear`: weight
panels) gets its weight in the packed layout as one more parameter (one per distinct weight), which the
runner makes at load by running the same hook (memory: the packed copy sits beside the graph's tensor).
Symbolic dims become `tir.Var`s (int64) named after the IR symbols; dims computed from them (`past+seq`)
become PrimExprs, so one library serves every batch, sequence and cache length.

Each node calls its op's "cpu" lowering `fn(lw, node, args) -> relax.Expr | [relax.Expr]`, where `lw`
is the `Lowerer` (its BlockBuilder `lw.bb`, `lw.dim`, `lw.shape`, `lw.const`) and `args` the Relax
values of the node's inputs. An op without a lowering is refused before any TVM work
(`unsupported_ops`).
"""
from __future__ import annotations
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
        if isinstance(e, sympy.floor) and isinstance(e.args[0], sympy.Mul):
            num, den = e.args[0].as_numer_denom()
            return tir.floordiv(self._prim(num, text), self._prim(den, text))
        if isinstance(e, sympy.ceiling):
            num, den = e.args[0].as_numer_denom()
            return tir.floordiv(self._prim(num, text) + self._prim(den, text) - 1, self._prim(den, text))
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

    def const(self, value, dtype: str):
        import numpy as np
        return self.relax.const(np.array(value, dtype=tvm_dtype(dtype)), tvm_dtype(dtype))

    # ---- the function -------------------------------------------------------------------------
    def build(self):
        relax, bb = self.relax, self.bb
        params = []
        for v in self.graph.inputs:
            p = relax.Var(_ident(v.name), self.struct(v))
            self.env[id(v)] = p
            params.append(p)
        weights: list = list(self.graph.weights)
        for name in weights:
            w = self.graph.weights[name]
            p = relax.Var(_ident(name), self.struct(w))
            self.env[id(w)] = p
            params.append(p)
        self.packed = {}    # (id(node), input index) -> the parameter holding that weight prepacked
        shared = {}         # (op, weight, input index, attrs) -> its parameter: a weight two nodes pack alike
        for j, node in enumerate(self.graph.nodes):
            for i, t in run_prepack(node).items():
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
                    self._emit(node)
                outs = [self.env[id(v)] for v in self.graph.outputs]
                result = bb.emit_output(relax.Tuple(outs))
            bb.emit_func_output(result)
        return bb.get(), weights

    def _emit(self, node):
        low = get_lowering("cpu", node.op)
        if low is None:
            raise LoweringError(f"cpu target: op {node.op!r} has no lowering (node {node!r})")
        args = [self.packed[(id(node), i)] if (id(node), i) in self.packed else self.env[id(v)]
                for i, v in enumerate(node.inputs)]
        try:
            out = low.fn(self, node, args)
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
            self.env[id(v)] = self._check(v, o, node)

    def _check(self, v, o, node):
        """The emitted value has the IR value's dtype and rank (shapes are checked by the VM at run time)."""
        sinfo = o.ty
        want = tvm_dtype(v.type.dtype)
        if str(sinfo.dtype) != want or sinfo.ndim != v.type.rank:
            raise LoweringError(f"cpu target: lowering of {node.op} gave {sinfo} for %{v.name}: {v.type} "
                                f"(node {node!r})")
        return o


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


def to_relax(graph):
    """(IRModule, parameters after the graph inputs: weight names, then {node, input, weight} for each
    prepacked weight). Raises LoweringError naming unsupported ops."""
    missing = unsupported_ops(graph)
    if missing:
        raise LoweringError(f"target 'cpu' has no lowering for op{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)} (graph @{graph.name}); `slimgraph ops --target cpu` lists "
                            "what it lowers, or use target='torch'")
    from . import relax_lower  # noqa: F401  (fills the table; also done by LOWERING_MODULES)
    return Lowerer(graph).build()


def _ident(name: str) -> str:
    import re
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else "v_" + s
