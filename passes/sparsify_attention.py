"""sparsify-attention: a causal LM's full attention -> sliding-window attention with attention sinks over a
bounded `ring` KV state (StreamingLLM, Xiao et al. 2023, arXiv:2309.17453). Memory O(window + sinks), not O(T).

    sparsify-attention{kind=sliding_window,window=256,sinks=4}

For every `attention(q, k, v, mask)` whose k and v are (GQA-repeated) `cache_append` outputs of declared
`append` states (frontends/hf.py exports them so):

    state key_i: %past_key_i -> %present_key_i append{axis=2}
      becomes
    %present_key_i = cache_window(cache_append(%past_key_i, %k)){axis=2, window=W, sinks=S}
    state key_i: %past_key_i -> %present_key_i ring{axis=2, window=W, sinks=S}

    attention(q, k, v, %attention_mask)  ->  attention(q, k, v, %ring_mask)

Each query sees the first S keys of the sequence and the W keys before it (and itself): exactly the rows
the ring holds when the next token is decoded, so decoding token by token through the ring and one
forward over the whole sequence compute the same thing (tests/passes/test_sparsify_attention.py).
The band is placed by position, in the mask (`position_band`, `slots`): a query's cache slot is L + its
position minus the call's first position, so a candidate of a tree (slimgraph/decoder.py verify) sits at
L + depth, where its path decoded as a chain would put it, not at L + its index among the candidates
(`attention{window}`'s own band counts by index and would drop keys the node sees;
tests/test_tree_verify_windowed.py). An unmasked attention keeps `attention{window=W, sinks=S}`.

A model's own sliding window (Mistral's `sliding_window`, Gemma 2/3's local layers, Qwen2's
`use_sliding_window` layers: canonicalize's `attention{window=w}`, placed by index) is kept and moved into
the mask too, by position: such a layer's query at position p sees the key at position k iff the decoder's
mask allows it, k < S or p - k <= W (the ring's rule), and p - k <= w (its own), and the op loses its
`window` attr (so the decoder takes candidate trees past it). Over the ring the index band would be wrong:
the sinks' rows sit next to the window's, so with w > W the sinks stayed visible long after p - k > w
(tests/passes/test_sparsify_attention.py `test_a_models_own_sliding_window_is_placed_by_position_over_the_ring`).
One mask per distinct own window (Gemma's local and global layers read different masks); a window of
w <= W without sinks lies inside the ring's band and replaces it. With w < W the ring keeps rows those
layers never read (one ring size for every layer); with W >= w and sinks=0 a model whose every layer has
the window (Mistral) computes exactly what it did, with a bounded cache. An unmasked attention with its own
window gets `attention{window=w}` (by index, exact over the ring for chains) when w <= W, else a PassError.

Design decisions:
- Positions: keys are cached after RoPE (as HF caches them), so each key keeps its original position
  id; StreamingLLM's re-positioning inside the cache is not done: only the sinks' distances would change,
  and benchmarks/ablation_sink_positions.py measured re-positioned sinks slightly worse on SmolLM2
  (perplexity 12.906 vs 12.899 over the eval split at W=256, S=4; benchmarks/RESULTS.md).
- The mask: the decoder runtime (slimgraph/decoder.py) stays target- and state-agnostic and keeps passing
  `attention_mask: bool [b, 1, s, L + s]` over every position it has seen (L of them). The graph maps it
  onto the keys it actually has: the columns of the L past positions go through the same
  `cache_window{axis=3, window=W, sinks=S}` as the cache did, the s new columns are kept:
      %ring_mask = concat(cache_window(%attention_mask[..., :ctx-seq]), %attention_mask[..., ctx-seq:])
  The mask input's last dim becomes its own symbol `ctx` (it no longer equals past + seq), so every
  target binds it from the call; then it is and-ed with the window band over the ring's rows + the new
  keys (`position_band`). Padding (left pads are masked out) and tree
  verification work; with left padding, the decoder's prefill moves a padded row's pads to just after its
  first S tokens (ir/causal_lm.py sinks_first), so the sink rows are the row's own tokens.
- Eager attention (HF's eager layers get 0 / dtype-min biases) reads where(~%attention_mask, min, 0): the
  pass reads the bool mask instead (`bool_decoder_masks`; a dtype-min bias weighs a key 0, as False does).
- Rolling back: ring states are replayed from a snapshot by the decoder (verify/accept), not narrowed.

`{kind=block_sparse,block=B,local=L,globals=G}` (BigBird/Longformer-style local + global blocks): a
mask-only rewrite (see `_block_sparse`), blocks of cache slots placed by position as above and counted from
each row's first token (a left-padded row's pads are not its first block: `row_pads`); the cache stays
an `append` state, so decode memory still grows. A model's own window is and-ed in by position as above.

Errors (PassError naming the pass): window < 1, sinks < 0, sinks > window, window + sinks >= the context
limit (`context`, filled from the model's max_position_embeddings by slimgraph.optimize), an unknown
kind, an option of the other kind (window/sinks with kind=block_sparse, block/local/globals with
kind=sliding_window: it would be ignored; refused when the pipeline is parsed), and a graph with no
attention over an append KV state (naming how many attention ops it has).
"""
from __future__ import annotations

