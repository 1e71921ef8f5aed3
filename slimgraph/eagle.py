"""The EAGLE draft layer (passes/draft_heads.py, `kind=eagle`): its math, and the decode-time drafter.

EAGLE-1 (Li et al. 2024, arXiv:2401.15077): at position t the layer reads fc(concat(f_t, e(x_{t+1}))), the
base model's last hidden state f_t (the lm_head's input) and the embedding of the next token, and
predicts f_{t+1}; lm_head(f_{t+1}) gives the token after. Drafting feeds the predicted feature and the
drafted token back in, step by step.

    x = fc(concat(f, e))                                    # [.., 2d] -> [.., d]
    x = x + o(attn(rope(q(rms(x))), rope(k(rms(x))), v(rms(x))))  # causal (or tree) attention, RoPE
    x = x + down(silu(gate(rms(x))) * up(rms(x)))           # -> predicted feature [.., d]

The drafter keeps its own small KV cache over the *real* positions only (pairs of a base feature and
the token after it, appended after every verify with the accepted rows); drafted positions get
temporary K/V during one drafting round and are dropped after it, so nothing ever needs rolling back.
Each round costs one layer over the newly accepted rows plus one layer call per tree depth (all the
nodes of a depth at once, under a tree mask), and lm_head over the *draft vocabulary* (the frequent
tokens chosen by training, `draft_heads.eagle.vocab`; EAGLE-3 reduces its draft vocabulary likewise).
Everything here is torch (float32) outside the compiled graph: verification is by the base model alone,
so the drafter can only change the speed, never the output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .passes.draft_heads import EAGLE

PARAMS = ("fc.weight", "fc.bias", "ln1.weight", "q.weight", "k.weight", "v.weight", "o.weight", "ln2.weight",
          "gate.weight", "up.weight", "down.weight")
ROPE_THETA = 10000.0
EPS = 1e-6


def params(graph) -> dict[str, torch.Tensor]:
    """The layer's float weights from the graph (name without the `draft_heads.eagle.` prefix)."""
    return {n: graph.weights[EAGLE + n].tensor.float() for n in PARAMS}


def config(graph) -> tuple[int, int, int]:
    """(draft steps, attention heads, draft vocabulary size) as the pass (and training) stored them."""
    c = graph.weights[EAGLE + "config"].tensor
    return int(c[0]), int(c[1]), int(c[2])


