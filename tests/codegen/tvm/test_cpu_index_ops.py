"""The `cpu` target's indexing, scatter, scan, arg-reduction and activation lowerings
(codegen/tvm/relax_lower_index.py) against the reference interpreter on the edge cases where a compiler's
version and torch's differ: NaN in argmax/argmin, ties, duplicate scatter indices under every reduction,
include_self=False, negative indices, the variance's correction, expm1/log1p near 0 and at +-inf, softplus
past its threshold, round half to even, fmod's sign, shifts past the bit width; symbolic dims where they can
be. f32 within 1e-5 relative (1e-6 absolute) unless said; integer and bool outputs exactly. Plain torch
models that use them compile for `cpu` and equal eager."""
import math

import pytest
import torch

from slimgraph import ir
from slimgraph.ir import TensorType
from slimgraph.targets.base import get_target

tvm = pytest.importorskip("tvm", reason="the cpu target needs apache-tvm: pip install 'slimgraph[tvm]'")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SLIMGRAPH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tvm-cache"))


def check(g, *inputs_list, tol=1e-5):
    run = get_target("cpu").compile(g)
    for inputs in inputs_list:
        ref, got = ir.run(g, *inputs), run(*inputs)
        for j, (r, o) in enumerate(zip(ref, got)):
            what = f"output {j} ({g.outputs[j].producer!r})"
            assert r.dtype == o.dtype and r.shape == o.shape, (what, r.dtype, o.dtype, r.shape, o.shape)
            torch.testing.assert_close(o, r, rtol=tol, atol=tol / 10, equal_nan=True, msg=lambda m: f"{what}: {m}")


def test_every_op_of_the_module_is_tested_here():
    from slimgraph.codegen.lowering import lowerings
    ops = {op for op, low in lowerings("cpu").items() if low.fn.__module__.endswith(".relax_lower_index")}
    assert ops == TESTED


TESTED = set()


def _covers(*ops):
    TESTED.update(ops)
    return lambda f: f


@_covers("argmax", "argmin")
def test_arg_reductions_take_the_first_nan_then_the_first_tie():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (3, "n")))
    g.set_outputs([g.op("argmax", x, dim=1), g.op("argmin", x, dim=-1, keepdim=True), g.op("argmax", x, dim=0)])
    nan = math.nan
    a = torch.tensor([[1.0, 3.0, 3.0, 2.0, 0.0], [nan, 1.0, nan, 5.0, -1.0], [2.0, -4.0, 7.0, -4.0, nan]])
    check(g, (a,), (a[:, :3].contiguous(),), (torch.randn(3, 9),))


@_covers("scatter")
@pytest.mark.parametrize("reduce", ["sum", "prod", "amax", "amin", "mean"])
@pytest.mark.parametrize("include_self", [True, False])
def test_scatter_reductions_with_duplicate_indices(reduce, include_self):
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (4, 3)))
    idx = g.add_input("idx", TensorType("i64", (5, 3)))
    src = g.add_input("src", TensorType("f32", (5, 3)))
    g.set_outputs([g.op("scatter", x, idx, src, dim=0, reduce=reduce, include_self=include_self)])
    index = torch.tensor([[0, 1, 3], [0, 1, 3], [2, 1, 0], [0, 2, 0], [2, 1, 3]])     # duplicates; row 3 / col 1 unwritten
    gen = torch.Generator().manual_seed(0)
    check(g, (torch.randn(4, 3, generator=gen), index, torch.randn(5, 3, generator=gen)))


@_covers("scatter")
def test_scatter_without_reduction_and_an_int32_index():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (2, "n")))
    idx = g.add_input("idx", TensorType("i32", (2, 2)))
    src = g.add_input("src", TensorType("f32", (2, 2)))
    g.set_outputs([g.op("scatter", x, idx, src, dim=-1)])
    check(g, (torch.zeros(2, 5), torch.tensor([[4, 0], [1, 2]], dtype=torch.int32), torch.tensor([[1., 2.], [3., 4.]])))


@_covers("scatter_nd")
@pytest.mark.parametrize("reduce", ["none", "add"])
def test_scatter_nd_with_negative_indices(reduce):
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (4, 3, 2)))
    idx = g.add_input("idx", TensorType("i64", (3, 2)))
    upd = g.add_input("upd", TensorType("f32", (3, 2)))
    g.set_outputs([g.op("scatter_nd", x, idx, upd, reduce=reduce)])
    index = torch.tensor([[-1, 0], [1, -2], [2, 2]]) if reduce == "none" else torch.tensor([[-1, 0], [3, 0], [0, -3]])
    check(g, (torch.randn(4, 3, 2), index, torch.randn(3, 2)))


