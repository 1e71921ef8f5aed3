"""Kernel constructs every supported triton (3.6-3.9) must run, in its interpreter and compiled: a loop
whose bounds are runtime scalars (program ids, int args, tl.minimum / tl.cdiv of them), the form of the
split-K and split-KV loops in codegen/triton/kernels/. Triton 3.6's interpreter fails on it under NumPy
>= 2.4 unless codegen/triton/kernels/_common.py's fix_interpreter_index is installed."""
import pytest
import torch

try:
    import triton
    import triton.language as tl
except ImportError:   # the `device` fixture skips (fails in CI) with the install command
    triton = None

if triton is not None:
    @triton.jit
    def _split_sums_kernel(x_ptr, out_ptr, N, CPS, BLOCK: tl.constexpr):
        """out[2 * pid] and out[2 * pid + 1]: the sum of chunks pid*CPS .. of x, by range() and tl.range."""
        pid = tl.program_id(0)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for c in range(pid * CPS, tl.minimum(pid * CPS + CPS, tl.cdiv(N, BLOCK))):
            offs = c * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(x_ptr + offs, mask=offs < N, other=0.0)
        tl.store(out_ptr + 2 * pid, tl.sum(acc, axis=0))
        acc2 = tl.zeros([BLOCK], dtype=tl.float32)
        for start in tl.range(pid * CPS * BLOCK, tl.minimum(pid * CPS * BLOCK + CPS * BLOCK, N), BLOCK):
            offs = start + tl.arange(0, BLOCK)
            acc2 += tl.load(x_ptr + offs, mask=offs < N, other=0.0)
        tl.store(out_ptr + 2 * pid + 1, tl.sum(acc2, axis=0))


@pytest.mark.parametrize("n", [1, 37, 200])
def test_loops_with_runtime_bounds(device, n):
    from slimgraph.codegen.triton.kernels import _common
    _common.import_triton()   # what every kernel module does first (installs the interpreter fix)
    block, cps = 16, 3
    splits = -(-(-(-n // block)) // cps)
    x = torch.randn(n, device=device)
    out = torch.full((2 * splits,), float("nan"), device=device)
    _split_sums_kernel[(splits,)](x, out, n, cps, BLOCK=block)
    want = torch.stack([x[s * cps * block:(s + 1) * cps * block].sum() for s in range(splits)])
    torch.testing.assert_close(out.view(splits, 2).cpu(), want.cpu()[:, None].expand(splits, 2),
                               atol=1e-5, rtol=1e-5)


def test_interpreter_fix_is_installed_once(device):
    from slimgraph.codegen.triton.kernels import _common
    if not _common.INTERPRET:
        pytest.skip("compiled kernels (a GPU): the interpreter fix is not installed")
    from triton.runtime import interpreter
    _common.import_triton()
    hook = interpreter._patch_lang_tensor
    assert getattr(hook, "slimgraph_index_fix", False), "import_triton did not install fix_interpreter_index"
    _common.fix_interpreter_index()
    assert interpreter._patch_lang_tensor is hook   # not wrapped twice
