"""Train a compiled causal LM's draft heads (passes/draft_heads.py) by self-distillation.

    fast = slimgraph.optimize(model, (ids,), pipeline="...,insert-draft-heads{num_heads=4}")
    report = slimgraph.train_draft_heads(fast, tokenizer=tok, time_budget_s=300)   # stdlib docstring prompts
    fast.generate(ids, 128)           # speculative: drafts from the heads, verified by the base model

Medusa-1 self-distillation (Cai et al. 2024, arXiv:2401.10774, section 3.2): the base model generates
its own greedy continuation of real text; teacher-forced on that sequence, head i at position t learns
the base model's token at t + i + 2 (head 0: the token after the next one), with cross-entropy. The base
is frozen: its last hidden states (`hidden_states` output) are computed once by the compiled graph
itself (the same target and pipeline, int4 included), and only the heads' [hidden, hidden] weights are
trained (torch autograd, Adam) through the model's own lm_head, on the cached hidden states; the loss's
softmax runs over the tokens the base emitted (a sampled-softmax shortcut: the lm_head rows of the
other tokens are never read in training, so a step costs ~vocab/emitted times less). The
trained weights are written into the graph (`draft_heads.<i>.weight`), so `save`/`load` keep them,
and the runner is built again from the graph.

Deterministic for a given seed and Python version (the default prompts come from the installed standard
library's docstrings; generation is greedy; batches are drawn from a seeded generator).
Costs: one greedy generation over the prompts plus one batched forward per chunk of sequences, then
`steps` head-only updates over B positions x K heads x the training vocabulary (the tokens the base emitted).
"""
from __future__ import annotations
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .ir.registry import get_op
from .ir.dtypes import to_torch
from .trainable import is_amount, is_count, mark_trained


EVAL_POSITIONS = 2048        # positions per pass of the held-out EAGLE chain evaluation


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
    loss: list[float] = field(default_factory=list)          # per step: mean over the batch's (position, head) targets
    heldout_top1: list[float] = field(default_factory=list)  # per head, on held-out positions
    heldout_top1_before: list[float] = field(default_factory=list)  # the same, of the heads as this call found them
    kept_step: int = 0             # the step whose parameters were kept (early stopping on held-out loss)
    reverted: bool = False         # the trained heads had a lower held-out top-1 than the initial ones
                                   # (full-vocabulary argmax; the loss runs over the training vocabulary only),
                                   # so the initial parameters were kept
    kind: str = "medusa"           # "eagle": one draft layer run `heads` times (heldout_top1: its next token)
    heldout_chain: list[float] = field(default_factory=list)  # per depth j: held-out fraction of greedy chains
                                   # whose first j drafted tokens all equal the base's (cumulative acceptance)

    @property
    def heldout_tokens_per_verify(self) -> float:
        """Expected tokens emitted per verify of a greedy chain of every head/drafting step, on held-out
        sequences (1 + the cumulative acceptances: the bonus token plus the accepted drafts). Decoding
        measures its own (generate's acceptance), on the compiled base rather than its training twin."""
        return 1.0 + sum(self.heldout_chain)

    def __str__(self):
        acc = ", ".join(f"{a:.2f}" for a in self.heldout_top1)
        before = ", ".join(f"{a:.2f}" for a in self.heldout_top1_before)
        what, per = ((f"an EAGLE layer drafting {self.heads} tokens", "of its next-token draft")
                     if self.kind == "eagle" else (f"{self.heads} heads", "per head"))
        return (f"draft heads: {what}, {self.sequences} sequences ({self.positions} positions), "
                f"{self.steps} steps in {self.seconds:.0f} s wall / {self.cpu_seconds:.0f} s CPU (+{self.data_seconds:.0f} s "
                f"wall / {self.data_cpu_seconds:.0f} s CPU data); " +
                (f"held-out top-1 {per} [{acc}] (before this training [{before}]); " if self.heldout_top1 else
                 "no held-out sequences; ") +
                (f"held-out greedy chain: {self.heldout_tokens_per_verify:.2f} tokens per verify; "
                 if self.heldout_chain else "") +
                f"loss {self.loss[0]:.2f} -> {self.loss[-1]:.2f}; " +
                ("kept the initial parameters: the trained ones had a lower held-out top-1" +
                 (" (the loss ranks only the tokens of the base's continuations; more varied prompts help)"
                  if self.kind == "medusa" else "") if self.reverted else
                 "kept the initial parameters (the held-out loss was best before the first update)"
                 if self.kept_step == 0 else
                 f"kept the parameters of step {self.kept_step} (best held-out loss)" if self.heldout_top1 else
                 "kept the last step's parameters")
                if self.loss else f"draft heads: no training steps ran")