from ..ir import symbolic
from ..ir.types import TensorType
from .base import Pass, PassError, PassResult, register_pass

KINDS = ("sliding_window", "block_sparse")
_REPEAT_OPS = ("unsqueeze", "expand", "reshape")   # HF repeat_kv (GQA) between the cache and attention
MASK_INPUT = "attention_mask"


@register_pass("sparsify-attention")
class SparsifyAttention(Pass):
    """Full causal attention over an append KV cache -> sliding window + sinks over a ring state."""
    kind: str = "sliding_window"
    window: int = 256
    sinks: int = 4
    block: int = 64     # block_sparse: block size (tokens)
    local: int = 4      # block_sparse: each query block sees its own and the local - 1 blocks before it
    globals: int = 1    # block_sparse: ... and the first `globals` blocks
    context: int = 0    # the model's context limit (0: unknown, not checked); optimize() fills it

    _KIND_OPTIONS = {"sliding_window": ("window", "sinks"), "block_sparse": ("block", "local", "globals")}

    def introduced_ops(self) -> tuple[str, ...]:
        return ("cache_window",) if self.kind == "sliding_window" else ()   # block_sparse only masks

    def validate(self) -> None:
        """An unknown kind, or an option of the other kind (it would be ignored: kind=block_sparse has no
        window or sinks, kind=sliding_window no blocks), fails when the pipeline is parsed."""
        if self.kind not in KINDS:
            raise PassError(f"sparsify-attention: unknown kind {self.kind!r}; valid kinds: {', '.join(KINDS)}")
        defaults = type(self)()
        for other, names in self._KIND_OPTIONS.items():
            given = [n for n in names if getattr(self, n) != getattr(defaults, n)]
            if other != self.kind and given:
                opts = ", ".join(f"{n}={getattr(self, n)}" for n in given)
                raise PassError(f"sparsify-attention: {opts} {'is an option' if len(given) == 1 else 'are options'} "
                                f"of kind={other}; kind={self.kind} takes "
                                f"{', '.join(self._KIND_OPTIONS[self.kind])} (and would ignore it): drop "
                                f"{'it' if len(given) == 1 else 'them'} or write kind={other}")

    def run(self, graph) -> PassResult:
        linear = sum(1 for n in graph.nodes if n.op == "linear_attention")
        if linear:
            raise PassError(f"sparsify-attention{{kind={self.kind}}}: graph @{graph.name} runs linearize-attention "
                            f"({linear} linear_attention op(s)): " + NO_COMBINATION)
        if self.kind == "block_sparse":
            return self._block_sparse(graph)
        self._check_options()
        attns, targets = kv_attention(graph, "sparsify-attention")
        bool_decoder_masks(graph, [n for n, _, _ in targets])
        masks = _windowed_masks(graph, [n for n, _, _ in targets], self.window, self.sinks)
        states = {}
        for node, ks, vs in targets:
            states[id(ks)], states[id(vs)] = ks, vs
            own = own_window(node)
            attrs = {k: v for k, v in node.attrs.items() if k not in ("window", "sinks")}
            if node in masks:   # both bands are in the node's mask, by position (`position_band`)
                inputs = [*node.inputs[:3], masks[node]]
            else:               # unmasked: the op's own band, by index (exact for chains over the ring)
                inputs = list(node.inputs[:3])
                if own and (own[1] or own[0] > self.window):
                    raise PassError(
                        f"sparsify-attention{{window={self.window},sinks={self.sinks}}}: {node!r} has its own "
                        f"sliding window (window={own[0]}, sinks={own[1]}) and no mask; the two windows compose "
                        f"only in the decoder's %{MASK_INPUT} (by position) or when its window fits in the ring's "
                        f"without sinks (window <= {self.window})")
                attrs.update(window=own[0] if own else self.window, sinks=0 if own else self.sinks)
            with graph.inserting_before(node):
                new = graph.op("attention", *inputs, **attrs)
            graph.replace_node(node, [new])
        for st in states.values():
            _to_ring(graph, st, self.window, self.sinks)
        return PassResult(True, {"attention": len(targets), "ring_states": len(states),
                                 "own_windows": sum(1 for n, _, _ in targets if own_window(n)),
                                 "other_attention": len(attns) - len(targets)})

    def _block_sparse(self, graph) -> PassResult:
        """A mask-only rewrite: attention(q, k, v, mask) -> attention(q, k, v, mask & block_keep), where
        query slot i (cache index) sees key slot j iff j // block > i // block - local or j // block < globals.
        Slots are by position, not by index within the call (`slots`): a tree candidate's slot is L + depth.
        The KV states stay `append` (memory O(T)): prefill skips the masked blocks' influence, and decode
        applies the same rule to each new token, but every key is still kept and scored."""
        where = f"sparsify-attention{{kind=block_sparse,block={self.block},local={self.local},globals={self.globals}}}"
        if self.block < 1 or self.local < 1 or self.globals < 0:
            raise PassError(f"{where}: block and local must be >= 1 and globals >= 0")
        if self.context and self.block * (self.local + self.globals) >= self.context:
            raise PassError(f"{where}: block x (local + globals) = {self.block * (self.local + self.globals)} >= "
                            f"the model's context limit {self.context}: nothing would be masked")
        attns = [n for n in graph.nodes if n.op == "attention"]
        targets = [n for n in attns if len(n.inputs) > 3 and _state_behind(graph, n.inputs[1]) is not None]
        bool_decoder_masks(graph, targets)
        if not targets:
            raise PassError(f"{where}: graph @{graph.name} has {len(attns)} attention op(s), none with a mask "
                            f"over an `append` KV state; the pass needs a causal LM exported with declared state")
        mask = targets[0].inputs[3]
        if any(n.inputs[3] is not mask for n in targets) or mask.name != MASK_INPUT or mask.type.rank != 4:
            raise PassError(f"{where}: the attention masks are not the graph input %{MASK_INPUT} [b, 1, seq, L + seq]")
        seq, ctx = mask.type.shape[2], mask.type.shape[3]
        first = next(n for n in graph.nodes if any(i is mask for i in n.inputs))
        with graph.inserting_before(first):
            past, new = slots(graph, seq, ctx, where)
            # blocks count from each row's first token: a slot minus the row's left pads (`row_pads`), so a
            # left-padded row gets the blocks it gets alone (pad keys fall in blocks < 0, masked out anyway)
            pads = row_pads(graph, new, seq, where)
            past = graph.op("sub", graph.op("unsqueeze", past, dim=0), pads)          # [b, L]
            new = graph.op("sub", new, pads)
            b = graph.op("constant", value=self.block, dtype="i64")
            q, kpast, knew = _slot_grid(graph, past, new)
            kpast = graph.op("unsqueeze", graph.op("unsqueeze", kpast, dim=1), dim=1)   # [b, 1, 1, L]

            def keep(kslot):     # query block - key block < local, or a global key block
                qb = graph.op("floor_divide", q, b)
                kb = graph.op("floor_divide", kslot, b)
                return graph.op("logical_or", graph.op("lt", graph.op("sub", qb, kb),
                                                       graph.op("constant", value=self.local, dtype="i64")),
                                graph.op("lt", kb, graph.op("constant", value=self.globals, dtype="i64")))
            band = graph.op("concat", keep(kpast), keep(knew), dim=3)
            new_mask = graph.op("logical_and", mask, band)
            own_masks = {}   # a model's own window, by position too (canonicalize placed it by index)
            for w in sorted({own_window(n) for n in targets if own_window(n)}):
                own_masks[w] = graph.op("logical_and", new_mask, _band_keep(graph, q, kpast, knew, *w))
        graph.rename(new_mask, graph.fresh_name(BLOCK_SPARSE_MASK))
        for (w, s), m in own_masks.items():
            graph.rename(m, graph.fresh_name(f"{BLOCK_SPARSE_MASK}_window{w}" + (f"_sinks{s}" if s else "")))
        for n in targets:
            own = own_window(n)
            n.set_input(3, own_masks[own] if own else new_mask)
            if own:
                n.attrs = {**n.attrs, "window": 0, "sinks": 0}
        return PassResult(True, {"attention": len(targets), "own_windows": sum(1 for n in targets if own_window(n)),
                                 "other_attention": len(attns) - len(targets)})

    def _check_options(self):
        where = f"sparsify-attention{{kind={self.kind},window={self.window},sinks={self.sinks}}}"
        if self.kind not in KINDS:
            raise PassError(f"{where}: unknown kind {self.kind!r}; valid kinds: {', '.join(KINDS)}")
        if self.window < 1:
            raise PassError(f"{where}: window must be >= 1 (the keys before each query it keeps)")
        if not 0 <= self.sinks <= self.window:
            raise PassError(f"{where}: sinks must be in 0..window ({self.window}); StreamingLLM uses 4")
        if self.context and self.window + self.sinks >= self.context:
            raise PassError(f"{where}: window + sinks = {self.window + self.sinks} >= the model's context limit "
                            f"{self.context}: every position would be kept; use a window below "
                            f"{self.context - self.sinks} or leave full attention")


