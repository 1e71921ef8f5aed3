"""IR -> torch.fx GraphModule: straight-line torch code, one call per IR node.

    products = build(graph)               # the `torch` target's build: Python source + packed weights
    run = load(graph, products)           # a TorchRunner: (*tensors) -> list[Tensor], under no_grad
    run = build_runner(graph)             # both at once
    gm = build_graph_module(graph)        # the fx GraphModule itself (tests, debugging)

Build products (codegen/contract.py): `torch_forward.py`, the generated `forward(self, *inputs)`;
`torch_buffers.safetensors`, the tensors that prepack hooks made (packed int4 weights, ...) and
literal constants; meta: how to import each global the source names, which buffer is which graph
weight, the host it was built for (torch version, CPU capability: packed layouts depend on both).
`load` executes the source and binds the buffers: no codegen and no prepacking on load.

- Each node calls its op's "torch" lowering (codegen/lowering.py: torch_kernels, ...) if one exists, else the op
  registry's reference implementation (so every registered op runs). Kernels with a
  `prepack` get their weight inputs transformed once, here, at build time.
- Weights become buffers of the module and share the graph's tensors (no copies); a weight that
  only prepacked kernels read is not kept (the module holds the packed form alone).
- Symbolic attributes (`dim`/`dims`) are computed at run time: one `x.size(i)` per symbol at
  entry, then small int arithmetic per distinct expression (cached).
- `cache_append` (an `append` state) writes into spare rows of a growing buffer instead of copying the
  cache (codegen/torch_kv.py); the runner's `truncate_state` rolls it back without a copy. A `ring`
  state's `cache_window` slides in place (`torch_kv.window_in_place`), emitted after every other node so
  that attention has read the rows it overwrites; `keep_state` copies a ring state a caller keeps.
- 0-d literal `constant`s are evaluated once; a consumer whose kernel accepts Python scalars
  gets the number inlined when that gives the same result dtype, others get a buffer.
The IR graph is never changed.
"""
from __future__ import annotations
import importlib
import keyword
import math
import operator
import re
import types

import sympy
import torch
import torch.fx as fx

from ..ir import symbolic
from ..ir.dtypes import promote, to_torch
from ..ir.registry import get_op
from . import torch_kernels, torch_kv
from .contract import Products, ProductsError, Runner
from .lowering import get_lowering
from .torch_kernels import SlowPath

SOURCE, BUFFERS = "torch_forward.py", "torch_buffers.safetensors"


class CodegenError(RuntimeError):
    pass


