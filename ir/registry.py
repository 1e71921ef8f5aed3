"""The op registry: every op is declared once, with its signature, attribute schema,
type inference and a torch reference implementation (the oracle for every pass and codegen).

    @register_op("add", inputs="a b", infer=infer_broadcast)
    def add(a, b):
        return a + b

`inputs` names the operands; a trailing `?` marks an optional one (only at the end) and a
trailing `*` a variadic one. `attrs` maps names to `Attr(kind, default)`; kinds are
int, float, bool, str, dtype, dim (int or symbolic expr), ints, dims, any.

`traits` say what kind of computation an op is, once, for every pass, partitioner and target
(cf. tinygrad's `GroupOp` sets, TVM's per-op attributes); the vocabulary is `TRAITS`:

    @register_op("add", inputs="a b", infer=infer_broadcast, traits=("elementwise", "commutative"))
    get_op("add").traits == frozenset({"elementwise", "commutative"})
    ops_with("view")     # names of every op with that trait
"""
from __future__ import annotations
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from . import symbolic
from .types import TensorType

REQUIRED = object()

# The trait vocabulary: an unknown name in register_op(..., traits=) is an error.
TRAITS: dict[str, str] = {
    "elementwise": "each output element depends only on the input elements at its (broadcast) index",
    "reduction": "reduces along `dims`/`dim` (sum, mean, max, argmax, ...)",
    "view": "moves or selects elements without arithmetic (reshape, permute, slice, concat, ...)",
    "commutative": "two operands that may be swapped without changing the result",
    "reads_weight": "an operand is normally a (possibly packed) constant weight: linear, qlinear, "
                    "dequantize, embedding, qembedding, conv2d",
    "generator": "no tensor inputs: the result comes from attributes alone (constant, full, arange)",
    "state": "reads or updates state carried across calls (a KV cache); reserved for state ops",
    "random": "draws random numbers (not reproducible by value); reserved, no such op yet",
}
ATTR_KINDS = ("int", "float", "bool", "str", "dtype", "dim", "ints", "dims", "any", "floats")


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = REQUIRED

    def __post_init__(self):
        if self.kind not in ATTR_KINDS:
            raise ValueError(f"unknown attribute kind {self.kind!r}; valid: {ATTR_KINDS}")


