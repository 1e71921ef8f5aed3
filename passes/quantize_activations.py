"""quantize-activations: dynamic int8 activations for every quantized linear (W4A8 / W8A8).

    qlinear(x, qw, ...) {bits, group}  ->  qlinear(quantize_activation(x) {bits=8, group}, qw, ...) {bits, group}

The activation groups are the weight's groups along K (group 0: whole rows), so a kernel can take each
group's integer dot product sum_k q_x[k] * q_w[k] and scale it once (llama.cpp's Q4_0 x Q8_0, torchao's
8da4w). Every target runs the result (the op has a reference impl); the `cpu` target runs the pair as one
VNNI kernel on AVX-512 VNNI hosts. It trades accuracy for speed: report perplexity beside the weight-only
model (benchmarks/bench_cpu_target.py does). Linears reading the same x share one quantize_activation.

`bits=16` quantizes to int16 codes instead (|q| <= 32639): almost none of int8's rounding loss (SmolLM2 on its
own Q4_1 grid: the weight-only perplexity), and the `cpu` target still runs integer VNNI dot products, on the
two int8 halves of each code (q = 256 hi + lo), so a decode step costs about what W4A8's does (its kernels are
bound by memory, not by dot products); a verify or prefill of many tokens costs up to twice as much.

Contract: requires "dequant-fused" (no dequantize left unfused: after fuse-dequant-matmul); a graph with no
qlinear at all (a float model) warns, since the pass then does nothing.
"""
from __future__ import annotations
import warnings
from dataclasses import dataclass

from ..ir import quant_format as Q
from ..ir.opset.quant import ACT_QMAX
from .base import Pass, PassError, PassResult, register_pass


@register_pass("quantize-activations")
@dataclass
class QuantizeActivations(Pass):
    """Insert quantize_activation{bits, group} before every qlinear (the qlinear's own group)."""
    bits: int = 8
    requires = ("dequant-fused",)
    introduces = ("quantize_activation",)

    def validate(self):
        if self.bits not in ACT_QMAX:
            raise PassError(f"quantize-activations: bits={self.bits} is not supported; use bits=8 (int8 activations) "
                            "or bits=16 (int16, run as two int8 halves)")

    def run(self, graph) -> PassResult:
        made: dict[tuple[int, int], object] = {}
        count = 0
        for node in list(graph.nodes):
            if node.op != "qlinear":
                continue
            x = node.inputs[0]
            if x.producer is not None and x.producer.op == "quantize_activation":
                if x.producer.attrs["bits"] != self.bits:   # a second pass with other bits would silently do nothing
                    raise PassError(f"quantize-activations{{bits={self.bits}}}: {node!r} already reads int"
                                    f"{x.producer.attrs['bits']} activations (an earlier quantize-activations); "
                                    "run the pass once, with the bits you want")
                continue   # already quantized
            k = Q.logical_in_dim(node.inputs[1].type.shape, node.attrs["bits"])
            g = node.attrs["group"] if node.attrs["group"] and node.attrs["group"] != k else 0
            key = (id(x), g)
            if key not in made:
                with graph.inserting_before(node):
                    made[key] = graph.add_node("quantize_activation", [x], {"bits": self.bits, "group": g},
                                               names=[graph.fresh_name(x.name + f"_q{self.bits}")]).output
            node.set_input(0, made[key])
            count += 1
        if not any(n.op == "qlinear" for n in graph.nodes):   # nothing to do is a mistake, not a no-op
            linears = sum(1 for n in graph.nodes if n.op == "linear")
            warnings.warn(f"quantize-activations{{bits={self.bits}}} found no qlinear in graph @{graph.name} "
                          f"({linears} float linear(s)): it quantizes the inputs of quantized linears only; run "
                          "quantize-weights and fuse-dequant-matmul before it", stacklevel=2)
        return PassResult(count > 0, {"quantized_inputs": len(made), "qlinears": count})
