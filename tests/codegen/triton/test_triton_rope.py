"""rope Triton kernel (codegen/triton/kernels/rope.py) against the reference impl, with broadcasting."""
import pytest
import torch

from slimgraph.ir.registry import get_op


def _t(shape, dtype, device, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("xs,cs", [
    ((2, 4, 5, 16), (5, 16)),            # [b, h, s, d] with a [s, d] table
    ((2, 4, 5, 16), (2, 1, 5, 16)),      # per-batch positions
    ((1, 3, 1, 8), (1, 1, 1, 8)),        # decode step
    ((3, 2, 4, 5, 12), (4, 5, 12)),      # rank 5: leading dims merged
    ((7, 10), (7, 10)),                  # rank 2
])
def test_rope(device, close, dtype, xs, cs):
    from slimgraph.codegen.triton.kernels import rope
    x, cos, sin = _t(xs, dtype, device, 0), _t(cs, dtype, device, 1), _t(cs, dtype, device, 2)
    close(rope.rope(x, cos, sin), get_op("rope").impl(x.cpu(), cos.cpu(), sin.cpu()), dtype)


def test_rope_strided_and_mixed_dtypes(device, close):
    """x a transposed view (not contiguous), f32 cos/sin with bf16 x: output f32, as the reference."""
    from slimgraph.codegen.triton.kernels import rope
    x = _t((2, 6, 3, 16), torch.bfloat16, device, 0).transpose(1, 2)
    cos, sin = _t((6, 16), torch.float32, device, 1), _t((6, 16), torch.float32, device, 2)
    y = rope.rope(x, cos, sin)
    close(y, get_op("rope").impl(x.cpu(), cos.cpu(), sin.cpu()), torch.float32)


def test_rope_fallback_warns(device):
    from slimgraph.codegen.triton.kernels import rope
    from slimgraph.codegen.triton.kernels._common import SlowPathWarning
    x = torch.randn(2, 8, dtype=torch.float64, device=device)
    with pytest.warns(SlowPathWarning, match="rope"):
        assert torch.equal(rope.rope(x, x, x), get_op("rope").impl(x, x, x))
