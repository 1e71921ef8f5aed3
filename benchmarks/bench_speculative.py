"""SmolLM2-135M speculative decoding with Medusa and EAGLE draft heads: train, then decode side by side.

    python benchmarks/bench_speculative.py [--train-cpu-s 600] [--prompts 20] [--new 128] [--bases fp32,int4]

Per base pipeline (fp32; int4 g64 RTN + int8 tied head, as in bench_runtime.py), on the torch target:
1. compile the base alone, with `insert-draft-heads{num_heads=K}` (Medusa) and with
   `insert-draft-heads{num_heads=S,kind=eagle}` (after quantization: the heads stay float and share the
   model's lm_head); make the self-distillation data once (greedy continuations of `--train-prompts`
   32-token windows of the standard library's docstrings, slimgraph.draft.docstring_texts, and the
   base's hidden states over them) and train both heads on it for `--train-cpu-s` CPU seconds each
   (time.process_time of this process, all threads; wall time is reported too; early stopping on
   held-out sequences); with `--heads-dir DIR` the trained models are saved there and a later run with
   the same DIR loads them instead of training (decode on a quiet machine without retraining);
2. measure the cost of verifying k tokens in one forward relative to one decode step (`verify_cost`);
3. on `--prompts` windows of the eval split (slimgraph/data/eval.txt; never trained on) x `--new` new
   tokens (no early stop), decode plainly (the base without heads: what runs without speculation),
   with the Medusa chain and (fixed) tree, and the EAGLE chain and tree, the dynamic trees of either (`-dynamic`:
   generate's default, slimgraph/dynamic_tree.py), prompt lookup alone (n-gram drafts
   from the context, no heads: `lookup`) and each tree with a lookup branch (`+lookup`), interleaved
   per prompt so the load hits all alike. Reports token identity vs plain greedy, mean acceptance length (tokens per verify
   forward) and decode wall-clock speedup (sum of decode seconds, prefill excluded).
"""
import argparse
import ast
import json
import os
import platform
import time

import torch

import slimgraph
from slimgraph import evaluate, zoo
from slimgraph.draft import prompt_ids, self_distillation_data
from slimgraph.generate import generate
from slimgraph.speculative import DEFAULT_TREE, num_heads

INT4 = ("canonicalize,quantize-weights{bits=4,group=64},quantize-weights{bits=8,group=0,include=[lm_head.weight]},"
        "fuse-dequant-matmul,merge-sibling-linears,cse,dce")
FP32 = "canonicalize,cse,dce"
# w4a8: int8 activations (cpu: VNNI); w4a16: int16 activations (cpu: VNNI on two int8 halves: a verify runs 2k rows)
BASES = {"fp32": FP32, "int4": INT4, "w4a8": INT4 + ",quantize-activations",
         "w4a16": INT4 + ",quantize-activations{bits=16}"}
# "-dynamic": speculative="tree", tree="dynamic" (slimgraph/dynamic_tree.py: cost-aware, sized per verify)
MODES = ("plain", "lookup", "lookup-dynamic", "medusa-chain", "medusa-tree", "medusa-tree+lookup", "medusa-dynamic",
         "medusa-dynamic+lookup", "eagle-chain", "eagle-tree", "eagle-tree+lookup", "eagle-dynamic",
         "eagle-dynamic+lookup")