def head_weight_names(graph) -> list[str]:
    """The Medusa heads' weights in head order (one per draft_logits_i output), or EAGLE's config weight. A head
    whose weight is not a float graph weight (quantized by an include= that named it) is refused: training the
    others in its place would shift them by one token."""
    from .ir.dtypes import FLOAT_DTYPES
    from .passes.draft_heads import draft_outputs
    for i in range(len(draft_outputs(graph))):
        name = f"draft_heads.{i}.weight"
        w = graph.weights.get(name)
        if w is None or w.type.dtype not in FLOAT_DTYPES:
            packed = [n for n in graph.weights if n.startswith(name + ".")]
            raise DraftTrainingError(
                f"draft head {i} has no trainable @{name}: it is not a float weight of the graph"
                + (f" (it was quantized: {', '.join(packed)}; a quantize-weights include= matched it)" if packed
                   else "") + "; heads train in float: keep draft_heads.* out of include=, and quantize the base "
                "before insert-draft-heads")
    names = [f"draft_heads.{i}.weight" for i in range(64) if f"draft_heads.{i}.weight" in graph.weights]
    if not names and "draft_heads.eagle.config" in graph.weights:
        return ["draft_heads.eagle.config"]
    if not names:
        raise DraftTrainingError(f"graph @{graph.name} has no draft heads: compile it with a pipeline containing "
                                 f"'insert-draft-heads{{num_heads=4}}'")
    return names


# Python standard-library modules whose docstrings make the default self-distillation prompts: broad
# technical English (networking, files, text, math, concurrency, email, ...), present offline wherever
# Python is. `pydoc_data` (the Language Reference, slimgraph's eval split) is deliberately not listed.
DOCSTRING_MODULES = (
    "os", "re", "json", "collections", "itertools", "functools", "argparse", "logging", "subprocess", "pathlib",
    "typing", "asyncio", "email.message", "http.client", "urllib.request", "xml.etree.ElementTree", "sqlite3",
    "csv", "datetime", "decimal", "fractions", "statistics", "random", "string", "textwrap", "unittest",
    "doctest", "inspect", "threading", "multiprocessing", "socket", "ssl", "zipfile", "tarfile", "shutil",
    "tempfile", "glob", "fnmatch", "pickle", "copy", "pprint", "heapq", "bisect", "struct", "codecs", "io",
    "calendar", "hashlib", "hmac", "secrets", "base64", "html.parser", "urllib.parse", "contextlib",
    "dataclasses", "enum", "abc", "operator", "queue", "sched", "selectors", "signal", "smtplib", "ftplib",
    "imaplib", "mailbox", "configparser", "gettext", "locale", "optparse", "getopt", "difflib", "shlex",
    "tokenize", "traceback", "warnings", "weakref", "zlib", "gzip", "bz2", "lzma", "uuid", "ipaddress",
    "wave", "colorsys", "numbers", "cmath", "graphlib", "trace", "timeit", "cProfile", "pdb", "venv",
    "zipapp", "runpy", "importlib.metadata", "concurrent.futures", "ctypes", "plistlib", "netrc", "mimetypes",
    "webbrowser", "wsgiref.simple_server", "xmlrpc.client", "socketserver", "http.server", "http.cookiejar")


def docstring_texts(modules=DOCSTRING_MODULES, min_chars: int = 300) -> list[str]:
    """The distinct docstrings (>= `min_chars` characters) of `modules`, their public members and the
    members' methods, in a fixed order (module order, then member name): ~860 documents, ~610k characters
    on CPython 3.11. Modules that fail to import are skipped."""
    import importlib
    import inspect
    import warnings
    out, seen = [], set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in modules:
            try:
                mod = importlib.import_module(name)
            except Exception:       # noqa: BLE001 - an optional stdlib module (e.g. no _ssl): skip it
                continue
            for obj in [mod] + [v for k, v in sorted(vars(mod).items()) if not k.startswith("_")]:
                items = [obj] + ([v for k, v in sorted(vars(obj).items()) if not k.startswith("_")]
                                 if inspect.isclass(obj) else [])
                for it in items:
                    doc = getattr(it, "__doc__", None)
                    if isinstance(doc, str) and len(doc) >= min_chars and doc not in seen:
                        seen.add(doc)
                        out.append(inspect.cleandoc(doc))
    return out


