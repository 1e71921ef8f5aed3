"""select-precision: mixed-precision weight quantization chosen against a quality target.

    select-precision{target_ppl=0.05, bits=4, group=64, high_bits=8, high_group=0, method=gptq}

1. Each layer gets a low-precision candidate (RTN; with method=gptq/awq-gptq, the weights of one
   sequential GPTQ run over all layers at low precision) and a high-precision one (RTN). One
   calibration run gives each linear's input statistics H; a layer's sensitivity is the output
   error of its low candidate, tr(E H E^T), per byte that keeping it high costs.
2. Layers are ranked by that ratio; a binary search finds the fewest top-ranked layers to keep at
   `high_bits`/`high_group` such that the estimated perplexity increase stays within target_ppl.
3. quantize-weights runs with that per-layer choice and `method`. The stats list the choice per
   layer (`choice`) and every estimate the search made (`searched`: layers kept high -> increase).

The estimate is exp(KL(float || quantized)) - 1, the KL between the next-token distributions of the
float and the quantized model averaged over the search tokens: the perplexity increase on text
drawn from the float model itself. It is measured (interpreter, candidates swapped in; the graph's
first output must be the logits) on the last `search_rows` calibration sequences, which GPTQ and the
ranking do not see. Not the calibration text's own perplexity: that transfers badly to other text
(SmolLM2, GPTQ int4 g64 calibrated on CMake manuals: +2.2% on held-out CMake text, +9.4% on the
Python reference; the KL estimate said +7.6%; benchmarks/RESULTS.md).
"""
from __future__ import annotations
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..ir import quant_format as Q
from ..ir.interpreter import run
from .base import Pass, PassError, PassResult, register_pass
from .calibration import Calibration, collect_stats
from .quantize import QuantizeWeights, check_options


