"""Several `cpu`-target pipelines of SmolLM2-135M side by side with llama.cpp Q4_0 in one process: decode tok/s
(interleaved rounds, medians) and, with --ppl, each pipeline's eval perplexity.

    taskset -c 0 python benchmarks/bench_cpu_pipelines.py --threads 1 [--rounds 5] [--ppl] PIPELINE [PIPELINE ...]

Where bench_cpu_target.py compares runtimes for one pipeline, this compares quantization choices (group size,
zero points, scale dtype, head precision) for the `cpu` target against the same llama.cpp file, e.g. g64 RTN
against the Q4_1 grid (`quantize-weights{bits=4,group=32,zero_point=float,scale_dtype=f16}`). Builds use the
normal build cache ($SLIMGRAPH_CACHE_DIR). Prints markdown for benchmarks/RESULTS.md.
"""
import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch

from bench_cpu_target import llama_decode, prompt_ids, q4_0_gguf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pipelines", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--ppl", action="store_true", help="also each pipeline's perplexity (eval.txt, 4096 tokens)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import slimgraph
    from slimgraph import evaluate, zoo
    from llama_cpp import Llama
    model, tok = zoo.load("smollm2-135m")
    ids = prompt_ids(tok)
    built = [slimgraph.optimize(model, (ids,), target="cpu", pipeline=p) for p in args.pipelines]
    llm = Llama(model_path=str(q4_0_gguf(Path(tempfile.mkdtemp(prefix="bench_cpu_pipelines_")))), n_ctx=512,
                n_threads=args.threads, verbose=False)
    for m in built:   # first-call costs are not decode speed
        m.generate(ids, max_new_tokens=8, eos_token_id=[])
    llama_decode(llm, ids[0].tolist(), 8)
    speeds = [[] for _ in built]
    ref = []
    for _ in range(args.rounds):
        for i, m in enumerate(built):
            m.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=[])
            speeds[i].append(m.last_generate_stats.decode_tokens_per_s)
        ref.append(llama_decode(llm, ids[0].tolist(), args.new_tokens))
    r = statistics.median(ref)
    print(f"\nSmolLM2-135M greedy decode, prompt 32, {args.new_tokens} new tokens, {args.threads} thread(s), median of "
          f"{args.rounds} interleaved rounds; llama.cpp Q4_0 {r:.1f} tok/s ({', '.join(f'{v:.0f}' for v in ref)})")
    print("| pipeline (`cpu` target) | decode tok/s | vs llama.cpp Q4_0 |" + (" perplexity |" if args.ppl else ""))
    print("|---|---|---|" + ("---|" if args.ppl else ""))
    for p, m, s in zip(args.pipelines, built, speeds):
        v = statistics.median(s)
        ppl = f" {evaluate.perplexity(m, tok, window=512, max_tokens=4096):.4f} |" if args.ppl else ""
        print(f"| `{p}` | {v:.1f} | {v / r:.3f}x |{ppl}", flush=True)


if __name__ == "__main__":
    main()
