"""The torch target's fx codegen against the reference interpreter."""
import pytest
import torch

from slimgraph import ir
from slimgraph.codegen import lowering
from slimgraph.codegen.lowering import Lowering
from slimgraph.codegen.torch_fx import CodegenError, build_graph_module, build_runner
from slimgraph.ir import TensorType
from slimgraph.targets.base import get_target

SEQS = (3, 5)


def std_graph():
    """A graph with one input of each kind every op case below may use; `seq` is symbolic."""
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (2, "seq", 4)))
    i = g.add_input("i", TensorType("i64", (2, "seq")))
    b = g.add_input("b", TensorType("bool", (2, "seq", 4)))
    n = g.add_input("n", TensorType("i32", (2, "seq", 4)))
    return g, x, i, b, n


def std_inputs(seq, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, seq, 4, generator=gen), torch.randint(0, 4, (2, seq), generator=gen),
            torch.rand(2, seq, 4, generator=gen) > 0.5, torch.randint(-5, 6, (2, seq, 4), generator=gen,
                                                                      dtype=torch.int32))


def assert_matches_interpreter(g, make_inputs=std_inputs, seqs=SEQS):
    run = build_runner(g)
    for seq in seqs:
        inputs = make_inputs(seq)
        ref, got = ir.run(g, *inputs), run(*inputs)
        assert len(ref) == len(got)
        for r, o in zip(ref, got):
            assert r.dtype == o.dtype and r.shape == o.shape
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5, equal_nan=True)


# ---- every registered op, with symbolic seq --------------------------------------------------------
def _w(g, name, *shape):
    return g.add_weight(name, torch.randn(*shape, generator=torch.Generator().manual_seed(len(name))))


def _nchw(g, x):
    return g.op("unsqueeze", x, dim=0)  # [1, 2, seq, 4]


