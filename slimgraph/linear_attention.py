"""Attention-transfer distillation of the feature maps that linearize-attention inserted.

    fast = slimgraph.optimize(model, (ids,), pipeline="canonicalize,linearize-attention{window=64}")
    report = slimgraph.distill_attention(fast, tokenizer=tok, time_budget_s=900)   # calib split text
    fast.save("out/linear.sg")        # the trained maps are graph weights: save/load keep them

Hedgehog (Zhang et al. 2024, arXiv:2402.04347) and LoLCATs stage 1 (Zhang et al. 2024, arXiv:2410.10254,
"attention transfer"): every `linear_attention` node (ir/opset/linear_attention.py) is trained so that its
output matches what the softmax attention it replaced computes on real text, with MSE, layer by layer.
Teacher forcing: one forward of the graph per sequence with the reference interpreter, each
`linear_attention` node computing exact softmax attention instead (so every layer sees the softmax
model's hidden states) and recording its q, k, v and that softmax output. Then only the feature maps'
weights (`wq`, `wk` of each node) and the per-head window factors (`wf`, LoLCATs) train, with Adam, on random sequences of those records through the
chunked causal kernel (codegen/torch_linear_attention.py), all layers in one step (they are independent
given the recorded inputs). The trained weights are written into `compiled.graph` and the runner is rebuilt.

Second stage (`end_to_end`, a fraction of the budget; by default 60% for a language model): the same weights, all layers together,
train through the whole model (the reference interpreter with autograd, every other weight frozen) to
minimise the KL divergence from the softmax model's next-token distribution on the same sequences
(self-distillation of the logits, as in Hedgehog's conversion experiments, Zhang et al. 2024 sec. 5.3;
LoLCATs' stage 2 trains LoRA adapters instead, which this keeps out: only the feature maps and window
factors change). Layer-by-layer MSE leaves each layer's error small but lets them compound; the second
stage spends its budget on what the model outputs.

Deterministic for a given seed (sequences are drawn from a seeded generator; single-threaded math is
reproducible, multi-threaded reductions may differ in the last bits). Memory: the records take about
(2 hq + 2 hk) x d x 2 bytes (bf16) per token per layer (SmolLM2-135M: 92 KB per token).
"""
from __future__ import annotations
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .ir.interpreter import Interpreter
from .ir.registry import get_op
from .trainable import mark_trained

__all__ = ["distill_attention", "DistillReport", "DistillationError"]


class DistillationError(ValueError):
    pass


@dataclass
class DistillReport:
    layers: int
    sequences: int                 # training sequences (held-out ones not included)
    tokens: int                    # training tokens (sequences x seq_len)
    steps: int
    seconds: float                 # wall seconds of updates
    data_seconds: float            # wall seconds of the teacher forward passes
    cpu_seconds: float = 0.0       # CPU seconds of this process for the updates (time.process_time)
    tokens_seen: int = 0           # tokens through the student over all steps (steps x seq_len)
    loss: list[float] = field(default_factory=list)               # per step: summed MSE over layers
    heldout_rel_mse: list[float] = field(default_factory=list)    # per layer: MSE / mean(target^2), after
    heldout_rel_mse_before: list[float] = field(default_factory=list)
    e2e_steps: int = 0             # end-to-end stage: updates, CPU seconds, held-out KL (nats/token) before/after
    e2e_cpu_seconds: float = 0.0
    heldout_kl_before: float = float("nan")
    heldout_kl: float = float("nan")

    def __str__(self):
        def mean(x):
            return sum(x) / len(x) if x else float("nan")
        return (f"attention distillation: {self.layers} layers, {self.sequences} sequences ({self.tokens} tokens), "
                f"{self.steps} steps ({self.tokens_seen} tokens seen) in {self.seconds:.0f} s wall / "
                f"{self.cpu_seconds:.0f} s CPU (+{self.data_seconds:.0f} s teacher); held-out relative MSE "
                f"{mean(self.heldout_rel_mse_before):.4f} -> {mean(self.heldout_rel_mse):.4f} (mean over layers)"
                + (f"; end to end: {self.e2e_steps} steps in {self.e2e_cpu_seconds:.0f} s CPU, held-out KL "
                   f"{self.heldout_kl_before:.4f} -> {self.heldout_kl:.4f} nats/token" if self.e2e_steps else ""))