def prompt_ids(tokenizer, texts=None, *, n: int = 64, prompt_tokens: int = 32, seed: int = 0,
               split: str | None = None) -> torch.Tensor:
    """i64[n, prompt_tokens] prompts for self-distillation.

    `texts`: a str -> its first n consecutive windows; a list of documents -> windows at seeded random
    offsets, cycling over the documents (shuffled with `seed`) until n; None -> the docstrings of the
    standard library (`docstring_texts`), or the shipped corpus `split` of slimgraph/data when `split`
    is given. Errors: DraftTrainingError when the text (or every document) is too short."""
    import random
    from .evaluate import load_text
    if split is not None and texts is None:
        texts = load_text(split)
    if isinstance(texts, str):
        ids = tokenizer(texts, return_tensors="pt").input_ids[0]
        if len(ids) < n * prompt_tokens:
            raise DraftTrainingError(f"prompt_ids(): the text has {len(ids)} tokens; {n} prompts x {prompt_tokens} "
                                     f"tokens need {n * prompt_tokens}: pass a longer text, a list of documents, or "
                                     f"fewer prompts (num_prompts) / shorter ones (prompt_tokens)")
        return ids[:n * prompt_tokens].view(n, prompt_tokens).clone()
    docs = docstring_texts() if texts is None else list(texts)
    rng = random.Random(seed)
    toks = [tokenizer(d, return_tensors="pt").input_ids[0] for d in rng.sample(docs, len(docs))]
    toks = [t for t in toks if len(t) >= prompt_tokens]
    if not toks:
        raise DraftTrainingError(f"prompt_ids(): no document has {prompt_tokens} tokens; pass longer texts or a "
                                 f"smaller prompt_tokens")
    rows = []
    for i in range(n):
        t = toks[i % len(toks)]
        o = rng.randrange(0, len(t) - prompt_tokens + 1)
        rows.append(t[o:o + prompt_tokens])
    return torch.stack(rows).clone()


def lm_head_matrix(graph):
    """The frozen lm_head as (W [vocab, hidden] float, bias [vocab] or None). Works for linear and qlinear
    heads (int8/int4 are dequantized once): W is recovered by applying the head to the identity."""
    outs = {v.name: v for v in graph.outputs}
    node = outs["logits"].producer
    args = [_const(v) for v in node.inputs[1:]]
    op = get_op(node.op)
    d = node.inputs[0].type.shape[-1]
    dt = to_torch(node.inputs[0].type.dtype)     # the head's own input dtype (a bf16 model's head is bf16)
    with torch.no_grad():
        bias = op.run(torch.zeros(1, d, dtype=dt), *args, **node.attrs)[0].float()
        w = (op.run(torch.eye(d, dtype=dt), *args, **node.attrs).float() - bias).T.contiguous()   # [vocab, hidden]
    return w, (bias if bool(bias.abs().max() > 0) else None)


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
    return None if bars.quiet() else bars.bar(total, desc, delay=0)   # ir/progress.py: on a terminal only


def self_distillation_data(compiled, prompts: torch.Tensor, new_tokens: int, *, gen_batch: int = 128,
                           twin: str | None = "bf16", progress: bool = True):
    """Greedy continuations of `prompts` [n, p] by the compiled model and its last hidden states over them:
    (sequences i64[n, p + new_tokens], hidden f32[n, p + new_tokens, hidden]).

    `twin` (default "bf16"): generate and compute the hidden states with the graph's float twin in that
    dtype (slimgraph/ir/twin.py: packed weights dequantized once, dense matmuls) on the torch target, in
    batches of `gen_batch` prompts: the same function up to rounding, ~12x more positions per CPU-second
    than the compiled int4 model's batch-1 kernels (SmolLM2 int4, one core: 352 vs 28 new positions per
    CPU-s; the twin's greedy continuations equal the int4 model's for 64 tokens on 7 of 8 eval prompts,
    hidden states within 1.7% relative). None: run the compiled model itself."""
    from .generate import generate
    model = compiled if twin is None else twin_model(compiled, twin)
    seqs, hidden = [], []
    bar = _bar(len(prompts), "draft data", progress)
    for i in range(0, len(prompts), gen_batch):
        chunk = prompts[i:i + gen_batch]
        s = generate(model, chunk, new_tokens, eos_token_id=None, speculative=False)
        with torch.inference_mode():            # one batched forward over the chunk's sequences (equal lengths)
            hidden.extend(model.decoder(batch=len(s)).prefill(s)["hidden_states"].float().clone().unbind(0))
        if bar is not None:
            bar.update(len(s))
        seqs.append(s)
    if bar is not None:
        bar.close()
    return torch.cat(seqs), torch.stack(hidden)