CASES = {
    "adaptive_avg_pool2d": lambda g, x, i, b, n: g.op("adaptive_avg_pool2d", _nchw(g, x), output_size=[1, 2]),
    "argmax": lambda g, x, i, b, n: g.op("argmax", x, dim=1),
    "argmin": lambda g, x, i, b, n: g.op("argmin", x, dim=-1, keepdim=True),
    "arange": lambda g, x, i, b, n: g.op("arange", start=1, end="seq+2"),
    "attention": lambda g, x, i, b, n: g.op("attention", x, x, x, causal=True),
    "linear_attention": lambda g, x, i, b, n: g.op(
        "linear_attention", *[g.op("unsqueeze", x, dim=1)] * 3, g.op("abs", _w(g, "lkv", 2, 1, 8, 4)),
        g.op("abs", _w(g, "lz", 2, 1, 8)), _w(g, "lwq", 1, 4, 4), _w(g, "lwk", 1, 4, 4), _w(g, "lwf", 1),
        window=1, sinks=1),
    "rope": lambda g, x, i, b, n: g.op("rope", x, g.op("cos", x), g.op("sin", x)),
    "avg_pool2d": lambda g, x, i, b, n: g.op("avg_pool2d", _nchw(g, x), kernel=[1, 2]),
    "max_pool2d": lambda g, x, i, b, n: g.op("max_pool2d", _nchw(g, x), kernel=[1, 2]),
    "batch_norm": lambda g, x, i, b, n: g.op("batch_norm", g.op("permute", x, dims=[0, 2, 1]), _w(g, "m", 4),
                                             g.op("abs", _w(g, "var", 4)), _w(g, "bw", 4), _w(g, "bb", 4)),
    "cast": lambda g, x, i, b, n: g.op("cast", x, dtype="f64"),
    "clamp": lambda g, x, i, b, n: g.op("clamp", x, min=-0.5, max=0.5),
    "concat": lambda g, x, i, b, n: g.op("concat", x, x, dim=1),
    "constant": lambda g, x, i, b, n: g.op("constant", value=1.5, dtype="f32"),
    "conv2d": lambda g, x, i, b, n: g.op("conv2d", _nchw(g, x), _w(g, "cw", 3, 2, 1, 2), _w(g, "cb", 3)),
    "cumsum": lambda g, x, i, b, n: g.op("cumsum", x, dim=1),
    "dim_value": lambda g, x, i, b, n: g.op("dim_value", expr="2*seq+1"),
    "einsum": lambda g, x, i, b, n: g.op("einsum", x, x, equation="bij,bkj->bik"),
    "embedding": lambda g, x, i, b, n: g.op("embedding", _w(g, "emb", 4, 3), i),
    "expand": lambda g, x, i, b, n: g.op("expand", _nchw(g, x), shape=[3, 2, "seq", 4]),
    "flip": lambda g, x, i, b, n: g.op("flip", x, dims=[1]),
    "full": lambda g, x, i, b, n: g.op("full", shape=[2, "seq"], value=1.5, dtype="f32"),
    "gather": lambda g, x, i, b, n: g.op("gather", x, g.op("unsqueeze", i, dim=2), dim=2),
    "index": lambda g, x, i, b, n: g.op("index", x, i, axes=[2]),
    "index_select": lambda g, x, i, b, n: g.op("index_select", x, g.op("select", i, dim=0, index=0), dim=2),
    "linear": lambda g, x, i, b, n: g.op("linear", x, _w(g, "lw", 3, 4), _w(g, "lb", 3)),
    "log_softmax": lambda g, x, i, b, n: g.op("log_softmax", x, dim=1),
    "softmax": lambda g, x, i, b, n: g.op("softmax", x, dim=-1),
    "matmul": lambda g, x, i, b, n: g.op("matmul", x, g.op("permute", x, dims=[0, 2, 1])),
    "pad": lambda g, x, i, b, n: g.op("pad", x, pads=[1, 2, 0, 1], value=0.5),
    "permute": lambda g, x, i, b, n: g.op("permute", x, dims=[2, 0, 1]),
    "reshape": lambda g, x, i, b, n: g.op("reshape", x, shape=["2*seq", 2, 2]),
    "select": lambda g, x, i, b, n: g.op("select", x, dim=1, index="seq-1"),
    "shape_tensor": lambda g, x, i, b, n: g.op("shape_tensor", dims=[2, "seq", "seq*4"]),
    "slice": lambda g, x, i, b, n: g.op("slice", x, dim=1, start=1, end="seq"),
    "split": lambda g, x, i, b, n: g.op("split", x, dim=2, sizes=[1, 3]),
    "squeeze": lambda g, x, i, b, n: g.op("squeeze", _nchw(g, x), dims=[0]),
    "tile": lambda g, x, i, b, n: g.op("tile", x, repeats=[1, 2, 1]),
    "unsqueeze": lambda g, x, i, b, n: g.op("unsqueeze", x, dim=-1),
    "where": lambda g, x, i, b, n: g.op("where", b, x, g.op("neg", x)),
    "gelu": lambda g, x, i, b, n: g.op("gelu", x, approximate="tanh"),
    "cumprod": lambda g, x, i, b, n: g.op("cumprod", x, dim=1),
    "grouped_mm": lambda g, x, i, b, n: g.op("grouped_mm", g.op("reshape", x, shape=["2*seq", 4]), _w(g, "gw", 2, 4, 3),
                                             g.op("cast", g.op("shape_tensor", dims=["seq-1", "2*seq-1"]), dtype="i32")),
    "topk": lambda g, x, i, b, n: g.op("topk", x, k="seq-1", dim=1),
    "cache_append": lambda g, x, i, b, n: g.op("cache_append", x, g.op("neg", x), axis=1),
    "cache_window": lambda g, x, i, b, n: g.op("cache_window", g.op("concat", x, x, dim=1), axis=1, window=3, sinks=1),
    "gather_nd": lambda g, x, i, b, n: g.op("gather_nd", x, g.op("unsqueeze", g.op("clamp", i, min=0, max=1), dim=-1)),
    "scatter": lambda g, x, i, b, n: g.op("scatter", x, g.op("unsqueeze", i, dim=2),
                                          g.op("slice", x, dim=2, start=0, end=1), dim=2, reduce="sum"),
    "index_put": lambda g, x, i, b, n: g.op("index_put", x, g.op("constant", value=1.5, dtype="f32"),
                                            g.op("select", i, dim=0, index=0), axes=[2], accumulate=True),
    # ONNX-import ops (ir/opset/spatial.py, scatter, bit_shift)
    "resize": lambda g, x, i, b, n: g.op("resize", _nchw(g, x), shape=[1, 2, "2*seq", 7], mode="linear",
                                         coord="half_pixel"),
    "conv_transpose2d": lambda g, x, i, b, n: g.op("conv_transpose2d", _nchw(g, x), _w(g, "tw", 2, 3, 2, 2),
                                                   _w(g, "tb", 3), stride=[2, 1]),
    "grid_sample": lambda g, x, i, b, n: g.op("grid_sample", _nchw(g, x), g.op("tanh", g.op(
        "reshape", g.op("slice", x, dim=2, start=0, end=2), shape=[1, 2, "seq", 2]))),
    "lstm": lambda g, x, i, b, n: g.op("lstm", x, _w(g, "lw", 1, 8, 4), _w(g, "lr", 1, 8, 2), _w(g, "lb", 1, 16),
                                       g.op("full", shape=[1, "seq", 2], value=0.1, dtype="f32"),
                                       g.op("full", shape=[1, "seq", 2], value=-0.1, dtype="f32")),
    "recurrent": lambda g, x, i, b, n: g.op("recurrent", x, _w(g, "gw", 2, 6, 4), _w(g, "gr", 2, 6, 2),
                                            _w(g, "gb", 2, 12), g.op("full", shape=[2, "seq", 2], value=0.0, dtype="f32"),
                                            cell="gru", direction="bidirectional"),
    "scatter_nd": lambda g, x, i, b, n: g.op("scatter_nd", x, g.op("reshape", g.op("clamp", g.op("slice", i, dim=1, start=0,
                                                                                                end=1), min=0, max=1),
                                                                   shape=[2, 1]), g.op("neg", x)),
    "bit_shift": lambda g, x, i, b, n: g.op("bit_shift", n, g.op("abs", n), left=True),
    "pool_nd": lambda g, x, i, b, n: g.op("pool_nd", _nchw(g, x), kind="avg", kernel=[2, 2], stride=[1, 2],
                                          pads=[1, 0, 0, 1], dilation=[1, 1]),
    "col2im": lambda g, x, i, b, n: g.op("col2im", g.op("reshape", g.op("slice", x, dim=1, start=0, end=2),
                                                        shape=[1, 4, 4]), image=[3, 3],
                                         block=[2, 2], dilation=[1, 1], padding=[0, 0], stride=[1, 1]),
    "quantize_activation": lambda g, x, i, b, n: g.op("quantize_activation", g.op("mul", x, x), group=2),
    "det": lambda g, x, i, b, n: g.op("det", g.op("matmul", x, g.op("permute", x, dims=[0, 2, 1]))),
}
INT_OPS = {"bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not"}
BOOL_OPS = {"logical_and", "logical_or", "logical_xor", "logical_not"}
NEEDS_QUANT_PASS = {"dequantize", "qlinear", "qembedding"}  # packed inputs: test_qlinear_kernel_via_codegen, tests/passes/test_quant.py