def linear_attention_nodes(graph) -> list:
    nodes = [n for n in graph.nodes if n.op == "linear_attention"]
    if not nodes:
        attn = sum(1 for n in graph.nodes if n.op == "attention")
        raise DistillationError(f"graph @{graph.name} has no linear_attention op ({attn} softmax attention op(s)); "
                                f"compile it with a pipeline containing 'linearize-attention{{window=64}}'")
    if any(not all(v.is_weight for v in n.inputs[5:8]) for n in nodes):
        raise DistillationError("distill_attention(): the feature maps and window factors (wq, wk, wf inputs) "
                                "must be graph weights")
    return nodes


class _Teacher(Interpreter):
    """The reference interpreter with every linear_attention node computing softmax attention (recorded)."""

    def __init__(self, graph):
        super().__init__(graph)
        self.records: dict[int, tuple] = {}

    def run_node(self, node, args, symbols):
        if node.op != "linear_attention":
            return super().run_node(node, args, symbols)
        q, k, v, kv, z = args[:5]
        mask = args[8] if len(args) > 8 else None
        out = get_op("attention").impl(q, k, v, mask, causal=mask is None, scale=node.attrs["scale"])
        self.records[id(node)] = tuple(t.to(torch.bfloat16) for t in (q, k, v, out))
        return out, kv, z


class _Student(Interpreter):
    """The reference interpreter with autograd on and every linear_attention node run by the torch target's
    kernel on trainable feature-map weights (`params`: id(node) -> (wq, wk, wf) Parameters)."""
    grad = True

    def __init__(self, graph, params: dict, kernel):
        super().__init__(graph)
        self.params, self.kernel = params, kernel

    def run_node(self, node, args, symbols):
        if node.op != "linear_attention":
            return super().run_node(node, args, symbols)
        a = node.attrs
        ws = [w.to(args[0].dtype) for w in self.params[id(node)]]     # a bf16 model's maps: its dtype
        return self.kernel(*args[:5], *ws, *args[8:], feature_map=a["feature_map"],
                           window=a["window"], sinks=a["sinks"], scale=a["scale"])


def _decoder(graph, run):
    from types import SimpleNamespace
    from .decoder import Decoder
    return Decoder(SimpleNamespace(graph=graph, runner=run))


def teacher_records(compiled, ids: torch.Tensor, nodes, progress: bool = True, logits: bool = False):
    """(per node: (q, k, v, softmax out) stacked over the sequences of `ids` [n, seq], bf16; with `logits` the
    softmax model's next-token log-probabilities [n, seq, vocab] (bf16), else None)."""
    teacher = _Teacher(compiled.graph)
    dec = _decoder(compiled.graph, teacher.run)
    per = {id(n): [] for n in nodes}
    logp = []
    bar = _bar(len(ids), "attention teacher", "seq", progress)
    for row in ids:
        teacher.records = {}
        out = dec.prefill(row[None])
        for n in nodes:
            per[id(n)].append(teacher.records[id(n)])
        if logits:
            logp.append(F.log_softmax(_logits(out).float(), -1).to(torch.bfloat16))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return [tuple(torch.cat(x) for x in zip(*per[id(n)])) for n in nodes], (torch.cat(logp) if logits else None)


def _logits(out: dict) -> torch.Tensor:
    if "logits" not in out:
        raise DistillationError(f"distill_attention(end_to_end=...): the graph has no `logits` output "
                                f"(outputs: {sorted(out)}); the end-to-end stage needs a language model")
    return out["logits"]


