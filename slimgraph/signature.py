"""Calling conventions of a compiled model, and their JSON form (no pickle).

A `Signature` maps the source model's call (`*args, **kwargs`) to the graph's flat tensor
inputs, and the graph's flat outputs back to the source's output structure:

- "flat":      the graph's own signature; one output -> a tensor, several -> a tuple.
- "pytree":    torch.export's in_spec/out_spec (args and kwargs, nested tuples, dicts,
               namedtuples, transformers ModelOutputs); positional/keyword binding by the
               forward's parameter names.
- "causal-lm": `model(input_ids, attention_mask=None)` runs from empty state (slimgraph.decoder builds
               the positions and the mask; left padding allowed) and returns an object with `.logits`
               and `.past_key_values`: the KV cache after the call as (key, value) pairs per layer (a
               ring's: its sinks and last window positions), or None when the state is not only a KV
               cache (linearize-attention's kv/z states; the Decoder's `.states` hold them, see _kv_pairs).

Pytree specs are stored as JSON trees; a class (ModelOutput, namedtuple) is recorded by import
path and field names and rebuilt by importing it, falling back to a dict (fields) or a
namedtuple when the class is not importable in the loading process.
"""
from __future__ import annotations
import collections
import importlib
from dataclasses import dataclass, field
from typing import Any


from .lazy import LazyModule

torch = LazyModule("torch")
pytree = LazyModule("torch.utils._pytree")

from .guards import Guards, leaf_names


class SignatureError(TypeError):
    pass


def index_limits(inputs) -> list[tuple[int, int, str]]:
    """(input index, rows, table) for each input that an embedding lookup (`embedding`, `qembedding`) reads
    directly as its ids, from a table with a static row count: token ids index the vocabulary, and learned
    positions (GPT-2's position_ids) a table as long as the model's context. Its values must lie in 0..rows-1:
    past the table a target reads out of bounds (the cpu target's TVM `take` clips silently) or fails deep
    in a kernel. An input that indexes several tables gets the smallest."""
    limits: dict[int, tuple[int, str]] = {}
    for i, v in enumerate(inputs):
        for node in v.users:
            if node.op == "embedding" and len(node.inputs) > 1 and node.inputs[1] is v:
                table, name = node.inputs[0], node.inputs[0].name
            elif node.op == "qembedding" and node.inputs[0] is v and len(node.inputs) > 1:
                table, name = node.inputs[1], node.inputs[1].name.removesuffix(".qweight")
            else:
                continue
            rows = table.type.shape[0] if table.type.rank else None
            if isinstance(rows, int) and (i not in limits or rows < limits[i][0]):
                limits[i] = (rows, name)
    return [(i, rows, name) for i, (rows, name) in sorted(limits.items())]


def check_index_range(limits, tensors, inputs) -> None:
    """Refuse a value outside 0..rows-1 in an input of `index_limits` (one aminmax per such input)."""
    for i, rows, table in limits:
        t = tensors[i]
        if not t.numel() or t.is_floating_point() or t.dtype is torch.bool:
            continue
        lo, hi = (int(x) for x in torch.aminmax(t))
        if lo >= 0 and hi < rows:
            continue
        v = inputs[i]
        what = (" (learned positions: the model's context limit)" if v.name == "position_ids" else
                " (the vocabulary)" if v.name == "input_ids" else "")
        raise SignatureError(f"input %{v.name} (#{i + 1} of {len(inputs)}) holds {hi if hi >= rows else lo}, "
                             f"outside 0..{rows - 1}: it indexes the embedding table @{table}, which has {rows} "
                             f"rows{what}")


