"""Hugging Face causal LMs -> an IR graph over flat KV-cache tensors, with the cache declared as state.

    imp, kv = export_causal_lm(model)
    # inputs:  input_ids: i64[batch,seq], position_ids: i64[batch,seq],
    #          attention_mask: b8[batch,1,seq,past+seq] (True = may attend),
    #          past_key_{i}, past_value_{i}: f32[batch,kv_heads,past,head_dim]
    # outputs: logits: f32[batch,seq,vocab], present_key_{i}, present_value_{i}: [..., past+seq, ...]
    # states:  key_{i}: %past_key_{i} -> %present_key_{i} append{axis=2} (and value_{i})

Prefill passes caches with past = 0; each decode step feeds the presents back. Positions and the
mask are inputs, so one graph serves prefill, decode, left-padded batches and the verification of a
tree of candidate tokens (slimgraph.decoder builds them). The wrapper rebuilds a
`transformers.DynamicCache` from the flat tensors inside `forward`, so the model's own cache code
(Llama, Qwen2, Mistral, GPT-2, ...) is what gets exported; the cache's concatenation becomes the
`cache_append` op of a declared `append` state (ir/state.py).
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass

import torch

from .torch_export import Imported, import_module


@dataclass(frozen=True)
class KVLayout:
    """The flat KV cache: per layer a key and a value tensor [batch, num_kv_heads, past, head_dim]."""
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str = "f32"
    eos_token_ids: tuple[int, ...] = ()  # the model's generation-config eos: generate() stops there by default

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "KVLayout":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"KVLayout: unknown field(s) {sorted(unknown)}; "
                             f"valid: {sorted(cls.__dataclass_fields__)}")
        d = dict(d)
        d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
        return cls(**d)

    def empty_cache(self, batch: int = 1) -> list[torch.Tensor]:
        """Prefill caches (past = 0) in graph-input order: key_0, value_0, key_1, ..."""
        from ..ir import to_torch
        shape = (batch, self.num_kv_heads, 0, self.head_dim)
        return [torch.zeros(shape, dtype=to_torch(self.dtype)) for _ in range(2 * self.num_layers)]


def kv_layout(config, dtype: torch.dtype = torch.float32, generation_config=None) -> KVLayout:
    from ..ir import from_torch
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = _first(cfg, "num_attention_heads", "n_head")
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or _first(cfg, "hidden_size", "n_embd") // heads
    return KVLayout(_first(cfg, "num_hidden_layers", "n_layer"), kv_heads, head_dim, from_torch(dtype),
                    _eos_ids(generation_config))


def _convention_error(model, e: Exception):
    from .torch_export import ConversionError
    return ConversionError(
        f"{type(model).__name__}: exporting it as a causal LM failed: {type(e).__name__}: {e}\n"
        "slimgraph calls a causal LM with input_ids, position_ids, a 4-D bool attention_mask [batch, 1, seq, "
        "past + seq] and a flat KV cache; models that derive their attention bias from a 2-D mask (ALiBi: "
        "Bloom, MPT, Falcon with alibi=True) do not accept that yet. Such a model can still be compiled "
        "without its cache: slimgraph.frontends.torch_export.import_module(model, (input_ids,))")


def _checked_layout(model, kv: KVLayout) -> KVLayout:
    """The config's KV layout, corrected by the cache one eager token writes (Falcon's multi_query
    and other configs spell the KV head count their own way)."""
    try:
        with torch.no_grad():
            one = torch.zeros(1, 1, dtype=torch.long)
            presents = FlatCacheLM(model)(one, one, torch.ones(1, 1, 1, 1, dtype=torch.bool))[1:]
    except NotImplementedError:
        raise
    except Exception as e:  # noqa: BLE001 - the model's forward rejects the causal-LM convention
        raise _convention_error(model, e) from e
    if len(presents) >= 2 and presents[0].dim() == presents[1].dim() == 4 and \
            (presents[0].shape[1], presents[0].shape[3]) != (presents[1].shape[1], presents[1].shape[3]):
        k, v = presents[0].shape, presents[1].shape
        raise NotImplementedError(
            f"{type(model).__name__}: its cache keeps keys of {k[1]} heads x {k[3]} and values of {v[1]} heads x "
            f"{v[3]} (multi-head latent attention: DeepSeek V2/V3 and their kin); slimgraph's KV cache has one "
            "head count and head_dim for both, so it cannot compile this model as a causal LM yet")
    if presents and presents[0].dim() == 4:
        import dataclasses
        kv = dataclasses.replace(kv, num_layers=len(presents) // 2, num_kv_heads=presents[0].shape[1],
                                 head_dim=presents[0].shape[3])
    return kv


def _eos_ids(generation_config) -> tuple[int, ...]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


def _first(cfg, *names):
    for n in names:
        if getattr(cfg, n, None) is not None:
            return getattr(cfg, n)
    raise ValueError(f"{type(cfg).__name__} has none of {names}; cannot derive the KV-cache layout")


class FlatCacheLM(torch.nn.Module):
    """forward(input_ids, position_ids, attention_mask, *past) -> (logits, *presents), past/presents
    interleaved key_0, value_0, ...; attention_mask is 4-D bool [batch, 1, seq, past + seq].

    A 4-D mask reaches HF's attention as it is, so this wrapper makes it what each layer needs:
    sliding-window layers (Mistral's every layer, Gemma 2/3's and Qwen2's `layer_types`) get the mask
    and-ed with HF's window (key index > query index - sliding_window), passed per layer type as the
    dict HF models accept; non-SDPA attention (eager) gets the additive form (0 / dtype min) that it
    adds to the scores."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        # transformers 5.x renamed `past_key_values` to `cache` (argument and output field)
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        text = model.config.get_text_config()
        window = getattr(text, "sliding_window", None)
        types = getattr(text, "layer_types", None)
        self.window = window if isinstance(window, int) and window > 0 and \
            (types is None or "sliding_attention" in types) else None
        self.mixed = self.window is not None and types is not None and any(t != "sliding_attention" for t in types)
        if self.mixed and not _takes_mask_dict(model):
            raise NotImplementedError(
                f"{type(model).__name__}: layers of different attention types (sliding window {window} and full) "
                "but its forward does not take a mask per layer type; slimgraph cannot export its masks")

    def _masks(self, mask):
        out = {"full_attention": mask}
        if self.window is not None:
            s, total = mask.shape[-2], mask.shape[-1]
            q_idx = torch.arange(s, device=mask.device) + (total - s)
            kv_idx = torch.arange(total, device=mask.device)
            out["sliding_attention"] = mask & (kv_idx[None, :] > q_idx[:, None] - self.window)
        if getattr(self.model.config, "_attn_implementation", "sdpa") != "sdpa":
            # HF's eager (and other non-SDPA) attention adds a 4-D mask to the scores as it is: a bool mask
            # would add 1/0 and mask nothing. Give those the additive form HF itself builds (0 / dtype min).
            dtype = self.model.dtype
            out = {k: torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, torch.finfo(dtype).min)
                   for k, m in out.items()}
        if self.mixed:
            return out
        return out["sliding_attention" if self.window is not None else "full_attention"]

    def forward(self, input_ids, position_ids, attention_mask, *past):
        from transformers import DynamicCache
        masks = self._masks(attention_mask)
        # a plain cache for every layer (HF's sliding layers would drop keys: the decoder owns the cache; a
        # layer's window is in its mask, and sparsify-attention can bound its cache as a ring)
        cache = DynamicCache()
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=masks,
                         use_cache=True, **{self._cache_arg: cache})
        presents = []
        for layer in getattr(out, self._cache_arg).layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def _takes_mask_dict(model) -> bool:
    """HF decoders whose forward accepts {layer type: mask} (Gemma 2/3, Qwen2, ... in transformers >= 4.56)."""
    base = getattr(model, "model", model)
    try:
        src = inspect.getsource(type(base).forward)
    except (OSError, TypeError):
        return False
    return "attention_mask, dict)" in src


