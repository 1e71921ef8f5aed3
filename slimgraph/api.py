"""`slimgraph.optimize`: import a model, run a pass pipeline, build a target's runner.

    fast = slimgraph.optimize(model, (x,), target="torch", pipeline="canonicalize,cse,dce")

`model` is an `nn.Module`, a transformers model, an ONNX model (a `.onnx` path, its bytes or an
`onnx.ModelProto`, imported with frontends.onnx_import.import_onnx), or an already-imported `ir.Graph`:
- a transformers causal LM (has `generate`, not encoder-decoder, has an LM head) is exported
  with its KV cache (frontends.hf.export_causal_lm) so the result can `.generate()`; called
  with `input_ids` it runs with empty caches and returns an object with `.logits`;
- other transformers models (BERT, ViT, Whisper's encoder, T5, ...) go through torch.export with the
  batch dynamic by default (also from a batch-1 example: export traces a batch-2 copy) and the
  sequence of token inputs (ids, masks) dynamic; image/audio dims stay as in the example. They keep
  the HF output class (`.last_hidden_state`, `.pooler_output`);
- plain modules go through torch.export with `dynamic_shapes` as given (static by default).
Whatever the export specialized on (non-tensor arguments, static dims, dtypes) is guarded: a call that
differs raises slimgraph.guards.GuardError naming the argument and how to compile for it.
"""
from __future__ import annotations
import inspect
import time
import warnings

from .compiled import CompiledModel, OptimizeReport
from .signature import Signature
from .trainable import inserted_specs


class OptimizeError(RuntimeError):
    pass


def optimize(model, example_inputs=(), *, example_kwargs=None, target: str = "torch", pipeline=None,
             dynamic_shapes=None, verify=False, allow_fallback: bool = False, calibration=None) -> CompiledModel:
    """Compile `model` for `target`; see the module docstring. `pipeline=None` uses the target's default.
    `verify`: False, True (verify the IR after each pass) or "numerics" (also check every pass and the
    compiled runner against the interpreter on the example inputs). `allow_fallback=True` lets a target
    whose codegen supports it run unsupported ops with their torch reference implementation, and runs the
    whole graph on the `torch` target if the requested target cannot compile it; the report says so.
    `calibration`: data for passes that need it (quantize-weights with method=gptq/awq, select-precision):
    token ids i64[n, seq] or text (tokenized with the model's tokenizer) for models whose other inputs can
    be empty (a causal LM's past KV), or a tuple with one batch per graph input (an encoder's ids and
    attention mask: token ids alone are refused there rather than guessed). When omitted and such a pass
    runs on a transformers causal LM, the shipped calibration split (slimgraph/data/calib.txt, 32 x 256
    tokens) is tokenized with the model's tokenizer (loaded offline from `model.name_or_path`).
    (On the `torch` target itself every registered op runs: ops without a fast kernel in
    codegen/torch_kernels.py call the op registry's torch implementation.)"""
    from .targets.base import get_target
    t0 = time.perf_counter()
    tgt = get_target(target)
    tgt.check_available()
    example_inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    spec, notes = _pipeline(tgt, pipeline)
    _check_target_runs_pipeline(tgt, spec, allow_fallback)
    spec = _with_calibration(spec, model, calibration)   # before the import: a missing one fails fast
    import_notes: list[str] = []
    graph, signature, kv, flat_example = _import(model, tuple(example_inputs), dict(example_kwargs or {}),
                                                 dynamic_shapes, import_notes)
    report = OptimizeReport(target, "", weight_bytes_before=graph.weight_bytes(), ops_before=graph.op_counts())
    report.notes = import_notes + notes
    report.pipeline = _run_passes(graph, spec, verify, flat_example, report)
    report.untrained = inserted_specs(report.passes)   # placeholders to train (slimgraph/trainable.py)
    _check_state(graph, report.pipeline)
    runner = _compile(tgt, graph, allow_fallback, report, _source(model))
    if verify == "numerics" and flat_example is not None:
        _check_runner(graph, runner, flat_example, report.target)
    report.weight_bytes_after, report.ops_after = graph.weight_bytes(), graph.op_counts()
    report.seconds = time.perf_counter() - t0
    return CompiledModel(graph, report.target, report.pipeline, runner, signature=signature, kv=kv, report=report)


