"""Target contract: a small declarative object wiring a default pipeline to a codegen.

    Target(name="torch", codegen=build_torch_runner, default_pipeline="canonicalize,cse,dce",
           requires=(), description="...")

`codegen(graph) -> Runner`: a callable `runner(*tensors) -> list[Tensor]` (graph inputs in
order, graph outputs in order). Codegen never changes the graph. `requires` names optional
packages and the extra that installs them, checked lazily so `import slimgraph` needs torch only.

What a target can run: `lowers` names its lowering table (codegen/lowering.py) and
`reference_fallback` says whether an op without a lowering runs its registry reference impl.

    get_target("torch").supports(node)      # True: a lowering, or the reference impl
    get_target("torch").native(node)        # True only where a "torch" lowering exists
    get_target("onnx").support("rope")      # "native" | "reference" | None
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
    lowers: str | None = None          # the lowering table it reads (codegen/lowering.py), if any
    reference_fallback: bool = False   # ops without a lowering run their reference impl

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
