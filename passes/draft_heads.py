"""insert-draft-heads{num_heads=K,kind=medusa}: K draft heads on a causal LM's last hidden state.

Medusa-1 (Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration Framework with Multiple Decoding
Heads", arXiv:2401.10774): head i is a residual SiLU block on the last hidden state h (the input of the
lm_head), feeding the model's own lm_head:

    %d_i = add(%h, silu(linear(%h, @draft_heads.<i>.weight)))           # W_i [hidden, hidden], zeros
    %draft_logits = lm_head(stack(%d_0..%d_{K-1}))                       # ONE lm_head call for all heads
    %draft_logits_0 .. %draft_logits_{K-1}: [batch, seq, vocab]          # extra graph outputs

W_i starts at zero, so an untrained head predicts what the base model predicts at the same position
(as Medusa initialises it); `slimgraph.train_draft_heads` trains it (head i at position t predicts the
token at t + i + 2: head 0 guesses the token after the next one). The heads' hidden states are stacked
on a new axis before the lm_head, so the (large) lm_head weight is read once for all heads; the base
model's `logits` node is not touched. The last hidden state is also exposed as the output
`hidden_states` [batch, seq, hidden] (training uses it). Weights `draft_heads.*` stay float:
quantize-weights skips them by default.

`kind=eagle` (EAGLE-1, Li et al. 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature
Uncertainty", arXiv:2401.15077): ONE fresh decoder layer of the model's own layer shape (RMSNorm,
multi-head attention with RoPE, RMSNorm, SiLU-gated MLP of the model's MLP width) over
fc(concat(h_t, embed(x_{t+1}))) predicts the next last-hidden-state h_{t+1}; the model's own lm_head turns
it into a draft token, whose embedding feeds the next step (autoregressive drafting, `num_heads` steps
by default). The pass adds the layer's weights `draft_heads.eagle.*` (float, seeded init) and the output
`hidden_states`; the drafting loop runs at decode time (slimgraph/eagle.py, with its own small KV
cache), since each step needs the previous step's token. `dce` keeps `draft_heads.*` weights (the
runtime reads them outside the graph's nodes).

Head kinds live in HEAD_KINDS (name -> inserter); errors name the pass and the valid choices.
"""
from __future__ import annotations
from typing import Callable

import torch

from ..ir.causal_lm import INPUTS as CAUSAL_LM_INPUTS, is_causal_lm
from ..ir.dtypes import to_torch
from .base import Pass, PassError, PassResult, register_pass

MAX_HEADS = 8
LM_HEAD_OPS = ("linear", "qlinear")


def medusa_head(graph, h, i: int):
    """Medusa-1 residual block: h + silu(linear(h, W_i)), W_i zero [hidden, hidden]."""
    d = h.type.shape[-1]
    w = graph.add_weight(f"draft_heads.{i}.weight", torch.zeros(d, d, dtype=to_torch(h.type.dtype)))
    return graph.op("add", h, graph.op("silu", graph.op("linear", h, w)))


def insert_medusa(graph, h, head, num_heads: int) -> list:
    """K Medusa heads -> outputs draft_logits_0..K-1 (one stacked lm_head call)."""
    with graph.inserting_after(head):
        hs = [graph.op("unsqueeze", medusa_head(graph, h, i), dim=2) for i in range(num_heads)]
        stacked = hs[0] if len(hs) == 1 else graph.op("concat", *hs, dim=2)      # [b, s, K, hidden]
        logits = graph.add_node(head.op, [stacked, *head.inputs[1:]], head.attrs).output   # [b, s, K, vocab]
        parts = ([logits] if num_heads == 1 else
                 list(graph.add_node("split", [logits], {"dim": 2, "sizes": [1] * num_heads}).outputs))
        names = [f"draft_logits_{i}" for i in range(num_heads)]
        return [graph.add_node("squeeze", [p], {"dims": [2]}, names=[n]).output for p, n in zip(parts, names)]


EAGLE = "draft_heads.eagle."
EAGLE_HEAD_DIM = 64