# ---- import ----------------------------------------------------------------------------------
def _import(model, args, kwargs, dynamic_shapes, notes=None):
    """(graph, signature, kv layout or None, flat example tensors or None)."""
    import torch
    from .ir.graph import Graph
    if _is_onnx(model):  # a path to a .onnx file, serialized bytes or an onnx.ModelProto
        from .frontends.onnx_import import import_onnx
        model = import_onnx(model, notes=notes)
    if isinstance(model, Graph):
        sig = Signature("flat", input_names=[v.name for v in model.inputs])
        return model.copy(), sig, None, (list(args) if args else None)
    if _is_causal_lm(model):
        from .frontends.hf import export_causal_lm
        imported, kv = export_causal_lm(model, notes=notes)
        sig = Signature("causal-lm", input_names=list(imported.input_names))
        flat = sig.flatten_call(args, kwargs, imported.graph) if (args or kwargs) else None
        return imported.graph, sig, kv, flat
    zeros_like = {}
    auto_dims = False   # dynamic_shapes made here, not given: dims torch.export specializes become static
    if _is_hf(model):
        if not args and not kwargs:
            kwargs = _hf_example(model)
        if "token_type_ids" in _param_names(model) and getattr(model.config, "type_vocab_size", 0):
            zeros_like = {"token_type_ids": "input_ids"}  # HF's default when absent; tokenizers pass it
            bound = dict(zip(_param_names(model), args))
            if bound.get("token_type_ids") is None and kwargs.get("token_type_ids") is None:
                kwargs = {**kwargs, "token_type_ids": torch.zeros_like(bound.get("input_ids", kwargs.get("input_ids")))}
        if dynamic_shapes is None:
            dynamic_shapes = _hf_dynamic_shapes(model, args, kwargs)
            auto_dims = dynamic_shapes is not None
    elif not args and not kwargs and _needs_inputs(model):
        raise OptimizeError(f"optimize({type(model).__name__}): pass example_inputs (and example_kwargs) that "
                            "the model can be called with; torch.export traces the model on them")
    from .frontends.torch_export import import_module
    no_cache = _no_hf_cache(model, args, kwargs, notes)
    chosen = dynamic_shapes
    while True:
        ex_args, ex_kwargs = _export_copies(args, kwargs, dynamic_shapes, model)
        try:
            with no_cache:
                imported = import_module(model, ex_args, ex_kwargs, dynamic_shapes)
            break
        except Exception as e:  # noqa: BLE001 - torch.export failing on the dims slimgraph chose is retried
            from .frontends.torch_export import ConversionError
            if not auto_dims or isinstance(e, ConversionError):
                raise
            named = _specialized_dims(e)
            fewer = _without_dims(dynamic_shapes, named) if named else None
            if fewer is None or fewer == dynamic_shapes:   # not a named dim: the whole example's shapes
                fewer, named = _without_dims(dynamic_shapes, None), {"batch", "seq"}
            if fewer == dynamic_shapes:
                raise
            dynamic_shapes = fewer
            if notes is not None:
                notes.append(f"{type(model).__name__}: torch.export could not keep the {' and '.join(sorted(named))} "
                             f"dim(s) dynamic ({type(e).__name__}: {str(e).splitlines()[0][:160]}): compiled for "
                             "the example's sizes only")
    sig = Signature("pytree", imported.in_spec, imported.out_spec, _param_names(model),
                    list(imported.input_names), list(imported.tensor_leaves), zeros_like)
    from .guards import Guards
    leaves = sig.leaves(args, kwargs)
    forced = {k: set(dims) - set((dynamic_shapes or {}).get(k) or {}) for k, dims in (chosen or {}).items()
              if isinstance(dims, dict)} if auto_dims else {}    # {argument: the automatic dynamic dims dropped}
    sig.guards = Guards.of(leaves, sig.leaf_names(args, kwargs), imported.constant_leaves, sig.tensor_leaves,
                           [v.type for v in imported.graph.inputs], forced)
    return imported.graph, sig, None, sig.flatten_call(args, kwargs)


