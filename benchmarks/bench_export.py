"""Exported SmolLM2-135M-Instruct run by the runtimes users have: slimgraph's GPTQ weights as GGUF
Q4_0 / Q4_1 in llama.cpp (llama-cpp-python) against llama.cpp's own quantization of the same source
weights (with and without an importance matrix), and the compressed-tensors checkpoint in
transformers against slimgraph's own perplexity of the same weights.

    python benchmarks/bench_export.py [--stage quantize,gguf,hf] [--work /tmp/slimgraph_bench_export]
        [--calib 32x256] [--gptq refit=true]

Stages (each caches its results in --work, so a later stage can run on its own):
  quantize  slimgraph.optimize SmolLM2 with quantize-weights{bits=4,group=32,method=gptq} sym=true
            (-> Q4_0) and sym=false,zero_point=float (-> Q4_1: a float minimum per group, as Q4_1
            stores it) on the shipped calibration split; saves the artifacts and
            slimgraph's perplexity of each.
  gguf      writes the f32 GGUF of the source weights (to_gguf type=f32), quantizes it with llama.cpp's
            llama_model_quantize to Q4_0 / Q4_1, with and without an importance matrix (mean squared
            input activation per column of every linear on the same calibration tokens, what
            llama-imatrix computes), exports slimgraph's artifacts with to_gguf, then runs every file in
            llama.cpp: perplexity over the same token windows as slimgraph.evaluate.perplexity
            (4096 eval tokens, 512-token windows, no context carried), and greedy decode speed.
  decode    (also the end of `gguf`) greedy decode tokens/s of slimgraph's GGUF vs llama.cpp's own file
            of the same type, 5 interleaved rounds of 128 tokens in one process, ratio of medians.
  hf        to_compressed_tensors of both artifacts (sym and asym), loaded by transformers with the
            compressed-tensors package: perplexity vs slimgraph's on the same weights.
The embedding (tied head) of slimgraph's GGUF is written Q8_0, which is the type llama.cpp's own
quantizer gives it (read back from its file and checked here), so the files differ only in the
quantized linears.
"""
from __future__ import annotations
import argparse
import ctypes
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from slimgraph import evaluate, zoo

VARIANTS = {   # name: (GGUF type, quantize-weights options; --gptq appends more)
    "q4_0": ("q4_0", "bits=4,group=32,sym=true,method=gptq"),
    "q4_1": ("q4_1", "bits=4,group=32,sym=false,zero_point=float,method=gptq"),   # float minimum: Q4_1's form
}
CALIB = (32, 256)   # calibration rows x tokens of the shipped calib split (--calib): GPTQ and the imatrix
GPTQ_EXTRA = ""     # --gptq
FTYPE = {"q4_0": 2, "q4_1": 3}         # llama_ftype MOSTLY_Q4_0 / MOSTLY_Q4_1
WINDOW, MAX_TOKENS = 512, 4096
SOURCE = "smollm2-135m"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def load_json(p: Path) -> dict:
    return json.loads(p.read_text()) if p.is_file() else {}


def save_json(p: Path, d: dict):
    p.write_text(json.dumps(d, indent=1))


# ---- stage: quantize ---------------------------------------------------------------------------
def stage_quantize(work: Path, res: dict):
    import slimgraph
    model, tok = zoo.load(SOURCE)
    res.setdefault("fp32_ppl_slimgraph_source", evaluate.perplexity(model, tok, max_tokens=MAX_TOKENS))
    for name, (_, opts) in VARIANTS.items():
        art = work / f"gptq_{name}.sg"
        if (art / "manifest.json").is_file() and f"{name}_ppl_slimgraph" in res:
            continue
        t = time.perf_counter()
        opts = ",".join(o for o in (opts, GPTQ_EXTRA) if o)
        res[f"{name}_pipeline"] = f"canonicalize,cse,dce,quantize-weights{{{opts}}},fuse-dequant-matmul"
        fast = slimgraph.optimize(model, target="torch", pipeline=res[f"{name}_pipeline"],
                                  calibration=evaluate.token_ids(tok, n=CALIB[0], seq=CALIB[1]))
        res[f"{name}_optimize_s"] = time.perf_counter() - t
        fast.save(art)
        res[f"{name}_ppl_slimgraph"] = evaluate.perplexity(fast, tok, max_tokens=MAX_TOKENS)
        log(f"{name}: optimize {res[f'{name}_optimize_s']:.0f} s, slimgraph ppl {res[f'{name}_ppl_slimgraph']:.4f}")
        save_json(work / "results.json", res)


