"""The `slimgraph` command line: compile, inspect, bench, export, and list ops and passes.

    slimgraph compile examples/tiny_mlp.py --target torch --pipeline canonicalize,dce -o out/
    slimgraph compile smollm2-135m -o out/              # a zoo model name
    slimgraph compile m.py --pipeline 'quantize-weights{method=gptq}' --calibration ids.pt -o out/
    slimgraph compile smollm2-135m --pipeline 'canonicalize,linearize-attention{window=64}' --train-budget 600 -o out/
    slimgraph inspect out/model.sg [--graph]
    slimgraph bench out/model.sg [--prompt-len 32 --new-tokens 64]
    slimgraph export out/model.sg --format gguf --type q4_0 --source smollm2-135m -o model.Q4_0.gguf
    slimgraph ops | slimgraph passes

A compile source is a Python file exposing `get_model()` that returns `(model, example_inputs)`
(or just the model, with `example_inputs` defined next to it in the file), or a zoo name.
`compile -o` refuses to replace an existing artifact unless `--force` is given.
Passes that insert trainable components (linearize-attention's feature maps, insert-draft-heads' heads;
slimgraph/trainable.py) get them trained by compile after optimizing, `--train-budget` CPU seconds in all
(default 300; 0: written untrained, with a warning), on `--calibration` or the training functions' defaults
with the source's tokenizer; without a tokenizer and without token ids that is an error before optimizing.
`inspect` lists untrained components.
Errors print a message (no traceback) and exit with status 2; `--debug` (anywhere on the command
line) shows the traceback instead. `--help`, `inspect`, `ops` and `passes` do not import torch
(`ops`/`passes` read a listing cached per source version; see _cached_listing).
"""
from __future__ import annotations
import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

EXIT_USAGE = 2


class CliError(Exception):
    pass


# --- compile ----------------------------------------------------------------------------------
# --train-budget's default: the CPU seconds of training updates that distill_attention / train_draft_heads get
# when the pipeline inserted their components (split between them when it inserted both). 300 s is both
# functions' own default budget, and what the measured runs used (benchmarks/RESULTS.md: SmolLM2 Medusa heads
# 300 CPU-s -> held-out top-1 of head 0 0.22 from 0.05, the EAGLE layer 0.42 from 0.06; SmolLM2's hybrid
# linear attention, window 64 + 4 sinks: perplexity +49% over softmax at 300 CPU-s, +47% at 900), so it keeps a
# compile within minutes at little cost in quality. Data preparation (teacher forwards, greedy continuations) comes on top.
DEFAULT_TRAIN_BUDGET = 300.0
DISTILL_ROWS = 12       # distill_attention's default num_seqs: token-id calibration rows it trains on at most
TEXT_ROW_TOKENS = 1024  # distill_attention's default seq_len: a text --calibration is cut into rows of this length
DRAFT_PROMPTS, DRAFT_PROMPT_TOKENS = 64, 32   # train_draft_heads' default prompts: windows cut from the rows


