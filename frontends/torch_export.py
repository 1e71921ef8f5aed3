"""torch.export frontend: an `nn.Module` (or an `ExportedProgram`) -> slimgraph IR.

    imp = import_module(model, (ids,), dynamic_shapes=({1: Dim("seq")},))
    imp.graph                                  # IR with %input_ids: i64[1,seq]
    flat = imp.flatten_inputs(ids)             # the same call the model takes
    out = imp.unflatten_outputs(ir.run(imp.graph, *flat))   # the model's output structure

The exported ATen graph is walked once; `aten.py` holds one rule per ATen op. Ops without a rule
(in-place ops, composites, rarer core ops) are first decomposed by torch's own decompositions
(`aten_decomp.py`; `Imported.decomposed` lists them); the rest keep their exported form.
SymInts become symbolic dims named after the user's `torch.export.Dim`s; parameters, buffers and
lifted constants become weights named by their FQN (the tensors are shared, not copied).
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
import torch.fx
from torch.utils import _pytree as pytree

from ..ir import Graph, TensorType, Value, from_torch, symbolic
from ..ir.dtypes import FLOAT_DTYPES
from . import aten
from .aten_decomp import decompose_unsupported

__all__ = ["Imported", "import_module", "import_exported_program", "TraceError", "ConversionError",
           "UnsupportedOpError"]


class TraceError(RuntimeError):
    """torch.export itself failed on the model (its error is chained as __cause__ and quoted whole)."""


class ConversionError(RuntimeError):
    """An ATen node could not be converted; the message names the node and the user's source line."""


class UnsupportedOpError(ConversionError):
    """The exported graph uses an ATen op (or a variant of one) that the frontend has no rule for."""


@dataclass
class Imported:
    graph: Graph
    in_spec: Any                       # pytree spec of the flattened (args, kwargs) of the call
    out_spec: Any                      # pytree spec of the model's outputs (e.g. CausalLMOutputWithPast)
    input_names: list[str]
    output_names: list[str] = field(default_factory=list)
    tensor_leaves: list[int] = field(default_factory=list)  # flat-input positions that are graph inputs
    constant_leaves: dict[int, Any] = field(default_factory=dict)  # flat-input position -> baked-in value
    decomposed: list[str] = field(default_factory=list)  # ATen ops without a rule, decomposed by torch
    notes: list[str] = field(default_factory=list)       # what the import changed (dropped mutations)

    def flatten_inputs(self, *args, **kwargs) -> list[torch.Tensor]:
        """The graph inputs for the call `model(*args, **kwargs)`; non-tensor arguments were baked in."""
        order = self.in_spec.child(1).context if self.in_spec.num_children == 2 else []
        kwargs = {k: kwargs[k] for k in order if k in kwargs} | kwargs
        leaves, spec = pytree.tree_flatten((args, kwargs))
        if spec != self.in_spec:
            raise TypeError(f"the call's argument structure {spec} differs from the exported one "
                            f"{self.in_spec}")
        for i, v in self.constant_leaves.items():
            if leaves[i] != v:
                raise ValueError(f"input #{i} was {v!r} when the graph was exported (it is baked in), "
                                 f"got {leaves[i]!r}: export again with this value")
        return [leaves[i] for i in self.tensor_leaves]

    def unflatten_outputs(self, outputs) -> Any:
        return pytree.tree_unflatten(list(outputs), self.out_spec)


def import_module(model: torch.nn.Module, args=(), kwargs=None, dynamic_shapes=None, strict: bool = False,
                  **options) -> Imported:
    """torch.export `model` on example inputs and convert the result. `options` go to
    `import_exported_program` (input_names, output_names, strip_prefix)."""
    kwargs = kwargs or {}
    try:
        with torch.no_grad():
            ep = torch.export.export(model, tuple(args), kwargs=kwargs, dynamic_shapes=dynamic_shapes,
                                     strict=strict)
    except Exception as e:  # noqa: BLE001 - torch's own error, kept whole (and chained), with the model and a way out
        raise TraceError(
            f"torch.export could not trace {type(model).__name__} on the example inputs (before any slimgraph "
            f"conversion): {type(e).__name__}: {e}\n  slimgraph converts what torch.export traces. Usual fixes: "
            "Python control flow on tensor values -> torch.where or torch.cond; a dim the model's code fixes -> a "
            "static example (no dynamic_shapes entry for it); or export to ONNX (torch.onnx.export) and optimize "
            "the .onnx file") from e
    names = user_dim_names(model, tuple(args), kwargs, dynamic_shapes)
    return import_exported_program(ep, dim_names=names, **options)


