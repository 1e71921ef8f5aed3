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
"""
from __future__ import annotations
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..ir.registry import lookup


@dataclass
class PassResult:
    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pass:
    name: ClassVar[str] = ""

    def run(self, graph) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError

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


def register_pass(name: str):
    def deco(cls):
        if name in PASSES:
            raise ValueError(f"pass {name!r} is registered twice")
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
