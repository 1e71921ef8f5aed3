"""A Hugging Face checkpoint directory from a compiled model: config.json (with the format's
`quantization_config`), generation_config.json, tokenizer files and model.safetensors.

    write_checkpoint(compiled, out_dir, source, pack_linear, quantization_config)

The parameter names come from the source architecture (built on the meta device, no weights
loaded). Each quantized `nn.Linear` weight `X.weight` is replaced by what `pack_linear(name, packed)`
returns (e.g. `X.weight_packed`, `X.weight_scale`); float weights are written as they are, in the
source config's dtype. A tied head is written once (transformers re-ties it); a tied head that
slimgraph quantized is written dequantized, because the embedding lookup reads it as a float table.
"""
from __future__ import annotations
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..ir import progress
from .source import Source
from .weights import ExportError, Packed, find, model_weights


def skeleton(cfg):
    """(state-dict names, names of nn.Linear weights) of the source architecture, built on meta."""
    import transformers
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    names = list(model.state_dict())
    if getattr(cfg, "tie_word_embeddings", False):
        head = model.get_output_embeddings()
        names = [n for n in names if not (head is not None and n == "lm_head.weight")]
    return names, linear


def write_checkpoint(model, out_dir, source, pack_linear: Callable[[str, Packed], dict],
                     quantization_config: Callable[[dict], dict], fits: Callable[[str, Packed], None]) -> Path:
    """Write the checkpoint into `out_dir` (replaced atomically if it exists as an earlier export).
    `quantization_config(packed_by_name)` gives config.json's section; `fits(name, packed)` raises
    ExportError for a layer the format cannot hold."""
    from safetensors.torch import save_file
    src = Source.of(source)
    cfg = src.config
    dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    weights = model_weights(model)
    names, linear = skeleton(cfg)
    tensors, packed = {}, {}
    bar = progress.bar(len(names), "checkpoint: packing", "tensor")
    for name in names:
        bar.update(1)
        twin = "lm_head.weight" if name == "model.embed_tokens.weight" else None
        w = find(weights, name, twin)
        if isinstance(w, Packed) and name in linear:
            if w.float_zeros:
                raise ExportError(f"export: weight {name} has float zero points (quantize-weights zero_point=float); "
                                  f"Hugging Face quantized checkpoints store integer ones: re-quantize with "
                                  f"zero_point=int, or export GGUF (--format gguf --type q4_1 holds float minima)")
            fits(name, w)
            packed[name] = w
            for k, v in pack_linear(name, w).items():
                tensors[f"{name.removesuffix('.weight')}.{k}"] = v.contiguous()
        else:
            w = w.dequantize() if isinstance(w, Packed) else w
            tensors[name] = w.to(dtype).contiguous()
    bar.close()
    if not packed:
        raise ExportError("export: the compiled model has no quantized linear weights; run quantize-weights "
                          "(e.g. --pipeline 'quantize-weights{bits=4,group=32,method=gptq}') before exporting")

    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / "config.json").is_file():
        raise ExportError(f"export: {out_dir} exists and is not a model checkpoint; refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg.save_pretrained(tmp)
        conf = json.loads((tmp / "config.json").read_text())
        conf["quantization_config"] = quantization_config(packed)
        (tmp / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True))
        src.generation_config().save_pretrained(tmp)
        src.tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def layer_groups(packed: dict[str, Packed]) -> dict[tuple, list[str]]:
    """(bits, group size or 0 for per-row, sym) -> module names, in order."""
    out: dict[tuple, list[str]] = {}
    for name, p in packed.items():
        key = (p.bits, p.group, p.sym)
        out.setdefault(key, []).append(name.removesuffix(".weight"))
    return out
