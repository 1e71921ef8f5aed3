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
def tiny_source(tmp_path_factory):
    """(model, tokenizer, directory): a seeded 2-layer GQA Llama (hidden 64, tied embeddings)."""
    tok = _tokenizer()
    assert len(tok) == VOCAB
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():   # larger-than-init weights so that quantization errors show in the logits
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    d = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return model, tok, d


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