# kind=block_sparse changes attention by its mask alone (no op of its own): the masks it builds carry this name,
# which later passes and the exporters read (reads_block_sparse_mask)
BLOCK_SPARSE_MASK = "block_sparse_mask"


def reads_block_sparse_mask(node) -> bool:
    """Whether attention `node`'s mask derives from a mask kind=block_sparse built."""
    if node.op != "attention" or len(node.inputs) < 4:
        return False
    seen, stack = set(), [node.inputs[3]]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if v.name.startswith(BLOCK_SPARSE_MASK):
            return True
        if v.producer is not None:
            stack += v.producer.inputs
    return False


NO_COMBINATION = ("sparsify-attention and linearize-attention do not combine, in either order: use one of them "
                  "(linearize-attention{window=W,sinks=S} keeps a softmax window with sinks of its own)")


def kv_attention(graph, where: str):
    """(every attention node, [(node, key state, value state)] for those reading `append` KV states); a
    PassError naming `where` and the attention count when there are none."""
    attns = [n for n in graph.nodes if n.op == "attention"]
    targets = []
    for node in attns:
        k_state, v_state = _state_behind(graph, node.inputs[1]), _state_behind(graph, node.inputs[2])
        if k_state is not None and v_state is not None:
            targets.append((node, k_state, v_state))
    if not targets:
        already = sum(1 for n in attns if n.attrs.get("window") or _over_ring(n.inputs[1]))
        softmaxes = sum(1 for n in graph.nodes if n.op == "softmax")
        raise PassError(
            f"{where}: graph @{graph.name} has {len(attns)} attention op(s), "
            f"{'of which ' + str(already) + ' already windowed, and ' if already else ''}none "
            f"reads its keys and values from an `append` KV state; the pass needs a causal LM exported with "
            f"declared state (slimgraph.optimize(transformers_model, ...) or frontends.hf.export_causal_lm)"
            + (f"; its {softmaxes} softmax op(s) are not recognized as attention by canonicalize (SDPA and the plain "
               f"eager chain are, soft-capped and ALiBi-biased too; learned per-head sink logits concatenated to the "
               f"scores, e.g. gpt-oss's, are not)"
               if softmaxes and not attns else ""))
    return attns, targets