@register_pass("select-precision")
@dataclass
class SelectPrecision(Pass):
    """Keep the most sensitive layers at high precision so the estimated perplexity increase meets target_ppl."""
    target_ppl: float = 0.05
    bits: int = 4
    group: int = 64
    high_bits: int = 8
    high_group: int = 0
    # default gptq: the setting that reaches the documented trade-off on SmolLM2 at target_ppl=5% (+4.21% eval
    # perplexity at 0.353x fp16 linear bytes, benchmarks/RESULTS.md); rtn lands at +2.8% but keeps 0.47x
    method: Literal["rtn", "gptq", "awq", "awq-gptq"] = "gptq"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    search_rows: int = 8           # held-out calibration sequences the search measures on
    calibration: Any = None        # token ids i64[n, seq] (or a Calibration) of real text; optimize() fills it in

    def options(self):
        return {k: v for k, v in super().options().items() if k != "calibration"}

    def needs_calibration(self) -> bool:
        return self.calibration is None

    def validate(self):
        check_options(self.bits, self.group, "")
        check_options(self.high_bits, self.high_group, "high_")
        if self.high_bits < self.bits:
            raise PassError(f"high_bits={self.high_bits} is below bits={self.bits}; high_bits is the precision "
                            f"the most sensitive layers keep (e.g. bits=4,high_bits=8)")
        if not self.target_ppl > 0:
            raise PassError(f"target_ppl={self.target_ppl} must be > 0: the allowed perplexity increase, "
                            f"e.g. target_ppl=5% (or 0.05)")
        if self.search_rows < 1:
            raise PassError(f"search_rows={self.search_rows} must be >= 1 (held-out calibration sequences)")

    def run(self, graph) -> PassResult:
        calib = Calibration.of(graph, self.calibration)
        if calib is None:
            raise PassError("select-precision needs calibration data: slimgraph.optimize(model, ..., calibration=ids "
                            "or text) (a transformers causal LM with a loadable tokenizer gets the shipped "
                            "calibration text by default), `slimgraph compile ... --calibration FILE` (text, or "
                            "token ids in .pt/.npy/.txt), or from Python calibration=ids (i64[n, seq], e.g. "
                            "slimgraph.evaluate.token_ids(tokenizer, 'calib', 8, 256))")
        low = QuantizeWeights(bits=self.bits, group=self.group, include=self.include, exclude=self.exclude)
        targets = low.select(graph)
        for name in targets:
            low.check_layer(graph.weights[name])
            QuantizeWeights(bits=self.high_bits, group=self.high_group).check_layer(graph.weights[name])
        fit, search = self.split(calib)
        lows = self.low_candidates(graph, targets, fit)
        ranked = self.rank(graph, targets, fit, lows)
        fake = {n: {self.low: lows[n], self.high: self.fake(graph.weights[n].tensor, *self.high)} for n in targets}
        reference = self.log_probs(graph, search, {})

        def increase_keeping(k):
            swapped = {n: fake[n][self.high if i < k else self.low] for i, n in enumerate(ranked)}
            return self.ppl_increase(reference, self.log_probs(graph, search, swapped))
        lo, hi = 0, len(ranked)            # invariant: keeping `hi` layers high meets the target
        measured = {0: increase_keeping(0)}
        if measured[0] > self.target_ppl:
            measured[hi] = increase_keeping(hi)
            if measured[hi] > self.target_ppl:
                raise PassError(f"select-precision: even with every layer at {self.high_bits} bits the estimated "
                                f"perplexity increase is {measured[hi]:+.2%} > target_ppl={self.target_ppl}: "
                                f"raise target_ppl or high_bits")
            while hi - lo > 1:
                mid = (lo + hi) // 2
                measured[mid] = increase_keeping(mid)
                lo, hi = (lo, mid) if measured[mid] <= self.target_ppl else (mid, hi)
        else:
            hi = 0
        keep = set(ranked[:hi])
        overrides = {n: (self.high if n in keep else self.low) for n in targets}
        weights = {n: graph.weights[n].type.shape for n in targets}
        res = QuantizeWeights(bits=self.bits, group=self.group, method=self.method, include=self.include,
                              exclude=self.exclude, calibration=fit, layer_overrides=overrides).run(graph)
        res.stats.update({"high_precision_layers": sorted(keep), "ppl_increase_estimate": measured[hi],
                          "searched": dict(sorted(measured.items())), "search_rows": int(search.inputs[0].shape[0]),
                          "bytes_vs_fp16": sum(_bytes(weights[n], *overrides[n]) for n in targets)
                          / sum(2 * math.prod(weights[n]) for n in targets),
                          "choice": {n: f"int{b}" + (f"-g{g}" if g else "") for n, (b, g) in overrides.items()}})
        return res

    def split(self, calib: Calibration) -> tuple[Calibration, Calibration]:
        """(rows that calibrate GPTQ and the ranking, the last `search_rows` rows for the search);
        with too few rows for both, both use all of them."""
        rows = calib.inputs[0].shape[0]
        if rows <= self.search_rows:
            return calib, calib
        cut = rows - self.search_rows
        batched = lambda x: x.dim() > 0 and x.shape[0] == rows
        return (Calibration(tuple(x[:cut] if batched(x) else x for x in calib.inputs)),
                Calibration(tuple(x[cut:] if batched(x) else x for x in calib.inputs)))

    @property
    def low(self):
        return (self.bits, self.group)

    @property
    def high(self):
        return (self.high_bits, self.high_group)

    def sym(self, bits):
        return bits == 8

    def fake(self, w, bits, group):
        q, s, z = Q.quantize_rtn(w, bits, group, self.sym(bits))
        return Q.dequantize(*Q.store(q, s, z, bits, self.sym(bits)), bits, group, w.dtype)

    def low_candidates(self, graph, targets, calib) -> dict:
        """Each layer's low-precision weight: RTN, or (gptq/awq-gptq) one sequential GPTQ run over
        all layers; the graph is left unchanged."""
        if self.method not in ("gptq", "awq-gptq"):
            return {n: self.fake(graph.weights[n].tensor, *self.low) for n in targets}
        q = QuantizeWeights(bits=self.bits, group=self.group, method="gptq", include=self.include,
                            exclude=self.exclude, calibration=calib)
        codes = q.calibrated(graph, targets)
        out = {}
        for n, (c, s, z) in codes.items():
            w = graph.weights[n].tensor
            out[n] = Q.dequantize(*Q.store(c, s, z, self.bits, self.sym(self.bits)), self.bits, self.group, w.dtype)
        return out

    def rank(self, graph, targets, calib, lows) -> list[str]:
        """Weight names, most sensitive per extra byte first."""
        linears = sorted((n for users in targets.values() for n in users), key=graph.nodes.index)
        stats = collect_stats(graph, calib, linears, "select-precision: calibrating")
        score = {}
        for name, users in targets.items():
            w = graph.weights[name].tensor.float()
            H = stats[id(users[0].inputs[0])].hessian
            e = lows[name].float() - w
            extra = _bytes(w.shape, *self.high) - _bytes(w.shape, *self.low)
            score[name] = float(((e @ H) * e).sum()) / max(extra, 1)
        return sorted(score, key=score.get, reverse=True)

    def log_probs(self, graph, calib, swapped: dict) -> torch.Tensor:
        """Next-token log-probabilities of the graph's first output with `swapped` weights in place."""
        saved = {n: graph.weights[n].tensor for n in swapped}
        try:
            for n, t in swapped.items():
                graph.weights[n].tensor = t
            return torch.log_softmax(run(graph, *calib.inputs)[0].float(), -1)
        finally:
            for n, t in saved.items():
                graph.weights[n].tensor = t

    @staticmethod
    def ppl_increase(reference: torch.Tensor, quantized: torch.Tensor) -> float:
        """exp(mean KL(reference || quantized)) - 1 over all positions."""
        kl = (reference.exp() * (reference - quantized)).sum(-1).mean()
        return math.expm1(float(kl))


def _bytes(shape, bits, group):
    out, k = shape
    return out * k * bits // 8 + out * (k // Q.group_size(group, k)) * 5
