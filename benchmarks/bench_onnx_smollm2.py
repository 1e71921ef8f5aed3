"""SmolLM2-135M on ONNX Runtime: int4 g32 (com.microsoft MatMulNBits) vs the fp32 export, side by
side, and greedy identity of the int4 ONNX model with slimgraph's `reference` target.

    python benchmarks/bench_onnx_smollm2.py [--new-tokens 32] [--repeat 3] [--baseline-rev 2eda7a9]

Batch 1, a 32-token prompt, greedy decoding (no early stop). All sessions alternate `--repeat`
times in one process and the median decode speed of each is reported, so that noise from other
jobs on a shared machine hits all alike. Rows:
- fp32 / int4 export as the `onnx` target builds it now (fused opset-23 Attention, ORT-fusable
  RMS norm, constant reshape shapes, ORT_ENABLE_ALL, torch's thread count);
- int4 with intra-op spin-waiting off (SLIMGRAPH_ORT_SPIN=0, for machines shared with other jobs);
- int4 with MatMulNBits accuracy_level=4 (int8 activations; opt-in, lossier), with its own
  greedy-identity check;
- int4 + the tied head stored at int8 with merged sibling linears, checked against the reference
  target running the same pipeline;
- with --baseline-rev REV: the same graphs exported by the exporter of git revision REV and run
  with that revision's session options (ORT defaults), i.e. "before".
Prints a markdown table for RESULTS.md.
"""
import argparse
import copy
import importlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import types

import torch

import slimgraph
from slimgraph import zoo

INT4 = "canonicalize,quantize-weights{bits=4,group=32},fuse-dequant-matmul,cse,dce"
# + the tied head stored at int8 (ORT folds int8 dequantize + MatMul to f32 at load: its 8-bit MatMulNBits
# measured 80 ms vs 0.9 ms for 4-bit at 49152x576 on this CPU) and merged sibling linears
INT4_HEAD8 = ("canonicalize,quantize-weights{bits=4,group=32},quantize-weights{bits=8,group=0,include=[lm_head.weight]},"
              "fuse-dequant-matmul,merge-sibling-linears,cse,dce")
FP32 = "canonicalize,cse,dce"
TEXT = ("The history of computing is a story of abstraction: each generation of engineers builds tools that "
        "hide the details of the previous one, from vacuum tubes to transistors to integrated circuits, and "
        "from machine code to compilers to the frameworks that train today's neural networks.")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def decode(compiled, ids, n):
    out = compiled.generate(ids, max_new_tokens=n, eos_token_id=[])  # no early stop: n tokens each
    return out, compiled.last_generate_stats.decode_tokens_per_s


def baseline_exporter(rev: str):
    """`export_onnx` of the exporter at git revision `rev`, loaded beside the current one."""
    d = tempfile.mkdtemp(prefix="onnx_baseline_")
    for f in ("onnx_export.py", "onnx_emitters.py"):
        src = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:codegen/{f}"], capture_output=True, text=True,
                             check=True).stdout
        with open(os.path.join(d, f), "w") as fh:
            fh.write(src)
    name = "slimgraph._onnx_baseline"
    pkg = types.ModuleType(name)
    pkg.__path__ = [d]
    sys.modules[name] = pkg
    return importlib.import_module(f"{name}.onnx_export").export_onnx


def with_runner(compiled, **kwargs):
    """A copy of `compiled` whose ORT runner exports/runs with other options."""
    from slimgraph.codegen.onnx_runtime import OrtRunner
    c = copy.copy(compiled)
    c._runner = OrtRunner(compiled.graph, ["CPUExecutionProvider"], **kwargs)
    return c


def with_baseline_runner(compiled, export_onnx):
    """A copy of `compiled` running the baseline export with ORT's default session options."""
    import onnxruntime as ort
    from slimgraph.codegen.onnx_runtime import OrtRunner
    r = OrtRunner.__new__(OrtRunner)
    r.model, r.graph, r.providers = export_onnx(compiled.graph), compiled.graph, ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    r.session = ort.InferenceSession(r.model.SerializeToString(), opts, providers=r.providers)
    r.input_names = [i.name for i in r.session.get_inputs()]
    c = copy.copy(compiled)
    c._runner = r
    return c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline-rev", default=None, help="also run the exporter of this git revision (before)")
    args = ap.parse_args(argv)
    import onnxruntime
    model, tok = zoo.load("smollm2-135m")
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :32]
    int4 = slimgraph.optimize(model, target="onnx", pipeline=INT4)
    fp32 = slimgraph.optimize(model, target="onnx", pipeline=FP32)
    int4_head8 = slimgraph.optimize(model, target="onnx", pipeline=INT4_HEAD8)
    runs = {"fp32": fp32, "int4": int4, "int4 nospin": with_runner(int4, spin=False),
            "int4 acc4": with_runner(int4, int4_accuracy_level=4), "int4 head8": int4_head8}
    if args.baseline_rev:
        export_old = baseline_exporter(args.baseline_rev)
        runs["fp32 base"] = with_baseline_runner(fp32, export_old)
        runs["int4 base"] = with_baseline_runner(int4, export_old)
    speeds, outs = {k: [] for k in runs}, {}
    for _ in range(args.repeat):
        for k, c in runs.items():
            outs[k], s = decode(c, ids, args.new_tokens)
            speeds[k].append(s)
    ref = slimgraph.optimize(model, target="reference", pipeline=INT4)
    out_ref, _ = decode(ref, ids, args.new_tokens)
    same = {k: torch.equal(outs[k], out_ref) for k in runs if k.startswith("int4") and k != "int4 head8"}
    ref8, _ = decode(slimgraph.optimize(model, target="reference", pipeline=INT4_HEAD8), ids, args.new_tokens)
    same["int4 head8"] = torch.equal(outs["int4 head8"], ref8)
    from slimgraph.codegen.onnx_export import export_onnx
    n_nbits = sum(n.op_type == "MatMulNBits" for n in export_onnx(int4.graph, check=False).graph.node)
    med = {k: statistics.median(v) for k, v in speeds.items()}
    print(f"machine: {platform.machine()} {torch.get_num_threads()} threads; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}")
    print(f"| SmolLM2-135M on ORT, batch 1, 32-token prompt, {args.new_tokens} new tokens | decode tok/s "
          f"(median of {args.repeat}) | int4 greedy == reference target |\n|---|---|---|")
    rows = [("fp32 base", f"fp32 export at {args.baseline_rev} (before)"),
            ("int4 base", f"int4 g32 export at {args.baseline_rev} (before)"),
            ("fp32", "fp32 export (now)"), ("int4", f"int4 g32 export, {n_nbits} MatMulNBits (now)"),
            ("int4 nospin", "int4 g32 export, no intra-op spin-waiting (SLIMGRAPH_ORT_SPIN=0)"),
            ("int4 acc4", "int4 g32, MatMulNBits accuracy_level=4 (opt-in)"),
            ("int4 head8", "int4 g32 + int8-stored tied head, merged q/k/v and gate/up")]
    for k, label in rows:
        if k not in med:
            continue
        ratios = [f"{med[k] / med['fp32']:.2f}x fp32 now"] if k != "fp32" else []
        if args.baseline_rev and k in ("fp32", "int4", "int4 nospin", "int4 acc4"):
            ratios.append(f"{med[k] / med[k.split()[0] + ' base']:.2f}x before")
        extra = f" ({', '.join(ratios)})" if ratios else ""
        print(f"| {label} | {med[k]:.1f}{extra} | {same.get(k, '')} |")
    return same, med


if __name__ == "__main__":
    main()
