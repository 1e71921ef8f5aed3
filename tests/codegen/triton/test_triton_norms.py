"""rms_norm / layer_norm Triton kernels (codegen/triton/kernels/norms.py) against the reference impls."""
import pytest
import torch

from slimgraph.ir.registry import get_op

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _t(shape, dtype, device, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 37), (2, 3, 64), (5, 100)])
@pytest.mark.parametrize("weight", ["none", "same", "f32"])
def test_rms_norm(device, close, dtype, shape, weight):
    from slimgraph.codegen.triton.kernels import norms
    x = _t(shape, dtype, device, 0)
    w = None if weight == "none" else _t(shape[-1:], dtype if weight == "same" else torch.float32, device, 1)
    y = norms.rms_norm(x, w, eps=1e-5)
    ref = get_op("rms_norm").impl(x.cpu(), None if w is None else w.cpu(), eps=1e-5)
    close(y, ref, ref.dtype if ref.dtype != torch.float32 else dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axes", [((3, 37), 1), ((2, 4, 3, 10), 2), ((2, 5, 48), 1)])
@pytest.mark.parametrize("affine", ["none", "weight", "both"])
def test_layer_norm(device, close, dtype, shape, axes, affine):
    from slimgraph.codegen.triton.kernels import norms
    x = _t(shape, dtype, device, 0) * 3 + 1
    norm_shape = shape[len(shape) - axes:]
    w = _t(norm_shape, dtype, device, 1) if affine != "none" else None
    b = _t(norm_shape, dtype, device, 2) if affine == "both" else None
    y = norms.layer_norm(x, w, b, axes=axes, eps=1e-5)
    ref = get_op("layer_norm").impl(*(None if t is None else t.cpu() for t in (x, w, b)), axes=axes, eps=1e-5)
    close(y, ref, dtype)


def test_norm_fallbacks_warn(device):
    from slimgraph.codegen.triton.kernels import norms
    from slimgraph.codegen.triton.kernels._common import SlowPathWarning
    x = torch.randn(2, 8, dtype=torch.float64, device=device)
    with pytest.warns(SlowPathWarning, match="rms_norm"):
        assert torch.equal(norms.rms_norm(x, eps=1e-6), get_op("rms_norm").impl(x, eps=1e-6))
    w = torch.randn(8, dtype=torch.float64, device=device)
    with pytest.warns(SlowPathWarning, match="layer_norm"):
        y = norms.layer_norm(x, w, None, axes=1, eps=1e-5)
    assert torch.equal(y, get_op("layer_norm").impl(x, w, None, axes=1, eps=1e-5))
    with pytest.warns(SlowPathWarning, match="layer_norm"), pytest.raises(RuntimeError):
        norms.layer_norm(x.float(), w, None, axes=1, eps=1e-5)   # mixed dtypes: the reference's own error
