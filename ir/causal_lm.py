"""The calling convention of a causal LM graph (frontends/hf.py writes it; slimgraph.decoder drives it).

Inputs `input_ids [b, s]`, `position_ids [b, s]`, `attention_mask: bool [b, 1, s, L + s]` (True = may
attend; L = positions already in the state) and one input per declared state (ir/state.py); outputs
by name (`logits`, ...) plus the states' outputs. One graph serves prefill, decode, left-padded
batches and tree verification, because positions and the mask come from outside.
"""
from __future__ import annotations

import torch

from .state import initial_state

INPUTS = ("input_ids", "position_ids", "attention_mask")


class CausalLMInputError(ValueError):
    pass


def is_causal_lm(graph) -> bool:
    names = {v.name for v in graph.inputs}
    return bool(graph.states) and all(n in names for n in INPUTS)


def check_ids(t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype != torch.long:
        got = (f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__)
        raise CausalLMInputError(f"token ids must be an int64 tensor [batch, seq], got {got}")
    if t.shape[1] == 0:
        raise CausalLMInputError("no tokens given (sequence length 0)")
    return t


def check_left_padding(valid: torch.Tensor, where: str, right: bool = False) -> None:
    """Raises CausalLMInputError unless every row of the prompt mask `valid` [batch, n] (bool) is left
    padding: its zeros (if any) a prefix of the row, then at least one token. A zero anywhere else is a
    hole the convention has no meaning for (sinks_first would take it for a pad and reorder real tokens).
    `right`: zeros may also end a row (one forward, `model(ids, mask)`: HF's right padding, whose pads no
    real token attends to; decoding continues rows from their last column, so it needs left padding)."""
    later = valid.cumsum(1) > 0                                  # True from each row's first token on
    before_end = valid.flip(1).cumsum(1).flip(1) > 0             # True up to each row's last token
    inside = (later & ~valid & (before_end if right else True)).any(1) | ~valid.any(1)
    bad = (inside if right else inside | ~valid[:, -1]).nonzero().flatten().tolist()
    if bad:
        row = valid[bad[0]].to(torch.int).tolist()
        shown = row if len(row) <= 16 else row[:8] + ["..."] + row[-8:]
        allowed = "before a row's first token or after its last" if right else "before a row's first token"
        raise CausalLMInputError(
            f"{where}: attention_mask row {bad[0]} is {shown}: 0s may only stand {allowed} (padding), with at "
            f"least one token per row; drop or fill the positions a 0 marks inside a row" +
            ("" if right else "; decoding needs left padding: pad on the left (tokenizer.padding_side = 'left')"))


def prompt_positions_and_mask(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a left-padded prompt (`valid` [batch, n] bool, False = pad): position ids [batch, n] counting real
    tokens, and the causal mask [batch, n, n] in which nobody attends to a pad and a pad attends to itself."""
    n = valid.shape[1]
    positions = (valid.cumsum(1) - 1).clamp_min(0)
    eye = torch.eye(n, dtype=torch.bool, device=valid.device)
    local = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril() & (valid[:, None, :] | eye)
    return positions, local


def context_dim(graph) -> str | None:
    """The symbol of %attention_mask's last dim when a pass made it one of its own (sparsify-attention and
    linearize-attention rebind `past + seq` to `ctx`: after them the state's rows no longer count the
    positions), else None. It is still the positions before the call + seq (`check_context`)."""
    mask = next((v for v in graph.inputs if v.name == "attention_mask"), None)
    if mask is None or mask.type.rank != 4 or not isinstance(mask.type.shape[3], str):
        return None
    d = mask.type.shape[3]
    return d if d.isidentifier() else None


def check_context(graph, dims: dict[str, int]) -> None:
    """Raises CausalLMInputError when binding `dims` (symbol -> int, every symbol the graph uses) gives the
    context symbol (`context_dim`) a value no call has: ctx = L + seq, where L (the positions before the
    call) is the rows of each `append` state and min(L, window + sinks) rows of each `ring` state."""
    from . import symbolic
    ctx = context_dim(graph)
    if ctx is None or ctx not in dims:
        return
    mask = next(v for v in graph.inputs if v.name == "attention_mask")
    states = [st for st in graph.states if st.kind in ("append", "ring")]
    try:
        seq = symbolic.evaluate(mask.type.shape[2], dims)
        held = [symbolic.evaluate(st.input.type.shape[st.axis], dims) for st in states]
    except (KeyError, ValueError, TypeError):
        return      # a symbol left unbound: specialize names it
    past = dims[ctx] - seq
    for st, rows in zip(states, held):
        keep = st.attrs["window"] + st.attrs["sinks"] if st.kind == "ring" else None
        if keep is not None and rows > keep:
            raise CausalLMInputError(
                f"state {st.name} of graph @{graph.name} is a ring of window + sinks = {keep} rows, bound to hold "
                f"{rows}: a ring never holds more; bind the rows before the call (e.g. past) to at most {keep}")
        if past >= 0 and rows == (past if keep is None else min(past, keep)):
            continue
        raise CausalLMInputError(
            f"{ctx}={dims[ctx]} does not fit graph @{graph.name}: %attention_mask [batch, 1, seq, {ctx}] has a "
            f"column per position before the call and per new token, so {ctx} = the positions before the call "
            f"+ seq, and state {st.name} ({st.kind}) holds {rows} row(s) before the call with seq={seq}: "
            f"bind {ctx}={rows + seq}")
    if past < 0:
        raise CausalLMInputError(f"{ctx}={dims[ctx]} does not fit graph @{graph.name}: {ctx} = the positions "
                                 f"before the call + seq >= seq = {seq}: bind {ctx}={seq} for a call from empty state")


def ring_sinks(graph) -> int:
    """The attention sinks S every `ring` state of `graph` keeps (0: no ring, or rings without sinks).
    Raises CausalLMInputError when rings keep different numbers (sinks_first below needs one S)."""
    got = {s.attrs["sinks"] for s in graph.states if s.kind == "ring"}
    if len(got) > 1:
        raise CausalLMInputError(f"graph @{graph.name}: its ring states keep different numbers of sinks "
                                 f"{sorted(got)}; a left-padded batch needs one")
    return got.pop() if got else 0


def sinks_first(valid: torch.Tensor, sinks: int) -> torch.Tensor | None:
    """For a left-padded prompt batch (`valid` [batch, n] bool) over ring states with `sinks` = S > 0: the
    order [batch, n] (for gather along dim 1) that moves each padded row's pads to just after its first S
    tokens, or None when no row is padded.

    A ring keeps its first S rows (the sinks, StreamingLLM) and its last W rows by index: with the pads in
    front, a padded row's sinks would be pads, and it would decode differently from the same prompt alone.
    With the pads after the first S tokens, the sinks are the row's first S tokens, every later token keeps
    its index distance to the others (the window is exact), and positions (counting tokens) are unchanged.
    Raises CausalLMInputError for a padded row of S tokens or fewer (its sinks would take generated tokens
    that come after the batch's longest prompt)."""
    n = valid.shape[1]
    pads = (~valid).sum(1)
    if not bool(pads.any()):
        return None
    tokens = n - pads
    short = ((tokens <= sinks) & (pads > 0)).nonzero().flatten().tolist()
    if short:
        raise CausalLMInputError(
            f"left-padded prompt row(s) {short} have {tokens[short[0]].item()} token(s), not more than the "
            f"{sinks} attention sinks the model's ring KV states keep: their sinks would be pads or later "
            f"tokens, so they would decode differently from the prompt alone; give such prompts alone or in "
            f"a batch of equal-length prompts")
    i = torch.arange(n, device=valid.device)[None, :]
    p, s = pads[:, None], min(sinks, n)
    # the sink tokens (at p .. p+S-1), then the pads (0 .. p-1), then the rest (p+S ..)
    return torch.where(i < s, i + p, torch.where(i < s + p, i - s, i))


def causal_lm_inputs(graph, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list:
    """The graph inputs of one forward over `input_ids` [batch, seq] from empty state: `model(input_ids)`."""
    ids = check_ids(input_ids)
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor)
                                       or attention_mask.shape != ids.shape):
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise CausalLMInputError(f"model(input_ids, attention_mask): attention_mask must have input_ids' shape "
                                 f"[batch, seq] = {list(ids.shape)} (1 = token, 0 = padding), got {got}")
    valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(torch.bool)
    check_left_padding(valid, "model(input_ids, attention_mask)", right=True)
    sinks = ring_sinks(graph)
    if sinks and not bool(valid.all()):
        raise CausalLMInputError(
            f"graph @{graph.name} keeps {sinks} attention sinks in ring KV states: a left-padded batch in one "
            f"call would make a padded row's sinks pads; decode it with .generate() or slimgraph.decoder."
            f"Decoder, whose prefill places each row's sinks")
    positions, local = prompt_positions_and_mask(valid)
    feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": local[:, None]}
    feeds |= {s.input.name: initial_state(graph, s, ids.shape[0], ids.device) for s in graph.states}
    missing = [v.name for v in graph.inputs if v.name not in feeds]
    if missing:
        raise CausalLMInputError(f"graph @{graph.name} has inputs {missing} that a causal-LM call cannot fill")
    return [feeds[v.name] for v in graph.inputs]
