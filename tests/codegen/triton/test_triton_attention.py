"""attention Triton kernels (codegen/triton/kernels/attention.py: flash prefill, split-KV decode) against
the op's reference impl: GQA, causal, window + sinks, bool/additive masks with fully masked rows."""
import pytest
import torch

from slimgraph.ir.registry import get_op

REF = get_op("attention").impl


def _qkv(b, h, hk, lq, lk, d, dv, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype).to(device)  # noqa: E731
    return mk(b, h, lq, d), mk(b, hk, lk, d), mk(b, hk, lk, dv)


def _check(close, q, k, v, mask=None, dtype=torch.float32, **attrs):
    from slimgraph.codegen.triton.kernels import attention as A
    y = A.attention(q, k, v, mask, **attrs)
    ref = REF(*(t.cpu() if t is not None else None for t in (q, k, v, mask)), **attrs)
    close(y, ref, dtype)


# (b, h, hk, lq, lk, d, dv): lq <= 16 takes the decode kernel, larger the prefill kernel;
# seq lengths are not multiples of the blocks (16 under the interpreter, 64 on a GPU)
SHAPES = [(1, 2, 2, 37, 37, 16, 16), (2, 4, 1, 20, 45, 24, 8), (1, 4, 1, 1, 45, 16, 16),
          (1, 8, 2, 3, 70, 16, 16), (2, 4, 4, 17, 17, 32, 32)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_attention(device, close, shape, causal):
    b, h, hk, lq, lk, d, dv = shape
    _check(close, *_qkv(b, h, hk, lq, lk, d, dv, torch.float32, device), causal=causal)


@pytest.mark.parametrize("lq", [1, 3, 40])
@pytest.mark.parametrize("window,sinks,causal", [(9, 3, True), (9, 0, True), (5, 2, False), (100, 4, True)])
def test_window_and_sinks(device, close, lq, window, sinks, causal):
    """GQA 4:1; lq=1/3 decode over 70 keys (the window's start is past the sinks), lq=40 prefill."""
    q, k, v = _qkv(1, 4, 1, lq, 70, 16, 16, torch.float32, device)
    _check(close, q, k, v, causal=causal, window=window, sinks=sinks)


@pytest.mark.parametrize("lq", [1, 5, 30])
def test_bool_mask_with_padding_rows(device, close, lq):
    """The causal-LM convention: bool [b, 1, s, L+s] plus causal; a fully masked query row gives 0."""
    q, k, v = _qkv(2, 4, 2, lq, 50, 16, 16, torch.float32, device)
    mask = torch.rand(2, 1, lq, 50, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[:, :, :, :3] = False          # left padding keys
    mask[0, 0, lq // 2] = False        # a padding query row
    _check(close, q, k, v, mask.to(device), causal=True)


@pytest.mark.parametrize("lq", [1, 30])
def test_additive_mask_and_scale(device, close, lq):
    q, k, v = _qkv(1, 4, 2, lq, 50, 16, 16, torch.float32, device)
    mask = torch.randn(1, 4, lq, 50, generator=torch.Generator().manual_seed(4))
    mask[0, :, lq // 2, :] = float("-inf")
    mask[0, :, :, 10:20] = torch.finfo(torch.float32).min
    _check(close, q, k, v, mask.to(device), scale=0.3, window=20, sinks=2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lq", [2, 17])
def test_half_precision(device, close, dtype, lq):
    q, k, v = _qkv(1, 4, 1, lq, 60, 32, 32, dtype, device)
    _check(close, q, k, v, dtype=dtype, causal=True, window=7 if lq == 2 else 0, sinks=2)


def test_decode_splits_only_the_kept_range():
    from slimgraph.codegen.triton.kernels.attention import kept_range
    assert kept_range(1, 1000, 64, 4) == (4, 935, 1000)     # sinks, then the last 65 keys
    assert kept_range(1, 50, 64, 4) == (0, 0, 50)           # window covers all: no separate sinks
    assert kept_range(3, 10, 0, 0) == (0, 0, 10)


def test_fallback_warns(device):
    from slimgraph.codegen.triton.kernels import attention as A
    from slimgraph.codegen.triton.kernels._common import SlowPathWarning
    q, k, v = _qkv(1, 2, 2, 3, 5, 8, 8, torch.float64, device)
    with pytest.warns(SlowPathWarning, match="attention"):
        assert torch.equal(A.attention(q, k, v, causal=True), REF(q, k, v, causal=True))


@pytest.mark.parametrize("lq", [1, 20])
def test_strided_inputs(device, close, lq):
    """k/v as views into a larger static cache buffer (decode over a KV cache), q transposed from [b, s, h, d],
    a 2-d [lq, lk] bool mask, and two leading dims."""
    g = torch.Generator().manual_seed(5)
    cache = torch.randn(2, 3, 2, 64, 16, generator=g).to(device)       # [b0, b1, hk, max_len, d]
    k, v = cache[..., :37, :], cache.flip(-1)[..., :37, :]
    q = torch.randn(2, 3, lq, 8, 16, generator=g).to(device).transpose(-2, -3)   # [b0, b1, h=8, lq, d]
    mask = (torch.rand(lq, 37, generator=g) > 0.2).to(device)
    _check(close, q, k, v, mask, causal=True)
