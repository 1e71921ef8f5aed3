"""quantize-weights (RTN), dequantize/qlinear ops, fuse-dequant-matmul and the torch qlinear
kernels, on small hand-built graphs checked against the reference interpreter."""
import pytest
import torch

from slimgraph import ir
from slimgraph.ir import TensorType, quant_format as Q
from slimgraph.passes.base import PassError, get_pass


def mlp(in_dim=128, hidden=64, out=32, bias=True, seed=0):
    torch.manual_seed(seed)
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("batch", in_dim)))
    h = g.op("linear", x, g.add_weight("fc1.weight", torch.randn(hidden, in_dim) / in_dim ** 0.5),
             *([g.add_weight("fc1.bias", torch.randn(hidden))] if bias else []))
    h = g.op("silu", h)
    g.set_outputs([g.op("linear", h, g.add_weight("fc2.weight", torch.randn(out, hidden) / hidden ** 0.5))])
    return g


def quantize(g, **opts):
    return get_pass("quantize-weights")(**opts).run(g)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_unpack_roundtrip(bits):
    lo, hi = Q.qrange(bits)
    q = torch.randint(lo, hi + 1, (6, 10))
    assert torch.equal(Q.unpack(Q.pack(q, bits), bits), q.to(torch.int32))
    if bits == 4:
        packed = Q.pack(torch.tensor([[1, 2]]), 4)
        assert packed.dtype == torch.uint8 and packed.item() == 1 | (2 << 4)  # low nibble = even column


def test_dequantize_matches_layout_formula():
    q = torch.tensor([[0, 15, 3, 8]])
    scales, zeros = torch.tensor([[0.5, 2.0]]), torch.tensor([[1, 8]], dtype=torch.uint8)
    w = ir.get_op("dequantize").run(Q.pack(q, 4), scales, zeros, bits=4, group=2, dtype="f32")
    assert torch.equal(w, torch.tensor([[-0.5, 7.0, -10.0, 0.0]]))


@pytest.mark.parametrize("bits,group,tol", [(8, 0, 0.01), (4, 32, 0.15), (4, 0, 0.3), (8, 32, 0.01)])
def test_rtn_rewrites_linears_and_stays_close(bits, group, tol):
    g = mlp()
    X = torch.randn(16, 128)
    ref = ir.run(g, X)[0]
    res = quantize(g, bits=bits, group=group)
    ir.verify(g)
    text = str(g)
    assert res.changed and res.stats["quantized"] == 2
    assert "weight @fc1.weight:" not in text and "@fc1.bias" in text
    assert f"dequantize(@fc1.weight.qweight, @fc1.weight.scales" in text and f"bits={bits}" in text
    qdt = "u8[64,64]" if bits == 4 else "i8[64,128]"
    assert f"weight @fc1.weight.qweight: {qdt}" in text
    assert ("@fc1.weight.zeros" in text) == (bits == 4)   # int4 asymmetric, int8 symmetric by default
    err = rel_err(ir.run(g, X)[0], ref)
    assert 0 < err < tol
    assert res.stats["weight_bytes_after"] < res.stats["weight_bytes_before"] * (0.17 if bits == 4 else 0.3)
    ir.parse_graph(text, weights={k: w.tensor for k, w in g.weights.items()})  # text round-trips


def test_symmetric_int4_uses_implied_zero_and_no_zeros_input():
    g = mlp(bias=False)
    X = torch.randn(8, 128)
    ref = ir.run(g, X)[0]
    quantize(g, bits=4, group=64, sym=True)
    assert "zeros" not in str(g)
    assert rel_err(ir.run(g, X)[0], ref) < 0.2


def test_more_bits_and_smaller_groups_lose_less():
    X = torch.randn(32, 128)
    ref = ir.run(mlp(), X)[0]
    errs = {}
    for bits, group in [(4, 0), (4, 64), (4, 32), (8, 0)]:
        g = mlp()
        quantize(g, bits=bits, group=group)
        errs[(bits, group)] = rel_err(ir.run(g, X)[0], ref)
    assert errs[(8, 0)] < errs[(4, 32)] < errs[(4, 64)] < errs[(4, 0)]


