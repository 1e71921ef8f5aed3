"""quantize-weights: replace float `linear` weights by packed integer weights + `dequantize`.

    linear(x, @w)  ->  linear(x, dequantize(@w.qweight, @w.scales, @w.zeros?) {bits, group})

Run `fuse-dequant-matmul` afterwards to turn each pair into one `qlinear`. The graph stays
runnable by the interpreter at every step. Methods:
  rtn       round to nearest, min/max range per (row, group)
  gptq      GPTQ error compensation, sequential over the calibration run (passes/gptq.py)
  awq       AWQ scales folded into the producers of the inputs, then clip search + RTN (passes/awq.py)
  awq-gptq  AWQ scales, then GPTQ rounding
gptq/awq need calibration data: `slimgraph.optimize` fills it in (its `calibration=` argument, or
for a transformers causal LM the shipped calibration split tokenized with the model's tokenizer);
from Python, `calibration=` token ids i64[n, seq] of real text (slimgraph.evaluate.token_ids) or a
Calibration (passes/calibration.py).
Selection: every linear weight except embeddings and `lm_head` (a weight an `embedding` op also
reads, e.g. tied heads); `include`/`exclude` are fnmatch patterns on weight names. An included
tied head (e.g. include=[lm_head.weight] on SmolLM2) is quantized once: its embedding lookups read
the same packed table.
"""
from __future__ import annotations
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch

from ..ir import quant_format as Q
from ..ir.dtypes import to_torch
from .awq import awq_scales, fold_target, scaled_stats
from .base import Pass, PassError, PassResult, register_pass
from .calibration import Calibration, Stats, collect_stats, run_hooked
from .clip import search_clip
from .gptq import gptq_quantize

DEFAULT_EXCLUDE = ("*lm_head*", "*embed*")


