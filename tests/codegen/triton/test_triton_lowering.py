"""The "triton" lowering table and the lazy import of triton."""
import subprocess
import sys

import pytest

KERNEL_OPS = {"qlinear", "rms_norm", "layer_norm", "rope", "attention"}   # the hand-written kernels


def test_triton_table_lowers_the_kernel_ops(device):
    from slimgraph.codegen.lowering import lowerings
    table = lowerings("triton")
    assert KERNEL_OPS <= set(table)
    assert table["qlinear"].prepack is not None
    assert all(table[op].fn.__module__.startswith("slimgraph.codegen.triton.kernels.") for op in KERNEL_OPS)


def test_launchers_have_the_reference_signature(device):
    """The codegen calls a lowering exactly as the interpreter calls the op's reference impl."""
    import inspect
    from slimgraph.codegen.lowering import lowerings
    from slimgraph.ir.registry import get_op
    table = lowerings("triton")
    for op in KERNEL_OPS:
        low = table[op]
        want, got = inspect.signature(get_op(op).impl), inspect.signature(low.fn)
        assert [(p.name, p.kind, p.default) for p in got.parameters.values()] == \
            [(p.name, p.kind, p.default) for p in want.parameters.values()], op


def test_import_slimgraph_does_not_import_triton():
    code = ("import sys, slimgraph, slimgraph.codegen.lowering, slimgraph.codegen.triton; "
            "assert 'triton' not in sys.modules, 'import slimgraph imported triton'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_triton_is_a_clear_error(monkeypatch):
    from slimgraph.codegen.triton.kernels import _common
    monkeypatch.setitem(sys.modules, "triton", None)   # what `import triton` sees when it is absent
    with pytest.raises(ImportError, match="pip install"):
        _common.import_triton()