def build_case(op):
    g, x, i, b, n = std_graph()
    opdef = ir.get_op(op)
    if op in CASES:
        out = CASES[op](g, x, i, b, n)
    else:
        arg = n if op in INT_OPS else b if op in BOOL_OPS else x
        out = g.op(op, *[arg] * opdef.min_inputs)  # unary/binary elementwise with default attrs
    g.set_outputs(list(out) if isinstance(out, tuple) else [out])
    return g


@pytest.mark.parametrize("op", sorted(set(ir.all_ops()) - NEEDS_QUANT_PASS))
def test_every_op_matches_interpreter(op):
    try:
        g = build_case(op)
        ir.run(g, *std_inputs(3))
    except Exception as e:  # noqa: BLE001
        if op in CASES:
            raise
        pytest.fail(f"op {op} needs a case in CASES in tests/codegen/test_torch_fx.py (the default "
                    f"unary/binary one fails: {e})")
    assert_matches_interpreter(g)


# ---- symbolic dims, constants, multi-output -------------------------------------------------------
def test_symbolic_attrs_are_computed_once_per_expression():
    g, x, *_ = std_graph()
    a = g.op("reshape", x, shape=["2*seq", 4])
    c = g.op("reshape", g.op("neg", x), shape=["2*seq", 4])
    s = g.op("slice", g.op("add", a, c), dim=0, start=1, end="2*seq-1")
    g.set_outputs([s, g.op("dim_value", expr="floor(seq/2)")])
    gm = build_graph_module(g)
    code = gm.code
    assert code.count(".size(1)") == 1 and code.count("x.size(") == 1  # only `seq` is needed, once
    assert code.count("2 * seq") == 1 and "interpreter" not in code
    assert_matches_interpreter(g)