def user_dim_names(model, args, kwargs, dynamic_shapes) -> list[dict[int, str]]:
    """For each flattened input leaf, {dim index: the user's Dim name}."""
    leaves = pytree.tree_leaves((args, kwargs))
    if dynamic_shapes is None:
        return [{} for _ in leaves]
    from torch.export.dynamic_shapes import _combine_args, _tree_map_with_path
    by_id: dict[int, dict[int, str]] = {}

    def visit(path, t, spec):
        if isinstance(t, torch.Tensor) and spec is not None:
            items = spec.items() if isinstance(spec, dict) else enumerate(spec)
            by_id[id(t)] = {i: d.__name__ for i, d in items if d is not None and hasattr(d, "__name__")}

    combined = _combine_args(model, args, kwargs)
    if isinstance(dynamic_shapes, (tuple, list)):  # positional specs line up with the bound arguments
        combined = type(dynamic_shapes)(combined.values())
    _tree_map_with_path(visit, combined, dynamic_shapes, tree_name="inputs")
    return [by_id.get(id(t), {}) for t in leaves]


def import_exported_program(ep, *, dim_names: list[dict[int, str]] | None = None, input_names=None,
                            output_names=None, strip_prefix: str = "", graph_name: str = "main") -> Imported:
    """Convert an ExportedProgram. `dim_names` names the symbolic dims of each flat user input
    (unnamed ones become `<input>_d<i>`); `strip_prefix` is removed from weight FQNs."""
    ep, decomposed = decompose_unsupported(ep)
    cv = Converter(ep, dim_names, input_names, strip_prefix, graph_name)
    cv.run()
    g = cv.graph
    _drop_dead(g)
    out_names = output_names or _output_names(ep.call_spec.out_spec, len(g.outputs))
    for v, name in zip(g.outputs, out_names):
        _rename(g, v, name)
    return Imported(g, ep.call_spec.in_spec, ep.call_spec.out_spec, [v.name for v in g.inputs],
                    [v.name for v in g.outputs], cv.tensor_leaves, cv.constant_leaves, decomposed, cv.notes)


def _drop_dead(g: Graph):
    """Erase nodes and weights nothing uses (export keeps e.g. mask-building steps whose result
    is dropped)."""
    for node in reversed(g.nodes):
        if all(o.unused for o in node.outputs):
            g.erase(node)
    for name, w in list(g.weights.items()):
        if w.unused:
            g.remove_weight(name)


# ---- naming ---------------------------------------------------------------------------------------
def _output_names(spec, n) -> list[str]:
    paths = [p for p, _ in pytree.tree_flatten_with_path(pytree.tree_unflatten(list(range(n)), spec))[0]]
    names = [re.sub(r"[^A-Za-z0-9_]+", "_", pytree.keystr(p)).strip("_") for p in paths]
    return [("output_" + s) if s[:1].isdigit() else (s or "output") for s in names]


def _rename(g: Graph, v: Value, name: str):
    """Give a graph output a readable name, unless another value already has it."""
    if v.kind != "node" or v.name == name or g.has_name(name):
        return
    g.rename(v, name)