def bool_decoder_masks(graph, nodes) -> int:
    """Eager attention's additive form of the decoder's mask -> the bool mask itself, on `nodes`.

    HF's eager layers (frontends/hf.py hands them 0 / dtype-min) reach canonicalize's `attention` as
    where(~%attention_mask, min, 0) (the model's own window, if any, is already the op's `window`). With a
    dtype-min bias a masked key's weight is exp(min + score - max) = 0, as with a False entry (the decoder
    gives every query at least itself), so the bool input replaces it and the rewrites that map the decoder's
    mask onto their keys take eager models too. Other masks are left as they are. Returns how many changed."""
    changed = 0
    for node in nodes:
        if len(node.inputs) <= 3:
            continue
        m = node.inputs[3]
        w = m.producer
        if w is None or w.op != "where" or m.type.dtype not in ("f32", "f16", "bf16"):
            continue
        cond, bias, zero = w.inputs
        neg = cond.producer
        if neg is None or neg.op not in ("bitwise_not", "logical_not"):
            continue
        src = neg.inputs[0]
        if src.producer is not None or src.name != MASK_INPUT or src.type.dtype != "bool":
            continue
        low = _scalar(bias)
        if low is None or low > _FLOAT_MIN[m.type.dtype] / 2 or _scalar(zero) != 0:
            continue
        node.set_input(3, src)
        changed += 1
        for dead in (w, neg, bias.producer, zero.producer):
            if dead is not None and dead in graph.nodes and all(o.unused for o in dead.outputs):
                graph.erase(dead)
    return changed