def host() -> dict:
    """What a build depends on besides the graph: packed layouts follow torch's version and CPU kernels."""
    import slimgraph
    return {"slimgraph": slimgraph.__version__, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


class TorchRunner(Runner):
    def __init__(self, forward, module, code: str, products: Products, notes):
        super().__init__(products, notes, device="cpu")
        self.forward, self.module, self.code = forward, module, code

    def __call__(self, *tensors):
        with torch.no_grad():
            return list(self.forward(*tensors))

    def truncate_state(self, t, axis, length):
        return torch_kv.truncate(t, axis, length)

    def keep_state(self, t):
        return torch_kv.keep_state(t)


def build(graph, *, lower=None, fused=None, host_info=None) -> Products:
    """The `torch` target's build: generate the forward's source and run the prepack hooks (once).

    Other targets that generate torch-level Python reuse it: `lower(op) -> Lowering | None` picks each
    op's kernel (default: the "torch" table; None: the op's reference impl); `fused` maps id(node) to
    `(fn, input values)` that replaces it, or to None for a node computed inside another's fused kernel;
    `host_info` is the host recorded in the products (default: `host()`)."""
    builder = _Builder(graph, lower, fused)
    gm = builder.build()
    code = gm.graph.python_code(root_module="self")
    globals_, live, unstorable = {}, {}, []
    for name, obj in code.globals.items():
        try:
            globals_[name] = _recipe(name, obj)
        except CodegenError as e:   # runs in this process; saving it is refused with this reason
            globals_[name], live[name] = {"live": repr(obj)}, obj
            unstorable.append(str(e))
    buffers, stored = {}, {}
    for name, t in gm.named_buffers(remove_duplicate=False):
        origin = builder.origin.get(name)
        if origin is not None and graph.weights[origin].tensor is t:
            buffers[name] = {"weight": origin}
        else:
            buffers[name] = {"stored": name}
            stored[name] = t
        if name in builder.prepacked:
            buffers[name]["aligned"] = True
    notes = [f"{n} node{'s' if n > 1 else ''}: {why}" for why, n in builder.slow.items()]
    meta = {"host": host_info if host_info is not None else host(), "globals": globals_, "buffers": buffers, "notes": notes}
    return Products({SOURCE: code.src.encode(), BUFFERS: stored}, meta, live, unstorable)


def load(graph, products: Products) -> TorchRunner:
    """Execute the stored source and bind its buffers (graph weights, stored packed tensors): no codegen."""
    meta = products.meta
    src = products.read_bytes(SOURCE).decode()
    try:
        ns = {name: products.live[name] if "live" in recipe else _resolve(recipe)
              for name, recipe in meta["globals"].items()}
    except (ImportError, AttributeError, KeyError) as e:
        raise ProductsError(f"torch build products: cannot resolve a global of {SOURCE} ({type(e).__name__}: {e}); "
                            "they were built by another slimgraph/torch version: rebuild the model") from None
    exec(compile(src, f"<slimgraph {SOURCE} @{graph.name}>", "exec"), ns)
    stored = products.read_tensors(BUFFERS) if any("stored" in b for b in meta["buffers"].values()) else {}
    module = torch.nn.Module()
    for name, spec in meta["buffers"].items():
        t = graph.weights[spec["weight"]].tensor if "weight" in spec else stored[spec["stored"]]
        module.register_buffer(name, _aligned(t) if spec.get("aligned") else t, persistent=False)
    return TorchRunner(types.MethodType(ns["forward"], module), module, src, products, meta.get("notes", []))


def build_runner(graph) -> TorchRunner:
    """build + load: a runner `(*tensors) -> list[Tensor]`."""
    return load(graph, build(graph))


def _aligned(t):
    """t itself if 64-byte aligned and contiguous, else an aligned copy: torch's int8 kernel (oneDNN) segfaults
    on a weight at an unaligned address, e.g. one read from a safetensors file."""
    return t if t.is_contiguous() and t.data_ptr() % 64 == 0 else t.clone(memory_format=torch.contiguous_format)


_FLOATS = {"inf": math.inf, "nan": math.nan, "-inf": -math.inf}


def _recipe(name, obj) -> dict:
    """How load() gets back a global that the generated source names (import path, not pickle)."""
    if isinstance(obj, types.ModuleType):
        return {"module": obj.__name__}
    if isinstance(obj, float):
        return {"float": str(obj)}
    if obj is type(None):
        return {"none_type": True}
    if hasattr(obj, "_slimgraph_recipe"):
        return dict(obj._slimgraph_recipe)
    if isinstance(obj, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return {"torch_op": str(obj)}       # e.g. "aten.add.Tensor"
    op = _impl_ops().get(id(obj))
    if op is not None:                  # an op's reference implementation (may be a lambda)
        return {"op_impl": op}
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if mod and qual and "<" not in qual:
        try:
            found = _import(mod, qual)
        except (ImportError, AttributeError):
            found = None
        if found is obj:
            return {"import": f"{mod}:{qual}"}
    raise CodegenError(f"torch codegen: global {name} = {obj!r} of the generated source cannot be stored by import "
                       "path (kernels that artifacts can store are module-level functions)")


def _impl_ops() -> dict[int, str]:
    from ..ir.registry import all_ops
    return {id(d.impl): name for name, d in all_ops().items()}


def _import(mod, qual):
    obj = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _resolve(recipe: dict):
    if "module" in recipe:
        return importlib.import_module(recipe["module"])
    if "float" in recipe:
        return float(recipe["float"])
    if "none_type" in recipe:
        return type(None)
    if "dim_expr" in recipe:
        return _int_expr(recipe["dim_expr"])
    if "op_impl" in recipe:
        return get_op(recipe["op_impl"]).impl
    if "torch_op" in recipe:
        obj = torch.ops
        for part in recipe["torch_op"].split("."):
            obj = getattr(obj, part)
        return obj
    mod, qual = recipe["import"].split(":")
    return _import(mod, qual)


def build_graph_module(graph) -> fx.GraphModule:
    return _Builder(graph).build()


class _Builder:
    def __init__(self, graph, lower=None, fused=None):
        self.ir = graph
        self.lower = lower or (lambda op: get_lowering("torch", op))
        self.fused = fused or {}                # id(node) -> (fn, inputs) or None (inside a fused kernel)
        self.fx = fx.Graph()
        self.root = torch.nn.Module()
        self.env: dict[int, fx.Node] = {}       # id(IR value) -> fx node
        self.scalars: dict[int, object] = {}    # id(IR value of a literal 0-d constant) -> Python number
        self.consts: dict[int, torch.Tensor] = {}
        self.symbols: dict[str, fx.Node] = {}   # symbol -> size node
        self.exprs: dict[str, object] = {}      # canonical dim expr -> fx node or int
        self.attr_names: set[str] = set()
        self.slow: dict[str, int] = {}          # SlowPath reason -> nodes
        self.origin: dict[str, str] = {}        # buffer name -> the graph weight it holds
        self.prepacked: set[str] = set()        # buffers made by prepack hooks

    def build(self) -> fx.GraphModule:
        for v in self.ir.inputs:
            self.env[id(v)] = self.fx.placeholder(_ident(v.name))
        self._bind_symbols()
        late = torch_kv.in_place_windows(self.ir) - set(self.fused)
        low = self.lower("attention")   # the torch kernel's variants replace it, not another target's kernel
        ours = low is not None and low.fn is torch_kernels.attention
        batched = ours and not torch_kernels.verify_as_steps(self.ir)   # float GEMMs: a verify is not exact anyway
        rings = torch_kv.ring_attention(self.ir) if ours and not batched else set()
        for node in self.ir.nodes:
            if id(node) not in late:
                self._emit(node, torch_kernels.attention_batched if batched and node.op == "attention" else
                           torch_kernels.attention_ring if id(node) in rings else None)
        for node in (n for n in self.ir.nodes if id(n) in late):   # after attention read the rows they overwrite
            self._emit(node, torch_kv.window_in_place)
        self.fx.output(tuple(self._arg(v, None) for v in self.ir.outputs))
        for n in list(self.symbols.values()):
            if not n.users:
                self.fx.erase_node(n)
        gm = fx.GraphModule(self.root, self.fx, class_name=f"slimgraph_{_ident(self.ir.name)}")
        return gm

    # ---- entry: weights, symbols ------------------------------------------------------------
    def _buffer(self, hint: str, tensor: torch.Tensor, weight: str | None = None, packed: bool = False) -> fx.Node:
        name = base = _ident(hint)
        i = 0
        while name in self.attr_names or hasattr(self.root, name):
            i += 1
            name = f"{base}_{i}"
        self.attr_names.add(name)
        self.root.register_buffer(name, tensor, persistent=False)
        if weight is not None:
            self.origin[name] = weight
        if packed:
            self.prepacked.add(name)
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
    def _emit(self, node, fn=None):
        """Emit `node` through its lowering (or `fn`, a kernel with the op's signature, when given)."""
        opdef = get_op(node.op)
        if node.op == "constant" and _is_literal(node.attrs["value"]):
            t = opdef.impl(**node.attrs)
            self.consts[id(node.output)] = t
            self.scalars[id(node.output)] = t.item()
            return
        if id(node) in self.fused:
            fused = self.fused[id(node)]
            if fused is not None:
                fn, values = fused
                self.env[id(node.output)] = self.fx.create_node(
                    "call_function", fn, tuple(self._arg(v, None) for v in values), {},
                    name=_ident(node.outputs[0].name))
            return
        kernel = None if fn else self.lower(node.op)
        fn = fn or (kernel.fn if kernel else opdef.impl)
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
            self.env[id(v)] = self._buffer(v.name, v.tensor, weight=v.name)
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
        return {i: self._buffer(f"{node.inputs[i].name}.{node.op}_packed", t,
                                weight=node.inputs[i].name if t is consts[i] else None, packed=True)
                for i, t in packed.items()}


def _int_expr(text: str):
    fn = symbolic._compiled(text)

    def dim_expr(*args) -> int:
        return int(fn(*args))
    dim_expr.__qualname__ = dim_expr.__name__ = "dim_expr"
    dim_expr._slimgraph_recipe = {"dim_expr": text}
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
