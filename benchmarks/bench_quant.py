"""Weight-quantization quality and cost on SmolLM2-135M-Instruct (zoo): perplexity change vs
fp32 on the shipped eval text (4096 tokens, 512-token windows), quantize time, and
linear-weight bytes vs fp16, for RTN int8 / int4 g64 / g32, GPTQ, AWQ, AWQ+GPTQ, torchao's
IntxWeightOnlyConfig int4 g64 (benchmark-only extra: `pip install --no-deps torchao`; its row is
skipped when torchao cannot be imported), and through `slimgraph.optimize` pipelines
(`--only pipeline-gptq-int4-g64,pipeline-select-precision`: the IR passes with the default
calibration, evaluated from the torch target's packed weights).

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
from pathlib import Path

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
    "torchao-int4-g64": (4, 64, False, "torchao"),   # torchao IntxWeightOnlyConfig, side by side with RTN
}
# through slimgraph.optimize on the torch target (IR passes, packed weights, default calibration)
HEAD8 = "quantize-weights{bits=8,group=0,include=[lm_head.weight]},"   # the tied head/embedding at int8
PIPELINES = {
    "pipeline-rtn-int8": "quantize-weights{bits=8,group=0},fuse-dequant-matmul",
    "pipeline-rtn-int8-head8": "quantize-weights{bits=8,group=0}," + HEAD8 + "fuse-dequant-matmul",
    "pipeline-rtn-int4-g64": "quantize-weights{bits=4,group=64},fuse-dequant-matmul",
    "pipeline-rtn-int4-g64-head8": "quantize-weights{bits=4,group=64}," + HEAD8 + "fuse-dequant-matmul",
    "pipeline-gptq-int4-g64": "quantize-weights{bits=4,group=64,method=gptq},fuse-dequant-matmul",
    "pipeline-gptq-int4-g64-head8": "quantize-weights{bits=4,group=64,method=gptq}," + HEAD8 + "fuse-dequant-matmul",
    "pipeline-select-precision": "select-precision{target_ppl=0.05,bits=4,group=64,high_bits=8,method=gptq},"
                                 "fuse-dequant-matmul",
    "pipeline-select-precision-head8": "select-precision{target_ppl=0.05,bits=4,group=64,high_bits=8,method=gptq},"
                                       + HEAD8 + "fuse-dequant-matmul",
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


def run_body(model, ids, hooks):
    """One forward of the decoder body (lm_head skipped) with `hooks` attached; removes them after."""
    try:
        model.model(ids)
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def collect_stats(model, ids) -> dict[str, Stats]:
    """Input statistics of every linear, one forward of the decoder body (lm_head skipped)."""
    stats, cache, hooks = {}, {}, []
    for name, m in linears(model).items():
        def pre(mod, args, name=name):
            stats[name] = shared_stats(cache, args[0])
        hooks.append(m.register_forward_pre_hook(pre))
    run_body(model, ids, hooks)
    return stats


@torch.no_grad()
def apply_awq(model, ids, bits, group, sym) -> dict[str, Stats]:
    """Search AWQ scales per input group and fold them (norm weights / up_proj rows)."""
    from tqdm.auto import tqdm
    t0 = time.perf_counter()
    raw = collect_stats(model, ids)
    print(f"  awq: calibration forward {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    out = dict(raw)
    for i, layer in enumerate(tqdm(model.model.layers, desc="awq: scale search", unit="block", file=sys.stderr)):
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
        from tqdm.auto import tqdm
        for name, m in tqdm(linears(model).items(), desc=f"{method}: rounding", unit="layer", file=sys.stderr):
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
        run_body(model, ids, hooks)
    finally:
        bar.close()


def torchao_int4(model, group):
    """torchao's IntxWeightOnlyConfig int4 asymmetric per-group on the same linears (None if unavailable)."""
    try:
        from torchao.quantization import IntxWeightOnlyConfig, MappingType, quantize_
        from torchao.quantization.granularity import PerGroup
    except Exception as e:   # benchmark-only extra: pip install --no-deps torchao
        print(f"torchao unavailable ({type(e).__name__}: {e}); skipping its row", file=sys.stderr)
        return None
    cfg = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group),
                               mapping_type=MappingType.ASYMMETRIC)
    quantize_(model, cfg, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and "lm_head" not in fqn)
    return model


