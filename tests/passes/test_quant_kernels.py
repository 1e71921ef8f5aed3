"""The torch target's qlinear kernels (codegen/torch_qlinear.py) against the reference op."""
import pytest
import torch

from slimgraph import ir
from slimgraph.codegen import torch_qlinear
from slimgraph.codegen.torch_kernels import SlowPath
from slimgraph.ir import TensorType
from slimgraph.passes.base import get_pass


def qlinear_graph(out, k, bits, group, sym, bias):
    torch.manual_seed(out + k + bits + group)
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("batch", "seq", k)))
    args = [g.add_weight("w", torch.randn(out, k))] + ([g.add_weight("b", torch.randn(out))] if bias else [])
    g.set_outputs([g.op("linear", x, *args)])
    get_pass("quantize-weights")(bits=bits, group=group, sym=sym).run(g)
    get_pass("fuse-dequant-matmul")().run(g)
    return g, next(n for n in g.nodes if n.op == "qlinear")


def run_kernel(node, x):
    const = {i: v.tensor for i, v in enumerate(node.inputs) if v.is_weight}
    try:
        packed = torch_qlinear.prepack_qlinear(node, const)
    except SlowPath:
        packed = {}
    args = [x] + [packed.get(i, const[i]) for i in range(1, len(node.inputs))]
    return torch_qlinear.qlinear(*args, **node.attrs), packed


@pytest.mark.parametrize("out,k,bits,group,sym,bias,path", [
    (64, 128, 8, 0, True, True, "int8pack"),
    (64, 128, 8, 0, True, False, "int8pack"),
    (48, 96, 4, 32, False, True, "int4pack"),
    (64, 128, 4, 64, True, True, "int4pack"),
    (32, 256, 4, 0, False, False, "int4pack"),   # per-channel = one group of 256
    (24, 64, 4, 32, False, True, "fallback"),    # out % 16 != 0
    (64, 96, 4, 0, False, False, "fallback"),    # group 96 is not a kernel group size
    (64, 128, 8, 32, False, True, "fallback"),   # grouped asymmetric int8
])
def test_kernel_matches_reference(out, k, bits, group, sym, bias, path):
    g, node = qlinear_graph(out, k, bits, group, sym, bias)
    x = torch.randn(2, 3, k)
    ref = ir.run(g, x)[0]
    y, packed = run_kernel(node, x)
    assert y.shape == ref.shape
    tol = 1e-4 if path == "fallback" else 1e-2  # the int4/int8 CPU kernels run in bf16 (torch_qlinear's doc)
    torch.testing.assert_close(y, ref, rtol=tol, atol=tol * float(ref.abs().max()))
    kind = ("int4pack" if 2 in packed and packed[2].dim() == 3 else
            "int8pack" if 2 in packed and packed[2].dim() == 1 else "fallback")
    assert kind == path


def test_int4_prepack_keeps_packed_size():
    g, node = qlinear_graph(64, 128, 4, 32, False, False)
    _, packed = run_kernel(node, torch.randn(1, 1, 128))
    assert packed[1].dtype == torch.uint8 and packed[1].numel() == 64 * 128 // 2


def test_int8_kernel_runs_from_an_unaligned_weight():
    """A weight loaded from a file can start at any byte (safetensors aligns to 8): prepack hands the
    int8 kernel an aligned copy (torch's multi-row int8 path segfaulted on the unaligned one)."""
    g, node = qlinear_graph(64, 128, 8, 0, True, False)
    w = node.inputs[1].tensor
    buf = torch.empty(w.numel() + 64, dtype=torch.int8)
    start = (-buf.data_ptr()) % 64 + 8                  # 8 bytes past a 64-byte boundary
    node.inputs[1].tensor = unaligned = buf[start:start + w.numel()].view_as(w).copy_(w)
    assert unaligned.data_ptr() % 64 == 8
    x = torch.randn(1, 32, 128)
    y, packed = run_kernel(node, x)
    assert packed[1].data_ptr() % 64 == 0
    torch.testing.assert_close(y, ir.run(g, x)[0], rtol=1e-2, atol=1e-2 * float(y.abs().max()))


def test_slow_paths_are_reported_and_warned():
    """A qlinear without a packed torch kernel still runs (dequantize per call), and optimize() says so."""
    import slimgraph
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 24)).eval()
    x = torch.randn(3, 64)
    with pytest.warns(UserWarning, match="2 nodes: int8 qlinear with groups"):
        fast = slimgraph.optimize(model, (x,), pipeline="quantize-weights{bits=8,group=32,sym=false},fuse-dequant-matmul")
    assert any("quantize-weights{bits=8,group=0}" in n for n in fast.report.notes)
    torch.testing.assert_close(fast(x), model(x), rtol=0.05, atol=0.05)
    with pytest.warns(UserWarning, match="1 node: int4 qlinear with an output dim not a multiple of 16"):
        slimgraph.optimize(model, (x,), pipeline="quantize-weights{bits=4,group=32},fuse-dequant-matmul")
