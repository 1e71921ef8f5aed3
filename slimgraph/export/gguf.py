"""GGUF export for llama.cpp (and ollama, LM Studio): slimgraph's packed weights copied bit for bit
into ggml's block formats, written with the `gguf` package.

    to_gguf(compiled, "model.Q4_0.gguf", type="q4_0", source="smollm2-135m")

Block formats (ggml-common.h; 32 weights per block, d and m stored as f16):
  Q4_0  W = (q - 8) * d            q in 0..15   == slimgraph int4 symmetric (implied zero 8)
  Q4_1  W = q * d + m              q in 0..15   == slimgraph int4 (q - z) * s with d = s, m = -z * s
                                                  (integer z, or float z: quantize-weights zero_point=float)
  Q8_0  W = q * d                  q in -128..127 == slimgraph int8 symmetric
A slimgraph group of g weights fits a 32-weight block type when g is a multiple of 32 (each block
repeats its group's scale). Only the scale (and Q4_1's minimum) is rounded to f16: the integer
codes are copied as they are, so the exported weights equal slimgraph's dequantized ones up to that
rounding (relative error <= 2^-11 per group). A quantized weight that does not fit the requested type
is an error naming the types it fits.

Norms and other 1-D tensors are written as F32; float matrices slimgraph did not quantize (the
embedding, excluded layers) as `float_type`. Metadata and tokenizer come from the source: a source
GGUF's key/values are copied (file type updated); a Hugging Face source gets its hyper-parameters
from config.json and its tokenizer from tokenizer.json / vocab.json (GPT-2 BPE) or tokenizer.model
(SentencePiece), padded to the embedding's rows. A BPE tokenizer's tokenizer.ggml.pre (the regexes
llama.cpp splits text with) is read off its tokenizer.json pre_tokenizer (gguf_pre.py: gpt-2, smollm,
llama-bpe, qwen2); one that matches none is written as "default" with a warning. Rope scaling
(`_rope_scaling`) is written as convert_hf_to_gguf.py writes it: linear and yarn as rope.scaling.* keys,
Llama 3's as a rope_freqs tensor; other types, and YaRN settings llama.cpp has no key for, are refused.

Architectures (ARCHS, by transformers model_type): llama, mistral, qwen2, qwen3, phi3, gemma, gemma2,
gemma3_text, granite, olmo2. Tensor names come from gguf.get_tensor_name_map for llama.cpp's architecture, keys
from GGUFWriter.add_*; what convert_hf_to_gguf.py does beyond renaming is in each Arch: llama's
(and granite's) q/k rows are permuted to llama.cpp's rotary layout (`permute`, the inverse of what
transformers' GGUF loader undoes), Gemma's RMSNorm weights are stored as 1 + w, and an architecture's
own keys (Gemma2's soft-capping, Gemma3's sliding layers, Granite's multipliers) are written and the
settings llama.cpp hard-codes (Gemma2/3 query scaling, Gemma3's layer pattern) checked by its `params`.
"""
from __future__ import annotations
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..ir import progress
from . import gguf_pre
from .source import Source
from .weights import ExportError, Packed, find, model_weights

QK = 32          # weights per block in Q4_0 / Q4_1 / Q8_0


@dataclass(frozen=True)
class Arch:
    """How one transformers model type lands in llama.cpp (what convert_hf_to_gguf.py does for it)."""
    gguf: str                        # gguf.MODEL_ARCH member: tensor names (gguf.get_tensor_name_map), keys
    permute_qk: bool = False         # q/k rows in llama.cpp's rotary layout (LlamaModel.permute): llama only
    norm_offset: float = 0.0         # added to every RMSNorm weight (Gemma computes x * (1 + w); ggml x * w)
    params: Optional[Callable] = None   # (writer, cfg) -> None: the architecture's own keys and checks
    output_required: bool = False    # llama.cpp's loader needs output.weight: a tied model writes a copy
    rope_scaling: tuple = ("linear", "yarn")   # transformers rope_types written (see _rope_scaling); llama3
                                     # needs llama.cpp's llama graph, the only one that reads rope_freqs


