"""Which layers quantize-weights quantizes on models whose weights are not all `linear`.

    python benchmarks/quant_coverage.py

Tiny GPT-2 (Conv1D layers export as matmul + add with an [in, out] weight), a small CNN (3x3 stem,
grouped 3x3, 1x1 convs, a linear head) and a tiny BERT, each through `slimgraph.optimize` on the
`torch` target with RTN int8 per-channel and int4 (group 0 = per output channel); reports the
layers quantized by kind, the skipped ones with the reason, and the max abs error vs eager.
"""
from __future__ import annotations

import sys
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "frontends"))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.pw = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


def models():
    import hf_tiny
    gpt2, kw = hf_tiny.build("gpt2")
    bert, bkw = hf_tiny.build("bert")
    x = torch.randn(2, 3, 16, 16)
    return [("gpt2 (tiny)", gpt2, kw, lambda o: o.logits), ("bert (tiny)", bert, bkw, lambda o: o.last_hidden_state),
            ("cnn", CNN().eval(), {"x": x}, lambda o: o)]


def main():
    import slimgraph
    rows = []
    for name, model, kw, pick in models():
        for pipe in ("quantize-weights{bits=8,group=0},fuse-dequant-matmul",
                     "quantize-weights{bits=4,group=0},fuse-dequant-matmul"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fast = slimgraph.optimize(model, example_kwargs=kw, target="torch", pipeline=pipe)
            st = next(p for p in fast.report.passes if p["name"] == "quantize-weights")["stats"]
            with torch.no_grad():
                err = (pick(fast(**kw)) - pick(model(**kw))).abs().max().item()
            kinds = Counter(st.get("layers", {}).values())
            skipped = "; ".join(f"{k}: {v}" for k, v in st.get("skipped", {}).items()) or "-"
            rows.append((name, pipe.split("},")[0] + "}", st["quantized"], dict(kinds), st.get("matmuls_as_linear", 0),
                         skipped, err))
            print(rows[-1], flush=True)
    print("\n| model | pass | quantized | by kind | matmul->linear | skipped (reason) | max abs err vs eager |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | `{r[1]}` | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]:.3g} |")


if __name__ == "__main__":
    main()
