"""The `cpu` target's fused `linear_attention` kernel (codegen/tvm/linear_attention_kernel.py) against the
interpreter (ir/opset/linear_attention.py, the T x T masked form): every feature map, GQA and MHA, hybrid with
and without sinks and pure linear, a ring's worth of past keys or none, a left-padded batch's mask, and a
candidate tree's depths; one library per configuration serves every shape (symbolic b, s, n)."""
import pytest
import torch

from slimgraph import ir
from slimgraph.ir import TensorType
from slimgraph.targets.base import get_target

tvm = pytest.importorskip("tvm", reason="the cpu target needs apache-tvm: pip install 'slimgraph[tvm]'")

TOL = 1e-4


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SLIMGRAPH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tvm-cache"))


def graph(fm, hq, hk, window, sinks, depth):
    f = 16 if fm == "hedgehog" else 8
    gen = torch.Generator().manual_seed(hq * 7 + window)
    g = ir.Graph("linear_attention")
    q = g.add_input("q", TensorType("f32", ("b", hq, "s", 8)))
    k = g.add_input("k", TensorType("f32", ("b", hk, "n", 8)))
    v = g.add_input("v", TensorType("f32", ("b", hk, "n", 5)))
    kv = g.add_input("kv", TensorType("f32", ("b", hk, f, 5)))
    z = g.add_input("z", TensorType("f32", ("b", hk, f)))
    mask = g.add_input("mask", TensorType("bool", ("b", 1, "s", "n")))
    extra = [g.add_input("depth", TensorType("i64", ("b", "s")))] if depth else []
    w = [g.add_weight(name, torch.randn(*shape, generator=gen))
         for name, shape in (("wq", (hq, 8, 8)), ("wk", (hk, 8, 8)), ("wf", (hq,)))]
    out = g.op("linear_attention", q, k, v, kv, z, *w, mask, *extra, feature_map=fm, window=window, sinks=sinks,
               scale=0.3)
    g.set_outputs(list(out))
    return g, f


def inputs(hq, hk, f, s, ring, seed, tree=False):
    gen = torch.Generator().manual_seed(seed)
    n = s + ring
    q, k, v = torch.randn(2, hq, s, 8, generator=gen), torch.randn(2, hk, n, 8, generator=gen), \
        torch.randn(2, hk, n, 5, generator=gen)
    kv, z = torch.rand(2, hk, f, 5, generator=gen), torch.rand(2, hk, f, generator=gen) + 0.5
    valid = torch.ones(2, n, dtype=torch.bool)
    valid[1, :3] = False                                   # a left-padded row: its first 3 keys are pads
    local = torch.ones(s, s, dtype=torch.bool).tril()
    depth = torch.arange(s).expand(2, s).clone()
    if tree:   # a Medusa-like tree over the new tokens: node i's parent, depths from it
        parents = [-1] + [max(0, (i - 1) // 2) for i in range(1, s)]
        local = torch.zeros(s, s, dtype=torch.bool)
        for i, p in enumerate(parents):
            local[i, i] = True
            if p >= 0:
                local[i] |= local[p]
        depth = (local.sum(1) - 1).expand(2, s).clone()
    mask = valid[:, None, None, :] & torch.cat([torch.ones(s, ring, dtype=torch.bool), local], 1)
    return [q, k, v, kv, z, mask], depth


@pytest.mark.parametrize("fm", ["hedgehog", "elu", "relu2"])
@pytest.mark.parametrize("hq,hk,window,sinks", [(4, 2, 5, 2), (4, 2, 5, 0), (2, 2, 0, 0), (4, 1, 3, 1)])
def test_fused_kernel_equals_the_interpreter(fm, hq, hk, window, sinks):
    g, f = graph(fm, hq, hk, window, sinks, depth=True)
    run = get_target("cpu").compile(g)
    assert "linear_attention_" + fm in run.products.read_bytes("cpu_module.relax.py").decode()   # the fused kernel
    # (s new tokens, ring rows before them): a prompt, a decode step past the window, a chunk, a verify
    for s, ring, tree in ((13, 0, False), (1, window + sinks + 3, False), (6, window + sinks, False),
                          (7, window + sinks, True), (1, 0, False)):
        x, depth = inputs(hq, hk, f, s, ring, seed=s * 5 + ring, tree=tree)
        want, got = ir.run(g, *x, depth), run(*x, depth)
        real = slice(max(0, 3 - ring), None)               # row 1's pad queries are junk by definition
        torch.testing.assert_close(got[0][0], want[0][0], rtol=TOL, atol=TOL)
        torch.testing.assert_close(got[0][1, :, real], want[0][1, :, real], rtol=TOL, atol=TOL)
        torch.testing.assert_close(got[1], want[1], rtol=TOL, atol=TOL)
        torch.testing.assert_close(got[2], want[2], rtol=TOL, atol=TOL)
