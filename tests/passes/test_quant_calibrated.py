"""GPTQ, AWQ and AWQ+GPTQ in quantize-weights on a small random language model: each beats RTN
on held-out inputs, against the float graph run by the interpreter."""
import math
import pytest
import torch

from slimgraph import ir
from slimgraph.ir import TensorType
from slimgraph.passes.base import PassError, get_pass
from slimgraph.passes.calibration import Calibration

VOCAB, D, FF = 96, 64, 128


def tiny_lm(seed=0):
    """embedding -> rms_norm -> gated MLP (+ residual) -> rms_norm -> attention-free 'o' -> lm_head,
    with a few outlier channels in the embedding (what AWQ is for)."""
    torch.manual_seed(seed)
    g = ir.Graph()
    ids = g.add_input("ids", TensorType("i64", ("batch", "seq")))
    emb = torch.randn(VOCAB, D)
    emb[:, :4] *= 12
    w = lambda name, *shape: g.add_weight(name, torch.randn(*shape) / shape[-1] ** 0.5)
    h = g.op("embedding", g.add_weight("embed.weight", emb), ids)
    a = g.op("rms_norm", h, g.add_weight("norm1.weight", 1 + 0.1 * torch.randn(D)))
    gate = g.op("linear", a, w("mlp.gate.weight", FF, D))
    up = g.op("linear", a, w("mlp.up.weight", FF, D))
    d = g.op("linear", g.op("mul", g.op("silu", gate), up), w("mlp.down.weight", D, FF))
    h = g.op("add", h, d)
    b = g.op("rms_norm", h, g.add_weight("norm2.weight", 1 + 0.1 * torch.randn(D)))
    o = g.op("linear", g.op("silu", g.op("linear", b, w("proj.weight", D, D))), w("out.weight", D, D))
    g.set_outputs([g.op("linear", g.op("add", h, o), w("lm_head.weight", VOCAB, D))])
    return g


