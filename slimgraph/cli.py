"""The `slimgraph` command line: compile, inspect, bench, export, and list ops and passes.

    slimgraph compile examples/tiny_mlp.py --target torch --pipeline canonicalize,dce -o out/
    slimgraph compile smollm2-135m -o out/              # a zoo model name
    slimgraph inspect out/model.sg [--graph]
    slimgraph bench out/model.sg [--prompt-len 32 --new-tokens 64]
    slimgraph export out/model.sg --format gguf --type q4_0 --source smollm2-135m -o model.Q4_0.gguf
    slimgraph ops | slimgraph passes

A compile source is a Python file exposing `get_model()` that returns `(model, example_inputs)`
(or just the model, with `example_inputs` defined next to it in the file), or a zoo name.
Errors print one line and exit with status 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations
import argparse
import importlib.util
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

EXIT_USAGE = 2


class CliError(Exception):
    pass


# --- compile ----------------------------------------------------------------------------------
def cmd_compile(args) -> None:
    import slimgraph
    model, example_inputs = load_source(args.source)
    t0 = time.perf_counter()
    compiled = slimgraph.optimize(model, example_inputs, target=args.target, pipeline=args.pipeline)
    took = time.perf_counter() - t0
    out = artifact_path(args.output)
    compiled.save(out)
    print(_report_text(compiled))
    print(f"optimized in {took:.2f} s; wrote {out}")


def load_source(source: str):
    """(model, example_inputs) from a Python file with get_model() or from a zoo model name."""
    path = Path(source)
    if path.suffix == ".py":
        if not path.is_file():
            raise CliError(f"no such file {source!r}")
        return _from_python_file(path)
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
        return model, (ids.input_ids,)
    return model, (ids.input_ids, ids.attention_mask)


def artifact_path(output: str) -> Path:
    """`-o out/` writes out/model.sg; `-o out/name.sg` writes exactly that directory."""
    out = Path(output)
    return out if out.suffix == ".sg" else out / "model.sg"


def _report_text(compiled) -> str:
    report = getattr(compiled, "report", None)
    return str(report) if report is not None else "(no report)"


# --- inspect ----------------------------------------------------------------------------------
def cmd_inspect(args) -> None:
    compiled = _load_artifact(args.artifact)
    graph = compiled.graph
    if args.graph:
        print(graph)
        return
    print(_report_text(compiled))
    print(f"inputs:  {_signature(graph.inputs)}")
    print(f"outputs: {_signature(graph.outputs)}")
    print(f"weights: {len(graph.weights)} tensors, {_fmt_bytes(weight_bytes(graph))}")
    print("ops:     " + ", ".join(f"{op}={n}" for op, n in op_counts(graph).most_common()))
    if getattr(compiled, "kv", None) is not None:
        kv = compiled.kv
        print(f"kv cache: {kv.num_layers} layers x {kv.num_kv_heads} heads x {kv.head_dim} ({kv.dtype})")


def op_counts(graph) -> Counter:
    return Counter(n.op for n in graph.nodes)


def weight_bytes(graph) -> int:
    return sum(v.tensor.numel() * v.tensor.element_size() for v in graph.weights.values())


def _signature(values, limit: int = 6) -> str:
    parts = [f"%{v.name}: {v.type}" for v in values]
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
    compiled.generate(ids, max_new_tokens=min(4, args.new_tokens))  # warm-up
    runs = []
    for _ in range(args.repeat):
        compiled.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=None)  # fixed length: no eos stop
        runs.append(compiled.last_generate_stats)
    prefill = statistics.median(s.prefill_ms for s in runs)
    decode = statistics.median(s.decode_tokens_per_s for s in runs)
    print(f"causal LM, batch 1, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, "
          f"median of {args.repeat}")
    print(f"prefill: {prefill:.1f} ms")
    print(f"decode:  {decode:.1f} tokens/s")


def _bench_plain(compiled, args) -> None:
    inputs = example_tensors(compiled.graph, args.prompt_len)
    compiled.run(*inputs)  # warm-up
    times = []
    for _ in range(max(args.repeat, 5)):
        t0 = time.perf_counter()
        compiled.run(*inputs)
        times.append(time.perf_counter() - t0)
    shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
    print(f"inputs {shapes}; latency median {statistics.median(times) * 1e3:.2f} ms, "
          f"min {min(times) * 1e3:.2f} ms over {len(times)} runs")


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
    from slimgraph.ir import all_ops
    for name, op in sorted(all_ops().items()):
        attrs = ", ".join(f"{k}: {a.kind}" for k, a in op.attrs.items())
        print(f"{name}({', '.join(op.inputs)})" + (f" {{{attrs}}}" if attrs else ""))


def cmd_passes(args) -> None:
    from slimgraph.passes.base import all_passes
    passes = all_passes()
    if not passes:
        print("(no passes registered)")
    for name, cls in sorted(passes.items()):
        doc = (cls.__doc__ or "").strip().splitlines()
        summary = doc[0] if doc and not doc[0].startswith(cls.__name__ + "(") else ""
        print(name + (f"  -- {summary}" if summary else ""))
        types = cls.option_types() if hasattr(cls, "option_types") else {}
        for k, v in cls().options().items():
            t = types.get(k)
            kind = t.__name__ if isinstance(t, type) else str(t or "").replace("typing.", "")
            print(f"    {k}" + (f": {kind}" if kind else "") + f" = {_pipeline_value(v)}")


def _pipeline_value(v) -> str:
    """An option value as written in a pipeline string (true/false/none, lists in brackets)."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(map(_pipeline_value, v)) + "]"
    return str(v)