def cmd_compile(args) -> None:
    out = artifact_path(args.output)
    _check_output(out, args)   # checked first: no minutes of optimizing (and training) before refusing
    if not args.train_budget >= 0:
        raise CliError(f"--train-budget {args.train_budget}: give CPU seconds >= 0 (0: write inserted trainable "
                       f"components untrained)")
    calibration = load_calibration(args.calibration) if args.calibration else None
    train_data = calibration     # what training reads: token-id rows (a text calibration is tokenized first)
    trainable = []
    if args.pipeline:   # a typo in the pipeline fails before the model is loaded
        from .passes.pipeline import parse_pipeline
        from .trainable import TRAINABLE
        trainable = [p for p in parse_pipeline(args.pipeline) if p.name in TRAINABLE]
    import slimgraph
    model, example_inputs, tokenizer = load_source(args.source)
    from .api import out_of_vocab
    bad = out_of_vocab(model, calibration)     # GPTQ and training index the embedding with them
    if bad:
        raise CliError(f"--calibration {args.calibration}: holds token id {bad[0]}, but {args.source}'s model has "
                       f"{bad[1]} embedding rows (ids 0..{bad[1] - 1}): these ids are not of its tokenizer; give ids "
                       f"made with the model's own tokenizer, or the text itself")
    if trainable and args.train_budget > 0:    # what training will need: checked before minutes of optimizing
        from .api import _check_target_runs_pipeline     # (after what optimize checks first: the target)
        from .targets.base import get_target
        tgt = get_target(args.target)
        tgt.check_available()
        _check_target_runs_pipeline(tgt, args.pipeline, args.allow_fallback)
        tokenizer = _training_tokenizer(args, model, tokenizer, calibration, [p.spec() for p in trainable])
        train_data = _text_training_rows(tokenizer, calibration) if isinstance(calibration, str) else calibration
        _check_training_ids(args, train_data, trainable, text=isinstance(calibration, str))
    t0 = time.perf_counter()
    compiled = slimgraph.optimize(model, example_inputs, target=args.target, pipeline=args.pipeline,
                                  calibration=calibration, allow_fallback=args.allow_fallback)
    took = time.perf_counter() - t0
    trained = ""
    if compiled.report.untrained and args.train_budget > 0:
        t1 = time.perf_counter()
        if train_data is None or isinstance(train_data, str):
            tokenizer = _training_tokenizer(args, model, tokenizer, calibration, compiled.report.untrained)
            train_data = _text_training_rows(tokenizer, calibration) if isinstance(calibration, str) else None
        train_components(compiled, tokenizer, train_data, args.train_budget, args.calibration)
        trained = f", trained in {time.perf_counter() - t1:.2f} s"
    replaced = out.exists()
    import warnings
    from .trainable import UntrainedWarning, untrained_components
    with warnings.catch_warnings():     # the CLI says it below, with the command line's way to train
        warnings.simplefilter("ignore", UntrainedWarning)
        compiled.save(out)
    print(_report_text(compiled))
    print(f"optimized in {took:.2f} s{trained}; wrote {out}" +
          (" (replaced the artifact that was there)" if replaced else ""))
    untrained = untrained_components(compiled)
    if untrained:
        why = ("--train-budget 0" if args.train_budget == 0 else
               f"--train-budget {args.train_budget:g}: no update fit in that budget, or training kept the initial "
               f"values, see its warning above")
        print(f"WARNING: {out} holds UNTRAINED components ({why}): " + "; ".join(untrained) + ". "
              f"They still have their initial values (a linearized model's perplexity is far worse than the "
              f"source's; untrained draft heads only slow decoding). Train them: compile again with "
              f"--train-budget SECONDS (default {DEFAULT_TRAIN_BUDGET:.0f}), or in Python load the artifact, "
              f"call the function named and save it again.", file=sys.stderr)


def _check_output(out: Path, args) -> None:
    """What save would refuse after optimizing: an existing artifact without --force, a path that exists and
    is not an artifact (--force replaces artifacts only), or a file where a folder of the path must go."""
    from .cache import blocking_file
    parent = blocking_file(out)
    if parent is not None:
        raise CliError(f"-o {args.output}: {parent} is a file, but the artifact {out} is a folder that "
                       f"must go inside it; choose another -o")
    if not out.exists():
        return
    from .artifact import MANIFEST
    if not (out.is_dir() and (out / MANIFEST).is_file()):
        raise CliError(f"-o {args.output}: {out} exists and is not a slimgraph artifact (no manifest.json); "
                       f"--force replaces artifacts only: choose another -o, or move it away")
    if not args.force:
        raise CliError(f"{out} already exists; pass --force to replace it (or choose another -o)")


def _training_tokenizer(args, model, tokenizer, calibration, specs):
    """The tokenizer training needs (None when --calibration gave token ids), or a CliError saying what to pass."""
    import torch
    if isinstance(calibration, torch.Tensor):
        return tokenizer
    if tokenizer is None:
        from .api import _is_hf, _tokenizer
        tokenizer = _tokenizer(model) if _is_hf(model) else None
    if tokenizer is None:
        what = (f"--calibration {args.calibration} is text, and" if calibration is not None else
                "no --calibration was given, and")
        raise CliError(
            f"the pipeline inserts trainable components ({', '.join(specs)}) that compile trains (--train-budget "
            f"{args.train_budget:g} CPU s); {what} {args.source} has no tokenizer (a get_model() file's model has one "
            f"only when it is a transformers model whose tokenizer loads offline from its name_or_path): pass "
            f"--calibration ids.pt with token ids of real text (a .pt/.npy tensor, or a text file of integer ids), "
            f"or --train-budget 0 to write the artifact untrained")
    return tokenizer


