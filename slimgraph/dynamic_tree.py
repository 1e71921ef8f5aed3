"""Dynamic, cost-aware candidate trees for greedy speculative decoding (`speculative="tree"`, `tree="dynamic"`).

EAGLE-2 (Li et al. 2024, arXiv:2406.16858) scores each drafted node by its path's draft confidence, the
product of the drafter's probabilities along the path, which tracks the chance that the base model accepts
it; the tree grows where that score is high and is cut to the best-scored nodes. The expected number of
tokens a verify emits is 1 + the sum, over its candidate nodes, of the chance the node is accepted (at most
one node per depth is, and each accepted node adds one token). EAGLE-2 verifies a fixed number of nodes,
which suits a GPU, where a verify of 60 tokens costs about one decode step. On a CPU a verify of m rows
costs more with every row (the `torch` target's int4 SmolLM2: 2 rows 1.2 steps, 8 rows 2.4, 16 rows 4.1),
so a big tree decodes *slower* than plain decoding. Here the number of nodes is chosen per verify to
maximise expected tokens per second:

    N* = argmax_N (1 + sum of the N best node values) / (draft seconds + verify seconds of N + 1 rows)

with the verify seconds of m rows measured online (`VerifyClock`: every verify is timed; rows never timed
are estimated from the timed ones), and the node values calibrated online per depth (the ratio of accepted
to predicted nodes), since a small drafter's confidence is not its acceptance rate. Prompt-lookup drafts
(slimgraph.speculative.NgramIndex) join the same ranking with values learned online from how often their
j-th token was accepted after a match of n tokens. The base model alone decides what is emitted, so none of
this changes the greedy output; it changes only the speed.
"""
from __future__ import annotations

import statistics
from collections import deque

import torch

# prior shape of a verify's cost in rows m before any verify of m rows was timed: 1 + SLOPE (m - 1) decode steps
SLOPE = 0.25
WINDOW = 9                        # timings of m rows kept per m (their median is the estimate)
PRIOR = 4.0                       # pseudo-observations behind each calibration or lookup-acceptance prior
RATE_DECAY = 0.98                 # weight of the past in the running tokens-per-second rate, per verify
STATS_DECAY = 0.998               # per verify, on the calibration and lookup counts (a memory of ~500 verifies)
HEAD_EMA = 0.1                    # weight of a round in the running means of the heads' gain and seconds
EXPLORE = 16                      # the heads draft at least every EXPLORE-th round, even when not worth it
LOOKUP_PRIOR = 0.6                # prior chance that a lookup token after a matched n-gram is accepted


class VerifyClock:
    """Seconds of a verify of m candidate rows, learned from every verify that ran: the median of the last
    WINDOW timings of m rows (a median, so a warm-up call or a pause of the process does not stick). A count
    never timed is estimated from the timed ones: the prior shape 1 + SLOPE (m - 1) scaled by the timed
    counts' median ratio to it (so estimates are in seconds from the first timing on). One clock per
    compiled model: the cost of a row depends on the model and the target, not on the prompt."""

    def __init__(self):
        self.times: dict[int, deque] = {}
        self.seconds: dict[int, float] = {}     # {rows: median seconds} of the counts timed so far
        self._ratio = 1.0                       # the timed counts' median ratio to the prior shape

    def observe(self, rows: int, seconds: float) -> None:
        t = self.times.setdefault(rows, deque(maxlen=WINDOW))
        t.append(float(seconds))
        self.seconds[rows] = statistics.median(t)        # estimates are read per candidate count: keep them ready
        self._ratio = statistics.median(s / (1 + SLOPE * (m - 1)) for m, s in self.seconds.items())

    def __call__(self, rows: int) -> float:
        s = self.seconds.get(rows)
        return s if s is not None else self._ratio * (1 + SLOPE * (rows - 1))


def policy_of(compiled, max_rows: int) -> "Policy":
    """The compiled model's Policy (made on first use, with its VerifyClock; it lives as long as the compiled
    model, so what one generate() call measured and learned serves the next)."""
    policy = compiled.__dict__.get("_dynamic_tree")
    if policy is None or policy.max_rows != max_rows:
        policy = compiled.__dict__["_dynamic_tree"] = Policy(VerifyClock(), max_rows)
    return policy


class Scored:
    """Drafted nodes below the root (the base's next token, node 0): parent index (into 0..n), token id,
    draft confidence (product of draft probabilities along the path) and depth, in an order where parents
    come first."""

    def __init__(self):
        self.parent: list[int] = []
        self.token: list[int] = []
        self.value: list[float] = []
        self.depth: list[int] = []

    def add(self, parent: int, token: int, value: float) -> int:
        self.parent.append(parent)
        self.token.append(int(token))
        self.value.append(float(value))
        self.depth.append(1 + (self.depth[parent - 1] if parent else 0))
        return len(self.token)          # the node's index (the root is 0)

    def __len__(self) -> int:
        return len(self.token)