def ids(n, seq=32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    # a skewed token distribution, like text: a few tokens dominate
    probs = torch.distributions.Dirichlet(torch.full((VOCAB,), 0.3)).sample()
    return torch.multinomial(probs.expand(n * seq, VOCAB), 1, generator=gen).view(n, seq)


def error_of(method, **opts):
    g = tiny_lm()
    held_out = ids(8, seed=7)
    ref = ir.run(g, held_out)[0]
    calib = Calibration.from_token_ids(g, ids(16))
    res = get_pass("quantize-weights")(bits=4, group=32, method=method, calibration=calib, **opts).run(g)
    ir.verify(g)
    assert res.stats["quantized"] == 5        # lm_head and embedding stay float
    out = ir.run(g, held_out)[0]
    return float((out - ref).norm() / ref.norm()), g


@pytest.fixture(scope="module")
def rtn_error():
    return error_of("rtn")[0]


@pytest.mark.parametrize("method", ["gptq", "awq", "awq-gptq"])
def test_calibrated_methods_beat_rtn(method, rtn_error):
    err, g = error_of(method)
    assert err < 0.9 * rtn_error, (method, err, rtn_error)


def test_awq_folds_scales_into_norm_and_up_rows():
    g0 = tiny_lm()
    _, g = error_of("awq")
    n1 = g.weights["norm1.weight"].tensor
    assert not torch.allclose(n1, g0.weights["norm1.weight"].tensor)   # scales folded into the norm
    # gate and up share one input: both are scaled by the same s, so the fold target is the norm
    assert g.op_counts()["dequantize"] == 5


def test_awq_fold_preserves_float_function():
    from slimgraph.passes.awq import fold_target
    g = tiny_lm()
    x = ids(2)
    ref = ir.run(g, x)[0]
    down = next(n for n in g.nodes if n.op == "linear" and n.inputs[1].name == "mlp.down.weight")
    s = torch.rand(FF) + 0.5
    fold = fold_target(down.inputs[0])
    assert fold is not None
    fold(s)
    down.inputs[1].tensor = down.inputs[1].tensor * s
    torch.testing.assert_close(ir.run(g, x)[0], ref, rtol=1e-4, atol=1e-4)


def test_gptq_needs_calibration():
    with pytest.raises(PassError, match="method=gptq needs calibration data"):
        get_pass("quantize-weights")(bits=4, group=32, method="gptq").run(tiny_lm())


def test_calibration_inputs_for_kv_cache_graph():
    g = ir.Graph()
    g.add_input("input_ids", TensorType("i64", ("batch", "seq")))
    g.add_input("past_key_0", TensorType("f32", ("batch", 3, "past", 8)))
    c = Calibration.from_token_ids(g, torch.zeros(4, 16, dtype=torch.long))
    assert c.inputs[1].shape == (4, 3, 0, 8) and c.tokens == 64


def model_text(g, n, seq=32, seed=3):
    """Token ids sampled from the tiny model itself (each position depends only on the previous token),
    so the float model predicts them well and quantization measurably hurts."""
    gen = torch.Generator().manual_seed(seed)
    P = torch.softmax(ir.run(g, torch.arange(VOCAB)[None])[0][0], -1)
    out = [torch.randint(0, VOCAB, (n,), generator=gen)]
    for _ in range(seq - 1):
        out.append(torch.multinomial(P[out[-1]], 1, generator=gen)[:, 0])
    return torch.stack(out, 1)


@pytest.mark.parametrize("target", [0.005, 0.5])
def test_select_precision_meets_target_with_fewest_high_layers(target):
    g = tiny_lm()
    g.weights["lm_head.weight"].tensor *= 2
    calib = model_text(g, 24)
    res = get_pass("select-precision")(target_ppl=target, bits=4, group=0, method="rtn", calibration=calib).run(g)
    ir.verify(g)
    st = res.stats
    high = st["high_precision_layers"]
    assert st["search_rows"] == 8 and st["ppl_increase_estimate"] <= target
    assert set(st["choice"]) == {"mlp.gate.weight", "mlp.up.weight", "mlp.down.weight", "proj.weight", "out.weight"}
    assert sorted(n for n, c in st["choice"].items() if c == "int8") == high
    assert sum(c == "int4" for c in st["choice"].values()) == 5 - len(high)
    assert g.op_counts()["dequantize"] == 5
    assert 0.25 < st["bytes_vs_fp16"] <= 0.51 + 0.01 * len(high)
    if target == 0.5:
        assert high == []                        # a loose target keeps everything at 4 bits
    else:
        assert st["searched"][0] > target        # all-4-bit misses this target ...
        assert 0 < len(high) < 5                 # ... and not every layer is needed at 8 bits
        assert st["searched"][len(high) - 1] > target   # one layer fewer misses it (minimality)


def test_select_precision_estimate_is_the_kl_on_held_out_rows():
    """The search's estimate for all-low is exp(KL(float || quantized)) - 1 on the held-out rows,
    computed here independently with the RTN candidates swapped into a copy of the graph."""
    from slimgraph.ir import quant_format as Q
    g = tiny_lm()
    calib = model_text(g, 12)
    ref = torch.log_softmax(ir.run(g, calib[4:])[0], -1)
    saved = {}
    for n in ["mlp.gate.weight", "mlp.up.weight", "mlp.down.weight", "proj.weight", "out.weight"]:
        w = g.weights[n].tensor
        saved[n] = w
        g.weights[n].tensor = Q.dequantize(*Q.store(*Q.quantize_rtn(w, 4, 0, False), 4, False), 4, 0, w.dtype)
    q = torch.log_softmax(ir.run(g, calib[4:])[0], -1)
    for n, w in saved.items():
        g.weights[n].tensor = w
    want = math.expm1(float((ref.exp() * (ref - q)).sum(-1).mean()))
    st = get_pass("select-precision")(target_ppl=10.0, bits=4, group=0, search_rows=8, method="rtn",
                                         calibration=calib).run(g).stats
    assert st["search_rows"] == 8 and st["searched"] == {0: pytest.approx(want, rel=1e-4)}


def test_select_precision_with_gptq_candidates():
    """method=gptq: the search swaps in GPTQ weights for the low candidates, and the choice it
    makes (which the final GPTQ run then uses) meets the target on the search rows."""
    g = tiny_lm()
    g.weights["lm_head.weight"].tensor *= 2
    calib = model_text(g, 24)
    res = get_pass("select-precision")(target_ppl=0.005, bits=4, group=0, method="gptq", calibration=calib).run(g)
    ir.verify(g)
    st = res.stats
    k = len(st["high_precision_layers"])
    assert st["searched"][k] <= 0.005
    assert res.stats["method"] == "gptq" and g.op_counts()["dequantize"] == 5


def masked_encoder():
    """An encoder-like graph with a second data input (a mask) that token ids alone cannot supply."""
    torch.manual_seed(0)
    g = ir.Graph()
    x_ids = g.add_input("ids", TensorType("i64", ("batch", "seq")))
    mask = g.add_input("attention_mask", TensorType("f32", ("batch", "seq")))
    h = g.op("embedding", g.add_weight("embed.weight", torch.randn(VOCAB, D)), x_ids)
    h = g.op("mul", h, g.op("unsqueeze", mask, dim=-1))
    g.set_outputs([g.op("linear", h, g.add_weight("dense.weight", torch.randn(D, D) / 8))])
    return g


def test_calibration_ids_cannot_make_up_a_mask_input():
    g = masked_encoder()
    with pytest.raises(PassError, match=r"cannot fill graph input %attention_mask.*one batch per graph input"):
        get_pass("quantize-weights")(bits=4, group=32, method="gptq", calibration=ids(4)).run(g)
    with pytest.raises(PassError, match="calibration has 1 tensors; the graph has 2 inputs"):
        get_pass("quantize-weights")(bits=4, group=32, method="gptq", calibration=(ids(4),)).run(g)
    calib = (ids(4), torch.ones(4, 32))
    res = get_pass("quantize-weights")(bits=4, group=32, method="gptq", calibration=calib).run(g)
    assert res.stats["quantized"] == 1


def _h_error(w, codes, scales, zeros, group, H):
    from slimgraph.ir import quant_format as Q
    out, k = w.shape
    g = Q.group_size(group, k)
    e = ((codes.view(out, k // g, g) - zeros.unsqueeze(-1)) * scales.unsqueeze(-1)).view(out, k) - w
    return float(torch.einsum("ok,kl,ol->", e, H, e))


@pytest.mark.parametrize("sym", [True, False])
def test_gptq_refit_lowers_the_output_error(sym):
    """The least-squares scale refit after GPTQ's column loop can only lower tr(E H E^T) for the
    same codes and zero points (it is that objective's minimizer)."""
    from slimgraph.passes.gptq import gptq_quantize, refit_scales
    torch.manual_seed(0)
    x = torch.randn(512, 96) @ torch.randn(96, 96) * 0.3 + torch.randn(96)   # correlated inputs
    H = x.T @ x / len(x)
    w = torch.randn(40, 96) * 0.05
    c0, s0, z0 = gptq_quantize(w, H, 4, 32, sym)
    s1 = refit_scales(w, H, c0, s0, z0, 32)
    assert bool((s1 > 0).all()) and not torch.equal(s0, s1)
    before, after = _h_error(w, c0, s0, z0, 32, H), _h_error(w, c0, s1, z0, 32, H)
    assert after < 0.97 * before, (before, after)
    c2, s2, z2 = gptq_quantize(w, H, 4, 32, sym, refit=True)   # the option: refit (+ grid ends if sym)
    assert _h_error(w, c2, s2, z2, 32, H) < 0.97 * before


def test_gptq_symmetric_int4_search_tries_the_grid_ends():
    """With refit, a group whose largest |w| is negative fits the -8 level exactly: the clip search finds the
    scale amax / 8 (qparams' default amax / 7.5 would round it onto -8 with a 6.7% error)."""
    from slimgraph.ir import quant_format as Q
    from slimgraph.passes.gptq import gptq_quantize
    w = (torch.arange(-8, 8).float().repeat(2) * 0.01).view(1, 32)   # exactly on the Q4_0 grid, d = 0.01
    codes, scales, zeros = gptq_quantize(w, torch.eye(32), 4, 32, True, refit=True)
    torch.testing.assert_close(scales, torch.tensor([[0.01]]))
    torch.testing.assert_close((codes - zeros) * scales, w)