def _text_training_rows(tokenizer, text: str, seq: int = TEXT_ROW_TOKENS):
    """A text --calibration as training rows: its tokens cut into DISTILL_ROWS-or-more rows of `seq` tokens, or
    into 2 rows of half its length when it is shorter (distillation holds one row out), so that a text of
    any length trains the way token ids do (distill_attention's own text path wants 12 x 1024 tokens)."""
    import torch
    ids = torch.as_tensor(tokenizer(text).input_ids, dtype=torch.int64).flatten()
    seq = max(1, min(seq, len(ids) // 2))
    return ids[:len(ids) // seq * seq].view(-1, seq).contiguous()


def _check_training_ids(args, calibration, trainable, text: bool = False) -> None:
    """Token-id calibration rows that cannot train a linearize-attention's feature maps: refused up front."""
    import torch
    if not isinstance(calibration, torch.Tensor):
        return
    for p in trainable:
        if p.name == "linearize-attention":
            need = p.window + p.sinks + 2 if p.window else 2
            if calibration.shape[1] < need or len(calibration) < 2:
                have = (f"a text of {calibration.numel()} tokens (cut into {len(calibration)} row(s) of "
                        f"{calibration.shape[1]})" if text else
                        f"{len(calibration)} row(s) of {calibration.shape[1]} tokens")
                raise CliError(
                    f"--calibration {args.calibration}: {have} cannot train {p.spec()}'s feature maps: "
                    f"distillation needs at least 2 rows (one is held out) of at least {need} tokens (longer than "
                    f"window + sinks + 1, so some key is outside the softmax window); " +
                    (f"give a text of at least {2 * need} tokens" if text else
                     "a 1-D .pt/.npy is cut into rows of 256 tokens"))


def train_components(compiled, tokenizer, calibration, budget_s: float, calibration_name: str | None = None):
    """Train what the pipeline inserted (compiled.report.untrained), feature maps before draft heads (the draft
    heads learn the final base model's tokens), `budget_s` CPU seconds of updates split between them. Data:
    token ids `calibration` (rows; feature maps take the first DISTILL_ROWS, draft heads prompts of
    DRAFT_PROMPT_TOKENS cut from them), text `calibration` with `tokenizer`, or the training functions' own
    defaults (the calibration split; the standard library's docstrings) with `tokenizer`."""
    import torch
    import slimgraph
    from .draft import DraftTrainingError
    from .linear_attention import DistillationError
    from .trainable import TRAINABLE, pass_name
    names = [n for n in TRAINABLE if any(pass_name(s) == n for s in compiled.report.untrained)]
    per = budget_s / max(1, len(names))
    ids = calibration if isinstance(calibration, torch.Tensor) else None
    text = calibration if isinstance(calibration, str) else None
    for name in names:
        try:
            if name == "linearize-attention":
                data = {"ids": ids[:DISTILL_ROWS]} if ids is not None else {"tokenizer": tokenizer, "texts": text}
                slimgraph.distill_attention(compiled, time_budget_s=None, cpu_budget_s=per, **data)
            else:
                if ids is not None:
                    n = ids.shape[1] // DRAFT_PROMPT_TOKENS * DRAFT_PROMPT_TOKENS
                    prompts = ids[:, :n].reshape(-1, DRAFT_PROMPT_TOKENS) if n else ids
                    data = {"prompts": prompts[:DRAFT_PROMPTS].contiguous()}
                else:   # a text as one document: prompt windows at seeded offsets (train_draft_heads.prompt_ids)
                    data = {"tokenizer": tokenizer, "texts": [text] if text is not None else None}
                slimgraph.train_draft_heads(compiled, time_budget_s=None, cpu_budget_s=per, **data)
        except (DistillationError, DraftTrainingError) as e:
            src = f"--calibration {calibration_name}" if calibration_name else "the default training text"
            raise CliError(f"training the {TRAINABLE[name].what} of {name} failed (nothing was written): {e}\n"
                           f"  data: {src}; give other --calibration data, or --train-budget 0 to write the "
                           f"artifact untrained") from None


CALIBRATION_FORMATS = ".pt (a torch tensor of token ids), .npy (a numpy array of token ids), or a text file: " \
                      "whitespace-separated integers are token ids (one row per line), anything else is text " \
                      "that the model's tokenizer splits"


def load_calibration(path: str):
    """Calibration data for `optimize(calibration=...)` from a file: token ids i64[n, seq] (a 1-D
    sequence is cut into rows of up to 256 tokens) or, for a text file that is not all integers,
    the text itself (tokenized by optimize with the model's tokenizer)."""
    p = Path(path)
    if not p.is_file():
        raise CliError(f"--calibration: no such file {path!r}; give {CALIBRATION_FORMATS}")
    suffix = p.suffix.lower()
    if suffix == ".pt":
        import torch
        try:
            data = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file: say which and why
            raise CliError(f"--calibration {path}: cannot read it with torch.load ({e})") from None
        return _token_rows(data, path)
    if suffix == ".npy":
        import numpy as np
        import torch
        try:
            data = torch.from_numpy(np.load(p, allow_pickle=False))
        except Exception as e:  # noqa: BLE001
            raise CliError(f"--calibration {path}: cannot read it with numpy.load ({e})") from None
        return _token_rows(data, path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CliError(f"--calibration {path}: not UTF-8 text; give {CALIBRATION_FORMATS}") from None
    if not text.strip():
        raise CliError(f"--calibration {path} is empty")
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if all(tok.lstrip("-").isdigit() for row in rows for tok in row):
        import torch
        if len({len(r) for r in rows}) == 1 and len(rows) > 1:
            return _token_rows(torch.tensor([[int(t) for t in r] for r in rows]), path)
        return _token_rows(torch.tensor([int(t) for r in rows for t in r]), path)
    return text


def _token_rows(data, path: str, seq: int = 256):
    import torch
    if not isinstance(data, torch.Tensor):
        raise CliError(f"--calibration {path}: holds a {type(data).__name__}, not a tensor of token ids")
    if data.dtype.is_floating_point or data.dtype.is_complex or data.dtype == torch.bool:
        raise CliError(f"--calibration {path}: token ids must be integers, got {data.dtype}")
    if data.numel() == 0 or int(data.min()) < 0:
        raise CliError(f"--calibration {path}: token ids must be a non-empty set of ids >= 0")
    data = data.to(torch.int64)
    if data.dim() == 1:
        n = min(seq, data.numel())
        data = data[:data.numel() // n * n].view(-1, n)
    if data.dim() != 2:
        raise CliError(f"--calibration {path}: token ids must be 1-D or [rows, seq], got shape {tuple(data.shape)}")
    return data.contiguous()


def load_source(source: str):
    """(model, example_inputs, tokenizer) from a Python file with get_model() (tokenizer None) or from a zoo
    model name (its tokenizer)."""
    path = Path(source)
    if path.suffix == ".py":
        if not path.is_file():
            raise CliError(f"no such file {source!r}")
        return (*_from_python_file(path), None)
    from . import zoo
    if source not in zoo.MODELS:
        raise CliError(f"{source!r} is neither a .py file nor a zoo model; "
                       f"zoo models: {', '.join(zoo.MODELS)}")
    return _from_zoo(source)


def _from_python_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"_slimgraph_src_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_model", None)):
        raise CliError(f"{path} must define get_model() returning (model, example_inputs)")
    got = module.get_model()
    if isinstance(got, tuple) and len(got) == 2:
        model, inputs = got
    else:
        model, inputs = got, getattr(module, "example_inputs", None)
        inputs = inputs() if callable(inputs) else inputs
        if inputs is None:
            raise CliError(f"{path}: get_model() returned only a model; return "
                           "(model, example_inputs) or define `example_inputs` in the file")
    return model, tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)


def _from_zoo(name: str):
    from . import zoo
    model, tokenizer = zoo.load(name)
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    if zoo.MODELS[name].kind == "causal-lm":
        return model, (ids.input_ids,), tokenizer
    return model, (ids.input_ids, ids.attention_mask), tokenizer


def artifact_path(output: str) -> Path:
    """`-o out/` writes out/model.sg; `-o out/name.sg` writes exactly that directory."""
    out = Path(output)
    return out if out.suffix == ".sg" else out / "model.sg"


def _report_text(compiled) -> str:
    report = getattr(compiled, "report", None)
    return str(report) if report is not None else "(no report)"


# --- inspect ----------------------------------------------------------------------------------
def cmd_inspect(args) -> None:
    """From the manifest and the graph text alone (no torch, no weights loaded): checked like load()
    checks the manifest; the graph's op counts and weight sizes are read from the IR text."""
    from . import artifact
    path = Path(args.artifact)
    if not path.is_dir():
        raise CliError(f"no artifact directory at {args.artifact!r}; create one with `slimgraph compile ... -o DIR`")
    manifest = artifact.read_manifest(path)
    text = (path / artifact.GRAPH).read_text(encoding="utf-8")
    if args.graph:
        print(text.rstrip("\n"))
        return
    from .compiled import OptimizeReport
    print(OptimizeReport.from_dict(manifest["report"]))
    print(f"inputs:  {_signature_json(manifest['inputs'])}")
    print(f"outputs: {_signature_json(manifest['outputs'])}")
    weights, nbytes, ops = ir_text_summary(text)
    print(f"weights: {weights} tensors, {_fmt_bytes(nbytes)}")
    print("ops:     " + ", ".join(f"{op}={n}" for op, n in ops.most_common()))
    kv = manifest.get("kv")
    if kv:
        print(f"kv cache: {kv.get('num_layers')} layers x {kv.get('num_kv_heads')} heads x {kv.get('head_dim')} "
              f"({kv.get('dtype')})")
    states = [line.strip() for line in text.splitlines() if line.strip().startswith("state ")]
    if states:      # `state NAME: %in -> %out KIND{attrs}` lines of the IR text (ir/state.py)
        kinds = Counter(line.split("->", 1)[1].split()[1].split("{")[0] for line in states)
        print("state:   " + ", ".join(f"{n} {k}" for k, n in kinds.items()) + f"; e.g. {states[0]}")


_DTYPE_BYTES = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i64": 8, "i32": 4, "i16": 2, "i8": 1, "u8": 1,
                "bool": 1}


def ir_text_summary(text: str) -> tuple[int, int, Counter]:
    """(weight count, weight bytes, op counts) from IR text (ir/printer.py: `weight @name: f32[4,16]`
    lines, `%x: T, ... = op(...)` node lines), without parsing it into a graph (that needs torch)."""
    weights, nbytes, ops = 0, 0, Counter()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("weight @"):
            typ = line.rsplit(":", 1)[1].strip()                  # f32[64,16]
            dtype, _, dims = typ.partition("[")
            n = 1
            for d in dims.rstrip("]").split(","):
                n *= int(d) if d.strip().isdigit() else (1 if not d.strip() else 0)
            weights += 1
            nbytes += n * _DTYPE_BYTES.get(dtype, 0)
        elif line.startswith("%") and " = " in line:
            ops[line.split(" = ", 1)[1].split("(", 1)[0].strip()] += 1
    return weights, nbytes, ops


def _signature_json(values, limit: int = 6) -> str:
    parts = [f"%{v['name']}: {v['type']}" for v in values]
    if len(parts) > limit:  # a 30-layer KV cache: the first few, a count, and the last
        parts = parts[:3] + [f"... {len(parts) - 4} more ..."] + parts[-1:]
    return ", ".join(parts)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def _load_artifact(path: str):
    import slimgraph
    if not Path(path).is_dir():
        raise CliError(f"no artifact directory at {path!r}; create one with `slimgraph compile ... -o DIR`")
    return slimgraph.load(path)


# --- export -----------------------------------------------------------------------------------
def cmd_export(args) -> None:
    """Write an artifact in a format other runtimes load (slimgraph.export)."""
    from .export import FORMATS, export
    from .artifact import ArtifactError
    if not Path(args.artifact).is_dir():
        raise CliError(f"no artifact directory at {args.artifact!r}; create one with `slimgraph compile ... -o DIR`")
    if args.format != "gguf" and (args.type or args.float_type):
        raise CliError(f"--type and --float-type are GGUF options; --format {args.format} takes the layout the "
                       f"artifact's quantize-weights chose")
    opts = {"source": args.source}
    if args.format == "gguf":
        opts |= {"type": args.type or "q4_0", **({"float_type": args.float_type} if args.float_type else {})}
    try:
        out = export(args.artifact, args.output, format=args.format, **opts)
    except ArtifactError as e:
        raise CliError(str(e)) from None
    print(f"wrote {out} ({args.format}{', ' + opts['type'] if 'type' in opts else ''}; formats: {', '.join(FORMATS)})")


# --- bench ------------------------------------------------------------------------------------
def cmd_bench(args) -> None:
    import torch
    torch.manual_seed(0)
    compiled = _load_artifact(args.artifact)
    from .trainable import untrained_components
    for c in untrained_components(compiled):    # the numbers below are of placeholder values
        print(f"note: {args.artifact} holds UNTRAINED {c}", file=sys.stderr)
    if args.eval == "ppl" and getattr(compiled, "kv", None) is None:
        raise CliError("--eval ppl needs a causal LM artifact (one compiled from a transformers causal LM)")
    tokenizer = _load_tokenizer(args.tokenizer) if args.eval == "ppl" else None
    if getattr(compiled, "kv", None) is not None:
        _bench_causal_lm(compiled, args)
    else:
        _bench_plain(compiled, args)
    print(f"peak RSS: {_fmt_bytes(peak_rss_bytes())}")
    if tokenizer is not None:
        from . import evaluate
        t0 = time.perf_counter()
        ppl = evaluate.perplexity(compiled, tokenizer, max_tokens=args.eval_tokens)
        print(f"perplexity: {ppl:.4f} (first {args.eval_tokens} tokens of slimgraph/data/eval.txt, "
              f"512-token windows; {time.perf_counter() - t0:.1f} s)")


def _load_tokenizer(name):
    """A tokenizer from a zoo model name or a local transformers directory, loaded offline."""
    import os
    if not name:
        raise CliError("--eval ppl needs --tokenizer: a zoo model name or a local tokenizer directory")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from . import zoo
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise CliError("--eval ppl needs transformers: pip install 'slimgraph[hf]'") from None
    if name in zoo.MODELS:
        entry = zoo.MODELS[name]
        kw = {"gguf_file": entry.gguf_file} if entry.gguf_file else {}
        return AutoTokenizer.from_pretrained(zoo.model_dir(name), **kw)
    if not Path(name).is_dir():
        raise CliError(f"--tokenizer {name!r} is neither a zoo model ({', '.join(zoo.MODELS)}) nor a directory")
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise CliError(f"could not load a tokenizer from {name!r}: {e}") from None


def _bench_causal_lm(compiled, args) -> None:
    import torch
    vocab = compiled.graph.outputs[0].type.shape[-1]
    if not isinstance(vocab, int):
        raise CliError(f"the logits output has a symbolic vocabulary dim ({vocab})")
    ids = torch.randint(0, vocab, (1, args.prompt_len))
    runs = []
    with _bar(args.repeat + 1, "bench", "run") as bar:
        compiled.generate(ids, max_new_tokens=min(4, args.new_tokens))  # warm-up
        bar.update(1)
        for _ in range(args.repeat):
            compiled.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=None)  # fixed length: no eos stop
            runs.append(compiled.last_generate_stats)
            bar.update(1)
    prefill = statistics.median(s.prefill_ms for s in runs)
    decode = statistics.median(s.decode_tokens_per_s for s in runs)
    print(f"causal LM, batch 1, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, "
          f"median of {args.repeat}")
    print(f"prefill: {prefill:.1f} ms")
    mode = runs[0].speculative     # a graph with draft heads decodes speculatively (generate's default: greedy,
    print(f"decode:  {decode:.1f} tokens/s" + (    # the dynamic tree, which drafts only where drafts pay off)
        f" (speculative, {'dynamic ' if mode == 'tree' else ''}{mode}: "
        f"{statistics.median(s.mean_acceptance for s in runs):.2f} tokens per verify forward; the tree verifies "
        f"the heads' drafts only where their measured acceptance pays for the verify's extra rows)" if mode else ""))


