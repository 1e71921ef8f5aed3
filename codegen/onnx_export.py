"""slimgraph IR -> ONNX ModelProto (default domain opset 18, 23 with fused Attention; int4 `qlinear` as com.microsoft MatMulNBits).

    model = export_onnx(graph)            # onnx.ModelProto, passes onnx.checker
    save_onnx(graph, "out/model.onnx")    # written atomically (temp file + rename)

Each IR op has an emitter, its "onnx" lowering (codegen/lowering.py; the emitters are in
codegen/onnx_emitters.py), that appends ONNX nodes. IR ops promote dtypes the
way torch does while ONNX wants equal operand types, so emitters cast operands to the IR
result type. Symbolic dims in attributes (a `reshape` to `[b, seq, 64]`) become run-time
shape arithmetic: each symbol is read once from the graph input that binds it (`Shape`),
and expressions such as `past+seq` are built from sympy's tree. Symbolic input/output dims
become `dim_param`s; weights become initializers.
"""
from __future__ import annotations
import os

import numpy as np
import sympy

from ..cache import atomic_write
from ..ir import progress
from ..ir import symbolic as S
from .lowering import get_lowering, lowerings

OPSET = 18
MS_DOMAIN = "com.microsoft"
INSTALL_HINT = "pip install 'slimgraph[onnx]'"
ONNX_DTYPES = {"f32": 1, "u8": 2, "i8": 3, "i16": 5, "i32": 6, "i64": 7, "bool": 9, "f16": 10, "f64": 11,
               "bf16": 16}
INT64_MAX, INT64_MIN = 2 ** 63 - 1, -2 ** 63



class OnnxExportError(ValueError):
    pass


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"ONNX export needs the 'onnx' package: {INSTALL_HINT}") from e
    return onnx