# ---- llama.cpp helpers ---------------------------------------------------------------------------
def imatrix(model, tok) -> dict[str, torch.Tensor]:
    """GGUF tensor name -> mean of x^2 per input column over the calibration tokens (llama-imatrix's
    quantity), for every decoder linear."""
    from slimgraph.evaluate import token_ids
    import gguf
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    sums, counts, hooks = {}, {}, []
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and n != "lm_head":
            g = names.get_name(f"{n}.weight", try_suffixes=(".weight",))

            def hook(mod, args, g=g):
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                sums[g] = sums.get(g, 0) + (x * x).sum(0)
                counts[g] = counts.get(g, 0) + x.shape[0]
            hooks.append(m.register_forward_pre_hook(hook))
    ids = token_ids(tok, n=CALIB[0], seq=CALIB[1])
    with torch.no_grad():
        for row in ids:
            model(row.unsqueeze(0))
    for h in hooks:
        h.remove()
    return {g: (sums[g] / counts[g]) for g in sums}


def llama_quantize(src: Path, dst: Path, ftype: int, imat: dict | None):
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    keep = []
    if imat:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imat) + 1))()
        for i, (name, v) in enumerate(imat.items()):
            data = (ctypes.c_float * len(v))(*v.tolist())
            keep += [data, name.encode()]
            arr[i].name, arr[i].data, arr[i].size = keep[-1], ctypes.cast(data, ctypes.POINTER(ctypes.c_float)), len(v)
        arr[len(imat)].name = None
        keep.append(arr)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}) returned {rc}")


def gguf_types(path: Path) -> dict[str, str]:
    import gguf
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def llama_ppl(path: Path, ids: torch.Tensor) -> float:
    """Perplexity in llama.cpp over the windows evaluate.perplexity uses (no context carried)."""
    import numpy as np
    from llama_cpp import Llama
    llm = Llama(model_path=str(path), n_ctx=WINDOW, n_batch=WINDOW, n_ubatch=WINDOW, logits_all=True,
                n_threads=2, verbose=False)
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, WINDOW):
        chunk = ids[start:start + WINDOW].tolist()
        if len(chunk) < 2:
            break
        llm.reset()          # next eval starts at position 0 (llama-cpp-python drops the cache past it)
        llm.eval(chunk)
        logits = torch.from_numpy(np.array(llm.scores[:len(chunk)], dtype=np.float32))
        nll += float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(chunk[1:]), reduction="sum"))
        count += len(chunk) - 1
    return math.exp(nll / count)


def llama_decode_speeds(paths: dict[str, Path], prompt: list[int], n: int = 128, rounds: int = 5) -> dict:
    """Greedy decode tokens/s after the prompt, `n` tokens (no eos stop), every file once per round,
    rounds interleaved so that a busy machine slows all files alike -> label: [tok/s per round]."""
    from llama_cpp import Llama
    llms = {k: Llama(model_path=str(p), n_ctx=512, n_threads=2, verbose=False) for k, p in paths.items()}
    out = {k: [] for k in paths}
    for r in range(rounds):
        for k, llm in (llms.items() if r % 2 == 0 else reversed(llms.items())):
            llm.reset()
            llm.eval(prompt)
            t = time.perf_counter()
            for _ in range(n):
                llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
            out[k].append(n / (time.perf_counter() - t))
    return out


# ---- stage: gguf --------------------------------------------------------------------------------
def stage_gguf(work: Path, res: dict):
    from slimgraph.artifact import load
    from slimgraph.export import to_gguf
    model, tok = zoo.load(SOURCE)
    f32 = work / "source.f32.gguf"
    if not f32.is_file():
        to_gguf(model, f32, type="f32", source=SOURCE)
    imat = imatrix(model, tok)
    files = {"source f32": f32}
    for name, (gtype, _) in VARIANTS.items():
        own, own_im = work / f"llamacpp.{name}.gguf", work / f"llamacpp-imatrix.{name}.gguf"
        if not own.is_file():
            llama_quantize(f32, own, FTYPE[name], None)
        if not own_im.is_file():
            llama_quantize(f32, own_im, FTYPE[name], imat)
        emb = gguf_types(own)["token_embd.weight"].lower()
        res[f"{name}_llamacpp_embedding_type"] = emb
        ours = work / f"slimgraph-gptq.{name}.gguf"
        t = time.perf_counter()
        to_gguf(load(work / f"gptq_{name}.sg"), ours, type=gtype, source=SOURCE, float_type=emb)
        res[f"{name}_export_s"] = time.perf_counter() - t
        a, b = gguf_types(own), gguf_types(ours)
        res[f"{name}_same_tensor_types"] = a == b
        if a != b:
            log(f"{name}: tensor types differ: {[(k, a[k], b.get(k)) for k in a if a[k] != b.get(k)][:5]}")
        files |= {f"llama.cpp {name}": own, f"llama.cpp {name} + imatrix": own_im, f"slimgraph GPTQ {name}": ours}
    ids = tok(evaluate.load_text("eval"), return_tensors="pt").input_ids[0][:MAX_TOKENS]
    for label, path in files.items():
        key = f"ppl[{label}]"
        if key not in res:
            res[key] = llama_ppl(path, ids)
            log(f"{label}: llama.cpp ppl {res[key]:.4f}")
            save_json(work / "results.json", res)
    save_json(work / "results.json", res)
    stage_decode(work, res)