def distill_attention(compiled, texts=None, *, tokenizer=None, ids: torch.Tensor | None = None,
                      num_seqs: int = 12, seq_len: int = 1024, steps: int = 100_000,
                      time_budget_s: float | None = 300.0, cpu_budget_s: float | None = None,
                      lr: float = 3e-2, seed: int = 0, heldout: int = 1, progress: bool = True,
                      end_to_end: float | None = None, e2e_lr: float = 1e-2) -> DistillReport:
    """Train the feature maps of `compiled` (a CompiledModel whose pipeline ran linearize-attention).

    Data: `ids` i64[n, seq], or `num_seqs` windows of `seq_len` tokens of `texts` (str or list of str; default
    the shipped calibration split, slimgraph/data/calib.txt) tokenized with `tokenizer`; the last `heldout`
    sequences are held out (relative MSE before/after, per layer). Stops after `steps` updates (of both
    stages together; 0 runs none), `time_budget_s` wall seconds or `cpu_budget_s` CPU seconds
    (time.process_time: the fair budget on a shared machine) of updates, whichever comes first (the default
    300 wall seconds applies with a `cpu_budget_s` too: pass time_budget_s=None to budget CPU seconds
    alone); the teacher forwards are not counted. `end_to_end` in [0, 1): the fraction of the budget (and of
    `steps`) given to the second, end-to-end stage (module docstring; KL from the softmax model's logits,
    Adam at `e2e_lr`, early-stopped on the held-out KL); None (the default) is E2E_DEFAULT for a language
    model whose feature maps a gradient from the logits reaches, else 0 (stage 1 only). The defaults
    (12 x 1024 tokens, 60% end to end at Adam 1e-2) are the best measured on SmolLM2-135M
    (benchmarks/RESULTS.md, issue 17: at 300 CPU-s perplexity +49% vs +79% for stage 1 alone; sequences of
    1024 tokens beat 512). Memory: the records (module docstring) plus the teacher's log-probabilities,
    seq x vocab x 2 bytes per sequence (SmolLM2: 100 MB per 1024 tokens). The model's report marks the maps
    trained only when an update changed them. Returns a DistillReport. Raises DistillationError when an
    argument is out of its range (`_check_arguments`), the graph has no linear_attention, no data is
    given, or an explicit `end_to_end` is out of range or set on a graph without a `logits` output or
    whose outputs no gradient connects to the feature maps."""
    from .draft import _optimize, rebuild_runner
    _check_arguments(steps=steps, heldout=heldout, lr=lr, e2e_lr=e2e_lr, time_budget_s=time_budget_s,
                     cpu_budget_s=cpu_budget_s, num_seqs=num_seqs, seq_len=seq_len)
    graph = compiled.graph
    nodes = linear_attention_nodes(graph)
    if ids is None:
        if tokenizer is None:
            raise DistillationError("distill_attention(): pass `ids` (token ids) or a `tokenizer` for `texts`")
        from .evaluate import token_ids
        text = texts if isinstance(texts, str) or texts is None else "\n\n".join(texts)
        try:
            ids = token_ids(tokenizer, split="calib", n=num_seqs, seq=seq_len, text=text)
        except ValueError as e:
            raise DistillationError(f"distill_attention(): {e}; pass more text, or fewer or shorter sequences "
                                    f"(num_seqs={num_seqs}, seq_len={seq_len})") from None
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long or len(ids) <= heldout:
        got = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise DistillationError(f"distill_attention(): ids must be an int64 tensor [n, seq] with n > heldout "
                                f"({heldout}); got {got}")
    hybrid = [(n.attrs["window"], n.attrs["sinks"]) for n in nodes if n.attrs["window"]]
    w, s = min(hybrid, key=sum) if len(hybrid) == len(nodes) else (0, 0)   # pure linear: every key
    if w and ids.shape[1] <= w + s + 1:
        # query p reads key j through the feature maps only when j >= sinks and p - j > window
        raise DistillationError(f"distill_attention(): sequences of {ids.shape[1]} tokens keep every key in the "
                                f"softmax part (window {w} + {s} sinks, and the query itself): no key is ever linear, "
                                f"so the feature maps would not train; use sequences longer than {w + s + 1} tokens "
                                f"(seq_len=, or wider ids)")
    if not w and ids.shape[1] < 2:
        # pure linear: a query that reads one key (its own) weighs it 1 whatever the maps
        raise DistillationError(f"distill_attention(): sequences of {ids.shape[1]} token give each query only its "
                                f"own key, whose normalized weight is 1 whatever the feature maps: they would not "
                                f"train; use sequences of 2 tokens or more (seq_len=, or wider ids)")
    if end_to_end is not None and not 0.0 <= end_to_end < 1.0:
        raise DistillationError(f"distill_attention(): end_to_end is the fraction of the budget for the "
                                f"end-to-end stage, in [0, 1); got {end_to_end}")
    ws = [tuple(torch.nn.Parameter(v.tensor.detach().float().clone()) for v in n.inputs[5:8]) for n in nodes]
    has_logits = "logits" in {v.name for v in graph.outputs}
    if end_to_end is None:       # auto: the second stage where it can train (a language model, maps reachable)
        end_to_end = E2E_DEFAULT if has_logits and _reaches_the_maps(graph, nodes, ws, ids) else 0.0
    elif end_to_end > 0 and not has_logits:
        _logits(dict.fromkeys(v.name for v in graph.outputs))      # raises: names the graph's outputs
    elif end_to_end > 0 and not _reaches_the_maps(graph, nodes, ws, ids):
        raise DistillationError(
            "distill_attention(end_to_end=...): no gradient reaches the feature maps through this graph's "
            "outputs (quantize-activations rounds activations, with zero gradient); distill with end_to_end=0, "
            "or on a pipeline without quantize-activations")
    t0 = time.perf_counter()
    records, teacher_logp = teacher_records(compiled, ids, nodes, progress, logits=end_to_end > 0)
    data_s = time.perf_counter() - t0
    n_train = len(ids) - heldout
    kernel = _kernel()

    def layer_out(i, node, rows):
        q, k, v, _ = (t[rows].float() for t in records[i])
        b, hk, f, dv = q.shape[0], k.shape[1], ws[i][0].shape[-1], v.shape[-1]
        f = 2 * f if node.attrs["feature_map"] == "hedgehog" else f
        zeros_kv, zeros_z = q.new_zeros(b, hk, f, dv), q.new_zeros(b, hk, f)
        return kernel(q, k, v, zeros_kv, zeros_z, *ws[i], feature_map=node.attrs["feature_map"],
                      window=node.attrs["window"], sinks=node.attrs["sinks"], scale=node.attrs["scale"])[0]

    def rel_mse(rows):
        with torch.no_grad():
            out = []
            for i, node in enumerate(nodes):
                want = records[i][3][rows].float()
                out.append(float(F.mse_loss(layer_out(i, node, rows), want) / want.square().mean()))
            return out

    held = torch.arange(n_train, len(ids))
    before = rel_mse(held) if heldout else []
    gen = torch.Generator().manual_seed(seed)

    def loss_fn():
        rows = torch.randint(0, n_train, (1,), generator=gen)
        return sum(F.mse_loss(layer_out(i, node, rows), records[i][3][rows].float()) for i, node in enumerate(nodes))

    def share(x, part):
        return None if x is None else x * part

    first = 1.0 - end_to_end
    initial = [p.detach().clone() for pair in ws for p in pair]
    opt = torch.optim.Adam([p for pair in ws for p in pair], lr=lr)
    n1 = steps if end_to_end == 0 else round(steps * first)     # `steps` caps the updates of both stages
    losses, step, seconds, cpu, _ = _optimize(opt, loss_fn, n1, share(time_budget_s, first),
                                           share(cpu_budget_s, first),
                                           _bar(n1 if time_budget_s is None and cpu_budget_s is None else None,
                                                "attention distillation", "step", progress))
    e2e = (0, 0.0, float("nan"), float("nan"))
    if end_to_end > 0 and steps > n1:
        e2e = _end_to_end(graph, nodes, ws, ids, teacher_logp, n_train, gen, steps - n1,
                          share(time_budget_s, end_to_end), share(cpu_budget_s, end_to_end), e2e_lr, progress)
        seconds, cpu = seconds + e2e[4], cpu + e2e[1]
    for node, trained in zip(nodes, ws):
        for v, w in zip(node.inputs[5:8], trained):
            v.tensor = w.detach().to(v.tensor.dtype).clone()
    rebuild_runner(compiled)
    report = DistillReport(len(nodes), n_train, n_train * ids.shape[1], step + e2e[0], seconds, data_s, cpu,
                           (step + e2e[0]) * ids.shape[1], losses, rel_mse(held) if heldout else [], before,
                           *e2e[:4])
    changed = any(not torch.equal(p.detach(), p0) for p, p0 in zip((p for pair in ws for p in pair), initial))
    # no update, or updates that moved nothing (data with no gradient): the maps stay untrained
    mark_trained(compiled, "linearize-attention", report, tokens=report.tokens, changed=changed)
    return report


