"""SmolLM2-135M on the decoder runtime: decode speed per target next to transformers eager, and artifact
load time in a fresh process (no codegen), side by side in one run.

    python benchmarks/bench_runtime.py [--repeat 3] [--targets torch,onnx] [--skip-load]

Decode: batch 1, a 32-token prompt, 128 greedy new tokens (no early stop), rounds interleaved
(eager, then each slimgraph runtime, `--repeat` times) and the median of each reported with its
ratio to eager, so noise from other jobs hits all alike. Runtimes: fp32 and int4 g64 (RTN) with the
tied head/embedding at int8 (`HEAD8`), on each target.

Load: the int4 + int8-head artifact of each target is saved, then loaded in a fresh process that
counts codegen calls (the torch fx builder, the ONNX exporter); the child reports `import slimgraph`
and `slimgraph.load` wall time and decodes 8 tokens. Works on older checkouts too (it only uses the
public API), so the same command measures a baseline.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import slimgraph
from slimgraph import zoo
from slimgraph.generate import TokenClock

PROMPT_TOKENS, NEW_TOKENS = 32, 128
TEXT = ("The history of computing is a story of abstraction: each generation of engineers builds tools that "
        "hide the details of the previous one, from vacuum tubes to transistors to integrated circuits, and "
        "from machine code to compilers to the frameworks that train today's neural networks.")
INT4 = ("canonicalize,quantize-weights{bits=4,group=64},quantize-weights{bits=8,group=0,include=[lm_head.weight]},"
        "fuse-dequant-matmul,merge-sibling-linears,cse,dce")

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch, slimgraph
t1 = time.perf_counter()
calls = {"codegen": 0}
def count(mod, name):
    try:
        m = __import__(mod, fromlist=[name]); cls_or_mod = m
        owner, attr = (getattr(m, name.split(".")[0]), name.split(".")[1]) if "." in name else (m, name)
        fn = getattr(owner, attr)
        def wrapped(*a, **k):
            calls["codegen"] += 1
            return fn(*a, **k)
        setattr(owner, attr, wrapped)
    except (ImportError, AttributeError):
        pass
count("slimgraph.codegen.torch_fx", "_Builder.build")
count("slimgraph.codegen.onnx_export", "export_onnx")
count("slimgraph.codegen.onnx_runtime", "export_onnx")
m = slimgraph.load(sys.argv[1])
t2 = time.perf_counter()
out = m.generate(torch.tensor([[1, 504, 1296, 3003]]), max_new_tokens=8, eos_token_id=None)
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "codegen_calls": calls["codegen"], "tokens": out[0].tolist()}))
"""


def hf_run(model, ids):
    clock = TokenClock()
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, streamer=clock)
    return clock.decode_tokens_per_s()


def sg_run(fast, ids):
    fast.generate(ids, max_new_tokens=NEW_TOKENS, eos_token_id=None)
    return fast.last_generate_stats.decode_tokens_per_s


def load_in_fresh_process(path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--targets", default="torch,onnx")
    ap.add_argument("--skip-load", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    model, tok = zoo.load("smollm2-135m")
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :PROMPT_TOKENS]
    runtimes = {}
    for target in args.targets.split(","):
        for name, pipe in (("fp32", None), ("int4+head8", INT4)):
            t0 = time.perf_counter()
            runtimes[f"{target} {name}"] = slimgraph.optimize(model, (ids,), target=target, pipeline=pipe)
            print(f"optimize {target} {name}: {time.perf_counter() - t0:.1f} s", flush=True)

    hf_run(model, ids[:, :8])
    for fast in runtimes.values():
        fast.generate(ids[:, :8], max_new_tokens=8)
    tps = {"transformers eager fp32": []} | {k: [] for k in runtimes}
    for _ in range(args.repeat):
        tps["transformers eager fp32"].append(hf_run(model, ids))
        for k, fast in runtimes.items():
            tps[k].append(sg_run(fast, ids))
    eager = statistics.median(tps["transformers eager fp32"])
    print(f"\ntorch {torch.__version__}, threads {torch.get_num_threads()}, slimgraph {slimgraph.__version__}")
    print("| runtime | decode tok/s (median) | vs eager | runs |")
    print("|---|---|---|---|")
    for k, v in tps.items():
        print(f"| {k} | {statistics.median(v):.1f} | {statistics.median(v) / eager:.2f}x | "
              f"{', '.join(f'{x:.1f}' for x in v)} |")

    if args.skip_load:
        return
    print("\n| artifact (int4+head8) | size MiB | import slimgraph s | slimgraph.load s | codegen calls on load |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for k, fast in runtimes.items():
            if not k.endswith("int4+head8"):
                continue
            path = os.path.join(d, k.replace(" ", "_").replace("+", "_") + ".sg")
            fast.save(path)
            size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2**20
            r = load_in_fresh_process(path)
            want = fast.generate(torch.tensor([[1, 504, 1296, 3003]]), max_new_tokens=8, eos_token_id=None)[0].tolist()
            same = "same tokens" if r["tokens"] == want else "DIFFERENT tokens"
            print(f"| {k} | {size:.1f} | {r['import_s']:.2f} | {r['load_s']:.2f} | {r['codegen_calls']} ({same}) |")


if __name__ == "__main__":
    main()
