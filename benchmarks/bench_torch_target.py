"""SmolLM2-135M decode speed: transformers eager fp32 vs slimgraph's `torch` target, side by side.

    python benchmarks/bench_torch_target.py [--pipeline PIPELINE] [--repeat 3]

Batch 1, a 32-token prompt, 128 greedy new tokens (no early stop on either side). The two runtimes
alternate `--repeat` times in one process and the median of each is reported, so that noise from
other jobs on a shared machine hits both alike. Prints a markdown row for benchmarks/RESULTS.md.
"""
import argparse
import platform
import statistics
import time

import torch

import slimgraph
from slimgraph import zoo
from slimgraph.generate import TokenClock

PROMPT_TOKENS, NEW_TOKENS = 32, 128
TEXT = ("The history of computing is a story of abstraction: each generation of engineers builds tools that "
        "hide the details of the previous one, from vacuum tubes to transistors to integrated circuits, and "
        "from machine code to compilers to the frameworks that train today's neural networks.")


def hf_run(model, ids):
    clock = TokenClock()
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, streamer=clock)
    return clock.prefill_s(), clock.decode_tokens_per_s()


def slimgraph_run(fast, ids):
    fast.generate(ids, max_new_tokens=NEW_TOKENS, eos_token_id=None)  # no eos: always NEW_TOKENS tokens
    s = fast.last_generate_stats
    return s.prefill_s, s.decode_tokens_per_s


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default=None, help="slimgraph pipeline (default: the torch target's)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    model, tok = zoo.load("smollm2-135m")
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :PROMPT_TOKENS]
    assert ids.shape[1] == PROMPT_TOKENS, "the benchmark text is shorter than the prompt length"

    t0 = time.perf_counter()
    fast = slimgraph.optimize(model, (ids,), target="torch", pipeline=args.pipeline)
    optimize_s = time.perf_counter() - t0

    hf_run(model, ids[:, :8])  # warm-up both sides
    fast.generate(ids[:, :8], max_new_tokens=8)
    hf, ours = [], []
    for _ in range(args.repeat):
        hf.append(hf_run(model, ids))
        ours.append(slimgraph_run(fast, ids))

    def med(runs, i):
        return statistics.median(r[i] for r in runs)
    hf_tps, our_tps = med(hf, 1), med(ours, 1)
    print(f"cpu: {cpu_name()}; torch threads: {torch.get_num_threads()}; torch {torch.__version__}")
    print(f"slimgraph pipeline: {fast.pipeline or '(none)'}; optimize() {optimize_s:.1f} s")
    print("per run decode tok/s, transformers:", [round(r[1], 1) for r in hf],
          "slimgraph:", [round(r[1], 1) for r in ours])
    print()
    print("| pipeline | transformers eager fp32 tok/s | slimgraph torch tok/s | ratio "
          "| prefill ms (hf / sg) | optimize() s |")
    print("|---|---|---|---|---|---|")
    print(f"| `{fast.pipeline or '(none)'}` | {hf_tps:.1f} | {our_tps:.1f} | {our_tps / hf_tps:.2f}x "
          f"| {med(hf, 0) * 1e3:.0f} / {med(ours, 0) * 1e3:.0f} | {optimize_s:.1f} |")


if __name__ == "__main__":
    main()
