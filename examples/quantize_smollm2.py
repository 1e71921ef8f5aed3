"""Quantize SmolLM2-135M-Instruct to int4 for the CPU `torch` target: perplexity against the float
model, decode speed side by side with transformers, and the size of the saved artifact.

    python examples/quantize_smollm2.py [--method gptq|rtn|awq] [--head8] [--select 0.05] [--out DIR]

--head8 also stores the (tied) head/embedding at int8; --select T lets select-precision keep the most
sensitive layers at int8 so the estimated perplexity increase stays within T (e.g. 0.05 = +5%).
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

import slimgraph
from slimgraph import evaluate, zoo
from slimgraph.generate import TokenClock

HEAD8 = "quantize-weights{bits=8,group=0,include=[lm_head.weight]},"


def pipeline(args) -> str:
    if args.select is not None:
        quant = f"select-precision{{target_ppl={args.select},bits=4,group=64,high_bits=8,method={args.method}}},"
    else:
        quant = f"quantize-weights{{bits=4,group=64,method={args.method}}},"
    return "canonicalize," + quant + (HEAD8 if args.head8 else "") + "fuse-dequant-matmul,merge-sibling-linears,cse,dce"


def decode_tok_s(generate, ids, n) -> float:
    generate(ids, 4)                                  # warm-up
    clock = TokenClock()
    generate(ids, n, clock)
    return clock.decode_tokens_per_s()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="gptq", choices=["rtn", "gptq", "awq", "awq-gptq"])
    ap.add_argument("--head8", action="store_true", help="quantize the tied head/embedding to int8 too")
    ap.add_argument("--select", type=float, default=None, help="select-precision target (ppl increase)")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", default=None, help="artifact directory (default: a temporary one)")
    args = ap.parse_args()

    model, tok = zoo.load("smollm2-135m")
    ids = tok("The Python language reference describes", return_tensors="pt").input_ids
    pipe = pipeline(args)
    print(f"pipeline: {pipe}")
    t = time.perf_counter()
    fast = slimgraph.optimize(model, (ids,), target="torch", pipeline=pipe)   # calibrates on the shipped text
    print(f"quantized in {time.perf_counter() - t:.1f} s")
    for rec in fast.report.passes:
        choice = (rec.get("stats") or {}).get("choice")
        if choice:
            high = [n for n, c in choice.items() if c == "int8"]
            print(f"select-precision kept {len(high)} of {len(choice)} layers at int8 "
                  f"(linear bytes {rec['stats']['bytes_vs_fp16']:.3f}x fp16)")

    ref = evaluate.perplexity(model, tok, max_tokens=args.eval_tokens)
    ours = evaluate.perplexity(fast, tok, max_tokens=args.eval_tokens)
    print(f"perplexity on the shipped eval text: float {ref:.3f}, int4 {ours:.3f} ({(ours / ref - 1) * 100:+.2f}%)")

    with torch.inference_mode():
        hf = decode_tok_s(lambda x, n, s=None: model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                              streamer=s), ids, args.new_tokens)
        sg = decode_tok_s(lambda x, n, s=None: fast.generate(x, max_new_tokens=n, eos_token_id=None, streamer=s),
                          ids, args.new_tokens)
    print(f"decode: transformers eager fp32 {hf:.1f} tok/s, slimgraph int4 {sg:.1f} tok/s ({sg / hf:.2f}x)")

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "smollm2-int4.sg"
    fast.save(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"artifact {out}: {size / 2**20:.0f} MiB (load it with slimgraph.load)")


if __name__ == "__main__":
    main()
