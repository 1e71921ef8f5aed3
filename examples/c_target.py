"""Compile a model to plain C (the `c` target), build it with make + gcc, and run the C driver program on
an input file: the flow for embedded and FPGA-like hosts (docs/targets/c.md).

    python examples/c_target.py [OUT_DIR]

Needs gcc and make. The folder it leaves (OUT_DIR, default a temporary one) is also a slimgraph artifact.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

import slimgraph


class Classifier(nn.Module):
    def __init__(self, d_in=32, d_hidden=64, classes=10):
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.up = nn.Linear(d_in, d_hidden)
        self.down = nn.Linear(d_hidden, classes)

    def forward(self, x):
        return torch.log_softmax(self.down(torch.nn.functional.silu(self.up(self.norm(x)))), dim=-1)


def main(out_dir: Path):
    torch.manual_seed(0)
    model, x = Classifier().eval(), torch.randn(4, 32)
    # int8 weights, dequantized inside the qlinear kernel; the example's shapes are static already
    fast = slimgraph.optimize(model, (x,), target="c",
                              pipeline="quantize-weights{bits=8,group=32},fuse-dequant-matmul,canonicalize,cse,dce")
    art = out_dir / "classifier.sg"
    fast.save(art)
    print(f"wrote {art}: " + ", ".join(sorted(p.name for p in art.iterdir())))
    subprocess.run(["make", "-s"], cwd=art, check=True)          # plain make + gcc: no Python needed
    x.numpy().tofile(art / "x.bin")
    subprocess.run(["./slimgraph_driver", "weights.bin", "x.bin", "OUT_logits.bin"], cwd=art, check=True)
    got = torch.from_numpy(np.fromfile(art / "OUT_logits.bin", dtype=np.float32)).reshape(4, 10)
    ref = slimgraph.ir.run(fast.graph, x)[0]     # the reference interpreter on the same quantized graph
    err = (got - ref).abs().max().item()
    with torch.no_grad():
        drift = (got - model(x)).abs().max().item()
    print(f"max |C driver - interpreter| = {err:.2e}; max |int8 C - fp32 torch| = {drift:.2e}")
    assert err <= 1e-4, err
    print("ok: compiled to C, built with make, ran the driver on a file")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as d:
            main(Path(d))