class InputCheck:
    """Checks flat call inputs against a graph's inputs, cheaply (the per-input work is precomputed):
    the count, each input's dtype and rank, static dims, symbolic dims bound consistently, and the values of
    ids that index an embedding table (`index_limits`).

        check = InputCheck(graph.inputs); check([x])   # TypeError naming the input, expected and given

    A static dim is what the model was compiled for (often specialized from the example input by
    torch.export); a different size is refused, not run (it would silently give wrong-shaped results
    or fail deep in a kernel). Raises SignatureError (a TypeError)."""

    def __init__(self, inputs):
        from .ir import symbolic
        from .ir.dtypes import to_torch
        self.inputs = list(inputs)
        self._specs = []
        self._derived = []                  # (input index, dim index, expression): evaluated after binding
        for i, v in enumerate(self.inputs):
            static, symbols = [], []
            for k, d in enumerate(v.type.shape):
                if isinstance(d, int):
                    static.append((k, d))
                elif symbolic.free_symbols(d) == {d}:
                    symbols.append((k, d))
                else:
                    self._derived.append((i, k, d))
            self._specs.append((to_torch(v.type.dtype), v.type.rank, tuple(static), tuple(symbols)))
        self._limits = index_limits(self.inputs)   # ids that index an embedding table: in range

    def __call__(self, tensors) -> None:
        if len(tensors) != len(self._specs):
            sig = ", ".join(f"%{v.name}: {v.type}" for v in self.inputs)
            raise SignatureError(f"the compiled model takes {len(self._specs)} input(s) ({sig}), got {len(tensors)}")
        env: dict[str, int] = {}
        Tensor = torch.Tensor
        for i, ((dtype, rank, static, symbols), t) in enumerate(zip(self._specs, tensors)):
            if type(t) is not Tensor and not isinstance(t, Tensor):
                self._fail(i, t, "is not a tensor")
            if t.dtype is not dtype:
                self._fail(i, t, f"dtype must be {self.inputs[i].type.dtype}")
            shape = t.shape
            if len(shape) != rank:
                self._fail(i, t, f"has rank {len(shape)}, not {rank}")
            for k, want in static:
                if shape[k] != want:
                    self._fail(i, t, f"dim {k} must be {want}: the model was compiled for that size (a static dim, "
                                     f"e.g. specialized from the example input; compile with dynamic_shapes to vary it)")
            for k, sym in symbols:
                if env.setdefault(sym, shape[k]) != shape[k]:
                    self._fail(i, t, f"dim {k} ({sym}) is {shape[k]} but another input bound {sym}={env[sym]}")
        if self._derived:
            from .ir import symbolic
            for i, k, expr in self._derived:
                try:
                    want = symbolic.evaluate(expr, env)
                except Exception:  # noqa: BLE001 - a symbol that no input binds
                    continue
                if tensors[i].shape[k] != want:
                    self._fail(i, tensors[i], f"dim {k} must be {expr} = {want} here")
        if self._limits:
            check_index_range(self._limits, tensors, self.inputs)

    def _fail(self, i, t, why):
        v = self.inputs[i]
        if isinstance(t, torch.Tensor):
            from .ir.dtypes import IR_DTYPES
            given = f"{IR_DTYPES.get(t.dtype, t.dtype)}{list(t.shape)}".replace(" ", "")
        else:
            given = f"a {type(t).__name__}"
        raise SignatureError(f"input %{v.name} (#{i + 1} of {len(self.inputs)}) expects {v.type}, got {given}: "
                             f"{why}")


