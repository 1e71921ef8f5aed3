"""The "triton" lowering table and the lazy import of triton."""
import subprocess
import sys

import pytest


def test_triton_table_lowers_the_kernel_ops(device):
    from slimgraph.codegen.lowering import lowerings
    table = lowerings("triton")
    assert {"qlinear", "rms_norm", "layer_norm", "rope", "attention"} <= set(table)
    assert table["qlinear"].prepack is not None
    assert all(low.fn.__module__.startswith("slimgraph.codegen.triton.kernels.") for low in table.values()
               if low.op in {"qlinear", "rms_norm", "layer_norm", "rope", "attention"})


def test_import_slimgraph_does_not_import_triton():
    code = ("import sys, slimgraph, slimgraph.codegen.lowering, slimgraph.codegen.triton; "
            "assert 'triton' not in sys.modules, 'import slimgraph imported triton'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_triton_is_a_clear_error(monkeypatch):
    from slimgraph.codegen.triton.kernels import _common
    monkeypatch.setitem(sys.modules, "triton", None)   # what `import triton` sees when it is absent
    with pytest.raises(ImportError, match="pip install"):
        _common.import_triton()