class Exporter:
    def __init__(self, graph, fuse: bool = True, int4_accuracy_level: int = 0):
        self.onnx = _onnx()
        self.fuse = fuse  # emit fused standard ops (opset-23 Attention) where they fit
        self.int4_accuracy_level = int4_accuracy_level  # MatMulNBits accuracy_level (0: f32 compute)
        self.opset = OPSET  # raised by an emitter that needs a newer op
        self.graph = graph
        self.nodes, self.inits = [], []
        self.names: dict[int, str] = {}  # id(Value) -> ONNX name
        self._used: set[str] = set()
        self._consts: dict = {}
        self._symbols: dict[str, str] = {}  # symbol -> name of a 1-element i64 tensor
        self._dim_cache: dict = {}  # dims tuple / sympy expr -> name: shape arithmetic is emitted once
        self.uses_ms = False

    # ---- names and constants ---------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        name, i = hint, 0
        while name in self._used:
            i += 1
            name = f"{hint}_{i}"
        self._used.add(name)
        return name

    def name(self, v) -> str:
        if id(v) not in self.names:
            self.names[id(v)] = self.fresh(v.name)
        return self.names[id(v)]

    def const(self, array, hint="const") -> str:
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh(hint)
            self.inits.append(self.onnx.numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64), "ints")

    def scalar(self, value, dtype: str) -> str:
        from ..ir.dtypes import to_torch
        import torch
        return self.const(torch.tensor(value, dtype=to_torch(dtype)).numpy() if dtype != "bf16" else
                          np.asarray(value, dtype=np.float32), f"c_{dtype}")

    def node(self, op_type: str, inputs, n_out: int = 1, domain: str = "", **attrs) -> list[str]:
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outs, domain=domain or None,
                                                     name=self.fresh(f"n_{op_type}"), **attrs))
        return outs

    def one(self, op_type: str, *inputs, **attrs) -> str:
        return self.node(op_type, inputs, **attrs)[0]

    def cast(self, name: str, src: str, dst: str) -> str:
        return name if src == dst else self.one("Cast", name, to=ONNX_DTYPES[dst])

    # ---- symbolic dims -> run-time tensors -------------------------------------------------------------
    def dims(self, dims) -> str:
        """A 1-d i64 tensor of (possibly symbolic) dims."""
        if all(isinstance(d, int) for d in dims):
            return self.ints(list(dims))
        key = ("dims", tuple(dims))
        if key not in self._dim_cache:
            parts = [self.ints([d]) if isinstance(d, int) else self.dim(d) for d in dims]
            self._dim_cache[key] = parts[0] if len(parts) == 1 else self.one("Concat", *parts, axis=0)
        return self._dim_cache[key]

    def dim(self, d) -> str:
        """A 1-element i64 tensor holding dim `d` at run time."""
        if isinstance(d, int):
            return self.ints([d])
        return self._expr(S._expr(d))

    def _expr(self, e) -> str:
        if e not in self._dim_cache:
            self._dim_cache[e] = self._expr_uncached(e)
        return self._dim_cache[e]

    def _expr_uncached(self, e) -> str:
        if e.is_Integer:
            return self.ints([int(e)])
        if e.is_Symbol:
            return self._symbol(str(e))
        if isinstance(e, (sympy.floor, sympy.ceiling)):  # floor(n/d), n/d possibly with rational terms
            num, den = sympy.together(e.args[0]).as_numer_denom()
            if den.is_Integer and int(den) > 0:
                sign = 1 if isinstance(e, sympy.floor) else -1
                n, d = self._expr(sympy.expand(sign * num)), self.ints([int(den)])
                q = self.one("Div", self.one("Sub", n, self.one("Mod", n, d)), d)  # exact floor division
                return q if sign == 1 else self.one("Neg", q)
        args = [self._expr(a) for a in e.args]
        if e.is_Add or e.is_Mul:
            acc = args[0]
            for a in args[1:]:
                acc = self.one("Add" if e.is_Add else "Mul", acc, a)
            return acc
        if isinstance(e, sympy.floor) and e.args[0].is_Mul:  # floor(a/b): integer division
            num, den = e.args[0].as_numer_denom()
            return self.one("Div", self._expr(num), self._expr(den))
        if isinstance(e, (sympy.Max, sympy.Min)):
            return self.one("Max" if isinstance(e, sympy.Max) else "Min", *args)
        raise OnnxExportError(f"cannot export symbolic dim expression {e} (unsupported {type(e).__name__})")

    def _symbol(self, sym: str) -> str:
        if sym not in self._symbols:
            for v in self.graph.inputs:
                for i, d in enumerate(v.type.shape):
                    if d == sym:
                        self._symbols[sym] = self.one("Shape", self.name(v), start=i, end=i + 1)
                        return self._symbols[sym]
            raise OnnxExportError(f"symbolic dim {sym!r} is bound by no graph input")
        return self._symbols[sym]

    # ---- the model -------------------------------------------------------------------------------------
    def value_info(self, v, name: str):
        shape = [d if isinstance(d, int) else (d if S.free_symbols(d) == {d} else None) for d in v.type.shape]
        return self.onnx.helper.make_tensor_value_info(name, ONNX_DTYPES[v.type.dtype], shape)

    def lower(self, node):
        low = get_lowering("onnx", node.op)
        if low is None:
            raise OnnxExportError(f"IR op {node.op!r} has no ONNX lowering ({node!r}); supported: "
                                  f"{', '.join(sorted(lowerings('onnx')))}")
        start = len(self.nodes)
        outs = low.fn(self, node, [self.name(v) for v in node.inputs])
        for n in self.nodes[start:]:  # which IR op each ONNX node lowers (errors name it)
            n.doc_string = f"IR op {node.op} on {'/'.join(dict.fromkeys(v.type.dtype for v in node.inputs)) or '-'}"
        for v, o in zip(node.outputs, outs):
            self.names[id(v)] = o

    def run(self):
        onnx, g = self.onnx, self.graph
        inputs = [self.value_info(v, self.name(v)) for v in g.inputs]
        with progress.bar(len(g.weights) + len(g.nodes), "onnx export", "item") as bar:
            for w in g.weights.values():
                bar.update(1)
                if not w.unused:
                    self.inits.append(_tensor_proto(onnx, w.tensor, self.name(w)))
            for node in g.nodes:
                bar.update(1)
                self.lower(node)
        outputs = []
        for v in g.outputs:
            name = self.names.get(id(v)) or self.name(v)
            out_name = self.fresh(f"out_{v.name}") if name in {i.name for i in inputs} or name in \
                {o.name for o in outputs} or v.is_weight else name
            if out_name != name:
                self.nodes.append(onnx.helper.make_node("Identity", [name], [out_name]))
            outputs.append(self.value_info(v, out_name))
        used = {i for n in self.nodes for i in n.input} | {o.name for o in outputs}
        self.inits = [t for t in self.inits if t.name in used]  # e.g. a weight only read pre-transposed
        opsets = [onnx.helper.make_opsetid("", self.opset)] + ([onnx.helper.make_opsetid(MS_DOMAIN, 1)] if self.uses_ms else [])
        graph = onnx.helper.make_graph(self.nodes, g.name, inputs, outputs, self.inits)
        return onnx.helper.make_model(graph, opset_imports=opsets, producer_name="slimgraph")


def _tensor_proto(onnx, t, name):
    import torch
    if t.dtype == torch.bfloat16:
        arr = t.detach().contiguous().view(torch.int16).numpy().view(np.uint16)
        tp = onnx.helper.make_tensor(name, ONNX_DTYPES["bf16"], list(t.shape), arr.tobytes(), raw=True)
        return tp
    return onnx.numpy_helper.from_array(t.detach().contiguous().numpy(), name)


def export_onnx(graph, check: bool = True, fuse: bool = True, int4_accuracy_level: int = 0):
    """Export `graph` as an onnx.ModelProto; `check` runs onnx.checker on it. `fuse` emits
    `attention` as one opset-23 ONNX `Attention` node where it fits (the model's opset becomes
    23); fuse=False keeps opset 18 and the decomposed MatMul/Softmax form. `int4_accuracy_level`
    is MatMulNBits' accuracy_level: 0 computes in f32 like the IR; 4 lets ORT quantize the
    activations to int8 (faster, lossier)."""
    if int4_accuracy_level not in (0, 1, 2, 3, 4):
        raise OnnxExportError(f"int4_accuracy_level must be 0-4, got {int4_accuracy_level}")
    model = Exporter(graph, fuse=fuse, int4_accuracy_level=int4_accuracy_level).run()
    if check:
        onnx = _onnx()
        try:
            onnx.checker.check_model(model, full_check=False)
        except onnx.checker.ValidationError as e:
            raise OnnxExportError(f"exported model of graph @{graph.name} fails onnx.checker: {e}") from e
    return model


def save_onnx(graph, path: str):
    """Write the exported model to `path` atomically: a failed export leaves nothing behind."""
    data = export_onnx(graph).SerializeToString()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    atomic_write(path, data)
    return path