@dataclass
class Signature:
    kind: str = "flat"                        # "flat" | "pytree" | "causal-lm"
    in_spec: Any = None                       # TreeSpec of (args, kwargs)
    out_spec: Any = None                      # TreeSpec of the outputs
    param_names: list[str] = field(default_factory=list)  # forward's parameters, for keyword binding
    input_names: list[str] = field(default_factory=list)  # graph input names (for messages)
    tensor_leaves: list[int] | None = None    # flat-leaf positions that are graph inputs (None: all tensors)
    zeros_like: dict[str, str] = field(default_factory=dict)  # arg -> arg whose zeros it defaults to
    guards: Guards | None = None              # what the export specialized on (slimgraph/guards.py)

    # ---- calls ---------------------------------------------------------------------------------
    def flatten_call(self, args: tuple, kwargs: dict, graph=None) -> list[torch.Tensor]:
        if self.kind == "causal-lm":
            return _causal_lm_inputs(args, kwargs, graph)
        if self.kind == "flat":
            if kwargs:
                raise SignatureError(f"this compiled graph takes positional tensors ({', '.join(self.input_names)}),"
                                     f" got keyword arguments {sorted(kwargs)}")
            return list(args)
        leaves = self.leaves(args, kwargs)
        if self.guards is not None:
            self.guards.check(leaves)
        if self.tensor_leaves is not None:
            return [leaves[i] for i in self.tensor_leaves]
        return [x for x in leaves if isinstance(x, torch.Tensor)]

    def leaves(self, args: tuple, kwargs: dict) -> list:
        """The call bound to the exported (args, kwargs) structure, flattened ("pytree" signatures)."""
        args, kwargs = self._bind(args, kwargs)
        leaves, spec = pytree.tree_flatten((args, kwargs))
        if spec != self.in_spec:
            raise SignatureError(f"call structure does not match the exported one:\n  expected {self.in_spec}\n"
                                 f"  got      {spec}\nCall the compiled model like the model was exported.")
        return leaves

    def leaf_names(self, args: tuple, kwargs: dict) -> list[str]:
        """A readable name for each leaf of `leaves(args, kwargs)` (for guard messages)."""
        return leaf_names(*self._bind(args, kwargs), self.param_names)

    def unflatten_outputs(self, outs: list[torch.Tensor], graph):
        if self.kind == "causal-lm":
            return _causal_lm_output(outs, graph)
        if self.kind == "flat" or self.out_spec is None:
            return outs[0] if len(outs) == 1 else tuple(outs)
        return pytree.tree_unflatten(outs, self.out_spec)

    def _bind(self, args, kwargs):
        exported_args, exported_kwargs = self.in_spec.children()
        n_args, keys = exported_args.num_children, list(exported_kwargs.context or [])
        if len(args) == n_args and set(kwargs) == set(keys):
            return tuple(args), {k: kwargs[k] for k in keys}
        if not self.param_names:
            raise SignatureError(f"expected {n_args} positional argument(s) and keywords {keys}, "
                                 f"got {len(args)} positional and {sorted(kwargs)}")
        bound = dict(zip(self.param_names, args))
        for k, v in kwargs.items():
            if k in bound:
                raise SignatureError(f"argument {k!r} given both positionally and by keyword")
            bound[k] = v
        positional = self.param_names[:n_args]
        for k, like in self.zeros_like.items():  # e.g. BERT's token_type_ids: absent means zeros, as in HF
            if bound.get(k) is None and isinstance(bound.get(like), torch.Tensor):
                bound[k] = torch.zeros_like(bound[like])
        missing = [k for k in positional + keys if k not in bound]
        extra = [k for k, v in bound.items() if k not in positional and k not in keys and v is not None]
        if missing or extra:
            hint = (f" (the export ran without {extra}: their defaults are baked into the graph; compile again "
                    f"passing them in example_inputs/example_kwargs)") if extra else ""
            raise SignatureError(f"the model was exported with arguments {positional + keys}; "
                                 f"missing {missing}, unexpected {extra}{hint}")
        return tuple(bound[k] for k in positional), {k: bound[k] for k in keys}

    # ---- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"kind": self.kind, "param_names": list(self.param_names), "input_names": list(self.input_names),
                "tensor_leaves": self.tensor_leaves, "zeros_like": dict(self.zeros_like),
                "guards": self.guards.to_json() if self.guards is not None else None,
                "in_spec": spec_to_json(self.in_spec) if self.in_spec is not None else None,
                "out_spec": spec_to_json(self.out_spec) if self.out_spec is not None else None}

    @staticmethod
    def from_json(d: dict) -> Signature:
        return Signature(d["kind"], spec_from_json(d["in_spec"]) if d.get("in_spec") else None,
                         spec_from_json(d["out_spec"]) if d.get("out_spec") else None,
                         list(d.get("param_names", [])), list(d.get("input_names", [])), d.get("tensor_leaves"),
                         dict(d.get("zeros_like", {})),
                         Guards.from_json(d["guards"]) if d.get("guards") is not None else None)


# ---- causal LMs: input_ids in, logits (+ presents) out --------------------------------------------
def _causal_lm_inputs(args, kwargs, graph):
    kwargs = dict(kwargs)
    ids = args[0] if args else kwargs.pop("input_ids", None)
    if len(args) > 1 or ids is None:
        raise SignatureError("a compiled causal LM is called as model(input_ids, attention_mask=None) (int64 "
                             "[batch, seq], left padded where the mask is 0); use .generate() or "
                             "slimgraph.decoder.Decoder for decoding with the cache")
    mask = kwargs.pop("attention_mask", None)
    kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in ("use_cache", "return_dict")}
    if kwargs:
        raise SignatureError(f"unsupported arguments for a compiled causal LM: {sorted(kwargs)}")
    from .decoder import DecoderError, causal_lm_inputs
    try:
        return causal_lm_inputs(graph, ids, mask)
    except DecoderError as e:
        raise SignatureError(str(e)) from None