def _check_arguments(*, steps, heldout, lr, e2e_lr, time_budget_s, cpu_budget_s, num_seqs, seq_len) -> None:
    """distill_attention's numeric arguments, each with the range it takes (DistillationError naming it)."""
    from .trainable import is_amount, is_count
    bad = []
    if not is_count(steps):
        bad.append(f"steps={steps!r}: the number of updates at most, an int >= 0 (0: no training)")
    if not is_count(heldout):
        bad.append(f"heldout={heldout!r}: how many of the sequences (the last ones) are held out, an int >= 0 "
                   f"and below their number")
    for name, v in (("lr", lr), ("e2e_lr", e2e_lr)):
        if not is_amount(v, positive=True):
            bad.append(f"{name}={v!r}: a learning rate, a finite number > 0")
    for name, v in (("time_budget_s", time_budget_s), ("cpu_budget_s", cpu_budget_s)):
        if v is not None and not is_amount(v):
            bad.append(f"{name}={v!r}: seconds >= 0, or None for no limit")
    for name, v in (("num_seqs", num_seqs), ("seq_len", seq_len)):
        if not is_count(v, 1):
            bad.append(f"{name}={v!r}: an int >= 1")
    if bad:
        raise DistillationError("distill_attention(): " + "; ".join(bad))


