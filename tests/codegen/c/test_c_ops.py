"""The `c` target, op by op, against the reference interpreter: small graphs with many outputs each
(one gcc build per graph), fp32 to 1e-4 and quantized linear to the reference qlinear semantics."""
import pytest
import torch

from slimgraph.codegen.c import CTargetError
from slimgraph.ir import quant_format as Q
from slimgraph.ir.graph import Graph
from slimgraph.ir.interpreter import run
from slimgraph.ir.types import TensorType
from slimgraph.targets.base import get_target


def check(g, *inputs, atol=1e-4, rtol=1e-4):
    runner = get_target("c").compile(g)
    ref, got = run(g, *inputs), runner(*inputs)
    assert len(ref) == len(got)
    for v, a, b in zip(g.outputs, ref, got):
        assert a.dtype == b.dtype and a.shape == b.shape, v.name
        torch.testing.assert_close(b, a, atol=atol, rtol=rtol, equal_nan=True, msg=lambda m: f"%{v.name}: {m}")
    return runner


def test_unary_ops():
    torch.manual_seed(0)
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3, 7)))        # any real
    p = g.add_input("p", TensorType("f32", (3, 7)))        # in (0.05, 0.95): log, sqrt, asin, atanh, ...
    outs = []
    for op in ["neg", "abs", "relu", "sign", "floor", "ceil", "round", "exp", "sin", "cos", "tanh", "sigmoid",
               "silu", "erf", "softplus", "hardswish", "hardsigmoid", "expm1", "atan", "mish", "elu", "selu",
               "sinh", "cosh", "asinh", "isnan"]:
        outs.append(g.op(op, x))
    for op in ["log", "sqrt", "rsqrt", "reciprocal", "log1p", "tan", "asin", "acos", "atanh"]:
        outs.append(g.op(op, p))
    outs.append(g.op("acosh", g.op("add", p, g.op("constant", value=1.5, dtype="f32"))))
    outs += [g.op("gelu", x), g.op("gelu", x, approximate="tanh"), g.op("leaky_relu", x, slope=0.2),
             g.op("clamp", x, min=-0.5, max=0.75), g.op("clamp", x, min=0.1), g.op("logical_not", x),
             g.op("isinf", g.op("div", x, p)), g.op("cast", x, dtype="i64"), g.op("cast", x, dtype="bool")]
    g.set_outputs(outs)
    xs = torch.randn(3, 7) * 3
    xs[0, 0], xs[0, 1], xs[1, 2] = 0.0, 2.5, -1.5      # round half to even; exact zeros
    check(g, xs, torch.rand(3, 7) * 0.9 + 0.05)


def test_binary_ops_broadcast_and_promote():
    g = Graph()
    a = g.add_input("a", TensorType("f32", (2, 3, 4)))
    b = g.add_input("b", TensorType("f32", (3, 1)))
    c = g.add_input("c", TensorType("f32", (4,)))
    i = g.add_input("i", TensorType("i64", (2, 3, 4)))
    j = g.add_input("j", TensorType("i64", (4,)))
    m = g.add_input("m", TensorType("bool", (3, 4)))
    two = g.op("constant", value=2.0, dtype="f32")
    outs = [g.op(op, a, b) for op in ["add", "sub", "mul", "div", "maximum", "minimum", "remainder",
                                       "floor_divide", "fmod", "eq", "ne", "lt", "le", "gt", "ge"]]
    outs += [g.op("add", a, c), g.op("mul", b, c), g.op("pow", a, two), g.op("pow", g.op("abs", a), c),
             g.op("where", m, a, b), g.op("add", a, i), g.op("div", i, j)]
    outs += [g.op(op, i, j) for op in ["add", "sub", "mul", "remainder", "floor_divide", "fmod", "bitwise_and",
                                        "bitwise_or", "bitwise_xor", "maximum", "lt"]]
    outs += [g.op(op, m, g.op("gt", a, b)) for op in ["logical_and", "logical_or", "logical_xor", "bitwise_and"]]
    g.set_outputs(outs)
    torch.manual_seed(1)
    nz = lambda t: torch.where(t == 0, torch.ones_like(t), t)  # noqa: E731
    check(g, torch.randn(2, 3, 4) * 3, nz(torch.randn(3, 1)), torch.randn(4), torch.randint(-9, 9, (2, 3, 4)),
          nz(torch.randint(-4, 4, (4,))), torch.rand(3, 4) > 0.5)


