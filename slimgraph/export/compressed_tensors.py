"""compressed-tensors `pack-quantized` checkpoints (W4A16 / W8A16): what vLLM and transformers
(with the compressed-tensors package) load.

    to_compressed_tensors(compiled, "out/smollm2-w4a16", source="smollm2-135m")

Per quantized `nn.Linear` `X` (compressed_tensors/compressors/pack_quantized):
  X.weight_packed      i32[out, in * bits / 32]  signed codes + 2^(bits-1), packed densely along `in`
  X.weight_scale       [out, in / group]          (group strategy; [out, 1] per channel)
  X.weight_zero_point  i32[ceil(out * bits / 32), in / group], asymmetric only: signed zero points
                       packed along `out`
  X.weight_shape       i64[2] = (out, in)
  W = (code - zero_point) * scale, codes and zero points signed (int4: -8..7).
slimgraph's int4 code q (0..15) is the signed code q - 8 (its symmetric implied zero 8 becomes 0);
int8 codes are already signed. The packing itself is compressed-tensors' own `pack_to_int32`.
Layers with different bits/group/symmetry become separate config groups targeting them by name.
"""
from __future__ import annotations
import contextlib
import math
from pathlib import Path

import torch

from .hf_checkpoint import layer_groups, write_checkpoint
from .weights import ExportError, Packed


def _ct():
    try:
        import compressed_tensors  # noqa: F401
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    except ImportError:
        raise ExportError("compressed-tensors export needs the compressed-tensors package: "
                          "pip install compressed-tensors") from None
    return pack_to_int32


def _signed(p: Packed):
    """Signed codes i8[out, in] and zero points i8[out, groups] (compressed-tensors' convention)."""
    off = 8 if p.bits == 4 else 0
    return (p.codes() - off).to(torch.int8), (p.zero_points() - off).to(torch.int8)


def pack_linear(name: str, p: Packed, scale_dtype=None) -> dict:
    pack_to_int32 = _ct()
    codes, zeros = _signed(p)
    out = {"weight_packed": pack_to_int32(codes, p.bits),
           "weight_scale": p.scales.to(scale_dtype or p.scales.dtype),
           "weight_shape": torch.tensor(p.shape, dtype=torch.int64)}
    if not p.sym:
        out["weight_zero_point"] = pack_to_int32(zeros, p.bits, packed_dim=0)
    return out


def _fits(name: str, p: Packed):
    if p.bits not in (4, 8):
        raise ExportError(f"export: weight {name} has {p.bits}-bit codes; compressed-tensors pack-quantized "
                          f"takes 1-8 bits, slimgraph writes 4 and 8")


def quantization_config(packed: dict[str, Packed]) -> dict:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
    groups = layer_groups(packed)
    config_groups = {}
    for i, ((bits, group, sym), modules) in enumerate(groups.items()):
        args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym,
                                strategy="channel" if group == 0 else "group",
                                group_size=None if group == 0 else group, observer="minmax")
        targets = ["Linear"] if len(groups) == 1 else modules
        config_groups[f"group_{i}"] = QuantizationScheme(targets=targets, weights=args)
    cfg = QuantizationConfig(config_groups=config_groups, format="pack-quantized",
                             quantization_status="compressed", ignore=["lm_head"])
    return cfg.model_dump(exclude_none=False, mode="json")


def to_compressed_tensors(model, out_dir, *, source=None) -> Path:
    """Write `model` (CompiledModel, artifact path or ir.Graph) as a compressed-tensors pack-quantized
    checkpoint directory (config.json, generation_config.json, tokenizer files, model.safetensors).
    `source`: zoo name, GGUF file or Hugging Face directory for the config and tokenizer.
    Raises ExportError if the model has no quantized linear weights or a layer does not fit."""
    _ct()
    return write_checkpoint(model, out_dir, source, pack_linear, quantization_config, _fits)


def _meta_zero_point_is_unpacked(compressor) -> bool:
    """True when compressed-tensors' meta-device compress keeps an asymmetric zero point unpacked
    (compressed-tensors 0.20.1: `PackedQuantizationCompressor.compress` returns early on meta)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    args = QuantizationArgs(num_bits=4, symmetric=False, strategy="group", group_size=32)
    state = {"weight": torch.empty(16, 32, device="meta"), "weight_scale": torch.empty(16, 1, device="meta"),
             "weight_zero_point": torch.empty(16, 1, dtype=torch.int8, device="meta")}
    out = compressor.compress(state, QuantizationScheme(targets=["Linear"], weights=args))
    return tuple(out["weight_zero_point"].shape) == (16, 1)


@contextlib.contextmanager
def transformers_loading_fix():
    """Make transformers load *asymmetric* pack-quantized checkpoints (ours or llm-compressor's).

        with transformers_loading_fix():
            model = AutoModelForCausalLM.from_pretrained("out/w4a16-asym")

    The bug (compressed-tensors 0.20.1, transformers 5.24): transformers builds the model on the
    meta device and compresses it to get the checkpoint's parameter shapes; on meta,
    `PackedQuantizationCompressor.compress` returns before packing `weight_zero_point`, so the
    skeleton expects i8[out, groups] while every pack-quantized checkpoint (the library's own
    compressor writes it the same way) holds the packed i32[ceil(out * bits / 32), groups]:
    loading fails with "MISMATCH ... weight_zero_point" (`ignore_mismatched_sizes=True` would
    silently re-initialize the zero points). Inside the block the meta path gives the packed shape;
    the decompressor then unpacks it as usual. A no-op when the library does not have the bug."""
    _ct()
    from compressed_tensors.compressors.pack_quantized import base
    cls = base.PackedQuantizationCompressor
    if not _meta_zero_point_is_unpacked(cls):
        yield
        return
    orig = cls.__dict__["compress"]

    def compress(klass, state_dict, scheme, *args, **kwargs):
        out = orig.__func__(klass, state_dict, scheme, *args, **kwargs)
        w, zp = scheme.weights, out.get("weight_zero_point")
        if (zp is not None and zp.device.type == "meta" and not w.symmetric
                and w.strategy in base.PACK_ZP_STRATS):
            rows = math.ceil(zp.shape[0] * w.num_bits / 32)
            out["weight_zero_point"] = torch.empty((rows, *zp.shape[1:]), dtype=torch.int32, device="meta")
        return out
    cls.compress = classmethod(compress)
    try:
        yield
    finally:
        cls.compress = orig