def export_causal_lm(model, dynamic_batch: bool = True, example_seq: int = 5,
                     example_past: int = 3, notes: list | None = None) -> tuple[Imported, KVLayout]:
    """Export a transformers causal LM to an IR graph over flat caches (see the module docstring). A second
    export of a model with the same code, config and tensor layout comes from frontends/export_cache.py
    (checked against the model on the example inputs); `notes` receives what the cache did."""
    try:
        from transformers import DynamicCache  # noqa: F401
    except ImportError as e:
        raise ImportError("export_causal_lm needs transformers: pip install 'slimgraph[hf]'") from e
    from torch.export import Dim
    from . import export_cache
    notes = [] if notes is None else notes
    model = model.eval()
    dtype = next(model.parameters()).dtype
    kv = _checked_layout(model, kv_layout(model.config, dtype, getattr(model, "generation_config", None)))
    # examples > 1 so that export does not specialize batch/seq/past to 0 or 1
    batch = 2 if dynamic_batch else 1
    ids = torch.randint(0, model.config.vocab_size, (batch, example_seq),
                        generator=torch.Generator().manual_seed(0))
    positions = torch.arange(example_past, example_past + example_seq).expand(batch, -1)
    mask = torch.ones(batch, 1, example_seq, example_past + example_seq, dtype=torch.bool)
    past = [torch.zeros(batch, kv.num_kv_heads, example_past, kv.head_dim, dtype=dtype)
            for _ in range(2 * kv.num_layers)]
    example = (ids, positions, mask, *past)
    key = export_cache.key(model, {"dynamic_batch": dynamic_batch, "example_seq": example_seq,
                                   "example_past": example_past}) if export_cache.enabled() else None
    graph = export_cache.load(key, model, notes) if key else None
    if graph is not None:
        # the hit check's second input: one longer prompt from position 0 (behaviour that starts past the
        # example's few positions, e.g. a window or a rope scaling, must show in it)
        n = min(64, getattr(model.config, "max_position_embeddings", 64) or 64)
        longer = (torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(1)),
                  torch.arange(n)[None], torch.ones(1, 1, n, n, dtype=torch.bool).tril(),
                  *[torch.zeros(1, kv.num_kv_heads, 0, kv.head_dim, dtype=dtype) for _ in range(2 * kv.num_layers)])
        if all(_reproduces(graph, model, x) for x in (example, longer)):
            notes.append(f"torch.export skipped: export cache hit ({export_cache.cache_dir() / key}.sgir)")
            return Imported(graph, None, None, [v.name for v in graph.inputs], [v.name for v in graph.outputs]), kv
        notes.append(f"export cache entry {key}.sgir did not reproduce the model's outputs; exported again")
    seq_dim, past_dim = Dim("seq"), Dim("past", min=0)
    ids_dims = {1: seq_dim} | ({0: Dim("batch")} if dynamic_batch else {})
    past_dims = tuple({2: past_dim} | ({0: ids_dims[0]} if dynamic_batch else {}) for _ in past)
    mask_dims = {2: seq_dim, 3: Dim.AUTO} | ({0: ids_dims[0]} if dynamic_batch else {})  # 3: past + seq
    names = [f"past_{kind}_{i}" for i in range(kv.num_layers) for kind in ("key", "value")]
    out_names = ["logits"] + [n.replace("past_", "present_") for n in names]
    from .torch_export import ConversionError
    try:
        imp = import_module(FlatCacheLM(model), example,
                            dynamic_shapes=(ids_dims, ids_dims, mask_dims, past_dims),
                            input_names=["input_ids", "position_ids", "attention_mask", *names],
                            output_names=out_names, strip_prefix="model.")
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001 - the model's own forward or torch.export failed on the convention
        raise _convention_error(model, e) from e
    declare_kv_states(imp.graph, kv.num_layers)
    text = export_cache.store(key, imp.graph, model, notes) if key else None
    if text is not None:
        # the graph as the cache holds it (parsed from the text written, not read back: another process may
        # write the entry meanwhile), so this export and later hits are one graph, value names included: the
        # targets' build caches key on the graph text
        imp.graph = export_cache.bind(text, model, notes) or imp.graph
    return imp, kv