class _no_hf_cache:
    """A transformers model that is not imported as a causal LM (a decoder's base model or its
    ForSequenceClassification/ForTokenClassification head, an encoder-decoder) returns its KV cache, a
    cache object torch.export cannot output, when `config.use_cache` is on and the call does not say
    `use_cache`: export it with `use_cache=False` (its other outputs are the same; slimgraph decodes with a
    KV cache only through a causal LM's own import) and say so in the report."""

    def __init__(self, model, args, kwargs, notes):
        self.configs = []
        if not _is_hf(model) or "use_cache" not in _param_names(model):
            return
        bound = dict(zip(_param_names(model), args))
        if bound.get("use_cache") is not None or kwargs.get("use_cache") is not None:
            return
        cfgs = {}   # every submodule's config: an encoder-decoder's decoder stack holds a copy of its own
        for m in model.modules():
            for c in (getattr(m, "config", None),) + ((m.config.get_text_config(),) if hasattr(
                    getattr(m, "config", None), "get_text_config") else ()):
                if c is not None and getattr(c, "use_cache", False) is True:
                    cfgs[id(c)] = c
        self.configs = list(cfgs.values())
        if self.configs and notes is not None:
            notes.append(f"{type(model).__name__}: exported with use_cache=False (its KV cache is not an "
                         "output of the compiled model; a causal LM with an LM head decodes with one)")

    def __enter__(self):
        for c in self.configs:
            c.use_cache = False

    def __exit__(self, *exc):
        for c in self.configs:
            c.use_cache = True
        return False


def _is_onnx(model) -> bool:
    import os
    if isinstance(model, (bytes, bytearray)) or type(model).__name__ == "ModelProto":
        return True
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx")


def _needs_inputs(model) -> bool:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _is_hf(model) -> bool:
    return hasattr(model, "config") and any(c.__module__.startswith("transformers.") for c in type(model).__mro__)


def _is_causal_lm(model) -> bool:
    if not _is_hf(model) or not callable(getattr(model, "generate", None)):
        return False
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    head = getattr(model, "get_output_embeddings", lambda: None)()
    return head is not None


def _param_names(model) -> list[str]:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _hf_example(model) -> dict:
    import torch
    vocab = getattr(model.config, "vocab_size", 100)
    ids = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _hf_dynamic_shapes(model, args, kwargs) -> dict:
    """Batch dynamic for every tensor argument that shares the first one's batch; sequence dynamic for
    the [batch, seq] token arguments (integer ids, masks, token types). Image, audio and feature inputs
    keep their other dims as in the example. A size-1 dim is made dynamic too: `_export_copies` traces
    with size-2 copies, since torch.export specializes dims of size 0 or 1."""
    import torch
    from torch.export import Dim
    bound = dict(zip(_param_names(model), args), **kwargs)
    tensors = {k: v for k, v in bound.items() if isinstance(v, torch.Tensor) and v.dim() >= 1}
    ref = tensors.get("input_ids", next(iter(tensors.values()), None))
    if ref is None:
        return None
    batch = ref.shape[0]
    tokens = ref.dim() == 2 and not ref.is_floating_point()
    seq = ref.shape[1] if tokens else None
    seq_dim = Dim("seq", max=_max_positions(model)) if tokens else None
    out = {}
    for k, v in bound.items():
        if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != batch:
            out[k] = None
            continue
        dims = {0: Dim("batch")}
        if seq_dim is not None and v.dim() == 2 and v.shape[1] == seq and not v.is_floating_point():
            dims[1] = seq_dim
        out[k] = dims
    return out


def _specialized_dims(exc) -> set[str] | None:
    """The dims named by torch.export's "Constraints violated (seq)! ... specialized it to be a constant"
    error: the dims slimgraph made dynamic for a transformers model whose code needs them fixed (Funnel's
    pooling, CANINE's downsampling)."""
    import re
    msg = str(exc)
    m = re.search(r"Constraints violated \(([^)]*)\)", msg)
    if m is None:
        return None
    return {n.strip() for n in m.group(1).split(",") if n.strip()} or None


def _without_dims(dynamic_shapes, names: set[str]):
    """`dynamic_shapes` (by argument name, as _hf_dynamic_shapes makes it) with the Dims `names` (None:
    every one) static."""
    out = {}
    for k, dims in dynamic_shapes.items():
        if isinstance(dims, dict):
            dims = {d: spec for d, spec in dims.items()
                    if names is not None and getattr(spec, "__name__", None) not in names} or None
        out[k] = dims
    return out


