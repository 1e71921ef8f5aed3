"""Token generation for compiled causal LMs, on the decoder runtime (slimgraph/decoder.py).

    ids = slimgraph.generate.generate(compiled, input_ids, max_new_tokens=64, eos_token_id=2)
    ids = generate(compiled, padded_ids, 64, attention_mask=mask)     # prompts of different lengths
    compiled.last_generate_stats.decode_tokens_per_s

Prefill runs the prompt from empty state; each decode step runs the last token. Greedy output
matches `model.generate(..., do_sample=False)` of the source model (same argmax, same eos handling);
a left-padded batch generates what each prompt generates alone.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch



@dataclass
class GenerateStats:
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float
    verifies: int = 0           # speculative decoding: verify forwards (0 for plain decoding)
    speculative: str | None = None

    @property
    def mean_acceptance(self) -> float:
        """Speculative decoding: tokens emitted per verify forward (the first token comes from prefill); NaN
        when no verify ran (plain decoding, or max_new_tokens <= 1)."""
        return (self.new_tokens - 1) / self.verifies if self.verifies else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        # the first new token comes from prefill; decode steps produce the rest
        steps = self.new_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else float("nan")

    @property
    def prefill_ms(self) -> float:
        return self.prefill_s * 1e3


class GenerateError(ValueError):
    pass


def generate(compiled, input_ids: torch.Tensor, max_new_tokens: int, *, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, eos_token_id=None, streamer=None,
             generator: torch.Generator | None = None, attention_mask: torch.Tensor | None = None,
             speculative=None, tree=None, lookup: int = 0) -> torch.Tensor:
    """Return prompt + new token ids ([batch, prompt + n], n <= max_new_tokens), like HF generate.

    `attention_mask` [batch, prompt] (1 = token, 0 = left pad) lets prompts of different lengths share
    a batch, as HF's left padding does.

    Generation stops early once every sequence has produced an eos token; sequences that
    finished earlier are padded with the (first) eos id, as HF does when pad = eos.
    `streamer` follows HF's protocol: `put(prompt)`, `put(token)` per step, then `end()`.
    Timing is stored on `compiled.last_generate_stats` (a GenerateStats).

    `speculative`: None (default) decodes speculatively with the graph's draft heads when it has them
    (Medusa `draft_logits_*` outputs or EAGLE weights, passes/draft_heads.py) for batch 1 (else plainly):
    greedy, a dynamic tree; sampled, a chain. "chain" or True, "tree" (greedy only) ask for it; False never.
    `tree`: "dynamic" (the default) sizes each verify's tree from the drafts' confidences and this model's
    measured verify cost (slimgraph/dynamic_tree.py: on a CPU, where every verified row costs, a tree the
    drafts cannot pay for shrinks to plain steps), or a fixed tree as paths of top-k ranks
    (slimgraph.speculative.DEFAULT_TREE is a Medusa-style one). Greedy: the output is the greedy output
    either way. Sampling (chain): the rejection rule keeps the distribution of plain sampling
    (slimgraph/speculative.py).
    `lookup`: up to this many tokens per verify (and a verify's candidates at most speculative.MAX_VERIFY = 64)
    drafted by prompt lookup (slimgraph.speculative.NgramIndex:
    what followed the last earlier occurrence of the context's final n-gram), one more candidate branch
    beside the heads' (greedy, batch 1); on a model without draft heads, the only draft (no training).
    """
    _check_args(compiled, input_ids, max_new_tokens, temperature, top_k)
    if (isinstance(attention_mask, torch.Tensor) and attention_mask.shape == input_ids.shape
            and bool(attention_mask.bool().all())):
        attention_mask = None    # no pads (a tokenizer's mask of ones): one plain prompt per row, as without it
    _check_positions(compiled, input_ids, max_new_tokens, attention_mask)
    mode = _speculative_mode(compiled, speculative, do_sample, input_ids, attention_mask, lookup, tree)
    if tree is not None and mode != "tree":
        raise GenerateError(f"generate(): tree= is used by speculative='tree' only (this call decodes "
                            f"{'plainly' if mode is None else 'a chain'}); pass speculative='tree' or drop tree=")
    if mode is not None:
        sample = (lambda lg: _probs(lg, temperature, top_k), generator) if do_sample else None
        if input_ids.shape[0] > 1 or attention_mask is not None:
            return _generate_speculative_batch(compiled, input_ids, max_new_tokens, attention_mask, eos_token_id,
                                               streamer, sample)
        return _generate_speculative(compiled, input_ids, max_new_tokens, mode,
                                     "dynamic" if mode == "tree" and tree is None else tree, eos_token_id, streamer,
                                     sample, lookup)
    eos = _eos_tensor(eos_token_id, input_ids.device)
    batch, prompt_len = input_ids.shape
    ids = torch.empty(batch, prompt_len + max_new_tokens, dtype=torch.long, device=input_ids.device)
    ids[:, :prompt_len] = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    pick = _sampler(do_sample, temperature, top_k, generator)
    if streamer is not None:
        streamer.put(input_ids.cpu())

    with torch.inference_mode():
        t0 = time.perf_counter()
        dec = compiled.decoder(batch)
        n, t1 = 0, t0
        for n in range(1, max_new_tokens + 1):
            if n == 1:
                logits = dec.prefill(input_ids, attention_mask)["logits"]
            else:
                logits = dec.step(ids[:, prompt_len + n - 2])["logits"]
            token = pick((logits[:, -1] if logits.dim() == 3 else logits).to(input_ids.device))
            if eos is not None:
                token = torch.where(finished, eos[0], token)
                finished |= torch.isin(token, eos)
            ids[:, prompt_len + n - 1] = token
            if n == 1:
                t1 = time.perf_counter()
            if streamer is not None:
                streamer.put(token.cpu())
            if eos is not None and bool(finished.all()):
                break
        t2 = time.perf_counter()
    if streamer is not None:
        streamer.end()
    stats = GenerateStats(prompt_len, n, t1 - t0, t2 - t1)
    compiled.last_generate_stats = stats
    return ids[:, :prompt_len + n].contiguous()  # a copy only when stopped early with batch > 1


def _rows(input_ids, attention_mask) -> str:
    b = input_ids.shape[0]
    return f"batch {b}" + (" with left padding (attention_mask)" if attention_mask is not None else "")


def _speculative_mode(compiled, speculative, do_sample, input_ids, attention_mask, lookup=0, tree=None):
    from .speculative import num_heads
    import operator
    given = lookup
    try:
        if isinstance(lookup, bool):
            raise TypeError
        lookup = operator.index(lookup)
    except TypeError:
        lookup = -1
    if lookup < 0:
        raise GenerateError(f"generate(): lookup={given!r}; give the number of prompt-lookup draft tokens "
                            f"per verify (an int >= 0, e.g. 8; 0 = off)")
    if tree is not None and (input_ids.shape[0] != 1 or attention_mask is not None):
        raise GenerateError(f"generate(): tree= is for one prompt (batch 1, no padding), got "
                            f"{_rows(input_ids, attention_mask)}; a batch verifies chains: drop tree=")
    if lookup:
        if speculative is False:
            raise GenerateError("generate(): lookup drafting is speculative decoding; drop speculative=False")
        if do_sample:
            raise GenerateError("generate(): lookup drafting is greedy only; use do_sample=False or lookup=0")
        if input_ids.shape[0] != 1 or attention_mask is not None:
            raise GenerateError(f"generate(): lookup drafting runs one prompt (batch 1, no padding), got "
                                f"{_rows(input_ids, attention_mask)}")
    if speculative is None:
        plain = (input_ids.shape[0] != 1 or attention_mask is not None
                 or not (num_heads(compiled.graph) or lookup))
        if plain:
            return None
        # greedy: a tree (the dynamic one unless `tree` says otherwise); lookup alone: a chain unless a tree is asked
        return "tree" if not do_sample and (num_heads(compiled.graph) or tree is not None) else "chain"
    if speculative is False:
        return None
    mode = "chain" if speculative is True else speculative
    if mode not in ("chain", "tree"):
        raise GenerateError(f"generate(): speculative={speculative!r}; use None (auto), False, True/'chain' or 'tree'")
    if do_sample and mode == "tree":
        raise GenerateError("generate(): sampling (do_sample=True) verifies a chain of drafts; use "
                            "speculative='chain' (the tree is greedy only)")
    if mode == "tree" and (input_ids.shape[0] != 1 or attention_mask is not None):
        raise GenerateError(f"generate(): the speculative tree runs one prompt (batch 1, no padding), got "
                            f"{_rows(input_ids, attention_mask)}; a batch verifies chains: use speculative='chain'")
    if not num_heads(compiled.graph) and not (lookup and (mode == "chain" or tree is None or _is_dynamic(tree))):
        if lookup:
            raise GenerateError("generate(): a speculative tree of ranks needs draft heads; lookup alone drafts a "
                                "chain or a dynamic tree: use speculative='chain', or tree='dynamic'")
        raise GenerateError("generate(): speculative decoding needs draft heads: compile with a pipeline "
                            "containing 'insert-draft-heads{num_heads=4}' and train them (slimgraph.train_draft_heads)"
                            + ("" if mode == "tree" else ", or draft by prompt lookup (lookup=8)"))
    return mode


def _is_dynamic(tree) -> bool:
    return isinstance(tree, str) and tree == "dynamic"


def _generate_speculative(compiled, input_ids, max_new_tokens, mode, tree, eos_token_id, streamer, sample=None,
                          lookup=0):
    from . import speculative
    eos = _eos_tensor(eos_token_id, input_ids.device)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    put = None if streamer is None else (lambda tok: streamer.put(torch.tensor([tok])))
    with torch.inference_mode():
        t0 = time.perf_counter()
        dec = compiled.decoder(1)
        try:
            new, verifies, t1 = speculative.run(dec, input_ids, max_new_tokens, mode=mode, tree=tree, eos=eos,
                                                on_token=put, sample=sample, lookup=lookup)
        except speculative.SpeculativeError as e:
            raise GenerateError(f"generate(): {e}") from None
        t2 = time.perf_counter()
    if streamer is not None:
        streamer.end()
    compiled.last_generate_stats = GenerateStats(input_ids.shape[1], len(new), t1 - t0, t2 - t1, verifies,
                                                 _label(compiled, mode, lookup))
    return torch.cat((input_ids, torch.tensor([new], dtype=torch.long, device=input_ids.device)), 1)


def _label(compiled, mode, lookup) -> str:
    """GenerateStats.speculative: 'chain' / 'tree' (heads), '+lookup' with prompt lookup, 'lookup' alone."""
    from .speculative import num_heads
    if not lookup:
        return mode
    return f"{mode}+lookup" if num_heads(compiled.graph) else "lookup"


def _generate_speculative_batch(compiled, input_ids, max_new_tokens, attention_mask, eos_token_id, streamer, sample):
    """Chains for a batch (slimgraph.speculative.run_batch), then eos as plain generate() applies it."""
    from . import speculative
    eos = _eos_tensor(eos_token_id, input_ids.device)
    with torch.inference_mode():
        t0 = time.perf_counter()
        dec = compiled.decoder(input_ids.shape[0])
        try:
            new, verifies, t1 = speculative.run_batch(dec, input_ids, max_new_tokens, attention_mask=attention_mask,
                                                      sample=sample)
        except speculative.SpeculativeError as e:
            raise GenerateError(f"generate(): {e}") from None
        t2 = time.perf_counter()
    n = new.shape[1]
    if eos is not None and n:
        hit = torch.isin(new, eos)
        done = hit.long().cumsum(1) > 0                                  # at or after the row's first eos
        after = torch.cat((torch.zeros_like(done[:, :1]), done[:, :-1]), 1)
        new = torch.where(after, eos[0], new)
        all_done = done.all(0)
        if bool(all_done.any()):
            n = int(all_done.long().argmax()) + 1                       # plain generate stops here
            new = new[:, :n]
    if streamer is not None:
        streamer.put(input_ids.cpu())
        for j in range(n):
            streamer.put(new[:, j].cpu())
        streamer.end()
    compiled.last_generate_stats = GenerateStats(input_ids.shape[1], n, t1 - t0, t2 - t1, verifies, "chain")
    return torch.cat((input_ids, new.to(input_ids.device)), 1)


def _check_args(compiled, input_ids, max_new_tokens, temperature, top_k):
    if not compiled.graph.states:
        raise GenerateError("generate() needs a compiled causal LM (a graph with declared state, e.g. its KV "
                            "cache): optimize a transformers causal LM (slimgraph.optimize(model, (ids,)))")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        got = (f"{input_ids.dtype} tensor of shape {tuple(input_ids.shape)}"
               if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__)
        raise GenerateError(f"generate(): input_ids must be an int64 tensor [batch, seq], got {got}; "
                            "use tokenizer(..., return_tensors='pt').input_ids")
    if input_ids.shape[1] == 0:
        raise GenerateError("generate(): the prompt is empty; pass at least one token")
    if isinstance(max_new_tokens, bool) or not hasattr(max_new_tokens, "__index__") or max_new_tokens < 0:
        raise GenerateError(f"generate(): max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise GenerateError(f"generate(): temperature must be a finite number > 0, got {temperature!r}; "
                            "use do_sample=False for greedy decoding")
    if top_k is not None and top_k < 1:
        raise GenerateError(f"generate(): top_k must be >= 1 or None, got {top_k}")


def _check_positions(compiled, input_ids, max_new_tokens, attention_mask):
    """A model with learned positions (a table indexed by position_ids, GPT-2's wpe) has a hard context limit:
    refuse, before decoding, a prompt + max_new_tokens whose positions do not fit (the last new token needs
    none: it is read off the logits of the one before)."""
    from .signature import index_limits
    names = [v.name for v in compiled.graph.inputs]
    limit = next(((rows, table) for i, rows, table in index_limits(compiled.graph.inputs)
                  if names[i] == "position_ids"), None)
    if limit is None or max_new_tokens == 0:
        return
    rows, table = limit
    prompt = int(attention_mask.sum(1).max()) if attention_mask is not None else input_ids.shape[1]
    if prompt + max_new_tokens - 1 > rows:
        raise GenerateError(f"generate(): {prompt} prompt tokens + max_new_tokens {max_new_tokens} = "
                            f"{prompt + max_new_tokens} tokens need positions up to {prompt + max_new_tokens - 2}, "
                            f"but the model has {rows} learned positions (@{table}: its context limit); use "
                            f"max_new_tokens <= {rows - prompt + 1}")


def _eos_tensor(eos_token_id, device):
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.long, device=device) if ids else None


def _probs(logits, temperature, top_k):
    """Sampling distribution [m, vocab] of logits [m, vocab]: temperature, then top-k, then softmax."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, dim=-1)


def _sampler(do_sample, temperature, top_k, generator):
    if not do_sample:
        return lambda logits: logits.argmax(-1)

    def sample(logits):
        return torch.multinomial(_probs(logits, temperature, top_k), 1, generator=generator).squeeze(-1)
    return sample


class TokenClock:
    """An HF-style streamer (`put`/`end`) that timestamps tokens, so decode speed can be measured inside
    `model.generate(..., streamer=clock)` of transformers exactly as for slimgraph's generate."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, _):
        self.times.append(time.perf_counter())

    def end(self):
        self.times.append(time.perf_counter())

    def prefill_s(self) -> float:
        return self.times[1] - self.times[0]  # times: [prompt, token 1 (end of prefill), ..., token n, end]

    def decode_tokens_per_s(self) -> float:
        return (len(self.times) - 3) / (self.times[-1] - self.times[1])