def test_errors_name_layer_and_fix():
    with pytest.raises(ValueError, match="bits=3 is not supported; use 8"):
        quantize(mlp(), bits=3)
    with pytest.raises(PassError, match=r"group=48 does not divide the input dim 128 of layer @fc1.weight; "
                                        r"groups that fit: \[8, 16, 32, 64, 128\]"):
        quantize(mlp(), bits=4, group=48)
    with pytest.raises(PassError, match=r"groups that fit: \[8, 12, 18, 24, 36, 72\]"):   # every even divisor
        quantize(mlp(in_dim=72), bits=4, group=32)
    with pytest.raises(PassError, match=r"@fc1.bias \(f32\[64\].*not a 2-D linear weight"):
        quantize(mlp(), include=["fc1.*"])
    g = mlp(in_dim=9)
    with pytest.raises(PassError, match="odd input dim 9"):
        quantize(g, bits=4, group=0, include=["fc1.weight"])


def test_default_selection_skips_embeddings_and_lm_head():
    torch.manual_seed(0)
    g = ir.Graph()
    ids = g.add_input("ids", TensorType("i64", ("batch", "seq")))
    emb = g.add_weight("embed_tokens.weight", torch.randn(50, 32))
    h = g.op("embedding", emb, ids)
    h = g.op("linear", h, g.add_weight("layers.0.proj.weight", torch.randn(32, 32)))
    tied = g.op("linear", h, emb)                                # tied head reads the embedding
    head = g.op("linear", h, g.add_weight("lm_head.weight", torch.randn(50, 32)))
    g.set_outputs([tied, head])
    res = quantize(g, bits=8, group=0)
    assert res.stats["quantized"] == 1
    assert "weight @embed_tokens.weight: f32" in str(g) and "weight @lm_head.weight: f32" in str(g)
    res = quantize(g, bits=8, group=0, include=["lm_head.weight"])
    assert res.stats["quantized"] == 1 and "@lm_head.weight.qweight" in str(g)


def test_an_include_pattern_that_names_no_weight_warns_with_the_tied_name():
    """include=[model.embed_tokens.weight] on a tied model (the table is the head's weight, @lm_head.weight)
    quantized nothing of it, with a warning listing only other layers; a pattern naming no weight now says so."""
    def tied():
        torch.manual_seed(0)
        g = ir.Graph()
        ids = g.add_input("ids", TensorType("i64", ("batch", "seq")))
        emb = g.add_weight("lm_head.weight", torch.randn(50, 32))
        h = g.op("linear", g.op("embedding", emb, ids), g.add_weight("layers.0.proj.weight", torch.randn(32, 32)))
        g.set_outputs([g.op("linear", h, emb)])
        return g
    with pytest.warns(UserWarning, match=r"include pattern 'model.embed_tokens.weight' matches no weight .*tied to "
                                         r"its head and is named @lm_head.weight"):
        quantize(tied(), bits=8, group=0, include=["model.embed_tokens.weight", "layers.*"])
    with pytest.warns(UserWarning, match=r"include pattern 'layers.0.prj.weight' matches no weight .*similar "
                                         r"names: @layers.0.proj.weight"):
        quantize(tied(), bits=8, group=0, include=["layers.0.prj.weight"])


def test_exclude_patterns():
    g = mlp()
    res = quantize(g, bits=8, group=0, exclude=["fc2.*"])
    assert res.stats["quantized"] == 1 and "weight @fc2.weight: f32" in str(g)


def test_pipeline_string_options_parse():
    from slimgraph.passes.pipeline import parse_pipeline
    p = parse_pipeline("quantize-weights{bits=8,group=0,sym=true,method=rtn,exclude=[fc2.*]},fuse-dequant-matmul")
    assert p[0].bits == 8 and p[0].sym is True and p[0].exclude == ["fc2.*"] and p[1].name == "fuse-dequant-matmul"


@pytest.mark.parametrize("bits,group,sym,bias", [(4, 32, False, True), (4, 64, True, True), (8, 0, True, False),
                                                 (8, 32, False, True)])
def test_fuse_dequant_matmul_is_exact(bits, group, sym, bias):
    g = mlp(bias=bias)
    X = torch.randn(4, 128)
    quantize(g, bits=bits, group=group, sym=sym)
    before = ir.run(g, X)[0]
    res = get_pass("fuse-dequant-matmul")().run(g)
    ir.verify(g)
    assert res.stats["fused"] == 2
    assert g.op_counts().get("qlinear") == 2 and "dequantize" not in g.op_counts()
    assert "linear(" not in str(g).replace("qlinear(", "")
    assert torch.equal(ir.run(g, X)[0], before)
    assert not get_pass("fuse-dequant-matmul")().run(g).changed


