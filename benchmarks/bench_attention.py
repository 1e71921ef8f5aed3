"""sparsify-attention on SmolLM2-135M (fp32, torch target): perplexity, decode memory, decode step time.

    python benchmarks/bench_attention.py ppl     # eval corpus, 4 x 1024-token windows: full vs W=256+4 sinks vs W=256 no sinks
    python benchmarks/bench_attention.py rss [--target=cpu]  # peak RSS decoding to 512 vs 4096 context (child processes)
    python benchmarks/bench_attention.py speed [--threads=1] [--target=cpu] [--linear]  # decode step at 8k context:
                                                     # sliding window (--linear: linear attention) vs full (fp32,
                                                     # int4; cpu: also W4A8), on one target
    python benchmarks/bench_attention.py ppl-linear --window=64 --sinks=4 [--budget=900] [--full] [--threads=1]
                                   [--e2e=0.5 --e2e-lr=3e-3] [--cpu-budget]  # end-to-end stage; CPU-s budget
                                                     # linearize-attention + distillation (--window=0: pure linear)
    python benchmarks/bench_attention.py ppl-window --window=64 --sinks=4   # the hybrid's softmax part alone
    python benchmarks/bench_attention.py rss-linear  # peak RSS 512 vs 4096: full vs linear hybrid (W=64 + 4 sinks) vs pure

Linear attention (linearize-attention, Hedgehog feature maps, LoLCATs hybrid): the maps are distilled on the
calibration split (slimgraph.distill_attention, `--budget` wall seconds of updates, seed 0), then the
perplexity is measured as above; before distillation (identity maps) it is printed too.

Perplexity: one forward per 1024-token window through the compiled graph (`Decoder.prefill`: the rewritten
graph applies the window + sinks rule in the forward), checked against decoding the first 300 tokens of the
first window token by token through the ring cache (the two must agree: printed). Keys keep their original
position ids (RoPE before the cache, as HF caches them; no re-positioning inside the ring).
"""
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch

import slimgraph
from slimgraph import evaluate, zoo

W, S = 256, 4
FULL = "canonicalize,cse,dce"
RING = f"canonicalize,sparsify-attention{{window={W},sinks={S}}},cse,dce"
NOSINK = f"canonicalize,sparsify-attention{{window={W},sinks=0}},cse,dce"
Q4 = "quantize-weights{bits=4,group=64},quantize-weights{bits=8,group=0,include=[lm_head.weight]},fuse-dequant-matmul"
VARIANTS = {"full": FULL, f"window {W} + {S} sinks": RING, f"window {W}, no sinks": NOSINK}
LINEAR = {"linear hybrid W=64+4": "canonicalize,linearize-attention{feature_map=hedgehog,window=64,sinks=4},cse,dce",
          "linear (pure)": "canonicalize,linearize-attention{feature_map=hedgehog,window=0},cse,dce"}


@contextlib.contextmanager
def cpu_codegen_as(name, module, attr, value):
    """Compile with `module.attr` replaced by `value` (the cpu codegen as it was before a change, for a side-by-side
    benchmark), under another build-cache key (`name`), so neither build is served the other's library."""
    import slimgraph.codegen.tvm.target as T
    old, digest = getattr(module, attr), T._codegen_digest
    setattr(module, attr, value)
    T._codegen_digest = lambda: f"{name}-{digest()}"
    try:
        yield
    finally:
        setattr(module, attr, old)
        T._codegen_digest = digest


def compile_(model, pipeline, target="torch"):
    return slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target=target, pipeline=pipeline)


