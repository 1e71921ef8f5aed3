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
Everything here is torch outside the compiled graph, float32 but for the matmuls (bf16 when drafting, by the
weights' dtype; by torch.autocast in training): verification is by the base model alone, so the drafter can
only change the speed, never the output.
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


def weights(P, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The layer's weights as `fuse` and `layer` read them, from `params`-style P: the matmuls' weights in
    `dtype` (q/k/v fused into one `qkv` matrix, gate/up into `gu`), the norms and the fc bias as given.
    Differentiable in P (training makes them every step under torch.autocast; the drafter once, in bf16)."""
    return {"fc": P["fc.weight"].to(dtype), "fc.bias": P["fc.bias"], "ln1": P["ln1.weight"],
            "qkv": torch.cat([P[n] for n in ("q.weight", "k.weight", "v.weight")]).to(dtype),
            "o": P["o.weight"].to(dtype), "ln2": P["ln2.weight"],
            "gu": torch.cat((P["gate.weight"], P["up.weight"])).to(dtype), "down": P["down.weight"].to(dtype)}


def _rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


_ROPE: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _rope_table(hd: int, n: int):
    """(cos, sin) [>= n, hd] of rotate-half RoPE for head size hd, grown by doubling and kept per hd."""
    cos, sin = _ROPE.get(hd, (torch.zeros(0, hd), None))
    if cos.shape[0] < n:
        n = max(n, 2 * cos.shape[0], 256)
        inv = 1.0 / (ROPE_THETA ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        ang = torch.arange(n, dtype=torch.float32)[:, None] * inv
        cos, sin = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)
        _ROPE[hd] = (cos, sin)
    return cos, sin


def _rotate(x, cos, sin):
    """Rotate-half RoPE of x [.., hd] by cos/sin tables broadcast to it."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def fuse(W, feats, emb):
    """fc(concat(f, e)): [.., d] x [.., d] -> [.., d] float32. W: `weights`."""
    return F.linear(torch.cat((feats, emb), -1).to(W["fc"].dtype), W["fc"]).float() + W["fc.bias"]


def layer(W, heads: int, x, pos, mask=None, past=None):
    """One decoder layer. W: `weights` (the matmuls run in its dtype, everything else in float32);
    x [B, n, d] float32; pos [n] integer positions; mask bool [B|1, 1, n, L + n] (True = may attend;
    None = causal, only without `past`); past (K, V) [B, H, L, hd] of earlier positions.
    Returns (out [B, n, d], k, v) with this call's rotated keys and values [B, H, n, hd]."""
    B, n, d = x.shape
    hd, dt = d // heads, W["qkv"].dtype
    y = _rms(x, W["ln1"])
    q, k, v = F.linear(y.to(dt), W["qkv"]).float().view(B, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
    cos, sin = _rope_table(hd, int(pos.max()) + 1)
    q, k = _rotate(q, cos[pos], sin[pos]), _rotate(k, cos[pos], sin[pos])
    K, V = (k, v) if past is None else (torch.cat((past[0], k), 2), torch.cat((past[1], v), 2))
    if mask is None and past is None:
        a = F.scaled_dot_product_attention(q, K, V, is_causal=True)
    else:
        a = F.scaled_dot_product_attention(q, K, V, attn_mask=mask)
    x = x + F.linear(a.transpose(1, 2).reshape(B, n, d).to(dt), W["o"]).float()
    g, u = F.linear(_rms(x, W["ln2"]).to(dt), W["gu"]).chunk(2, -1)
    return x + F.linear(F.silu(g) * u, W["down"]).float(), k, v


def unrolled(W, heads: int, feats, emb_next, depth: int) -> list:
    """Greedy chain drafting from every position at once, teacher forced on the drafted tokens (the tokens a
    chain must have drafted for the next one to count): the layer run `depth` times as decoding runs it.

    W: `weights`; feats [B, n, d]: the base's features f_0..f_{n-1}; emb_next [B, n, d]: embeddings of x_1..x_n (the token
    after each). Returns `depth` tensors [B, n, d]: entry j-1 at position p is the predicted feature after
    j - 1 drafted steps from the real context f_0..f_{p-j+1}, i.e. the prediction of f_{p+1} (whose lm_head
    argmax is the j-th drafted token, x_{p+2}). Step j's row p reads (step j-1's output at p - 1, x_{p+1})
    and attends to the real rows <= p - j + 1 and to its own chain's rows of steps 2..j (step k at
    p - j + k), as `EagleDrafter` lays them out; rows p < j - 1 have no real context and mean nothing."""
    B, n, d = feats.shape
    pos = torch.arange(n)
    outs, K, V = [], [], []
    x_feat = feats
    for j in range(1, depth + 1):
        x = fuse(W, x_feat, emb_next)
        if j == 1:
            o, k, v = layer(W, heads, x, pos)
        else:
            mask = torch.zeros(n, j * n, dtype=torch.bool)
            mask[:, :n] = pos[None, :] <= pos[:, None] - (j - 1)          # real rows
            for s in range(2, j + 1):                                    # step s's row of this chain
                src = pos - (j - s)
                ok = src >= 0
                mask[pos[ok], (s - 1) * n + src[ok]] = True
            o, k, v = layer(W, heads, x, pos, mask[None, None], (torch.cat(K, 2), torch.cat(V, 2)))
        K.append(k)
        V.append(v)
        outs.append(o)
        x_feat = F.pad(o, (0, 0, 1, 0))[:, :n]                           # step j's output at p - 1, read at p
    return outs


def chain_acceptance(outs, head, targets, first: int) -> list[float]:
    """Per depth j, the fraction of chains from real positions i >= `first` whose drafted tokens 1..j all
    equal the base's (cumulative acceptance; 1 + their sum is the expected tokens per verify of a greedy
    chain). outs: `unrolled`'s list; head: a function [.., d] -> logits [.., V']; targets i64[B, n] with
    targets[:, p] = the base's token x_{p+2} in the head's index for p <= n - 2 (-100: outside the head's
    vocabulary, never matched); chains are counted from the starts whose every target exists."""
    n = targets.shape[1]
    ok = []
    for j, o in enumerate(outs, 1):
        m = head(o).argmax(-1) == targets
        ok.append(F.pad(m, (0, j - 1), value=False)[:, j - 1:])             # aligned to the chain's start i
    ok = torch.stack(ok, -1).long().cumprod(-1)                             # [B, n, depth]
    starts = torch.arange(n)
    valid = (starts >= first) & (starts + len(outs) <= n - 1)               # every target of the chain exists
    if not bool(valid.any()):
        return [0.0] * len(outs)
    return ok[:, valid].float().mean((0, 1)).tolist()


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


def _static(graph) -> dict:
    """What drafting reads from the graph, made once per graph and set of EAGLE weights (dequantizing a
    quantized lm_head and embedding table takes ~1 s on SmolLM2): the layer's float weights, the embedding
    table, the lm_head rows of the draft vocabulary and the config. Cached on the graph, keyed by the
    identity of every weight's data and the version of the EAGLE tensors (training replaces them, and the
    cache with them)."""
    from .draft import lm_head_matrix
    # every weight's storage object (a replaced tensor, e.g. the base's embedding or lm_head, changes it; read
    # without loading a lazily stored weight), and the EAGLE tensors' versions (edited in place)
    key = (tuple(id(w._data) for w in graph.weights.values()),
           tuple(-1 if t.is_inference() else t._version     # inference tensors have no version
                 for t in (graph.weights[EAGLE + n].tensor for n in (*PARAMS, "vocab", "config"))))
    hit = graph.__dict__.get("_eagle_static")
    if hit is not None and hit[0] == key:
        return hit[1]
    steps, heads, nv = config(graph)
    w, b = lm_head_matrix(graph)
    vocab_ids = graph.weights[EAGLE + "vocab"].tensor.long()[:nv]
    st = {"P": params(graph), "steps": steps, "heads": heads, "embed": embedding_table(graph), "vocab": w.shape[0],
          "vocab_ids": vocab_ids, "W": w[vocab_ids].contiguous(), "b": None if b is None else b[vocab_ids]}
    graph.__dict__["_eagle_static"] = (key, st)
    return st


class EagleDrafter:
    """Decode-time EAGLE drafting for one sequence (batch 1) of a graph with `kind=eagle` heads.

    `dtype`: the precision of the drafting matmuls (default bf16: half the bytes of fp32, and 2x faster
    from 4 rows on CPUs with AMX/AVX512-BF16; a drafter's precision changes only which tokens it guesses,
    never the output). q/k/v and gate/up run as one matmul each."""

    def __init__(self, graph, dtype: torch.dtype = torch.bfloat16):
        st = _static(graph)
        self.P, self.steps, self.heads, self.embed = st["P"], st["steps"], st["heads"], st["embed"]
        self.vocab_ids, self.vocab, self.W, self.b = st["vocab_ids"], st["vocab"], st["W"], st["b"]
        self.hd = self.W.shape[1] // self.heads
        self.dtype = dtype
        self._w = weights(self.P, dtype)
        self._lm = self.W.to(dtype)
        self.reset()

    def reset(self):
        self.k = torch.zeros(1, self.heads, 0, self.hd)
        self.v = torch.zeros(1, self.heads, 0, self.hd)
        self.last = None            # the predicted feature after the last real position [d]
        self._pending = []          # real positions not run through the layer yet: (feats [n, d], ids [n])

    @property
    def length(self) -> int:
        self._flush()
        return self.k.shape[2]

    def extend(self, feats: torch.Tensor, next_tokens) -> None:
        """Append real positions: base features [n, d] and the token after each ([n] ids). Lazy: the layer
        runs over everything appended since the last draft when the next draft needs it (one call over
        many rows instead of one per verify, and none while drafts come from elsewhere, e.g. prompt lookup)."""
        self._pending.append((feats.float(), torch.as_tensor(next_tokens, dtype=torch.long)))

    def _flush(self) -> None:
        if not self._pending:
            return
        feats = torch.cat([f for f, _ in self._pending])
        ids = torch.cat([i for _, i in self._pending])
        self._pending = []
        n, L = feats.shape[0], self.k.shape[2]
        x = fuse(self._w, feats.float(), self.embed[ids])[None]
        mask = torch.ones(n, L + n, dtype=torch.bool)
        mask[:, L:] = torch.ones(n, n, dtype=torch.bool).tril()
        out, k, v = layer(self._w, self.heads, x, torch.arange(L, L + n), mask[None, None], (self.k, self.v))
        self.k, self.v = torch.cat((self.k, k), 2), torch.cat((self.v, v), 2)
        self.last = out[0, -1]

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits [m, V'] of predicted features [m, d]."""
        out = F.linear(feats.to(self.dtype), self._lm).float()
        return out if self.b is None else out + self.b

    def full_probs(self, logits: torch.Tensor, warp) -> torch.Tensor:
        """Probabilities over the whole vocabulary [m, vocab] (0 outside the draft vocabulary)."""
        full = torch.full((logits.shape[0], self.vocab), float("-inf"))
        full[:, self.vocab_ids] = logits
        return warp(full)

    def draft_tree(self, tree) -> list[int]:
        """Greedy drafting of a candidate tree (slimgraph.speculative.Tree): the token of every node but the
        root, in tree order; node (r1, .., rd) is the r_d-th best token after the drafted path (r1, .., r_{d-1})."""
        self._flush()
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
                x = fuse(self._w, torch.stack([feats[tree.parent[c]] for c in grow]),
                         self.embed[torch.tensor([tokens[c] for c in grow])])[None]
                m = len(grow)
                mask = torch.zeros(m, L + len(dnodes) + m, dtype=torch.bool)
                mask[:, :L] = True
                for r, c in enumerate(grow):
                    for j, dn in enumerate(dnodes):
                        mask[r, L + j] = bool(tree.mask[c, dn])
                    mask[r, L + len(dnodes) + r] = True
                pos = torch.tensor([L + len(tree.paths[c]) - 1 for c in grow])
                out, k, v = layer(self._w, self.heads, x, pos, mask[None, None], (dk, dv))
                dk, dv = torch.cat((dk, k), 2), torch.cat((dv, v), 2)
                dnodes += grow
                for r, c in enumerate(grow):
                    feats[c] = out[0, r]
            level = grow
        return [int(t) for t in tokens[1:]]

    def draft_scored(self, depth: int, width: int, topk: int, floor: float = 0.0):
        """EAGLE-2's dynamic draft tree (Li et al. 2024, arXiv:2406.16858, section 4.1, expansion): each depth
        takes the top-k tokens after each of the `width` best nodes of the depth before (best by confidence,
        the product of draft probabilities along the path; nodes under `floor` are not expanded), and one
        layer call over those `width` nodes gives their features. Returns a slimgraph.dynamic_tree.Scored
        (every node made, also those not expanded; the caller keeps the best)."""
        self._flush()
        from .dynamic_tree import Scored
        s = Scored()
        L = self.length
        dk, dv, rows = self.k, self.v, []          # drafted K/V rows after the real ones: rows[r] = node index
        feat = {0: self.last}
        front = [0]
        for d in range(depth):
            lg = torch.log_softmax(self.logits(torch.stack([feat[n] for n in front])), -1)
            top = lg.topk(min(topk, lg.shape[-1]), -1)
            made = []
            for r, node in enumerate(front):
                v = s.value[node - 1] if node else 1.0
                for q, t in zip(top.values[r].exp().tolist(), top.indices[r].tolist()):
                    made.append(s.add(node, int(self.vocab_ids[t]), v * q))
            if d + 1 == depth:
                break
            front = [n for n in sorted(made, key=lambda n: -s.value[n - 1])[:width] if s.value[n - 1] >= floor]
            if not front:
                break
            # one layer call: node n's row reads (its parent's feature, its token) at position L + depth - 1
            # and attends to the real rows, its drafted ancestors' rows and itself
            x = fuse(self._w, torch.stack([feat[s.parent[n - 1]] for n in front]),
                     self.embed[torch.tensor([s.token[n - 1] for n in front])])[None]
            m = len(front)
            mask = torch.zeros(m, L + len(rows) + m, dtype=torch.bool)
            mask[:, :L] = True
            for r, n in enumerate(front):
                anc, a = set(), s.parent[n - 1]
                while a:
                    anc.add(a)
                    a = s.parent[a - 1]
                for j, dn in enumerate(rows):
                    mask[r, L + j] = dn in anc
                mask[r, L + len(rows) + r] = True
            pos = torch.full((m,), L + d)
            out, k, v = layer(self._w, self.heads, x, pos, mask[None, None], (dk, dv))
            dk, dv = torch.cat((dk, k), 2), torch.cat((dv, v), 2)
            rows += front
            for r, n in enumerate(front):
                feat[n] = out[0, r]
        return s

    def sample_chain(self, depth: int, warp, generator=None):
        """Sampled drafting of a chain: (tokens [depth], q [depth, vocab]) where token j ~ q_j, the draft
        distribution after the drafted tokens before it (warped like the target: temperature, top-k)."""
        self._flush()
        f, L = self.last, self.length
        dk, dv = self.k, self.v
        toks, qs = [], []
        for j in range(depth):
            q = self.full_probs(self.logits(f[None]), warp)[0]
            t = int(torch.multinomial(q, 1, generator=generator))
            toks.append(t)
            qs.append(q)
            if j + 1 < depth:
                x = fuse(self._w, f[None], self.embed[t][None])[None]
                mask = torch.ones(1, 1, 1, dk.shape[2] + 1, dtype=torch.bool)
                out, k, v = layer(self._w, self.heads, x, torch.tensor([L + j]), mask, (dk, dv))
                dk, dv = torch.cat((dk, k), 2), torch.cat((dv, v), 2)
                f = out[0, 0]
        return toks, torch.stack(qs) if qs else torch.zeros(0, self.vocab)
