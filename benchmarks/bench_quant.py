"""Weight-quantization quality and cost on SmolLM2-135M-Instruct (zoo): perplexity change vs
fp32 on the shipped eval text (4096 tokens, 512-token windows), quantize time, and
linear-weight bytes vs fp16, for RTN int8 / int4 g64 / g32, GPTQ, AWQ, AWQ+GPTQ.

    python benchmarks/bench_quant.py [--only rtn-int4-g64,gptq-g64] [--calib 32x256]

The quantizers are slimgraph's (passes/gptq.py, passes/awq.py, passes/clip.py,
ir/quant_format.py) driven here over the transformers model with forward pre-hooks, with the
same semantics as the quantize-weights pass over the IR: statistics of each linear's input
from the calibration run, GPTQ sequential (later layers see quantized outputs), AWQ scales
folded into rms_norm weights / up_proj rows. The weights are replaced by their dequantized
values, which is exactly what the IR's dequantize/qlinear compute.
"""
from __future__ import annotations
import argparse
import os
import platform
import sys
import time

import torch

from slimgraph import evaluate, zoo
from slimgraph.ir import quant_format as Q
from slimgraph.passes.awq import awq_scales, scaled_stats
from slimgraph.passes.calibration import Stats
from slimgraph.passes.clip import search_clip
from slimgraph.passes.gptq import gptq_quantize

CONFIGS = {  # name: (bits, group, sym, method)
    "rtn-int8": (8, 0, True, "rtn"),
    "rtn-int4-g64": (4, 64, False, "rtn"),
    "rtn-int4-g32": (4, 32, False, "rtn"),
    "gptq-int4-g64": (4, 64, False, "gptq"),
    "awq-int4-g64": (4, 64, False, "awq"),
    "awq-gptq-int4-g64": (4, 64, False, "awq-gptq"),
}


def linears(model) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n}