def _kv_pairs(outs, graph):
    """The graph's KV cache after the call as (key, value) pairs per layer (its `key_<i>` / `value_<i>`
    states, append or ring, by the order declared), or None when its state is not only a KV cache:
    linearize-attention's kv/z states (`fixed`) are no keys and values, and a hybrid's ring alone is not
    its cache. slimgraph.decoder.Decoder (compiled.decoder()) holds every state: `.states`, in the order
    of graph.states."""
    at = {id(v): i for i, v in enumerate(graph.outputs)}
    states = list(graph.states)
    if len(states) % 2 or any(s.kind not in ("append", "ring") for s in states):
        return None
    pairs = []
    for k, v in zip(states[::2], states[1::2]):
        if not (k.name.startswith("key_") and v.name == "value_" + k.name[4:]):
            return None
        pairs.append((outs[at[id(k.output)]], outs[at[id(v.output)]]))
    return tuple(pairs)


def _causal_lm_output(outs, graph):
    presents = _kv_pairs(outs, graph)
    try:
        from transformers.modeling_outputs import CausalLMOutputWithPast
    except ImportError:
        return collections.namedtuple("CausalLMOutput", "logits past_key_values")(outs[0], presents)
    return CausalLMOutputWithPast(logits=outs[0], past_key_values=presents)


# ---- pytree specs <-> JSON ---------------------------------------------------------------------
def spec_to_json(spec) -> dict:
    if spec.is_leaf():
        return {"type": "leaf"}
    t, ctx = spec.type, spec.context
    children = [spec_to_json(c) for c in spec.children()]
    if t in (tuple, list):
        return {"type": t.__name__, "children": children}
    if t in (dict, collections.OrderedDict):
        return {"type": "dict", "keys": _json_keys(ctx), "children": children}
    if t is type(None):
        return {"type": "none"}
    if isinstance(ctx, type) and issubclass(ctx, tuple) and hasattr(ctx, "_fields"):  # namedtuple
        return {"type": "namedtuple", "class": _path(ctx), "fields": list(ctx._fields), "children": children}
    if isinstance(ctx, (list, tuple)) and all(isinstance(k, str) for k in ctx):  # e.g. transformers ModelOutput
        return {"type": "class", "class": _path(t), "fields": list(ctx), "children": children}
    raise SignatureError(f"cannot describe pytree node {_path(t)} (context {ctx!r}) as JSON; "
                         "return tuples, lists, dicts, namedtuples or ModelOutputs from the model")


def spec_from_json(d: dict):
    kind = d["type"]
    if kind == "leaf":
        return pytree.treespec_leaf()
    if kind == "none":
        return pytree.TreeSpec(type(None), None, [])
    children = [spec_from_json(c) for c in d["children"]]
    if kind in ("tuple", "list"):
        return pytree.TreeSpec(tuple if kind == "tuple" else list, None, children)
    if kind == "dict":
        return pytree.TreeSpec(dict, list(d["keys"]), children)
    if kind == "namedtuple":
        cls = _import(d["class"])
        if not (isinstance(cls, type) and issubclass(cls, tuple)):
            cls = collections.namedtuple(d["class"].rsplit(".", 1)[-1], d["fields"])
        return pytree.TreeSpec(_namedtuple_type(), cls, children)
    if kind == "class":
        cls = _import(d["class"])
        if cls is not None and cls in pytree.SUPPORTED_NODES:
            return pytree.TreeSpec(cls, list(d["fields"]), children)
        return pytree.TreeSpec(dict, list(d["fields"]), children)  # class unavailable: a dict of its fields
    raise SignatureError(f"unknown pytree node kind {kind!r} in the signature")


def _json_keys(ctx) -> list:
    keys = list(ctx)
    if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in keys):
        raise SignatureError(f"dict keys {keys!r} cannot be stored as JSON; use str or int keys")
    return keys


def _path(t) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _import(path: str):
    module, _, name = path.rpartition(".")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError):
        return None


def _namedtuple_type():
    _, spec = pytree.tree_flatten(collections.namedtuple("_Probe", "a")(0))
    return spec.type