_FLOAT_MIN = {"f32": -3.4028234663852886e+38, "f16": -65504.0, "bf16": -3.3895313892515355e+38}


def _scalar(v):
    """The value of a `constant` scalar or of a `full` tensor, else None."""
    node = v.producer
    if node is not None and node.op in ("constant", "full") and not isinstance(node.attrs.get("value"), (list, bool)):
        return node.attrs.get("value")
    return None


def _over_ring(v) -> bool:
    """`v` (through a GQA repeat_kv) is the cache_append output that a `cache_window` slides: a ring's keys."""
    while v.producer is not None and v.producer.op in _REPEAT_OPS:
        v = v.producer.inputs[0]
    return v.producer is not None and v.producer.op == "cache_append" and any(u.op == "cache_window" for u in v.users)


def _state_behind(graph, v):
    """The `append` state whose cache_append output `v` is (through a GQA repeat_kv), or None."""
    while v.producer is not None and v.producer.op in _REPEAT_OPS:
        v = v.producer.inputs[0]
    node = v.producer
    if node is None or node.op != "cache_append":
        return None
    st = graph.state_of(v)
    if st is None or st.kind != "append" or st.input is not node.inputs[0]:
        return None
    return st


def decoder_mask(graph, nodes, where: str):
    """The decoder's mask input %attention_mask [b, 1, s, L + s] that every masked node in `nodes` reads, with
    its last dim rebound to a fresh symbol `ctx` (after a rewrite it no longer equals past + seq, so every
    target binds it from the call). Returns (mask, seq, ctx, first reader) or None when no node is masked;
    a PassError naming `where` when the masks are not that input."""
    masked = [n for n in nodes if len(n.inputs) > 3]
    if not masked:
        return None
    mask = masked[0].inputs[3]
    if any(n.inputs[3] is not mask for n in masked) or mask.producer is not None or mask.name != MASK_INPUT:
        raise PassError(f"{where}: the attention masks are not the graph input %{MASK_INPUT} "
                        f"(the causal-LM convention, ir/causal_lm.py); found "
                        f"{sorted({n.inputs[3].name for n in masked})}")
    t = mask.type
    seq = masked[0].inputs[0].type.shape[-2]
    if t.rank != 4 or t.dtype != "bool" or not symbolic.equal(t.shape[2], seq):
        raise PassError(f"{where}: %{MASK_INPUT} is {t}; the causal-LM convention is bool [b, 1, seq, L + seq]")
    used = set().union(*(symbolic.free_symbols(d) for v in graph.inputs for d in v.type.shape))
    ctx = next(c for c in ("ctx", "ctx_len", "mask_len") if c not in used)
    mask.type = TensorType(t.dtype, (*t.shape[:3], ctx))
    return mask, seq, ctx, next(n for n in graph.nodes if any(i is mask for i in n.inputs))


