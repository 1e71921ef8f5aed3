"""Train a compiled causal LM's draft heads (passes/draft_heads.py) by self-distillation.

    fast = slimgraph.optimize(model, (ids,), pipeline="...,insert-draft-heads{num_heads=4}")
    report = slimgraph.train_draft_heads(fast, tokenizer=tok, time_budget_s=300)   # calib split prompts
    fast.generate(ids, 128)           # speculative: drafts from the heads, verified by the base model

Medusa-1 self-distillation (Cai et al. 2024, arXiv:2401.10774, section 3.2): the base model generates
its own greedy continuation of real text; teacher-forced on that sequence, head i at position t learns
the base model's token at t + i + 2 (head 0: the token after the next one), with cross-entropy. The base
is frozen: its last hidden states (`hidden_states` output) are computed once by the compiled graph
itself (the same target and pipeline, int4 included), and only the heads' [hidden, hidden] weights are
trained (torch autograd, Adam) through the model's own lm_head, on the cached hidden states. The
trained weights are written into the graph (`draft_heads.<i>.weight`), so `save`/`load` keep them,
and the runner is built again from the graph.

Deterministic for a given seed (generation is greedy; batches are drawn from a seeded generator).
Costs: one greedy generation over the prompts plus one forward per sequence, then `steps` head-only
updates over B positions x K heads x vocab.
"""
from __future__ import annotations
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .ir.registry import get_op


class DraftTrainingError(ValueError):
    pass


@dataclass
class DraftTrainReport:
    heads: int
    sequences: int
    positions: int
    steps: int
    seconds: float                 # wall seconds of head updates
    data_seconds: float            # wall seconds of data preparation (generation + hidden states)
    cpu_seconds: float = 0.0       # CPU seconds of this process (all threads, time.process_time) for the updates
    data_cpu_seconds: float = 0.0  # ... and for data preparation
    loss: list[float] = field(default_factory=list)          # per step, mean over heads
    heldout_top1: list[float] = field(default_factory=list)  # per head, on held-out positions (before: untrained)
    heldout_top1_before: list[float] = field(default_factory=list)

    def __str__(self):
        acc = ", ".join(f"{a:.2f}" for a in self.heldout_top1)
        before = ", ".join(f"{a:.2f}" for a in self.heldout_top1_before)
        return (f"draft heads: {self.heads} heads, {self.sequences} sequences ({self.positions} positions), "
                f"{self.steps} steps in {self.seconds:.0f} s wall / {self.cpu_seconds:.0f} s CPU (+{self.data_seconds:.0f} s "
                f"wall / {self.data_cpu_seconds:.0f} s CPU data); held-out top-1 "
                f"per head [{acc}] (untrained [{before}]); loss {self.loss[0]:.2f} -> {self.loss[-1]:.2f}"
                if self.loss else f"draft heads: no training steps ran")


def head_weight_names(graph) -> list[str]:
    names = [f"draft_heads.{i}.weight" for i in range(64) if f"draft_heads.{i}.weight" in graph.weights]
    if not names and "draft_heads.eagle.config" in graph.weights:
        return ["draft_heads.eagle.config"]
    if not names:
        raise DraftTrainingError(f"graph @{graph.name} has no draft heads: compile it with a pipeline containing "
                                 f"'insert-draft-heads{{num_heads=4}}'")
    return names


def prompt_ids(tokenizer, texts=None, *, n: int = 64, prompt_tokens: int = 32, split: str = "calib") -> torch.Tensor:
    """i64[n, prompt_tokens] prompts: consecutive windows of `texts` (str or list of str; default: the
    shipped `split` of slimgraph/data via slimgraph.evaluate)."""
    from .evaluate import token_ids
    text = texts if isinstance(texts, str) or texts is None else "\n\n".join(texts)
    return token_ids(tokenizer, split=split, n=n, seq=prompt_tokens, text=text)


