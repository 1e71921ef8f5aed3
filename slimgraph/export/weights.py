"""Read a compiled model's weights back as the source model's named parameters.

    weights = model_weights(compiled_or_graph)
    weights["model.layers.0.self_attn.q_proj.weight"]   # Packed(...) if quantized, else a float tensor

A quantized weight appears in the graph as the packed inputs of a `dequantize`, `qlinear` or
`qembedding` node (layout: ir/quant_format.py); its name is the qweight's name less `.qweight`
(quantize-weights names them `<weight>.qweight`, `<weight>.scales`, `<weight>.zeros`). Float weights
keep their parameter names. Weights a pass merged or renamed are simply absent: the writers name
the parameters they miss.
"""
from __future__ import annotations
import re
from dataclasses import dataclass
from typing import Optional

import torch

from ..ir import quant_format as Q
from ..passes.sparsify_attention import reads_block_sparse_mask

QUANT_OPS = {"dequantize": 0, "qlinear": 1, "qembedding": 1}   # op -> index of its qweight input


class ExportError(ValueError):
    pass


@dataclass
class Packed:
    """A weight W[out, in] as slimgraph stores it (ir/quant_format.py)."""
    qweight: torch.Tensor
    scales: torch.Tensor          # f32|f16 [out, in/group]
    zeros: Optional[torch.Tensor]  # u8|i8|f32 [out, in/group] or None (symmetric: implied zero)
    bits: int
    group: int                    # 0 = one group per row

    @property
    def shape(self) -> tuple[int, int]:
        return self.qweight.shape[0], Q.logical_in_dim(self.qweight.shape, self.bits)

    @property
    def group_size(self) -> int:
        return Q.group_size(self.group, self.shape[1])

    @property
    def sym(self) -> bool:
        return self.zeros is None

    def codes(self) -> torch.Tensor:
        """Integer codes i32[out, in] (int4: 0..15, int8: -128..127)."""
        return Q.unpack(self.qweight, self.bits)

    @property
    def float_zeros(self) -> bool:
        return self.zeros is not None and self.zeros.is_floating_point()

    def zero_points(self) -> torch.Tensor:
        """Zero points i32[out, in/group] (the implied one where symmetric; f32 for float zero points)."""
        if self.zeros is None:
            return torch.full(self.scales.shape, Q.implied_zero(self.bits), dtype=torch.int32)
        return self.zeros.float() if self.float_zeros else self.zeros.to(torch.int32)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return Q.dequantize(self.qweight, self.scales, self.zeros, self.bits, self.group, dtype)

    def permute_rows(self, perm: torch.Tensor) -> "Packed":
        """The same weight with its output rows reordered (groups run along `in`, so they move whole)."""
        return Packed(self.qweight[perm], self.scales[perm],
                      None if self.zeros is None else self.zeros[perm], self.bits, self.group)

    def describe(self) -> str:
        kind = "sym" if self.sym else "asym, float zero points" if self.float_zeros else "asym"
        return f"int{self.bits} g{self.group if self.group else str(self.group_size) + ' (per row)'} {kind}"


def graph_of(model):
    """The IR graph of a CompiledModel, an artifact directory or a Graph."""
    from pathlib import Path
    from ..ir.graph import Graph
    if isinstance(model, Graph):
        return model
    if isinstance(model, (str, Path)):
        from ..artifact import load_graph
        return load_graph(model)
    graph = getattr(model, "graph", None)
    if graph is None:
        raise ExportError(f"export: expected a slimgraph CompiledModel, artifact path or ir.Graph, got "
                          f"{type(model).__name__}")
    return graph


# ops that change what attention computes and that no export format can say: (the op, the pass that makes it)
UNEXPORTABLE = {"linear_attention": "linearize-attention (linear attention with trained feature maps)",
                "cache_window": "sparsify-attention or linearize-attention{window} (a sliding-window KV ring)"}


def check_exportable(graph) -> None:
    """Refuse a graph whose attention the formats cannot express (UNEXPORTABLE, or a block-sparse mask, which
    changes attention without an op of its own): the exported weights would run with the source's attention,
    a different model from the artifact. Draft heads (insert-draft-heads) are extra outputs no format holds:
    they are left out, with a warning."""
    import warnings
    ops = {n.op for n in graph.nodes}
    bad = [what for op, what in UNEXPORTABLE.items() if op in ops][:1]   # linear attention says it all
    if not bad and any(reads_block_sparse_mask(n) for n in graph.nodes):
        bad = ["sparsify-attention{kind=block_sparse} (a block-sparse attention mask, which the source model does "
               "not compute)"]
    if bad:
        raise ExportError(f"export: the graph runs {'; '.join(bad)}, which GGUF, compressed-tensors and GPTQ "
                          f"checkpoints cannot express: llama.cpp, transformers and vLLM would run the source's "
                          f"attention instead, a different model from this artifact. Export an "
                          f"artifact compiled without that pass (the same --pipeline without it)")
    if any(v.name.startswith("draft_logits") for v in graph.outputs) or any(
            name.startswith("draft_heads.") for name in graph.weights):
        warnings.warn("export: the artifact's draft heads (insert-draft-heads) are not written: the exported "
                      "files hold the base model only (speculative decoding with the heads needs the slimgraph "
                      "artifact)", stacklevel=4)


def model_weights(model) -> dict[str, "torch.Tensor | Packed"]:
    """Parameter name -> float tensor or Packed, for every weight of the compiled graph (or, for a
    torch module such as the float source model, its floating-point state dict)."""
    if isinstance(model, torch.nn.Module):
        return {k: v.detach() for k, v in model.state_dict().items() if v.is_floating_point()}
    graph = graph_of(model)
    check_exportable(graph)
    out: dict[str, torch.Tensor | Packed] = {}
    packed_parts: set[str] = set()
    for node in graph.nodes:
        first = QUANT_OPS.get(node.op)
        if first is None:
            continue
        ins = node.inputs[first:]
        qw, sc = ins[0], ins[1]
        zs = ins[2] if len(ins) > 2 and Q.is_zeros(ins[2].type) else None
        if not (qw.is_weight and sc.is_weight and (zs is None or zs.is_weight)):
            raise ExportError(f"export: {node.op} node {node.outputs[0].name} reads computed (non-weight) "
                              f"packed inputs; only stored quantized weights can be exported")
        name = _base_name(qw.name)
        if name in out:
            continue
        out[name] = Packed(qw.tensor, sc.tensor, zs.tensor if zs is not None else None,
                           node.attrs["bits"], node.attrs["group"])
        packed_parts.update(v.name for v in (qw, sc, zs) if v is not None)
    for name, w in graph.weights.items():
        if name not in packed_parts and name not in out and w.tensor.is_floating_point():
            out[name] = w.tensor
    return out


def _base_name(qweight_name: str) -> str:
    return re.sub(r"\.qweight(_\d+)?$", "", qweight_name)


def find(weights: dict, name: str, tied_to: str | None = None):
    """weights[name], or the weight it is tied to; a clear error if neither is there."""
    if name in weights:
        return weights[name]
    if tied_to is not None and tied_to in weights:
        return weights[tied_to]
    close = [k for k in weights if k.split(".")[-2:] == name.split(".")[-2:]][:3]
    raise ExportError(f"export: the compiled graph has no weight {name!r}"
                      + (f" (nor {tied_to!r}, its tied twin)" if tied_to else "")
                      + f"; a pass merged or renamed it (e.g. merge-siblings), so the source model's "
                      f"layout cannot be rebuilt: compile without that pass"
                      + (f" (similar names: {close})" if close else ""))