@register_pass("quantize-weights")
@dataclass
class QuantizeWeights(Pass):
    """Quantize linear weights to int8/int4 (packed) with RTN, GPTQ or AWQ."""
    bits: int = 4
    group: int = 64                 # 0 = per output channel
    sym: Optional[bool] = None      # None: symmetric for int8, asymmetric for int4
    method: Literal["rtn", "gptq", "awq", "awq-gptq"] = "rtn"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    scale_dtype: Literal["f32", "f16"] = "f32"
    damp: float = 0.01
    act_order: bool = True
    calibration: Any = None         # Calibration or token ids i64[n, seq]; gptq/awq need it (set from Python)
    layer_overrides: Any = None     # {weight name: (bits, group)} from select-precision

    PYTHON_ONLY = ("calibration", "layer_overrides")   # not pipeline-string options

    def options(self):
        return {k: v for k, v in super().options().items() if k not in self.PYTHON_ONLY}

    def needs_calibration(self) -> bool:
        return self.method != "rtn" and self.calibration is None

    def validate(self):
        check_options(self.bits, self.group, "")
        if not 0 < self.damp < 1:
            raise PassError(f"damp={self.damp} must be in (0, 1) (GPTQ's diagonal damping, a fraction of the "
                            f"mean Hessian diagonal; default 0.01)")

    def run(self, graph) -> PassResult:
        Q.check_bits(self.bits, "quantize-weights: ")
        targets = self.select(graph)
        if not targets:
            return PassResult(False, {"quantized": 0})
        for name, users in targets.items():
            self.check_layer(graph.weights[name])
        if self.method == "rtn":
            codes = {n: self.quantize(graph.weights[n].tensor, n, None) for n in targets}
        else:
            codes = self.calibrated(graph, targets)
        before = sum(graph.weights[n].type.nbytes() for n in targets)
        after = sum(self.rewrite(graph, n, targets[n], *codes[n]) for n in targets)
        return PassResult(True, {"quantized": len(targets), "method": self.method,
                                 "weight_bytes_before": before, "weight_bytes_after": after})

    # ---- selection and checks ----------------------------------------------------------------
    def layer_bits_group(self, name):
        return (self.layer_overrides or {}).get(name, (self.bits, self.group))

    def layer_sym(self, bits):
        return self.sym if self.sym is not None else bits == 8

    def select(self, graph) -> dict[str, list]:
        """weight name -> the linear nodes that read it as their weight."""
        linear_users: dict[str, list] = {}
        for n in graph.nodes:
            if n.op == "linear" and n.inputs[1].is_weight:
                linear_users.setdefault(n.inputs[1].name, []).append(n)
        match = lambda name, pats: any(fnmatch.fnmatch(name, p) for p in pats)
        if self.include:
            chosen = [w for w in graph.weights if match(w, self.include)]
            for w in chosen:
                if w not in linear_users:
                    t = graph.weights[w].type
                    raise PassError(f"quantize-weights: weight @{w} ({t}, used by "
                                    f"{', '.join(u.op for u in graph.weights[w].users) or 'nothing'}) "
                                    f"is not a 2-D linear weight; only linear weights can be quantized: "
                                    f"exclude it or narrow include={self.include}")
        else:
            embedded = {n.inputs[0].name for n in graph.nodes if n.op == "embedding"}
            chosen = [w for w in linear_users if w not in embedded and not match(w, DEFAULT_EXCLUDE)]
        return {w: linear_users[w] for w in chosen if not match(w, self.exclude)}

    def check_layer(self, w):
        bits, group = self.layer_bits_group(w.name)
        Q.check_bits(bits, f"quantize-weights @{w.name}: ")
        if w.type.rank != 2 or not w.type.is_static:
            raise PassError(f"quantize-weights: weight @{w.name} is {w.type}; only static 2-D [out, in] "
                            f"weights can be quantized")
        k = w.type.shape[1]
        if group and k % group:
            raise PassError(f"quantize-weights: group={group} does not divide the input dim {k} of layer "
                            f"@{w.name}; groups that fit: {Q.groups_that_fit(k) or 'none'} (or group=0, "
                            f"per-channel), or exclude the layer")
        if bits == 4 and k % 2:
            raise PassError(f"quantize-weights: int4 packs two values per byte; layer @{w.name} has an odd "
                            f"input dim {k}: use bits=8 or exclude it")

    # ---- quantization ------------------------------------------------------------------------
    def quantize(self, w, name, stats: Stats | None):
        bits, group = self.layer_bits_group(name)
        sym = self.layer_sym(bits)
        if self.method in ("gptq", "awq-gptq"):
            return gptq_quantize(w, stats.hessian, bits, group, sym, damp=self.damp, act_order=self.act_order)
        clip = search_clip(w, stats.hessian, bits, group, sym) if stats is not None else 1.0
        return Q.quantize_rtn(w, bits, group, sym, clip)

    def calibrated(self, graph, targets) -> dict:
        self.calibration = Calibration.of(graph, self.calibration)
        if self.calibration is None:
            raise PassError(f"quantize-weights: method={self.method} needs calibration data: "
                            f"slimgraph.optimize(model, ..., calibration=ids or text) (a transformers causal LM "
                            f"with a loadable tokenizer gets the shipped calibration text by default), `slimgraph "
                            f"compile ... --calibration FILE` (text, or token ids in .pt/.npy/.txt), or from "
                            f"Python QuantizeWeights(..., calibration=ids i64[n, seq], or a tuple with one batch "
                            f"per graph input)")
        linears = [n for users in targets.values() for n in users]
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        linears.sort(key=lambda n: order[id(n)])
        stats = {}
        if self.method in ("awq", "awq-gptq"):
            stats = self.apply_awq(graph, targets, linears)
        if self.method == "awq":
            return {n: self.quantize(graph.weights[n].tensor, n, stats[n]) for n in targets}
        return self.sequential_gptq(graph, targets, linears)

    def apply_awq(self, graph, targets, linears) -> dict[str, Stats]:
        """Search and fold AWQ scales for every input shared by target linears; returns each
        weight's input statistics in the scaled space."""
        raw = collect_stats(graph, self.calibration, linears, "awq: calibrating")
        by_input: dict[int, list] = {}
        for n in linears:
            by_input.setdefault(id(n.inputs[0]), []).append(n)
        out: dict[str, Stats] = {}
        for key, nodes in by_input.items():
            x = nodes[0].inputs[0]
            names = list(dict.fromkeys(n.inputs[1].name for n in nodes))
            fold = fold_target(x) if _only_users(x, nodes) and all(
                len(targets[w]) == len(graph.weights[w].users) for w in names) else None
            s = None
            if fold is not None:
                bits, group = self.layer_bits_group(names[0])
                s = awq_scales([graph.weights[w].tensor for w in names], raw[key], bits, group,
                               self.layer_sym(bits))
                fold(s)
                for w in names:
                    wv = graph.weights[w]
                    wv.tensor = (wv.tensor * s).to(wv.tensor.dtype)
            for w in names:
                out[w] = scaled_stats(raw[key], s) if s is not None else raw[key]
        return out

    def sequential_gptq(self, graph, targets, linears) -> dict:
        """GPTQ each weight at its first use in one calibration run; later layers see the
        quantized outputs (as sequential GPTQ does)."""
        done: dict[str, tuple] = {}
        deq: dict[str, torch.Tensor] = {}
        stats: dict[int, Stats] = {}
        pending: dict[int, int] = {}   # input -> hooked nodes still to run (frees its stats after)
        for n in linears:
            pending[id(n.inputs[0])] = pending.get(id(n.inputs[0]), 0) + 1

        def hook(node, args):
            name, key = node.inputs[1].name, id(node.inputs[0])
            if name not in done:
                if key not in stats:
                    stats[key] = Stats.of(args[0])
                w = graph.weights[name].tensor
                done[name] = self.quantize(w, name, stats[key])
                deq[name] = _dequant_codes(*done[name], self.layer_bits_group(name)[1]).to(w.dtype)
            pending[key] -= 1
            if not pending[key]:
                stats.pop(key, None)
            return [args[0], deq[name], *args[2:]]
        run_hooked(graph, self.calibration, linears, hook, f"{self.method}: quantizing")
        return done

    # ---- rewrite -----------------------------------------------------------------------------
    def rewrite(self, graph, name, users, codes, scales, zeros) -> int:
        bits, group = self.layer_bits_group(name)
        w = graph.weights[name]
        qweight, scales, zeros = Q.store(codes, scales, zeros, bits, self.layer_sym(bits),
                                         to_torch(self.scale_dtype))
        packed = [graph.add_weight(graph.fresh_name(f"{name}.qweight"), qweight),
                  graph.add_weight(graph.fresh_name(f"{name}.scales"), scales)]
        if zeros is not None:
            packed.append(graph.add_weight(graph.fresh_name(f"{name}.zeros"), zeros))
        # a tied head's embedding lookups read the same quantized table (fuse-dequant-matmul: qembedding)
        lookups = [u for u in w.users if u.op == "embedding" and u.inputs[0] is w]
        first = min([*users, *lookups], key=graph.nodes.index)
        with graph.inserting_before(first):
            node = graph.add_node("dequantize", packed, {"bits": bits, "group": group, "dtype": w.type.dtype},
                                  names=[graph.fresh_name(f"{name}.dq")])
        for u in users:
            u.set_input(1, node.output)
        for u in lookups:
            u.set_input(0, node.output)
        if not w.uses:
            graph.remove_weight(name)
        return sum(v.type.nbytes() for v in packed)


def check_options(bits: int, group: int, prefix: str) -> None:
    """Option values any layer would refuse: bits outside {4, 8}, a negative group."""
    if bits not in Q.SUPPORTED_BITS:
        raise PassError(f"{prefix}bits={bits} is not supported; use {prefix}bits=4 (int4, two per byte) "
                        f"or {prefix}bits=8")
    if group < 0:
        raise PassError(f"{prefix}group={group} must be 0 (one group per output row) or a positive group "
                        f"size dividing the input dim; 32, 64 and 128 have fast int4 kernels")


def _only_users(x, nodes) -> bool:
    ids = {id(n) for n in nodes}
    return all(id(u) in ids for u in x.users)


def _dequant_codes(codes, scales, zeros, group):
    out, k = codes.shape
    g = Q.group_size(group, k)
    return ((codes.view(out, k // g, g) - zeros.unsqueeze(-1)) * scales.unsqueeze(-1)).view(out, k)