def _granite_params(writer, cfg):
    """Granite's four multipliers (llama.cpp reads them all; 1.0 is not the default of each)."""
    writer.add_embedding_scale(float(cfg.embedding_multiplier))
    writer.add_residual_scale(float(cfg.residual_multiplier))
    writer.add_attention_scale(float(cfg.attention_multiplier))
    writer.add_logit_scale(float(cfg.logits_scaling))


def _check_query_scale(cfg, arch: str, layers_27b: int):
    """llama.cpp's gemma2/gemma3 scale queries by 1/sqrt(head_dim), by 1/sqrt(hidden/heads) for the 27B
    (known by its layer count), and read no scalar from the file: another query_pre_attn_scalar would
    compute other logits."""
    head_dim = cfg.head_dim
    want = cfg.hidden_size // cfg.num_attention_heads if cfg.num_hidden_layers == layers_27b else head_dim
    if cfg.query_pre_attn_scalar != want:
        raise ExportError(f"export: {arch} with query_pre_attn_scalar {cfg.query_pre_attn_scalar} (head_dim "
                          f"{head_dim}, {cfg.num_hidden_layers} layers): llama.cpp's {arch} scales queries by "
                          f"1/sqrt({want}) and reads no scalar from the file; this model cannot be run there")


def _check_layer_types(cfg, arch: str, period: int):
    """llama.cpp's gemma2/gemma3 make every `period`-th layer global and the others sliding, whatever
    the file says: another transformers layer_types would attend over other spans."""
    layer_types = list(getattr(cfg, "layer_types", None) or [])
    want = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(cfg.num_hidden_layers)]
    if layer_types and layer_types != want:
        raise ExportError(f"export: {arch} with layer_types {layer_types}: llama.cpp's {arch} makes the last "
                          f"layer of every {period} global ({want}); this model cannot be run there")


def _gemma2_params(writer, cfg):
    """Soft-capping and the sliding window (every other layer, as llama.cpp's gemma2 has it)."""
    _check_query_scale(cfg, "gemma2", 46)
    _check_layer_types(cfg, "gemma2", 2)
    if cfg.attn_logit_softcapping is not None:
        writer.add_attn_logit_softcapping(float(cfg.attn_logit_softcapping))
    if cfg.final_logit_softcapping is not None:
        writer.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
    writer.add_sliding_window(int(cfg.sliding_window))


def _gemma3_params(writer, cfg):
    """Sliding layers: their window, their rope base (rope.freq_base_swa) and where they are; llama.cpp's
    gemma3 has every 6th layer global, so another pattern is refused."""
    _check_query_scale(cfg, "gemma3", 62)
    _check_layer_types(cfg, "gemma3", 6)
    if cfg.final_logit_softcapping is not None or cfg.attn_logit_softcapping is not None:
        raise ExportError("export: gemma3 with logit soft-capping: llama.cpp's gemma3 applies none")
    writer.add_sliding_window(int(cfg.sliding_window))
    local = _rope(cfg, "sliding_attention")
    if _rope_type(local) != "default":
        raise ExportError(f"export: gemma3 with rope scaling {_rope_type(local)!r} on its sliding layers is not "
                          f"carried into GGUF; export from a GGUF source, or a model with default rope there")
    writer.add_rope_freq_base_swa(float(local.get("rope_theta", getattr(cfg, "rope_local_base_freq", 10000.0))))


def _phi3_params(writer, cfg):
    """Phi-3's sliding window (Phi-3-mini-4k: 2047): llama.cpp's phi3 (llama-cpp-python 0.3.36) attends to
    the whole context with or without phi3.attention.sliding_window in the file (tests/export: a tiny
    Phi-3 with window 5 matches slimgraph for 5 positions, is ~100% off after), so it is not written and
    the difference is said."""
    window = getattr(cfg, "sliding_window", None)
    if window and window < cfg.max_position_embeddings:
        warnings.warn(f"export: phi3 source with sliding_window {window}: llama.cpp's phi3 attends to the whole "
                      f"context, so past {window} tokens its logits differ from transformers' and slimgraph's "
                      f"(convert_hf_to_gguf.py's files share this)", stacklevel=3)


