"""Export a compiled model to the files other runtimes load.

    slimgraph.export.to_gguf(compiled, "m.Q4_0.gguf", type="q4_0", source="smollm2-135m")   # llama.cpp
    slimgraph.export.to_compressed_tensors(compiled, "out/w4a16", source=...)              # vLLM, transformers
    slimgraph.export.to_gptq(compiled, "out/gptq", source=...)                             # GPTQ loaders
    slimgraph.export.export(compiled, path, format="gguf", **options)                      # by format name

`compiled` is a CompiledModel, an artifact path or an ir.Graph; `source` (zoo name, GGUF file or
Hugging Face directory) supplies the config, tokenizer and metadata the artifact does not hold.
One module per format; FORMATS maps a format name to its writer (module, function).
"""
from __future__ import annotations
import importlib

from .weights import ExportError, Packed, model_weights

FORMATS = {
    "gguf": ("gguf", "to_gguf"),
    "compressed-tensors": ("compressed_tensors", "to_compressed_tensors"),
    "gptq": ("gptq", "to_gptq"),
}
__all__ = ["export", "to_gguf", "to_compressed_tensors", "to_gptq", "FORMATS", "ExportError", "Packed",
           "model_weights"]


def writer(format: str):
    if format not in FORMATS:
        raise ExportError(f"export: unknown format {format!r}; supported: {', '.join(FORMATS)}")
    module, fn = FORMATS[format]
    return getattr(importlib.import_module(f".{module}", __name__), fn)


def check_output(path, format: str) -> None:
    """Refuse, before any work, an output path no writer can use: one under a file, or (GGUF, one file) an
    existing folder. (The checkpoint writers refuse an existing path that is not a checkpoint themselves.)"""
    from pathlib import Path
    path = Path(path)
    from ..cache import blocking_file
    parent = blocking_file(path)
    if parent is not None:
        raise ExportError(f"export: {parent} is a file, so {path} cannot be written under it; choose "
                          f"another output path")
    if format == "gguf" and path.is_dir():
        raise ExportError(f"export: {path} is a folder, and a GGUF model is one file: give a file path "
                          f"(e.g. {path / 'model.gguf'})")


def export(model, path, *, format: str, **options):
    """Write `model` in `format` (a FORMATS key) to `path`; options go to that format's writer."""
    write = writer(format)
    check_output(path, format)
    return write(model, path, **options)


def to_gguf(model, path, **options):
    return export(model, path, format="gguf", **options)


def to_compressed_tensors(model, path, **options):
    return export(model, path, format="compressed-tensors", **options)


def to_gptq(model, path, **options):
    return export(model, path, format="gptq", **options)


to_gguf.__doc__ = "GGUF for llama.cpp; see slimgraph.export.gguf.to_gguf."
to_compressed_tensors.__doc__ = "compressed-tensors pack-quantized; see slimgraph.export.compressed_tensors."
to_gptq.__doc__ = "GPTQ format; see slimgraph.export.gptq.to_gptq."
