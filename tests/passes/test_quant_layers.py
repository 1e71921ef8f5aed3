"""quantize-weights covers every weight-times-activation op: linear, matmul by a constant weight in
either orientation (GPT-2's Conv1D), conv2d, embeddings when included; the report lists quantized and
skipped layers with the reason; quantizing nothing warns."""
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import slimgraph
from slimgraph import ir
from slimgraph.passes.pipeline import parse_pipeline
from slimgraph.passes.manager import PassManager

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "frontends"))


def _stats(fast, name="quantize-weights"):
    return next(p for p in fast.report.passes if p["name"] == name)["stats"]


class Conv1DMLP(nn.Module):
    """x @ W[in, out] + b (GPT-2's Conv1D) and x @ W[out, in].T: both become linear."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(32, 64, generator=g) * 0.1)
        self.b1 = nn.Parameter(torch.randn(64, generator=g) * 0.1)
        self.w2 = nn.Parameter(torch.randn(16, 64, generator=g) * 0.1)

    def forward(self, x):
        return torch.relu(x @ self.w1 + self.b1) @ self.w2.t()


def test_matmul_weights_in_both_orientations_are_quantized_and_fused():
    m, x = Conv1DMLP(), torch.randn(3, 5, 32)
    fast = slimgraph.optimize(m, (x,), target="torch", pipeline="quantize-weights{bits=8,group=0},fuse-dequant-matmul")
    st = _stats(fast)
    assert st["quantized"] == 2 and st["matmuls_as_linear"] == 2 and set(st["layers"].values()) == {"linear"}
    ops = fast.graph.op_counts()
    assert ops.get("qlinear") == 2 and "matmul" not in ops
    ref = ir.run(fast.graph, x)[0]   # the torch int8 kernel takes activations in bf16 (codegen/torch_qlinear.py)
    torch.testing.assert_close(fast(x), ref, atol=1e-2, rtol=1e-2)
    assert (fast(x) - m(x)).abs().max() < 2e-2


def test_tiny_gpt2_conv1d_layers_are_quantized():
    import hf_tiny
    model, kw = hf_tiny.build("gpt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = slimgraph.optimize(model, example_kwargs=kw, target="torch",
                                  pipeline="quantize-weights{bits=8,group=0},fuse-dequant-matmul")
    st = _stats(fast)
    assert st["quantized"] == 8, st            # c_attn, c_proj, c_fc, mlp.c_proj in each of 2 blocks
    assert "tied to the embedding" in st["skipped"]["lm_head.weight"]      # skipped, with the reason
    assert fast.graph.op_counts().get("qlinear", 0) >= 8
    ids = kw["input_ids"]
    got = fast(ids).logits
    ref = ir.run(fast.graph, *fast.signature.flatten_call((ids,), {}, fast.graph))[0]
    torch.testing.assert_close(got, ref, atol=2e-2, rtol=2e-2)    # bf16 activations in the int8 kernel
    with torch.no_grad():
        assert (got - model(ids).logits).abs().max() < 0.05


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)          # K = 27: no int4 group fits -> skipped
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=4)  # K = 4*9 = 36
        self.pw = nn.Conv2d(16, 32, 1)                       # 1x1: K = 16
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 0)])
def test_cnn_convs_quantized_per_output_channel(bits, group):
    m, x = CNN().eval(), torch.randn(2, 3, 8, 8)
    fast = slimgraph.optimize(m, (x,), target="torch", pipeline=f"quantize-weights{{bits={bits},group={group}}}")
    st = _stats(fast)
    if bits == 8:
        assert st["quantized"] == 4 and st["layers"]["stem.weight"] == "conv2d"
    else:  # int4 needs an even K: the 3-channel stem (K=27) is skipped and the report says why
        assert st["quantized"] == 3 and "odd input dim 27" in st["skipped"]["stem.weight"]
    assert "conv2d" in fast.graph.op_counts() and fast.graph.op_counts()["dequantize"] == st["quantized"]
    torch.testing.assert_close(fast(x), ir.run(fast.graph, x)[0], atol=1e-5, rtol=1e-5)
    tol = 0.05 if bits == 8 else 0.5
    assert (fast(x) - m(x)).abs().max() < tol


def test_embeddings_only_when_included():
    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 32)
            self.proj = nn.Linear(32, 8)

        def forward(self, ids):
            return self.proj(self.embed(ids))
    m, ids = Emb(), torch.randint(0, 50, (2, 5))
    fast = slimgraph.optimize(m, (ids,), target="torch", pipeline="quantize-weights{bits=8,group=0}")
    assert "an embedding table" in _stats(fast)["skipped"]["embed.weight"]
    fast = slimgraph.optimize(m, (ids,), target="torch",
                              pipeline="quantize-weights{bits=8,group=0,include=[embed.*]},fuse-dequant-matmul")
    assert _stats(fast)["layers"] == {"embed.weight": "embedding"} and "qembedding" in fast.graph.op_counts()
    assert (fast(ids) - m(ids)).abs().max() < 0.02


def test_quantizing_nothing_warns_with_the_reasons():
    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 32)

        def forward(self, ids):
            return self.embed(ids).sum(-1)
    with pytest.warns(UserWarning, match=r"quantized nothing \(@embed.weight: an embedding table"):
        fast = slimgraph.optimize(Emb(), (torch.randint(0, 50, (2, 5)),), target="torch",
                                  pipeline="quantize-weights{bits=8}")
    assert _stats(fast)["quantized"] == 0
