"""Greedy speculative decoding with draft heads (passes/draft_heads.py) on the decoder runtime.

    ids = generate(compiled, prompt, 128)            # automatic when the graph has draft_logits_* outputs
    ids = generate(compiled, prompt, 128, speculative="chain")
    compiled.last_generate_stats.mean_acceptance     # tokens emitted per verify forward

Each iteration verifies, in ONE forward (`Decoder.verify`), the base model's next token followed by
the heads' guesses, then keeps the longest prefix the base model agrees with (its argmax at each
candidate) plus one bonus token (the base's argmax after the last kept candidate), and rolls the rest
back (`Decoder.accept`). Every emitted token is an argmax of the base model given exactly the tokens
before it, so the output is the plain greedy output. Exactly so where the target computes each verified
row as the step at its place would: the `torch` target's attention runs a verify row by row as steps, and
its packed int4/int8 matmuls are row-invariant, so on a quantized base the tokens are identical bit for
bit (float Medusa heads do not count: they feed only the drafts; over a ring state, a row's keys are the ring
as its step would have slid it). Not exact: float GEMMs (an fp32 base) differ between a k-row and a 1-row
product by ~1e-5, which can flip only an argmax tied that closely (tests/test_decoder.py, benchmarks/RESULTS.md);
attention with the model's own `window` or a `softcap` (Mistral, Qwen2, Gemma 2/3 before sparsify-attention)
and a left-padded batch over a ring take the one-call attention (~1e-7 off the steps before the bf16 rounding).

- chain: candidate j + 1 is head j's top-1 (head j guesses the token j + 1 after the next one).
- tree (Medusa, Cai et al. 2024, arXiv:2401.10774, section 2.1.2): nodes are paths of top-k ranks, e.g.
  (0, 1) = head 0's best then head 1's second best; all nodes run in one forward under a tree mask in
  which each node sees its ancestors; the deepest accepted node's path is kept (`accept(path=...)`).

- dynamic tree (`tree="dynamic"`, slimgraph/dynamic_tree.py): the drafter's nodes scored by confidence
  (EAGLE-2, Li et al. 2024, arXiv:2406.16858) and lookup drafts scored by their learned acceptance, then
  as many as maximise expected tokens per second under the verify cost measured on this model.
- EAGLE heads (`kind=eagle`, slimgraph/eagle.py) draft the same chains and trees autoregressively: the
  token of node (r1, .., rd) is the r_d-th best guess after the drafted path (r1, .., r_{d-1}).
- Sampling (do_sample=True, chain): drafts are sampled from the heads' distributions q and verified with
  the standard rejection rule (accept x with probability min(1, p(x)/q(x)), else sample from
  norm(max(0, p - q)); a bonus token from p when all are accepted), which makes every emitted token
  distributed exactly as plain sampling (Leviathan et al. 2023; Chen et al. 2023). Medusa's "typical
  acceptance" is not used: it is not lossless.

Batch 1.
"""
from __future__ import annotations

import operator

import torch

from .passes.draft_heads import draft_outputs, head_kind