def stage_decode(work: Path, res: dict):
    """Decode speed of slimgraph's GGUF vs llama.cpp's own file of the same type (both written by the gguf
    stage), side by side: interleaved rounds in one process."""
    _, tok = zoo.load(SOURCE)
    prompt = tok(evaluate.load_text("eval"), return_tensors="pt").input_ids[0][:32].tolist()
    res["loadavg_start[decode]"] = os.getloadavg()
    for name in VARIANTS:   # decode speed side by side, interleaved rounds in one run
        labels = (f"llama.cpp {name}", f"slimgraph GPTQ {name}")
        files = {labels[0]: work / f"llamacpp.{name}.gguf", labels[1]: work / f"slimgraph-gptq.{name}.gguf"}
        speeds = llama_decode_speeds(files, prompt)
        for k, v in speeds.items():
            res[f"tok/s[{k}]"] = v
        med = {k: sorted(v)[len(v) // 2] for k, v in speeds.items()}
        res[f"{name}_decode_ratio"] = med[labels[1]] / med[labels[0]]
        log(f"{name} decode tok/s per round: " + "; ".join(f"{k} {[round(x, 1) for x in v]}" for k, v in speeds.items())
            + f"; ratio of medians {res[f'{name}_decode_ratio']:.3f}")
    save_json(work / "results.json", res)


# ---- stage: hf ----------------------------------------------------------------------------------
def stage_hf(work: Path, res: dict):
    import transformers
    from slimgraph.export import to_compressed_tensors
    from slimgraph.export.compressed_tensors import transformers_loading_fix
    _, tok = zoo.load(SOURCE)
    for name in VARIANTS:
        out = work / f"smollm2-ct-{name}"
        to_compressed_tensors(work / f"gptq_{name}.sg", out, source=SOURCE)
        with transformers_loading_fix():   # asymmetric zero points: see its docstring (library bug)
            m = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        res[f"{name}_ct_ppl_transformers"] = evaluate.perplexity(m, tok, max_tokens=MAX_TOKENS)
        res[f"{name}_ct_vs_slimgraph_rel"] = res[f"{name}_ct_ppl_transformers"] / res[f"{name}_ppl_slimgraph"] - 1
        log(f"{name} compressed-tensors in transformers: ppl {res[f'{name}_ct_ppl_transformers']:.4f} "
            f"({res[f'{name}_ct_vs_slimgraph_rel'] * 100:+.4f}% vs slimgraph)")
        save_json(work / "results.json", res)


def versions() -> dict:
    from importlib.metadata import version
    return {p: version(p) for p in ("torch", "transformers", "gguf", "compressed-tensors", "llama-cpp-python")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", default="quantize,gguf,hf")
    ap.add_argument("--work", default="/tmp/slimgraph_bench_export")
    ap.add_argument("--calib", default="32x256", help="calibration rows x tokens (GPTQ and the imatrix alike)")
    ap.add_argument("--gptq", default="", help="extra quantize-weights options, e.g. refit=true")
    a = ap.parse_args()
    global CALIB, GPTQ_EXTRA
    CALIB = tuple(int(x) for x in a.calib.split("x"))
    GPTQ_EXTRA = a.gptq
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    res = load_json(work / "results.json")
    if res.get("calib", list(CALIB)) != list(CALIB) or res.get("gptq_extra", GPTQ_EXTRA) != GPTQ_EXTRA:
        raise SystemExit(f"{work} holds results for calib {res.get('calib')} / gptq {res.get('gptq_extra')!r}: "
                         f"use another --work")
    res |= {"calib": list(CALIB), "gptq_extra": GPTQ_EXTRA}
    res["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    res["versions"] = versions()
    for stage in a.stage.split(","):
        res[f"loadavg_start[{stage}]"] = os.getloadavg()
        {"quantize": stage_quantize, "gguf": stage_gguf, "decode": stage_decode, "hf": stage_hf}[stage](work, res)
        res[f"loadavg_end[{stage}]"] = os.getloadavg()
        save_json(work / "results.json", res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