@_covers("index_put")
@pytest.mark.parametrize("accumulate", [False, True])
def test_index_put_on_two_apart_axes_with_negative_indices_and_broadcast_values(accumulate):
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (3, 4, 5)))
    i0 = g.add_input("i0", TensorType("i64", (2, 1)))
    i2 = g.add_input("i2", TensorType("i64", (3,)))
    v = g.add_input("v", TensorType("f32", (1, 4)))           # broadcast to [2, 3, 4] (index dims, then axis 1)
    g.set_outputs([g.op("index_put", x, v, i0, i2, axes=[0, 2], accumulate=accumulate)])
    i2v = torch.tensor([0, -1, 2]) if not accumulate else torch.tensor([0, -1, 0])   # duplicates add up
    check(g, (torch.randn(3, 4, 5), torch.tensor([[-1], [0]]), i2v, torch.randn(1, 4)))


@_covers("index_put")
def test_index_put_with_a_boolean_mask_is_refused_naming_it():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (3, 4)))
    m = g.add_input("m", TensorType("bool", (3,)))
    g.set_outputs([g.op("index_put", x, g.op("constant", value=0.0, dtype="f32"), m, axes=[0])])
    with pytest.raises(Exception, match="index_put with a boolean mask"):
        get_target("cpu").compile(g)


@_covers("gather", "gather_nd")
def test_gathers_with_batch_dims_and_negative_indices():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (2, "n", 4)))
    idx = g.add_input("idx", TensorType("i64", (2, 3, 1)))
    nd = g.add_input("nd", TensorType("i64", (2, 3, 2)))
    g.set_outputs([g.op("gather", x, idx, dim=1), g.op("gather_nd", x, nd, batch_dims=1),
                   g.op("gather_nd", x, g.op("slice", nd, dim=0, start=0, end=1, step=1))])
    nd_v = torch.tensor([[[0, 2], [1, -1], [-2, 0]], [[2, 2], [0, 0], [1, 3]]])
    check(g, (torch.randn(2, 3, 4), torch.tensor([[[2], [0], [1]], [[1], [1], [0]]]), nd_v),
          (torch.randn(2, 5, 4), torch.tensor([[[4], [0], [1]], [[3], [1], [0]]]), nd_v))


@_covers("var")
@pytest.mark.parametrize("correction", [0, 1, 2])
def test_var_with_each_correction_over_symbolic_dims(correction):
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (2, "n", 3)))
    g.set_outputs([g.op("var", x, dims=[1], keepdim=False, correction=correction),
                   g.op("var", x, dims=[0, -1], keepdim=True, correction=correction),
                   g.op("var", x, dims=None, keepdim=False, correction=correction)])
    check(g, (torch.randn(2, 4, 3) * 3 + 1,), (torch.randn(2, 2, 3),), (torch.randn(2, 1, 3),))   # n=1: N <= correction


@_covers("cumsum", "cumprod", "flip", "tile")
def test_scans_flips_and_tiles_in_their_dtypes():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (2, "n", 3)))
    b = g.add_input("b", TensorType("bool", (2, "n")))
    k = g.add_input("k", TensorType("i32", (2, "n")))
    g.set_outputs([g.op("cumsum", x, dim=-2), g.op("cumsum", b, dim=1), g.op("cumsum", k, dim=0, dtype="f32"),
                   g.op("cumprod", x, dim=2), g.op("cumprod", k, dim=1),
                   g.op("flip", x, dims=[0, -1]), g.op("flip", b, dims=[1]),
                   g.op("tile", x, repeats=[2, 1, 3]), g.op("tile", k, repeats=[3, 1, 2])])
    check(g, (torch.randn(2, 5, 3), torch.rand(2, 5) > 0.5, torch.randint(-3, 4, (2, 5), dtype=torch.int32)),
          (torch.randn(2, 1, 3), torch.tensor([[True], [False]]), torch.tensor([[7], [-2]], dtype=torch.int32)))


@_covers("acos", "acosh", "asin", "asinh", "atanh", "cosh", "sinh")
def test_inverse_and_hyperbolic_functions_with_their_domains():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("n",)))
    g.set_outputs([g.op(op, x) for op in ("acos", "acosh", "asin", "asinh", "atanh", "cosh", "sinh")])
    check(g, (torch.tensor([-1.0, -0.5, 0.0, 0.3, 1.0, 1.5, 4.0, math.nan, math.inf]),))


@_covers("expm1", "log1p", "softplus", "mish", "elu", "selu", "hardsigmoid", "hardswish", "leaky_relu")
def test_activations_near_zero_at_their_thresholds_and_at_infinity():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("n",)))
    g.set_outputs([g.op(op, x) for op in ("expm1", "log1p", "softplus", "mish", "elu", "selu", "hardsigmoid",
                                          "hardswish")] + [g.op("leaky_relu", x, slope=0.2)])
    v = torch.tensor([0.0, 1e-8, -1e-8, 3e-5, -3e-5, 0.5, -0.5, 19.9, 20.0, 20.5, 88.0, 100.0, -30.0, -1.0, -3.0,
                      3.0, -5.0, 6.0, math.inf, -math.inf, math.nan])
    check(g, (v,))


