"""quantize-activations and the quantize_activation op: dynamic int8 activations per weight group (W4A8)."""
import pytest
import torch

from slimgraph import ir
from slimgraph.ir import TensorType
from slimgraph.passes import PassManager
from slimgraph.passes.base import PassError


def _two_linears(k=128, n=64, seed=0):
    """x -> two linears sharing x (q/k-like) and a third on their sum."""
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("seq", k)))
    gen = torch.Generator().manual_seed(seed)
    a = g.op("linear", x, g.add_weight("wa", torch.randn(n, k, generator=gen)))
    b = g.op("linear", x, g.add_weight("wb", torch.randn(n, k, generator=gen)))
    c = g.op("linear", g.op("add", a, b), g.add_weight("wc", torch.randn(k, n, generator=gen)))
    g.set_outputs([c])
    return g


def test_the_pass_quantizes_each_qlinear_input_once_with_the_weights_group():
    g = _two_linears()
    PassManager("quantize-weights{bits=4,group=64},fuse-dequant-matmul,quantize-activations").run(g)
    text = str(g)
    # x feeds two qlinears: one quantize_activation, groups of 64 like the weights; the [seq, 64] sum has
    # one group per row (64 columns, group 64 -> the whole row: group=0)
    assert text.count("quantize_activation(%x)") == 1
    assert "= quantize_activation(%x) {group=64}" in text
    assert "= quantize_activation(%add)" in text and "quantize_activation(%add) {group" not in text
    assert g.op_counts()["quantize_activation"] == 2
    for node in g.nodes:
        if node.op == "qlinear":
            assert node.inputs[0].producer.op == "quantize_activation"
    again = PassManager("quantize-activations").run(g)   # idempotent: nothing left to quantize
    assert not again.changed


def test_quantize_activation_semantics_by_hand():
    x = torch.tensor([[1.0, -2.0, 0.5, 127.0], [0.0, 0.0, 0.0, 0.0], [0.3, -0.1, 0.2, 0.05]])
    out = ir.get_op("quantize_activation").impl(x, bits=8, group=2)
    # row 0, group [1, -2]: s = 2/127, codes round(63.5) = 64 (half to even), -127 -> 64*s, -2
    s = 2.0 / 127
    assert out[0, 0].item() == pytest.approx(64 * s) and out[0, 1].item() == pytest.approx(-2.0)
    assert out[0, 3].item() == pytest.approx(127.0)   # the group's max is exact
    assert out[1].eq(0).all()   # an all-zero group stays zero (no 0/0)
    # every value within half a step of its group's grid
    xg, og = x.reshape(3, 2, 2), out.reshape(3, 2, 2)
    step = xg.abs().amax(-1, keepdim=True) / 127
    assert ((xg - og).abs() <= step / 2 + 1e-7).all()
    assert not torch.equal(out[2], x[2])   # it does quantize


def test_quantize_activation_errors():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (2, 6)))
    with pytest.raises(Exception, match="group=4 does not divide"):
        g.op("quantize_activation", x, group=4)
    with pytest.raises(Exception, match="bits must be 8 .* or 16"):
        g.op("quantize_activation", x, bits=4)
    with pytest.raises(PassError, match="use bits=8 .* or bits=16"):
        PassManager("quantize-weights{bits=4},fuse-dequant-matmul,quantize-activations{bits=4}")
    with pytest.raises(PassError, match="dequant-fused"):   # no qlinear to quantize the input of
        PassManager("quantize-weights{bits=4},quantize-activations").run(_two_linears())


def test_a_second_pass_with_other_bits_is_an_error_not_a_silent_no_op():
    g = _two_linears()
    PassManager("quantize-weights{bits=4},fuse-dequant-matmul,quantize-activations{bits=8}").run(g)
    with pytest.raises(PassError, match=r"bits=16\}: .* already reads int8 activations"):
        PassManager("quantize-activations{bits=16}").run(g)
    assert not PassManager("quantize-activations{bits=8}").run(g).changed   # the same bits: idempotent


