"""SmolLM2-135M decoding with a bounded KV cache: `sparsify-attention` (StreamingLLM: the first 4 tokens plus the
last 256) turns the growing KV cache into a ring, so memory and step time stop growing with the context; with
`--linear`, `linearize-attention` (a LoLCATs hybrid: softmax over the last 64 keys + 4 sinks, Hedgehog linear
attention over the rest, a fixed-size state per layer) after a short attention-transfer distillation.

    python examples/long_context_smollm2.py [--new-tokens 600] [--target cpu] [--linear] [--distill-s 60]

Prints, for full attention and the rewritten model side by side: the KV state each keeps after the generation
(rows and MB), the decode speed, and the perplexity on two 1024-token windows of the eval split (the quality the
rewrite costs). `--target cpu` (the default) needs `pip install 'slimgraph[tvm]'`; `--target torch` runs anywhere.
Measured figures (perplexity over the whole eval split, speed at 8k context): benchmarks/RESULTS.md.
"""
import argparse
import math
import os
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--new-tokens", type=int, default=600)
ap.add_argument("--target", default="cpu", choices=["cpu", "torch"])
ap.add_argument("--linear", action="store_true", help="linearize-attention (window 64 + 4 sinks) instead")
ap.add_argument("--distill-s", type=float, default=60.0, help="--linear: seconds of feature-map distillation")
ap.add_argument("--threads", type=int, default=1)
args = ap.parse_args()
torch.set_num_threads(args.threads)
os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))

import slimgraph  # noqa: E402
from slimgraph import evaluate, zoo  # noqa: E402

QUANT = ("quantize-weights{bits=4,group=64},quantize-weights{bits=8,group=0,include=[lm_head.weight]},"
         "fuse-dequant-matmul,quantize-activations,")   # W4A8: int4 weights, int8 activations
REWRITE = ("linearize-attention{feature_map=hedgehog,window=64,sinks=4}," if args.linear
           else "sparsify-attention{kind=sliding_window,window=256,sinks=4},")
FULL = "canonicalize," + QUANT + "cse,dce"
BOUNDED = "canonicalize," + QUANT + REWRITE + "cse,dce"

model, tok = zoo.load("smollm2-135m")
prompt = tok("Python's data model, summarized chapter by chapter:\n\n1.", return_tensors="pt").input_ids
models = {}
for name, pipe in (("full attention", FULL), ("linear hybrid W=64+4" if args.linear else "window 256 + 4 sinks", BOUNDED)):
    t = time.perf_counter()
    models[name] = slimgraph.optimize(model, (prompt,), target=args.target, pipeline=pipe)
    print(f"{name}: compiled for {args.target} in {time.perf_counter() - t:.1f} s")

if args.linear:   # only the feature maps train: each layer's output matches the softmax layer's (calib split)
    fast = models["linear hybrid W=64+4"]
    print(slimgraph.distill_attention(fast, tokenizer=tok, num_seqs=4, time_budget_s=args.distill_s, seed=0))

eval_ids = tok(evaluate.load_text("eval"), return_tensors="pt").input_ids[0][:2048].view(2, 1024)
print(f"\n{'model':24s} {'KV state after':>16s} {'state MB':>9s} {'decode tok/s':>13s} {'perplexity':>11s}")
outputs = {}
for name, fast in models.items():
    dec = fast.decoder()   # the decoder runtime: prefill, then one step per token (generate() does the same)
    logits = dec.prefill(prompt)["logits"][:, -1]
    tokens = []
    t = time.perf_counter()
    for _ in range(args.new_tokens):
        nxt = logits.argmax(-1, keepdim=True)
        tokens.append(int(nxt))
        logits = dec.step(nxt)["logits"][:, -1]
    tps = args.new_tokens / (time.perf_counter() - t)
    rows = max(s.shape[2] for s, st in zip(dec.states, fast.graph.states) if st.kind != "fixed") \
        if any(st.kind != "fixed" for st in fast.graph.states) else 0
    mb = sum(s.numel() * s.element_size() for s in dec.states) / 2 ** 20
    nll = 0.0
    with torch.inference_mode():
        for w in range(len(eval_ids)):
            lg = fast.decoder().prefill(eval_ids[w:w + 1])["logits"][0].float()
            nll += float(torch.nn.functional.cross_entropy(lg[:-1], eval_ids[w, 1:], reduction="sum"))
    ppl = math.exp(nll / (eval_ids.numel() - len(eval_ids)))
    outputs[name] = tokens
    print(f"{name:24s} {f'{dec.length} tokens':>16s} {mb:9.1f} {tps:13.1f} {ppl:11.3f}   (KV rows kept: {rows})")

full, bounded = outputs.values()
same = next((i for i, (a, b) in enumerate(zip(full, bounded)) if a != b), len(full))
print(f"\nthe two greedy continuations agree for the first {same} of {args.new_tokens} new tokens")
print("bounded model's text:", repr(tok.decode(bounded[:80])) + " ...")
print("ok")
