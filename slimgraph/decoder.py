"""The decoder runtime: owns a compiled causal LM's state and runs prefill, decode steps and verification.

    dec = Decoder(compiled)                       # any target whose runner runs the graph
    out = dec.prefill(ids, attention_mask=mask)   # ids [batch, seq] (left padded where mask is 0)
    out["logits"]                                 # outputs by name: [batch, seq, vocab]
    out = dec.step(next_tokens)                   # [batch] or [batch, n]: n tokens at once
    out = dec.verify(candidates, tree_mask=tm)    # k candidate tokens in ONE forward: logits [batch, k, vocab]
    dec.accept(n)                                 # keep the first n candidates (a chain) ...
    dec.accept(path=[0, 2, 5])                    # ... or the candidates on one path of the tree
    dec.truncate(length)                          # roll the cache back to `length` positions

The contract with the graph (frontends/hf.py writes it): inputs `input_ids [b, s]`, `position_ids [b, s]`,
`attention_mask: bool [b, 1, s, L + s]` (True = may attend; L = cached positions) and one input per declared
state (ir/state.py); outputs by name (`logits`, draft heads' outputs, ...) plus the states' outputs.

Rolling back costs no copy for `append` states (the KV cache is narrowed; a runner whose cache lives in
a growing buffer is told the rows past the new end are free, `Runner.truncate_state`). `ring` and
`fixed` states cannot be narrowed: verify keeps the state it started from (`Runner.keep_state`: a copy
where the runner slides rings in place and so consumes the state a call is given), and accept replays the
accepted tokens from it (one more forward of n tokens).

Left padding: positions count real tokens only, and no query attends to a pad key. A pad query attends
to itself alone (a row with no key would make softmax NaN, and NaN would reach real rows through the
values). Each sequence of a padded batch then computes what it computes alone, up to float rounding. Over ring
states with sinks the prompt's cache slots are reordered per row (ir/causal_lm.py `sinks_first`: its first S tokens, its
pads, the rest; the outputs come back in the caller's layout), so pads never take a row's sink slots.
"""
from __future__ import annotations
from dataclasses import dataclass

import torch

from .ir.causal_lm import (INPUTS, CausalLMInputError, causal_lm_inputs, check_ids, check_left_padding,
                           prompt_positions_and_mask, ring_sinks, sinks_first)
from .ir.state import initial_state

__all__ = ["Decoder", "DecoderError", "causal_lm_inputs"]


DecoderError = CausalLMInputError   # one error type for the runtime and the graph's input convention


@dataclass
class _Pending:
    """What the last verify() added: its start, its candidates and, for replayed kinds, the old state."""
    start: int
    tokens: torch.Tensor           # [batch, k]
    positions: torch.Tensor        # [batch, k]
    tree_mask: torch.Tensor | None
    snapshot: list | None          # state tensors before verify (ring/fixed states present)
    key_valid: torch.Tensor
    next_pos: torch.Tensor