def parse_modes(modes: str, lookup: str):
    """--modes and --lookup -> (draft lengths, modes): `lookup` runs once per length (lookup7, lookup11, ...) when
    --lookup lists several. ValueError (before any model loads) for a length that is not a positive integer, a
    repeated one, or a mode not in MODES nor lookupN."""
    try:
        lookups = [int(k) for k in lookup.split(",")]
    except ValueError:
        raise ValueError(f"--lookup {lookup!r}: give draft lengths as comma-separated positive integers, e.g. 7,11") from None
    if min(lookups) < 1 or len(set(lookups)) != len(lookups):
        raise ValueError(f"--lookup {lookup!r}: draft lengths must be distinct positive integers, e.g. 7,11")
    out = [m2 for m in modes.split(",")
           for m2 in ([f"lookup{k}" for k in lookups] if m == "lookup" and len(lookups) > 1 else [m])]
    bad = [m for m in out if m not in MODES and not (m.startswith("lookup") and m[len("lookup"):].isdigit()
                                                     and int(m[len("lookup"):]) > 0)]
    if bad or len(set(out)) != len(out):
        raise ValueError(f"--modes {modes!r}: {'unknown ' + ', '.join(bad) if bad else 'a mode is listed twice'}; "
                         f"choose from {', '.join(MODES)} or lookupN (N draft tokens)")
    return lookups, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-s", type=float, default=None, help="wall seconds of head updates per head (default: none)")
    ap.add_argument("--train-cpu-s", type=float, default=600.0,
                    help="CPU seconds (time.process_time, all threads) of head updates per head")
    ap.add_argument("--train-prompts", type=int, default=64)
    ap.add_argument("--train-new", type=int, default=96)
    ap.add_argument("--heads", type=int, default=4, help="Medusa heads")
    ap.add_argument("--eagle-steps", type=int, default=5, help="EAGLE draft steps (chain length)")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--lookup", default="8", help="prompt-lookup draft tokens per verify (modes with lookup); a "
                    "comma-separated list runs the `lookup` mode once per value (lookup7, lookup11, ...), the "
                    "`+lookup` modes with the first")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--bases", default="fp32,int4", help=f"comma-separated of {sorted(BASES)}")
    ap.add_argument("--target", default="torch", help="target of every compiled model (draft heads: torch only)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--train-only", action="store_true", help="stop after training (with --heads-dir: saved)")
    ap.add_argument("--tree", default=None, help="the -tree modes' fixed tree as a Python literal list of rank "
                    "paths, e.g. '[(0,), (1,), (0, 0)]' (default: slimgraph.speculative.DEFAULT_TREE)")
    ap.add_argument("--heads-dir", default=None, help="save trained models here / load them when present")
    args = ap.parse_args()
    try:
        lookups, modes = parse_modes(args.modes, args.lookup)
    except ValueError as e:
        ap.error(str(e))
    if args.target != "torch" and any(m.startswith(("medusa", "eagle")) for m in modes):
        ap.error(f"--target {args.target}: the draft-head modes train on the torch target; use --modes plain,lookup")
    try:
        fixed_tree = DEFAULT_TREE if args.tree is None else [tuple(t) for t in ast.literal_eval(args.tree)]
    except (ValueError, SyntaxError, TypeError) as e:
        ap.error(f"--tree {args.tree!r}: not a list of rank paths ({e})")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = zoo.load("smollm2-135m")
    example = (torch.zeros(1, 8, dtype=torch.long),)
    train_prompts = prompt_ids(tok, n=args.train_prompts, prompt_tokens=args.prompt_tokens)
    eval_prompts = evaluate.token_ids(tok, "eval", n=args.prompts, seq=args.prompt_tokens)
    results = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, loadavg at start {os.getloadavg()}",
               "torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args), "bases": {}}
    print(results["machine"], "torch", torch.__version__, "threads", torch.get_num_threads(), flush=True)
    for base in args.bases.split(","):
        pipe = BASES[base]
        c0 = time.process_time()
        plain = slimgraph.optimize(model, example, target=args.target, pipeline=pipe)
        saved = {k: os.path.join(args.heads_dir, f"{base}-{k}") for k in ("medusa", "eagle")} if args.heads_dir else {}
        info = {"pipeline": pipe, "target": args.target}
        medusa = eagle = None
        if not any(m.startswith(("medusa", "eagle")) for m in modes):
            pass                              # plain and prompt lookup need no heads: nothing to train
        elif saved and all(os.path.exists(v) for v in saved.values()):
            medusa, eagle = slimgraph.load(saved["medusa"]), slimgraph.load(saved["eagle"])
            with open(os.path.join(args.heads_dir, f"{base}-training.json")) as f:
                info.update(json.load(f))
            print(base, "loaded trained heads from", args.heads_dir, flush=True)
        else:
            medusa = slimgraph.optimize(model, example, target="torch",
                                        pipeline=pipe + f",insert-draft-heads{{num_heads={args.heads}}}")
            eagle = slimgraph.optimize(model, example, target="torch",
                                       pipeline=pipe + f",insert-draft-heads{{num_heads={args.eagle_steps},kind=eagle}}")
            print(base, f"compiled 3 graphs in {time.process_time() - c0:.0f} CPU s", flush=True)
            t0, c0 = time.perf_counter(), time.process_time()
            data = self_distillation_data(medusa, train_prompts, args.train_new, progress=False)
            data_s, data_cpu = time.perf_counter() - t0, time.process_time() - c0
            print(base, f"self-distillation data {tuple(data[0].shape)}: {data_s:.0f} s wall / {data_cpu:.0f} s CPU",
                  "loadavg", os.getloadavg(), flush=True)
            info.update({"data_s": data_s, "data_cpu_s": data_cpu, "loadavg_train_start": os.getloadavg()})
            for name, c in (("medusa", medusa), ("eagle", eagle)):
                rep = slimgraph.train_draft_heads(c, prompts=train_prompts, data=data, steps=10**9, seed=0,
                                                  time_budget_s=args.train_s, cpu_budget_s=args.train_cpu_s,
                                                  progress=False)
                print(base, name, rep, flush=True)
                info[name] = {"training": str(rep), "heldout_top1": rep.heldout_top1, "steps": rep.steps,
                              "heldout_chain": rep.heldout_chain,
                              "train_s": rep.seconds, "train_cpu_s": rep.cpu_seconds}
            if saved:
                os.makedirs(args.heads_dir, exist_ok=True)
                medusa.save(saved["medusa"])
                eagle.save(saved["eagle"])
                with open(os.path.join(args.heads_dir, f"{base}-training.json"), "w") as f:
                    json.dump(info, f, indent=1)
        if args.train_only:
            continue
        info["verify_cost"] = verify_cost(plain, eval_prompts[0][None])
        info["loadavg_decode_start"] = os.getloadavg()
        print(base, args.target, "verify of k tokens / one decode step:", {k: round(v, 2) for k, v in info["verify_cost"].items()},
              "loadavg", os.getloadavg(), flush=True)
        rows = {m: {"identical": 0, "decode_s": 0.0, "verifies": 0, "tokens": 0} for m in modes}
        compiled = {"plain": plain, "medusa": medusa, "eagle": eagle}
        for p in eval_prompts:
            outs = {}
            for mode in modes:
                kind, _, how = mode.partition("-")
                how, plus, _ = how.partition("+")
                if kind.startswith("lookup"):  # prompt lookup alone, on the base without heads
                    c, spec, lookup = plain, how or "chain", int(kind[len("lookup"):] or lookups[0])
                else:
                    c, spec, lookup = compiled[kind], how or False, lookups[0] if plus else 0
                # "-tree": the fixed tree (--tree, default the Medusa-style DEFAULT_TREE) cut to the heads' depth;
                # "-dynamic": the default
                tree = ("dynamic" if spec == "dynamic" else
                        [t for t in fixed_tree if len(t) <= num_heads(c.graph)] if spec == "tree" else None)
                out = generate(c, p[None], args.new, eos_token_id=None, speculative="tree" if tree else spec,
                               tree=tree, lookup=lookup)
                st = c.last_generate_stats
                outs[mode] = out
                r = rows[mode]
                r["decode_s"] += st.decode_s
                r["verifies"] += st.verifies
                r["tokens"] += st.new_tokens - 1
                r["identical"] += int(torch.equal(out, outs["plain"]))
            summary = report(base, rows)      # running totals after each prompt (a partial run is still a result)
        info["decode"] = summary
        info["loadavg_end"] = os.getloadavg()
        results["bases"][base] = info
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    results["loadavg_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def verify_cost(fast, prompt, sizes=(1, 2, 4, 6, 8, 16), rounds=7):
    """Median seconds of a verify of k tokens over a 1-token verify, interleaved: {k: ratio}."""
    dec = fast.decoder(1)
    times = {k: [] for k in sizes}
    with torch.inference_mode():
        dec.prefill(prompt)
        for _ in range(rounds):
            for k in sizes:
                cands = torch.randint(0, 1000, (1, k))
                t = time.perf_counter()
                dec.verify(cands)
                times[k].append(time.perf_counter() - t)
                dec.accept(1)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {k: med[k] / med[1] for k in sizes}


def report(base, rows):
    n = rows["plain"]["identical"]
    summary = {}
    for mode, r in rows.items():
        summary[mode] = {
            "identical": f"{r['identical']}/{n}",
            "decode_tok_s": r["tokens"] / r["decode_s"],
            "mean_acceptance": r["tokens"] / r["verifies"] if r["verifies"] else 1.0,
            "speedup": rows["plain"]["decode_s"] / r["decode_s"]}
        print(f"{base:5s} {n:2d} prompts {mode:12s} identical {summary[mode]['identical']}  decode "
              f"{summary[mode]['decode_tok_s']:6.1f} tok/s  acceptance {summary[mode]['mean_acceptance']:.2f}  "
              f"speedup {summary[mode]['speedup']:.2f}x", flush=True)
    return summary


if __name__ == "__main__":
    main()