ARCHS = {   # transformers model_type -> how it is written
    "llama": Arch("LLAMA", permute_qk=True, rope_scaling=("linear", "yarn", "llama3")),
    "mistral": Arch("LLAMA", permute_qk=True, rope_scaling=("linear", "yarn", "llama3")),
    "qwen2": Arch("QWEN2"),          # q/k/v biases, rotary in HF's layout
    "qwen3": Arch("QWEN3"),          # q_norm/k_norm per head, head_dim free of hidden/heads
    "phi3": Arch("PHI3", params=_phi3_params),   # fused qkv_proj / gate_up_proj stay fused: attn_qkv, ffn_up
    "gemma": Arch("GEMMA", norm_offset=1.0),   # tied only; llama.cpp scales the embedding by sqrt(n_embd)
    "gemma2": Arch("GEMMA2", norm_offset=1.0, params=_gemma2_params, rope_scaling=()),   # + post norms, soft-capping
    "gemma3_text": Arch("GEMMA3", norm_offset=1.0, params=_gemma3_params, rope_scaling=()),   # + q/k norms (also 1 + w)
    "granite": Arch("GRANITE", permute_qk=True, params=_granite_params),
    "olmo2": Arch("OLMO2", output_required=True),   # norms after attention / MLP only, q/k norms over all heads
}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ExportError("GGUF export needs the gguf package: pip install 'slimgraph[hf]'") from None
    return gguf


# ---- block packing ------------------------------------------------------------------------------
def _f16_bytes(x: torch.Tensor) -> np.ndarray:
    """f16 values [..., n] -> their bytes [..., 2n]."""
    a = x.to(torch.float16).contiguous().numpy()
    return a.view(np.uint8).reshape(*a.shape[:-1], a.shape[-1] * 2)


def _block_params(p: Packed):
    """Per-block scales f32[out, nb] and zero points i32|f32[out, nb] (a group repeats over its blocks)."""
    per = p.group_size // QK
    return p.scales.float().repeat_interleave(per, dim=1), p.zero_points().repeat_interleave(per, dim=1)


def _nibbles(p: Packed) -> np.ndarray:
    """int4 codes u8[out, nb, 16]: weight j of a block in the low nibble of byte j, weight j+16 in
    the high nibble (ggml's order; slimgraph pairs neighbouring columns instead)."""
    qw = p.qweight.numpy()
    out, half = qw.shape
    codes = np.empty((out, half * 2), dtype=np.uint8)
    codes[:, 0::2], codes[:, 1::2] = qw & 0xF, qw >> 4
    blocks = codes.reshape(out, -1, QK)
    return blocks[..., :16] | (blocks[..., 16:] << 4)


def pack_q4_0(p: Packed) -> np.ndarray:
    d, _ = _block_params(p)
    blocks = np.concatenate([_f16_bytes(d.unsqueeze(-1)), _nibbles(p)], axis=-1)   # 2 + 16 bytes
    return blocks.reshape(p.shape[0], -1)


def pack_q4_1(p: Packed) -> np.ndarray:
    d, z = _block_params(p)
    m = -z.float() * d
    blocks = np.concatenate([_f16_bytes(d.unsqueeze(-1)), _f16_bytes(m.unsqueeze(-1)), _nibbles(p)], axis=-1)
    return blocks.reshape(p.shape[0], -1)                                      # 4 + 16 bytes


