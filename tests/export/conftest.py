"""A tiny random Llama with a real (byte-level BPE) tokenizer, saved as a Hugging Face source
directory, and compiled by slimgraph with the quantizations each export format takes."""
import os

import pytest
import torch

import slimgraph

transformers = pytest.importorskip("transformers")

VOCAB = 320


def require(module: str):
    """Import `module`, or skip locally / fail under CI (where the Makefile installs it)."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        msg = f"{module} is not installed (make setup installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def llama_cpp():
    return require("llama_cpp")


@pytest.fixture(scope="session")
def compressed_tensors():
    return require("compressed_tensors")


def _tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from slimgraph.evaluate import load_text
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([load_text("calib")[:20000]], vocab_size=VOCAB, min_frequency=2,
                            special_tokens=["<|endoftext|>"])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    tok = _tokenizer()
    assert len(tok) == VOCAB
    return tok


TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0, eos_token_id=0,
            tie_word_embeddings=True)
# model_type -> (config class, its own settings); each architecture's additions to Llama (biases, norms)
# are made non-trivial (random) so that a missed or misplaced tensor shows in the logits
TINY_ARCHS = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {"vocab_size": VOCAB + 16}),          # q/k/v biases; embedding rows past the
                                                                   # tokenizer's (Qwen2.5 pads 151665 to 151936)
    "qwen3": ("Qwen3Config", {"head_dim": 32}),                    # q/k norms; head_dim != hidden / heads
    "phi3": ("Phi3Config", {"pad_token_id": 0, "sliding_window": None}),   # fused qkv_proj and gate_up_proj
    "gemma": ("GemmaConfig", {"head_dim": 16}),                    # (1 + w) norms, scaled embedding, gelu
    "gemma2": ("Gemma2Config", {"head_dim": 16, "query_pre_attn_scalar": 16,   # + post norms, soft-capping,
                                "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0,
                                "sliding_window": 5}),   # a window that acts within 12 tokens (0.4 off if lost)
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 16, "query_pre_attn_scalar": 16, "num_hidden_layers": 6,
                                         "sliding_window": 5,
                                         "rope_parameters": {   # layer 5 global, 0-4 sliding
        "sliding_attention": {"rope_type": "default", "rope_theta": 50.0},   # far from 10000 and each other
        "full_attention": {"rope_type": "default", "rope_theta": 500.0}}}),   # so that rope shows in 12 tokens
    "granite": ("GraniteConfig", {"embedding_multiplier": 2.0, "residual_multiplier": 0.5,   # multipliers
                                  "attention_multiplier": 0.3, "logits_scaling": 1.5}),
    "olmo2": ("Olmo2Config", {}),                                  # post-norms only; q/k norms over all heads
}


def _tiny_model(model_type: str, seed: int = 0, **config):
    cls, extra = TINY_ARCHS[model_type]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cls)(**{**TINY, **extra, **config})
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():   # larger-than-init weights so that quantization errors show in the logits
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
            elif model_type != "llama":   # biases and norms away from their 0 / 1 init: each one counts
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _save(model, tok, d):
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return model, tok, d


@pytest.fixture(scope="session")
def tiny_source(tiny_tokenizer, tmp_path_factory):
    """(model, tokenizer, directory): a seeded 2-layer GQA Llama (hidden 64, tied embeddings)."""
    return _save(_tiny_model("llama"), tiny_tokenizer, tmp_path_factory.mktemp("tiny_llama"))


_arch_sources = {}


@pytest.fixture(scope="session")
def tiny_arch_source(tiny_tokenizer, tmp_path_factory):
    """tiny_arch_source("qwen2") -> (model, tokenizer, directory): tiny_source's shapes and tokenizer in
    another architecture (TINY_ARCHS), with random biases / norms where it has them."""
    def get(model_type: str):
        if model_type not in _arch_sources:
            # a directory name without the model type: it becomes general.name, and llama.cpp's vocab
            # loader special-cases names like "phi3" (looks up "<|end|>", which the tiny vocab lacks)
            _arch_sources[model_type] = _save(_tiny_model(model_type), tiny_tokenizer,
                                              tmp_path_factory.mktemp("tiny_arch"))
        return _arch_sources[model_type]
    return get


_compiled = {}


@pytest.fixture(scope="session")
def compile_tiny(tiny_source):
    """compile_tiny("bits=4,group=32,sym=true") -> CompiledModel of the tiny Llama with those weights."""
    model = tiny_source[0]

    def get(opts: str):
        if opts not in _compiled:
            _compiled[opts] = slimgraph.optimize(
                model, pipeline=f"canonicalize,cse,dce,quantize-weights{{{opts}}},fuse-dequant-matmul")
        return _compiled[opts]
    return get


@pytest.fixture(scope="session")
def sentencepiece_source(tmp_path_factory):
    """(model, sentencepiece processor, directory): a tiny Phi-3 whose tokenizer is a SentencePiece
    tokenizer.model with byte fallback (as Llama-2, Phi-3 and Gemma ship), 384 pieces for a 400-row
    embedding; no tokenizer.json."""
    import io
    spm = require("sentencepiece")
    from slimgraph.evaluate import load_text
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(load_text("calib")[:20000].splitlines()), model_writer=buf,
                                   vocab_size=384, model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1,
                                   eos_id=2, num_threads=1, minloglevel=2)
    d = tmp_path_factory.mktemp("tiny_spm")
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    model = _tiny_model("phi3", vocab_size=400, bos_token_id=1, eos_token_id=2)
    model.save_pretrained(d)
    return model, spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model")), d


@pytest.fixture(scope="session")
def tiny_config_source(tiny_tokenizer, tmp_path_factory):
    """tiny_config_source("llama", rope_parameters=...) -> (model, tokenizer, directory): tiny_arch_source's
    model with config settings of its own (same seed, so the same weights for the same shapes)."""
    def get(model_type: str, **config):
        return _save(_tiny_model(model_type, **config), tiny_tokenizer, tmp_path_factory.mktemp("tiny_cfg"))
    return get