class Policy:
    """The dynamic tree's state for one compiled model (policy_of): its VerifyClock, the calibration of draft
    confidences per depth, the acceptance of lookup tokens per (match length n, index j), the running rate and
    the heads' gain and cost, all learned from the verifies so far."""

    def __init__(self, clock: VerifyClock, max_rows: int):
        self.clock, self.max_rows = clock, max_rows
        self.pred: dict[int, float] = {}     # depth -> sum of predicted values of verified nodes
        self.hit: dict[int, float] = {}      # depth -> accepted verified nodes
        self.tries: dict[tuple, float] = {}  # (n, j) -> lookup tokens j verified after tokens 0..j-1 were accepted
        self.wins: dict[tuple, float] = {}   # ... and accepted (both decayed by STATS_DECAY per verify)
        self.tokens = self.seconds = 0.0     # decayed sums of emitted tokens and their seconds (for `rate`)
        self.head_gain: dict[bool, float] = {}   # lookup matched? -> running mean of the heads' expected tokens
        self.head_s: float | None = None         # running mean of the heads' drafting seconds
        self.level_s: float | None = None        # ... per depth drafted (one layer call of an EAGLE drafter)
        self.skipped = 0                          # rounds in a row the heads did not draft

    def heads_worth(self, matched: bool) -> bool:
        """Whether drafting with the heads is expected to pay for itself this verify: the tokens their nodes
        added to verifies like it (with or without a lookup match: a long lookup draft leaves the heads
        little to add) against their drafting seconds at the long-run rate. Every EXPLORE-th skipped round
        drafts anyway, so the estimate follows a drafter or a text that changes."""
        r, gain = self.rate(), self.head_gain.get(matched)
        if gain is None or self.head_s is None or not r or self.skipped >= EXPLORE or gain > r * self.head_s:
            self.skipped = 0
            return True
        self.skipped += 1
        return False

    def heads_drafted(self, matched: bool, seconds: float, levels: int, info) -> None:
        """Record a round the heads drafted: their seconds over `levels` depths and the expected tokens of
        their kept nodes."""
        gain = sum(v for node, j, v, _ in info if node and j < 0)
        per_level = seconds / max(1, levels)
        self.level_s = per_level if self.level_s is None else (1 - HEAD_EMA) * self.level_s + HEAD_EMA * per_level
        old = self.head_gain.get(matched)
        self.head_gain[matched] = gain if old is None else (1 - HEAD_EMA) * old + HEAD_EMA * gain
        self.head_s = seconds if self.head_s is None else (1 - HEAD_EMA) * self.head_s + HEAD_EMA * seconds

    def rate(self) -> float | None:
        """Tokens per second of the verifies so far (recent ones weigh more: RATE_DECAY per verify)."""
        return self.tokens / self.seconds if self.seconds > 0 else None

    def observe(self, tokens: int, seconds: float) -> None:
        """One verify emitted `tokens` in `seconds` (drafting included)."""
        self.tokens = RATE_DECAY * self.tokens + tokens
        self.seconds = RATE_DECAY * self.seconds + seconds

    def floor(self, least: float) -> float:
        """The confidence under which a drafted node is not worth expanding: a child is worth at most its
        parent's confidence, and it costs at least the cheapest extra row of a verify timed so far plus one
        more depth of drafting, which the long-run rate turns into tokens (at least `least`)."""
        r, times = self.rate(), self.clock.seconds
        steps = [times[m + 1] - times[m] for m in sorted(times) if m + 1 in times]
        if not r or not steps:
            return least
        cost = max(0.0, min(steps)) + (self.level_s or 0.0)
        return max(least, r * cost / max(1e-9, self.calibration(1)))

    def calibration(self, depth: int) -> float:
        return (self.hit.get(depth, 0.0) + PRIOR) / (self.pred.get(depth, 0.0) + PRIOR)

    def lookup_values(self, n: int, count: int) -> list[float]:
        """Chances that lookup tokens 0..count-1 after a match of n tokens are accepted: products of the
        acceptance rates of each token given the ones before it. Each rate is estimated from its own
        verifies, shrunk towards the rate of the token before it (LOOKUP_PRIOR for the first), so a draft
        longer than any verified so far inherits the rate of the longest one: a match that has held for a
        while tends to go on holding (a repeat, a loop), which a single rate for all j would miss."""
        values, value, rate = [], 1.0, LOOKUP_PRIOR
        for j in range(count):
            key = (n, j)
            rate = (self.wins.get(key, 0) + PRIOR * rate) / (self.tries.get(key, 0) + PRIOR)
            value *= rate
            values.append(value)
        return values

    def lookup_value(self, n: int, j: int) -> float:
        """The chance that lookup token j after a match of n tokens is accepted (see lookup_values)."""
        return self.lookup_values(n, j + 1)[j]

    def select(self, scored: Scored, looked: list[int], n_match: int, draft_s: float, room: int):
        """Choose the candidates of one verify. scored: the drafter's nodes; looked: the lookup draft (token
        ids continuing the root) after a match of n_match tokens; draft_s: seconds spent drafting; room:
        the most tokens the verify may emit. Returns (parent list, token list, node info) for the nodes
        kept after the root: parents index the kept list (0 = root), and info[i] = (tree node or 0,
        lookup index or -1, value, depth) for the later `learn`."""
        # merge the lookup chain into the scored tree as a trie, node values = max of the two estimates
        value = [min(1.0, v * self.calibration(d)) for v, d in zip(scored.value, scored.depth)]
        parent, token, depth = list(scored.parent), list(scored.token), list(scored.depth)
        tree_node = list(range(1, len(scored) + 1))
        look_j = [-1] * len(scored)
        children = {(p, t): i + 1 for i, (p, t) in enumerate(zip(parent, token))}
        node = 0
        for j, (tok, v) in enumerate(zip(looked, self.lookup_values(n_match, len(looked)))):
            nxt = children.get((node, int(tok)))
            if nxt is None:
                parent.append(node)
                token.append(int(tok))
                depth.append(j + 1)
                value.append(v)
                tree_node.append(0)
                look_j.append(j)
                nxt = children[(node, int(tok))] = len(token)
            else:
                value[nxt - 1] = max(value[nxt - 1], v)
                look_j[nxt - 1] = j
            node = nxt
        # a child is never worth more than its parent (keeps the ranking's prefixes closed under parents)
        for i in range(len(token)):
            if parent[i]:
                value[i] = min(value[i], value[parent[i] - 1])
        order = sorted((i for i in range(len(token)) if depth[i] <= room - 1),
                       key=lambda i: (-value[i], depth[i], i))[:self.max_rows - 1]
        # the long-run rate r (tokens per second so far): a verify's best size maximises its expected tokens
        # minus r x its seconds (Dinkelbach's form of a ratio objective); before any rate is known, its own
        # expected tokens per second
        r = self.rate()
        score = (lambda tokens, sec: tokens - r * sec) if r else (lambda tokens, sec: tokens / sec)
        best_n, best, total = 0, score(1.0, draft_s + self.clock(1)), 1.0
        for n, i in enumerate(order, start=1):
            total += value[i]
            got = score(total, draft_s + self.clock(n + 1))
            if got > best:
                best_n, best = n, got
        keep = sorted(order[:best_n], key=lambda i: (depth[i], i))
        index = {i: r + 1 for r, i in enumerate(keep)}
        parents = [index[parent[i] - 1] if parent[i] else 0 for i in keep]
        info = [(tree_node[i], look_j[i], value[i], depth[i]) for i in keep]
        return parents, [token[i] for i in keep], info

    def learn(self, info, accepted: set, n_match: int) -> None:
        """Update the calibration and lookup statistics from one verify: info as `select` returned it,
        accepted = the kept positions (1-based, into the kept list) on the accepted path."""
        for d in (self.pred, self.hit, self.tries, self.wins):      # older verifies weigh less (a drafter or
            for key in d:                                            # a text that changes is followed)
                d[key] *= STATS_DECAY
        for r, (tree_node, j, value, depth) in enumerate(info, start=1):
            ok = r in accepted
            if tree_node:
                self.pred[depth] = self.pred.get(depth, 0.0) + value
                self.hit[depth] = self.hit.get(depth, 0.0) + ok
            if j >= 0:
                key = (n_match, j)
                self.tries[key] = self.tries.get(key, 0.0) + 1
                self.wins[key] = self.wins.get(key, 0.0) + ok


def medusa_scored(rows: list[torch.Tensor], depth: int, width: int, topk: int, floor: float) -> Scored:
    """Scored nodes from Medusa heads' logits at the last accepted row (rows[d]: head d's logits [vocab]):
    the heads are independent, so a node's confidence is the product of its heads' probabilities; each
    depth expands the `width` best nodes of the one before (those above `floor`) with their head's top-k."""
    s = Scored()
    front = [(0, 1.0)]
    for d in range(min(depth, len(rows))):
        p = torch.softmax(rows[d].float(), -1).topk(topk)
        made = [s.add(node, int(t), v * float(q)) for node, v in front
                for q, t in zip(p.values.tolist(), p.indices.tolist())]
        front = [(n, s.value[n - 1]) for n in sorted(made, key=lambda n: -s.value[n - 1])[:width]
                 if s.value[n - 1] >= floor]
        if not front:
            break
    return s
