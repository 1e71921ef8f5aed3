"""Which llama.cpp pre-tokenizer (GGUF `tokenizer.ggml.pre`) splits text as a Hugging Face BPE tokenizer does.

llama.cpp's BPE tokenizer first splits text with a list of regexes chosen by `tokenizer.ggml.pre`
(llama-vocab.cpp, llm_tokenizer_bpe), then merges within each piece. transformers splits with the
tokenizer.json `pre_tokenizer`. When the two split differently, the same text becomes different token
ids in llama.cpp, silently. convert_hf_to_gguf.py picks the name by hashing the tokenization of a
check text, which only knows released vocabularies; here the pre_tokenizer itself is read:

    Split(Regex r, behavior Isolated)          -> r
    Digits(individual_digits=True / False)     -> \\p{N} / \\p{N}+
    ByteLevel(use_regex=True)                  -> GPT-2's regex (GPT2 below); use_regex=False: no split
    Sequence([...])                            -> its parts' regexes, in order

and the resulting regex list is looked up in PRE_TOKENIZERS: for each llama.cpp name, the regexes the
released models of that family carry in their tokenizer.json (llama.cpp applies the same splits one
after another, with its own spelling of some: Llama 3's `(?i:'s|...)` is `(?:'[sS]|...)` there).
Each entry is tested (tests/export/test_gguf.py) by training a small BPE with that pre_tokenizer and
comparing llama.cpp's token ids with transformers' on digits, contractions, whitespace runs,
punctuation and non-ASCII text; and "default" tokenizes at least one of those differently.

A tokenizer whose pre_tokenizer matches no entry (other regexes, a prefix space llama.cpp never adds,
Metaspace, Punctuation, ...) is written as "default" with a warning rather than refused: llama.cpp's
default regexes are GPT-2's plus punctuation and digit splits, so such a file runs and mostly tokenizes
alike, but not exactly (see `unknown_message`).
"""
from __future__ import annotations
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# The regexes as tokenizer.json spells them (JSON-decoded: `\p{L}` is backslash-p, `\r` backslash-r).
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"   # ByteLevel(use_regex)
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
         r"\s*[\r\n]+|\s+(?!\S)|\s+")
DIGIT = r"\p{N}"      # Digits(individual_digits=True)
DIGITS = r"\p{N}+"    # Digits(individual_digits=False)


@dataclass(frozen=True)
class PreTokenizer:
    name: str                  # tokenizer.ggml.pre, as llama.cpp's llama_vocab::load reads it
    splits: tuple[str, ...]    # the tokenizer.json pre_tokenizer's regexes, in order
    models: str                # released models that carry it (for messages and docs)


PRE_TOKENIZERS = (
    PreTokenizer("gpt-2", (GPT2,), "GPT-2, Phi-2, ByteLevelBPETokenizer's default"),
    # llama.cpp's "smollm" and "starcoder" split alike ("\p{N}" then GPT-2's); SmolLM's shipped GGUFs say smollm
    PreTokenizer("smollm", (DIGIT, GPT2), "SmolLM, SmolLM2, StarCoder"),
    PreTokenizer("llama-bpe", (LLAMA3,), "Llama 3, 3.1, 3.2"),
    PreTokenizer("qwen2", (QWEN2,), "Qwen2, Qwen2.5, Qwen3"),
)


def splits_of(pre) -> Optional[tuple[str, ...]]:
    """The regexes a tokenizer.json pre_tokenizer (dict or None) splits by, in order, as llama.cpp
    would apply them; None when it does something llama.cpp's BPE pre-tokenizers cannot (a prefix
    space, a split that removes or merges its matches, another pre-tokenizer type)."""
    if pre is None:
        return ()
    kind = pre.get("type")
    if kind == "Sequence":
        out: list[str] = []
        for p in pre.get("pretokenizers", []):
            s = splits_of(p)
            if s is None:
                return None
            out.extend(s)
        return tuple(out)
    if kind == "ByteLevel":
        if pre.get("add_prefix_space", False):
            return None           # llama.cpp's BPE never prepends a space
        return (GPT2,) if pre.get("use_regex", True) else ()
    if kind == "Digits":
        return (DIGIT,) if pre.get("individual_digits", False) else (DIGITS,)
    if kind == "Split":
        pattern = pre.get("pattern", {})
        if pre.get("behavior") != "Isolated" or pre.get("invert", False) or "Regex" not in pattern:
            return None
        return (pattern["Regex"],)
    return None


def pre_tokenizer_name(tokenizer_json: dict) -> Optional[str]:
    """The llama.cpp pre-tokenizer name that splits as this tokenizer.json does, or None."""
    splits = splits_of(tokenizer_json.get("pre_tokenizer"))
    for p in PRE_TOKENIZERS:
        if splits == p.splits:
            return p.name
    return None


def unknown_message(path: Path, pre) -> str:
    known = "; ".join(f"{p.name} ({p.models})" for p in PRE_TOKENIZERS)
    return (f"export: {path}'s pre_tokenizer {json.dumps(pre)} matches none of the llama.cpp pre-tokenizers "
            f"slimgraph recognizes ({known}); tokenizer.ggml.pre is written as 'default', so llama.cpp splits text "
            f"with its generic regexes (GPT-2's plus punctuation runs and 3-digit groups) and can tokenize some "
            f"text (digits, punctuation, contractions, whitespace) differently from transformers. For exact "
            f"tokenization export from a GGUF source made by llama.cpp's convert_hf_to_gguf.py, or add the "
            f"family to PRE_TOKENIZERS in slimgraph/export/gguf_pre.py")


def detect(directory: Path) -> tuple[str, Optional[str]]:
    """(tokenizer.ggml.pre, warning or None) for the BPE tokenizer in `directory`."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        return "default", (f"export: {directory} has a BPE vocab.json but no tokenizer.json, so its pre-tokenizer "
                           f"is unknown; tokenizer.ggml.pre is written as 'default' (llama.cpp's generic regexes), "
                           f"which can tokenize some text differently from transformers. Save the tokenizer with "
                           f"transformers (tokenizer.save_pretrained) to get a tokenizer.json, or export from a "
                           f"GGUF source")
    tj = json.loads(path.read_text(encoding="utf-8"))
    name = pre_tokenizer_name(tj)
    if name is None:
        return "default", unknown_message(path, tj.get("pre_tokenizer"))
    return name, None