def lm_head_matrix(graph):
    """The frozen lm_head as (W [vocab, hidden] float, bias [vocab] or None). Works for linear and qlinear
    heads (int8/int4 are dequantized once): W is recovered by applying the head to the identity."""
    outs = {v.name: v for v in graph.outputs}
    node = outs["logits"].producer
    args = [_const(v) for v in node.inputs[1:]]
    op = get_op(node.op)
    d = node.inputs[0].type.shape[-1]
    with torch.no_grad():
        bias = op.run(torch.zeros(1, d), *args, **node.attrs)[0].float()
        w = (op.run(torch.eye(d), *args, **node.attrs).float() - bias).T.contiguous()   # [vocab, hidden]
    return w, (bias if bool(bias.abs().max() > 0) else None)


def lm_head_function(graph):
    """The frozen lm_head as a differentiable function of the hidden state: x [..., hidden] -> logits."""
    w, bias = lm_head_matrix(graph)
    return lambda x: F.linear(x, w, bias)


def _const(v):
    """A value computed from weights alone (e.g. a dequantized weight)."""
    if v.is_weight:
        return v.tensor
    p = v.producer
    if p is None:
        raise DraftTrainingError(f"the lm_head reads %{v.name}, which is not computed from weights")
    out = get_op(p.op).run(*[_const(x) for x in p.inputs], **p.attrs)
    return out[p.outputs.index(v)] if isinstance(out, (tuple, list)) else out


def _bar(total, desc, progress):
    if not progress:
        return None
    from .ir import progress as bars
    return None if bars.quiet() else bars.bar(total, desc, enabled=True, delay=0)


def self_distillation_data(compiled, prompts: torch.Tensor, new_tokens: int, *, gen_batch: int = 16,
                           progress: bool = True):
    """Greedy continuations of `prompts` [n, p] by the compiled model and its last hidden states over them:
    (sequences i64[n, p + new_tokens], hidden f32[n, p + new_tokens, hidden])."""
    from .generate import generate
    seqs, hidden = [], []
    bar = _bar(len(prompts), "draft data", progress)
    for i in range(0, len(prompts), gen_batch):
        chunk = prompts[i:i + gen_batch]
        s = generate(compiled, chunk, new_tokens, eos_token_id=None, speculative=False)
        dec = compiled.decoder(batch=1)
        for row in s:
            with torch.inference_mode():
                hidden.append(dec.prefill(row[None])["hidden_states"][0].float().clone())
            if bar is not None:
                bar.update(1)
        seqs.append(s)
    if bar is not None:
        bar.close()
    return torch.cat(seqs), torch.stack(hidden)


