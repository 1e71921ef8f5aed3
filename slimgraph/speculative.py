"""Greedy speculative decoding with draft heads (passes/draft_heads.py) on the decoder runtime.

    ids = generate(compiled, prompt, 128)            # automatic when the graph has draft_logits_* outputs
    ids = generate(compiled, prompt, 128, speculative="chain")
    compiled.last_generate_stats.mean_acceptance     # tokens emitted per verify forward

Each iteration verifies, in ONE forward (`Decoder.verify`), the base model's next token followed by
the heads' guesses, then keeps the longest prefix the base model agrees with (its argmax at each
candidate) plus one bonus token (the base's argmax after the last kept candidate), and rolls the rest
back (`Decoder.accept`). Every emitted token is an argmax of the base model given exactly the tokens
before it, so the output is the plain greedy output (up to float rounding between a k-token forward
and k one-token forwards; the tests check token identity).

- chain: candidate j + 1 is head j's top-1 (head j guesses the token j + 1 after the next one).
- tree (Medusa, Cai et al. 2024, arXiv:2401.10774, section 2.1.2): nodes are paths of top-k ranks, e.g.
  (0, 1) = head 0's best then head 1's second best; all nodes run in one forward under a tree mask in
  which each node sees its ancestors; the deepest accepted node's path is kept (`accept(path=...)`).

Greedy, batch 1. (Sampling with the rejection rule is not implemented: sampled generate() decodes plainly.)
"""
from __future__ import annotations

import torch

from .passes.draft_heads import draft_outputs

# Medusa-style sparse tree for a CPU (verify cost grows with the node count): paths of top-k ranks.
DEFAULT_TREE = ((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (2, 0), (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0),
                (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 0, 0))
MAX_TREE_NODES = 64


class SpeculativeError(ValueError):
    pass


def num_heads(graph) -> int:
    return len(draft_outputs(graph))


class Tree:
    """A candidate tree: `paths` (tuples of top-k ranks, one per depth) -> node order, parents, mask."""

    def __init__(self, paths, heads: int, vocab: int | None = None):
        paths = [tuple(int(r) for r in p) for p in paths]
        if not paths or len(paths) + 1 > MAX_TREE_NODES:
            raise SpeculativeError(f"tree: give 1..{MAX_TREE_NODES - 1} paths, got {len(paths)}")
        have = set(paths)
        for p in paths:
            if not p or len(p) > heads:
                raise SpeculativeError(f"tree path {p} has depth {len(p)}; this graph has {heads} draft heads "
                                       f"(depth 1..{heads}): insert more heads or shorten the path")
            if any(r < 0 or (vocab is not None and r >= vocab) for r in p):
                raise SpeculativeError(f"tree path {p}: ranks must be in 0..{(vocab or 0) - 1}")
            if len(p) > 1 and p[:-1] not in have:
                raise SpeculativeError(f"tree path {p}: its parent {p[:-1]} is not in the tree (list every prefix)")
        if len(have) != len(paths):
            raise SpeculativeError("tree: a path is listed twice")
        self.paths = [()] + sorted(paths, key=lambda p: (len(p), p))      # node 0: the base's next token
        index = {p: i for i, p in enumerate(self.paths)}
        self.parent = [-1] + [index[p[:-1]] for p in self.paths[1:]]
        n = len(self.paths)
        self.mask = torch.eye(n, dtype=torch.bool)
        for i in range(n):
            j = self.parent[i]
            while j >= 0:
                self.mask[i, j], j = True, self.parent[j]
        self.depth = max(len(p) for p in self.paths)
        self.topk = max(r for p in paths for r in p) + 1

    def candidates(self, token: int, drafts: torch.Tensor) -> torch.Tensor:
        """drafts [heads, topk] (token ids by rank) -> candidate ids [1, nodes]."""
        ids = [token] + [int(drafts[len(p) - 1, p[-1]]) for p in self.paths[1:]]
        return torch.tensor([ids], dtype=torch.long)


def run(dec, input_ids: torch.Tensor, max_new_tokens: int, *, mode: str, tree=None, eos=None, on_token=None):
    """Greedy speculative decoding for one prompt [1, p]; returns (new tokens list, verifies, prefill end time).
    `on_token(token)` is called for each emitted token (streaming)."""
    import time
    graph = dec.graph
    k = num_heads(graph)
    if k == 0:
        raise SpeculativeError("speculative decoding needs draft heads: compile with 'insert-draft-heads{num_heads=4}'")
    names = [f"draft_logits_{i}" for i in range(k)]
    t = None
    if mode == "tree":
        t = tree if isinstance(tree, Tree) else Tree(tree or [p for p in DEFAULT_TREE if len(p) <= k], k)
        if t.depth > k:
            raise SpeculativeError(f"tree depth {t.depth} > {k} draft heads")
    eos_set = set() if eos is None else {int(e) for e in eos.tolist()}
    new: list[int] = []

    def emit(tok) -> bool:          # True when generation must stop
        new.append(tok)
        if on_token is not None:
            on_token(tok)
        return tok in eos_set or len(new) >= max_new_tokens

    out = dec.prefill(input_ids)
    t_prefill = time.perf_counter()
    token = int(out["logits"][0, -1].argmax())
    verifies = 0
    if max_new_tokens == 0:
        return new, verifies, t_prefill
    if emit(token):
        return new, verifies, t_prefill
    at = -1         # row of `out` whose draft logits guess after `token`
    while True:
        room = max_new_tokens - len(new)                 # tokens still allowed; a verify emits <= its length
        if t is None:
            guesses = [int(out[n][0, at].argmax()) for n in names[:max(0, room - 1)]]
            cands = torch.tensor([[token, *guesses]], dtype=torch.long)
            res = dec.verify(cands)
            verifies += 1
            base = res["logits"][0].argmax(-1).tolist()
            a = 1
            while a < cands.shape[1] and int(cands[0, a]) == base[a - 1]:
                a += 1
            dec.accept(a)
            kept = cands[0, 1:a].tolist() + [base[a - 1]]
            at_row = a - 1
        else:
            drafts = torch.stack([out[n][0, at].topk(t.topk).indices for n in names[:t.depth]])
            cands = t.candidates(token, drafts)
            res = dec.verify(cands, tree_mask=t.mask)
            verifies += 1
            base = res["logits"][0].argmax(-1).tolist()
            ok = [True] + [False] * (len(t.paths) - 1)
            for i in range(1, len(t.paths)):        # nodes are sorted by depth: parents come first
                ok[i] = ok[t.parent[i]] and int(cands[0, i]) == base[t.parent[i]]
            best = max((i for i in range(len(t.paths)) if ok[i]), key=lambda i: (len(t.paths[i]), -i))
            path, j = [], best
            while j >= 0:
                path.append(j)
                j = t.parent[j]
            path.reverse()
            if len(path) > room:                    # never emit past max_new_tokens
                path = path[:room]
                best = path[-1]
            dec.accept(path=path)
            kept = [int(cands[0, i]) for i in path[1:]] + [base[best]]
            at_row = best
        for tok in kept:
            if emit(tok):
                return new, verifies, t_prefill
        token, out, at = kept[-1], res, at_row
