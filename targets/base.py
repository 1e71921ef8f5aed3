"""Target contract: a small declarative object wiring a default pipeline to a codegen.

    Target(name="torch", codegen=build_torch_runner, default_pipeline="canonicalize,cse,dce",
           requires=(), description="...")

`codegen(graph) -> Runner`: a callable `runner(*tensors) -> list[Tensor]` (graph inputs in
order, graph outputs in order). Codegen never changes the graph. `requires` names optional
packages and the extra that installs them, checked lazily so `import slimgraph` needs torch only.
"""
from __future__ import annotations
import importlib.util
from dataclasses import dataclass, field
from ..ir.registry import lookup
from typing import Callable

Runner = Callable[..., list]


class MissingDependencyError(ImportError):
    pass


@dataclass(frozen=True)
class Target:
    name: str
    codegen: Callable  # (graph) -> Runner; imported lazily by the codegen module itself
    default_pipeline: str = ""
    description: str = ""
    requires: tuple[tuple[str, str], ...] = field(default=())  # (import name, pip extra)

    def check_available(self):
        for module, extra in self.requires:
            if importlib.util.find_spec(module) is None:
                raise MissingDependencyError(
                    f"target {self.name!r} needs the {module!r} package: pip install 'slimgraph[{extra}]'")

    def compile(self, graph) -> Runner:
        self.check_available()
        return self.codegen(graph)


TARGETS: dict[str, Target] = {}


def register_target(t: Target) -> Target:
    if t.name in TARGETS:
        raise ValueError(f"target {t.name!r} is registered twice")
    TARGETS[t.name] = t
    return t


def get_target(name: str) -> Target:
    from . import registry  # noqa: F401
    return lookup(TARGETS, name, "target", ValueError)