def eagle_shapes(graph, hidden: int) -> dict:
    """The EAGLE layer's shape: the model's own MLP width (read off layer 0's gate/up projection, float or
    packed) or 4 x hidden, attention heads of EAGLE_HEAD_DIM (one head when hidden is smaller)."""
    ffn = 4 * hidden
    for name, w in graph.weights.items():
        if ".layers.0.mlp." in name and ("gate_proj" in name or "up_proj" in name or "fc1" in name) \
                and w.type.rank == 2 and not name.endswith((".scales", ".zeros")):
            ffn = int(w.type.shape[0])
            # gate and up as one matrix [2 x ffn, d]: merged by merge-sibling-linears, or Phi-3's own gate_up_proj
            if "gate_up_proj" in name or ("gate_proj" in name and ".merged" in name):
                ffn //= 2
            break
    heads = max(1, hidden // EAGLE_HEAD_DIM)
    if hidden % heads:
        heads = 1
    return {"ffn": ffn, "heads": heads}


def insert_eagle(graph, h, head, num_heads: int) -> list:
    """EAGLE-1 draft layer weights (fresh, seeded): fc [d, 2d] + bias, ln1, q/k/v/o [d, d], ln2, gate/up
    [ffn, d], down [d, ffn]; `draft_heads.eagle.vocab` i64[vocab] (token ids, the draft vocabulary first)
    and `draft_heads.eagle.config` i64[3] = (draft steps, attention heads, draft vocabulary size V: the
    drafter's lm_head reads rows vocab[:V]; all tokens until training picks the frequent ones)."""
    d = int(h.type.shape[-1])
    vocab = int(head.output.type.shape[-1])
    dt = to_torch(h.type.dtype)
    shp = eagle_shapes(graph, d)
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(dt)
    fc = torch.cat((torch.eye(d), torch.zeros(d, d)), 1) + torch.randn(d, 2 * d, generator=g) * 0.02
    tensors = {"fc.weight": fc.to(dt), "fc.bias": torch.zeros(d, dtype=dt), "ln1.weight": torch.ones(d, dtype=dt),
               "q.weight": rnd(d, d), "k.weight": rnd(d, d), "v.weight": rnd(d, d), "o.weight": rnd(d, d),
               "ln2.weight": torch.ones(d, dtype=dt), "gate.weight": rnd(shp["ffn"], d),
               "up.weight": rnd(shp["ffn"], d), "down.weight": rnd(d, shp["ffn"]),
               "vocab": torch.arange(vocab, dtype=torch.long),
               "config": torch.tensor([num_heads, shp["heads"], vocab], dtype=torch.long)}
    for name, t in tensors.items():
        graph.add_weight(EAGLE + name, t)
    return []


HEAD_KINDS: dict[str, Callable] = {"medusa": insert_medusa, "eagle": insert_eagle}


def register_head_kind(name: str, inserter: Callable) -> None:
    """inserter(graph, h, lm_head_node, num_heads) -> the new graph outputs (named), built after the lm_head;
    weights it adds must be named `draft_heads.*`."""
    if name in HEAD_KINDS:
        raise ValueError(f"draft head kind {name!r} is registered twice")
    HEAD_KINDS[name] = inserter


def head_kind(graph) -> str | None:
    """'medusa', 'eagle' or None: which draft heads the graph carries."""
    if draft_outputs(graph):
        return "medusa"
    if EAGLE + "config" in graph.weights:
        return "eagle"
    return None


def draft_outputs(graph) -> list:
    """The graph's draft-logit outputs in head order (empty when it has none)."""
    outs = {v.name: v for v in graph.outputs}
    return [outs[f"draft_logits_{i}"] for i in range(MAX_HEADS) if f"draft_logits_{i}" in outs]


@register_pass("insert-draft-heads")
class InsertDraftHeads(Pass):
    """Add K draft heads (outputs draft_logits_0..K-1) on the input of the `logits` output's lm_head."""
    num_heads: int = 4
    kind: str = "medusa"

    def run(self, graph) -> PassResult:
        who = "insert-draft-heads"
        if not 1 <= self.num_heads <= MAX_HEADS:
            raise PassError(f"{who}: num_heads={self.num_heads} is out of range; use 1..{MAX_HEADS}")
        if self.kind not in HEAD_KINDS:
            raise PassError(f"{who}: unknown head kind {self.kind!r}; valid kinds: {', '.join(sorted(HEAD_KINDS))}")
        outs = {v.name: v for v in graph.outputs}
        if "logits" not in outs:
            raise PassError(f"{who}: graph @{graph.name} has no output named 'logits' (outputs: "
                            f"{[v.name for v in graph.outputs][:6]}); draft heads need a causal LM's logits")
        if not is_causal_lm(graph):
            raise PassError(f"{who}: graph @{graph.name} is not a causal LM with a KV cache (declared state and the "
                            f"inputs {', '.join(CAUSAL_LM_INPUTS)}); draft heads guess the next tokens of autoregressive "
                            f"decoding, which a masked LM or an encoder (e.g. BERT) does not do")
        if draft_outputs(graph) or any(n.startswith("draft_heads.") for n in graph.weights):
            raise PassError(f"{who}: graph @{graph.name} already has draft heads; insert them once")
        head = outs["logits"].producer
        if head is None or head.op not in LM_HEAD_OPS or head.inputs[0].type.rank != 3:
            got = "a graph input or weight" if head is None else f"{head.op}({head.inputs[0].type})"
            raise PassError(f"{who}: the 'logits' output must come from a linear/qlinear lm_head on a "
                            f"[batch, seq, hidden] state; it comes from {got}")
        h = head.inputs[0]
        new = list(HEAD_KINDS[self.kind](graph, h, head, self.num_heads))
        if "hidden_states" not in outs:
            new.append(h if h.name == "hidden_states" else _named_copy(graph, h, head))
        graph.set_outputs([*graph.outputs, *new])
        return PassResult(True, {"heads": self.num_heads, "kind": self.kind})


def _named_copy(graph, h, head):
    """Expose h as the output `hidden_states` by renaming it (values are referenced, not copied)."""
    if "hidden_states" not in graph._names and not h.is_weight and h.kind == "node":
        graph.rename(h, "hidden_states")
        return h
    raise PassError(f"insert-draft-heads: cannot expose %{h.name} as output 'hidden_states' (the name is taken)")
