"""linearize-attention: a causal LM's softmax attention -> linear attention with a learnable feature map,
optionally hybrid with a small sliding softmax window; decoding keeps a fixed-size state per layer.

    linearize-attention{feature_map=hedgehog,window=64}     # LoLCATs-style hybrid
    linearize-attention{feature_map=hedgehog,window=64,sinks=4}   # ... + the first 4 keys in the softmax part
    linearize-attention{feature_map=hedgehog,window=0}      # pure linear attention (Hedgehog)

Hedgehog (Zhang et al. 2024, "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax
Mimicry", arXiv:2402.04347): phi(x) = [softmax(x W), softmax(-x W)] per head, W initialized to the identity.
LoLCATs (Zhang et al. 2024, "LoLCATs: On Low-Rank Linearizing of Large Language Models", arXiv:2410.10254):
softmax scores over the last `window` keys and linear scores over older keys share one normalizer. The op
and its arithmetic: ir/opset/linear_attention.py. The feature maps start at the identity; train them with
`slimgraph.distill_attention` (slimgraph/linear_attention.py) so each layer's output matches softmax.

For every `attention(q, k, v, mask)` whose k and v are (GQA-repeated) `cache_append` outputs of declared
`append` states (as sparsify-attention finds them, passes/sparsify_attention.py), layer i:

    weight @linear_attention.<i>.wq: [hq, d, d] (identity), @linear_attention.<i>.wk: [hk, d, d],
           @linear_attention.<i>.wf: [hq] (zeros: the window's weight exp(0) = 1)
    input %past_kv_<i>: f32[batch, hk, f, dv], %past_z_<i>: f32[batch, hk, f]
    %out, %present_kv_<i>, %present_z_<i> = linear_attention(q, K, V, %past_kv_<i>, %past_z_<i>, @wq, @wk, @wf, mask)
    state kv_<i>: %past_kv_<i> -> %present_kv_<i> fixed
    state z_<i>: %past_z_<i> -> %present_z_<i> fixed

- window = W > 0 (hybrid): the key/value states become `ring{window=W, sinks=S}` (the first S and the last W
  keys: attention sinks as in StreamingLLM, arXiv:2309.17453, stay in the softmax part; K, V are
  the ring's rows + the new ones, and tokens leaving the window are folded into kv/z by the op); the mask
  maps onto the ring's columns as sparsify-attention does it (`ctx` symbol), and the op's `depth` input
  (sparsify_attention.call_depth) places each new token by position, so a tree candidate's softmax window
  is the one of its path decoded as a chain.
- window = 0 (pure): the key/value states and their inputs are removed (memory O(1) in T); K, V are the
  new tokens' keys and values, and the mask keeps its last `seq` columns.

Errors (PassError naming the pass): an unknown feature_map, window < 0, sinks without a window, window + sinks
>= the model's context limit
(`context`, filled from max_position_embeddings by slimgraph.optimize), a model's own sliding window
(Mistral, Gemma 2/3's local layers, Qwen2's windowed layers: canonicalize's `attention{window}` over an append
state; the error points to sparsify-attention, which keeps that window by position), attention already
windowed by sparsify-attention (over ring states), and a graph with no attention over an append KV state
(naming how many attention ops it has).
"""
from __future__ import annotations

import torch

from ..ir import symbolic
from ..ir.dtypes import to_torch
from ..ir.opset.linear_attention import FEATURE_MAPS, feature_dim
from ..ir.types import TensorType
from .base import Pass, PassError, PassResult, register_pass
from .sparsify_attention import (MASK_INPUT, NO_COMBINATION, _ring_mask, _to_ring, bool_decoder_masks, call_depth,
                                 decoder_mask, kv_attention, reads_block_sparse_mask)


