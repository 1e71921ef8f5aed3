"""Tiny random-weight transformers models of many architectures (hidden 32-64, 2 layers), with
example inputs; used by test_hf_architectures.py and benchmarks/hf_architectures.py.

    model, kwargs = build("bert")          # eval mode, seeded; kwargs: the forward's example inputs
"""
from __future__ import annotations

import torch

VOCAB = 96
# name -> (family, config class, model class, config kwargs, input kind)
_TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64)
_DEC = dict(_TEXT, num_key_value_heads=2)

ARCHS: dict[str, tuple] = {
    # encoders
    "bert": ("encoder", "BertConfig", "BertModel", _TEXT, "text"),
    "roberta": ("encoder", "RobertaConfig", "RobertaModel", dict(_TEXT, pad_token_id=1), "text"),
    "xlm-roberta": ("encoder", "XLMRobertaConfig", "XLMRobertaModel", dict(_TEXT, pad_token_id=1), "text"),
    "distilbert": ("encoder", "DistilBertConfig", "DistilBertModel",
                   dict(vocab_size=VOCAB, dim=64, hidden_dim=96, n_layers=2, n_heads=4, max_position_embeddings=64),
                   "text"),
    "albert": ("encoder", "AlbertConfig", "AlbertModel", dict(_TEXT, embedding_size=32), "text"),
    "electra": ("encoder", "ElectraConfig", "ElectraModel", dict(_TEXT, embedding_size=32), "text"),
    "deberta-v2": ("encoder", "DebertaV2Config", "DebertaV2Model",
                   dict(_TEXT, relative_attention=True, position_buckets=16, max_relative_positions=32,
                        pos_att_type=["p2c", "c2p"]), "text"),
    "mpnet": ("encoder", "MPNetConfig", "MPNetModel", _TEXT, "text"),
    # decoders (causal LMs: imported with their KV cache by slimgraph.optimize)
    "llama": ("decoder", "LlamaConfig", "LlamaForCausalLM", _DEC, "ids"),
    "qwen2": ("decoder", "Qwen2Config", "Qwen2ForCausalLM", _DEC, "ids"),
    "mistral": ("decoder", "MistralConfig", "MistralForCausalLM", _DEC, "ids"),
    "gemma": ("decoder", "GemmaConfig", "GemmaForCausalLM", dict(_DEC, head_dim=16), "ids"),
    "gemma3": ("decoder", "Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(_DEC, head_dim=16, sliding_window=32, layer_types=["sliding_attention", "full_attention"]),
               "ids"),
    "phi": ("decoder", "PhiConfig", "PhiForCausalLM", dict(_TEXT, partial_rotary_factor=0.5), "ids"),
    "phi3": ("decoder", "Phi3Config", "Phi3ForCausalLM", dict(_DEC, pad_token_id=0), "ids"),
    "gpt2": ("decoder", "GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                  eos_token_id=0), "ids"),
    "gpt-neox": ("decoder", "GPTNeoXConfig", "GPTNeoXForCausalLM", dict(_TEXT, rotary_pct=0.5), "ids"),
    "opt": ("decoder", "OPTConfig", "OPTForCausalLM",
            dict(vocab_size=VOCAB, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=64, word_embed_proj_dim=64), "ids"),
    "falcon": ("decoder", "FalconConfig", "FalconForCausalLM",
               dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    new_decoder_architecture=False, multi_query=True), "ids"),
    "stablelm": ("decoder", "StableLmConfig", "StableLmForCausalLM", _DEC, "ids"),
    # encoder-decoders: the whole forward with given decoder_input_ids
    "t5": ("encoder-decoder", "T5Config", "T5Model",
           dict(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                decoder_start_token_id=0), "seq2seq"),
    "bart": ("encoder-decoder", "BartConfig", "BartModel",
             dict(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=64),
             "seq2seq"),
    "marian": ("encoder-decoder", "MarianConfig", "MarianModel",
               dict(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                    decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96,
                    max_position_embeddings=64, pad_token_id=0, decoder_start_token_id=0), "seq2seq"),
    # vision
    "vit": ("vision", "ViTConfig", "ViTModel",
            dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, image_size=32,
                 patch_size=8), "image"),
    "deit": ("vision", "DeiTConfig", "DeiTModel",
             dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, image_size=32,
                  patch_size=8), "image"),
    "resnet": ("vision", "ResNetConfig", "ResNetModel",
               dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"), "image"),
    "convnext": ("vision", "ConvNextConfig", "ConvNextModel",
                 dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2), "image"),
    "swin": ("vision", "SwinConfig", "SwinModel",
             dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4),
             "image"),
    # speech encoders
    "wav2vec2": ("speech", "Wav2Vec2Config", "Wav2Vec2Model",
                 dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                      conv_dim=[32, 32], conv_stride=[5, 4], conv_kernel=[10, 8], num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=4, do_stable_layer_norm=False), "audio"),
    "hubert": ("speech", "HubertConfig", "HubertModel",
               dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                    conv_dim=[32, 32], conv_stride=[5, 4], conv_kernel=[10, 8], num_conv_pos_embeddings=16,
                    num_conv_pos_embedding_groups=4), "audio"),
    "whisper-encoder": ("speech", "WhisperConfig", "WhisperEncoder",
                        dict(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2,
                             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=96,
                             decoder_ffn_dim=96, num_mel_bins=16, max_source_positions=16), "mel"),
}


def build(name: str, seed: int = 0):
    """(model in eval mode, example kwargs) for architecture `name`."""
    import transformers as tf
    family, cfg_cls, model_cls, kw, kind = ARCHS[name]
    torch.manual_seed(seed)
    cfg = getattr(tf, cfg_cls)(**kw)
    cls = getattr(tf, model_cls, None)
    if cls is None:  # e.g. WhisperEncoder lives in its model module only
        import importlib
        mod = importlib.import_module(f"transformers.models.{cfg.model_type}.modeling_{cfg.model_type}")
        cls = getattr(mod, model_cls)
    model = cls(cfg).eval()
    return model, inputs(name, batch=2, seed=seed + 1)


def inputs(name: str, batch: int = 2, seq: int = 7, seed: int = 1) -> dict:
    """Example inputs of architecture `name` (padding in the attention mask of text encoders)."""
    g = torch.Generator().manual_seed(seed)
    kind = ARCHS[name][4]
    if kind == "text":
        ids = torch.randint(2, VOCAB, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, -2:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    if kind == "ids":
        return {"input_ids": torch.randint(2, VOCAB, (batch, seq), generator=g)}
    if kind == "seq2seq":
        return {"input_ids": torch.randint(2, VOCAB, (batch, seq), generator=g),
                "decoder_input_ids": torch.randint(2, VOCAB, (batch, 5), generator=g), "use_cache": False}
    if kind == "image":
        return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=g)}
    if kind == "audio":
        return {"input_values": torch.randn(batch, 800, generator=g)}
    if kind == "mel":
        return {"input_features": torch.randn(batch, 16, 32, generator=g)}
    raise ValueError(kind)


def outputs(out) -> list[torch.Tensor]:
    """The float tensors of a model output, in order (cache objects and None left out)."""
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    leaves = torch.utils._pytree.tree_leaves(out)
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]