def twin_model(compiled, dtype: str = "bf16", target: str = "torch"):
    """The compiled model's float twin (ir/twin.py) with outputs `logits` and `hidden_states`, built for
    `target`: a CompiledModel that `generate` and `decoder` run like the original."""
    from .compiled import CompiledModel
    from .ir.twin import float_twin
    from .targets.base import get_target
    graph = float_twin(compiled.graph, dtype, outputs=["logits", "hidden_states"])
    return CompiledModel(graph, target, f"float twin ({dtype}) of: {compiled.pipeline}",
                         get_target(target).compile(graph), signature=compiled.signature, kv=compiled.kv)


def train_draft_heads(compiled, texts=None, *, tokenizer=None, prompts: torch.Tensor | None = None,
                      num_prompts: int = 64, prompt_tokens: int = 32, new_tokens: int = 96,
                      steps: int = 2000, time_budget_s: float | None = 300.0, cpu_budget_s: float | None = None,
                      batch_positions: int | None = None,
                      lr: float = 1e-3, seed: int = 0, heldout: float = 0.1, progress: bool = True,
                      draft_vocab: int = 8192, data=None) -> DraftTrainReport:
    """Self-distil the draft heads of `compiled` (a CompiledModel whose pipeline ran insert-draft-heads).

    Prompts: `prompts` i64[n, p], or `num_prompts` windows of `prompt_tokens` tokens of `texts` (see
    `prompt_ids`; default: the standard library's docstrings, broad technical English) tokenized with
    `tokenizer`. The base model continues each
    prompt greedily by `new_tokens`; head i at position t (from the prompt's last token on) is trained to
    predict the base's token at t + i + 2. Stops after `steps` updates, `time_budget_s` wall seconds or
    `cpu_budget_s` CPU seconds of this process (time.process_time: all its threads; on a shared machine the
    fair budget) of training, data preparation not included, whichever comes first. Trained weights go into
    `compiled.graph` and the runner is rebuilt; returns a DraftTrainReport (held-out top-1 per head).

    The softmax of the loss runs over a training vocabulary: the tokens the base emitted as targets, capped
    at the `draft_vocab` most frequent (every target is in it unless capped); held-out accuracy is measured
    with the full lm_head, as decoding argmaxes; Medusa heads whose held-out top-1 ends below the initial
    heads' (tokens outside a small training vocabulary rising above it) are reset to the initial ones
    (`report.reverted`; an EAGLE layer likewise, by its next-token top-1). `heldout`: the fraction of SEQUENCES
    held out (positions of one continuation are not independent samples).
    EAGLE heads (`kind=eagle`): see `train_eagle` (`draft_vocab` = size of its draft vocabulary).
    `data`: (sequences, hidden states) from `self_distillation_data` of the same base, to reuse (e.g. for
    Medusa and EAGLE heads on one base); `prompts` must then be the prompts it was made from."""
    graph = compiled.graph
    names = head_weight_names(graph)
    if "hidden_states" not in {v.name for v in graph.outputs}:
        raise DraftTrainingError("the compiled graph has draft heads but no 'hidden_states' output; "
                                 "compile it with insert-draft-heads (which adds it)")
    if not 0 <= heldout < 1:
        raise DraftTrainingError(f"train_draft_heads(): heldout={heldout} is the fraction of sequences held out; "
                                 f"give 0 <= heldout < 1")
    if not is_count(steps):
        raise DraftTrainingError(f"train_draft_heads(): steps={steps!r}; give the number of updates, an int >= 0")
    if not is_amount(lr, positive=True):
        raise DraftTrainingError(f"train_draft_heads(): lr={lr!r}; give a learning rate, a finite number > 0")
    for name, v in (("time_budget_s", time_budget_s), ("cpu_budget_s", cpu_budget_s)):
        if v is not None and not is_amount(v):
            raise DraftTrainingError(f"train_draft_heads(): {name}={v!r}; give seconds >= 0, or None for no limit")
    if batch_positions is not None and not is_count(batch_positions, 1):
        raise DraftTrainingError(f"train_draft_heads(): batch_positions={batch_positions!r}; give an int >= 1, or "
                                 f"None for the head kind's default (Medusa 256, EAGLE 1024)")
    if int(draft_vocab) < 2:
        raise DraftTrainingError(f"train_draft_heads(): draft_vocab={draft_vocab}; the training softmax needs at "
                                 f"least 2 tokens (default 8192)")
    if data is None and new_tokens < 2:
        raise DraftTrainingError(f"train_draft_heads(): new_tokens={new_tokens}; heads learn the base's tokens 2 or "
                                 f"more steps ahead in its continuation: give new_tokens >= 2 (default 96)")
    if data is not None and prompts is None:
        raise DraftTrainingError("train_draft_heads(): with `data`, pass the `prompts` it was made from")
    if prompts is None:
        if tokenizer is None:
            raise DraftTrainingError("train_draft_heads(): pass `prompts` (token ids) or a `tokenizer` for `texts`")
        prompts = prompt_ids(tokenizer, texts, n=num_prompts, prompt_tokens=prompt_tokens)
    if (not isinstance(prompts, torch.Tensor) or prompts.dim() != 2 or prompts.dtype != torch.long
            or 0 in prompts.shape):
        got = (f"{prompts.dtype} tensor of shape {tuple(prompts.shape)}" if isinstance(prompts, torch.Tensor)
               else type(prompts).__name__)
        raise DraftTrainingError(f"train_draft_heads(): prompts must be an int64 tensor [n, prompt_tokens] with "
                                 f"n >= 1 and prompt_tokens >= 1, got {got}")
    eagle = names == ["draft_heads.eagle.config"]
    if eagle and prompts.shape[1] < 2:
        raise DraftTrainingError(f"train_draft_heads(): EAGLE training needs prompts of >= 2 tokens, got "
                                 f"{prompts.shape[1]}")
    k = len(names)
    new = new_tokens if data is None else data[0].shape[1] - prompts.shape[1]
    if not eagle and new < k + 1:
        raise DraftTrainingError(f"train_draft_heads(): {new} new tokens per continuation give head {k} no target "
                                 f"(head i learns the token i + 2 steps ahead): give new_tokens >= {k + 1} for "
                                 f"{k} heads (default 96)")
    t0, c0 = time.perf_counter(), time.process_time()
    seqs, hidden = data if data is not None else self_distillation_data(compiled, prompts, new_tokens,
                                                                         progress=progress)
    p, total = prompts.shape[1], seqs.shape[1]
    if eagle:
        data = (seqs, hidden, p, time.perf_counter() - t0, time.process_time() - c0)
        report = train_eagle(graph, *data, steps=steps, time_budget_s=time_budget_s, cpu_budget_s=cpu_budget_s,
                             lr=lr, seed=seed, heldout=heldout, progress=progress, draft_vocab=draft_vocab,
                             batch_positions=batch_positions or 1024)
        rebuild_runner(compiled)
        mark_trained(compiled, "insert-draft-heads", report, tokens=report.positions, changed=not report.reverted
                     and report.kept_step != 0)      # reverted or kept step 0: the initial layer, UNTRAINED
        return report
    # targets[n, t, i] = token at t + i + 2 for t >= p - 1 (the continuation), else ignored (-100)
    targets = torch.full((len(seqs), total, k), -100, dtype=torch.long)
    for i in range(k):
        targets[:, p - 1:total - i - 2, i] = seqs[:, p + i + 1:]
    keep = (targets[..., 0] >= 0)
    # held out by SEQUENCE: positions of one (often repetitive) continuation are not independent samples
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(seqs), generator=gen)
    n_held = min(len(seqs) - 1, max(1, int(len(seqs) * heldout))) if heldout > 0 and len(seqs) > 1 else 0
    is_held = torch.zeros(len(seqs), dtype=torch.bool)
    is_held[perm[:n_held]] = True
    h_all, y_all = hidden[keep], targets[keep]                 # [M, hidden], [M, k]
    held_rows = is_held[:, None].expand_as(keep)[keep]
    held, train = held_rows.nonzero()[:, 0], (~held_rows).nonzero()[:, 0]
    data_s, data_cpu = time.perf_counter() - t0, time.process_time() - c0

    w, bias = lm_head_matrix(graph)
    # the training vocabulary: the tokens the base emitted as targets (the `draft_vocab` most frequent), so the
    # softmax runs over them instead of the whole vocabulary (every target is in it when it is not capped)
    y_train = y_all[train]
    counts = torch.bincount(y_train[y_train >= 0], minlength=w.shape[0]).float()
    if int((counts > 0).sum()) < 2:
        raise DraftTrainingError(f"train_draft_heads(): the base's continuations hold {int((counts > 0).sum())} "
                                 f"distinct target token(s): nothing to learn; use more or longer prompts "
                                 f"(num_prompts, new_tokens)")
    nv = min(int(draft_vocab), int((counts > 0).sum()))
    vocab_ids = torch.argsort(-counts - torch.arange(w.shape[0]) / (10.0 * w.shape[0]), stable=True)[:nv]
    inv = torch.full((w.shape[0],), -100, dtype=torch.long)
    inv[vocab_ids] = torch.arange(nv)
    y_sub = torch.where(y_all >= 0, inv[y_all.clamp(min=0)], y_all)
    w_sub, b_sub = w[vocab_ids].contiguous(), (None if bias is None else bias[vocab_ids])
    train = train[(y_sub[train] >= 0).any(1)]                 # positions with a target in the vocabulary
    ws = torch.nn.Parameter(torch.stack([graph.weights[n].tensor.detach().float() for n in names]))  # [k, d, d]
    opt = torch.optim.Adam([ws], lr=lr)

    def heads_hidden(h):                                       # [B, d] -> [B, k, d]
        return h[:, None] + F.silu(torch.einsum("bd,ked->bke", h, ws))

    def top1(idx):
        """(per head top-1, cumulative chain acceptance: heads 1..i all right, where every target exists) on
        positions idx, with the full-vocabulary argmax, as decoding runs it."""
        if len(idx) == 0:
            return [], []
        idx = idx[:4096]
        with torch.no_grad():
            pred = F.linear(heads_hidden(h_all[idx]), w, bias).argmax(-1)        # [B, k]
            y = y_all[idx]
        full = (y >= 0).all(1)
        chain = (pred == y)[full].long().cumprod(1).float().mean(0).tolist() if bool(full.any()) else [0.0] * k
        return [float((pred[:, i] == y[:, i])[y[:, i] >= 0].float().mean()) for i in range(k)], chain

    before = top1(held)[0]
    def loss_fn():
        idx = train[torch.randint(0, len(train), (batch_positions or 256,), generator=gen)]
        logits = F.linear(heads_hidden(h_all[idx]), w_sub, b_sub)              # [B, k, nv]
        return F.cross_entropy(logits.reshape(-1, nv), y_sub[idx].reshape(-1), ignore_index=-100)

    held_idx = held[torch.randperm(len(held), generator=gen)[:2048]]
    def heldout_loss():
        logits = F.linear(heads_hidden(h_all[held_idx]), w_sub, b_sub)
        return float(F.cross_entropy(logits.reshape(-1, nv), y_sub[held_idx].reshape(-1), ignore_index=-100))

    initial = ws.detach().clone()
    losses, step, seconds, cpu, kept = _optimize(opt, loss_fn, steps, time_budget_s, cpu_budget_s,
                                           _bar(steps, "draft heads", progress),
                                           heldout_loss if len(held_idx) else None)
    after, chain = top1(held)
    # the loss ranks only the training vocabulary: when it is small, tokens outside it can come to win the
    # full-vocabulary argmax that decoding runs, and heads can end worse than they began: keep the initial ones
    reverted = bool(after and sum(after) < sum(before))
    if reverted:
        with torch.no_grad():
            ws.copy_(initial)
        (after, chain), kept = top1(held), 0
    for i, n in enumerate(names):
        graph.weights[n].tensor = ws[i].detach().to(graph.weights[n].tensor.dtype).clone()
    rebuild_runner(compiled)
    report = DraftTrainReport(k, len(seqs), len(h_all), step, seconds, data_s, cpu, data_cpu, losses, after,
                              before, kept, reverted, heldout_chain=chain)
    mark_trained(compiled, "insert-draft-heads", report, tokens=report.positions, changed=not reverted and kept != 0)
    return report