@dataclass
class OpDef:
    name: str
    inputs: tuple[str, ...]
    attrs: dict[str, Attr]
    infer_fn: Callable[[list[TensorType], dict], list[TensorType]]
    impl: Callable
    pure: bool = True           # no side effects: dce/cse may remove or merge it
    doc: str = ""
    symbolic_attrs: tuple[str, ...] = field(default=())  # attrs that may hold symbolic dims
    traits: frozenset[str] = frozenset()                 # names from TRAITS

    def has(self, trait: str) -> bool:
        """Whether this op has `trait` (a name from TRAITS; an unknown name is an error)."""
        if trait not in TRAITS:
            raise ValueError(f"unknown op trait {trait!r}; valid: {', '.join(TRAITS)}")
        return trait in self.traits

    @property
    def min_inputs(self) -> int:
        return sum(1 for i in self.inputs if not i.endswith(("?", "*")))

    @property
    def variadic(self) -> bool:
        return any(i.endswith("*") for i in self.inputs)

    def check_arity(self, n: int):
        mx = None if self.variadic else len(self.inputs)
        if n < self.min_inputs or (mx is not None and n > mx):
            want = f"{self.min_inputs}" + ("+" if mx is None else f"..{mx}" if mx != self.min_inputs else "")
            raise TypeError(f"op {self.name}({', '.join(self.inputs)}) takes {want} inputs, got {n}")

    def normalize_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise TypeError(f"op {self.name}: unknown attribute(s) {sorted(unknown)}; "
                            f"valid: {sorted(self.attrs) or 'none'}")
        out = {}
        for k, spec in self.attrs.items():
            if k in attrs and attrs[k] is None and spec.default is None:
                out[k] = None  # an optional attribute left unset
            elif k in attrs:
                out[k] = _check_attr(self.name, k, spec.kind, attrs[k])
            elif spec.default is REQUIRED:
                raise TypeError(f"op {self.name}: missing required attribute {k!r} ({spec.kind})")
            else:
                out[k] = spec.default
        return out

    def infer(self, in_types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        self.check_arity(len(in_types))
        out = self.infer_fn(in_types, attrs)
        return [out] if isinstance(out, TensorType) else list(out)

    def run(self, *tensors, **attrs):
        return self.impl(*tensors, **attrs)


def _check_attr(op, k, kind, v):
    def bad():
        raise TypeError(f"op {op}: attribute {k}={v!r} is not a valid {kind}")
    if kind == "int" and (not isinstance(v, int) or isinstance(v, bool)):
        bad()
    if kind == "float":
        if v is None:  # optional float attrs (e.g. attention scale) default to None
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            bad()
        return float(v)
    if kind == "bool" and not isinstance(v, bool):
        bad()
    if kind in ("str", "dtype") and not isinstance(v, str):
        bad()
    if kind == "dim":
        return None if v is None else symbolic.canon(v)
    if kind in ("ints", "dims", "floats"):
        if v is None:
            return None
        if not isinstance(v, (list, tuple)):
            bad()
        if kind == "ints":
            return [int(x) for x in v]
        if kind == "floats":
            return [float(x) for x in v]
        return [symbolic.canon(x) for x in v]
    return v


REGISTRY: dict[str, OpDef] = {}


def register_op(name: str, *, inputs: str = "", attrs: dict[str, Attr] | None = None,
                infer: Callable, pure: bool = True, traits: tuple[str, ...] | str = ()):
    """Decorator: declare op `name` whose reference implementation is the decorated function.
    `traits`: names from TRAITS (a tuple, or one string); an unknown one raises ValueError."""
    traits_ = frozenset((traits,) if isinstance(traits, str) else traits)
    unknown = traits_ - set(TRAITS)
    if unknown:
        raise ValueError(f"op {name!r}: unknown trait(s) {sorted(unknown)}; valid: {', '.join(TRAITS)}")
    if "commutative" in traits_ and len(inputs.split()) != 2:
        raise ValueError(f"op {name!r}: 'commutative' needs exactly two inputs, it has {inputs!r}")

    def deco(fn):
        if name in REGISTRY:
            raise ValueError(f"op {name!r} is declared twice")
        attrs_ = attrs or {}
        REGISTRY[name] = OpDef(name, tuple(inputs.split()), attrs_, infer, fn, pure,
                               (fn.__doc__ or "").strip(),
                               tuple(k for k, a in attrs_.items() if a.kind in ("dim", "dims")), traits_)
        return fn
    return deco


def ops_with(trait: str) -> frozenset[str]:
    """Names of every op that has `trait` (a name from TRAITS)."""
    if trait not in TRAITS:
        raise ValueError(f"unknown op trait {trait!r}; valid: {', '.join(TRAITS)}")
    return frozenset(n for n, d in all_ops().items() if trait in d.traits)


def lookup(table: dict, name: str, what: str, error: type[Exception] = KeyError):
    """`table[name]`, or `error` naming the closest matches and every valid name (ops, passes, targets)."""
    try:
        return table[name]
    except KeyError:
        close = difflib.get_close_matches(name, table, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        plural = what + ("es" if what.endswith("s") else "s")
        raise error(f"unknown {what} {name!r}.{hint} Valid {plural}: {', '.join(sorted(table))}") from None


def get_op(name: str) -> OpDef:
    _load_opset()
    return lookup(REGISTRY, name, "op")


def all_ops() -> dict[str, OpDef]:
    _load_opset()
    return dict(REGISTRY)


def _load_opset():
    from . import opset  # noqa: F401  (declares the ops on import)
