"""Ablation for sparsify-attention's design (issue 17): do StreamingLLM's re-positioned sinks lower perplexity?

StreamingLLM (Xiao et al. 2023, arXiv:2309.17453, section 3.2) assigns positions *within the cache*: once the
ring is full, a query at cache slot S + W sees sink s at distance S + W - s instead of its original distance
i - s. slimgraph caches keys after RoPE (as transformers does), so every key keeps its original position. Since
RoPE scores depend only on q_pos - k_pos and the W window keys are contiguous, the two schemes differ only in the
sinks' distance; this script scores both on SmolLM2-135M with transformers' own model (eager), through a custom
attention function: W = 256 keys before each query (and itself) plus S = 4 sinks, one forward per window.

    python benchmarks/ablation_sink_positions.py [--windows 42] [--threads 1]

Prints the perplexity of full attention, original positions (what sparsify-attention computes) and
re-positioned sinks over `--windows` 1024-token windows of the eval split.
"""
import argparse
import math

import torch
from transformers import AttentionInterface

from slimgraph import evaluate, zoo

W, S = 256, 4


def rotate(x, pos, inv_freq):
    """RoPE (rotate-half form, as Llama) of x [b, h, T, d] by positions pos [T] (any sign: R(a) R(b) = R(a + b))."""
    f = pos.float()[:, None] * inv_freq[None]
    cos, sin = torch.cat([f, f], -1).cos(), torch.cat([f, f], -1).sin()
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def attention_fn(mode, inv_freq):
    def attend(module, q, k, v, mask, scaling=None, dropout=0.0, **kw):   # q, k after RoPE: [b, h, T, d]
        t = q.shape[2]
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        i, j = torch.arange(t)[:, None], torch.arange(t)[None]
        keep = j <= i
        if mode != "full":
            keep = keep & ((i - j <= W) | (j < S))
        s = (q @ k.transpose(-1, -2)) * scaling
        if mode == "repositioned":   # sinks scored from the query's cache slot min(i, S + W), not from i
            shift = torch.clamp(torch.arange(t), max=S + W) - torch.arange(t)
            s[..., :S] = (rotate(q, shift, inv_freq) @ k[:, :, :S].transpose(-1, -2)) * scaling
        p = s.masked_fill(~keep, float("-inf")).softmax(-1)
        return (p @ v).transpose(1, 2).contiguous(), None
    return attend


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = zoo.load("smollm2-135m")
    inv_freq = model.model.rotary_emb.inv_freq.float()
    ids = tok(evaluate.load_text("eval"), return_tensors="pt").input_ids[0][:1024 * args.windows]
    ids = ids.view(args.windows, 1024)
    print(f"SmolLM2-135M, eval split, {args.windows} x 1024 tokens, W = {W}, S = {S}")
    for mode in ("full", "original positions", "repositioned"):
        AttentionInterface.register("ablation", attention_fn(mode.split()[0], inv_freq))
        model.config._attn_implementation = "ablation"
        nll = 0.0
        with torch.inference_mode():
            for w in range(args.windows):
                logits = model(ids[w:w + 1]).logits[0].float()
                nll += torch.nn.functional.cross_entropy(logits[:-1], ids[w, 1:], reduction="sum").item()
        print(f"{mode}: perplexity {math.exp(nll / (args.windows * 1023)):.4f}", flush=True)


if __name__ == "__main__":
    main()