def test_nn_ops():
    torch.manual_seed(2)
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 5, 16)))
    w, bias = g.add_weight("w", torch.randn(24, 16)), g.add_weight("bias", torch.randn(24))
    lw, lb = g.add_weight("lw", torch.randn(16)), g.add_weight("lb", torch.randn(16))
    bm = g.add_input("bm", TensorType("f32", (3, 16, 4)))
    outs = [g.op("linear", x, w, bias), g.op("linear", x, w), g.op("matmul", x, g.op("permute", w, dims=[1, 0])),
            g.op("matmul", g.op("unsqueeze", x, dim=1), bm), g.op("layer_norm", x, lw, lb, eps=1e-5),
            g.op("layer_norm", x, axes=2), g.op("rms_norm", x, lw, eps=1e-6), g.op("rms_norm", x),
            g.op("softmax", x, dim=-1), g.op("softmax", x, dim=1), g.op("log_softmax", x, dim=-1)]
    outs += [g.op(op, x, dims=dims, keepdim=kd) for op in ["sum", "mean", "amax", "amin", "prod"]
             for dims, kd in [([-1], False), ([0, 2], True)]]
    outs.append(g.op("mean", x))
    g.set_outputs(outs)
    check(g, torch.randn(2, 5, 16), torch.randn(3, 16, 4) * 0.5)


def test_rope_embedding_and_attention_variants():
    torch.manual_seed(3)
    g = Graph()
    q = g.add_input("q", TensorType("f32", (2, 4, 6, 8)))
    k = g.add_input("k", TensorType("f32", (2, 2, 9, 8)))     # GQA, 3 past keys
    v = g.add_input("v", TensorType("f32", (2, 2, 9, 8)))
    bmask = g.add_input("bmask", TensorType("bool", (2, 1, 6, 9)))
    fmask = g.add_input("fmask", TensorType("f32", (6, 9)))
    ids = g.add_input("ids", TensorType("i64", (2, 6)))
    cos = g.add_input("cos", TensorType("f32", (2, 1, 6, 8)))
    sin = g.add_input("sin", TensorType("f32", (2, 1, 6, 8)))
    table = g.add_weight("table", torch.randn(11, 8))
    outs = [g.op("attention", q, k, v), g.op("attention", q, k, v, causal=True),
            g.op("attention", q, k, v, bmask, scale=0.3), g.op("attention", q, k, v, fmask, causal=True),
            g.op("attention", q, k, v, causal=True, window=2, sinks=1), g.op("rope", q, cos, sin),
            g.op("embedding", table, ids)]
    g.set_outputs(outs)
    bm = torch.rand(2, 1, 6, 9) > 0.3
    bm[0, 0, 2] = False                                        # a query that sees nothing: zeros, as SDPA
    check(g, torch.randn(2, 4, 6, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8), bm, torch.randn(6, 9),
          torch.randint(0, 11, (2, 6)), torch.randn(2, 1, 6, 8), torch.randn(2, 1, 6, 8))


def test_shape_and_copy_ops():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 6, 4)))
    past = g.add_input("past", TensorType("f32", (2, 3, 4)))
    idx = g.add_input("idx", TensorType("i64", (3,)))
    cidx = g.add_weight("cidx", torch.tensor([[0, 2], [1, 1]]))
    gidx = g.add_weight("gidx", torch.randint(0, 6, (2, 6, 4), generator=torch.Generator().manual_seed(0)))
    parts = g.op("split", x, dim=1, sizes=[2, 4])
    outs = [g.op("permute", x, dims=[2, 0, 1]), g.op("slice", x, dim=1, start=1, end=6, step=2),
            g.op("slice", x, dim=2, start=-3), g.op("select", x, dim=1, index=-1),
            g.op("expand", g.op("unsqueeze", x, dim=0), shape=[3, 2, 6, 4]), g.op("concat", x, past, x, dim=1),
            g.op("cache_append", past, x, axis=1), *parts, g.op("flip", x, dims=[1, 2]),
            g.op("tile", x, repeats=[1, 2, 1]), g.op("index_select", x, idx, dim=1),
            g.op("index_select", x, cidx, dim=2), g.op("index", x, cidx, axes=[1]), g.op("gather", x, gidx, dim=1),
            g.op("cache_window", g.op("cache_append", past, x, axis=1), axis=1, window=4, sinks=2),
            g.op("squeeze", g.op("reshape", x, shape=[2, 1, 24]), dims=[1])]
    g.set_outputs(outs + [x])                                   # an input returned as is: copied
    check(g, torch.randn(2, 6, 4), torch.randn(2, 3, 4), torch.tensor([5, 0, 3]))


