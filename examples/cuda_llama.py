"""The `cuda` target: a Llama-shaped model compiled to fused Triton kernels, int4 weights, greedy decode.

    python examples/cuda_llama.py                    # on an NVIDIA GPU
    TRITON_INTERPRET=1 python examples/cuda_llama.py # no GPU: the same kernels in Triton's CPU interpreter (slow)

Prints what the target built (fused groups, the generated kernel source's size, the int4 kernel used for
`qlinear`) and checks greedy decoding against transformers with the same (dequantized-equal) weights.
"""
import os

import torch
import transformers

import slimgraph

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    raise SystemExit("no GPU here: run with TRITON_INTERPRET=1 to use Triton's CPU interpreter")

torch.manual_seed(0)
config = transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=512)
model = transformers.LlamaForCausalLM(config).eval()
dtype = torch.float16 if torch.cuda.is_available() else torch.float32
model = model.to(dtype)
ids = torch.randint(0, 512, (1, 12))

fp = slimgraph.optimize(model, (ids,), target="cuda")
q4 = slimgraph.optimize(model, (ids,), target="cuda",
                        pipeline="canonicalize,quantize-weights{bits=4,group=32},fuse-dequant-matmul,cse,dce")
meta = fp.runner.products.meta
print(f"cuda target on {fp.runner.device}: {meta['fused_groups']} fused elementwise kernels "
      f"({meta['fused_nodes']} IR nodes), triton_kernels.py {len(fp.runner.products.read_bytes('triton_kernels.py'))} bytes")

want = model.to(fp.runner.device).generate(ids.to(fp.runner.device), max_new_tokens=16, do_sample=False,
                                           eos_token_id=None, pad_token_id=0).cpu()
got = fp.generate(ids, max_new_tokens=16, eos_token_id=None).cpu()
print("greedy, float weights:", "token-identical to transformers" if torch.equal(got, want) else "DIFFERENT")
got4 = q4.generate(ids, max_new_tokens=16, eos_token_id=None).cpu()
agree = int((got4[0, 12:] == want[0, 12:]).long().cumprod(0).sum())
print(f"greedy, int4 g32 weights: {agree}/16 leading tokens agree with the float model")
