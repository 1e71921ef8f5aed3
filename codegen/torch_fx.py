"""IR -> torch.fx GraphModule: straight-line torch code, one call per IR node.

    gm = build_graph_module(graph)        # forward(*inputs) -> tuple of graph outputs
    run = build_runner(graph)             # (*tensors) -> list[Tensor], under no_grad

- Each node calls its op's fast kernel from `torch_kernels` if one is registered, else the op
  registry's reference implementation (so every registered op runs). Kernels with a
  `prepack` get their weight inputs transformed once, here, at build time.
- Weights become buffers of the module and share the graph's tensors (no copies); a weight that
  only prepacked kernels read is not kept (the module holds the packed form alone).
- Symbolic attributes (`dim`/`dims`) are computed at run time: one `x.size(i)` per symbol at
  entry, then small int arithmetic per distinct expression (cached).
- A concat that appends to a graph input and is returned (a KV cache step) writes into spare rows of
  a growing buffer instead of copying the cache (codegen/torch_kv.py).
- 0-d literal `constant`s are evaluated once; a consumer whose kernel accepts Python scalars
  gets the number inlined when that gives the same result dtype, others get a buffer.
The IR graph is never changed.
"""
from __future__ import annotations
import keyword
import operator
import re

import sympy
import torch
import torch.fx as fx

from ..ir import symbolic
from ..ir.dtypes import promote, to_torch
from ..ir.registry import get_op
from . import torch_kv
from .lowering import get_lowering
from .torch_kernels import SlowPath


class CodegenError(RuntimeError):
    pass


def build_runner(graph):
    """The `torch` target's codegen: a runner `(*tensors) -> list[Tensor]`."""
    builder = _Builder(graph)
    gm = builder.build()
    forward = gm.forward

    def run(*tensors):
        with torch.no_grad():
            return list(forward(*tensors))
    run.graph_module = gm
    run.notes = [f"{n} node{'s' if n > 1 else ''}: {why}" for why, n in builder.slow.items()]
    return run


def build_graph_module(graph) -> fx.GraphModule:
    return _Builder(graph).build()


