"""SmolLM2-135M on ONNX Runtime: int4 g32 (com.microsoft MatMulNBits) vs the fp32 export, side by
side, and greedy identity of the int4 ONNX model with slimgraph's `reference` target.

    python benchmarks/bench_onnx_smollm2.py [--new-tokens 32] [--repeat 3]

Batch 1, a 32-token prompt, greedy decoding (no early stop). Both ORT sessions alternate
`--repeat` times in one process and the median decode speed of each is reported, so that noise
from other jobs on a shared machine hits both alike. Prints a markdown table for RESULTS.md.
"""
import argparse
import platform
import statistics

import torch

import slimgraph
from slimgraph import zoo

INT4 = "canonicalize,quantize-weights{bits=4,group=32},fuse-dequant-matmul,cse,dce"
FP32 = "canonicalize,cse,dce"
TEXT = ("The history of computing is a story of abstraction: each generation of engineers builds tools that "
        "hide the details of the previous one, from vacuum tubes to transistors to integrated circuits, and "
        "from machine code to compilers to the frameworks that train today's neural networks.")


def decode(compiled, ids, n):
    out = compiled.generate(ids, max_new_tokens=n)
    return out, compiled.last_generate_stats.decode_tokens_per_s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    import onnxruntime
    model, tok = zoo.load("smollm2-135m")
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :32]
    int4 = slimgraph.optimize(model, target="onnx", pipeline=INT4)
    fp32 = slimgraph.optimize(model, target="onnx", pipeline=FP32)
    speeds = {"int4": [], "fp32": []}
    for _ in range(args.repeat):
        out4, s = decode(int4, ids, args.new_tokens)
        speeds["int4"].append(s)
        _, s = decode(fp32, ids, args.new_tokens)
        speeds["fp32"].append(s)
    ref = slimgraph.optimize(model, target="reference", pipeline=INT4)
    out_ref, _ = decode(ref, ids, args.new_tokens)
    same = torch.equal(out4, out_ref)
    from slimgraph.codegen.onnx_export import export_onnx
    n_nbits = sum(n.op_type == "MatMulNBits" for n in export_onnx(int4.graph, check=False).graph.node)
    med = {k: statistics.median(v) for k, v in speeds.items()}
    print(f"machine: {platform.machine()} {torch.get_num_threads()} threads; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}")
    print("| SmolLM2-135M on ORT, batch 1, 32-token prompt | decode tok/s (median of "
          f"{args.repeat}) |\n|---|---|")
    print(f"| fp32 export | {med['fp32']:.1f} |")
    print(f"| int4 g32 export ({n_nbits} MatMulNBits) | {med['int4']:.1f} ({med['int4'] / med['fp32']:.2f}x) |")
    print(f"| int4 ONNX greedy == reference target, {args.new_tokens} tokens | {same} |")
    return same, med


if __name__ == "__main__":
    main()
