"""Quality metrics for compressed models, on the real-text corpus shipped in slimgraph/data.

    ppl = perplexity(model, tokenizer)                      # 4096 eval tokens, 512-token windows
    cos = embedding_cosine(ref_encoder, quant_encoder, tokenizer)   # mean over 200 sentences

`model` is a causal LM (transformers model, or any callable ids[1, T] -> logits[1, T, V] or a
tuple/list whose first element is the logits, e.g. a compiled slimgraph model).
"""
from __future__ import annotations
import math
import re
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"
SPLITS = ("eval", "calib")


def load_text(split: str = "eval") -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; valid: {', '.join(SPLITS)}")
    return (DATA / f"{split}.txt").read_text()


def token_ids(tokenizer, split: str = "calib", n: int = 32, seq: int = 256, text: str | None = None) -> torch.Tensor:
    """n consecutive non-overlapping windows of `seq` tokens -> i64[n, seq] (calibration input)."""
    ids = tokenizer(text or load_text(split), return_tensors="pt").input_ids[0]
    if len(ids) < n * seq:
        raise ValueError(f"the {split if text is None else 'given'} text has {len(ids)} tokens; {n} x {seq} requested")
    return ids[:n * seq].view(n, seq).clone()


def _logits(model, ids):
    out = model(ids)
    if hasattr(out, "logits"):
        return out.logits
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def perplexity(model, tokenizer, text: str | None = None, window: int = 512, max_tokens: int = 4096,
               progress: bool | None = None) -> float:
    """exp(mean next-token NLL) over the first `max_tokens` tokens of `text` (default: the eval
    split), in independent windows of `window` tokens (no context carried between windows).
    `progress`: a tqdm bar on stderr (tokens done); None = only when stderr is a terminal."""
    from .ir import progress as bars
    ids = tokenizer(text or load_text("eval"), return_tensors="pt").input_ids[0][:max_tokens]
    nll, count = 0.0, 0
    with bars.bar(len(ids), "perplexity", "tok", enabled=progress, delay=0) as bar:
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window].unsqueeze(0)
            if chunk.shape[1] < 2:
                break
            logits = _logits(model, chunk).float()
            nll += float(torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum"))
            count += chunk.shape[1] - 1
            bar.update(chunk.shape[1])
    return math.exp(nll / count)


def sentences(n: int = 200, split: str = "eval", min_chars: int = 40, max_chars: int = 300) -> list[str]:
    """The first `n` prose sentences of the corpus (grammar and code lines skipped)."""
    text = re.sub(r"\s*\n\s*", " ", "\n".join(
        line for line in load_text(split).splitlines()
        if line and not line.startswith(" ") and not set(line) <= set("*=-")))
    out = [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)]
    out = [s for s in out if min_chars <= len(s) <= max_chars]
    if len(out) < n:
        raise ValueError(f"the {split} text has only {len(out)} sentences of {min_chars}-{max_chars} chars")
    return out[:n]


def _embed(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else (
        out[0] if isinstance(out, (tuple, list)) else out)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)   # mean pooling (sentence-transformers)


@torch.no_grad()
def embedding_cosine(reference, candidate, tokenizer, texts: list[str] | None = None,
                     batch_size: int = 32) -> float:
    """Mean cosine similarity between the mean-pooled embeddings of two encoders."""
    texts = texts or sentences()
    sims = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, return_tensors="pt")
        a, b = _embed(reference, batch), _embed(candidate, batch)
        sims.append(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1))
    return float(torch.cat(sims).mean())