def run_pipeline(model, tok, pipeline, max_tokens):
    """slimgraph.optimize on the torch target (calibration: the default, the shipped calib split)."""
    import slimgraph
    ids = tok(evaluate.load_text("eval")[:2000], return_tensors="pt").input_ids[:, :64]
    t = time.perf_counter()
    fast = slimgraph.optimize(model, (ids,), target="torch", pipeline=pipeline)
    dt = time.perf_counter() - t
    ppl = evaluate.perplexity(fast, tok, max_tokens=max_tokens)
    fp16 = sum(m.weight.numel() * 2 for m in linears(model).values())
    # packed codes + scales + zeros of the decoder linears, as the quantizing pass reports them (not the head)
    packed = sum((rec.get("stats") or {}).get("weight_bytes_after", 0) for rec in fast.report.passes
                 if "lm_head" not in rec["spec"])
    for rec in fast.report.passes:
        choice = (rec.get("stats") or {}).get("choice")
        if choice:
            counts = {}
            for v in choice.values():
                counts[v] = counts.get(v, 0) + 1
            print(f"  per-layer choice ({counts}):", file=sys.stderr)
            for n, v in choice.items():
                print(f"    {n}: {v}", file=sys.stderr)
            print(f"  searched (layers kept high -> estimated ppl increase): {rec['stats'].get('searched')}",
                  file=sys.stderr)
    return ppl, dt, packed / fp16


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


FUSE = "fuse-dequant-matmul,merge-sibling-linears,cse,dce"
DECODE = {  # name: pipeline on the torch target (None: the target's default)
    "fp32": None,
    "int8": "canonicalize,quantize-weights{bits=8,group=0}," + FUSE,
    "int4-g64": "canonicalize,quantize-weights{bits=4,group=64}," + FUSE,
    "int8 + int8 head": "canonicalize,quantize-weights{bits=8,group=0}," + HEAD8 + FUSE,
    "int4-g64 + int8 head": "canonicalize,quantize-weights{bits=4,group=64}," + HEAD8 + FUSE,
}
RSS_CHILD = """
import sys, torch, slimgraph
torch.set_num_threads(2)
if sys.argv[1] != "none":
    fast = slimgraph.load(sys.argv[1])
    fast.generate(torch.ones(1, 32, dtype=torch.long), max_new_tokens=16)
# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak (this parent holds the fp32 model)
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024)
"""


def decode_bench(repeat):
    """Decode tok/s of fp32 / int8 / int4 SmolLM2 on the torch target and transformers eager fp32, the
    runs alternating in one process (medians), then each artifact's peak RSS when loaded alone."""
    import statistics
    import subprocess
    import tempfile
    import slimgraph
    from bench_torch_target import NEW_TOKENS, PROMPT_TOKENS, TEXT, cpu_name, hf_run, slimgraph_run
    model, tok = zoo.load("smollm2-135m")
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :PROMPT_TOKENS]
    tmp = Path(tempfile.mkdtemp(prefix="sg-decode-"))
    artifact = lambda name: tmp / (name.replace(" ", "") + ".sg")   # noqa: E731
    fast = {}
    for name, pipe in DECODE.items():
        t = time.perf_counter()
        fast[name] = slimgraph.optimize(model, (ids,), target="torch", pipeline=pipe)
        fast[name].save(artifact(name))
        print(f"{name}: optimize {time.perf_counter() - t:.1f} s, pipeline {fast[name].pipeline}", file=sys.stderr)
    hf_run(model, ids[:, :8])
    for f in fast.values():
        f.generate(ids[:, :8], max_new_tokens=8)
    runs = {"hf": [], **{n: [] for n in fast}}
    for _ in range(repeat):
        runs["hf"].append(hf_run(model, ids)[1])
        for n, f in fast.items():
            runs[n].append(slimgraph_run(f, ids)[1])
    med = {n: statistics.median(r) for n, r in runs.items()}
    rss = {}
    base = int(subprocess.run([sys.executable, "-c", RSS_CHILD, "none"], capture_output=True, text=True,
                              check=True).stdout.split()[-1])
    for n in fast:
        rss[n] = int(subprocess.run([sys.executable, "-c", RSS_CHILD, str(artifact(n))], capture_output=True,
                                    text=True, check=True).stdout.split()[-1])
    files = {n: sum(f.stat().st_size for f in artifact(n).rglob("*") if f.is_file()) for n in fast}
    print(f"# {cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads; prompt {PROMPT_TOKENS}, "
          f"{NEW_TOKENS} greedy new tokens, median of {repeat} alternating runs")
    print("per-run tok/s:", {n: [round(x, 1) for x in r] for n, r in runs.items()})
    print(f"peak RSS of `import torch, slimgraph` alone: {base / 2**20:.0f} MiB")
    print("| model | decode tok/s | vs transformers eager fp32 | artifact MiB | peak RSS MiB (load + generate, own process) |")
    print("|---|---|---|---|---|")
    print(f"| transformers eager fp32 | {med['hf']:.1f} | 1.00x | | |")
    for n in fast:
        print(f"| slimgraph torch {n} | {med[n]:.1f} | {med[n] / med['hf']:.2f}x | {files[n] / 2**20:.0f} | "
              f"{rss[n] / 2**20:.0f} |", flush=True)