# Medusa-style sparse tree for a CPU (verify cost grows with the node count): paths of top-k ranks.
DEFAULT_TREE = ((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (2, 0), (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0),
                (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 0, 0))
MAX_TREE_NODES = 64
# candidates per verify, at most: the torch target computes up to this many rows after a cache as the decode steps
# at their places (codegen/torch_kernels.STEP_ROWS), which makes greedy speculative decoding exact on a quantized base
MAX_VERIFY = 64


class SpeculativeError(ValueError):
    pass


def num_heads(graph) -> int:
    """Draft depth: Medusa heads, or EAGLE's draft steps (0 without draft heads)."""
    kind = head_kind(graph)
    if kind == "eagle":
        from .eagle import config
        return config(graph)[0]
    return len(draft_outputs(graph))


def ancestor_mask(parent: list[int]) -> torch.Tensor:
    """[n, n] bool tree attention mask from parent indices (-1 = root): row i is True at i and its ancestors."""
    mask = torch.eye(len(parent), dtype=torch.bool)
    for i in range(len(parent)):
        j = parent[i]
        while j >= 0:
            mask[i, j], j = True, parent[j]
    return mask


class Tree:
    """A candidate tree: `paths` (tuples of top-k ranks, one per depth) -> node order, parents, mask."""

    def __init__(self, paths, heads: int, vocab: int | None = None):
        try:
            if isinstance(paths, (str, bytes)) or any(isinstance(p, (str, bytes)) for p in paths):
                raise TypeError
            paths = [tuple(operator.index(r) for r in p) for p in paths]
        except TypeError:
            raise SpeculativeError(f"tree={paths!r}: give 'dynamic' or a list of paths of top-k ranks, e.g. "
                                   f"[(0,), (1,), (0, 0)]") from None
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
        self.mask = ancestor_mask(self.parent)
        self.depth = max(len(p) for p in self.paths)
        self.topk = max(r for p in paths for r in p) + 1

    def cut(self, depth: int) -> "Tree | None":
        """This tree without the nodes deeper than `depth` (None for depth 0): near max_new_tokens a verify
        emits at most depth + 1 tokens, and its positions stay within those plain decoding reaches."""
        if depth >= self.depth:
            return self
        keep = [p for p in self.paths[1:] if len(p) <= depth]
        return Tree(keep, depth) if keep else None

    def candidates(self, token: int, drafts: torch.Tensor) -> torch.Tensor:
        """drafts [heads, topk] (token ids by rank) -> candidate ids [1, nodes]."""
        ids = [token] + [int(drafts[len(p) - 1, p[-1]]) for p in self.paths[1:]]
        return torch.tensor([ids], dtype=torch.long)


class MedusaDrafter:
    """Drafts from the graph's `draft_logits_*` outputs at the row of the last accepted token."""

    def __init__(self, graph):
        self.depth = num_heads(graph)
        self.names = [f"draft_logits_{i}" for i in range(self.depth)]

    def start(self, ids: list, out, token, b: int = 0):
        self.row = [out[n][b, -1] for n in self.names]

    def accepted(self, res, path, next_tokens, b: int = 0):
        self.row = [res[n][b, path[-1]] for n in self.names]

    def draft_tree(self, tree) -> list[int]:
        drafts = torch.stack([self.row[d].topk(tree.topk).indices for d in range(tree.depth)])
        return [int(drafts[len(p) - 1, p[-1]]) for p in tree.paths[1:]]

    def draft_scored(self, depth, width, topk, floor=0.0):
        from .dynamic_tree import medusa_scored
        return medusa_scored(self.row, depth, width, topk, floor)

    def sample_chain(self, depth, warp, generator=None):
        q = warp(torch.stack(self.row[:depth])) if depth else torch.zeros(0, 1)
        toks = [int(torch.multinomial(q[j], 1, generator=generator)) for j in range(depth)]
        return toks, q


class EagleDrafter:
    """EAGLE drafting (slimgraph/eagle.py): fed with the base's features of every accepted token."""

    def __init__(self, graph):
        from .eagle import EagleDrafter as Impl
        self.impl = Impl(graph)
        self.depth = self.impl.steps

    def start(self, ids: list, out, token, b: int = 0):
        """ids: the row's prompt tokens (pads removed; a left-padded row's tokens are its last positions)."""
        self.impl.reset()
        self.impl.extend(out["hidden_states"][b, -len(ids):], [*ids[1:], token])

    def accepted(self, res, path, next_tokens, b: int = 0):
        self.impl.extend(res["hidden_states"][b, path], next_tokens)

    def draft_tree(self, tree):
        return self.impl.draft_tree(tree)

    def draft_scored(self, depth, width, topk, floor=0.0):
        return self.impl.draft_scored(depth, width, topk, floor)

    def sample_chain(self, depth, warp, generator=None):
        return self.impl.sample_chain(depth, warp, generator)


DRAFTERS = {"medusa": MedusaDrafter, "eagle": EagleDrafter}


def drafter_for(graph):
    kind = head_kind(graph)
    if kind is None:
        raise SpeculativeError("speculative decoding needs draft heads: compile with 'insert-draft-heads{num_heads=4}' "
                               "(or kind=eagle)")
    return DRAFTERS[kind](graph)


class NgramIndex:
    """Prompt lookup decoding (Saxena 2023, "Prompt Lookup Decoding", github.com/apoorvumang/prompt-lookup-
    decoding; llama.cpp's `lookup` example): the draft is what followed the most recent earlier occurrence
    of the context's longest suffix n-gram (n = `nmax` down to `nmin`). No training and no extra forward:
    it finds the repeats (names, code, lists, and the loops small models fall into) that draft heads,
    which see only the last hidden state, guess poorly. O(nmax) per token (a dict from n-gram to the
    position after its most recent occurrence).

    A match of n < nmax tokens drafts k / 2^(nmax - n) tokens (at least 1): a shorter match is right less
    often, and where a verify's cost grows with its length (the `cpu` target: 1.05x a decode step for 2
    tokens, 2.08x for 8) a long draft from a 1-gram match costs more than it wins. SmolLM2 on `cpu` W4A8, 20
    prompts x 128 tokens, up to 8 drafted: 1.91x -> 2.10x plain decode (benchmarks/RESULTS.md, eighth session)."""

    def __init__(self, tokens=(), nmax: int = 3, nmin: int = 1):
        if not 1 <= nmin <= nmax:
            raise SpeculativeError(f"lookup n-gram sizes: need 1 <= nmin <= nmax, got nmin={nmin}, nmax={nmax}")
        self.nmax, self.nmin = nmax, nmin
        self.tokens: list[int] = []
        self.after: dict[tuple, int] = {}
        self.extend(tokens)

    def extend(self, tokens) -> None:
        for tok in tokens:
            i = len(self.tokens)
            for n in range(self.nmin, min(self.nmax, i) + 1):   # the n-grams ending at i - 1 now have a follower
                self.after[tuple(self.tokens[i - n:i])] = i
            self.tokens.append(int(tok))

    def match(self, k: int, extend: int = 0) -> tuple[list[int], int]:
        """(up to k tokens that followed the most recent earlier occurrence of the context's longest suffix
        n-gram, n); ([], 0) when no suffix n-gram of nmin..nmax tokens occurred before. With `extend`, a
        match of nmax tokens is followed further back, and n is how many tokens before the occurrence
        agree with the context's end (up to `extend`): a long agreement is a repeat or a loop, whose
        continuation is far more often right than a short one's (slimgraph/dynamic_tree.py keys on it)."""
        for n in range(min(self.nmax, len(self.tokens)), self.nmin - 1, -1):
            start = self.after.get(tuple(self.tokens[-n:]))
            if start is not None:
                toks = self.tokens[start:start + max(k, 0)]
                if n == self.nmax:
                    t = self.tokens
                    while n < extend and start - 1 - n >= 0 and t[start - 1 - n] == t[-1 - n]:
                        n += 1
                return toks, n
        return [], 0

    def draft(self, k: int) -> list[int]:
        """Up to k tokens for a match of nmax tokens, half as many per token shorter (fewer, or none, when the
        context ends first or no suffix n-gram occurred before)."""
        toks, n = self.match(k)
        return toks[:max(1, k >> (self.nmax - n))] if n and k > 0 else []


class Candidates:
    """One verify's candidate nodes: ids [token, ...], parent (-1 for node 0), depth; `mask` [n, n] (each
    node sees its ancestors) or None for a chain. Built from a draft tree and extra token chains merged
    into it as a trie (a chain that starts like a tree path shares its nodes)."""

    def __init__(self, token: int, tree: Tree | None = None, tree_ids=(), chains=(), nodes=()):
        """nodes: (parent, token id) pairs after the tree's, parents first (a dynamic tree's kept nodes)."""
        self.ids, self.parent, self.depth = [int(token)], [-1], [0]
        children: dict[tuple, int] = {}
        if tree is not None:
            for i, tok in enumerate(tree_ids, start=1):
                self._add(int(tok), tree.parent[i], children)
        for parent, tok in nodes:
            self._add(int(tok), parent, children)
        for seq in chains:
            node = 0
            for tok in seq:
                node = children.get((node, int(tok))) or self._add(int(tok), node, children)
        n = len(self.ids)
        self.is_chain = all(self.parent[i] == i - 1 for i in range(1, n))
        self.mask = None if self.is_chain else ancestor_mask(self.parent)

    def _add(self, tok, parent, children) -> int:
        self.ids.append(tok)
        self.parent.append(parent)
        self.depth.append(self.depth[parent] + 1)
        children.setdefault((parent, tok), len(self.ids) - 1)
        return len(self.ids) - 1

    def accepted_path(self, base: list[int]) -> list[int]:
        """The deepest node whose every ancestor's argmax (`base`, one per node) chose it, as the node path."""
        ok = [True] + [False] * (len(self.ids) - 1)
        for i in range(1, len(self.ids)):                # parents come before their children
            ok[i] = ok[self.parent[i]] and self.ids[i] == base[self.parent[i]]
        best = max((i for i in range(len(self.ids)) if ok[i]), key=lambda i: (self.depth[i], -i))
        path = []
        while best >= 0:
            path.append(best)
            best = self.parent[best]
        return path[::-1]


def chain(depth: int) -> Tree:
    return Tree([(0,) * d for d in range(1, depth + 1)], depth)


def run(dec, input_ids: torch.Tensor, max_new_tokens: int, *, mode: str, tree=None, eos=None, on_token=None,
        sample=None, lookup: int = 0):
    """Speculative decoding for one prompt [1, p]; returns (new tokens list, verifies, prefill end time).
    `on_token(token)` is called for each emitted token (streaming). `sample`: None (greedy) or
    (warp, generator) with warp(logits [m, vocab]) -> probabilities [m, vocab] (temperature, top-k):
    then a chain is drafted by sampling and verified with the rejection rule (Leviathan et al. 2023,
    arXiv:2211.17192, Algorithm 1; Chen et al. 2023, arXiv:2302.01318), which keeps the distribution.
    `lookup` > 0 (greedy): up to that many tokens drafted by prompt lookup (NgramIndex) join the heads'
    candidates as one more branch (merged where they agree); with no draft heads they are the only draft."""
    import time
    if lookup and sample is not None:
        raise SpeculativeError("lookup drafting is greedy only (do_sample=False)")
    drafter = drafter_for(dec.graph) if num_heads(dec.graph) or not lookup else None
    k = drafter.depth if drafter is not None else 0
    t = None
    policy = None
    if mode == "tree" and isinstance(tree, str):
        if tree != "dynamic":
            raise SpeculativeError(f"tree={tree!r}: give 'dynamic' (cost-aware, slimgraph/dynamic_tree.py) or a list "
                                   f"of paths of top-k ranks")
        if sample is not None:
            raise SpeculativeError("sampling (do_sample=True) verifies a chain; use speculative='chain'")
        from . import dynamic_tree
        policy = dynamic_tree.policy_of(dec.compiled, MAX_VERIFY)
    elif mode == "tree":
        if sample is not None:
            raise SpeculativeError("sampling (do_sample=True) verifies a chain; use speculative='chain' (the tree "
                                   "rejection rule is not implemented)")
        vocab = {v.name: v for v in dec.graph.outputs}["logits"].type.shape[-1]
        t = tree if isinstance(tree, Tree) else Tree([p for p in DEFAULT_TREE if len(p) <= k] if tree is None else tree, k,
                                                     vocab if isinstance(vocab, int) else None)
        if t.depth > k:
            raise SpeculativeError(f"tree depth {t.depth} > {k} draft heads")
    chains, cuts = {}, {}
    eos_set = set() if eos is None else {int(e) for e in eos.tolist()}
    new: list[int] = []

    def emit(tok) -> bool:          # True when generation must stop
        new.append(tok)
        if on_token is not None:
            on_token(tok)
        return tok in eos_set or len(new) >= max_new_tokens

    out = _host(dec.prefill(input_ids))
    t_prefill = time.perf_counter()
    last = out["logits"][0, -1]
    token = int(last.argmax()) if sample is None else int(torch.multinomial(sample[0](last[None])[0], 1,
                                                                            generator=sample[1]))
    verifies = 0
    if max_new_tokens == 0:
        return new, verifies, t_prefill
    if emit(token):
        return new, verifies, t_prefill
    ngrams = NgramIndex([*input_ids[0].tolist(), token]) if lookup else None
    if drafter is not None:
        drafter.start(input_ids[0].tolist(), out, token)
    while True:
        room = max_new_tokens - len(new)                 # tokens still allowed; a verify emits <= its length
        if sample is not None:
            path, kept, res = _sampled_round(dec, drafter, token, min(k, room - 1), *sample)
        elif policy is not None:
            path, kept, res = _dynamic_round(dec, drafter, policy, token, k, room, ngrams, lookup)
        else:
            tt, depth = t, min(k, room - 1)
            if tt is None:
                tt = chains.get(depth) or chains.setdefault(depth, chain(depth)) if depth else None
            elif tt.depth > depth:          # near max_new_tokens: no node past the positions plain decoding reaches
                tt = cuts[depth] if depth in cuts else cuts.setdefault(depth, tt.cut(depth))
            heads = drafter.draft_tree(tt) if tt is not None else ()
            cap = min(lookup, room - 1, MAX_VERIFY - 1 - len(heads))   # the verify's candidates stay <= MAX_VERIFY
            looked = [ngrams.draft(cap)] if ngrams is not None and cap > 0 else []
            c = Candidates(token, tt, heads, looked)
            if not c.is_chain and not dec.tree_ok(len(c.ids)):
                # past a model's own index-placed window no tree verifies: one chain, the lookup's when it found a
                # match (it is usually the longer accepted one), else the heads' greedy path (rank 0 at each depth)
                greedy = [h for p, h in zip(tt.paths[1:], heads) if not any(p)] if tt is not None else []
                c = Candidates(token, None, (), looked if looked and looked[0] else [greedy])
            res = _host(dec.verify(torch.tensor([c.ids], dtype=torch.long), tree_mask=c.mask))
            base = res["logits"][0].argmax(-1).tolist()
            path = c.accepted_path(base)[:room]          # never emit past max_new_tokens
            kept = [c.ids[i] for i in path[1:]] + [base[path[-1]]]
        verifies += 1
        dec.accept(path=path)
        for tok in kept:
            if emit(tok):
                return new, verifies, t_prefill
        if ngrams is not None:
            ngrams.extend(kept)
        if drafter is not None:
            drafter.accepted(res, path, kept)
        token = kept[-1]


# dynamic trees: each depth expands the DYNAMIC_WIDTH best nodes with their DYNAMIC_TOPK best tokens; nodes whose
# confidence is under DYNAMIC_FLOOR are not expanded (their children could not pay for their rows)
DYNAMIC_WIDTH, DYNAMIC_TOPK, DYNAMIC_FLOOR = 4, 4, 0.02
# lookup matches are followed back up to this many tokens; their acceptance is learned per match length in
# buckets 1, 2, 3, 4-7, 8-15, 16+ (a long agreement with an earlier passage is a repeat, often a loop)
LOOKUP_EXTEND = 16


def _dynamic_round(dec, drafter, policy, token, k, room, ngrams, lookup):
    """One verify of a dynamic, cost-aware tree (slimgraph/dynamic_tree.py): (accepted path, emitted tokens,
    outputs). The verify is timed into the compiled model's VerifyClock."""
    import time
    from .dynamic_tree import Scored
    t0 = time.perf_counter()
    depth = min(k, room - 1)
    looked, n_match = ngrams.match(min(lookup, room - 1), LOOKUP_EXTEND) if ngrams is not None else ([], 0)
    n_match = n_match if n_match < 4 else 4 << min(2, (n_match.bit_length() - 3))   # buckets 1 2 3 4 8 16
    heads = bool(drafter and depth and policy.heads_worth(bool(looked)))
    th = time.perf_counter()
    scored = drafter.draft_scored(depth, DYNAMIC_WIDTH, DYNAMIC_TOPK, policy.floor(DYNAMIC_FLOOR)) if heads else Scored()
    draft_s = time.perf_counter() - t0
    parents, tokens, info = policy.select(scored, looked, n_match, draft_s, room)
    if heads:
        policy.heads_drafted(bool(looked), time.perf_counter() - th, max(scored.depth, default=1), info)
    c = Candidates(token, nodes=zip(parents, tokens))
    n = len(c.ids)
    if not c.is_chain and not dec.tree_ok(n):
        # a model whose own window cannot take a tree now: the best-valued node's path as a chain
        best = max(range(1, n), key=lambda i: (info[i - 1][2], -i))
        keep = []
        while best > 0:
            keep.append(best)
            best = c.parent[best]
        keep = keep[::-1]
        c = Candidates(token, None, (), [[c.ids[i] for i in keep]])
        info = [info[i - 1] for i in keep]
        n = len(c.ids)
    t1 = time.perf_counter()
    res = _host(dec.verify(torch.tensor([c.ids], dtype=torch.long), tree_mask=c.mask))
    base = res["logits"][0].argmax(-1).tolist()
    t2 = time.perf_counter()
    policy.clock.observe(n, t2 - t1)
    path = c.accepted_path(base)[:room]
    policy.observe(len(path), t2 - t0)
    policy.learn(info, set(path[1:]), n_match)
    return path, [c.ids[i] for i in path[1:]] + [base[path[-1]]], res


def _host(outputs: dict) -> dict:
    """The decoder's outputs on the host: drafting, acceptance and sampling are small CPU-side work, and a
    GPU runner's outputs live on its device (the copy is the verified rows' logits: ~k x vocab floats)."""
    return {name: t.cpu() for name, t in outputs.items()}


def _sampled_round(dec, drafter, token, depth, warp, generator):
    """One verify of a sampled chain with the rejection rule: (accepted rows, emitted tokens, outputs)."""
    drafts, q = drafter.sample_chain(depth, warp, generator)
    res = _host(dec.verify(torch.tensor([[token, *drafts]], dtype=torch.long)))
    p = warp(res["logits"][0].float())                   # [depth + 1, vocab]: target after each candidate
    n, tok = _rejection(drafts, q, p, generator)
    return list(range(n + 1)), drafts[:n] + [tok], res


def run_batch(dec, input_ids: torch.Tensor, max_new_tokens: int, *, attention_mask=None, sample=None):
    """Chain speculative decoding for a batch [B, p] (left padded where `attention_mask` is 0): each row
    drafts its own chain, all rows are verified in ONE forward, and all keep the same number of rows:
    a = the fewest drafts any row accepted. A row that accepted more emits its (a+1)-th draft, which the
    base accepted, in place of the correction token: greedy, that draft IS the base's argmax; sampled,
    it passed the rejection test, and stopping at `a` depends only on the other rows' draws. Every row
    therefore emits exactly what it emits alone (greedy) or in law (sampling).
    Returns (new tokens [B, n] with n = max_new_tokens, verifies, prefill end time); eos is the caller's."""
    import time
    B = input_ids.shape[0]
    drafters = [drafter_for(dec.graph) for _ in range(B)]
    k = drafters[0].depth
    out = _host(dec.prefill(input_ids, attention_mask))
    t_prefill = time.perf_counter()
    last = out["logits"][:, -1]
    if sample is None:
        tokens = last.argmax(-1).tolist()
    else:
        tokens = torch.multinomial(sample[0](last), 1, generator=sample[1])[:, 0].tolist()
    new = [[t] for t in tokens]
    verifies = 0
    if max_new_tokens == 0:
        return torch.zeros(B, 0, dtype=torch.long), verifies, t_prefill
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    for b, d in enumerate(drafters):
        d.start(input_ids[b][valid[b]].tolist(), out, tokens[b], b)
    chains = {}
    while len(new[0]) < max_new_tokens:
        depth = min(k, max_new_tokens - len(new[0]) - 1)
        if sample is None:
            tt = chains.get(depth) or chains.setdefault(depth, chain(depth)) if depth else None
            drafts = [d.draft_tree(tt) if tt is not None else [] for d in drafters]
        else:
            dq = [d.sample_chain(depth, *sample) for d in drafters]
            drafts = [x[0] for x in dq]
        cands = torch.tensor([[tokens[b], *drafts[b]] for b in range(B)], dtype=torch.long)
        res = _host(dec.verify(cands))
        verifies += 1
        if sample is None:
            base = res["logits"].argmax(-1)                                 # [B, depth + 1]
            match = (cands[:, 1:] == base[:, :-1]).long().cumprod(1).sum(1).tolist()
            a = min(match)
            kept = [cands[b, 1:a + 1].tolist() + [int(base[b, a])] for b in range(B)]
        else:
            p = sample[0](res["logits"].reshape(B * (depth + 1), -1).float()).reshape(B, depth + 1, -1)
            got = [_rejection(drafts[b], dq[b][1], p[b], sample[1]) for b in range(B)]
            a = min(n for n, _ in got)
            kept = [drafts[b][:a] + [corr if n == a else drafts[b][a]] for b, (n, corr) in enumerate(got)]
        dec.accept(a + 1)
        for b in range(B):
            new[b] += kept[b]
            drafters[b].accepted(res, list(range(a + 1)), kept[b], b)
            tokens[b] = kept[b][-1]
    return torch.tensor([row[:max_new_tokens] for row in new], dtype=torch.long), verifies, t_prefill


def _rejection(drafts, q, p, generator):
    """The rejection rule over one row's chain: (drafts accepted n, the correction or bonus token)."""
    for j, x in enumerate(drafts):
        if float(torch.rand((), generator=generator)) * float(q[j, x]) < float(p[j, x]):
            continue
        resid = (p[j] - q[j]).clamp_min(0)
        last = resid if float(resid.sum()) > 0 else p[j]
        return j, int(torch.multinomial(last, 1, generator=generator))
    n = len(drafts)
    return n, int(torch.multinomial(p[n], 1, generator=generator))
