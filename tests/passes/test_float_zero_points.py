"""quantize-weights{zero_point=float}: asymmetric int4 with a float zero point per group, i.e. a grid
placed anywhere (W = d * q + m, GGUF Q4_1's form) instead of one whose range must include 0.

Checked: the quantizer recovers weights already on such a grid exactly (integer zero points cannot);
RTN and GPTQ lose less on weights whose groups sit away from 0; qlinear with float zeros runs the same
on every target that takes it as in the interpreter, and the targets and formats that cannot hold
float zero points say so."""
import pytest
import torch

from slimgraph import ir
from slimgraph.ir import TensorType, quant_format as Q
from slimgraph.passes.base import PassError, get_pass
from slimgraph.passes.calibration import Calibration
from slimgraph.targets.base import get_target


def q41_grid_weight(out=16, k=64, seed=0):
    """Weights exactly on a Q4_1 grid per 32: codes 0..15 (both ends used), d > 0, any m (mostly away from 0)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (out, k // 32, 32), generator=g)
    codes[..., 0], codes[..., 1] = 0, 15
    d = torch.rand(out, k // 32, 1, generator=g) * 0.02 + 0.005
    m = torch.randn(out, k // 32, 1, generator=g) * 0.2
    return (codes * d + m).view(out, k)


def linear_graph(w, bias=None):
    g = ir.Graph("lin")
    x = g.add_input("x", TensorType("f32", ("n", w.shape[1])))
    g.set_outputs([g.op("linear", x, g.add_weight("fc.weight", w), *([g.add_weight("fc.bias", bias)] if bias is not None else []))])
    return g


def dequantized(g):
    dq = next(n for n in g.nodes if n.op == "dequantize")
    return ir.get_op("dequantize").run(*[i.tensor for i in dq.inputs], **dq.attrs)


def test_float_zero_points_recover_a_q4_1_grid_exactly_where_integer_ones_cannot():
    w = q41_grid_weight()
    exact = linear_graph(w)
    get_pass("quantize-weights")(bits=4, group=32, zero_point="float").run(exact)
    ir.verify(exact)
    assert "zeros: f32[16,2]" in str(exact)            # stored as f32 beside f32 scales
    assert float((dequantized(exact) - w).abs().max()) < 1e-6
    integer = linear_graph(w)
    get_pass("quantize-weights")(bits=4, group=32).run(integer)
    assert "zeros: u8[16,2]" in str(integer)
    assert float((dequantized(integer) - w).abs().max()) > 1e-3


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_float_zero_points_lose_less_on_groups_away_from_zero(method):
    torch.manual_seed(0)
    w = torch.randn(32, 128) * 0.05 + torch.randn(32, 4).repeat_interleave(32, 1) * 0.3   # offset groups
    X = torch.randn(64, 128)
    calib = Calibration.of(linear_graph(w), X) if method == "gptq" else None
    errs = {}
    for zp in ("int", "float"):
        g = linear_graph(w.clone())
        ref = ir.run(g, X)[0]
        get_pass("quantize-weights")(bits=4, group=32, method=method, zero_point=zp, calibration=calib).run(g)
        get_pass("fuse-dequant-matmul")().run(g)
        ir.verify(g)
        errs[zp] = float((ir.run(g, X)[0] - ref).norm() / ref.norm())
    assert errs["float"] < 0.8 * errs["int"], errs


def test_zero_point_option_errors():
    with pytest.raises(PassError, match="zero_point=float is for asymmetric"):
        get_pass("quantize-weights")(bits=4, sym=True, zero_point="float").validate()
    with pytest.raises(PassError, match="zero_point"):
        from slimgraph.passes.pipeline import parse_pipeline
        parse_pipeline("quantize-weights{zero_point=half}")


def float_zero_qlinear(bias: bool, scale_dtype=torch.float32, rows="n"):
    torch.manual_seed(1)
    w = torch.randn(48, 64) * 0.05 + 0.3
    q, s, z = Q.quantize_rtn(w, 4, 32, False, float_zero=True)
    qw, s, z = Q.store(q, s, z, 4, False, scale_dtype, float_zero=True)
    g = ir.Graph("q")
    x = g.add_input("x", TensorType("f32", (rows, 64)))
    ins = [x, g.add_weight("qw", qw), g.add_weight("sc", s), g.add_weight("zp", z)]
    if bias:
        ins.append(g.add_weight("b", torch.randn(48)))
    g.set_outputs([g.op("qlinear", *ins, bits=4, group=32)])
    ir.verify(g)
    return g


@pytest.mark.parametrize("target", ["torch", "onnx", "cpu", "cuda"])
@pytest.mark.parametrize("bias", [False, True])
def test_qlinear_with_float_zero_points_matches_the_interpreter_on_targets(target, bias):
    g = float_zero_qlinear(bias)
    X = torch.randn(5, 64)
    ref = ir.run(g, X)[0]
    got = get_target(target).compile(g)(X)[0]
    # torch's int4 kernel runs in bf16 (codegen/torch_qlinear.py): its bound is bf16 rounding
    tol = 2e-2 if target == "torch" else 1e-4
    assert float((got - ref).abs().max() / ref.abs().max()) < tol


def test_c_target_refuses_float_zero_points_by_name():
    with pytest.raises(Exception, match="float zero points %zp.*zero_point=int"):
        get_target("c").compile(float_zero_qlinear(False, rows=2))


def test_f16_scales_keep_the_float_minimum_of_offset_and_constant_groups():
    """A float zero point is scaled with its rounded scale (m = -z * s is kept), and an f16 scale never
    underflows to 0: a constant group (range 0) dequantizes to its value, not to 0 (fresh-user review)."""
    w = torch.full((4, 64), 0.5)
    w[1] += torch.randn(64) * 1e-4
    w[2:] = q41_grid_weight(2, 64, seed=3)
    for dtype in ("f32", "f16"):
        g = linear_graph(w.clone())
        get_pass("quantize-weights")(bits=4, group=32, zero_point="float", scale_dtype=dtype).run(g)
        err = (dequantized(g) - w).abs().max(-1).values
        assert float(err[0]) < 1e-3 and float(err[1]) < 1e-3, (dtype, err)   # f16: scales below 6e-5 clamp
        assert float(err[2:].max()) < (1e-6 if dtype == "f32" else 2e-3), (dtype, err)


def test_int8_with_float_zero_points_is_asymmetric_unless_told_otherwise():
    g = linear_graph(torch.randn(8, 64) * 0.05 + 0.3)
    get_pass("quantize-weights")(bits=8, group=32, zero_point="float").run(g)
    assert "zeros: f32[8,2]" in str(g)


def test_slimgraph_export_is_reachable_after_a_plain_import():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import slimgraph; print(slimgraph.export.to_gguf.__name__)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "to_gguf"