@torch.no_grad()
def quality_proxies(max_tokens):
    """Which calibration-side number predicts the eval-text perplexity change (select-precision's search
    criterion)? GPTQ int4 g64 fitted on 24 calib rows; on 8 held-out calib rows: their perplexity change and
    exp(KL(float || quantized)) - 1; on the eval text: the perplexity change. All-int4, then with the top
    fraction of layers (tr(E H E^T) per extra byte, as select-precision ranks) swapped to RTN int8."""
    import math
    model, tok = zoo.load("smollm2-135m")
    ids = evaluate.token_ids(tok, "calib", 40, 256)
    held, fit = ids[:8], ids[8:]
    lin = linears(model)
    W = {n: m.weight.detach().clone() for n, m in lin.items()}

    def held_out():
        logp = torch.log_softmax(torch.cat([model(held[i:i + 4]).logits.float() for i in (0, 4)]), -1)
        nll = -logp[:, :-1].gather(-1, held[:, 1:, None]).mean()
        return logp, math.exp(float(nll))
    ref, base = held_out()
    base_eval = evaluate.perplexity(model, tok, max_tokens=max_tokens)
    stats = collect_stats(model, fit)
    quantize_model(model, 4, 64, False, "gptq", fit)
    low = {n: m.weight.detach().clone() for n, m in lin.items()}
    high = {n: dequant(*Q.quantize_rtn(w, 8, 0, True), 0) for n, w in W.items()}
    extra = {n: stored_bytes(*w.shape, 8, 0, True) - stored_bytes(*w.shape, 4, 64, False) for n, w in W.items()}
    score = {n: float(((low[n] - w) @ stats[n].hessian * (low[n] - w)).sum()) / extra[n] for n, w in W.items()}
    ranked = sorted(score, key=score.get, reverse=True)
    fp16 = sum(w.numel() * 2 for w in W.values())
    print("| layers at int8 | linear bytes vs fp16 | held-out calib ppl change | exp(KL) - 1 on held-out calib | "
          "eval ppl change |\n|---|---|---|---|---|")
    for frac in (0.0, 0.2, 0.4, 0.5):
        keep = set(ranked[:int(frac * len(ranked))])
        for n, m in lin.items():
            m.weight.copy_(high[n] if n in keep else low[n])
        logp, ppl = held_out()
        kl = float((ref.exp() * (ref - logp)).sum(-1).mean())
        size = sum(stored_bytes(*W[n].shape, *((8, 0, True) if n in keep else (4, 64, False))) for n in W) / fp16
        ev = evaluate.perplexity(model, tok, max_tokens=max_tokens)
        print(f"| {len(keep)} | {size:.3f} | {100 * (ppl / base - 1):+.2f}% | {100 * math.expm1(kl):+.2f}% | "
              f"{100 * (ev / base_eval - 1):+.2f}% |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(CONFIGS), help=f"of {', '.join([*CONFIGS, *PIPELINES])}")
    ap.add_argument("--calib", default="32x256", help="calibration windows x tokens (calib split)")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--base-ppl", type=float, help="fp32 perplexity from an earlier run (skips measuring it)")
    ap.add_argument("--minilm", action="store_true", help="only the MiniLM embedding-cosine table")
    ap.add_argument("--decode", action="store_true",
                    help="only decode tok/s + peak RSS of fp32/int8/int4 on the torch target vs transformers")
    ap.add_argument("--repeat", type=int, default=3, help="for --decode: alternating runs per model")
    ap.add_argument("--proxies", action="store_true",
                    help="only: which calibration-side quality measure predicts the eval perplexity change")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.minilm:
        return minilm_cosine()
    if args.decode:
        return decode_bench(args.repeat)
    if args.proxies:
        return quality_proxies(args.max_tokens)
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
        model.load_state_dict(original)
        if name in PIPELINES:
            ppl, dt, ratio = run_pipeline(model, tok, PIPELINES[name], args.max_tokens)
            print(f"| {name} | {ppl:.4f} | {100 * (ppl / base - 1):+.2f}% | {dt:.1f} (whole optimize) | "
                  f"{ratio:.3f} |", flush=True)
            continue
        bits, group, sym, method = CONFIGS[name]
        t = time.perf_counter()
        if method == "torchao":
            import copy
            q = torchao_int4(copy.deepcopy(model), group)
            if q is None:
                continue
        else:
            q = model
            quantize_model(model, bits, group, sym, method, ids)
        dt = time.perf_counter() - t
        ppl = evaluate.perplexity(q, tok, max_tokens=args.max_tokens)
        print(f"| {name} | {ppl:.4f} | {100 * (ppl / base - 1):+.2f}% | {dt:.1f} | "
              f"{linear_bytes_ratio(model, bits, group, sym):.3f} |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
