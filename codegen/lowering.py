"""Per-target lowering tables: what each codegen does with an IR op, registered per (target, op).

    @lowering("torch", "rms_norm")
    def rms_norm(x, weight=None, *, eps): ...            # a torch kernel: the reference impl's signature

    @lowering("onnx", "rms_norm")
    def _rms_norm(ex, node, ins): ...                     # an ONNX emitter: appends ONNX nodes

    get_lowering("torch", "rms_norm")    # -> Lowering(target="torch", op="rms_norm", fn=..., ...) or None
    lowerings("onnx")                    # -> {op: Lowering} for every op the ONNX exporter lowers

What `fn` is depends on the target's codegen (torch: `fn(*inputs, **attrs)` computing what the op's
reference impl computes, faster; onnx: `emit(exporter, node, input names) -> output names`; c: `fn(emitter, node) -> C statements`).
`prepack(node, const_inputs) -> {input index: tensor}` (torch) runs once at build time on the
node's weight inputs; `scalars=True` (torch) says `fn` accepts Python numbers for 0-d constants.
Lowering tables hold functions only: nothing here mutates a graph.

Registering the same (target, op) twice, or an op the registry does not declare, is an error at
registration. A target's table is filled by importing the modules listed for it in
`LOWERING_MODULES` (on the first lookup); a new target adds its modules there. Which targets run
ops without a lowering through their reference impl is the target's business (targets/base.py
`Target.supports`).
"""
from __future__ import annotations
import importlib
from dataclasses import dataclass
from typing import Callable

from ..ir.registry import get_op

__all__ = ["Lowering", "lowering", "register_lowering", "get_lowering", "lowerings", "LOWERING_MODULES"]


@dataclass(frozen=True)
class Lowering:
    target: str
    op: str
    fn: Callable
    prepack: Callable | None = None
    scalars: bool = False  # torch: accepts Python scalars for 0-d constant inputs


# target -> modules that register its lowerings when imported
LOWERING_MODULES: dict[str, list[str]] = {
    "torch": ["slimgraph.codegen.torch_kernels", "slimgraph.codegen.torch_qlinear", "slimgraph.codegen.torch_kv",
              "slimgraph.codegen.torch_linear_attention"],
    "onnx": ["slimgraph.codegen.onnx_emitters"],
    "triton-expr": ["slimgraph.codegen.triton.elementwise"],
    "triton": ["slimgraph.codegen.triton.kernels.qlinear", "slimgraph.codegen.triton.kernels.norms",
               "slimgraph.codegen.triton.kernels.rope", "slimgraph.codegen.triton.kernels.attention",
               "slimgraph.codegen.triton.generators"],
    "c": ["slimgraph.codegen.c.lower_elementwise", "slimgraph.codegen.c.lower_nn", "slimgraph.codegen.c.lower_shape"],
    "cpu": ["slimgraph.codegen.tvm.relax_lower", "slimgraph.codegen.tvm.relax_lower_more",
            "slimgraph.codegen.tvm.relax_lower_index"],
}

_TABLES: dict[str, dict[str, Lowering]] = {}
_loaded: set[str] = set()


def register_lowering(target: str, op: str, fn: Callable, *, prepack: Callable | None = None,
                      scalars: bool = False) -> Callable:
    """Register `fn` as `target`'s lowering of IR op `op`; returns `fn`. Raises ValueError when
    (target, op) already has one, KeyError (with close matches) when `op` is not a declared op."""
    get_op(op)
    table = _TABLES.setdefault(target, {})
    if op in table:
        raise ValueError(f"target {target!r}: op {op!r} is lowered twice ({table[op].fn!r} and {fn!r})")
    table[op] = Lowering(target, op, fn, prepack, scalars)
    return fn


def lowering(target: str, op: str, *, prepack: Callable | None = None, scalars: bool = False):
    """Decorator form of `register_lowering`."""
    return lambda fn: register_lowering(target, op, fn, prepack=prepack, scalars=scalars)


def _load(target: str):
    if target not in _loaded:
        for mod in LOWERING_MODULES.get(target, ()):
            importlib.import_module(mod)
        _loaded.add(target)


def get_lowering(target: str, op: str) -> Lowering | None:
    """`target`'s lowering of `op`, or None when it has none (the target may still run the op
    through its reference impl: see `Target.supports`)."""
    _load(target)
    return _TABLES.get(target, {}).get(op)


def lowerings(target: str) -> dict[str, Lowering]:
    """Every op `target` lowers, as {op: Lowering} (a copy)."""
    _load(target)
    return dict(_TABLES.get(target, {}))