def pack_q8_0(p: Packed) -> np.ndarray:
    d, z = _block_params(p)
    out, k = p.shape
    qs = (p.codes().view(out, k // QK, QK) - z.unsqueeze(-1)).to(torch.int8).numpy().view(np.uint8)
    blocks = np.concatenate([_f16_bytes(d.unsqueeze(-1)), qs], axis=-1)       # 2 + 32 bytes
    return blocks.reshape(out, -1)


def _fit_q4_0(p: Packed) -> Optional[str]:
    if p.bits != 4 or not p.sym:
        return "needs int4 symmetric codes (W = (q - 8) * d)"
    return None


def _fit_q4_1(p: Packed) -> Optional[str]:
    return None if p.bits == 4 else "needs int4 codes (W = q * d + m)"


def _fit_q8_0(p: Packed) -> Optional[str]:
    if p.float_zeros:
        return "needs symmetric codes (W = q * d); float zero points fit q4_1 only"
    if p.bits == 8 and not p.sym and bool((p.zeros != 0).any()):
        return "needs int8 symmetric codes (W = q * d); int8 with zero points does not fit in 8 bits"
    return None


@dataclass(frozen=True)
class GGUFType:
    name: str
    ggml: str                                   # gguf.GGMLQuantizationType member
    file_type: str                              # gguf.LlamaFileType member
    pack: Optional[Callable] = None             # Packed -> bytes [out, row_bytes]; None: float type
    fits: Optional[Callable] = None             # Packed -> None or the reason it does not fit


TYPES = {t.name: t for t in (
    GGUFType("q4_0", "Q4_0", "MOSTLY_Q4_0", pack_q4_0, _fit_q4_0),
    GGUFType("q4_1", "Q4_1", "MOSTLY_Q4_1", pack_q4_1, _fit_q4_1),
    GGUFType("q8_0", "Q8_0", "MOSTLY_Q8_0", pack_q8_0, _fit_q8_0),
    GGUFType("f16", "F16", "MOSTLY_F16"),
    GGUFType("f32", "F32", "ALL_F32"),
)}
REQUANTIZE = {"q4_0": "bits=4,group=32,sym=true", "q4_1": "bits=4,group=32,sym=false,zero_point=float",
              "q8_0": "bits=8,group=32,sym=true"}   # the quantize-weights options each block type holds
FLOAT_TYPES = ("f32", "f16", "q8_0")   # for float matrices (q8_0: ggml's reference quantizer)


def fitting_types(p: Packed) -> list[str]:
    """The GGUF block types that hold `p` exactly (up to f16 scales)."""
    if p.group_size % QK:
        return []
    return [t.name for t in TYPES.values() if t.pack is not None and t.fits(p) is None]


def _type(name: str) -> GGUFType:
    if name not in TYPES:
        raise ExportError(f"export: unknown GGUF type {name!r}; supported: {', '.join(TYPES)}")
    return TYPES[name]


def _check_fit(t: GGUFType, p: Packed, name: str):
    if p.group_size % QK:
        why = f"its groups of {p.group_size} are not a multiple of the {QK}-weight block"
    else:
        why = t.fits(p)
    if why:
        fit = fitting_types(p)
        raise ExportError(f"export: weight {name} is {p.describe()}, which does not fit GGUF {t.name} ({why}); "
                          f"types that fit it: {', '.join(fit + ['f16', 'f32']) if fit else 'f16, f32 (dequantized)'}"
                          f"; or re-quantize with quantize-weights{{{REQUANTIZE.get(t.name, 'bits=4,group=32')}}}")


# ---- tensors ------------------------------------------------------------------------------------
def _llama_permute(x, n_head: int):
    """convert_hf_to_gguf.py's LlamaModel.permute on the rows of x (tensor or Packed)."""
    rows = x.shape[0]
    idx = torch.arange(rows).view(n_head, 2, rows // n_head // 2).transpose(1, 2).reshape(rows)
    return x.permute_rows(idx) if isinstance(x, Packed) else x[idx]


def _tensor_data(gguf, w, hf_name: str, t: GGUFType, float_type: str):
    """(numpy array, raw ggml type or None) for one tensor."""
    Q = gguf.GGMLQuantizationType
    if isinstance(w, Packed):
        if t.pack is None:   # a float GGUF: dequantized
            return _float_data(gguf, w.dequantize(), t.name)
        _check_fit(t, w, hf_name)
        return t.pack(w), getattr(Q, t.ggml)
    if w.dim() == 1:
        return w.float().numpy(), None
    return _float_data(gguf, w, t.name if t.pack is None else float_type)


def _float_data(gguf, w: torch.Tensor, type_name: str):
    if type_name == "f32":
        return w.float().contiguous().numpy(), None
    if type_name == "f16":
        return w.to(torch.float16).contiguous().numpy(), None
    if type_name == "q8_0":
        return gguf.quants.quantize(w.float().contiguous().numpy(), gguf.GGMLQuantizationType.Q8_0), \
            gguf.GGMLQuantizationType.Q8_0
    raise ExportError(f"export: float_type {type_name!r} is not supported; use one of {', '.join(FLOAT_TYPES)}")


# ---- metadata -----------------------------------------------------------------------------------
SKIP_KEYS = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


def _copy_metadata(gguf, writer, reader):
    for key, field in reader.fields.items():
        if key.startswith(SKIP_KEYS):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub)


def _config_metadata(gguf, writer, cfg, src: Source, spec: Arch) -> dict:
    """Write the config's keys and tokenizer; returns the extra tensors the metadata implies
    (gguf name -> f32 array: llama3's rope_freqs)."""
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rope = _rope(cfg, "full_attention")
    rotary = rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None)) or 1.0
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    writer.add_name(getattr(cfg, "_name_or_path", "") or src.directory.name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_rope_dimension_count(int(head_dim * rotary))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    if spec.params is not None:
        spec.params(writer, cfg)
    extra = _rope_scaling(gguf, writer, cfg, spec, rope, int(head_dim * rotary), float(theta), src)
    if any((src.directory / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        _hf_tokenizer(gguf, writer, src.directory, cfg.vocab_size)
    return extra


def _rope(cfg, layer_type: str) -> dict:
    """The rope parameters of `layer_type`'s layers (transformers 5 nests them per layer type where
    they differ, e.g. Gemma3's {"sliding_attention": ..., "full_attention": ...})."""
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if isinstance(rope.get(layer_type), dict):
        rope = rope[layer_type]
    return rope


def _rope_type(rope: dict) -> str:
    return rope.get("rope_type") or rope.get("type") or "default"


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention factor for `factor` (transformers' get_mscale; with mscale 1 llama.cpp's rope_yarn
    computes the same)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _rope_scaling(gguf, writer, cfg, spec: Arch, rope: dict, dim: int, theta: float, src) -> dict:
    """Rope scaling as convert_hf_to_gguf.py writes it; returns the extra tensors (llama3's rope_freqs).

    linear: rope.scaling.type linear + factor (llama.cpp divides every frequency by it, as transformers).
    yarn:   rope.scaling.type yarn + factor + original_context_length; llama.cpp's YaRN uses beta_fast 32,
            beta_slow 1, a truncated correction range and attention factor 0.1 ln(factor) + 1, as
            transformers does by default: other values are refused (llama's and qwen2's graphs read no keys
            for them).
    llama3: no keys; a rope_freqs tensor of per-frequency divisors (1 for short wavelengths, factor for long
            ones, smoothed between), which llama.cpp's llama graph divides the frequencies by."""
    kind = _rope_type(rope)
    if kind == "default":
        return {}
    where = f"source {src.directory} (config.json rope_parameters {rope})"
    if kind not in spec.rope_scaling:
        how = (f"llama.cpp's {_arch_name(gguf, spec)} graph takes {', '.join(spec.rope_scaling)}"
               if spec.rope_scaling else f"llama.cpp's {_arch_name(gguf, spec)} graph takes none here")
        raise ExportError(f"export: rope scaling {kind!r} of {where} cannot be written to GGUF ({how}; slimgraph "
                          f"writes linear, yarn and llama3). Export from a GGUF source made by llama.cpp's "
                          f"convert_hf_to_gguf.py, or use another format (--format gptq or compressed-tensors)")
    factor = rope.get("factor")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
        return {}
    orig = rope.get("original_max_position_embeddings")
    if kind == "yarn":
        orig = orig or cfg.max_position_embeddings
        factor = factor or cfg.max_position_embeddings / orig
        attention = rope.get("attention_factor")   # None: transformers infers it as below
        if attention is None and rope.get("mscale") and rope.get("mscale_all_dim"):
            attention = _yarn_mscale(factor, rope["mscale"]) / _yarn_mscale(factor, rope["mscale_all_dim"])
        if attention is None:
            attention = _yarn_mscale(factor)
        odd = {k: v for k, v, want in [("beta_fast", rope.get("beta_fast") or 32, 32),
                                        ("beta_slow", rope.get("beta_slow") or 1, 1),
                                        ("truncate", rope.get("truncate", True), True)] if v != want}
        if abs(attention - _yarn_mscale(factor)) > 1e-6:
            odd["attention_factor"] = attention
        if odd:
            raise ExportError(f"export: yarn rope scaling of {where} with {odd}: llama.cpp's "
                              f"{_arch_name(gguf, spec)} graph computes YaRN with beta_fast 32, beta_slow 1, a "
                              f"truncated range and attention factor 0.1 ln(factor) + 1 "
                              f"({_yarn_mscale(factor):.4f}) and reads no keys for others; export from a GGUF "
                              f"source, or use another format")
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(factor))
        writer.add_rope_scaling_orig_ctx_len(int(orig))
        return {}
    # llama3
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    orig = float(orig or 8192)
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    wavelen = 2 * math.pi / freqs
    smooth = (orig / wavelen - low) / (high - low)
    divisor = np.where(wavelen < orig / high, 1.0,
                       np.where(wavelen > orig / low, float(factor), 1.0 / ((1 - smooth) / factor + smooth)))
    return {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight": divisor.astype(np.float32)}


def _not_gpt2_bpe(directory: Path) -> Optional[str]:
    """Why `directory`'s tokenizer.json is not the GPT-2 style byte-level BPE llama.cpp's "gpt2" model reads
    (what gguf's BpeVocab takes), or None when it is one, or when there is a vocab.json / no tokenizer.json."""
    import json
    path = directory / "tokenizer.json"
    if (directory / "vocab.json").is_file() or not path.is_file():
        return None
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{path} is not a JSON tokenizer file ({e})"
    model = tj.get("model") if isinstance(tj, dict) else None
    kind = model.get("type") if isinstance(model, dict) else None
    pre = (tj.get("pre_tokenizer") or {}).get("type")
    decoder = (tj.get("decoder") or {}).get("type")
    if kind != "BPE":
        what = {"WordPiece": " (a BERT-style tokenizer)", "Unigram": " (a SentencePiece unigram model)"}.get(kind, "")
        return f"{path} holds a {kind} model{what}, not BPE"
    if model.get("byte_fallback") or pre == "Metaspace" or decoder in ("Metaspace", "Sequence"):
        return (f"{path} is a SentencePiece-style BPE (pre_tokenizer {pre}, decoder {decoder}, byte_fallback "
                f"{bool(model.get('byte_fallback'))}), which llama.cpp reads from the model's tokenizer.model: put "
                f"that file next to it")
    if decoder != "ByteLevel":
        return (f"{path} is a BPE with decoder {decoder}, not ByteLevel: llama.cpp's gpt2 model decodes tokens "
                f"as GPT-2's byte-level alphabet, so its text would come out garbled")
    return None


def _hf_tokenizer(gguf, writer, directory: Path, n_vocab: int):
    """A GPT-2 style BPE (tokenizer.json / vocab.json: llama.cpp's "gpt2" model) or a SentencePiece
    tokenizer.model ("llama": Llama-2, Phi-3, Gemma), padded to the embedding's n_vocab rows with
    unused [PAD<i>] tokens as convert_hf_to_gguf.py pads (llama.cpp wants one token per row)."""
    not_bpe = _not_gpt2_bpe(directory)
    try:
        if not_bpe:
            raise FileNotFoundError(not_bpe)
        vocab, model = gguf.vocab.BpeVocab(directory), "gpt2"
    except ValueError as e:     # gguf's BpeVocab: added tokens that do not follow the vocabulary
        raise ExportError(f"export: {directory}'s BPE tokenizer cannot be carried into GGUF: {e} (llama.cpp needs "
                          f"one id per token, in order); export from a GGUF source instead") from None
    except FileNotFoundError:
        if not (directory / "tokenizer.model").is_file():
            raise ExportError(f"export: {directory}'s tokenizer is neither a GPT-2 style BPE (tokenizer.json with "
                              f"a ByteLevel decoder, or vocab.json) nor a SentencePiece tokenizer.model" +
                              (f" ({not_bpe})" if not_bpe else "") + "; only those are carried into GGUF from a "
                              "Hugging Face source (export from a GGUF source instead)") from None
        try:
            vocab, model = gguf.vocab.SentencePieceVocab(directory), "llama"
        except RuntimeError as e:   # sentencepiece is not installed
            raise ExportError(f"export: {directory}'s tokenizer.model needs the sentencepiece package ({e}): "
                              f"pip install sentencepiece") from None
    tokens, scores, types = [], [], []
    for text, score, ttype in vocab.all_tokens():
        tokens.append(text if isinstance(text, str) else text.decode("utf-8"))
        scores.append(float(score))
        types.append(ttype)
    if len(tokens) > n_vocab:
        raise ExportError(f"export: {directory}'s tokenizer has {len(tokens)} tokens but the model's embedding "
                          f"only {n_vocab} rows (config vocab_size); llama.cpp needs one row per token")
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    pre = "default"          # SentencePiece: llama.cpp's "llama" model has no pre-tokenizer
    if model == "gpt2":
        pre, why = gguf_pre.detect(directory)
        if why:
            warnings.warn(why, stacklevel=4)
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    if model == "llama":
        writer.add_token_scores(scores)
    writer.add_token_types(types)
    gguf.vocab.SpecialVocab(directory, load_merges=model == "gpt2", n_vocab=len(tokens)).add_to_gguf(
        writer, quiet=True)


# ---- entry point --------------------------------------------------------------------------------
def to_gguf(model, path, *, type: str = "q4_0", source=None, float_type: str = "q8_0") -> Path:
    """Write `model` (CompiledModel, artifact path or ir.Graph) as a GGUF file for llama.cpp.

    type:       q4_0 | q4_1 | q8_0 (the quantized weights' block type; each must fit, see the module
                docstring) or f16 | f32 (every weight dequantized to that float type).
    source:     zoo name, GGUF file or Hugging Face directory the metadata and tokenizer come from.
    float_type: f32 | f16 | q8_0 for 2-D float weights slimgraph did not quantize (with a quantized
                `type`); q8_0 is what llama.cpp's own quantizer gives a tied embedding of this width.
    Raises ExportError naming the weight and the types that fit it. Returns the path written."""
    gguf = _gguf()
    t = _type(type)
    if float_type not in FLOAT_TYPES:
        raise ExportError(f"export: float_type {float_type!r} is not supported; use one of {', '.join(FLOAT_TYPES)}")
    src = Source.of(source)
    reader = gguf.GGUFReader(str(src.gguf_path)) if src.gguf_path else None
    hp = _hparams(reader) if reader is not None else _config_hparams(src.config)
    spec = _arch(gguf, hp["model_type"], src)
    arch = getattr(gguf.MODEL_ARCH, spec.gguf)
    arch_name = _arch_name(gguf, spec)
    weights = model_weights(model)
    names = gguf.get_tensor_name_map(arch, hp["layers"])
    if not hp["tied"] and gguf.MODEL_TENSOR.OUTPUT not in gguf.MODEL_TENSORS[arch]:
        raise ExportError(f"export: llama.cpp's {arch_name} architecture has no output.weight (it reads the "
                          f"logits off the embedding), but source {src} has an untied lm_head; tie it to "
                          f"model.embed_tokens or export to another format")
    plan = _plan(weights, names, hp["tied"], reader, output=not hp["tied"] or spec.output_required)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch_name)
    try:
        # tensors that come from the source's config or file, not from the model (llama3's rope_freqs)
        if reader is not None:
            _copy_metadata(gguf, writer, reader)
            extra = {t.name: t for t in reader.tensors if t.name == "rope_freqs.weight"}
        else:
            extra = _config_metadata(gguf, writer, src.config, src, spec)
        writer.add_file_type(getattr(gguf.LlamaFileType, t.file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        heads, kv_heads = hp["heads"], hp["kv_heads"]
        plan = [step for step in plan if step[0] not in extra]
        with progress.bar(len(plan) + len(extra), f"gguf: {t.name} blocks", "tensor") as bar:
            for gguf_name, hf_name, tied in plan:
                w = find(weights, hf_name, tied)
                if spec.permute_qk and ".attn_q." in gguf_name:
                    w = _llama_permute(w, heads)
                elif spec.permute_qk and ".attn_k." in gguf_name:
                    w = _llama_permute(w, kv_heads)
                if spec.norm_offset and _is_norm(gguf_name):
                    w = w.float() + spec.norm_offset
                data, raw = _tensor_data(gguf, w, hf_name, t, float_type)
                writer.add_tensor(gguf_name, data, raw_dtype=raw)
                bar.update(1)
            for gguf_name, data in extra.items():   # llama3's rope_freqs (a source GGUF's: copied as it is)
                data = np.asarray(data if isinstance(data, np.ndarray) else data.data, dtype=np.float32)
                writer.add_tensor(gguf_name, data)
                bar.update(1)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        # gguf's own byte bar, under slimgraph's rules (a terminal, not --quiet)
        writer.write_tensors_to_file(progress=not progress.quiet() and sys.stderr.isatty())
        writer.close()
        tmp.replace(path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def supported_archs(gguf=None) -> str:
    """'llama, mistral, ... (GGUF architectures llama, ...)', for messages."""
    gguf = gguf or _gguf()
    g = dict.fromkeys(_arch_name(gguf, a) for a in ARCHS.values())
    return f"{', '.join(ARCHS)} (GGUF architectures {', '.join(g)})"


def _arch_name(gguf, a: Arch) -> str:
    """The GGUF architecture name llama.cpp reads (general.architecture), e.g. 'qwen2'."""
    return gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, a.gguf)]


def _arch(gguf, model_type: str, src) -> Arch:
    """The Arch of a transformers model type (Hugging Face source) or GGUF architecture (GGUF source)."""
    if model_type in ARCHS:
        return ARCHS[model_type]
    for a in ARCHS.values():
        if _arch_name(gguf, a) == model_type:
            return a
    raise ExportError(f"export: GGUF export supports the model types {supported_archs(gguf)}; source {src} is "
                      f"{model_type!r}. Export it with --format gptq or compressed-tensors instead, or "
                      f"add its llama.cpp layout to ARCHS in slimgraph/export/gguf.py")


def _is_norm(gguf_name: str) -> bool:
    """An RMSNorm weight (attn_norm, ffn_norm, output_norm, attn_q_norm, post_ffw_norm, ...)."""
    return gguf_name.endswith("norm.weight")


def _hparams(reader) -> dict:
    """What the export needs to know of the architecture, from a source GGUF's metadata."""
    f = reader.fields
    arch = f["general.architecture"].contents()
    heads = f[f"{arch}.attention.head_count"].contents()
    kv = f.get(f"{arch}.attention.head_count_kv")
    return {"model_type": arch, "layers": f[f"{arch}.block_count"].contents(), "heads": heads,
            "kv_heads": kv.contents() if kv is not None else heads,
            "tied": "output.weight" not in {t.name for t in reader.tensors}}


def _config_hparams(cfg) -> dict:
    heads = cfg.num_attention_heads
    return {"model_type": cfg.model_type, "layers": cfg.num_hidden_layers, "heads": heads,
            "kv_heads": getattr(cfg, "num_key_value_heads", None) or heads,
            "tied": bool(getattr(cfg, "tie_word_embeddings", False))}


def _plan(weights, names, tied: bool, reader, output: bool) -> list[tuple[str, str, Optional[str]]]:
    """(gguf name, parameter name, tied twin) for each tensor to write, in the source GGUF's order
    (output: write output.weight, a copy of the tied embedding where the architecture needs one)."""
    hf_of = {}
    for hf_name in weights:
        g = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if g is not None:
            hf_of.setdefault(g, hf_name)
    if reader is not None:
        wanted = [t.name for t in reader.tensors]
    else:
        wanted = ["token_embd.weight"] + [g for g in hf_of if g not in ("token_embd.weight", "output.weight")]
        if output:
            wanted.append("output.weight")
    plan = []
    for g in wanted:
        hf_name = hf_of.get(g) or _guess_hf_name(g)
        twin = {"output.weight": "model.embed_tokens.weight",
                "token_embd.weight": "lm_head.weight" if tied else None}.get(g)
        plan.append((g, hf_name, twin))
    return plan


def _guess_hf_name(gguf_name: str) -> str:
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    return fixed.get(gguf_name, gguf_name)