def train_draft_heads(compiled, texts=None, *, tokenizer=None, prompts: torch.Tensor | None = None,
                      num_prompts: int = 64, prompt_tokens: int = 32, new_tokens: int = 96,
                      steps: int = 2000, time_budget_s: float | None = 300.0, cpu_budget_s: float | None = None,
                      batch_positions: int = 256,
                      lr: float = 1e-3, seed: int = 0, heldout: float = 0.1, progress: bool = True,
                      draft_vocab: int = 8192, data=None) -> DraftTrainReport:
    """Self-distil the draft heads of `compiled` (a CompiledModel whose pipeline ran insert-draft-heads).

    Prompts: `prompts` i64[n, p], or `num_prompts` windows of `prompt_tokens` tokens of `texts` (str or list of
    str; default the shipped calibration split) tokenized with `tokenizer`. The base model continues each
    prompt greedily by `new_tokens`; head i at position t (from the prompt's last token on) is trained to
    predict the base's token at t + i + 2. Stops after `steps` updates, `time_budget_s` wall seconds or
    `cpu_budget_s` CPU seconds of this process (time.process_time: all its threads; on a shared machine the
    fair budget) of training, data preparation not included, whichever comes first. Trained weights go into
    `compiled.graph` and the runner is rebuilt; returns a DraftTrainReport (held-out top-1 per head).

    EAGLE heads (`kind=eagle`): see `train_eagle` (`draft_vocab` = size of its draft vocabulary).
    `data`: (sequences, hidden states) from `self_distillation_data` of the same base, to reuse (e.g. for
    Medusa and EAGLE heads on one base); `prompts` must then be the prompts it was made from."""
    graph = compiled.graph
    names = head_weight_names(graph)
    if "hidden_states" not in {v.name for v in graph.outputs}:
        raise DraftTrainingError("the compiled graph has draft heads but no 'hidden_states' output; "
                                 "compile it with insert-draft-heads (which adds it)")
    if prompts is None:
        if tokenizer is None:
            raise DraftTrainingError("train_draft_heads(): pass `prompts` (token ids) or a `tokenizer` for `texts`")
        prompts = prompt_ids(tokenizer, texts, n=num_prompts, prompt_tokens=prompt_tokens)
    if not isinstance(prompts, torch.Tensor) or prompts.dim() != 2 or prompts.dtype != torch.long:
        raise DraftTrainingError("train_draft_heads(): prompts must be an int64 tensor [n, prompt_tokens]")
    eagle = names == ["draft_heads.eagle.config"]
    k = len(names)
    t0, c0 = time.perf_counter(), time.process_time()
    seqs, hidden = data if data is not None else self_distillation_data(compiled, prompts, new_tokens,
                                                                         progress=progress)
    p, total = prompts.shape[1], seqs.shape[1]
    if eagle:
        data = (seqs, hidden, p, time.perf_counter() - t0, time.process_time() - c0)
        report = train_eagle(graph, *data, steps=steps, time_budget_s=time_budget_s, cpu_budget_s=cpu_budget_s,
                             lr=lr, seed=seed, heldout=heldout, progress=progress, draft_vocab=draft_vocab,
                             batch_positions=batch_positions)
        rebuild_runner(compiled)
        return report
    # targets[n, t, i] = token at t + i + 2 for t >= p - 1 (the continuation), else ignored (-100)
    targets = torch.full((len(seqs), total, k), -100, dtype=torch.long)
    for i in range(k):
        targets[:, p - 1:total - i - 2, i] = seqs[:, p + i + 1:]
    keep = (targets[..., 0] >= 0)
    h_all, y_all = hidden[keep], targets[keep]                 # [M, hidden], [M, k]
    data_s, data_cpu = time.perf_counter() - t0, time.process_time() - c0

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(h_all), generator=gen)
    n_held = max(1, int(len(order) * heldout)) if heldout > 0 else 0
    held, train = order[:n_held], order[n_held:]
    head = lm_head_function(graph)
    ws = [torch.nn.Parameter(graph.weights[n].tensor.detach().float().clone()) for n in names]
    opt = torch.optim.Adam(ws, lr=lr)

    def head_logits(h, i):
        return head(h + F.silu(F.linear(h, ws[i])))

    def top1(idx):
        if len(idx) == 0:
            return []
        with torch.no_grad():
            h, y = h_all[idx], y_all[idx]
            return [float((head_logits(h, i).argmax(-1) == y[:, i])[y[:, i] >= 0].float().mean()) for i in range(k)]

    before = top1(held)
    def loss_fn():
        idx = train[torch.randint(0, len(train), (batch_positions,), generator=gen)]
        h, y = h_all[idx], y_all[idx]
        return sum(F.cross_entropy(head_logits(h, i), y[:, i], ignore_index=-100) for i in range(k)) / k

    losses, step, seconds, cpu = _optimize(opt, loss_fn, steps, time_budget_s, cpu_budget_s,
                                           _bar(steps, "draft heads", progress))
    for n, w in zip(names, ws):
        graph.weights[n].tensor = w.detach().to(graph.weights[n].tensor.dtype).clone()
    rebuild_runner(compiled)
    return DraftTrainReport(k, len(seqs), len(h_all), step, seconds, data_s, cpu, data_cpu, losses, top1(held),
                            before)


def rebuild_runner(compiled) -> None:
    """Build the compiled model's target again from its (changed) graph weights."""
    from .targets.base import get_target
    compiled.runner = get_target(compiled.target).compile(compiled.graph)


def _optimize(opt, loss_fn, steps, time_budget_s, cpu_budget_s, bar):
    """Run `opt` on `loss_fn()` until `steps` updates, `time_budget_s` wall seconds or `cpu_budget_s` CPU
    seconds (time.process_time); returns (losses, steps done, wall seconds, CPU seconds)."""
    losses, t1, c1, step = [], time.perf_counter(), time.process_time(), 0
    while (step < steps and (time_budget_s is None or time.perf_counter() - t1 < time_budget_s)
           and (cpu_budget_s is None or time.process_time() - c1 < cpu_budget_s)):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if bar is not None:
        bar.close()
    return losses, step, time.perf_counter() - t1, time.process_time() - c1


