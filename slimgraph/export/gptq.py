"""GPTQ-format checkpoints (AutoGPTQ / GPTQModel `checkpoint_format: gptq`, read by transformers
through optimum or gptqmodel, by vLLM, TGI and ExLlama).

    to_gptq(compiled, "out/smollm2-gptq", source="smollm2-135m")

Per quantized `nn.Linear` `X` with W[out, in], `bits` in {4, 8}, groups of `g` along `in`:
  X.qweight  i32[in * bits / 32, out]   unsigned codes packed along `in`, value j of a word at bits
                                        j*bits (least significant first)
  X.qzeros   i32[in / g, out * bits / 32]  unsigned zero points minus 1 (the v1 format's offset),
                                        packed along `out` the same way
  X.scales   f16[in / g, out]
  X.g_idx    i32[in] = k // g           (groups stay contiguous: slimgraph's act-order uses static
                                        groups, so desc_act is false)
  W[o, k] = (qweight[k, o] - (qzeros[g_idx[k], o] + 1)) * scales[g_idx[k], o]
slimgraph's int4 codes (0..15, implied zero 8) are already unsigned; int8 codes (-128..127) are
shifted by 128, with zero point 128 where symmetric. Per-channel (group=0) is group_size -1.
Scales are rounded to f16 (the format's type).
"""
from __future__ import annotations
from pathlib import Path

import torch

from .hf_checkpoint import layer_groups, write_checkpoint
from .weights import ExportError, Packed


def pack_rows(v: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned values [n, m] (each < 2^bits) -> i32[n * bits / 32, m], packed along dim 0."""
    per = 32 // bits
    n, m = v.shape
    if n % per:
        raise ExportError(f"export: GPTQ packs {per} {bits}-bit values per int32; {n} is not a multiple")
    v = v.to(torch.int64).view(n // per, per, m)
    shifts = (torch.arange(per, dtype=torch.int64) * bits).view(1, per, 1)
    words = (v << shifts).sum(1)                       # < 2^32
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def unpack_rows(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of pack_rows: i32[n / per, m] -> unsigned values i64[n, m]."""
    per = 32 // bits
    w = w.to(torch.int64) & 0xFFFFFFFF
    shifts = (torch.arange(per, dtype=torch.int64) * bits).view(1, per, 1)
    v = (w.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return v.reshape(-1, w.shape[-1])


def _unsigned(p: Packed):
    off = 0 if p.bits == 4 else 128
    return p.codes() + off, p.zero_points() + off


def pack_linear(name: str, p: Packed) -> dict:
    codes, zeros = _unsigned(p)                        # [out, in], [out, groups]
    k, g = p.shape[1], p.group_size
    return {"qweight": pack_rows(codes.t().contiguous(), p.bits),
            "qzeros": pack_rows(zeros - 1, p.bits).t().contiguous(),
            "scales": p.scales.t().to(torch.float16).contiguous(),
            "g_idx": (torch.arange(k) // g).to(torch.int32)}


def _fits(name: str, p: Packed):
    per = 32 // p.bits
    out = p.shape[0]
    if out % per:
        raise ExportError(f"export: weight {name} has {out} output rows; the GPTQ format packs zero points "
                          f"{per} per int32 along the output dim, so it needs a multiple of {per}")
    if not p.sym and bool((p.zeros == 0).any()):
        raise ExportError(f"export: weight {name} has a zero point of 0, which the GPTQ v1 format (stored as "
                          f"zero - 1) cannot hold; export it as compressed-tensors, or quantize with sym=true")
    if p.bits == 8 and not p.sym:
        raise ExportError(f"export: weight {name} is int8 with zero points; the GPTQ format's unsigned 8-bit "
                          f"codes fit only symmetric int8 (quantize-weights{{bits=8,sym=true}}) or int4")


def quantization_config(packed: dict[str, Packed]) -> dict:
    groups = layer_groups(packed)
    if len(groups) > 1:
        raise ExportError(f"export: the GPTQ format has one bits/group_size/sym for the whole model; this one "
                          f"mixes {sorted(groups)}: export it as compressed-tensors instead")
    (bits, group, sym), = groups
    return {"quant_method": "gptq", "bits": bits, "group_size": group if group else -1, "sym": sym,
            "desc_act": False, "static_groups": False, "true_sequential": True, "damp_percent": 0.01,
            "checkpoint_format": "gptq", "lm_head": False}


def to_gptq(model, out_dir, *, source=None) -> Path:
    """Write `model` (CompiledModel, artifact path or ir.Graph) as a GPTQ-format checkpoint directory.
    `source`: zoo name, GGUF file or Hugging Face directory for the config and tokenizer. Raises
    ExportError for mixed per-layer precisions or a layer the format cannot hold."""
    return write_checkpoint(model, out_dir, source, pack_linear, quantization_config, _fits)