def _bench_plain(compiled, args) -> None:
    inputs = example_tensors(compiled.graph, args.prompt_len)
    compiled.run(*inputs)  # warm-up
    times = []
    with _bar(max(args.repeat, 5), "bench", "run") as bar:
        for _ in range(max(args.repeat, 5)):
            t0 = time.perf_counter()
            compiled.run(*inputs)
            times.append(time.perf_counter() - t0)
            bar.update(1)
    shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
    print(f"inputs {shapes}; latency median {statistics.median(times) * 1e3:.2f} ms, "
          f"min {min(times) * 1e3:.2f} ms over {len(times)} runs")


def _bar(total: int, desc: str, unit: str):
    """A tqdm progress bar on stderr while a long step runs, shown only on a terminal (not --quiet)."""
    from slimgraph.ir import progress
    return progress.bar(total, desc, unit, delay=0)


def example_tensors(graph, seq: int) -> list:
    """Inputs matching the graph signature: symbolic dims named batch* are 1, others `seq`.
    Integer inputs are all ones (a valid token id and a valid attention mask)."""
    import torch
    from slimgraph.ir import symbolic
    from slimgraph.ir.dtypes import to_torch
    env = {}
    for v in graph.inputs:
        for d in v.type.shape:
            for s in (symbolic.free_symbols(d) if isinstance(d, str) else ()):
                env.setdefault(s, 1 if s.startswith("batch") else seq)
    out = []
    for v in graph.inputs:
        shape = [symbolic.evaluate(d, env) if isinstance(d, str) else d for d in v.type.shape]
        dtype = to_torch(v.type.dtype)
        out.append(torch.randn(shape, dtype=dtype) if dtype.is_floating_point else torch.ones(shape, dtype=dtype))
    return out