def test_cnn_ops():
    """What embedded vision models need: conv (strides, padding, dilation, groups), pools, batch norm."""
    torch.manual_seed(5)
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 4, 11, 9)))
    w1, b1 = g.add_weight("w1", torch.randn(6, 4, 3, 3)), g.add_weight("b1", torch.randn(6))
    w2 = g.add_weight("w2", torch.randn(8, 2, 3, 2))          # groups=2, dilation in both dims
    stats = [g.add_weight(n, t) for n, t in (("mean", torch.randn(6)), ("var", torch.rand(6) + 0.5),
                                              ("gamma", torch.randn(6)), ("beta", torch.randn(6)))]
    y = g.op("conv2d", x, w1, b1, padding=[1, 1])
    outs = [y, g.op("conv2d", x, w2, stride=[2, 1], padding=[2, 0], dilation=[2, 3], groups=2),
            g.op("batch_norm", y, *stats, eps=1e-5), g.op("max_pool2d", y, kernel=[3, 2], stride=[2, 2], padding=[1, 1]),
            g.op("avg_pool2d", y, kernel=[3, 3], stride=[2, 2], padding=[1, 1]),
            g.op("avg_pool2d", y, kernel=[2, 2], padding=[1, 1], count_include_pad=False),
            g.op("adaptive_avg_pool2d", y, output_size=[3, 4]), g.op("adaptive_avg_pool2d", y, output_size=[1, 1])]
    g.set_outputs(outs)
    check(g, torch.randn(2, 4, 11, 9))


def test_misc_ops_and_generators():
    torch.manual_seed(6)
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3, 5, 6)))
    i = g.add_input("i", TensorType("i64", (3, 5)))
    ids = g.add_input("ids", TensorType("i64", (2, 3)))
    qw, sc, zs = Q.store(*Q.quantize_rtn(torch.randn(7, 32), 4, 16, False), 4, False)
    packed = [g.add_weight("qw", qw), g.add_weight("sc", sc), g.add_weight("zs", zs)]
    ar = g.op("arange", end=6, dtype="f32")
    outs = [g.op("argmax", x, dim=-1), g.op("argmin", x, dim=1, keepdim=True), g.op("tril", x, diagonal=1),
            g.op("triu", x, diagonal=-1), g.op("cumsum", x, dim=1), g.op("cumsum", i, dim=1),
            g.op("pad", x, pads=[1, 2, 0, 1], value=0.5), g.op("pad", x, pads=[2, 1], mode="reflect"),
            g.op("pad", x, pads=[1, 1, 1, 1], mode="edge"), g.op("add", x, ar),
            g.op("mul", x, g.op("full", shape=[5, 6], value=3.0, dtype="f32")),
            g.op("gather_nd", x, g.add_weight("nd", torch.tensor([[0, 1], [2, 4]]))),
            g.op("qembedding", ids, *packed, bits=4, group=16)]
    g.set_outputs(outs)
    xs = torch.randn(3, 5, 6)
    xs[0, 0, 3] = xs[0, 0, 1]          # a tie: the first index wins
    check(g, xs, torch.randint(-5, 5, (3, 5)), torch.randint(0, 7, (2, 3)))


@pytest.mark.parametrize("bits,group,sym,bias", [(8, 0, True, False), (8, 32, False, True), (4, 32, True, True),
                                                 (4, 16, False, False), (4, 0, True, False)])
def test_qlinear_and_dequantize_match_the_reference_semantics(bits, group, sym, bias):
    torch.manual_seed(4)
    w = torch.randn(40, 64)
    qw, scales, zeros = Q.store(*Q.quantize_rtn(w, bits, group, sym), bits, sym)
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3, 5, 64)))
    packed = [g.add_weight("qw", qw), g.add_weight("scales", scales.half() if group == 16 else scales)]
    if zeros is not None:
        packed.append(g.add_weight("zeros", zeros))
    if bias:
        packed.append(g.add_weight("b", torch.randn(40)))
    deq = g.op("dequantize", *packed[:3 if zeros is not None else 2], bits=bits, group=group)
    g.set_outputs([g.op("qlinear", x, *packed, bits=bits, group=group), deq, g.op("linear", x, deq)])
    check(g, torch.randn(3, 5, 64))


def test_index_out_of_range_is_an_error_not_garbage():
    g = Graph()
    ids = g.add_input("ids", TensorType("i64", (4,)))
    g.set_outputs([g.op("embedding", g.add_weight("t", torch.randn(5, 3)), ids)])
    runner = get_target("c").compile(g)
    assert runner(torch.tensor([0, 4, 1, 2])).__len__() == 1
    with pytest.raises(ValueError, match="out of range"):
        runner(torch.tensor([0, 5, 1, 2]))