@register_pass("linearize-attention")
class LinearizeAttention(Pass):
    """Softmax attention over an append KV cache -> (hybrid) linear attention over fixed (+ ring) states."""
    feature_map: str = "hedgehog"
    window: int = 64
    sinks: int = 0      # hybrid: the first `sinks` keys stay in the softmax part (attention sinks)
    context: int = 0    # the model's context limit (0: unknown, not checked); optimize() fills it

    def introduced_ops(self) -> tuple[str, ...]:
        return ("linear_attention", "cache_window") if self.window else ("linear_attention",)

    def run(self, graph) -> PassResult:
        where = f"linearize-attention{{feature_map={self.feature_map},window={self.window},sinks={self.sinks}}}"
        attns = [n for n in graph.nodes if n.op == "attention"]
        if self.feature_map not in FEATURE_MAPS:
            raise PassError(f"{where}: unknown feature_map {self.feature_map!r}; valid: {', '.join(FEATURE_MAPS)}")
        if self.window < 0:
            raise PassError(f"{where}: window must be >= 0 (0: pure linear attention)")
        if self.sinks < 0 or (self.sinks and not self.window):
            raise PassError(f"{where}: sinks must be >= 0, and 0 without a window (pure linear attention has no "
                            f"softmax part)")
        if self.context and self.window + self.sinks >= self.context:
            raise PassError(f"{where}: window {self.window} + sinks {self.sinks} >= the model's context limit "
                            f"{self.context}: every "
                            f"key would stay in the softmax window of its {len(attns)} attention op(s); use a "
                            f"window below {self.context - self.sinks}"
                            + (f" with {self.sinks} sinks" if self.sinks else "") + " (LoLCATs uses 64)")
        sparsified = [n for n in graph.nodes if n.op == "cache_window" or reads_block_sparse_mask(n)]
        if sparsified:
            raise PassError(f"{where}: graph @{graph.name} ran sparsify-attention (a "
                            f"{'KV ring' if sparsified[0].op == 'cache_window' else 'block-sparse mask'}): "
                            + NO_COMBINATION)
        _, targets = kv_attention(graph, where)
        bool_decoder_masks(graph, [n for n, _, _ in targets])    # eager attention's additive mask
        for node, _, _ in targets:
            if node.attrs.get("window") or node.attrs.get("sinks"):
                # over an `append` state this is the model's own sliding window (canonicalize: Mistral's
                # sliding_window, Gemma 2/3's local layers, Qwen2's use_sliding_window); sparsify-attention's
                # windows sit over ring states, which kv_attention does not return
                raise PassError(
                    f"{where}: {node!r} has the model's own sliding window (attention{{window="
                    f"{node.attrs.get('window')}}}: {sum(1 for n, _, _ in targets if n.attrs.get('window'))} of its "
                    f"{len(targets)} attention op(s)); linear attention would fold the keys that window drops "
                    f"into every later query, so linearize-attention takes full attention only. Such a layer reads "
                    f"only its last {node.attrs.get('window')} keys: bound its KV cache with sparsify-attention{{window=W,sinks=S}} instead (the "
                    f"model's window is kept, and-ed with the ring's: with W >= {node.attrs.get('window')} the "
                    f"windowed layers compute what they did), or linearize a model without its own window")
            if node.attrs.get("softcap"):
                raise PassError(f"{where}: {node!r} soft-caps its logits (softcap={node.attrs['softcap']}, Gemma 2's "
                                "attn_logit_softcapping); linear attention's feature maps cannot reproduce tanh-capped "
                                "scores, so linearize-attention takes uncapped attention only")
            if len(node.inputs) > 3 and node.inputs[3].type.dtype != "bool":
                raise PassError(f"{where}: {node!r} has a {node.inputs[3].type} mask; linear attention takes the "
                                f"causal-LM convention's bool %{MASK_INPUT} [b, 1, seq, L + seq]")
            if len(node.inputs) <= 3 and not node.attrs.get("causal"):
                raise PassError(f"{where}: {node!r} has neither a mask nor causal=true; linear attention is causal")
        mask = _ring_mask(graph, [n for n, _, _ in targets], self.window, self.sinks) if self.window else \
            _new_columns(graph, [n for n, _, _ in targets])
        depth = None
        if self.window and mask is not None:    # the softmax window by position: a tree candidate at its depth
            seq, ctx = next(v for v in graph.inputs if v.name == MASK_INPUT).type.shape[2:]
            with graph.inserting_before(mask.producer):
                _, depth = call_depth(graph, seq, ctx, where)
        batch = graph.inputs[0].type.shape[0]
        states = {}
        for i, (node, ks, vs) in enumerate(targets):
            states[id(ks)], states[id(vs)] = ks, vs
            k_all, v_all = ks.output, vs.output                         # ring rows + new (before the window)
            if not self.window:
                k_all, v_all = k_all.producer.inputs[1], v_all.producer.inputs[1]   # the new tokens' own
            q = node.inputs[0]
            hq, d = q.type.shape[1], q.type.shape[3]
            hk, dv = k_all.type.shape[1], v_all.type.shape[3]
            if not all(isinstance(x, int) for x in (hq, d, hk, dv)):
                raise PassError(f"{where}: {node!r}: heads and head dims must be static; got q {q.type}, "
                                f"k {k_all.type}, v {v_all.type}")
            f = feature_dim(self.feature_map, d)
            dt = to_torch(q.type.dtype)     # the model's dtype: a bf16 model's scores stay bf16
            eye = torch.eye(d, dtype=dt)
            wq = graph.add_weight(graph.fresh_name(f"linear_attention.{i}.wq"), eye.expand(hq, d, d).clone())
            wk = graph.add_weight(graph.fresh_name(f"linear_attention.{i}.wk"), eye.expand(hk, d, d).clone())
            wf = graph.add_weight(graph.fresh_name(f"linear_attention.{i}.wf"), torch.zeros(hq, dtype=dt))
            kv_in = graph.add_input(graph.fresh_name(f"past_kv_{i}"), TensorType(q.type.dtype, (batch, hk, f, dv)))
            z_in = graph.add_input(graph.fresh_name(f"past_z_{i}"), TensorType(q.type.dtype, (batch, hk, f)))
            scale = node.attrs.get("scale") or d ** -0.5
            with graph.inserting_before(node):
                out = graph.add_node("linear_attention", [q, k_all, v_all, kv_in, z_in, wq, wk, wf] +
                                     ([mask] if mask is not None else []) + ([depth] if depth is not None else []),
                                     {"feature_map": self.feature_map, "window": self.window, "sinks": self.sinks,
                                      "scale": scale},
                                     names=[node.output.name + "_linear", f"present_kv_{i}", f"present_z_{i}"])
            graph.replace_node(node, [out.outputs[0]])
            graph.outputs.extend(out.outputs[1:])
            graph.declare_state(f"kv_{i}", kv_in, out.outputs[1], "fixed")
            graph.declare_state(f"z_{i}", z_in, out.outputs[2], "fixed")
        for st in states.values():
            if self.window:
                _to_ring(graph, st, self.window, self.sinks)
            else:
                _drop_state(graph, st)
        return PassResult(True, {"attention": len(targets), "fixed_states": 2 * len(targets),
                                 "ring_states": len(states) if self.window else 0,
                                 "other_attention": len(attns) - len(targets)})


def _new_columns(graph, nodes):
    """Pure linear attention: the decoder's mask [b, 1, s, L + s] -> its last s columns (the new keys)."""
    found = decoder_mask(graph, nodes, "linearize-attention")
    if found is None:
        return None
    mask, seq, ctx, first = found
    with graph.inserting_before(first):
        new = graph.op("slice", mask, dim=3, start=symbolic.canon(f"{ctx}-({seq})"))
    graph.rename(new, graph.fresh_name("new_key_mask"))
    return new


def _drop_state(graph, st):
    """Remove an append state no op reads any more: its cache_append, graph output and graph input."""
    node = st.output.producer
    graph.outputs = [o for o in graph.outputs if o is not st.output]
    graph.states.remove(st)
    if st.output.unused:
        graph.erase(node)
    graph.remove_input(st.input)