def test_int16_activations_split_into_two_int8_codes_and_lose_far_less():
    """bits=16: s = max|x| / 32639 per group, so that each code q splits into int8 halves q = 256 hi + lo (hi in
    -127..127, lo in -128..127: what the cpu target's VNNI kernels multiply); its rounding error is ~257x below
    int8's."""
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(3)) * 3
    q16 = ir.get_op("quantize_activation").impl(x, bits=16, group=32)
    q8 = ir.get_op("quantize_activation").impl(x, bits=8, group=32)
    s = x.reshape(4, 2, 32).abs().amax(-1, keepdim=True) / 32639
    codes = (q16.reshape(4, 2, 32) / s).round()
    assert codes.abs().max() == 32639 and torch.allclose(codes * s, q16.reshape(4, 2, 32), rtol=0, atol=1e-6)
    hi = torch.div(codes + 128, 256, rounding_mode="floor")
    lo = codes - 256 * hi
    assert hi.abs().max() <= 127 and lo.min() >= -128 and lo.max() <= 127
    assert (q16 - x).abs().max() < (q8 - x).abs().max() / 100


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("target", ["reference", "torch", "onnx"])
def test_w4a8_graph_runs_and_stays_close_to_weight_only(target, bits):
    """Every target that runs qlinear runs the W4A8 graph (torch: quantize_activation by its reference impl; onnx: float ops before MatMulNBits),
    equal to the interpreter; int8 activations move the output by well under the int4 weights' own error."""
    import slimgraph
    from slimgraph.targets.base import get_target
    g = _two_linears(seed=1)
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(2))
    exact = ir.run(g, x)[0]
    PassManager("quantize-weights{bits=4,group=64},fuse-dequant-matmul").run(g)
    w4 = ir.run(g, x)[0]
    PassManager(f"quantize-activations{{bits={bits}}}").run(g)
    w4a8 = ir.run(g, x)[0]
    got = get_target(target).compile(g)(x)[0]
    # torch's int4 CPU kernel computes in bf16: relative error ~1e-3 there, float rounding on the reference
    assert (got - w4a8).norm() / w4a8.norm() < (1e-2 if target == "torch" else 1e-6 if target == "reference" else 1e-5)
    x[1, 3], x[2, 100] = float("nan"), float("inf")   # the group's scale is NaN: its values and the rows are NaN
    qa = next(n.output for n in g.nodes if n.op == "quantize_activation")
    g.set_outputs(list(g.outputs) + [qa])
    for r, o in zip(ir.run(g, x), get_target(target).compile(g)(x)):
        assert torch.equal(r.isnan(), o.isnan())
    a8_err = (w4a8 - w4).norm() / w4.norm()
    w4_err = (w4 - exact).norm() / exact.norm()
    assert 0 < a8_err < (0.5 if bits == 8 else 0.01) * w4_err, (a8_err, w4_err)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("target", ["reference", "torch", "onnx", "cpu"])
def test_f16_activations_are_quantized_in_f32_like_the_reference_on_every_target(target, bits):
    """An f16 model's quantize_activation computes its scale and codes in f32 and rounds the result to f16 once
    (ir/opset/quant.py: x.float() ... .to(x.dtype)): int16 codes (|q| <= 32639) and 32639 itself are not f16
    numbers, and ONNX Runtime's IsInf takes no f16. Every target that runs the f16 qlinear runs it quantized."""
    if target == "cpu":
        pytest.importorskip("tvm")
    from slimgraph.targets.base import get_target
    g = ir.Graph()
    x = g.add_input("x", TensorType("f16", (3, 64)))
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0)).half()
    g.set_outputs([g.op("linear", x, g.add_weight("w", w))])
    PassManager(f"quantize-weights{{bits=4,group=32}},fuse-dequant-matmul,quantize-activations{{bits={bits}}}").run(g)
    qa = next(n.output for n in g.nodes if n.op == "quantize_activation")
    g.set_outputs(list(g.outputs) + [qa])
    xv = (torch.randn(3, 64, generator=torch.Generator().manual_seed(1)) * 3).half()
    xv[2, 40:] = torch.arange(24) * 0.5 - 6   # exact rounding ties in one group
    (want_y, want_q), (got_y, got_q) = ir.run(g, xv), get_target(target).compile(g)(xv)
    assert got_q.dtype == torch.float16 and torch.equal(got_q, want_q)
    assert got_y.dtype == torch.float16
    # f16 products (torch's int4 CPU kernel: bf16) move each output by its own rounding, not the whole
    assert (got_y.float() - want_y.float()).norm() / want_y.float().norm() < 1e-2


def test_a_graph_without_quantized_linears_warns_instead_of_silently_doing_nothing():
    """`quantize-activations{bits=16}` on a float model (no quantize-weights, or a quantize-weights that matched
    nothing) passed its "dequant-fused" requirement (nothing left to fuse) and changed nothing, silently."""
    import warnings
    g = _two_linears()
    with pytest.warns(UserWarning, match=r"quantize-activations\{bits=16\} found no qlinear .*3 float linear.*"
                                         r"quantize-weights.*fuse-dequant-matmul"):
        result = PassManager("quantize-activations{bits=16}").run(g)
    assert not result.changed and "quantize_activation" not in g.op_counts()
    PassManager("quantize-weights{bits=4,group=64},fuse-dequant-matmul,quantize-activations").run(g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # already quantized: a no-op, but not a mistake
        assert not PassManager("quantize-activations").run(g).changed