def rebuild_runner(compiled) -> None:
    """Build the compiled model's target again from its (changed) graph weights. What speculative decoding
    learned about the old heads and runner (slimgraph/dynamic_tree.py: verify timings, draft calibration)
    is dropped with it."""
    from .targets.base import get_target
    compiled.runner = get_target(compiled.target).compile(compiled.graph)
    compiled.__dict__.pop("_dynamic_tree", None)


def _optimize(opt, loss_fn, steps, time_budget_s, cpu_budget_s, bar, heldout_loss=None, every: int = 50):
    """Run `opt` on `loss_fn()` until `steps` updates, `time_budget_s` wall seconds or `cpu_budget_s` CPU
    seconds (time.process_time); returns (losses, steps done, wall seconds, CPU seconds, kept step).
    `heldout_loss`: a function -> float, evaluated every `every` steps and at the end; the parameters of
    the best evaluation are restored at the end (early stopping: small draft data overfits fast); checked
    every min(`every`, steps // 10) steps, so short runs are checked too."""
    params = [p for g in opt.param_groups for p in g["params"]]
    best = (float("inf"), None, 0)
    every = max(1, min(every, steps // 10))

    def check():
        nonlocal best
        with torch.no_grad():
            v = heldout_loss()
        if v == v and v < best[0]:          # (NaN: no usable held-out target)
            best = (v, [p.detach().clone() for p in params], step)

    losses, t1, c1, step = [], time.perf_counter(), time.process_time(), 0
    while (step < steps and (time_budget_s is None or time.perf_counter() - t1 < time_budget_s)
           and (cpu_budget_s is None or time.process_time() - c1 < cpu_budget_s)):
        if heldout_loss is not None and step % every == 0:
            check()
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if heldout_loss is not None:
        check()
    if best[1] is not None:
        with torch.no_grad():
            for p, b in zip(params, best[1]):
                p.copy_(b)
    if bar is not None:
        bar.close()
    return losses, step, time.perf_counter() - t1, time.process_time() - c1, (best[2] if best[1] is not None else step)


def train_eagle(graph, seqs, hidden, prompt_len, data_s, data_cpu, *, steps, time_budget_s, cpu_budget_s, lr,
                seed, heldout, progress, draft_vocab=8192, batch_positions=1024, w_ce=0.01,
                dtype: torch.dtype | None = torch.bfloat16) -> DraftTrainReport:
    """Train the EAGLE layer (slimgraph/eagle.py) teacher forced on the base's own sequences.

    seqs i64[n, T] (prompt + the base's greedy continuation), hidden [n, T, d] (the base's last hidden
    states). At position t the layer reads (hidden_t, embed(seqs_{t+1})) and is trained, as EAGLE-1 is
    (arXiv:2401.15077, section 4), on smooth-L1 regression to hidden_{t+1} plus `w_ce` x cross-entropy of
    its lm_head logits against the base's greedy token seqs_{t+2} (continuation positions only; the
    prompt's tokens are text, not the base's choice). The draft vocabulary is the `draft_vocab` most
    frequent tokens of `seqs` (then lowest ids); the lm_head and the embedding stay frozen. Batches are
    whole sequences (about `batch_positions` positions), drawn with a seeded generator: deterministic.

    `dtype` (default bf16, as `EagleDrafter` drafts): the matmuls' precision (`eagle.weights`, and the draft
    vocabulary's logits; norms, attention and the residual stream are float32, as in drafting; None: float32).
    Measured on SmolLM2-135M (2048 sequences, 480 CPU-s each, a 5-token greedy chain's tokens per verify on
    64 eval-corpus continuations; benchmarks/RESULTS.md): float32 at 256 positions per batch 2.45, bf16 at
    512 2.92, bf16 at 1024 3.58 (2048: 3.35, too few steps), and at 1024 `w_ce` 0.1 / 0.03 / 0.01 / 0:
    3.58 / 3.95 / 4.04 / 3.76 (0.5: 2.21, the drafted features drift and deep drafts collapse). Within a
    CPU budget, throughput and the feature regression matter most. Reported: held-out top-1 of the next-token draft
    and the held-out greedy chain's cumulative acceptance per depth (`eagle.unrolled`: the drafts of every
    depth as decoding makes them, from every position at once)."""
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

    feats, next_ids = hidden[:, :-1], seqs[:, 1:]                   # read at position t: (hidden_t, seqs_{t+1})
    y_feat = hidden[:, 1:]                                          # [n, T-1, d]
    y_tok = torch.full((n, T - 1), -100, dtype=torch.long)
    y_tok[:, prompt_len - 2:T - 2] = inv[seqs[:, prompt_len:]]       # position t predicts seqs[t + 2]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_held = min(n - 1, max(1, int(n * heldout))) if heldout > 0 and n > 1 else 0
    held, train = perm[:n_held], perm[n_held:]
    pos = torch.arange(T - 1)
    bs = max(1, batch_positions // (T - 1))
    dt = dtype or torch.float32                                     # the matmuls' precision, as drafting runs them
    wd_dt = wd.to(dt)

    def head(o):                                                    # draft-vocabulary logits, float32
        out = F.linear(o.to(dt), wd_dt).float()
        return out if bd is None else out + bd

    def forward(idx):
        W = E.weights(P, dt)                                        # differentiable casts of the float32 P
        return E.layer(W, heads, E.fuse(W, feats[idx].float(), emb[next_ids[idx]]), pos)[0]

    def evaluate(idx):
        """(top-1 of the next-token draft, cumulative chain acceptance per depth) on sequences idx."""
        if len(idx) == 0:
            return [], []
        idx = idx[:256]
        chunk = max(1, EVAL_POSITIONS // (T - 1))   # sequences per pass: the unrolled attention is [.., n, depth * n]
        right = seen = 0
        chain = torch.zeros(depth)
        with torch.no_grad():
            W = E.weights(P, dt)
            for i in range(0, len(idx), chunk):
                part = idx[i:i + chunk]
                outs = E.unrolled(W, heads, feats[part].float(), emb[next_ids[part]], depth)
                # equal-length sequences: every chunk has the same number of chains per sequence
                chain += torch.tensor(E.chain_acceptance(outs, head, y_tok[part], prompt_len - 1)) * len(part)
                pred, y = head(outs[0]).argmax(-1), y_tok[part]
                right, seen = right + int((pred == y)[y >= 0].sum()), seen + int((y >= 0).sum())
        return [right / max(seen, 1)], (chain / len(idx)).tolist()

    before = evaluate(held)[0]
    initial = {k: v.detach().clone() for k, v in P.items()}
    opt = torch.optim.AdamW(P.values(), lr=lr, weight_decay=0.0)
    def loss_fn(idx=None):
        idx = train[torch.randint(0, len(train), (bs,), generator=gen)] if idx is None else idx
        pred, y = forward(idx), y_tok[idx]
        reg = F.smooth_l1_loss(pred, y_feat[idx].float())
        ce = F.cross_entropy(head(pred[y >= 0]), y[y >= 0]) if bool((y >= 0).any()) else pred.sum() * 0
        return reg + w_ce * ce

    losses, step, seconds, cpu, kept = _optimize(opt, loss_fn, steps, time_budget_s, cpu_budget_s,
                                           _bar(steps, "eagle head", progress),
                                           (lambda: float(loss_fn(held[:64]))) if len(held) else None)
    after, chain = evaluate(held)
    # as for Medusa heads: a layer that drafts worse than it began (held-out top-1) is put back as it was
    reverted = bool(after and after[0] < before[0])
    if reverted:
        with torch.no_grad():
            for k, v in P.items():
                v.copy_(initial[k])
        (after, chain), kept = evaluate(held), 0
    if kept:        # the parameters of an update, with the draft vocabulary they were trained for; else (none ran,
        # or reverted) the layer stays exactly as it was, vocabulary and config included
        for k, v in P.items():
            graph.weights[EAGLE + k].tensor = v.detach().to(graph.weights[EAGLE + k].tensor.dtype).clone()
        graph.weights[EAGLE + "vocab"].tensor = order.clone()
        graph.weights[EAGLE + "config"].tensor = torch.tensor([depth, heads, nv], dtype=torch.long)
    return DraftTrainReport(depth, n, int((y_tok >= 0).sum()), step, seconds, data_s, cpu, data_cpu, losses,
                            after, before, kept, reverted, kind="eagle", heldout_chain=chain)