def _rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def _rope(x, pos):
    """x [B, H, n, hd], pos [n] (or [B, n]) integer positions: rotate-half RoPE."""
    hd = x.shape[-1]
    inv = 1.0 / (ROPE_THETA ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = pos.to(torch.float32)[..., None] * inv                    # [.., n, hd/2]
    cos, sin = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    half = hd // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), -1)
    return x * cos + rot * sin


def fuse(P, feats, emb):
    """fc(concat(f, e)): [.., d] x [.., d] -> [.., d]."""
    return F.linear(torch.cat((feats, emb), -1), P["fc.weight"], P["fc.bias"])


def layer(P, heads: int, x, pos, mask=None, past=None):
    """One decoder layer. x [B, n, d]; pos [n] positions; mask bool [B|1, 1, n, L + n] (True = may attend;
    None = causal, only without `past`); past (K, V) [B, H, L, hd] of earlier positions.
    Returns (out [B, n, d], k, v) with this call's rotated keys and values [B, H, n, hd]."""
    B, n, d = x.shape
    hd = d // heads
    y = _rms(x, P["ln1.weight"])
    q, k, v = (F.linear(y, P[w]).view(B, n, heads, hd).transpose(1, 2) for w in ("q.weight", "k.weight", "v.weight"))
    q, k = _rope(q, pos), _rope(k, pos)
    K, V = (k, v) if past is None else (torch.cat((past[0], k), 2), torch.cat((past[1], v), 2))
    if mask is None and past is None:
        a = F.scaled_dot_product_attention(q, K, V, is_causal=True)
    else:
        a = F.scaled_dot_product_attention(q, K, V, attn_mask=mask)
    x = x + F.linear(a.transpose(1, 2).reshape(B, n, d), P["o.weight"])
    y = _rms(x, P["ln2.weight"])
    x = x + F.linear(F.silu(F.linear(y, P["gate.weight"])) * F.linear(y, P["up.weight"]), P["down.weight"])
    return x, k, v


def embedding_table(graph) -> torch.Tensor:
    """The model's token embedding [vocab, d] (float): the lookup op reading `input_ids` (`embedding`, or a
    quantized table's lookup, e.g. a tied int8 head's) run on every token id, its other inputs being weights."""
    from .draft import DraftTrainingError, _const
    from .ir.registry import get_op
    ids = next((v for v in graph.inputs if v.name == "input_ids"), None)
    outs = {v.name: v for v in graph.outputs}
    vocab = int(outs["logits"].type.shape[-1])
    for node in ([] if ids is None else ids.users):
        try:
            args = [torch.arange(vocab)[None] if x is ids else _const(x) for x in node.inputs]
        except DraftTrainingError:
            continue
        out = get_op(node.op).run(*args, **node.attrs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if out.dim() == 3 and out.shape[:2] == (1, vocab):
            return out[0].float()
    raise DraftTrainingError(f"EAGLE heads need the token embedding: graph @{graph.name} has no lookup op "
                             f"reading input_ids whose other inputs are weights")


class EagleDrafter:
    """Decode-time EAGLE drafting for one sequence (batch 1) of a graph with `kind=eagle` heads."""

    def __init__(self, graph):
        from .draft import lm_head_matrix
        self.P = params(graph)
        self.steps, self.heads, nv = config(graph)
        self.embed = embedding_table(graph)
        w, b = lm_head_matrix(graph)
        self.vocab_ids = graph.weights[EAGLE + "vocab"].tensor.long()[:nv]
        self.vocab = w.shape[0]
        self.W = w[self.vocab_ids].contiguous()                 # [V', d] lm_head rows of the draft vocabulary
        self.b = None if b is None else b[self.vocab_ids]
        d = self.W.shape[1]
        self.hd = d // self.heads
        self.reset()

    def reset(self):
        self.k = torch.zeros(1, self.heads, 0, self.hd)
        self.v = torch.zeros(1, self.heads, 0, self.hd)
        self.last = None            # the predicted feature after the last real position [d]

    @property
    def length(self) -> int:
        return self.k.shape[2]

    def extend(self, feats: torch.Tensor, next_tokens) -> None:
        """Append real positions: base features [n, d] and the token after each ([n] ids)."""
        n, L = feats.shape[0], self.length
        ids = torch.as_tensor(next_tokens, dtype=torch.long)
        x = fuse(self.P, feats.float(), self.embed[ids])[None]
        mask = torch.ones(n, L + n, dtype=torch.bool)
        mask[:, L:] = torch.ones(n, n, dtype=torch.bool).tril()
        out, k, v = layer(self.P, self.heads, x, torch.arange(L, L + n), mask[None, None], (self.k, self.v))
        self.k, self.v = torch.cat((self.k, k), 2), torch.cat((self.v, v), 2)
        self.last = out[0, -1]

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits [m, V'] of predicted features [m, d]."""
        return F.linear(feats, self.W, self.b)

    def full_probs(self, logits: torch.Tensor, warp) -> torch.Tensor:
        """Probabilities over the whole vocabulary [m, vocab] (0 outside the draft vocabulary)."""
        full = torch.full((logits.shape[0], self.vocab), float("-inf"))
        full[:, self.vocab_ids] = logits
        return warp(full)

    def draft_tree(self, tree) -> list[int]:
        """Greedy drafting of a candidate tree (slimgraph.speculative.Tree): the token of every node but the
        root, in tree order; node (r1, .., rd) is the r_d-th best token after the drafted path (r1, .., r_{d-1})."""
        n = len(tree.paths)
        children = [[] for _ in range(n)]
        for i in range(1, n):
            children[tree.parent[i]].append(i)
        tokens = [None] * n
        feats = {0: self.last}
        L = self.length
        dk, dv, dnodes = self.k, self.v, []         # real cache + drafted nodes' K/V (in `dnodes` order)
        level = [0]
        while level:
            expand = [i for i in level if children[i]]
            if not expand:
                break
            lg = self.logits(torch.stack([feats[i] for i in expand]))
            need = max(tree.paths[c][-1] for i in expand for c in children[i]) + 1
            top = lg.topk(min(need, lg.shape[-1]), -1).indices
            nxt = []
            for row, i in enumerate(expand):
                for c in children[i]:
                    tokens[c] = int(self.vocab_ids[top[row, tree.paths[c][-1]]])
                    nxt.append(c)
            # the next level's features: one layer call over the nodes that have children
            grow = [c for c in nxt if children[c]]
            if grow:
                x = fuse(self.P, torch.stack([feats[tree.parent[c]] for c in grow]),
                         self.embed[torch.tensor([tokens[c] for c in grow])])[None]
                m = len(grow)
                mask = torch.zeros(m, L + len(dnodes) + m, dtype=torch.bool)
                mask[:, :L] = True
                for r, c in enumerate(grow):
                    for j, dn in enumerate(dnodes):
                        mask[r, L + j] = bool(tree.mask[c, dn])
                    mask[r, L + len(dnodes) + r] = True
                pos = torch.tensor([L + len(tree.paths[c]) - 1 for c in grow])
                out, k, v = layer(self.P, self.heads, x, pos, mask[None, None], (dk, dv))
                dk, dv = torch.cat((dk, k), 2), torch.cat((dv, v), 2)
                dnodes += grow
                for r, c in enumerate(grow):
                    feats[c] = out[0, r]
            level = grow
        return [int(t) for t in tokens[1:]]

    def sample_chain(self, depth: int, warp, generator=None):
        """Sampled drafting of a chain: (tokens [depth], q [depth, vocab]) where token j ~ q_j, the draft
        distribution after the drafted tokens before it (warped like the target: temperature, top-k)."""
        f, L = self.last, self.length
        dk, dv = self.k, self.v
        toks, qs = [], []
        for j in range(depth):
            q = self.full_probs(self.logits(f[None]), warp)[0]
            t = int(torch.multinomial(q, 1, generator=generator))
            toks.append(t)
            qs.append(q)
            if j + 1 < depth:
                x = fuse(self.P, f[None], self.embed[t][None])[None]
                mask = torch.ones(1, 1, 1, dk.shape[2] + 1, dtype=torch.bool)
                out, k, v = layer(self.P, self.heads, x, torch.tensor([L + j]), mask, (dk, dv))
                dk, dv = torch.cat((dk, k), 2), torch.cat((dv, v), 2)
                f = out[0, 0]
        return toks, torch.stack(qs) if qs else torch.zeros(0, self.vocab)
