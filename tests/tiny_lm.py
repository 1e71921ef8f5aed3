"""The seeded tiny random Llama that decoder, draft-head and attention tests share (no special tokens, so
generation never stops early unless a test says so)."""
import torch


def tiny_llama(layers: int = 2, **config):
    import transformers
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**{**dict(vocab_size=96, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=256, bos_token_id=None, eos_token_id=None,
                                             pad_token_id=None), **config})
    return transformers.LlamaForCausalLM(cfg).eval()
