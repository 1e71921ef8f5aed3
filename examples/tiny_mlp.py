"""The smallest end-to-end use of slimgraph: optimize a PyTorch model, check it, save and reload it.

    python examples/tiny_mlp.py                                    # run it
    slimgraph compile examples/tiny_mlp.py --target torch -o out/  # or compile it ahead of time

`get_model()` is what `slimgraph compile` looks for in a Python file.
"""
import tempfile

import torch
from torch import nn

import slimgraph


class TinyMLP(nn.Module):
    def __init__(self, d_in=16, d_hidden=64, d_out=8):
        super().__init__()
        self.up = nn.Linear(d_in, d_hidden)
        self.down = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return torch.softmax(self.down(torch.nn.functional.gelu(self.up(x))), dim=-1)


def get_model():
    torch.manual_seed(0)
    return TinyMLP().eval(), (torch.randn(4, 16),)


def main():
    model, example_inputs = get_model()
    fast = slimgraph.optimize(model, example_inputs, target="torch")
    print(fast.report)

    x = torch.randn(4, 16)
    with torch.no_grad():
        want = model(x)
    got = fast.run(x)[0]
    print(f"max |slimgraph - torch| = {(got - want).abs().max().item():.2e}")
    assert torch.allclose(got, want, atol=1e-5), "optimized model disagrees with the original"

    with tempfile.TemporaryDirectory() as d:
        fast.save(f"{d}/tiny.sg")
        again = slimgraph.load(f"{d}/tiny.sg")
        assert torch.equal(again.run(x)[0], got), "reloaded artifact disagrees"
    print("ok: optimized, checked against torch, saved and reloaded")


if __name__ == "__main__":
    main()