def slots(graph, seq, ctx, where: str):
    """The cache slots of the decoder's keys and queries, by position: (past [L] = 0 .. L - 1, new [b, s]), with
    L = ctx - seq the past columns of %attention_mask [b, 1, seq, ctx].

    A new token's slot is L + (its position_ids entry - the call's first one): L + i for a chain (a decode
    step, a chain verify), L + depth for a candidate tree (slimgraph/decoder.py verify(): node i's position is
    the next position + its depth, its first node is a root), i.e. the slot it has on its own path. A prefill
    (L = 0) counts by index, L + i: its pads share a position, and the ring keeps its first slots as the
    sinks (the decoder lays a padded prompt out with each row's first `sinks` tokens there, its pads after
    them; a candidate tree on an empty cache is refused by the decoder). Windows, sinks and blocks compare
    these slots (blocks minus each row's pads, `row_pads`), so a tree candidate sees what the same tokens
    decoded as a chain would see."""
    length, depth = call_depth(graph, seq, ctx, where)
    return graph.op("arange", end=symbolic.canon(f"{ctx}-({seq})")), graph.op("add", length, depth)


def call_depth(graph, seq, ctx, where: str):
    """(L [1], depth [b, s]): the past columns' count and each new token's slot minus L (`slots`): its
    position_ids entry minus the call's first one, or its index in a prefill (L = 0)."""
    pos = next((v for v in graph.inputs if v.name == "position_ids"), None)
    if pos is None or pos.type.rank != 2:
        raise PassError(f"{where}: graph @{graph.name} has no input %position_ids [b, seq] (the causal-LM "
                        f"convention, ir/causal_lm.py); windows and blocks are placed by position")
    past_len = symbolic.canon(f"{ctx}-({seq})")
    length = graph.op("slice", graph.op("arange", start=past_len, end=ctx), dim=0, start=0, end=1)   # [1]: L
    pos = pos if pos.type.dtype == "i64" else graph.op("cast", pos, dtype="i64")
    depth = graph.op("sub", pos, graph.op("slice", pos, dim=1, start=0, end=1))
    prefill = graph.op("eq", length, graph.op("constant", value=0, dtype="i64"))
    return length, graph.op("where", prefill, graph.op("arange", end=seq), depth)