def dequant(codes, scales, zeros, group):
    out, k = codes.shape
    g = Q.group_size(group, k)
    return ((codes.view(out, k // g, g) - zeros.unsqueeze(-1)) * scales.unsqueeze(-1)).view(out, k)


def stored_bytes(out, k, bits, group, sym, scale_bytes=4):
    g = Q.group_size(group, k)
    return out * k * bits // 8 + out * (k // g) * (scale_bytes + (0 if sym else 1))


def shared_stats(cache: dict, x) -> Stats:
    """Stats of x, computed once for the linears that read the same tensor (q/k/v, gate/up).
    The cache holds x itself: comparing ids alone would match a new tensor at a freed address."""
    if cache.get("x") is not x:
        cache.update(x=x, stats=Stats.of(x))
    return cache["stats"]


@torch.no_grad()
def collect_stats(model, ids) -> dict[str, Stats]:
    """Input statistics of every linear, one forward of the decoder body (lm_head skipped)."""
    stats, cache, hooks = {}, {}, []
    for name, m in linears(model).items():
        def pre(mod, args, name=name):
            stats[name] = shared_stats(cache, args[0])
        hooks.append(m.register_forward_pre_hook(pre))
    try:
        model.model(ids)
    finally:
        for h in hooks:
            h.remove()
    return stats


@torch.no_grad()
def apply_awq(model, ids, bits, group, sym) -> dict[str, Stats]:
    """Search AWQ scales per input group and fold them (norm weights / up_proj rows)."""
    raw = collect_stats(model, ids)
    out = dict(raw)
    for i, layer in enumerate(model.model.layers):
        p = f"model.layers.{i}."
        a, m = layer.self_attn, layer.mlp
        for fold, names in [((layer.input_layernorm.weight, None), ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
                            ((layer.post_attention_layernorm.weight, None), ["mlp.gate_proj", "mlp.up_proj"]),
                            ((m.up_proj.weight, "rows"), ["mlp.down_proj"])]:
            mods = [model.get_submodule(p + n) for n in names]
            st = raw[p + names[0]]
            s = awq_scales([mm.weight for mm in mods], st, bits, group, sym)
            target, how = fold
            target.div_(s.unsqueeze(1) if how == "rows" else s)
            for mm, n in zip(mods, names):
                mm.weight.mul_(s)
                out[p + n] = scaled_stats(st, s)
    return out


@torch.no_grad()
def quantize_model(model, bits, group, sym, method, ids=None, damp=0.01):
    """Replace every linear weight (lm_head/embeddings excluded) by its quantized value."""
    stats = apply_awq(model, ids, bits, group, sym) if method.startswith("awq") else {}
    if method in ("rtn", "awq"):
        for name, m in linears(model).items():
            st = stats.get(name)
            clip = search_clip(m.weight, st.hessian, bits, group, sym) if st is not None else 1.0
            m.weight.copy_(dequant(*Q.quantize_rtn(m.weight, bits, group, sym, clip), group))
        return
    cache, hooks = {}, []
    for name, m in linears(model).items():
        def pre(mod, args):
            st = shared_stats(cache, args[0])
            mod.weight.copy_(dequant(*gptq_quantize(mod.weight, st.hessian, bits, group, sym, damp=damp), group))
        hooks.append(m.register_forward_pre_hook(pre))
    from tqdm.auto import tqdm
    bar = tqdm(total=len(hooks), desc=f"{method}", unit="layer", file=sys.stderr)
    def tick(*_):
        bar.update(1)   # returns None: the layer's output is kept
    for m in linears(model).values():
        hooks.append(m.register_forward_hook(tick))
    try:
        model.model(ids)
    finally:
        for h in hooks:
            h.remove()
        bar.close()


def linear_bytes_ratio(model, bits, group, sym):
    fp16 = sum(m.weight.numel() * 2 for m in linears(model).values())
    q = sum(stored_bytes(*m.weight.shape, bits, group, sym) for m in linears(model).values())
    return q / fp16


def minilm_cosine():
    """all-MiniLM-L6-v2: mean embedding cosine vs fp32 on 200 eval sentences, RTN int8 and int4 g32."""
    import copy
    model, tok = zoo.load("minilm-l6")
    texts = evaluate.sentences(200)
    print("| MiniLM-L6 config | mean embedding cosine vs fp32 (200 sentences) |\n|---|---|")
    for name, (bits, group, sym) in {"rtn-int8": (8, 0, True), "rtn-int4-g32": (4, 32, False)}.items():
        q = copy.deepcopy(model)
        quantize_model(q, bits, group, sym, "rtn")
        print(f"| {name} | {evaluate.embedding_cosine(model, q, tok, texts):.5f} |", flush=True)
    q = copy.deepcopy(model)
    batch = tok(evaluate.sentences(128, "calib"), padding=True, return_tensors="pt")
    cache, hooks = {}, []

    def pre(mod, args):
        st = shared_stats(cache, args[0])
        mod.weight.copy_(dequant(*gptq_quantize(mod.weight, st.hessian, 4, 32, False), 32))
    hooks = [m.register_forward_pre_hook(pre) for m in q.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        q(**batch)
    for h in hooks:
        h.remove()
    print(f"| gptq-int4-g32 (128 calib sentences) | {evaluate.embedding_cosine(model, q, tok, texts):.5f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(CONFIGS))
    ap.add_argument("--calib", default="32x256", help="calibration windows x tokens (calib split)")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--base-ppl", type=float, help="fp32 perplexity from an earlier run (skips measuring it)")
    ap.add_argument("--minilm", action="store_true", help="only the MiniLM embedding-cosine table")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.minilm:
        return minilm_cosine()
    model, tok = zoo.load("smollm2-135m")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    n, seq = map(int, args.calib.split("x"))
    ids = evaluate.token_ids(tok, "calib", n, seq)
    t = time.perf_counter()
    base = args.base_ppl or evaluate.perplexity(model, tok, max_tokens=args.max_tokens)
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, calib {n}x{seq} tokens")
    print(f"fp32 ppl {base:.4f} (eval {time.perf_counter() - t:.1f} s)", flush=True)
    print("| config | ppl | ppl change | quantize time (s) | linear bytes vs fp16 |")
    print("|---|---|---|---|---|")
    for name in args.only.split(","):
        bits, group, sym, method = CONFIGS[name]
        model.load_state_dict(original)
        t = time.perf_counter()
        quantize_model(model, bits, group, sym, method, ids)
        dt = time.perf_counter() - t
        ppl = evaluate.perplexity(model, tok, max_tokens=args.max_tokens)
        print(f"| {name} | {ppl:.4f} | {100 * (ppl / base - 1):+.2f}% | {dt:.1f} | "
              f"{linear_bytes_ratio(model, bits, group, sym):.3f} |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
