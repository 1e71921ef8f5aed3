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


def prompt_positions_and_mask(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a left-padded prompt (`valid` [batch, n] bool, False = pad): position ids [batch, n] counting real
    tokens, and the causal mask [batch, n, n] in which nobody attends to a pad and a pad attends to itself."""
    n = valid.shape[1]
    positions = (valid.cumsum(1) - 1).clamp_min(0)
    eye = torch.eye(n, dtype=torch.bool, device=valid.device)
    local = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril() & (valid[:, None, :] | eye)
    return positions, local


def causal_lm_inputs(graph, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list:
    """The graph inputs of one forward over `input_ids` [batch, seq] from empty state: `model(input_ids)`."""
    ids = check_ids(input_ids)
    valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(torch.bool)
    positions, local = prompt_positions_and_mask(valid)
    feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": local[:, None]}
    feeds |= {s.input.name: initial_state(graph, s, ids.shape[0], ids.device) for s in graph.states}
    missing = [v.name for v in graph.inputs if v.name not in feeds]
    if missing:
        raise CausalLMInputError(f"graph @{graph.name} has inputs {missing} that a causal-LM call cannot fill")
    return [feeds[v.name] for v in graph.inputs]