def row_pads(graph, new, seq, where: str):
    """[b, 1]: each row's cache slots before its first token (a left-padded prompt's pads): the slot of the
    call's last new token (`slots`; never a pad) minus its position id (positions count real tokens only)."""
    pos = next((v for v in graph.inputs if v.name == "position_ids"), None)
    if pos is None or pos.type.rank != 2:
        raise PassError(f"{where}: graph @{graph.name} has no input %position_ids [b, seq] (the causal-LM "
                        f"convention, ir/causal_lm.py); blocks are placed by position")
    pos = pos if pos.type.dtype == "i64" else graph.op("cast", pos, dtype="i64")
    last = symbolic.canon(f"({seq})-1")
    return graph.op("sub", graph.op("slice", new, dim=1, start=last, end=seq),
                    graph.op("slice", pos, dim=1, start=last, end=seq))


def own_window(node):
    """(window, sinks) of a model's own sliding window on an attention node (canonicalize makes HF's Mistral /
    Gemma 2/3 local / Qwen2 windowed layers `attention{window}`, placed by index), or None."""
    w = node.attrs.get("window") or 0
    return (w, node.attrs.get("sinks") or 0) if w else None


def _slot_grid(graph, past, new):
    """The query slots [b, 1, s, 1] and the key slots of the past rows [L'] and of the new keys [b, 1, 1, s]
    (`slots`; `past` maybe through a ring's cache_window), shaped to broadcast against [b, 1, s, L' + s]."""
    return (graph.op("unsqueeze", graph.op("unsqueeze", new, dim=1), dim=3), past,
            graph.op("unsqueeze", graph.op("unsqueeze", new, dim=1), dim=2))


def _band_keep(graph, q, kpast, knew, window, sinks):
    """bool [b, 1, s, L' + s]: key slot k is a sink (k < sinks) or at most `window` slots before the query's
    slot; keys after it are kept (causality is the mask's job)."""
    lo = graph.op("sub", q, graph.op("constant", value=window, dtype="i64"))

    def keep(k):
        near = graph.op("ge", k, lo)
        return graph.op("logical_or", near, graph.op("lt", k, graph.op("constant", value=sinks, dtype="i64"))) \
            if sinks else near
    return graph.op("concat", keep(kpast), keep(knew), dim=3)


def position_band(graph, seq, ctx, window, sinks, where: str, ring=None):
    """bool [b, 1, seq, min(L, W + S) + seq] over a ring{W, S}'s rows (`ring` = (W, S); default (window,
    sinks)) and the new keys: key slot j is a sink (j < sinks) or at most `window` slots before the query's
    slot (`slots`); keys after it are kept (causality is the mask's job). The StreamingLLM rule of
    `attention{window, sinks}` (ir/opset/nn.py), by position instead of by index. The ring rows' slots are
    the past slots through the ring's own `cache_window`, so the rule costs O(W + S) per query, not O(L)."""
    rw, rs = ring or (window, sinks)
    past, new = slots(graph, seq, ctx, where)
    past = graph.op("cache_window", past, axis=0, window=rw, sinks=rs)
    return _band_keep(graph, *_slot_grid(graph, past, new), window, sinks)


def _ring_mask(graph, nodes, window, sinks):
    """The decoder's mask [b, 1, s, L + s] -> the mask over the ring's rows + the new keys (module docstring)."""
    masked = [n for n in nodes if len(n.inputs) > 3]
    mask = masked[0].inputs[3] if masked else None
    others = [u for u in mask.users if u.op != "attention" or u not in nodes] if mask is not None else []
    if others:
        raise PassError(f"sparsify-attention: %{MASK_INPUT} is also read by {others[0]!r}; the pass rewrites "
                        f"only the masks of attention ops over the KV cache")
    found = decoder_mask(graph, nodes, "sparsify-attention")
    if found is None:
        return None
    mask, seq, ctx, first = found
    past = symbolic.canon(f"{ctx}-({seq})")
    with graph.inserting_before(first):
        old = graph.op("slice", mask, dim=3, start=0, end=past)
        new = graph.op("slice", mask, dim=3, start=past)
        kept = graph.op("concat", graph.op("cache_window", old, axis=3, window=window, sinks=sinks), new, dim=3)
    graph.rename(kept, graph.fresh_name("ring_mask"))
    return kept


