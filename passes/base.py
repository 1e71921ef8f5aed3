"""Pass contract: a registered name, typed options, and `run(graph) -> PassResult`.

    @register_pass("dce")
    class DeadCodeElimination(Pass):
        '''Remove nodes whose outputs are never used.'''
        def run(self, graph):
            ...
            return PassResult(changed=n > 0, stats={"removed": n})

Options are dataclass fields on the pass class with defaults; the pipeline parser converts
`quantize-weights{bits=4,group=64}` strings to the field types and rejects unknown names.
Passes mutate the graph in place and must report whether they changed it.

Contracts (after onnx-ir's PassBase and TVM's PassContext). A pass may declare the graph
properties it `requires` and `ensures` (names registered with `register_property`):

    @register_pass("fuse-dequant-matmul")
    class FuseDequantMatmul(Pass):
        requires = ("quantized",)      # dequantize ops exist, or an earlier pass ensured it
        ensures = ("dequant-fused",)   # checked after the pass (under verify), when it changed the graph

The pass manager checks them: a requirement holds when the property's check passes on the graph
or an earlier pass of the same run ensured it (and, unless the property is `stable`, no pass has
changed the graph since); otherwise it raises PassError naming the pass, the
property and the passes that ensure it (so "fuse-dequant-matmul,quantize-weights" fails instead
of silently leaving every dequantize unfused). A pass run directly (`p.run(graph)`) is unchecked.
Shared data (calibration tokens) reaches passes through the run's `PassContext`: a pass whose
`run` takes a second parameter gets it, `run(self, graph, ctx)`.
"""
from __future__ import annotations
import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from ..ir.registry import lookup


@dataclass
class PassResult:
    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """What one pipeline run shares between its passes (the manager's `run(graph, ctx)`).
    `calibration`: token ids i64[n, seq] (or a passes.calibration.Calibration) for passes that
    calibrate (quantize-weights method=gptq/awq, select-precision) and were given none of their own.
    `ensured`: properties established by passes that ran; `ran`: their names, in order."""
    calibration: Any = None
    ensured: set[str] = field(default_factory=set)
    ran: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Property:
    """A graph property passes can require/ensure. `check(graph) -> bool` tests it on a graph.
    `stable`: no pass undoes it once ensured (weights stay quantized); an unstable one (no dead
    nodes) counts as ensured only until the next pass that changes the graph."""
    name: str
    doc: str
    check: Callable[[Any], bool]
    stable: bool = False


PROPERTIES: dict[str, Property] = {}


def register_property(name: str, doc: str, check: Callable[[Any], bool], stable: bool = False) -> Property:
    if name in PROPERTIES:
        raise ValueError(f"pass property {name!r} is registered twice")
    PROPERTIES[name] = Property(name, doc, check, stable)
    return PROPERTIES[name]


register_property("quantized", "weights are quantized: the graph has dequantize ops",
                  lambda g: any(n.op == "dequantize" for n in g.nodes), stable=True)
register_property("no-dead-nodes", "no pure node's outputs go unused",
                  lambda g: not any(g.is_dead(n) for n in g.nodes))


@dataclass
class Pass:
    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()  # properties that must hold before it runs
    ensures: ClassVar[tuple[str, ...]] = ()   # properties that hold after it changed the graph
    # ops it adds that not every target lowers: slimgraph.optimize checks them against the target before it
    # imports the model or runs any pass (`introduced_ops`: the ones these options make)
    introduces: ClassVar[tuple[str, ...]] = ()

    def introduced_ops(self) -> tuple[str, ...]:
        return self.introduces

    def run(self, graph) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError

    def run_with(self, graph, ctx: PassContext) -> PassResult:
        """Run with the pipeline's context: passes whose `run` takes `ctx` get it."""
        if _takes_ctx(type(self)):
            return self.run(graph, ctx)
        return self.run(graph)

    def validate(self) -> None:
        """Check option values that need no graph (e.g. bits=3); raise ValueError/PassError saying
        what is allowed. Called when a pipeline is parsed, so a bad value fails before any pass runs."""

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        """Option name -> its resolved type annotation (what the pipeline parser converts to)."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def spec(self) -> str:
        """The pipeline-string form of this pass with its non-default options."""
        defaults = type(self)()
        opts = {k: v for k, v in self.options().items() if getattr(defaults, k) != v}
        return self.name + ("{" + ",".join(f"{k}={_fmt(v)}" for k, v in opts.items()) + "}" if opts else "")


def _fmt(v):
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(map(_fmt, v)) + "]"
    return str(v)


class PassError(ValueError):
    """A pass failed, or a pipeline/option is invalid. The message names the pass."""


PASSES: dict[str, type[Pass]] = {}


def _takes_ctx(cls) -> bool:
    return len(inspect.signature(cls.run).parameters) >= 3  # self, graph, ctx


def ensured_by(prop: str) -> list[str]:
    """Names of the registered passes that ensure `prop`."""
    _load_passes()
    return sorted(n for n, cls in PASSES.items() if prop in cls.ensures)


def register_pass(name: str):
    def deco(cls):
        if name in PASSES:
            raise ValueError(f"pass {name!r} is registered twice")
        for prop in (*cls.requires, *cls.ensures):
            if prop not in PROPERTIES:
                raise ValueError(f"pass {name!r}: unknown property {prop!r} in requires/ensures; "
                                 f"registered: {', '.join(sorted(PROPERTIES))}")
        cls.name = name
        # a subclass of a dataclass inherits __dataclass_fields__; only its own dict says it was processed
        PASSES[name] = cls if "__dataclass_fields__" in cls.__dict__ else dataclass(cls)
        return PASSES[name]
    return deco


def get_pass(name: str) -> type[Pass]:
    _load_passes()
    return lookup(PASSES, name, "pass", PassError)


def all_passes() -> dict[str, type[Pass]]:
    _load_passes()
    return dict(PASSES)


def _load_passes():
    from . import registry  # noqa: F401  (imports every pass module)
