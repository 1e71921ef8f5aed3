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


def tiny_windowed(arch: str, sliding_window: int, impl: str = "sdpa", layers: int = 2):
    """A seeded tiny random model with its OWN sliding window (HF: key position > query position -
    sliding_window): `mistral` (every layer), `qwen2` (use_sliding_window: the layers from max_window_layers=1
    on) or `gemma3` (layer_types local, global). Returns (model, its layer types: True where windowed)."""
    import transformers as t
    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=96, max_position_embeddings=256, bos_token_id=None,
                  eos_token_id=None, pad_token_id=None)
    if arch == "mistral":
        cfg, cls = t.MistralConfig(sliding_window=sliding_window, **common), t.MistralForCausalLM
    elif arch == "qwen2":
        cfg, cls = t.Qwen2Config(sliding_window=sliding_window, use_sliding_window=True, max_window_layers=1,
                                 **common), t.Qwen2ForCausalLM
    elif arch == "gemma3":
        cfg, cls = t.Gemma3TextConfig(head_dim=16, sliding_window=sliding_window, **common,
                                      layer_types=["sliding_attention", "full_attention"] * (layers // 2)
                                      + ["sliding_attention"] * (layers % 2)), t.Gemma3ForCausalLM
    else:
        raise ValueError(f"tiny_windowed: unknown arch {arch!r}")
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    model = cls(cfg).eval()
    types = getattr(cfg, "layer_types", None) or ["sliding_attention"] * layers
    return model, [x == "sliding_attention" for x in types]


def own_window_logits(model, windowed, x, keep):
    """The HF model itself (sdpa) over `x` [b, n] with explicit masks, positions 0..n-1: `keep` [n, n] (query
    position, key position: the rewrite's rule and causality) on every layer, and-ed on the windowed layers
    with the model's own window by position (key > query - sliding_window). The oracle of a rewrite that
    keeps a model's own window."""
    n = x.shape[1]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    full = keep[None, None].expand(x.shape[0], 1, n, n)
    own = full & (j > i - model.config.sliding_window)
    mask = own if all(windowed) else {"full_attention": full, "sliding_attention": own}
    impl = model.config._attn_implementation
    model.config._attn_implementation = "sdpa"
    try:
        with torch.no_grad():
            return model(input_ids=x, attention_mask=mask).logits
    finally:
        model.config._attn_implementation = impl


def tree_mask(parents):
    """bool [k, k] of a candidate tree given each node's parent (-1: the root): node i and its ancestors."""
    import torch
    m = torch.eye(len(parents), dtype=torch.bool)
    for i, p in enumerate(parents):
        while p >= 0:
            m[i, p], p = True, parents[p]
    return m


def path_to(i, parents):
    """The node indices from the root to node i of a candidate tree."""
    path = []
    while i >= 0:
        path.append(i)
        i = parents[i]
    return path[::-1]