def test_unbound_symbol_is_a_clear_error():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", (2, "seq")))
    g.set_outputs([g.op("reshape", x, shape=["other", 2])])
    with pytest.raises(CodegenError, match="symbol other .* not the size of any input"):
        build_graph_module(g)


def test_literal_constants_inline_only_when_dtype_is_kept():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("n",)))
    k = g.add_input("k", TensorType("i64", ("n",)))
    two = g.op("constant", value=2.0, dtype="f32")
    half = g.op("constant", value=2.5, dtype="f64")  # f64 0-d * i64 tensor -> f64, a Python float gives f32
    g.set_outputs([g.op("mul", x, two), g.op("sub", two, x), g.op("mul", k, half), g.op("maximum", x, two)])
    code = build_graph_module(g).code
    assert "x * 2.0" in code and "2.0 - x" in code
    assert "k * 2.5" not in code and "maximum(x, 2.0)" not in code
    run = build_runner(g)
    for n in (1, 4):
        inputs = (torch.randn(n), torch.arange(n))
        for r, o in zip(ir.run(g, *inputs), run(*inputs)):
            assert r.dtype == o.dtype and torch.equal(r, o)


def test_multi_output_and_passthrough_outputs():
    g, x, i, *_ = std_graph()
    w = _w(g, "w", 4, 4)
    lo, hi = g.op("split", x, dim=2, sizes=[2, 2])
    (only,) = (g.op("split", x, dim=0, sizes=[2]),)
    g.set_outputs([hi, lo, x, w, only])
    assert_matches_interpreter(g)


def test_weights_are_shared_not_copied():
    g, x, *_ = std_graph()
    w = _w(g, "blk.0.w", 3, 4)
    g.set_outputs([g.op("linear", x, w)])
    gm = build_graph_module(g)
    assert gm.blk_0_w.data_ptr() == w.tensor.data_ptr()


def test_graph_is_not_modified():
    g = build_case("attention")
    before = str(g)
    build_graph_module(g)
    assert str(g) == before