class Decoder:
    def __init__(self, compiled, batch: int = 1, device=None):
        graph = compiled.graph
        names = [v.name for v in graph.inputs]
        missing = [n for n in INPUTS if n not in names]
        if missing or not graph.states:
            raise DecoderError(
                f"the compiled graph @{graph.name} is not a causal LM with declared state: inputs {names[:4]}"
                f"{'...' if len(names) > 4 else ''}, states {[s.name for s in graph.states]}; it needs inputs "
                f"{list(INPUTS)} and at least one state (export it with slimgraph.optimize(causal_lm, ...))")
        self.compiled, self.graph = compiled, graph
        self.runner = compiled.runner
        self._order = names
        self._state_in = {s.input.name: i for i, s in enumerate(graph.states)}
        self._out_index = {v.name: i for i, v in enumerate(graph.outputs)}
        self._state_out = [self._out_index[s.output.name] for s in graph.states]
        self.replays = any(s.kind != "append" for s in graph.states)
        # a model's own sliding window (canonicalize: `attention{window}`) places query i at key index L + i, not
        # at L + depth: the smallest window + sinks such an op has, if any (see verify()). sparsify-attention
        # moves it into the mask, by position (no `window` attr is left): trees then run past it
        self._index_band = min((n.attrs["window"] + n.attrs.get("sinks", 0) for n in graph.nodes
                                if n.op == "attention" and n.attrs.get("window")), default=None)
        self._sinks = ring_sinks(graph)     # a padded prompt's pads go after its first S tokens (prefill)
        seq = next(v for v in graph.inputs if v.name == "input_ids").type.shape[1]
        self._per_position = {v.name for v in graph.outputs if len(v.type.shape) > 1 and v.type.shape[1] == seq}
        self.device = torch.device(device or getattr(self.runner, "device", None) or "cpu")
        from .signature import index_limits
        self._limits = index_limits(graph.inputs)   # ids and learned positions must stay inside their tables
        self.reset(batch)

    # ---- state -----------------------------------------------------------------------------------
    def reset(self, batch: int = 1) -> None:
        """Forget every sequence; start `batch` empty ones."""
        self.batch = batch
        self.states = [initial_state(self.graph, s, batch, self.device) for s in self.graph.states]
        self.key_valid = torch.zeros(batch, 0, dtype=torch.bool, device=self.device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=self.device)
        self._pending: _Pending | None = None

    @property
    def length(self) -> int:
        """Positions in the cache (pads included): the L of the next call's mask."""
        return self.key_valid.shape[1]

    # ---- calls -----------------------------------------------------------------------------------
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
        """Run the prompt `input_ids` [batch, seq] (int64) from empty state. `attention_mask` [batch, seq]
        (1 = token, 0 = left pad) lets prompts of different lengths share a batch. Returns the outputs by name."""
        ids = check_ids(input_ids).to(self.device)
        self.reset(ids.shape[0])
        valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else \
            attention_mask.to(self.device, torch.bool)
        if valid.shape != ids.shape:
            raise DecoderError(f"prefill(): attention_mask {tuple(valid.shape)} must have input_ids' shape {tuple(ids.shape)}")
        check_left_padding(valid, "prefill()")
        order = sinks_first(valid, self._sinks) if self._sinks else None
        if order is not None:       # the cache holds each row's first S tokens as its sinks (ir/causal_lm.py)
            ids, valid = ids.gather(1, order), valid.gather(1, order)
        positions, local = prompt_positions_and_mask(valid)
        out = self._forward(ids, positions, local, valid)
        if order is None:
            return out
        back = order.argsort(1)     # outputs per prompt position come back in the caller's order
        return {k: v.gather(1, back.view(*back.shape, *[1] * (v.dim() - 2)).expand(-1, -1, *v.shape[2:]))
                if k in self._per_position else v for k, v in out.items()}

    def step(self, tokens: torch.Tensor) -> dict:
        """Append `tokens` ([batch] or [batch, n]) after the cache; returns the outputs by name."""
        ids = check_ids(tokens if tokens.dim() == 2 else tokens.reshape(-1, 1)).to(self.device)
        n = ids.shape[1]
        positions = self.next_pos[:, None] if n == 1 else self.next_pos[:, None] + torch.arange(n, device=ids.device)
        local = None if n == 1 else torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
        return self._forward(ids, positions, local, None)

    def tree_ok(self, k: int) -> bool:
        """Whether `verify` takes a candidate TREE of k nodes now (a chain always runs): not on an empty
        cache, nor past a model's own index-placed sliding window (see verify)."""
        return self.length > 0 and (self._index_band is None or self.length + k - 1 <= self._index_band)

    def verify(self, candidates: torch.Tensor, tree_mask: torch.Tensor | None = None) -> dict:
        """Run k candidate tokens [batch, k] in one forward and return their outputs (`logits` [batch, k, vocab]).

        Without `tree_mask` the candidates are a chain (each follows the previous one). With `tree_mask`
        ([k, k] bool, row i True at i and its ancestors) they are a tree: candidate i sits at depth
        (ancestors) and sees only its ancestors. Call `accept` next: the cache holds all k until then."""
        ids = check_ids(candidates).to(self.device)
        k = ids.shape[1]
        if tree_mask is None:
            local = torch.ones(k, k, dtype=torch.bool, device=ids.device).tril()
        else:
            local = tree_mask.to(self.device, torch.bool)
            if local.shape != (k, k) or not bool(local.diagonal().all()) or bool(local.triu(1).any()):
                raise DecoderError(f"verify(): tree_mask must be [k, k] = [{k}, {k}] with True on the diagonal and "
                                   f"only ancestors (earlier candidates) below it; got {tuple(local.shape)}")
        depth = local.sum(1) - 1
        if self.length == 0 and not bool((depth == torch.arange(k, device=depth.device)).all()):
            # the graph tells a prompt from candidates by the cache length: at L = 0 it counts slots by index
            # (a prompt's left pads share position 0), so windows and blocks would not see the tree's depths
            raise DecoderError("verify(): a candidate tree needs a prefilled sequence (the cache is empty); "
                               "call prefill() first, or verify a chain (tree_mask=None)")
        if (self._index_band is not None and self.length + k - 1 > self._index_band
                and not bool((depth == torch.arange(k, device=depth.device)).all())):
            # past the band, node i at depth < i would lose keys between L + depth - window and L + i - window
            raise DecoderError(f"verify(): a candidate tree past the model's own sliding window (attention{{window}}, "
                               f"a query sees the {self._index_band} keys before it, sinks included, placed by index; the cache holds "
                               f"{self.length} + {k} candidates) would drop keys its nodes see; verify a chain "
                               f"(tree_mask=None) on this model, or compile it with sparsify-attention, which places the model's "
                               f"window by position)")
        positions = self.next_pos[:, None] + depth
        snapshot = [self.runner.keep_state(t) for t in self.states] if self.replays else None
        self._pending = None
        pending = _Pending(self.length, ids, positions, tree_mask, snapshot, self.key_valid, self.next_pos)
        out = self._forward(ids, positions, local, None)
        self._pending = pending
        return out

    def accept(self, n: int | None = None, path=None) -> None:
        """Keep the first `n` verified candidates (a chain), or the candidates at indices `path` (a root-to-node
        path of the tree, in order: each one's ancestors are the ones before it); the rest leave the cache as if
        never run. Answers the verify() just before it: any call in between keeps all the candidates."""
        p = self._pending
        if p is None:
            raise DecoderError("accept() follows verify() (with no other call between them: a step or verify "
                               "after verify keeps its candidates); there is nothing to accept")
        if n is None and path is None:
            raise DecoderError("accept() needs n (keep the first n candidates of a chain) or path (the candidates "
                               "on one root-to-node path of the tree)")
        if n is not None and path is not None:
            raise DecoderError(f"accept({n}, path={list(path)}): give either n or path")
        k = p.tokens.shape[1]
        idx = list(range(n)) if path is None else [int(i) for i in path]
        if path is None and not 0 <= n <= k:
            raise DecoderError(f"accept({n}): verify ran {k} candidates")
        if any(not 0 <= i < k for i in idx) or len(set(idx)) != len(idx):
            raise DecoderError(f"accept(path={idx}): indices must be distinct and in 0..{k - 1}")
        seen = (torch.ones(k, k, dtype=torch.bool).tril() if p.tree_mask is None else p.tree_mask.bool().cpu())
        for j, i in enumerate(idx):   # node i's ancestors (and itself) must be exactly the path up to it
            if set(seen[i].nonzero().flatten().tolist()) != set(idx[:j + 1]):
                what = "chain (its paths are its prefixes: accept(n))" if p.tree_mask is None else "tree"
                raise DecoderError(f"accept(path={idx}): not a root-to-node path of the verified {what}: candidate "
                                   f"{i} was verified after candidates {seen[i].nonzero().flatten().tolist()[:-1]}")
        self._pending = None
        if self.replays:    # ring / fixed states: replay the accepted tokens from the state before verify
            self.states, self.key_valid, self.next_pos = list(p.snapshot), p.key_valid, p.next_pos
            if idx:
                self.step(p.tokens[:, idx])
            return
        contiguous = idx == list(range(len(idx)))
        if not contiguous:      # a tree path: move its rows to the front of the verified block, then truncate
            rows = torch.tensor(idx, device=self.device) + p.start
            for i, s in enumerate(self.graph.states):
                t, ax = self.states[i], s.axis % self.states[i].dim()
                t.narrow(ax, p.start, len(idx)).copy_(t.index_select(ax, rows))
        self.truncate(p.start + len(idx))
        self.next_pos = p.next_pos + len(idx)

    def truncate(self, length: int) -> None:
        """Roll every sequence back to its first `length` cache positions (no copy for append states)."""
        if not 0 <= length <= self.length:
            raise DecoderError(f"truncate({length}): the cache holds {self.length} positions")
        if self.replays:
            raise DecoderError("truncate(): ring and fixed states cannot be rolled back by position; "
                               "use verify()/accept(), which replay from the state before verify")
        drop = self.key_valid[:, length:].sum(1)
        for i, s in enumerate(self.graph.states):
            self.states[i] = self.runner.truncate_state(self.states[i], s.axis, length)
        self.key_valid = self.key_valid[:, :length]
        self.next_pos = self.next_pos - drop
        self._pending = None

    # ---- one forward -----------------------------------------------------------------------------
    def _forward(self, ids, positions, local, new_valid) -> dict:
        b, n = ids.shape
        self._pending = None    # a call after verify() keeps its candidates: nothing is left to accept
        if b != self.batch:
            raise DecoderError(f"this decoder holds {self.batch} sequences; got tokens for {b}")
        added = n    # positions the call adds per sequence: n, or the valid ones of a padded prompt
        if new_valid is None:
            new_valid = torch.ones(b, n, dtype=torch.bool, device=ids.device)
        else:
            added = new_valid.sum(1)
        valid = torch.cat((self.key_valid, new_valid), 1)
        if local is None:       # one token: it sees every valid key and itself
            mask = valid[:, None, None, :]
        else:
            past = self.key_valid[:, None, None, :].expand(b, 1, n, self.length)
            local = local[:, None] if local.dim() == 3 else local   # [batch, n, n] (prompt) or [n, n]
            mask = torch.cat((past, local.expand(b, 1, n, n)), 3)
        feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": mask}
        args = [feeds[name] if name in feeds else self.states[self._state_in[name]] for name in self._order]
        if self._limits:   # token ids (given by the caller) and positions (past a learned table's end) in range
            from .signature import check_index_range
            check_index_range(self._limits, args, self.graph.inputs)
        outs = self.runner(*args)      # inputs built here, by construction of the right types: no per-call check
        self.states = [outs[j] for j in self._state_out]
        self.key_valid = valid
        self.next_pos = self.next_pos + added
        state_outs = set(self._state_out)
        return {name: outs[j] for name, j in self._out_index.items() if j not in state_outs}