class _Builder:
    def __init__(self, graph):
        self.ir = graph
        self.fx = fx.Graph()
        self.root = torch.nn.Module()
        self.env: dict[int, fx.Node] = {}       # id(IR value) -> fx node
        self.scalars: dict[int, object] = {}    # id(IR value of a literal 0-d constant) -> Python number
        self.consts: dict[int, torch.Tensor] = {}
        self.symbols: dict[str, fx.Node] = {}   # symbol -> size node
        self.exprs: dict[str, object] = {}      # canonical dim expr -> fx node or int
        self.attr_names: set[str] = set()
        self.slow: dict[str, int] = {}          # SlowPath reason -> nodes

    def build(self) -> fx.GraphModule:
        for v in self.ir.inputs:
            self.env[id(v)] = self.fx.placeholder(_ident(v.name))
        self._bind_symbols()
        for node in self.ir.nodes:
            self._emit(node)
        self.fx.output(tuple(self._arg(v, None) for v in self.ir.outputs))
        for n in list(self.symbols.values()):
            if not n.users:
                self.fx.erase_node(n)
        gm = fx.GraphModule(self.root, self.fx, class_name=f"slimgraph_{_ident(self.ir.name)}")
        return gm

    # ---- entry: weights, symbols ------------------------------------------------------------
    def _buffer(self, hint: str, tensor: torch.Tensor) -> fx.Node:
        name = base = _ident(hint)
        i = 0
        while name in self.attr_names or hasattr(self.root, name):
            i += 1
            name = f"{base}_{i}"
        self.attr_names.add(name)
        self.root.register_buffer(name, tensor, persistent=False)
        return self.fx.get_attr(name)

    def _bind_symbols(self):
        for v in self.ir.inputs:
            for i, d in enumerate(v.type.shape):
                if isinstance(d, str) and d not in self.symbols and symbolic.free_symbols(d) == {d}:
                    self.symbols[d] = self.fx.create_node("call_method", "size", (self.env[id(v)], i), name=_ident(d))

    def _dim(self, d):
        """An int attribute value, or an fx node computing a symbolic one at run time."""
        if not isinstance(d, str):
            return d
        return self._sym_expr(symbolic._expr(d), d)

    def _sym_expr(self, e, text: str):
        """Cached per (sub)expression, so `2*seq` and `2*seq-1` share the product."""
        key = str(e).replace(" ", "")
        if key not in self.exprs:
            self.exprs[key] = self._sym_expr_uncached(e, text)
        return self.exprs[key]

    def _sym_expr_uncached(self, e, text: str):
        if e.is_Integer:
            return int(e)
        if e.is_Symbol:
            try:
                return self.symbols[str(e)]
            except KeyError:
                sig = ", ".join(f"%{v.name}: {v.type}" for v in self.ir.inputs)
                raise CodegenError(f"graph @{self.ir.name}: symbol {e} (in {text!r}) is not the size of any "
                                   f"input dim ({sig}); bind it with an input whose shape names it") from None
        if isinstance(e, (sympy.Add, sympy.Mul)) and all(a.is_Integer or a.free_symbols for a in e.args) \
                and not any(a.is_Rational and not a.is_Integer for a in e.args):
            fn = operator.add if isinstance(e, sympy.Add) else operator.mul
            args = [self._sym_expr(a, text) for a in e.args]
            out = args[0]
            for a in args[1:]:
                out = self.fx.call_function(fn, (out, a))
            return out
        # anything else (floor, ceiling, rationals, Max, ...): one call to the compiled expression
        names = sorted(str(s) for s in e.free_symbols)
        args = tuple(self._sym_expr(sympy.Symbol(n, integer=True), text) for n in names)
        return self.fx.call_function(_int_expr(str(e).replace(" ", "")), args)

    # ---- nodes -----------------------------------------------------------------------------
    def _emit(self, node):
        opdef = get_op(node.op)
        if node.op == "constant" and _is_literal(node.attrs["value"]):
            t = opdef.impl(**node.attrs)
            self.consts[id(node.output)] = t
            self.scalars[id(node.output)] = t.item()
            return
        kernel = get_lowering("torch", node.op)
        fn = kernel.fn if kernel else opdef.impl
        if self._appends_state(node):
            kernel, fn = None, torch_kv.append
        inputs = list(node.inputs)
        prepacked = self._prepack(node, kernel) if kernel and kernel.prepack else {}
        args = tuple(prepacked[i] if i in prepacked else
                     self._arg(v, node if kernel and kernel.scalars else None, i)
                     for i, v in enumerate(inputs))
        kwargs = {k: self._attr(opdef, k, a) for k, a in node.attrs.items()}
        out = self.fx.create_node("call_function", fn, args, kwargs, name=_ident(node.outputs[0].name))
        if len(node.outputs) == 1 and not _returns_sequence(opdef, node):
            self.env[id(node.output)] = out
            return
        for i, o in enumerate(node.outputs):
            self.env[id(o)] = self.fx.create_node("call_function", operator.getitem, (out, i), name=_ident(o.name))

    def _appends_state(self, node) -> bool:
        """concat(graph input, x) returned as a graph output: a KV cache growing by a step (torch_kv)."""
        if node.op != "concat" or len(node.inputs) != 2:
            return False
        first = node.inputs[0]
        return any(v is first for v in self.ir.inputs) and any(o is node.output for o in self.ir.outputs)

    def _attr(self, opdef, key, value):
        if key not in opdef.symbolic_attrs:
            return value
        if isinstance(value, list):
            return [self._dim(x) for x in value]
        return self._dim(value)

    def _arg(self, v, consumer, index=None):
        """The fx argument for IR value `v`: an fx node, or an inlined Python scalar."""
        if id(v) in self.scalars:
            if consumer is not None and _scalar_ok(consumer, index, self.scalars[id(v)], self.scalars):
                return self.scalars[id(v)]
            if id(v) not in self.env:  # materialize the constant once, as a buffer
                self.env[id(v)] = self._buffer(v.name, self.consts[id(v)])
        if v.is_weight and id(v) not in self.env:  # on first use: a weight read only by prepack is never kept
            self.env[id(v)] = self._buffer(v.name, v.tensor)
        return self.env[id(v)]

    def _prepack(self, node, kernel) -> dict[int, fx.Node]:
        consts = {i: v.tensor for i, v in enumerate(node.inputs) if v.is_weight}
        try:
            packed = kernel.prepack(node, consts)
        except SlowPath as e:
            self.slow[str(e)] = self.slow.get(str(e), 0) + 1
            return {}
        except Exception as e:
            raise CodegenError(f"prepack for {node.op} failed at node {node!r}: {type(e).__name__}: {e}") from e
        bad = set(packed) - set(consts)
        if bad:
            raise CodegenError(f"prepack for {node.op} returned inputs {sorted(bad)}, which are not weights "
                               f"of node {node!r}; it may only replace {sorted(consts)}")
        return {i: self._buffer(f"{node.inputs[i].name}.{node.op}_packed", t) for i, t in packed.items()}


def _int_expr(text: str):
    fn = symbolic._compiled(text)

    def dim_expr(*args) -> int:
        return int(fn(*args))
    dim_expr.__qualname__ = dim_expr.__name__ = "dim_expr"
    return dim_expr


def _is_literal(v) -> bool:
    return isinstance(v, (bool, int, float))


def _returns_sequence(opdef, node) -> bool:
    # ops whose inference gives a list (split, ...) return tuples even when a node has one output
    if len(node.outputs) > 1:
        return True
    return isinstance(opdef.infer_fn([v.type for v in node.inputs], node.attrs), (list, tuple))


def _scalar_ok(consumer, index, value, scalars) -> bool:
    """Inline a 0-d constant as a Python scalar only where torch then computes in the same dtype
    (0-d tensors and scalars promote alike except across categories) and one tensor operand stays."""
    if consumer.op == "where":
        if index == 0:
            return False
        others = [consumer.inputs[3 - index]]
    else:
        others = [v for j, v in enumerate(consumer.inputs) if j != index]
    if len(others) != 1 or id(others[0]) in scalars:
        return False
    other, const = others[0], consumer.inputs[index]
    proto = torch.empty((1,) * min(other.type.rank, 1), dtype=to_torch(other.type.dtype))
    want = promote((other.type.dtype, other.type.rank), (const.type.dtype, 0))
    return torch.result_type(proto, value) == to_torch(want)


_IDENT_RE = re.compile(r"[^A-Za-z0-9_]")


def _ident(name: str) -> str:
    s = _IDENT_RE.sub("_", name)
    if not s or s[0].isdigit() or keyword.iskeyword(s):
        s = "v_" + s
    return s
