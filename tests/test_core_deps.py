"""`import slimgraph` and the torch target need only the core dependencies; a missing optional
package is a clear error naming the extra that installs it."""
import subprocess
import sys
import textwrap

BLOCK = """
import sys
for name in ("transformers", "onnx", "onnxruntime", "onnxscript", "triton", "tvm", "gguf"):
    sys.modules[name] = None  # import raises ImportError and find_spec() returns None, as if uninstalled
"""


def run(code):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(BLOCK) + textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_core_works_without_optional_packages():
    out = run("""
        import torch, slimgraph
        from slimgraph import ir, passes, targets
        mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
        x = torch.randn(3, 4)
        fast = slimgraph.optimize(mlp, (x,), target="torch")
        torch.testing.assert_close(fast(x), mlp(x))
        print("ok", sorted(m for m in ("transformers", "onnx", "triton", "tvm") if sys.modules.get(m) is not None))
    """)
    assert "ok []" in out


def test_missing_optional_package_names_the_extra():
    out = run("""
        import torch, slimgraph
        mlp = torch.nn.Linear(4, 2).eval()
        try:
            slimgraph.optimize(mlp, (torch.randn(1, 4),), target="onnx")
        except ImportError as e:
            print("error:", e)
    """)
    assert "slimgraph[onnx]" in out