def peak_rss_bytes() -> int:
    import resource
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib if sys.platform == "darwin" else kib * 1024


# --- listings ---------------------------------------------------------------------------------
def cmd_ops(args) -> None:
    """Every op with its signature and traits; with --target, how that target runs each op:
    native (its own lowering), reference (the op's reference impl) or unsupported."""
    if getattr(args, "target", None):
        print(ops_text(args.target), end="")
    else:
        print(_cached_listing("ops", ops_text), end="")


def cmd_passes(args) -> None:
    print(_cached_listing("passes", passes_text), end="")


def ops_text(target: str | None = None) -> str:
    from slimgraph.ir import all_ops
    tgt = None
    if target:
        from slimgraph.targets.base import get_target
        tgt = get_target(target)
    lines, counts = [], {}
    for name, op in sorted(all_ops().items()):
        attrs = ", ".join(f"{k}: {a.kind}" for k, a in op.attrs.items())
        traits = f"  [{', '.join(sorted(op.traits))}]" if op.traits else ""
        line = f"{name}({', '.join(op.inputs)})" + (f" {{{attrs}}}" if attrs else "") + traits
        if tgt is not None:
            how = tgt.support(name) or "unsupported"
            counts[how] = counts.get(how, 0) + 1
            line = f"{how:<12} {line}"
        lines.append(line)
    if tgt is not None:
        lines.append(f"target {tgt.name}: " + ", ".join(f"{counts.get(k, 0)} {k}"
                                                      for k in ("native", "reference", "unsupported")))
    return "".join(line + "\n" for line in lines)


