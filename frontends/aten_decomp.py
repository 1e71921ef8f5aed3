"""Decompose what `aten.py` has no rule for, with torch's own decompositions, before conversion.

    ep = torch.export.export(model, args)          # may hold aten.relu_, aten.add_, aten.min.other, ...
    ep, ops = decompose_unsupported(ep)            # functional graph; only rule-less ops decomposed

torch.export's default graph keeps in-place ops (`nn.ReLU(inplace=True)`, `x.add_(y)`,
`x[:, 0] = v`) and composite ops. When every op already has a rule the program is returned
unchanged (the fast rules, and the patterns `canonicalize` recognises, keep their shape).
Otherwise `ExportedProgram.run_decompositions` runs with a table that decomposes exactly the
ops without a rule: torch.export's default table (CompositeImplicitAutograd ops and the core
ATen decompositions) minus the ops that have a rule, plus torch's ATen-level decompositions
(`torch._decomp.decompositions`, not the prims-level `torch._refs`) of core ops that have no
rule (upsample, reflection pads, grid_sampler_2d, group norm, ...). The result is
functionalized: mutations become `*_scatter`/copies of values, so in-place ops disappear.
Source: torch.export docs, "Export IR and decompositions" (run_decompositions,
default_decompositions); torch/_decomp/__init__.py (core_aten_decompositions).
"""
from __future__ import annotations

import torch

from . import aten

__all__ = ["decompose_unsupported", "missing_ops", "has_rule", "aten_level_decomposition"]

# Ops the converter handles itself (SymInt-valued nodes become dim expressions).
CONVERTER_OPS = {"aten.sym_size.int", "aten.sym_stride.int", "aten.sym_numel.default",
                 "aten.sym_storage_offset.default"}


def has_rule(name: str) -> bool:
    return name in aten.RULES or name in aten.IDENTITY or name in aten.IGNORED or name in CONVERTER_OPS


def missing_ops(ep) -> list[str]:
    """The ATen ops in `ep` (its submodules included) that have no conversion rule, or whose rule
    declines one of its nodes (`aten.DECLINE`, e.g. a reflect-mode pad)."""
    seen: set[str] = set()
    for module in ep.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for n in module.graph.nodes:
            if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload):
                name = str(n.target)
                declines = aten.DECLINE.get(name)
                if name.startswith("aten.") and (not has_rule(name) or declines is not None and declines(n)):
                    seen.add(name)
    return sorted(seen)


def aten_level_decomposition(op):
    """torch's decomposition of `op` when it is written in ATen ops (prims-level refs are not:
    the converter has no rules for prims)."""
    from torch._decomp import decomposition_table
    fn = decomposition_table.get(op)
    return fn if fn is not None and getattr(fn, "__module__", "").startswith("torch._decomp") else None


def decomposition_table(ep):
    """torch.export's default table without the ops that have rules, plus ATen-level
    decompositions of the rule-less (core) ops present in `ep`."""
    table = torch.export.default_decompositions()
    missing = missing_ops(ep)
    for op in list(table.keys()):
        if has_rule(str(op)) and str(op) not in missing:
            table.pop(op)
    for name in missing:
        op = _overload(name)
        if op is not None and op not in table:
            fn = aten_level_decomposition(op)
            if fn is not None:
                table[op] = fn
    return table


def decompose_unsupported(ep):
    """(ep, the rule-less ops that were decomposed away); `ep` unchanged when nothing is missing."""
    missing = missing_ops(ep)
    if not missing:
        return ep, []
    seen, out = list(missing), ep
    for _ in range(4):   # a decomposition may produce other rule-less ops (grid_sample -> grid_sampler_2d)
        out = out.run_decompositions(decomposition_table(out))
        now = missing_ops(out)
        seen += [m for m in now if m not in seen]
        if not any(_overload(m) is not None and aten_level_decomposition(_overload(m)) for m in now):
            break
    left = set(missing_ops(out))
    return out, [m for m in seen if m not in left]


def _overload(name: str):
    packet, overload = name.removeprefix("aten.").rsplit(".", 1)
    return getattr(getattr(torch.ops.aten, packet, None), overload, None)