def ppl(seq=1024, windows=4, check=300, only=None):
    """`only`: a substring of one variant's name (run just that one; no check when it is `no sinks`)."""
    model, tok = zoo.load("smollm2-135m")
    ids = tok(evaluate.load_text("eval"), return_tensors="pt").input_ids[0][:seq * windows].view(windows, seq)
    rows = {}
    for name, pipe in VARIANTS.items():
        if only and only not in name:
            continue
        check = 0 if only and "no sinks" in name else check
        c = compile_(model, pipe)
        nll, n = 0.0, 0
        with torch.inference_mode():
            for w in range(windows):
                logits = c.decoder().prefill(ids[w:w + 1])["logits"][0].float()
                nll += float(torch.nn.functional.cross_entropy(logits[:-1], ids[w, 1:], reduction="sum"))
                n += seq - 1
                if w == 0 and name != "full" and check:
                    dec = c.decoder()
                    dec.prefill(ids[:1, :1])
                    steps = torch.cat([dec.step(ids[:1, i])["logits"][0] for i in range(1, check)])
                    diff = float((steps - logits[1:check]).abs().max())
                    print(f"  {name}: token-by-token through the ring ({check} tokens, ring {dec.states[0].shape[2]} rows) "
                          f"vs one windowed forward: max |logit diff| {diff:.2e}", flush=True)
        rows[name] = math.exp(nll / n)
        print(f"{name:24s} ppl {rows[name]:.3f} ({windows} x {seq} tokens)", flush=True)
    base = rows.get("full")
    for name, p in rows.items() if base else ():
        print(f"  {name:24s} {p:8.3f}  {100 * (p / base - 1):+.2f}% vs full")


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def rss_child(variant, context, chunk=64, tail=16, synthetic=False, target="torch"):
    """Decode to `context` positions (a 32-token prompt, then chunks of `chunk` tokens, then `tail` single
    steps); print the peak of the sampled current RSS during decoding and the process peak (ru_maxrss).
    `synthetic`: instead of running the first context - tail tokens, fill the state with random K/V of the
    size it has there (full: context - tail rows; ring: window + sinks) and the decoder's position count,
    then decode the `tail` tokens: the same tensors are alive, without minutes of compute."""
    torch.set_num_threads(1)
    os.environ["TVM_NUM_THREADS"] = "1"
    model, _ = zoo.load("smollm2-135m")
    c = compile_(model, {**VARIANTS, **LINEAR}[variant], target)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (1, context), generator=gen)
    base = _rss_mb()
    peak = base
    with torch.inference_mode():
        dec = c.decoder()
        dec.prefill(tokens[:, :32])
        pos = 32
        if synthetic:
            pos = context - tail
            fill_states(c, dec, pos, gen)
        while pos < context - tail:
            n = min(chunk, context - tail - pos)
            dec.step(tokens[:, pos:pos + n])
            pos += n
            peak = max(peak, _rss_mb())
        while pos < context:
            dec.step(tokens[:, pos])
            pos += 1
            peak = max(peak, _rss_mb())
    state_mb = sum(t.numel() * t.element_size() for t in dec.states) / 2 ** 20
    print(json.dumps({"variant": variant, "target": target, "context": context, "synthetic": synthetic,
                      "rss_after_compile_mb": round(base, 1),
                      "peak_rss_decoding_mb": round(peak, 1),
                      "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "state_rows": dec.states[0].shape[2], "state_mb": round(state_mb, 1)}))


def rss(synthetic=False, variants=("full", f"window {W} + {S} sinks"), target="torch"):
    results = {}
    for variant in variants:
        for context in (512, 4096):
            cmd = [sys.executable, __file__, "rss-child", variant, str(context), f"--target={target}"] \
                + (["--synthetic"] if synthetic else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            results[(variant, context)] = r
            print(out, flush=True)
    for variant in variants:
        a, b = results[(variant, 512)], results[(variant, 4096)]
        g = 100 * (b["peak_rss_decoding_mb"] / a["peak_rss_decoding_mb"] - 1)
        print(f"{variant:24s} peak RSS decoding 512 -> 4096: {a['peak_rss_decoding_mb']} -> {b['peak_rss_decoding_mb']} MB "
              f"({g:+.1f}%); KV state {a['state_mb']} -> {b['state_mb']} MB")


def fill_states(c, dec, context, gen):
    """Give `dec` the state it has after `context` positions, with random values: append states get `context`
    rows, ring states window + sinks, fixed states (linear attention's kv and z) their own shape (|values|, so
    the normalizer stays positive)."""
    states = []
    for st, t in zip(c.graph.states, dec.states):
        if st.kind == "fixed":
            states.append(torch.randn(t.shape, generator=gen).abs())
            continue
        rows = context if st.kind == "append" else st.attrs["window"] + st.attrs["sinks"]
        states.append(torch.randn(*t.shape[:2], rows, t.shape[3], generator=gen))
    dec.states = states
    dec.key_valid = torch.ones(1, context, dtype=torch.bool)
    dec.next_pos = torch.tensor([context])


def speed(context=8192, steps=15, warm=3, threads=2, target="torch", linear=False):
    """Decode step time at `context` positions. The state is filled with random K/V of the right shape
    (full: `context` rows; ring: window + sinks rows) instead of an 8k prefill: a step's time does not
    depend on the values, and an 8k prefill per variant would take minutes on the shared machine.
    `threads`: intra-op threads. On a machine shared with other jobs use 1: every op above OpenMP's grain
    size waits at a barrier for a descheduled thread, which costs small ops a scheduler time slice
    each (measured before the in-place ring: a 200 KB ring copy at 22 ms at load 12 with 2 threads). Prints the
    median and the fastest step of each variant: on a loaded machine the fastest are the least disturbed; and
    the process CPU time per step, which leaves out the time spent waiting for a core (with one intra-op thread
    it is the step's compute; with two it also counts OpenMP's spin-waiting).
    `target`: both variants on that target (`cpu`: TVM, whose W4A8 row adds quantize-activations).
    `linear`: the linear-attention hybrid (window 64 + 4 sinks) and pure linear attention instead of the window."""
    torch.set_num_threads(threads)
    os.environ["TVM_NUM_THREADS"] = str(threads)
    print(f"speed: {target} target, {threads} intra-op thread(s), load {os.getloadavg()}", flush=True)
    model, _ = zoo.load("smollm2-135m")
    variants = [("fp32", ""), ("int4 g64 + int8 head", Q4)]
    if target == "cpu":
        variants.append(("W4A8 (+ quantize-activations)", Q4 + ",quantize-activations"))
    others = list(LINEAR.items()) if linear else [("sliding", RING)]
    for label, extra in variants:
        comp = {}
        for name, pipe in [("full", FULL)] + others:
            pipe = pipe.replace("canonicalize,", "canonicalize," + extra + ",") if extra else pipe
            comp[name] = compile_(model, pipe, target)
        decs = {}
        for name, c in comp.items():
            dec = c.decoder()
            fill_states(c, dec, context, torch.Generator().manual_seed(0))
            decs[name] = dec
        times = {n: [] for n in decs}
        cpu = {n: [] for n in decs}                 # process CPU time: what the step computed, less the waiting
        tok = torch.tensor([[42]])
        buffers = {n: set() for n in decs}          # a state's storage during the timed steps (in place: 1)
        with torch.inference_mode():
            for i in range(warm + steps):           # interleaved, so load changes hit both alike
                for name, dec in decs.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    dec.step(tok)
                    if i >= warm:
                        times[name].append(time.perf_counter() - t0)
                        cpu[name].append(time.process_time() - c0)
                        buffers[name].add(dec.states[0].untyped_storage().data_ptr())
        med = {n: sorted(t)[len(t) // 2] * 1e3 for n, t in times.items()}
        best = {n: min(t) * 1e3 for n, t in times.items()}
        cmed = {n: sorted(t)[len(t) // 2] * 1e3 for n, t in cpu.items()}
        for name, _ in others:
            shown = f"sliding window {W}+{S}" if name == "sliding" else name
            print(f"{label:22s} decode step at {context} context (median of {steps}): full {med['full']:.1f} ms, "
                  f"{shown} {med[name]:.1f} ms -> {med['full'] / med[name]:.2f}x; fastest step: "
                  f"{best['full']:.1f} vs {best[name]:.1f} ms -> {best['full'] / best[name]:.2f}x "
                  f"(load {os.getloadavg()[0]:.1f}; its first state's storages over the timed steps: {len(buffers[name])})\n"
                  f"{'':22s} CPU time per step (median): full {cmed['full']:.1f} ms, {shown} {cmed[name]:.1f} ms -> "
                  f"{cmed['full'] / cmed[name]:.2f}x", flush=True)
        del comp, decs


def _ppl_of(c, ids):
    nll, n = 0.0, 0
    with torch.inference_mode():
        for w in range(len(ids)):
            logits = c.decoder().prefill(ids[w:w + 1])["logits"][0].float()
            nll += float(torch.nn.functional.cross_entropy(logits[:-1], ids[w, 1:], reduction="sum"))
            n += ids.shape[1] - 1
    return math.exp(nll / n), logits


def ppl_linear(window=64, sinks=0, budget_s=900.0, full=False, seq=1024, windows=4, train_seqs=16, train_len=512,
               check=200, e2e=0.0, cpu=False, e2e_lr=3e-3):
    """Perplexity of linearize-attention{window,sinks} before and after `budget_s` s of attention distillation
    (CPU seconds with `cpu`, else wall), `e2e` of it in the end-to-end stage (distill_attention(end_to_end=))."""
    model, tok = zoo.load("smollm2-135m")
    ids = tok(evaluate.load_text("eval"), return_tensors="pt").input_ids[0][:seq * windows].view(windows, seq)
    if full:
        print(f"{'full':24s} ppl {_ppl_of(compile_(model, FULL), ids)[0]:.3f} ({windows} x {seq} tokens)", flush=True)
    name = f"linear hybrid W={window}+{sinks}" if window else "linear (pure)"
    c = compile_(model, f"canonicalize,linearize-attention{{feature_map=hedgehog,window={window},sinks={sinks}}},cse,dce")
    print(f"{name:24s} ppl {_ppl_of(c, ids)[0]:.3f} before distillation (identity feature maps)", flush=True)
    report = slimgraph.distill_attention(c, tokenizer=tok, num_seqs=train_seqs, seq_len=train_len,
                                         time_budget_s=None if cpu else budget_s, cpu_budget_s=budget_s if cpu else None,
                                         seed=0, end_to_end=e2e, e2e_lr=e2e_lr)
    print(f"  {report}", flush=True)
    print(f"  held-out relative MSE per layer: before {[round(x, 3) for x in report.heldout_rel_mse_before]}\n"
          f"                                   after  {[round(x, 3) for x in report.heldout_rel_mse]}", flush=True)
    p, logits = _ppl_of(c, ids)
    print(f"{name:24s} ppl {p:.3f} after {report.seconds:.0f} s of distillation ({windows} x {seq} tokens)", flush=True)
    dec = c.decoder()
    dec.prefill(ids[-1:, :1])
    with torch.inference_mode():
        steps = torch.cat([dec.step(ids[-1:, i])["logits"][0] for i in range(1, check)])
    print(f"  {name}: token-by-token through the recurrent state ({check} tokens) vs one prefill: max |logit diff| "
          f"{float((steps - logits[1:check]).abs().max()):.2e}", flush=True)


def _opt(name, default):
    return type(default)(next((a.split("=", 1)[1] for a in sys.argv if a.startswith(f"--{name}=")), default))


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "ppl"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}", flush=True)
    if cmd == "rss-child":
        rss_child(sys.argv[2], int(sys.argv[3]), synthetic="--synthetic" in sys.argv, target=_opt("target", "torch"))
    elif cmd == "ppl-linear":
        torch.set_num_threads(_opt("threads", torch.get_num_threads()))
        ppl_linear(window=_opt("window", 64), sinks=_opt("sinks", 0), budget_s=_opt("budget", 900.0), full="--full" in sys.argv,
                   train_seqs=_opt("train-seqs", 16), train_len=_opt("train-len", 512), windows=_opt("windows", 4),
                   e2e=_opt("e2e", 0.0), cpu="--cpu-budget" in sys.argv, e2e_lr=_opt("e2e-lr", 3e-3))
    elif cmd == "ppl-window":      # the sliding window alone at the hybrid's window + sinks (no linear part)
        torch.set_num_threads(_opt("threads", torch.get_num_threads()))
        w, s = _opt("window", 64), _opt("sinks", 4)
        model, tok = zoo.load("smollm2-135m")
        ids = tok(evaluate.load_text("eval"), return_tensors="pt").input_ids[0][:4096].view(4, 1024)
        c = compile_(model, f"canonicalize,sparsify-attention{{window={w},sinks={s}}},cse,dce")
        print(f"{'window ' + str(w) + ' + ' + str(s) + ' sinks':24s} ppl {_ppl_of(c, ids)[0]:.3f} (4 x 1024 tokens)")
    elif cmd == "rss-linear":
        rss(variants=("full", *LINEAR), target=_opt("target", "torch"))
    elif cmd == "ppl":
        ppl(only=sys.argv[2] if len(sys.argv) > 2 else None)   # e.g. `ppl "no sinks"`: one variant
    else:
        threads = int(next((a.split("=")[1] for a in sys.argv if a.startswith("--threads=")), 2))
        {"rss": lambda: rss("--synthetic" in sys.argv, target=_opt("target", "torch")),
         "speed": lambda: speed(threads=threads, target=_opt("target", "torch"), linear="--linear" in sys.argv)}[cmd]()