def train_eagle(graph, seqs, hidden, prompt_len, data_s, data_cpu, *, steps, time_budget_s, cpu_budget_s, lr,
                seed, heldout, progress, draft_vocab=8192, batch_positions=256, w_ce=0.1) -> DraftTrainReport:
    """Train the EAGLE layer (slimgraph/eagle.py) teacher forced on the base's own sequences.

    seqs i64[n, T] (prompt + the base's greedy continuation), hidden [n, T, d] (the base's last hidden
    states). At position t the layer reads (hidden_t, embed(seqs_{t+1})) and is trained, as EAGLE-1 is
    (arXiv:2401.15077, section 4), on smooth-L1 regression to hidden_{t+1} plus `w_ce` x cross-entropy of
    its lm_head logits against the base's greedy token seqs_{t+2} (continuation positions only; the
    prompt's tokens are text, not the base's choice). The draft vocabulary is the `draft_vocab` most
    frequent tokens of `seqs` (then lowest ids); the lm_head and the embedding stay frozen. Batches are
    whole sequences (about `batch_positions` positions), drawn with a seeded generator: deterministic."""
    from . import eagle as E
    from .passes.draft_heads import EAGLE
    n, T = seqs.shape
    P = {k: torch.nn.Parameter(v.clone()) for k, v in E.params(graph).items()}
    depth, heads, _ = E.config(graph)
    emb = E.embedding_table(graph)
    w, b = lm_head_matrix(graph)
    vocab = w.shape[0]
    counts = torch.bincount(seqs.reshape(-1), minlength=vocab).float()
    order = torch.argsort(-counts - torch.arange(vocab) / (10.0 * vocab), stable=True)   # by count, then id
    nv = min(int(draft_vocab), vocab)
    ids = order[:nv]
    inv = torch.full((vocab,), -100, dtype=torch.long)
    inv[ids] = torch.arange(nv)
    wd, bd = w[ids].contiguous(), (None if b is None else b[ids])

    x_in = torch.cat((hidden[:, :-1], emb[seqs[:, 1:]]), -1)       # [n, T-1, 2d]
    y_feat = hidden[:, 1:]                                          # [n, T-1, d]
    y_tok = torch.full((n, T - 1), -100, dtype=torch.long)
    y_tok[:, prompt_len - 2:T - 2] = inv[seqs[:, prompt_len:]]       # position t predicts seqs[t + 2]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_held = min(n - 1, max(1, int(n * heldout))) if heldout > 0 and n > 1 else 0
    held, train = perm[:n_held], perm[n_held:]
    pos = torch.arange(T - 1)
    bs = max(1, batch_positions // (T - 1))

    def forward(idx):
        x = F.linear(x_in[idx], P["fc.weight"], P["fc.bias"])
        return E.layer(P, heads, x, pos)[0]

    def top1(idx):
        if len(idx) == 0:
            return []
        with torch.no_grad():
            pred = F.linear(forward(idx), wd, bd).argmax(-1)
            y = y_tok[idx]
            return [float((pred == y)[y >= 0].float().mean())]

    before = top1(held)
    opt = torch.optim.AdamW(P.values(), lr=lr, weight_decay=0.0)
    def loss_fn():
        idx = train[torch.randint(0, len(train), (bs,), generator=gen)]
        pred = forward(idx)
        reg = F.smooth_l1_loss(pred, y_feat[idx])
        y = y_tok[idx]
        ce = F.cross_entropy(F.linear(pred[y >= 0], wd, bd), y[y >= 0]) if bool((y >= 0).any()) else pred.sum() * 0
        return reg + w_ce * ce

    losses, step, seconds, cpu = _optimize(opt, loss_fn, steps, time_budget_s, cpu_budget_s,
                                           _bar(steps, "eagle head", progress))
    for k, v in P.items():
        graph.weights[EAGLE + k].tensor = v.detach().to(graph.weights[EAGLE + k].tensor.dtype).clone()
    graph.weights[EAGLE + "vocab"].tensor = order.clone()
    graph.weights[EAGLE + "config"].tensor = torch.tensor([depth, heads, nv], dtype=torch.long)
    return DraftTrainReport(depth, n, int((y_tok >= 0).sum()), step, seconds, data_s, cpu, data_cpu, losses,
                            top1(held), before)
