"""Per-target lowering tables and what targets say they support."""
import subprocess
import sys

import pytest

from slimgraph.codegen import lowering as L
from slimgraph.ir.registry import all_ops
from slimgraph.targets.base import get_target


def test_tables_hold_the_torch_kernels_and_onnx_emitters():
    torch_ops, onnx_ops = L.lowerings("torch"), L.lowerings("onnx")
    assert {"attention", "rms_norm", "qlinear", "add", "linear"} <= set(torch_ops)
    assert torch_ops["add"].scalars and torch_ops["qlinear"].prepack is not None
    assert all(low.target == "torch" and low.op == op for op, low in torch_ops.items())
    assert {"attention", "rms_norm", "qlinear", "reshape", "remainder", "fmod", "sum"} <= set(onnx_ops)
    assert L.get_lowering("onnx", "fmod").fn is L.get_lowering("onnx", "remainder").fn
    assert L.get_lowering("torch", "cumprod") is None and L.lowerings("no-such-target") == {}


def test_registration_errors():
    with pytest.raises(ValueError, match="target 'torch': op 'add' is lowered twice"):
        L.lowering("torch", "add")(lambda a, b: a + b)
    with pytest.raises(KeyError, match="unknown op 'rms_nrom'.*Did you mean rms_norm"):
        L.lowering("torch", "rms_nrom")(lambda x: x)
    assert "rms_nrom" not in L.lowerings("torch")


def test_target_supports_native_and_reference():
    torch_t, onnx_t, ref = get_target("torch"), get_target("onnx"), get_target("reference")
    for op in all_ops():
        assert torch_t.supports(op) and ref.supports(op)
        assert torch_t.native(op) == (L.get_lowering("torch", op) is not None)
        assert onnx_t.supports(op) == (L.get_lowering("onnx", op) is not None)
    assert torch_t.support("cumprod") == "reference" and onnx_t.support("cumprod") is None
    assert onnx_t.support("rms_norm") == "native" and ref.support("add") == "reference"
    from slimgraph.ir.graph import Graph
    from slimgraph.ir.types import TensorType
    g = Graph()
    node = g.op("relu", g.add_input("x", TensorType("f32", (2,)))).producer
    assert torch_t.native(node) and onnx_t.supports(node)
    with pytest.raises(KeyError, match="unknown op"):
        torch_t.supports("no_such_op")


def test_cli_ops_target_lists_how_each_op_is_lowered():
    out = subprocess.run([sys.executable, "-m", "slimgraph.cli", "ops", "--target", "onnx"],
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert any(line.startswith("unsupported") and " cumprod(x)" in line for line in lines)
    assert any(line.startswith("native") and " rms_norm(x, weight?)" in line for line in lines)
    n_native = sum(line.startswith("native") for line in lines)
    assert lines[-1] == f"target onnx: {n_native} native, 0 reference, {len(all_ops()) - n_native} unsupported"
    out = subprocess.run([sys.executable, "-m", "slimgraph.cli", "ops", "--target", "torch"],
                         capture_output=True, text=True, check=True).stdout
    assert any(line.startswith("reference") and " cumprod(x)" in line for line in out.splitlines())
    assert "unsupported" not in out.splitlines()[-1] or ", 0 unsupported" in out.splitlines()[-1]
