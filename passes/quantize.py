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
Selection (passes/quant_layers.py): every weight-times-activation layer: `linear`, `matmul` by a
constant weight in either orientation (rewritten to `linear` first: GPT-2's Conv1D), `conv2d`
(per output channel, groups along input channels x kernel taps; method=rtn), and embeddings when
`include` names them. By default embeddings and `lm_head` (a weight an `embedding` op also reads,
e.g. tied heads) are left out; `include`/`exclude` are fnmatch patterns on weight names. An included
tied head (e.g. include=[lm_head.weight] on SmolLM2) is quantized once: its embedding lookups read
the same packed table. The stats list every quantized layer (`layers`) and every skipped one with
the reason (`skipped`); a run that quantizes nothing warns.
"""
from __future__ import annotations
import dataclasses
import difflib
import fnmatch
import warnings
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
from .quant_layers import layer_kind, matrix_shape, normalize_matmuls, readers

DEFAULT_EXCLUDE = ("*lm_head*", "*embed*", "draft_heads.*")   # draft heads: passes/draft_heads.py


@register_pass("quantize-weights")
@dataclass
class QuantizeWeights(Pass):
    """Quantize linear weights to int8/int4 (packed) with RTN, GPTQ or AWQ."""
    ensures = ("quantized",)
    bits: int = 4
    group: int = 64                 # 0 = per output channel
    sym: Optional[bool] = None      # None: symmetric for int8, asymmetric for int4
    method: Literal["rtn", "gptq", "awq", "awq-gptq"] = "rtn"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    scale_dtype: Literal["f32", "f16"] = "f32"
    damp: float = 0.01
    act_order: bool = True
    refit: bool = False             # gptq: grid-end scales + least-squares group scales for the final codes
    zero_point: Literal["int", "float"] = "int"   # asymmetric: integer zero points, or float ones (Q4_1's min)
    calibration: Any = None         # Calibration or token ids i64[n, seq]; gptq/awq need it (set from Python)
    layer_overrides: Any = None     # {weight name: (bits, group)} from select-precision

    PYTHON_ONLY = ("calibration", "layer_overrides")   # not pipeline-string options

    def options(self):
        return {k: v for k, v in super().options().items() if k not in self.PYTHON_ONLY}

    def needs_calibration(self) -> bool:
        return self.method != "rtn" and self.calibration is None

    def validate(self):
        check_options(self.bits, self.group, "")
        if self.zero_point == "float" and self.sym:
            raise PassError("zero_point=float is for asymmetric quantization (a float minimum per group, "
                            "GGUF Q4_1's form); symmetric codes have no zero point: drop sym=true or zero_point")
        if not 0 < self.damp < 1:
            raise PassError(f"damp={self.damp} must be in (0, 1) (GPTQ's diagonal damping, a fraction of the "
                            f"mean Hessian diagonal; default 0.01)")

    def run(self, graph, ctx=None) -> PassResult:
        """`ctx.calibration` (the pipeline's PassContext) is used when `calibration` is not set."""
        if self.calibration is None and ctx is not None and ctx.calibration is not None:
            return dataclasses.replace(self, calibration=ctx.calibration).run(graph)
        Q.check_bits(self.bits, "quantize-weights: ")
        as_linear = normalize_matmuls(graph)
        targets = self.select(graph)
        for name in list(targets):
            self.check_layer(graph.weights[name], targets)
        if not targets:
            why = "; ".join(f"@{k}: {v}" for k, v in list(self.skipped.items())[:5]) or "no weight-times-activation ops"
            warnings.warn(f"quantize-weights quantized nothing ({why})", stacklevel=2)
            return PassResult(as_linear > 0, {"quantized": 0, "skipped": self.skipped,
                                              "matmuls_as_linear": as_linear})
        kinds = {n: layer_kind(graph.weights[n].users) for n in targets}
        before = sum(graph.weights[n].type.nbytes() for n in targets)
        pos = graph.nodes.positions()  # the rewrite inserts before existing nodes only
        if self.method == "rtn":  # one weight at a time: its float codes are freed once it is packed
            after = sum(self.rewrite(graph, n, targets[n], *self.quantize(_matrix(graph.weights[n].tensor), n, None),
                                     pos) for n in targets)
        else:
            codes = self.calibrated(graph, targets)
            after = sum(self.rewrite(graph, n, targets[n], *codes.pop(n), pos) for n in targets)
        return PassResult(True, {"quantized": len(targets), "method": self.method, "layers": kinds,
                                 "skipped": self.skipped, "matmuls_as_linear": as_linear,
                                 "weight_bytes_before": before, "weight_bytes_after": after})

    # ---- selection and checks ----------------------------------------------------------------
    def layer_bits_group(self, name):
        return (self.layer_overrides or {}).get(name, (self.bits, self.group))

    def layer_sym(self, bits):
        """sym=None: symmetric for int8, asymmetric for int4 -- and asymmetric whenever zero_point=float."""
        return self.sym if self.sym is not None else bits == 8 and self.zero_point != "float"

    def layer_float_zero(self, bits):
        return self.zero_point == "float" and not self.layer_sym(bits)

    def select(self, graph) -> dict[str, list]:
        """weight name -> the nodes that read it as their weight (linear, conv2d or embedding);
        every weight-reading layer left out goes into `self.skipped` with the reason."""
        self.skipped: dict[str, str] = {}
        users = readers(graph)
        match = lambda name, pats: any(fnmatch.fnmatch(name, p) for p in pats)  # noqa: E731
        chosen: dict[str, list] = {}
        for w, nodes in users.items():
            kind = layer_kind(graph.weights[w].users)
            included = bool(self.include) and match(w, self.include)
            if self.include and not included:
                self.skipped[w] = f"not in include={self.include}"
            elif match(w, self.exclude):
                self.skipped[w] = f"excluded by exclude={self.exclude}"
            elif kind == "mixed":
                others = sorted({u.op for u in graph.weights[w].users} - {"linear", "conv2d", "embedding"})
                self.skipped[w] = f"also read by {', '.join(others) or 'several layer kinds'}"
            elif kind == "embedding" and not included:
                self.skipped[w] = "an embedding table (quantize it with include=[...])"
            elif kind == "tied" and not included:
                self.skipped[w] = "a head tied to the embedding table (quantize both with include=[...])"
            elif not included and match(w, DEFAULT_EXCLUDE):
                self.skipped[w] = f"excluded by default ({', '.join(DEFAULT_EXCLUDE)}; include it to quantize)"
            elif kind == "conv2d" and self.method != "rtn":
                self.skipped[w] = f"conv2d: method={self.method} covers linear layers (use method=rtn for convs)"
            elif kind == "embedding" and self.method != "rtn":
                self.skipped[w] = f"embedding: method={self.method} covers linear layers (use method=rtn)"
            else:
                chosen[w] = [n for n in nodes if n.op != "embedding"] if kind == "tied" else nodes
        for pat in self.include:   # a pattern that names no weight: a typo, or the other name of a tied table
            if not any(fnmatch.fnmatch(w, pat) for w in graph.weights):
                tied = [w for w in users if layer_kind(graph.weights[w].users) == "tied"]
                near = difflib.get_close_matches(pat, list(users), n=3, cutoff=0.5)
                hint = (f"; this model's embedding table is tied to its head and is named @{tied[0]}"
                        if tied and fnmatch.fnmatch(pat, "*embed*") else
                        f"; similar names: {', '.join('@' + n for n in near)}" if near else "")
                warnings.warn(f"quantize-weights: include pattern {pat!r} matches no weight of graph @{graph.name}"
                              f"{hint}", stacklevel=3)
        for w in (graph.weights if self.include else ()):
            if match(w, self.include) and w not in users:
                t = graph.weights[w].type
                raise PassError(f"quantize-weights: weight @{w} ({t}, used by "
                                f"{', '.join(u.op for u in graph.weights[w].users) or 'nothing'}) "
                                f"is not a 2-D linear weight (nor a matmul, conv2d or embedding weight); only those "
                                f"can be quantized: exclude it or narrow include={self.include}")
        return chosen

    def check_layer(self, w, targets=None):
        bits, group = self.layer_bits_group(w.name)
        Q.check_bits(bits, f"quantize-weights @{w.name}: ")
        kind = layer_kind(w.users)
        if w.type.rank not in (2, 4) or not w.type.is_static or (w.type.rank == 4) != (kind == "conv2d"):
            raise PassError(f"quantize-weights: weight @{w.name} is {w.type}; only static 2-D [out, in] "
                            f"weights and 4-D conv2d weights can be quantized")
        k = matrix_shape(w)[1]
        problem = None
        if group and k % group:
            problem = (f"group={group} does not divide the input dim {k} of layer @{w.name}; groups that fit: "
                       f"{Q.groups_that_fit(k) or 'none'} (or group=0, per-channel), or exclude the layer")
        elif bits == 4 and k % 2:
            problem = (f"int4 packs two values per byte; layer @{w.name} has an odd input dim {k}: use bits=8 "
                       f"or exclude it")
        if problem and (kind in ("linear", "tied") or targets is None):
            raise PassError(f"quantize-weights: {problem}")
        if problem:   # a conv or embedding layer: skipped and reported (a 3-channel stem rarely fits a group)
            self.skipped[w.name] = problem
            targets.pop(w.name)

    # ---- quantization ------------------------------------------------------------------------
    def quantize(self, w, name, stats: Stats | None):
        bits, group = self.layer_bits_group(name)
        sym, fz = self.layer_sym(bits), self.layer_float_zero(bits)
        if self.method in ("gptq", "awq-gptq"):
            return gptq_quantize(w, stats.hessian, bits, group, sym, damp=self.damp, act_order=self.act_order,
                                 refit=self.refit, float_zero=fz)
        clip = search_clip(w, stats.hessian, bits, group, sym, float_zero=fz) if stats is not None else 1.0
        return Q.quantize_rtn(w, bits, group, sym, clip, fz)

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
    def rewrite(self, graph, name, users, codes, scales, zeros, pos) -> int:
        bits, group = self.layer_bits_group(name)
        w = graph.weights[name]
        qweight, scales, zeros = Q.store(codes, scales, zeros, bits, self.layer_sym(bits),
                                         to_torch(self.scale_dtype), self.layer_float_zero(bits))
        packed = [graph.add_weight(graph.fresh_name(f"{name}.qweight"), qweight),
                  graph.add_weight(graph.fresh_name(f"{name}.scales"), scales)]
        if zeros is not None:
            packed.append(graph.add_weight(graph.fresh_name(f"{name}.zeros"), zeros))
        # a tied head's embedding lookups read the same quantized table (fuse-dequant-matmul: qembedding)
        lookups = [u for u in w.users if u.op == "embedding" and u.inputs[0] is w]
        first = min([*users, *lookups], key=pos.__getitem__)
        with graph.inserting_before(first):
            node = graph.add_node("dequantize", packed, {"bits": bits, "group": group, "dtype": w.type.dtype},
                                  names=[graph.fresh_name(f"{name}.dq")])
            full = node.output
            if w.type.rank != 2:   # a conv weight: quantized as [O, C/g*kh*kw], read back in its shape
                full = graph.op("reshape", node.output, shape=list(w.type.shape))
        for u in users:
            if u.op != "embedding":
                u.set_input(1, full)
        for u in lookups:
            u.set_input(0, node.output)
        if w.unused:
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


def _matrix(t: torch.Tensor) -> torch.Tensor:
    """A weight as the 2-D [out, in] matrix the quantizer works on (conv: [O, C/g*kh*kw])."""
    return t if t.dim() == 2 else t.reshape(t.shape[0], -1)


def _only_users(x, nodes) -> bool:
    ids = {id(n) for n in nodes}
    return all(id(u) in ids for u in x.users)


def _dequant_codes(codes, scales, zeros, group):
    out, k = codes.shape
    g = Q.group_size(group, k)
    return ((codes.view(out, k // g, g) - zeros.unsqueeze(-1)) * scales.unsqueeze(-1)).view(out, k)
