"""Calibration for data-aware quantization (GPTQ, AWQ): run real inputs through the graph
with the reference interpreter, hooking the `linear` nodes being quantized.

The run is one forward over the calibration batch; the interpreter frees every value after its
last use, so memory is bounded by the live activations at one point of the graph, never the
activations of the whole model. A hook sees a linear node's inputs before it runs and may
replace them (e.g. with a quantized weight) so later layers see quantized outputs, as
sequential GPTQ does. The run stops after the last hooked node.

    calib = Calibration.from_token_ids(graph, ids)     # ids: i64[n, seq] of real text
    QuantizeWeights(bits=4, group=64, method="gptq", calibration=calib).run(graph)
"""
from __future__ import annotations
import itertools
from dataclasses import dataclass
from typing import Callable

import torch

from ..ir import symbolic
from ..ir.dtypes import to_torch
from ..ir.interpreter import last_uses
from ..ir.registry import get_op
from .base import PassError


class CalibrationError(PassError):
    pass


@dataclass
class Calibration:
    """One batch of graph inputs (the calibration set, batched along dim 0)."""
    inputs: tuple[torch.Tensor, ...]

    @staticmethod
    def from_token_ids(graph, ids: torch.Tensor) -> "Calibration":
        """Inputs for a language-model graph whose first input is token ids [batch, seq]; every
        other input must be one that can be empty (e.g. past KV caches, whose `past` dim is 0).
        Any other input (an attention mask, token type ids) cannot be made up: pass all inputs."""
        from ..ir.causal_lm import causal_lm_inputs, is_causal_lm
        if is_causal_lm(graph):   # positions, mask and empty state, as for model(input_ids)
            return Calibration(tuple(causal_lm_inputs(graph, ids.to(torch.long))))
        first = graph.inputs[0]
        env = {d: n for d, n in zip(first.type.shape, ids.shape) if isinstance(d, str)}
        rest = [_empty_input(v, env) for v in graph.inputs[1:]]
        for v, t in zip(graph.inputs[1:], rest):
            if t.numel():
                raise CalibrationError(
                    f"calibration token ids cannot fill graph input %{v.name}: {v.type} (only inputs with an "
                    f"empty dim, such as past KV caches, can be derived); pass calibration as a tuple with one "
                    f"batch per graph input ({', '.join('%' + x.name for x in graph.inputs)})")
        return Calibration((ids.to(to_torch(first.type.dtype)), *rest))

    @staticmethod
    def of(graph, data) -> "Calibration | None":
        """`data` as a Calibration: a Calibration, token ids (from_token_ids), or a tuple/list of
        tensors, one batch per graph input; None for anything else."""
        if isinstance(data, Calibration):
            return data
        if isinstance(data, torch.Tensor):
            return Calibration.from_token_ids(graph, data)
        if isinstance(data, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in data):
            if len(data) != len(graph.inputs):
                raise CalibrationError(f"calibration has {len(data)} tensors; the graph has {len(graph.inputs)} "
                                       f"inputs ({', '.join('%' + x.name for x in graph.inputs)})")
            return Calibration(tuple(data))
        return None

    @property
    def tokens(self) -> int:
        return self.inputs[0].numel()


def _empty_input(v, env):
    shape = []
    for d in v.type.shape:
        if isinstance(d, int):
            shape.append(d)
            continue
        for s in symbolic.free_symbols(d):
            env.setdefault(s, 0)  # an unbound symbol (past length) is empty
        shape.append(symbolic.evaluate(d, env))
    return torch.zeros(shape, dtype=to_torch(v.type.dtype))


@dataclass
class Stats:
    """Input statistics of one linear: H = X^T X / n (the GPTQ Hessian up to 2x) and mean |x|."""
    hessian: torch.Tensor
    absmean: torch.Tensor
    tokens: int

    @staticmethod
    def of(x: torch.Tensor) -> "Stats":
        x = x.reshape(-1, x.shape[-1]).float()
        return Stats(x.T @ x / len(x), x.abs().mean(0), len(x))


Hook = Callable[[object, list], "list | None"]


def run_hooked(graph, calib: Calibration, hooked: list, hook: Hook, progress: str | None = None):
    """Interpret `graph` on the calibration batch, calling `hook(node, args)` before each node
    in `hooked` (it may return replacement args); stop after the last hooked node."""
    from ..ir.interpreter import bind_symbols, resolve_attrs
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    wanted = {id(n) for n in hooked}
    stop = max(order[id(n)] for n in hooked)
    free = last_uses(graph)
    symbols = bind_symbols(graph, calib.inputs)
    env = {id(v): t for v, t in zip(graph.inputs, calib.inputs)}
    bar = _progress(len(hooked), progress)
    with torch.no_grad():
        for i, node in enumerate(itertools.islice(graph.nodes, stop + 1)):
            # weights are read per node: a hook may have rescaled one (AWQ folding)
            args = [v.tensor if v.is_weight else env[id(v)] for v in node.inputs]
            if id(node) in wanted:
                args = hook(node, args) or args
                bar.update(1)
            opdef = get_op(node.op)
            out = opdef.impl(*args, **resolve_attrs(opdef, node.attrs, symbols))
            env.update(zip(map(id, node.outputs), out if isinstance(out, (tuple, list)) else (out,)))
            for v in free.get(i, ()):
                env.pop(id(v), None)
    bar.close()


def collect_stats(graph, calib: Calibration, linears: list, progress: str | None = "calibrating") \
        -> dict[int, Stats]:
    """Stats of the input of every linear in `linears`, keyed by id of the input value
    (linears that share an input share its stats)."""
    stats: dict[int, Stats] = {}

    def hook(node, args):
        key = id(node.inputs[0])
        if key not in stats:
            stats[key] = Stats.of(args[0])
    run_hooked(graph, calib, linears, hook, progress)
    return stats


def _progress(total, desc):
    from ..ir import progress
    return progress.bar(total, desc, "layer", enabled=False if desc is None else None, delay=0)
