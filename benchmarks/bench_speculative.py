"""SmolLM2-135M speculative decoding with Medusa draft heads: train, then decode side by side.

    python benchmarks/bench_speculative.py [--train-s 240] [--prompts 20] [--new 128] [--bases fp32,int4]

Per base pipeline (fp32; int4 g64 RTN + int8 tied head, as in bench_runtime.py), on the torch target:
1. compile with `insert-draft-heads{num_heads=K}` (after quantization: the heads stay float and share
   the model's lm_head), self-distil the heads (`slimgraph.train_draft_heads`) on greedy continuations of
   prompts from the calibration split (slimgraph/data/calib.txt) for `--train-s` seconds of updates;
2. on `--prompts` windows of the eval split (slimgraph/data/eval.txt; never trained on) x `--new` new
   tokens (no early stop), decode with the SAME compiled model plainly (speculative=False), with a chain
   and with the Medusa tree, interleaved per prompt so noise hits all alike. Reports token identity vs
   plain greedy, mean acceptance length (tokens per verify forward) and decode wall-clock speedup
   (sum of decode seconds, prefill excluded; prefill is the same forward in all three).
"""
import argparse
import json
import os
import platform
import time

import torch

import slimgraph
from slimgraph import evaluate, zoo
from slimgraph.generate import generate

INT4 = ("canonicalize,quantize-weights{bits=4,group=64},quantize-weights{bits=8,group=0,include=[lm_head.weight]},"
        "fuse-dequant-matmul,merge-sibling-linears,cse,dce")
FP32 = "canonicalize,cse,dce"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-s", type=float, default=240.0, help="seconds of head updates per base")
    ap.add_argument("--train-prompts", type=int, default=64)
    ap.add_argument("--train-new", type=int, default=96)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--bases", default="fp32,int4")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = zoo.load("smollm2-135m")
    example = (torch.zeros(1, 8, dtype=torch.long),)
    train_prompts = evaluate.token_ids(tok, "calib", n=args.train_prompts, seq=args.prompt_tokens)
    eval_prompts = evaluate.token_ids(tok, "eval", n=args.prompts, seq=args.prompt_tokens)
    results = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, loadavg at start {os.getloadavg()}",
               "torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args), "bases": {}}
    print(results["machine"], "torch", torch.__version__, "threads", torch.get_num_threads(), flush=True)
    for base in args.bases.split(","):
        pipe = (FP32 if base == "fp32" else INT4) + f",insert-draft-heads{{num_heads={args.heads}}}"
        fast = slimgraph.optimize(model, example, target="torch", pipeline=pipe)
        rep = slimgraph.train_draft_heads(fast, prompts=train_prompts, new_tokens=args.train_new,
                                          steps=10**9, time_budget_s=args.train_s, seed=0, progress=False)
        print(base, rep, flush=True)
        rows = {m: {"identical": 0, "decode_s": 0.0, "verifies": 0, "tokens": 0} for m in ("plain", "chain", "tree")}
        for p in eval_prompts:
            outs = {}
            for mode in ("plain", "chain", "tree"):
                out = generate(fast, p[None], args.new, eos_token_id=None,
                               speculative=False if mode == "plain" else mode)
                st = fast.last_generate_stats
                outs[mode] = out
                r = rows[mode]
                r["decode_s"] += st.decode_s
                r["verifies"] += st.verifies
                r["tokens"] += st.new_tokens - 1
                r["identical"] += int(torch.equal(out, outs["plain"]))
            summary = report(base, rows)      # running totals after each prompt (a partial run is still a result)
        results["bases"][base] = {"pipeline": pipe, "training": str(rep), "heldout_top1": rep.heldout_top1,
                                  "train_steps": rep.steps, "train_s": rep.seconds, "data_s": rep.data_seconds,
                                  "decode": summary}
    results["loadavg_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def report(base, rows):
    n = rows["plain"]["identical"]
    summary = {}
    for mode, r in rows.items():
        summary[mode] = {
            "identical": f"{r['identical']}/{n}",
            "decode_tok_s": r["tokens"] / r["decode_s"],
            "mean_acceptance": r["tokens"] / r["verifies"] if r["verifies"] else 1.0,
            "speedup": rows["plain"]["decode_s"] / r["decode_s"]}
        print(f"{base:5s} {n:2d} prompts {mode:6s} identical {summary[mode]['identical']}  decode {summary[mode]['decode_tok_s']:6.1f} "
              f"tok/s  acceptance {summary[mode]['mean_acceptance']:.2f}  speedup {summary[mode]['speedup']:.2f}x",
              flush=True)
    return summary


if __name__ == "__main__":
    main()
