"""The `cuda` target's fusion: which IR nodes become one generated Triton kernel (IR in, groups out), and
every generated kernel equals the reference interpreter, on hand-written and random graphs. Where no GPU
is, the kernels run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings

try:
    import triton  # noqa: F401
except ImportError:
    if os.environ.get("CI"):   # CI runs make setup, which installs triton: missing there is a failure
        raise
    pytest.skip("triton is not installed (make setup installs it)", allow_module_level=True)

import slimgraph  # noqa: E402
from slimgraph.codegen.triton.partition import describe, partition  # noqa: E402
from slimgraph.ir import parse_graph  # noqa: E402
from slimgraph.ir.interpreter import Interpreter  # noqa: E402
from slimgraph.targets.base import TargetUnavailableError, get_target  # noqa: E402
from strategies import graphs  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it)")


def compile_cuda(text):
    graph = parse_graph(text)
    return graph, get_target("cuda").compile(graph)


def check(text, *inputs, tol=1e-6):
    graph, run = compile_cuda(text)
    want = Interpreter(graph).run(*inputs)
    got = run(*inputs)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g.cpu(), w, rtol=tol, atol=tol, equal_nan=True)
    return run


MLP = """
graph @mlp(%x: f32[4,8], %w: f32[16,8], %b: f32[16]) {
  %h: f32[4,16] = linear(%x, %w)
  %hb: f32[4,16] = add(%h, %b)
  %g: f32[4,16] = gelu(%hb) {approximate="tanh"}
  %half: f32[] = constant() {value=0.5, dtype="f32"}
  %s: f32[4,16] = mul(%g, %half)
  %t: f32[4,16] = tanh(%s)
  %u: f32[4,16] = sigmoid(%hb)
  %y: f32[4,16] = mul(%t, %u)
  %z: f32[4,16] = relu(%y)
  return %z, %u
}
"""


def test_an_elementwise_tree_is_one_kernel_but_values_used_outside_it_are_not_recomputed():
    graph = parse_graph(MLP)
    # %hb feeds %g and %u, and %u is a graph output: both stay materialized, each is its own kernel's root
    assert describe(partition(graph)).splitlines() == [
        "%z <- gelu mul tanh mul relu (2 inputs)",
    ]


def test_fused_mlp_equals_the_interpreter():
    run = check(MLP, torch.randn(4, 8), torch.randn(16, 8), torch.randn(16))
    assert run.products.meta["fused_groups"] == 1 and "fused_0_kernel" in run.products.read_bytes(
        "triton_kernels.py").decode()


@pytest.mark.parametrize("text,make", [
    # broadcasting on both sides and a transposed (strided) operand
    ("""graph @f(%x: f32[3,1,5], %y: f32[4,1], %z: f32[5,4]) {
          %p: f32[4,5] = permute(%z) {dims=[1,0]}
          %a: f32[3,4,5] = add(%x, %y)
          %b: f32[3,4,5] = mul(%a, %p)
          %c: f32[3,4,5] = silu(%b)
          return %c
        }""", lambda: (torch.randn(3, 1, 5), torch.randn(4, 1), torch.randn(5, 4))),
    # f16 rounds after each op like torch does
    ("""graph @f(%x: f16[6,7], %y: f16[6,7]) {
          %a: f16[6,7] = mul(%x, %y)
          %b: f16[6,7] = exp(%a)
          %c: f16[6,7] = sub(%b, %x)
          return %c
        }""", lambda: (torch.randn(6, 7).half(), torch.randn(6, 7).half())),
    # bool masks, comparisons, where, casts, NaN through maximum / relu / clamp
    ("""graph @f(%x: f32[5,6], %m: bool[5,6]) {
          %zero: f32[] = constant() {value=0.0, dtype="f32"}
          %gt: bool[5,6] = gt(%x, %zero)
          %both: bool[5,6] = logical_and(%gt, %m)
          %neg: f32[5,6] = neg(%x)
          %w: f32[5,6] = where(%both, %x, %neg)
          %mx: f32[5,6] = maximum(%w, %x)
          %r: f32[5,6] = relu(%mx)
          %cl: f32[5,6] = clamp(%r) {min=0.1, max=1.5}
          %i: i64[5,6] = cast(%cl) {dtype="i64"}
          %f: f32[5,6] = cast(%i) {dtype="f32"}
          %o: f32[5,6] = add(%f, %cl)
          return %o
        }""", lambda: (torch.where(torch.rand(5, 6) < 0.1, float("nan"), 3 * torch.randn(5, 6)),
                                   torch.rand(5, 6) < 0.5)),
    # integers stay integers; a bool result
    ("""graph @f(%a: i64[9], %b: i64[9]) {
          %s: i64[9] = add(%a, %b)
          %p: i64[9] = mul(%s, %a)
          %e: bool[9] = lt(%p, %b)
          %n: bool[9] = logical_not(%e)
          return %n
        }""", lambda: (torch.randint(-50, 50, (9,)), torch.randint(-50, 50, (9,)))),
    # a 0-d operand, and an empty tensor
    ("""graph @f(%x: f32[], %y: f32[0,3]) {
          %a: f32[0,3] = add(%y, %x)
          %b: f32[0,3] = sqrt(%a)
          return %b
        }""", lambda: (torch.tensor(2.0), torch.randn(0, 3))),
])
def test_generated_kernels_handle_broadcasting_layouts_dtypes_and_nan(text, make):
    inputs = make()
    graph = parse_graph(text)
    assert partition(graph), "expected a fused group"
    check(text, *inputs, tol=1e-3 if "f16" in text else 1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(max_ops=8))
def test_random_graphs_on_the_cuda_target_match_the_interpreter(case):
    graph, inputs = case
    partition(graph)  # acyclic by construction (checked inside)
    run = get_target("cuda").compile(graph)
    for g, w in zip(run(*inputs), Interpreter(graph).run(*inputs)):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-4, atol=1e-4, equal_nan=True)


def test_without_a_gpu_the_cuda_target_fails_at_optimize_time_with_the_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = torch.nn.Linear(4, 4)
    with pytest.raises(TargetUnavailableError, match="NVIDIA GPU.*TRITON_INTERPRET=1"):
        slimgraph.optimize(model, (torch.randn(2, 4),), target="cuda")


def test_artifact_loads_the_stored_kernels_in_a_fresh_process_without_codegen(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

        def forward(self, x):
            h = self.up(x)
            return self.down(torch.nn.functional.gelu(h) * torch.sigmoid(h) + 1.0)

    model, x = Net().eval(), torch.randn(3, 8)
    compiled = slimgraph.optimize(model, (x,), target="cuda", pipeline="canonicalize,cse,dce")
    assert compiled.runner.products.meta["fused_groups"] >= 1
    compiled.save(tmp_path / "m.sg")
    assert "triton_kernels.py" in {p.name for p in (tmp_path / "m.sg").iterdir()}
    torch.save(x, tmp_path / "x.pt")
    code = f"""
        import torch, slimgraph
        import slimgraph.codegen.triton.cuda as cuda, slimgraph.codegen.torch_fx as fx
        def no_codegen(*a, **k): raise AssertionError("codegen ran on load")
        cuda.build = fx.build = fx._Builder.build = no_codegen
        m = slimgraph.load({str(tmp_path / 'm.sg')!r})
        torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})
    """
    env = {**os.environ, "SLIMGRAPH_CACHE_DIR": str(tmp_path / "cache")}   # the same device as here
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), compiled(x), rtol=0, atol=0)


def test_generator_ops_make_their_tensors_on_the_targets_device(monkeypatch):
    """arange/full/... run at call time (symbolic sizes): on a GPU they must not make CPU tensors."""
    from slimgraph.codegen.lowering import get_lowering
    from slimgraph.codegen.triton import cuda
    monkeypatch.setattr(cuda, "device", lambda: "meta")
    got = get_lowering("triton", "arange").fn(start=0, end=5, step=1, dtype="i64")
    assert got.device.type == "meta" and got.shape == (5,)
    assert get_lowering("triton", "full").fn(shape=[2, 3], value=1.0, dtype="f32").device.type == "meta"


@pytest.mark.slow
def test_the_gpu_benchmark_runs_in_smoke_mode_and_the_cuda_target_is_token_identical_to_transformers():
    """benchmarks/bench_cuda.py must work the day a GPU shows up: here its --smoke mode (Triton's interpreter)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    out = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench_cuda.py"), "--smoke"],
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "| slimgraph cuda int4 |" in out.stdout and "(token-identical)" in out.stdout


class _IntLiterals(torch.nn.Module):
    def forward(self, x):
        return (x * 2 + 1).masked_fill(x > 1.0, 0) + 0.5       # integer literals inside float math


class _IntRelu(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) + 1                                  # stays integer: exact above 2**24


class _MixedInts(torch.nn.Module):
    def forward(self, a, b):
        return (a + b) * 3                                        # int8 + uint8 promote to int16 first


class _F64(torch.nn.Module):
    def forward(self, a):
        return (a * 3.0).exp() + 1.0                              # f64: not fused (f32 carrier), still exact


@pytest.mark.parametrize("model,inputs", [
    (_IntLiterals, lambda: (3 * torch.randn(64),)),
    (_IntRelu, lambda: (torch.tensor([16777217, -3, 2 ** 40 + 1]),)),
    (_MixedInts, lambda: (torch.tensor([100, -100], dtype=torch.int8), torch.tensor([200, 3], dtype=torch.uint8))),
    (_F64, lambda: (torch.tensor([0.1, 1e-3, 2.0], dtype=torch.float64),)),
])
def test_fused_kernels_follow_torchs_literal_and_promotion_rules(model, inputs):
    xs = inputs()
    got, want = slimgraph.optimize(model(), xs, target="cuda")(*xs).cpu(), model()(*xs)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-15 if want.dtype == torch.float64 else 1e-6, atol=0)


def test_kernel_source_imports_from_a_temp_folder_when_the_cache_root_is_unwritable(tmp_path, monkeypatch):
    """Triton reads kernel source from a real file; a cache root that cannot hold one (read-only home, a file in
    its place) puts it in a private temp folder, with a warning naming the root, rather than failing the build."""
    from slimgraph.codegen.triton import cuda
    (tmp_path / "root").write_text("not a folder")
    monkeypatch.setenv("SLIMGRAPH_CACHE_DIR", str(tmp_path / "root"))
    src = "ANSWER = 42  # test_kernel_source_imports_from_a_temp_folder\n"
    with pytest.warns(UserWarning, match=r"triton kernel cache .*root.* not writable"):
        module = cuda._import_kernels(src)
    assert module.ANSWER == 42 and not module.__file__.startswith(str(tmp_path))