def _windowed_masks(graph, nodes, window, sinks):
    """{masked node: its mask over the ring's rows + the new keys}: the decoder's mask through the ring
    (`_ring_mask`) and-ed with the sliding window + sinks by position (`position_band`), and for a node with
    the model's own window (`own_window`) with that window too, by position (one mask per distinct window;
    a window of at most `window` keys and no sinks lies inside the ring's band, which it then replaces)."""
    kept = _ring_mask(graph, nodes, window, sinks)
    if kept is None:
        return {}
    mask = next(v for v in graph.inputs if v.name == MASK_INPUT)
    seq, ctx = mask.type.shape[2:]
    with graph.inserting_after(kept.producer):
        past, new = slots(graph, seq, ctx, "sparsify-attention")
        grid = _slot_grid(graph, graph.op("cache_window", past, axis=0, window=window, sinks=sinks), new)
        ring = graph.op("logical_and", kept, _band_keep(graph, *grid, window, sinks))
        by_window = {}
        owns = sorted({own_window(n) for n in nodes if len(n.inputs) > 3 and own_window(n)})
        if owns and sinks:   # the decoder puts a padded row's pads after its sinks: compare positions
            grid = _sink_layout_positions(graph, grid, new, seq, sinks)
        for w, s in owns:
            inside = s == 0 and w <= window
            by_window[(w, s)] = graph.op("logical_and", kept if inside else ring, _band_keep(graph, *grid, w, s))
    graph.rename(kept, graph.fresh_name("ring_mask_cols"))
    graph.rename(ring, graph.fresh_name("ring_mask"))
    for (w, s), m in by_window.items():
        graph.rename(m, graph.fresh_name(f"ring_mask_window{w}" + (f"_sinks{s}" if s else "")))
    return {n: by_window[own_window(n)] if own_window(n) else ring for n in nodes if len(n.inputs) > 3}


def _sink_layout_positions(graph, grid, new, seq, sinks):
    """The slot grid (`_slot_grid`) as positions under the decoder's sink layout (ir/causal_lm.py
    `sinks_first`: a padded row's first `sinks` tokens, then its pads, then the rest): a slot below `sinks` is
    its own position, a later one is the slot minus the row's pads (`row_pads`). Slot differences past the sinks
    are position differences already; a distance to a sink is not, and a model's own window measures it."""
    pads = row_pads(graph, new, seq, "sparsify-attention")
    pads = graph.op("unsqueeze", graph.op("unsqueeze", pads, dim=2), dim=3)          # [b, 1, 1, 1]
    first = graph.op("constant", value=sinks, dtype="i64")
    return tuple(graph.op("where", graph.op("ge", x, first), graph.op("sub", x, pads), x) for x in grid)


def _to_ring(graph, st, window, sinks):
    """present = cache_append(past, new)  ->  present = cache_window(cache_append(past, new)); kind ring."""
    appended = st.output
    name = appended.name
    with graph.inserting_after(appended.producer):
        ring = graph.op("cache_window", appended, axis=st.axis, window=window, sinks=sinks)
    graph.outputs = [ring if o is appended else o for o in graph.outputs]
    graph.rename(appended, graph.fresh_name(name + "_all"))
    graph.rename(ring, name)
    graph.states[graph.states.index(st)] = type(st)(st.name, st.input, ring, "ring",
                                                    {"axis": st.axis, "window": window, "sinks": sinks})