# ---- attention kernel vs reference: GQA, causal with a past, masks ---------------------------------
@pytest.mark.parametrize("hq,hk,lq,lk,causal,mask", [
    (4, 2, 3, 7, True, None), (4, 1, 1, 6, True, None), (6, 2, 4, 4, True, None), (6, 3, 2, 5, False, None),
    (2, 2, 5, 5, True, None), (2, 2, 5, 5, True, "bool"), (4, 2, 3, 3, False, "float"), (4, 2, 2, 6, True, "bool"),
    (6, 2, 3, 5, True, "bool4d"), (6, 2, 1, 5, True, "float4d"), (4, 2, 3, 3, False, "perhead"),
])
def test_attention_kernel(hq, hk, lq, lk, causal, mask):
    gen = torch.Generator().manual_seed(hq * 10 + lq)
    q, k, v = (torch.randn(2, h, n, 8, generator=gen) for h, n in ((hq, lq), (hk, lk), (hk, lk)))
    m = None
    if mask == "bool":
        m = torch.rand(lq, lk, generator=gen) > 0.3
        m[:, 0] = True
    elif mask == "float":
        m = torch.randn(lq, lk, generator=gen)
    elif mask == "bool4d":  # HF's [batch, 1, q, k] padding+causal mask
        m = torch.rand(2, 1, lq, lk, generator=gen) > 0.3
        m[..., 0] = True
    elif mask == "float4d":
        m = torch.randn(2, 1, lq, lk, generator=gen)
    elif mask == "perhead":
        m = torch.randn(2, hq, lq, lk, generator=gen)
    ref = ir.get_op("attention").impl(q, k, v, m, causal=causal, scale=None)
    got = lowering.get_lowering("torch", "attention").fn(q, k, v, m, causal=causal, scale=None)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


# ---- kernel hook with prepack ----------------------------------------------------------------------
def test_kernel_hook_prepacks_weights_once(monkeypatch):
    calls = []

    def prepack(node, const):
        calls.append((node.op, sorted(const)))
        return {1: const[1].t().contiguous()}  # the kernel wants [in, out]

    def linear_t(x, wt, bias=None):
        y = x @ wt
        return y + bias if bias is not None else y

    _patch_lowering(monkeypatch, Lowering("torch", "linear", linear_t, prepack))
    g, x, *_ = std_graph()
    w, bias = _w(g, "w", 3, 4), _w(g, "bias", 3)
    g.set_outputs([g.op("linear", x, w, bias)])
    original = w.tensor.clone()
    run = build_runner(g)
    assert calls == [("linear", [1, 2])]
    assert "linear_t" in run.code
    assert torch.equal(w.tensor, original)  # the graph's weight is untouched
    for seq in SEQS:
        inputs = std_inputs(seq)
        torch.testing.assert_close(run(*inputs)[0], ir.run(g, *inputs)[0])
    assert len(calls) == 1  # not at run time


def _patch_lowering(monkeypatch, low):
    lowering.lowerings(low.target)  # load the table, then swap one entry for this test
    monkeypatch.setitem(lowering._TABLES[low.target], low.op, low)


def test_prepack_may_only_replace_weights(monkeypatch):
    _patch_lowering(monkeypatch, Lowering("torch", "linear", torch.nn.functional.linear,
                                          lambda node, const: {0: torch.zeros(1)}))
    g, x, *_ = std_graph()
    g.set_outputs([g.op("linear", x, _w(g, "w", 3, 4))])
    with pytest.raises(CodegenError, match=r"prepack for linear returned inputs \[0\]"):
        build_graph_module(g)


def test_qlinear_kernel_via_codegen():
    from slimgraph.passes.base import get_pass
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("batch", 64)))
    g.set_outputs([g.op("linear", x, _w(g, "w", 32, 64), _w(g, "b", 32))])
    get_pass("quantize-weights")(bits=4, group=32).run(g)
    get_pass("fuse-dequant-matmul")().run(g)
    assert "qlinear" in g.op_counts()
    run = build_runner(g)
    assert "_weight_int4pack_mm" not in run.code  # the call is inside the kernel...
    assert "qlinear" in run.code and "quant_qlinear" not in run.code  # ...not the ref
    for batch in (1, 3):
        xs = torch.randn(batch, 64)
        ref = ir.run(g, xs)[0]  # the int4 kernel runs in bf16 (codegen/torch_qlinear.py)
        torch.testing.assert_close(run(xs)[0], ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max()))


def test_torch_target_is_registered():
    t = get_target("torch")
    assert t.default_pipeline == "canonicalize,cse,dce"
    g = build_case("linear")
    inputs = std_inputs(4)
    torch.testing.assert_close(t.compile(g)(*inputs)[0], ir.run(g, *inputs)[0])
