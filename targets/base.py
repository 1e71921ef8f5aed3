"""Target contract: a small declarative object wiring a default pipeline to a build and a load.

    Target(name="torch", build=torch_fx.build, load=torch_fx.load, host=torch_fx.host,
           default_pipeline="canonicalize,cse,dce", requires=(), description="...")

`build(graph) -> Products` is the codegen (run once, by optimize); `load(graph, products) -> Runner`
turns products into something that runs, without codegen (codegen/contract.py). `host() -> dict` names
what products depend on besides the graph (versions, CPU capability); `slimgraph.load` builds again
when the stored host differs from this one. Codegen never changes the graph. `requires` names
optional packages and the extra that installs them, checked lazily so `import slimgraph` needs torch only.
"""
from __future__ import annotations
import importlib.util
from dataclasses import dataclass, field
from typing import Callable

from ..codegen.contract import Products, Runner
from ..ir.registry import lookup


class MissingDependencyError(ImportError):
    pass


def _no_host() -> dict:
    return {}


@dataclass(frozen=True)
class Target:
    name: str
    build: Callable      # (graph) -> Products; imports its codegen lazily
    load: Callable       # (graph, Products) -> Runner
    default_pipeline: str = ""
    description: str = ""
    requires: tuple[tuple[str, str], ...] = field(default=())  # (import name, pip extra)
    host: Callable[[], dict] = _no_host

    def check_available(self):
        for module, extra in self.requires:
            if importlib.util.find_spec(module) is None:
                raise MissingDependencyError(
                    f"target {self.name!r} needs the {module!r} package: pip install 'slimgraph[{extra}]'")

    def compile(self, graph) -> Runner:
        """build + load."""
        self.check_available()
        products = self.build(graph)
        products.meta.setdefault("host", self.host())
        return self.load(graph, products)

    def load_or_rebuild(self, graph, products: Products) -> tuple[Runner, str | None]:
        """Load stored products; when they were built for another host, build again from the graph.
        Returns the runner and, when it rebuilt, a sentence saying why."""
        self.check_available()
        built_for, here = products.meta.get("host", {}), self.host()
        if built_for == here:
            return self.load(graph, products), None
        diff = {k: (built_for.get(k), here.get(k)) for k in set(built_for) | set(here)
                if built_for.get(k) != here.get(k)}
        why = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in sorted(diff.items()))
        return self.compile(graph), f"target {self.name!r}: products were built for another host ({why}); rebuilt"


TARGETS: dict[str, Target] = {}


def register_target(t: Target) -> Target:
    if t.name in TARGETS:
        raise ValueError(f"target {t.name!r} is registered twice")
    TARGETS[t.name] = t
    return t


def get_target(name: str) -> Target:
    from . import registry  # noqa: F401
    return lookup(TARGETS, name, "target", ValueError)
