"""Target contract: a small declarative object wiring a default pipeline to a build and a load.

    Target(name="torch", build=torch_fx.build, load=torch_fx.load, host=torch_fx.host,
           default_pipeline="canonicalize,cse,dce", requires=(), description="...")

`build(graph) -> Products` is the codegen (run once, by optimize); `load(graph, products) -> Runner`
turns products into something that runs, without codegen (codegen/contract.py). `host() -> dict` names
what products depend on besides the graph (versions, CPU capability); `slimgraph.load` builds again
when the stored host differs from this one. Codegen never changes the graph. `requires` names
optional packages and the extra that installs them, checked lazily so `import slimgraph` needs torch only.

What a target can run: `lowers` names its lowering table (codegen/lowering.py) and
`reference_fallback` says whether an op without a lowering runs its registry reference impl.

    get_target("torch").supports(node)      # True: a lowering, or the reference impl
    get_target("torch").native(node)        # True only where a "torch" lowering exists
    get_target("onnx").support("rope")      # "native" | "reference" | None
"""
from __future__ import annotations
import importlib.util
from dataclasses import dataclass, field
from typing import Callable

from ..codegen.contract import Products, Runner
from ..ir.registry import lookup


class MissingDependencyError(ImportError):
    pass


class TargetUnavailableError(RuntimeError):
    """The target's packages are installed but this machine cannot run it (e.g. `cuda` without a GPU)."""


def _no_host() -> dict:
    return {}


def _always() -> None:
    return None


@dataclass(frozen=True)
class Target:
    name: str
    build: Callable      # (graph) -> Products; imports its codegen lazily
    load: Callable       # (graph, Products) -> Runner
    default_pipeline: str = ""
    description: str = ""
    requires: tuple[tuple[str, str], ...] = field(default=())  # (import name, pip extra)
    host: Callable[[], dict] = _no_host
    lowers: str | None = None          # the lowering table it reads (codegen/lowering.py), if any
    reference_fallback: bool = False   # ops without a lowering run their reference impl
    unavailable: Callable[[], str | None] = _always  # why it cannot run on this machine (no GPU, ...), or None

    def support(self, node_or_op) -> str | None:
        """How this target runs an op (a Node or an op name): "native" (it has a lowering),
        "reference" (the op's reference impl, e.g. the torch target's generic path) or None."""
        op = node_or_op if isinstance(node_or_op, str) else node_or_op.op
        from ..ir.registry import get_op
        get_op(op)  # an unknown op is an error, not "unsupported"
        if self.lowers is not None:
            from ..codegen.lowering import get_lowering
            if get_lowering(self.lowers, op) is not None:
                return "native"
        return "reference" if self.reference_fallback else None

    def supports(self, node_or_op) -> bool:
        """This target can run the node (natively or through the op's reference impl)."""
        return self.support(node_or_op) is not None

    def native(self, node_or_op) -> bool:
        """This target has its own lowering for the node's op (not a reference fallback)."""
        return self.support(node_or_op) == "native"

    def check_available(self):
        for module, extra in self.requires:
            if importlib.util.find_spec(module) is None:
                raise MissingDependencyError(
                    f"target {self.name!r} needs the {module!r} package: pip install 'slimgraph[{extra}]'")
        why = self.unavailable()
        if why:
            raise TargetUnavailableError(why)

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