@_covers("round", "fmod", "isinf", "bit_shift")
def test_round_half_even_fmod_signs_isinf_sides_and_shifts_past_the_width():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("n",)))
    y = g.add_input("y", TensorType("f32", ("n",)))
    a = g.add_input("a", TensorType("i32", ("n",)))
    s = g.add_input("s", TensorType("i32", ("n",)))
    g.set_outputs([g.op("round", x), g.op("fmod", x, y),
                   g.op("isinf", x), g.op("isinf", x, neg=False), g.op("isinf", x, pos=False),
                   g.op("isinf", x, pos=False, neg=False),
                   g.op("bit_shift", a, s, left=True), g.op("bit_shift", a, s, left=False),
                   g.op("fmod", a, g.op("add", g.op("abs", s), g.op("constant", value=1, dtype="i32")))])
    check(g, (torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 5.5, -5.5, math.inf, -math.inf]),
              torch.tensor([1.0, 1.0, 2.0, 2.0, -2.0, 2.0, -2.0, 3.0, 3.0]),
              torch.tensor([1, -8, 7, -1, 3, 1 << 30, -5, 2, 9], dtype=torch.int32),
              torch.tensor([0, 1, 31, 32, -1, 2, 40, 3, 1], dtype=torch.int32)))


@_covers("shape_tensor", "dim_value")
def test_symbolic_dims_as_tensors():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (2, "n")))
    g.set_outputs([g.op("shape_tensor", dims=[2, "n", "2*n+1"]), g.op("dim_value", expr="n+3"), g.op("neg", x)])
    check(g, (torch.randn(2, 3),), (torch.randn(2, 7),))


# ---- models that use them --------------------------------------------------------------------------
class _Mobile(torch.nn.Module):
    """MobileNetV3-style block (hard-swish, hard-sigmoid squeeze-excite), an InstanceNorm (var), a flip."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.se = torch.nn.Linear(8, 8)
        self.norm = torch.nn.InstanceNorm2d(8)

    def forward(self, x):
        h = torch.nn.functional.hardswish(self.conv(x))
        s = torch.nn.functional.hardsigmoid(self.se(h.mean((2, 3))))[:, :, None, None]
        h = self.norm(h * s)
        return torch.flip(h, [3]).mean((2, 3)), torch.nn.functional.mish(h).amax((2, 3))


class _Routing(torch.nn.Module):
    """Top-2 routing as MoE layers write it: topk, softmax, a scatter of the weights into a dense gate, a
    cumsum of positions, an argmax."""

    def __init__(self):
        super().__init__()
        self.router = torch.nn.Linear(16, 6)

    def forward(self, x):
        logits = self.router(x)
        w, i = torch.topk(logits, 2, dim=-1)
        gate = torch.zeros_like(logits).scatter(-1, i, torch.softmax(w, -1))
        pos = torch.cumsum(torch.ones_like(i[..., 0]), dim=-1)
        return gate, pos, logits.argmax(-1), torch.gather(logits, -1, i)


class _Shifted(torch.nn.Module):
    """Swin's cyclic shift (torch.roll: index arithmetic with an integer fmod) and adaptive max pooling to sizes
    that do not divide the input's."""

    def forward(self, x):
        return torch.roll(x, shifts=(-2, 3), dims=(2, 3)), torch.nn.functional.adaptive_max_pool2d(x, (2, 3))


@pytest.mark.parametrize("model, make", [(_Mobile, lambda: (torch.randn(2, 3, 9, 7),)),
                                         (_Shifted, lambda: (torch.randn(1, 2, 7, 8),)),
                                         (_Routing, lambda: (torch.randn(2, 5, 16),))])
def test_plain_torch_models_that_need_these_ops_compile_for_cpu_and_equal_eager(model, make):
    import slimgraph
    torch.manual_seed(0)
    m = model().eval()
    x = make()
    c = slimgraph.optimize(m, x, target="cpu")
    with torch.no_grad():
        want = m(*x)
    got = c(*x)
    for w, o in zip(want, got):
        assert w.dtype == o.dtype and w.shape == o.shape
        torch.testing.assert_close(o, w, rtol=1e-4, atol=1e-5)


def test_index_and_index_select_count_negative_indices_from_the_end():
    """Relax's take clips a negative index to 0 and index_tensor reads out of bounds: both silently wrong before."""
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("b", 3, "n", 5)))
    i = g.add_input("i", TensorType("i64", (2, 1)))
    j = g.add_input("j", TensorType("i32", (3,)))
    g.set_outputs([g.op("index", x, i, j, axes=[1, 3]), g.op("index", x, i, j, axes=[2, 3]),
                   g.op("index", x, j, axes=[2]), g.op("index_select", x, j, dim=-1),
                   g.op("index_select", x, i, dim=2)])
    i_v, j_v = torch.tensor([[-1], [1]]), torch.tensor([0, -2, 3], dtype=torch.int32)
    check(g, (torch.randn(1, 3, 4, 5), i_v, j_v), (torch.randn(2, 3, 6, 5), i_v, j_v))


def test_index_with_a_boolean_mask_is_refused_naming_it():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (3, 4)))
    m = g.add_input("m", TensorType("bool", (3,)))
    g.set_outputs([g.op("index", x, m, axes=[0])])
    with pytest.raises(Exception, match="index with a boolean mask"):
        get_target("cpu").compile(g)