def _export_copies(args, kwargs, dynamic_shapes, model):
    """The example with every dim that `dynamic_shapes` marks dynamic but has size 1 doubled (the
    tensor concatenated with itself along it): torch.export specializes dims of size 0 or 1, so a
    batch-1 example would otherwise fix the batch. Only the traced copy changes; `dynamic_shapes` is
    given by argument name (a dict) or by position (a tuple/list over the positional arguments)."""
    import torch
    if isinstance(dynamic_shapes, dict):
        by_name = dynamic_shapes
    elif isinstance(dynamic_shapes, (tuple, list)):
        by_name = dict(zip(_param_names(model), dynamic_shapes))
    else:
        return args, kwargs

    def widen(name, v):
        dims = by_name.get(name)
        if not isinstance(v, torch.Tensor) or not isinstance(dims, dict):
            return v
        for d, spec in dims.items():
            if spec is not None and -v.dim() <= d < v.dim() and v.shape[d] == 1:
                v = torch.cat([v, v], dim=d)
        return v
    names = _param_names(model)
    return (tuple(widen(n, v) for n, v in zip(names, args)) + tuple(args[len(names):]),
            {k: widen(k, v) for k, v in kwargs.items()})


def _max_positions(model) -> int | None:
    n = getattr(model.config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 1 else None   # XLNet's is -1: no table, no bound


# ---- passes and codegen -------------------------------------------------------------------------
def _pipeline(tgt, pipeline) -> tuple[object, list[str]]:
    """The user's pipeline as given; the target's default keeps only the passes registered so far."""
    if pipeline is not None:
        return pipeline, []
    from .ir.parser import split_top
    from .passes.base import all_passes
    items = split_top(tgt.default_pipeline)
    known = all_passes()
    missing = [i for i in items if i.split("{")[0].strip() not in known]
    notes = [f"default pipeline passes not available, skipped: {', '.join(missing)}"] if missing else []
    return ",".join(i for i in items if i not in missing), notes


def _check_target_runs_pipeline(tgt, spec, allow_fallback):
    """Refuse, before the import and any pass (GPTQ calibration can take minutes), a pass whose ops the target
    cannot run (`Pass.introduced_ops`), naming the pass, the ops and the targets that run them."""
    if not spec or allow_fallback:
        return
    from .passes.pipeline import parse_pipeline
    from .targets.base import TARGETS
    for p in parse_pipeline(spec):
        missing = [op for op in p.introduced_ops() if not tgt.supports(op)]
        if missing:
            able = [t.name for t in TARGETS.values() if all(t.supports(op) for op in p.introduced_ops())]
            raise OptimizeError(f"pass {p.spec()} makes op{'s' if len(missing) > 1 else ''} {', '.join(missing)}, "
                                f"which target {tgt.name!r} does not run (`slimgraph ops --target {tgt.name}`); "
                                f"use target={' or '.join(repr(n) for n in able) or 'none'} for this pipeline, drop "
                                f"the pass, or allow the fallback to the 'torch' target (allow_fallback=True; "
                                f"`slimgraph compile --allow-fallback`)")


def _with_calibration(spec, model, calibration):
    """Parse the pipeline -> (passes, PassContext). When a pass needs calibration data
    (`needs_calibration()`), the context carries the user's `calibration`, or the shipped
    calibration text tokenized with the model's tokenizer."""
    if not spec:
        return spec
    from .passes.base import PassContext
    from .passes.pipeline import parse_pipeline
    passes = parse_pipeline(spec)
    for p in passes:    # passes with a `context` option (sparsify-attention) check it against the model's
        if getattr(p, "context", None) == 0 and _is_hf(model):
            p.context = _max_positions(model) or 0
    needy = [p for p in passes if getattr(p, "needs_calibration", lambda: False)()]
    ctx = PassContext(calibration=_calibration_ids(model, calibration, needy[0].name) if needy else None)
    return passes, ctx


def vocab_rows(model):
    """The number of rows of a torch model's input embedding (the ids it can take), or None."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        return None
    return getattr(emb, "num_embeddings", None)


def out_of_vocab(model, ids):
    """(the largest id, the vocabulary size) when token ids `ids` index past the model's embedding, else None."""
    import torch
    rows = vocab_rows(model)
    if rows is None or not isinstance(ids, torch.Tensor) or ids.numel() == 0 or int(ids.max()) < rows:
        return None
    return int(ids.max()), rows


def _calibration_ids(model, calibration, who):
    import torch
    if calibration is not None and not isinstance(calibration, str):
        bad = out_of_vocab(model, calibration)
        if bad:
            raise OptimizeError(f"{who}: calibration= holds token id {bad[0]}, but the model's embedding has "
                                f"{bad[1]} rows (ids 0..{bad[1] - 1}): these ids are not of this model's tokenizer; "
                                f"tokenize the calibration text with the model's own tokenizer")
        return calibration          # token ids, or a passes.calibration.Calibration
    tok = _tokenizer(model) if _is_causal_lm(model) else None
    if tok is None:
        what = "text was given" if isinstance(calibration, str) else "no calibration= was given"
        raise OptimizeError(
            f"{who} needs calibration data and {what}, but no tokenizer could be found for this model "
            f"(only transformers causal LMs whose tokenizer loads offline from model.name_or_path get one "
            f"by default): pass slimgraph.optimize(..., calibration=ids) with token ids i64[n, seq] of real "
            f"text, e.g. slimgraph.evaluate.token_ids(tokenizer, 'calib', 32, 256), or on the command line "
            f"`slimgraph compile ... --calibration ids.pt` (token ids in .pt/.npy/.txt)")
    from . import evaluate
    if isinstance(calibration, str):
        ids = tok(calibration, return_tensors="pt").input_ids[0]
        seq = min(256, len(ids))
        return ids[:len(ids) // seq * seq].view(-1, seq).clone()
    return evaluate.token_ids(tok, "calib", 32, 256)


def _tokenizer(model):
    """The model's tokenizer, loaded offline from `name_or_path` (a local directory, or one holding a
    single GGUF file, as slimgraph.zoo models do), or None."""
    import os
    from pathlib import Path
    path = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not path:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer
        ggufs = sorted(Path(path).glob("*.gguf")) if Path(path).is_dir() else []
        kw = {"gguf_file": ggufs[0].name} if len(ggufs) == 1 else {}
        return AutoTokenizer.from_pretrained(path, **kw)
    except Exception:   # no tokenizer files, not cached offline, ...: the caller says what to do
        return None


def _run_passes(graph, spec, verify, flat_example, report) -> str:
    if not spec:
        return ""
    from .passes.manager import PassManager
    passes, ctx = spec   # from _with_calibration
    pm = PassManager(passes, verify=verify, example_inputs=flat_example if verify == "numerics" else None)
    result = pm.run(graph, ctx)
    report.passes = result.to_dict()["passes"]
    return pm.pipeline


def _check_state(graph, pipeline):
    """Declared state must survive the pipeline (the decoder runtime reads it): a cheap check, always on."""
    from .ir.state import StateError, check_states
    try:
        check_states(graph)
    except StateError as e:
        raise OptimizeError(f"after pipeline {pipeline!r}: {e}; a pass broke the graph's declared state "
                            "(run with verify=True to find which)") from None


def _source(model) -> str | None:
    """The file a model came from (a .onnx path), for errors; None for objects."""
    import os
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else None


def _compile(tgt, graph, allow_fallback, report, source=None):
    """Build and load the target's runner; its notes (slow paths, ...) go into the report and are warned about.
    A failure names the graph and, for a model read from a file, the file."""
    try:
        runner = tgt.compile(graph)
    except Exception as e:
        if not allow_fallback or tgt.name == "torch":
            where = f" (from {source})" if source else ""
            raise OptimizeError(f"target {tgt.name!r} could not compile graph @{graph.name}{where}: "
                                f"{type(e).__name__}: {e}" + ("" if tgt.name == "torch" else
                                                              "\n  pass allow_fallback=True (`slimgraph compile "
                                                              "--allow-fallback`) to run on the 'torch' target "
                                                              "instead")) from e
        from .targets.base import get_target
        report.notes.append(f"target {tgt.name!r} failed ({type(e).__name__}: {e}); fell back to 'torch'")
        report.target = "torch"
        runner = get_target("torch").compile(graph)
    for note in runner.notes:
        report.notes.append(note)
        warnings.warn(f"slimgraph target {report.target!r}: {note}", stacklevel=3)
    return runner


def _check_runner(graph, runner, flat, target):
    import torch
    from .ir.interpreter import run
    ref, got = run(graph, *flat), runner(*flat)
    for i, (a, b) in enumerate(zip(ref, got)):
        if a.shape != b.shape or not torch.allclose(a.double(), b.double(), atol=1e-4, rtol=1e-4):
            err = (a.double() - b.double()).abs().max().item() if a.shape == b.shape else "shape"
            raise OptimizeError(f"target {target!r}: output {i} ({graph.outputs[i].name}) differs from the "
                                f"interpreter on the example inputs (max abs err {err})")