def passes_text() -> str:
    from slimgraph.passes.base import all_passes
    from slimgraph.passes import options
    passes = all_passes()
    lines = ["pipeline syntax: name{option=value,...},name,...  (lists as [a,b]; float options take %)"]
    if not passes:
        lines.append("(no passes registered)")
    for name, cls in sorted(passes.items()):
        doc = (cls.__doc__ or "").strip().splitlines()
        summary = doc[0] if doc and not doc[0].startswith(cls.__name__ + "(") else ""
        lines.append(name + (f"  -- {summary}" if summary else ""))
        if options.public_options(cls):
            lines.append(options.describe(cls, "    "))
    return "".join(line + "\n" for line in lines)


# The registries are code (ir/opset/*, passes/*) whose import pulls in torch (~1.5 s of CPU, most of
# the start-up time). Their listing is a pure function of that code, so it is cached per source
# version: the key hashes slimgraph's version, the Python version and the path, size and mtime of
# every .py file of the packages that declare ops and passes. A changed file changes the key.
# Entries: cache_dir("listing")/<passes|ops>-<key>.txt (slimgraph/cache.py).
LISTING_PACKAGES = ("slimgraph", "slimgraph.ir", "slimgraph.passes")


def listing_key() -> str:
    import hashlib
    import importlib.util
    import slimgraph
    h = hashlib.sha256(f"{slimgraph.__version__}|{sys.version}".encode())
    for pkg in LISTING_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        for root in (spec.submodule_search_locations or []) if spec else []:
            for f in sorted(Path(root).rglob("*.py")):
                st = f.stat()
                h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _cached_listing(kind: str, produce) -> str:
    from .cache import atomic_write, cache_dir
    path = cache_dir("listing") / f"{kind}-{listing_key()}.txt"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    text = produce()
    try:  # best effort: an unwritable cache only costs the next call the import again
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text.encode("utf-8"))
    except OSError:
        pass
    return text