def _source_line(node) -> str:
    """The innermost frame of the user's code that produced `node`, from torch.export's stack trace."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)', node.meta.get("stack_trace") or "")
    if not frames:
        return "unknown source (no stack trace recorded)"
    f, line, fn, code = frames[-1]
    return f"{f}:{line} in {fn}: {code.strip()}"


@dataclass(frozen=True)
class SymDim:
    """An FX node whose value is a SymInt (sym_size, or arithmetic on sizes): a dim expression."""
    dim: int | str


@dataclass
class LazyWeight:
    name: str
    tensor: torch.Tensor


# ---- the converter -------------------------------------------------------------------------------------
class Converter:
    """Walks the exported FX graph; `aten.RULES` do the per-op work through the helpers below."""

    def __init__(self, ep, dim_names, input_names, strip_prefix, graph_name):
        self.ep, self.graph = ep, Graph(graph_name)
        self.dim_names, self.input_names, self.strip_prefix = dim_names, input_names, strip_prefix
        self.env: dict[torch.fx.Node, Any] = {}
        self.symbols: dict[str, str] = {}       # torch symbol -> IR symbol name
        self.weights: dict[tuple, Value] = {}   # tensor identity -> weight (tied weights share one)
        self.consts: dict[tuple, Value] = {}
        self._dims: dict[Any, int | str] = {}   # torch size expression -> IR dim
        self.tensor_leaves: list[int] = []
        self.constant_leaves: dict[int, Any] = {}
        self.node: torch.fx.Node | None = None
        self.notes: list[str] = []

    # -- driver
    def run(self):
        self._placeholders()
        outs = self._walk(self.ep.graph_module)
        self.graph.set_outputs([self.value(a) for a in self._user_outputs(outs)])

    def _user_outputs(self, outs):
        """The model's own outputs. A functionalized program also returns the new values of inputs and
        buffers the model mutated in place; the compiled graph does not write them back (warned)."""
        import warnings
        from torch.export.graph_signature import OutputKind
        specs = self.ep.graph_signature.output_specs
        mutated = [f"{s.kind.name.lower()} {s.target}" for s in specs if s.kind != OutputKind.USER_OUTPUT]
        if mutated:
            note = (f"the model mutates {', '.join(mutated)} in place; the compiled graph computes the same "
                    "outputs but does not write those values back")
            self.notes.append(note)
            warnings.warn(f"torch.export frontend: {note}", stacklevel=4)
        return [o for o, s in zip(outs, specs, strict=True) if s.kind == OutputKind.USER_OUTPUT]

    def _walk(self, module):
        """Convert `module`'s call_function nodes; returns its output arguments."""
        for node in module.graph.nodes:
            if node.op == "call_function":
                self.node = node
                self.env[node] = self._convert(node)
            elif node.op == "get_attr":  # a submodule that a higher-order op runs
                self.env[node] = getattr(module, node.target)
            elif node.op == "output":
                return node.args[0]
        return ()

    def _inline(self, node):
        """torch.export wraps regions under `torch.enable_grad()`/`autocast(enabled=False)` in a
        higher-order op over a submodule: for inference both just run the submodule."""
        name = node.target.name()
        if name not in ("wrap_with_set_grad_enabled", "wrap_with_autocast") or (
                name == "wrap_with_autocast" and node.args[2]):
            raise self.unsupported(f"higher-order op {name} "
                                   "(only grad-mode and disabled-autocast regions are inlined)")
        i = next(i for i, a in enumerate(node.args) if isinstance(a, torch.fx.Node) and a.op == "get_attr")
        sub = self.env[node.args[i]]
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        for ph, arg in zip(placeholders, node.args[i + 1:], strict=True):
            self.env[ph] = self.env[arg] if isinstance(arg, torch.fx.Node) else arg
        outs = self._walk(sub)
        self.node = node
        return tuple(self.env[o] if isinstance(o, torch.fx.Node) else o for o in outs)

    def _placeholders(self):
        from torch.export.graph_signature import InputKind
        nodes = {n.name: n for n in self.ep.graph.nodes if n.op == "placeholder"}
        users = [nodes[s.arg.name] for s in self.ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
        self._user_nodes = users
        for index, node in enumerate(users):  # name every input's symbols first: a later input may define
            self._name_input_symbols(node, index)   # a symbol that an earlier one's shape uses (mask: past+seq)
        user = 0
        for spec in self.ep.graph_signature.input_specs:
            node = nodes[spec.arg.name]
            if spec.kind == InputKind.USER_INPUT:
                self.env[node] = self._user_input(node, user)
                user += 1
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                t = self.ep.state_dict.get(spec.target)
                t = self.ep.constants[spec.target] if t is None else t
                name = spec.target.removeprefix(self.strip_prefix) if self.strip_prefix else spec.target
                self.env[node] = LazyWeight(name, t.detach())
            else:
                raise ConversionError(f"torch.export frontend: input {spec.arg.name} of kind "
                                      f"{spec.kind.name} is not supported (custom objects and tokens "
                                      "have no IR equivalent)")

    def _user_input(self, node, index):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            self.constant_leaves[index] = val  # e.g. use_cache=False: baked into the graph
            return val
        name = self.input_names[len(self.tensor_leaves)] if self.input_names else node.name
        self.tensor_leaves.append(index)
        return self.graph.add_input(name, self.tensor_type(val))

    def _name_input_symbols(self, node, index):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            return
        names = self.dim_names[index] if self.dim_names and index < len(self.dim_names) else {}
        tensors_before = sum(isinstance(n.meta.get("val"), torch.Tensor) for n in self._user_nodes[:index])
        name = self.input_names[tensors_before] if self.input_names else node.name
        for i, d in enumerate(val.shape):
            if isinstance(d, torch.SymInt) and isinstance(d.node.expr, sympy.Symbol):
                self._name_symbol(str(d.node.expr), names.get(i), f"{name}_d{i}")

    def _name_symbol(self, sym, dim_name, fallback):
        """Dims with the same Dim name are one dimension (torch.export's rule), even where export
        made several symbols for it: they share the name. Unnamed ones get a unique fallback."""
        if sym in self.symbols:
            return
        if dim_name:
            self.symbols[sym] = dim_name
            return
        taken, name, k = set(self.symbols.values()), fallback, 0
        while name in taken:
            k += 1
            name = f"{fallback}_{k}"
        self.symbols[sym] = name

    def _convert(self, node):
        val = node.meta.get("val")
        target = self.target
        is_size = isinstance(val, (torch.SymInt, int)) and not isinstance(val, bool)
        if is_size and node.target is not operator.getitem and target not in aten.SCALAR_TENSOR_OPS:
            return SymDim(self.to_dim(val))
        if isinstance(val, (torch.SymBool, torch.SymFloat, bool, float)) and not target.startswith("aten."):
            return None  # guards and scalar arithmetic that only feed asserts
        if node.target is operator.getitem:
            return self._getitem(node)
        if isinstance(node.target, torch._ops.HigherOrderOperator):
            return self._inline(node)
        if target in aten.IGNORED:
            return None
        if target in aten.IDENTITY:  # pass the operand through untouched (a weight stays lazy)
            src = node.args[0]
            return self.env[src] if isinstance(src, torch.fx.Node) else self.value(src)
        fn = aten.RULES.get(target)
        if fn is None:
            raise self.unsupported(f"unsupported ATen op {target}")
        source = {"source": _source_line(node)} if node.meta.get("stack_trace") else {}
        try:
            with self.graph.meta_scope(**source):   # node.meta["source"]: the user's line
                out = fn(self, self.bind(node))
        except ConversionError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raise any rule failure with the node and source
            raise ConversionError(f"torch.export frontend: converting {target} (FX node %{node.name}) "
                                  f"failed: {type(e).__name__}: {e}\n  from: {_source_line(node)}") from e
        self._check(node, out)
        return out

    def _getitem(self, node):
        src, i = node.args
        got = self.env[src][i]
        if got is None and not node.users:
            return None     # an unused second output (F.adaptive_max_pool1d takes only the values)
        if got is None:
            raise self.unsupported(f"output {i} of {src.target} (only the first output is supported)")
        return got

    def _check(self, node, out):
        """The converted value must have exactly the type torch.export recorded (catches rule bugs)."""
        vals, outs = node.meta.get("val"), out
        if isinstance(vals, torch.Tensor):
            vals, outs = [vals], [out]
        elif not isinstance(vals, (list, tuple)):   # a scalar (e.g. .item()'s SymFloat): nothing to compare
            return
        for want, got in zip(vals, outs if isinstance(outs, (list, tuple)) else [outs]):
            if not isinstance(want, torch.Tensor) or got is None:
                continue
            t = self.tensor_type(want)
            if not isinstance(got, Value) or not got.type.matches(t):
                raise ConversionError(f"torch.export frontend: {self.target} (FX node %{node.name}) "
                                      f"converted to {got!r} but torch says {t}\n"
                                      f"  from: {_source_line(node)}")

    # -- helpers used by the rules
    @property
    def target(self) -> str:
        return str(self.node.target) if self.node is not None else ""

    def bind(self, node) -> dict[str, Any]:
        schema = node.target._schema
        a: dict[str, Any] = {}
        for i, arg in enumerate(schema.arguments):
            if i < len(node.args):
                a[arg.name] = node.args[i]
            elif arg.name in node.kwargs:
                a[arg.name] = node.kwargs[arg.name]
            elif arg.has_default_value():
                a[arg.name] = arg.default_value
            else:
                a[arg.name] = None
        return a

    def tensor_type(self, t: torch.Tensor) -> TensorType:
        return TensorType(from_torch(t.dtype), tuple(self.to_dim(d) for d in t.shape))

    def to_dim(self, d) -> int | str:
        if isinstance(d, int):
            return d
        expr = d.node.expr
        if expr.is_number:
            return int(expr)
        if expr not in self._dims:
            self._dims[expr] = self._expr_to_dim(expr)
        return self._dims[expr]

    def _expr_to_dim(self, expr) -> str:
        subs = {}
        for s in expr.free_symbols:
            if str(s) not in self.symbols:
                raise self.unsupported(f"size {expr} uses {s}, which no input shape defines "
                                       "(data-dependent sizes are not supported)")
            subs[s] = sympy.Symbol(self.symbols[str(s)], integer=True)
        expr = expr.xreplace(subs).replace(lambda e: type(e).__name__ in ("FloorDiv", "CleanDiv"),
                                           lambda e: sympy.floor(e.args[0] / e.args[1]))
        return symbolic.canon(str(expr))

    def out_val(self):
        return self.node.meta["val"]

    def out_dtype(self) -> str:
        return from_torch(self.out_val().dtype)

    def out_shape(self) -> tuple:
        return self.tensor_type(self.out_val()).shape

    def out_shapes(self) -> list[tuple]:
        return [self.tensor_type(t).shape for t in self.out_val()]

    def value(self, arg, dtype: str | None = None) -> Value:
        """An IR value for an FX argument: a converted node, a weight, a SymInt, or a Python scalar."""
        if isinstance(arg, Value):
            return arg
        if isinstance(arg, torch.fx.Node):
            got = self.env[arg]
            if isinstance(got, Value):
                return got
            if isinstance(got, LazyWeight):
                return self._weight(got)
            if isinstance(got, SymDim):
                return self._dim_value(got.dim)
            if isinstance(got, (bool, int, float)):
                arg = got
            else:
                raise self.unsupported(f"operand %{arg.name} ({type(got).__name__}) as a tensor")
        if isinstance(arg, bool):
            return self._const(arg, "bool")
        if isinstance(arg, int):
            return self._const(arg, dtype if dtype and dtype not in FLOAT_DTYPES else "i64")
        if isinstance(arg, float):
            return self._const(arg, dtype if dtype in FLOAT_DTYPES else "f32")
        raise self.unsupported(f"operand {arg!r} of type {type(arg).__name__}")

    def _weight(self, w: LazyWeight) -> Value:
        t = w.tensor
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype) if t.numel() else (id(t),)
        if key not in self.weights:
            self.weights[key] = self.graph.add_weight(w.name, t)  # shared storage, no copy
        return self.weights[key]

    def _const(self, v, dtype) -> Value:
        key = (type(v), v, dtype)
        if key not in self.consts:
            self.consts[key] = self.graph.op("constant", value=v, dtype=dtype)
        return self.consts[key]

    def _dim_value(self, d) -> Value:
        if isinstance(d, int):
            return self._const(d, "i64")
        key = ("dim", d)
        if key not in self.consts:
            self.consts[key] = self.graph.op("dim_value", expr=d)
        return self.consts[key]

    def op(self, name, *inputs, **attrs):
        return self.graph.op(name, *[self.value(v) for v in inputs], **attrs)

    def cast(self, v: Value, dtype: str) -> Value:
        return v if v.type.dtype == dtype else self.graph.op("cast", v, dtype=dtype)

    def dim(self, arg) -> int | str:
        if isinstance(arg, torch.fx.Node):
            got = self.env[arg]
            if isinstance(got, SymDim):
                return got.dim
            raise self.unsupported(f"a tensor (%{arg.name}) where a size is expected")
        if isinstance(arg, (torch.SymInt, int)):
            return self.to_dim(arg)
        raise self.unsupported(f"size argument {arg!r}")

    def dim_add(self, a, b):
        return symbolic.add(a, b)

    def number(self, arg):
        if isinstance(arg, torch.fx.Node):
            got = self.env[arg]
            if isinstance(got, SymDim) and isinstance(got.dim, int):
                return got.dim
            raise self.unsupported("a fill value computed at run time")
        return arg

    def is_number(self, arg, v) -> bool:
        return isinstance(arg, (int, float)) and not isinstance(arg, bool) and arg == v

    def scaled(self, arg, alpha):
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return arg * alpha
        return self.op("mul", arg, alpha)

    def same_type_as_output(self, v: Value) -> bool:
        return v.type.matches(self.tensor_type(self.out_val()))

    def same_as_output(self, arg) -> Value | None:
        if not isinstance(arg, torch.fx.Node):
            return None
        v = self.value(arg)
        return v if self.same_type_as_output(v) else None

    def is_empty_1d(self, arg) -> bool:
        t = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
        return isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape[0] == 0

    @staticmethod
    def dims_equal(a, b) -> bool:
        return symbolic.equal(a, b)

    def dims_equal_all(self, a, b) -> bool:
        return len(a) == len(b) and all(self.dims_equal(x, y) for x, y in zip(a, b))

    def unsupported(self, what: str) -> UnsupportedOpError:
        return self.unsupported_at(self.node, what)

    def unsupported_at(self, node, what: str) -> UnsupportedOpError:
        where = f" (FX node %{node.name})\n  from: {_source_line(node)}" if node is not None else ""
        return UnsupportedOpError(
            f"torch.export frontend: {what}{where}\n  Supported ATen ops: {supported_ops()}\n"
            "  Fix: add a rule in frontends/aten.py (and an IR op in ir/opset/ if none fits).")


def supported_ops() -> list[str]:
    return sorted(set(aten.RULES) | aten.IDENTITY | aten.IGNORED)
