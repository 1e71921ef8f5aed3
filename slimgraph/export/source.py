"""The source model an export carries its config, tokenizer and metadata from.

    src = Source.of("smollm2-135m")         # a zoo name,
    src = Source.of("path/to/model.gguf")   # a GGUF file (its metadata and tokenizer are copied),
    src = Source.of("path/to/hf_dir")       # or a Hugging Face directory (config.json, tokenizer files)

A compiled artifact holds the graph and weights only; the architecture hyper-parameters, tokenizer
and chat template come from here.
"""
from __future__ import annotations
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

from .weights import ExportError


@dataclass
class Source:
    directory: Path
    gguf_file: Optional[str] = None     # file name inside `directory`

    @staticmethod
    def of(source) -> "Source":
        if isinstance(source, Source):
            return source
        if source is None:
            raise ExportError("export: a source model is needed for the config, tokenizer and metadata: pass "
                              "source= (CLI: --source) a zoo name (e.g. smollm2-135m), a GGUF file or a Hugging "
                              "Face model directory")
        from .. import zoo
        if isinstance(source, str) and source in zoo.MODELS:
            return Source(zoo.model_dir(source), zoo.MODELS[source].gguf_file)
        p = Path(source)
        if p.is_file() and p.suffix == ".gguf":
            return Source(p.parent, p.name)
        if p.is_dir():
            if (p / "config.json").is_file():
                return Source(p)
            ggufs = sorted(f.name for f in p.glob("*.gguf"))
            if len(ggufs) == 1:
                return Source(p, ggufs[0])
            raise ExportError(f"export: source directory {p} has no config.json and "
                              f"{'several GGUF files ' + str(ggufs) if ggufs else 'no GGUF file'}; "
                              f"name the GGUF file or a Hugging Face model directory")
        raise ExportError(f"export: source {source!r} is neither a zoo model ({', '.join(zoo.MODELS)}), "
                          f"a .gguf file nor a model directory")

    @property
    def gguf_path(self) -> Optional[Path]:
        return self.directory / self.gguf_file if self.gguf_file else None

    def _kw(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    @cached_property
    def config(self):
        """The transformers config, without the source's own quantization section."""
        transformers = _transformers()
        cfg = transformers.AutoConfig.from_pretrained(self.directory, **self._kw())
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        return cfg

    @cached_property
    def tokenizer(self):
        transformers = _transformers()
        try:
            return transformers.AutoTokenizer.from_pretrained(self.directory, **self._kw())
        except (OSError, ValueError) as e:
            raise ExportError(f"export: cannot load the tokenizer of source {self.directory} ({e}); the "
                              f"exported model would not be usable without one") from None

    def generation_config(self):
        transformers = _transformers()
        try:
            return transformers.GenerationConfig.from_pretrained(self.directory, **self._kw())
        except (OSError, ValueError, TypeError):
            return transformers.GenerationConfig.from_model_config(self.config)

    def __str__(self) -> str:
        return str(self.gguf_path or self.directory)


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ExportError("export needs transformers for the source config and tokenizer: "
                          "pip install 'slimgraph[hf]'") from None
    transformers.logging.set_verbosity_error()
    return transformers
