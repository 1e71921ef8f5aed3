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

    def __str__(self):
        def mean(x):
            return sum(x) / len(x) if x else float("nan")
        return (f"attention distillation: {self.layers} layers, {self.sequences} sequences ({self.tokens} tokens), "
                f"{self.steps} steps ({self.tokens_seen} tokens seen) in {self.seconds:.0f} s wall / "
                f"{self.cpu_seconds:.0f} s CPU (+{self.data_seconds:.0f} s teacher); held-out relative MSE "
                f"{mean(self.heldout_rel_mse_before):.4f} -> {mean(self.heldout_rel_mse):.4f} (mean over layers)")


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


def teacher_records(compiled, ids: torch.Tensor, nodes, progress: bool = True):
    """Per node: (q, k, v, softmax out) stacked over the sequences of `ids` [n, seq], bf16."""
    from types import SimpleNamespace
    from .decoder import Decoder
    teacher = _Teacher(compiled.graph)
    dec = Decoder(SimpleNamespace(graph=compiled.graph, runner=teacher.run))
    per = {id(n): [] for n in nodes}
    bar = _bar(len(ids), "attention teacher", "seq", progress)
    for row in ids:
        teacher.records = {}
        dec.prefill(row[None])
        for n in nodes:
            per[id(n)].append(teacher.records[id(n)])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return [tuple(torch.cat(x) for x in zip(*per[id(n)])) for n in nodes]


def distill_attention(compiled, texts=None, *, tokenizer=None, ids: torch.Tensor | None = None,
                      num_seqs: int = 16, seq_len: int = 512, steps: int = 100_000,
                      time_budget_s: float | None = 300.0, cpu_budget_s: float | None = None,
                      lr: float = 3e-2, seed: int = 0, heldout: int = 1, progress: bool = True) -> DistillReport:
    """Train the feature maps of `compiled` (a CompiledModel whose pipeline ran linearize-attention).

    Data: `ids` i64[n, seq], or `num_seqs` windows of `seq_len` tokens of `texts` (str or list of str; default
    the shipped calibration split, slimgraph/data/calib.txt) tokenized with `tokenizer`; the last `heldout`
    sequences are held out (relative MSE before/after, per layer). Stops after `steps` updates,
    `time_budget_s` wall seconds or `cpu_budget_s` CPU seconds (time.process_time: the fair budget on a
    shared machine) of updates, whichever comes first; the teacher forwards are not counted. Returns a
    DistillReport. Raises DistillationError when the graph has no linear_attention or no data is given."""
    from .draft import _optimize, rebuild_runner
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
    t0 = time.perf_counter()
    records = teacher_records(compiled, ids, nodes, progress)
    data_s = time.perf_counter() - t0
    n_train = len(ids) - heldout
    ws = [tuple(torch.nn.Parameter(v.tensor.detach().float().clone()) for v in n.inputs[5:8]) for n in nodes]
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

    opt = torch.optim.Adam([p for pair in ws for p in pair], lr=lr)
    losses, step, seconds, cpu, _ = _optimize(opt, loss_fn, steps, time_budget_s, cpu_budget_s,
                                           _bar(steps if time_budget_s is None and cpu_budget_s is None else None,
                                                "attention distillation", "step", progress))
    for node, trained in zip(nodes, ws):
        for v, w in zip(node.inputs[5:8], trained):
            v.tensor = w.detach().to(v.tensor.dtype).clone()
    rebuild_runner(compiled)
    return DistillReport(len(nodes), n_train, n_train * ids.shape[1], step, seconds, data_s, cpu,
                         step * ids.shape[1], losses, rel_mse(held) if heldout else [], before)


def _kernel():
    from .codegen.lowering import get_lowering
    return get_lowering("torch", "linear_attention").fn


def _bar(total, desc, unit, progress):
    """A progress bar by ir/progress.py's rules (stderr a terminal, not SLIMGRAPH_PROGRESS=0), or None."""
    from .ir import progress as bars
    bar = bars.bar(total, desc, unit, enabled=None if progress else False)
    return bar if hasattr(bar, "set_postfix") else None