def _reproduces(graph, model, example) -> bool:
    """Whether `graph` (the reference interpreter) gives the model's own outputs on `example`: the check that a
    cached export still is this model's graph, whatever its key missed. It samples (two inputs, up to 64
    positions): the key is the guard for what they do not reach."""
    from ..ir.interpreter import run
    with torch.no_grad():
        want = FlatCacheLM(model)(*example)
        try:
            got = run(graph, *example)
        except Exception:  # noqa: BLE001 - a graph that does not even run on them is not this model's
            return False
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g.shape != w.shape or g.dtype != w.dtype:
            return False
        tol = 1e-4 if w.dtype == torch.float32 else 2e-2
        if not torch.allclose(g.float(), w.float(), rtol=tol, atol=tol * max(1.0, float(w.float().abs().max()))):
            return False
    return True


def declare_kv_states(graph, num_layers: int, axis: int = 2) -> None:
    """Declare each past_{key,value}_i -> present_{key,value}_i pair as an `append` state, turning the
    concatenation that DynamicCache.update exported into `cache_append` (the op codegens lower in
    place). Raises ValueError naming the layer when a present is not past + new along `axis`."""
    by_name = {v.name: v for v in graph.inputs}
    outs = {v.name: v for v in graph.outputs}
    for i in range(num_layers):
        for kind in ("key", "value"):
            past, present = by_name[f"past_{kind}_{i}"], outs[f"present_{kind}_{i}"]
            node = present.producer
            rank = past.type.rank
            if node is None or node.op != "concat" or len(node.inputs) != 2 or node.inputs[0] is not past \
                    or node.attrs["dim"] % rank != axis % rank:
                raise ValueError(f"layer {i}: %{present.name} is not concat(%{past.name}, new) along axis {axis} "
                                 f"(it is {node!r}); this model's cache is not a plain append cache")
            with graph.inserting_before(node):
                new = graph.op("cache_append", past, node.inputs[1], axis=axis)
            graph.replace_node(node, [new])      # the output keeps its name (Value.replace_all_uses_with)
            graph.declare_state(f"{kind}_{i}", past, new, "append", axis=axis)