def test_unbound_symbolic_dims_say_how_to_bind_them():
    g = Graph()
    x = g.add_input("x", TensorType("f32", ("batch", "seq", 8)))
    g.set_outputs([g.op("relu", x)])
    with pytest.raises(CTargetError, match=r"static shapes.*batch, seq.*bind-shapes\{dims=\[batch=1,seq=128\]\}"):
        get_target("c").build(g)
    from slimgraph.codegen.c import build
    products = build(g, shapes={"batch": 2, "seq": 3})
    assert b"f32[2,3,8]" in products.read_bytes("README.txt")
    with pytest.raises(CTargetError, match="seq are not bound"):
        build(g, shapes={"batch": 2})


def test_bind_shapes_pass_in_a_pipeline():
    import slimgraph
    g = Graph()
    x = g.add_input("x", TensorType("f32", ("batch", 8)))
    n = g.op("dim_value", expr="batch")
    g.set_outputs([g.op("mul", x, g.op("cast", n, dtype="f32"))])
    fast = slimgraph.optimize(g, target="c", pipeline="bind-shapes{dims=[batch=3]},canonicalize,cse,dce")
    assert str(fast.graph.inputs[0].type) == "f32[3,8]"
    xs = torch.randn(3, 8)
    torch.testing.assert_close(fast.run(xs)[0], xs * 3)
    from slimgraph.passes.base import PassError
    with pytest.raises(PassError, match="name=int"):
        slimgraph.optimize(g, target="c", pipeline="bind-shapes{dims=[batch]}")
    with pytest.raises(PassError, match="cannot bind sequence"):
        slimgraph.optimize(g, target="c", pipeline="bind-shapes{dims=[batch=1,sequence=4]}")


def test_unsupported_ops_are_named_together():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4, 8)))
    y = g.op("einsum", x, x, equation="ij,kj->ik")
    y = g.op("var", g.op("relu", y), dims=[1])
    v, _ = g.op("topk", x, k=2)
    g.set_outputs([y, v, g.op("var", x, dims=[0])])
    with pytest.raises(CTargetError, match=r"ops without a c lowering: einsum \(x1\), topk \(x1\), var \(x2\)"):
        get_target("c").build(g)
    assert get_target("c").support("relu") == "native" and get_target("c").support("topk") is None


def test_f16_compute_is_declined_with_the_reason():
    g = Graph()
    x = g.add_input("x", TensorType("f16", (4,)))
    g.set_outputs([g.op("relu", x)])
    with pytest.raises(CTargetError, match="cast the model to float32"):
        get_target("c").build(g)


def test_missing_compiler_is_a_clear_error(monkeypatch):
    import shutil
    from slimgraph.codegen.c import target as ct
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4,)))
    g.set_outputs([g.op("exp", x)])
    products = ct.build(g)                      # building the sources needs no compiler
    real = shutil.which
    monkeypatch.setattr(ct.shutil, "which", lambda name, *a, **k: None if name == "gcc" else real(name, *a, **k))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(CTargetError, match="'gcc' was not found on PATH.*apt-get install gcc"):
        ct.load(g, products)
    assert ct.host()["cc"] is None


def test_a_failing_compiler_is_reported_with_its_output(monkeypatch):
    from slimgraph.codegen.c import target as ct
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4,)))
    g.set_outputs([g.op("exp", x)])
    monkeypatch.setenv("CFLAGS", "-O2 -DSLIMGRAPH_TEST_BROKEN=1 -include /nonexistent/broken.h")
    with pytest.raises(CTargetError, match=r"(?s)make libslimgraph_model.so` failed.*broken.h"):
        ct.load(g, ct.build(g))


def test_an_unwritable_cache_root_still_builds_uncached_with_a_note(monkeypatch, tmp_path):
    """A cache root that cannot hold folders (here a plain file: ENOTDIR, as a read-only home gives EROFS or
    EACCES) costs only the caching: the library is built in a private temp folder and the runner says so."""
    from slimgraph.codegen.c import target as ct
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4,)))
    g.set_outputs([g.op("exp", x)])
    (tmp_path / "root").write_text("not a folder")
    monkeypatch.setenv("SLIMGRAPH_CACHE_DIR", str(tmp_path / "root"))
    runner = ct.load(g, ct.build(g))
    x = torch.randn(4)
    torch.testing.assert_close(runner(x)[0], torch.exp(x))
    assert any("not writable" in n and "without caching" in n for n in runner.notes), runner.notes
    assert not str(runner.library).startswith(str(tmp_path / "root"))