def test_fuse_keeps_dequantize_with_other_users():
    g = mlp(bias=False)
    quantize(g, bits=8, group=0)
    dq = next(n for n in g.nodes if n.op == "dequantize")
    g.set_outputs([*g.outputs, dq.output])
    get_pass("fuse-dequant-matmul")().run(g)
    ir.verify(g)
    assert g.op_counts()["dequantize"] == 1 and g.op_counts()["qlinear"] == 2


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 16)])
def test_tied_head_is_quantized_once_and_lookups_read_packed_rows(bits, group):
    """include=[the tied weight]: the head's linear and the embedding lookup share one packed table;
    after fusion the lookup is a qembedding that unpacks only the rows it reads, exactly."""
    torch.manual_seed(0)
    g = ir.Graph()
    ids = g.add_input("ids", TensorType("i64", ("batch", "seq")))
    emb = g.add_weight("lm_head.weight", torch.randn(50, 32))
    h = g.op("embedding", emb, ids)
    h = g.op("linear", h, g.add_weight("proj.weight", torch.randn(32, 32) / 6))
    g.set_outputs([g.op("linear", h, emb)])
    x = torch.randint(0, 50, (2, 5))
    ref = ir.run(g, x)[0]
    res = quantize(g, bits=bits, group=group, include=["lm_head.weight"])
    assert res.stats["quantized"] == 1 and "weight @lm_head.weight:" not in str(g)
    before = ir.run(g, x)[0]
    assert rel_err(before, ref) < (0.01 if bits == 8 else 0.15)
    get_pass("fuse-dequant-matmul")().run(g)
    ir.verify(g)
    text = str(g)
    assert g.op_counts()["qembedding"] == 1 and g.op_counts()["qlinear"] == 1 and "dequantize" not in text
    assert f"qembedding(%ids, @lm_head.weight.qweight, @lm_head.weight.scales" in text
    assert torch.equal(ir.run(g, x)[0], before)
    from slimgraph.codegen.torch_fx import build_runner
    torch.testing.assert_close(build_runner(g)(x)[0], before, rtol=2e-2, atol=2e-2 * float(before.abs().max()))
    for bad in (-1, 50):   # like embedding's (F.embedding), never a wrapped row (python indexing read row 49 for -1)
        with pytest.raises(Exception, match=rf"qembedding: id {bad} is outside 0\.\.49"):
            ir.run(g, torch.tensor([[3, bad]]))
        with pytest.raises(IndexError, match=rf"qembedding: id {bad} is outside 0\.\.49"):
            build_runner(g)(torch.tensor([[3, bad]]))


SIBLINGS = """
graph @main(%x: f32[b,s,32]) {
  weight @wq: f32[32,32]
  weight @wk: f32[16,32]
  weight @wv: f32[16,32]
  weight @bv: f32[16]
  weight @wo: f32[32,32]
  %q: f32[b,s,32] = linear(%x, @wq)
  %k: f32[b,s,16] = linear(%x, @wk)
  %v: f32[b,s,16] = linear(%x, @wv, @bv)
  %o: f32[b,s,32] = linear(%q, @wo)
  %y: f32[b,s,16] = add(%k, %k)
  return %o, %y, %v
}"""


@pytest.mark.parametrize("quantized", [False, True])
def test_merge_sibling_linears(quantized):
    """q/k share x and their form (no bias) and merge; v has a bias and o reads another input. Quantized
    siblings (qweight, scales, zeros all indexed by output channel) merge the same way, exactly."""
    from passtest import random_weights
    from slimgraph.ir import parse_graph
    g = parse_graph(SIBLINGS, weights=random_weights(SIBLINGS))
    if quantized:
        quantize(g, bits=4, group=16)
        get_pass("fuse-dequant-matmul")().run(g)
    x = torch.randn(2, 3, 32)
    before = ir.run(g, x)
    res = get_pass("merge-sibling-linears")().run(g)
    ir.verify(g)
    op = "qlinear" if quantized else "linear"
    assert res.stats["merged"] == 2 and g.op_counts()[op] == 3 and g.op_counts()["split"] == 1
    assert "_merged) {dim=-1, sizes=[32,16]}" in str(g)
    for a, b in zip(ir.run(g, x), before):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not any(n.startswith(("wq", "wk")) and ".merged" not in n for n in g.weights)  # separate weights gone