# --- entry point ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the subcommand: `slimgraph --debug inspect X` and
    # `slimgraph inspect X --debug` (the subcommand's copy only sets it when given: SUPPRESS).
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback on errors (accepted anywhere on the command line)")
    debug.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bars (they show only on a terminal anyway; accepted anywhere)")
    p = argparse.ArgumentParser(prog="slimgraph", description="A compiler for neural-network inference.",
                                epilog="`slimgraph COMMAND --help` shows a command's options.")
    p.add_argument("--debug", action="store_true", help="show the traceback on errors (accepted anywhere)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (accepted anywhere)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", parents=[debug], help="optimize a model and write an artifact")
    c.add_argument("source", help="a .py file with get_model(), or a zoo model name")
    c.add_argument("--target", default="torch", help="target name (default: torch)")
    c.add_argument("--pipeline", default=None, help="pass pipeline string (default: the target's); "
                   "`slimgraph passes` lists the passes and their options")
    c.add_argument("--calibration", metavar="FILE", default=None,
                   help="calibration data for gptq/awq/select-precision and for training inserted components "
                   "(--train-budget): " + CALIBRATION_FORMATS +
                   " (default for a zoo/transformers causal LM: the shipped calibration text)")
    c.add_argument("--train-budget", metavar="SECONDS", type=float, default=DEFAULT_TRAIN_BUDGET,
                   help="CPU seconds of training for the trainable components the pipeline inserts "
                   "(linearize-attention's feature maps, insert-draft-heads' heads), split between them; data "
                   "preparation comes on top; data: --calibration, else the shipped defaults with the model's "
                   f"tokenizer (default: {DEFAULT_TRAIN_BUDGET:.0f}; 0 writes them untrained, with a warning)")
    c.add_argument("-o", "--output", required=True, help="output directory (writes DIR/model.sg) or DIR.sg")
    c.add_argument("--force", action="store_true", help="replace the artifact if it already exists")
    c.add_argument("--allow-fallback", action="store_true",
                   help="compile for the 'torch' target when --target cannot run the pipeline's ops or build the "
                        "graph (the report says so)")
    c.set_defaults(fn=cmd_compile)

    i = sub.add_parser("inspect", parents=[debug], help="summarize an artifact")
    i.add_argument("artifact")
    i.add_argument("--graph", action="store_true", help="print the IR text instead")
    i.set_defaults(fn=cmd_inspect)

    b = sub.add_parser("bench", parents=[debug],
                       help="measure latency (or prefill and decode speed) and peak memory")
    b.add_argument("artifact")
    b.add_argument("--prompt-len", type=int, default=32)
    b.add_argument("--new-tokens", type=int, default=64)
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--eval", choices=["ppl"], default=None,
                   help="also measure quality: ppl = perplexity on the shipped eval text (causal LMs)")
    b.add_argument("--tokenizer", default=None, help="for --eval ppl: a zoo model name or a tokenizer directory")
    b.add_argument("--eval-tokens", type=int, default=4096, help="for --eval ppl: tokens of eval text")
    b.set_defaults(fn=cmd_bench)

    e = sub.add_parser("export", parents=[debug], help="write an artifact as GGUF (llama.cpp) or a Hugging Face quantized checkpoint")
    e.add_argument("artifact")
    e.add_argument("--format", required=True, choices=["gguf", "compressed-tensors", "gptq"])
    e.add_argument("--type", default=None, help="gguf: q4_0 (default) | q4_1 | q8_0 | f16 | f32")
    e.add_argument("--float-type", default=None, help="gguf: f32 | f16 | q8_0 (default) for unquantized matrices")
    e.add_argument("--source", required=True, help="zoo name, GGUF file or HF directory for config and tokenizer")
    e.add_argument("-o", "--output", required=True, help="output file (gguf) or directory (checkpoints)")
    e.set_defaults(fn=cmd_export)


    o = sub.add_parser("ops", parents=[debug], help="list registered ops (with --target: how that target lowers each)")
    o.add_argument("--target", help="a target name: mark each op native / reference / unsupported")
    o.set_defaults(fn=cmd_ops)
    sub.add_parser("passes", parents=[debug],
                   help="list registered passes and their options").set_defaults(fn=cmd_passes)
    return p


def _short_warnings(command: str) -> None:
    """slimgraph's own warnings (an export's tokenizer.ggml.pre fallback, ...) read like its errors: the message,
    not the library file and line that raised it (--debug keeps Python's form); others are left as they are."""
    import warnings
    package = str(Path(__file__).resolve().parent)
    default = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        if str(Path(filename).resolve()).startswith(package):
            return f"slimgraph {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)
    warnings.formatwarning = fmt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:   # every bar in slimgraph follows this setting (ir/progress.py; no import here: start-up)
        os.environ["SLIMGRAPH_PROGRESS"] = "0"
    if not args.debug:
        _short_warnings(args.command)
    try:
        args.fn(args)
    except BrokenPipeError:  # e.g. `slimgraph ops | head`
        return 0
    except Exception as e:  # noqa: BLE001 - the CLI boundary: the message, not a traceback
        if args.debug:
            raise
        lines = str(e).strip().splitlines() or [type(e).__name__]
        # the first line says what is wrong; indented lines that follow (valid options, the passes that
        # ran before a failing one, ...) are part of the message
        print(f"slimgraph {args.command}: error: {lines[0]}", file=sys.stderr)
        for line in lines[1:]:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