# --- entry point ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimgraph", description="A compiler for neural-network inference.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="optimize a model and write an artifact")
    c.add_argument("source", help="a .py file with get_model(), or a zoo model name")
    c.add_argument("--target", default="torch", help="target name (default: torch)")
    c.add_argument("--pipeline", default=None, help="pass pipeline string (default: the target's)")
    c.add_argument("-o", "--output", required=True, help="output directory (writes DIR/model.sg) or DIR.sg")
    c.set_defaults(fn=cmd_compile)

    i = sub.add_parser("inspect", help="summarize an artifact")
    i.add_argument("artifact")
    i.add_argument("--graph", action="store_true", help="print the IR text instead")
    i.set_defaults(fn=cmd_inspect)

    b = sub.add_parser("bench", help="measure latency (or prefill and decode speed) and peak memory")
    b.add_argument("artifact")
    b.add_argument("--prompt-len", type=int, default=32)
    b.add_argument("--new-tokens", type=int, default=64)
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--eval", choices=["ppl"], default=None,
                   help="also measure quality: ppl = perplexity on the shipped eval text (causal LMs)")
    b.add_argument("--tokenizer", default=None, help="for --eval ppl: a zoo model name or a tokenizer directory")
    b.add_argument("--eval-tokens", type=int, default=4096, help="for --eval ppl: tokens of eval text")
    b.set_defaults(fn=cmd_bench)

    e = sub.add_parser("export", help="write an artifact as GGUF (llama.cpp) or a Hugging Face quantized checkpoint")
    e.add_argument("artifact")
    e.add_argument("--format", required=True, choices=["gguf", "compressed-tensors", "gptq"])
    e.add_argument("--type", default=None, help="gguf: q4_0 (default) | q4_1 | q8_0 | f16 | f32")
    e.add_argument("--float-type", default=None, help="gguf: f32 | f16 | q8_0 (default) for unquantized matrices")
    e.add_argument("--source", required=True, help="zoo name, GGUF file or HF directory for config and tokenizer")
    e.add_argument("-o", "--output", required=True, help="output file (gguf) or directory (checkpoints)")
    e.set_defaults(fn=cmd_export)

    sub.add_parser("ops", help="list registered ops").set_defaults(fn=cmd_ops)
    sub.add_parser("passes", help="list registered passes and their options").set_defaults(fn=cmd_passes)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except BrokenPipeError:  # e.g. `slimgraph ops | head`
        return 0
    except Exception as e:  # noqa: BLE001 - the CLI boundary: one line, not a traceback
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"slimgraph {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