def _end_to_end(graph, nodes, ws, ids, teacher_logp, n_train, gen, steps, time_budget_s, cpu_budget_s, lr,
                progress):
    """The second stage (module docstring): (steps, CPU s, held-out KL before, after, wall s)."""
    from .draft import _optimize
    student = _Student(graph, {id(n): w for n, w in zip(nodes, ws)}, _kernel())
    params = [p for pair in ws for p in pair]

    def kl(row: int, length: int | None = None) -> torch.Tensor:
        """KL(teacher || student) per token over sequence `row` (its first `length` tokens)."""
        logp = F.log_softmax(_logits(_decoder(graph, student.run).prefill(ids[row:row + 1, :length])).float(), -1)
        want = teacher_logp[row:row + 1, :length].float()
        return F.kl_div(logp, want, log_target=True, reduction="none").sum(-1).mean()

    def heldout_kl() -> float:
        with torch.no_grad():
            return sum(float(kl(r)) for r in range(n_train, len(ids))) / max(1, len(ids) - n_train)

    def loss_fn():
        return kl(int(torch.randint(0, n_train, (1,), generator=gen)))

    has_heldout = len(ids) > n_train
    before = heldout_kl() if has_heldout else float("nan")
    opt = torch.optim.Adam(params, lr=lr)
    _, step, seconds, cpu, _ = _optimize(opt, loss_fn, steps, time_budget_s, cpu_budget_s,
                                         _bar(steps if time_budget_s is None and cpu_budget_s is None else None,
                                              "end-to-end distillation", "step", progress),
                                         heldout_loss=heldout_kl if has_heldout else None, every=10)
    after = heldout_kl() if has_heldout else float("nan")
    return step, cpu, before, after, seconds


E2E_DEFAULT = 0.6     # the end-to-end stage's share of the budget when distill_attention picks it (end_to_end=None)


def _reaches_the_maps(graph, nodes, ws, ids) -> bool:
    """Whether a gradient from the graph's `logits` reaches the feature maps (a short probe: one forward and
    backward over the first tokens of the first sequence; quantize-activations rounds with zero gradient)."""
    student = _Student(graph, {id(n): w for n, w in zip(nodes, ws)}, _kernel())
    probe = min(ids.shape[1], 2 * max(n.attrs["window"] + n.attrs["sinks"] for n in nodes) + 16)
    logits = _logits(_decoder(graph, student.run).prefill(ids[:1, :probe])).float()
    grads = torch.autograd.grad(F.log_softmax(logits, -1)[..., 0].sum(), [p for pair in ws for p in pair],
                                allow_unused=True)
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def _kernel():
    from .codegen.lowering import get_lowering
    return get_lowering("torch", "linear_attention").fn


def _bar(total, desc, unit, progress):
    """A progress bar by ir/progress.py's rules (stderr a terminal, not SLIMGRAPH_PROGRESS=0), or None."""
    from .ir import progress as bars
    bar = bars.bar(total, desc, unit, enabled=None if progress else False)
    return bar if hasattr(bar, "set_postfix") else None
