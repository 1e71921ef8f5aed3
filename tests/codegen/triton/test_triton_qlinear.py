"""qlinear Triton kernels (codegen/triton/kernels/qlinear.py) against the op's reference impl."""
import types
import warnings

import pytest
import torch

from slimgraph.ir import quant_format as Q
from slimgraph.ir.registry import get_op

REF = get_op("qlinear").impl


def _weight(n, k, bits, group, sym, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    q, s, z = Q.quantize_rtn(w, bits, group, sym)
    return Q.store(q, s, z, bits, sym)


def _x(m, k, dtype, device, seed=1):
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


CASES = [  # (M, N, K, group): K 96/160/200 are not multiples of the 64-wide chunk; N not of the 64 block
    (1, 40, 96, 32), (17, 40, 96, 32), (1, 72, 192, 64), (3, 72, 192, 64), (17, 24, 384, 128),
    (1, 64, 384, 128), (2, 40, 200, 0), (17, 40, 160, 32), (33, 8, 128, 16),
    (20, 520, 96, 32),   # enough N blocks that the GEMM does not split K (under the interpreter's 4 "SMs")
]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "zeros"])
@pytest.mark.parametrize("m,n,k,group", CASES)
def test_qlinear_matches_reference(device, close, bits, sym, m, n, k, group):
    from slimgraph.codegen.triton.kernels import qlinear as QL
    qw, sc, zs = _weight(n, k, bits, group, sym)
    x = _x(m, k, torch.float32, device)
    bias = torch.randn(n).to(device)
    args = [t.to(device) for t in (qw, sc)] + ([zs.to(device)] if zs is not None else [])
    y = QL.qlinear(x, *args, bias, bits=bits, group=group)
    close(y, REF(x.cpu(), qw, sc, zs, bias.cpu(), bits=bits, group=group), torch.float32)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k,group", [(64, 64), (128, 128), (32, 32), (96, 0)])
def test_prepacked_weight_with_a_single_group(device, close, bits, k, group):
    """A layer whose input size is one group (K == group: a tiny model's linears) or per-row scales, through the
    lowering's prepack hook as the `cuda` target runs it (the prepacked table has one group either way)."""
    from slimgraph.codegen.triton.kernels import qlinear as QL
    qw, sc, zs = _weight(40, k, bits, group, True)
    packed, table = QL.pack_weight(qw, sc, None, bits, group)
    x = _x(3, k, torch.float32, device)
    y = QL.qlinear(x, packed.to(device), table.to(device), bits=bits, group=group)
    close(y, REF(x.cpu(), qw, sc, bits=bits, group=group), torch.float32)


@pytest.mark.parametrize("path", ["gemv", "gemm"])
@pytest.mark.parametrize("m", [1, 17])
def test_both_paths_at_any_m(device, close, path, m):
    """GEMV at M=17 and GEMM at M=1 (forced) compute the same thing, so both paths see both shapes."""
    from slimgraph.codegen.triton.kernels import qlinear as QL
    qw, sc, zs = _weight(48, 320, 4, 64, False)
    packed, table = QL.pack_weight(qw, sc, zs, 4, 64)
    x = _x(m, 320, torch.float32, device)
    y = QL.run_packed(x, packed.to(device), table.to(device), None, 4, force=path)
    close(y, REF(x.cpu(), qw, sc, zs, bits=4, group=64), torch.float32)


def test_splits_k(device):
    from slimgraph.codegen.triton.kernels import qlinear as QL
    splits, cps = QL.split_k(n_chunks=64, n_blocks=1, device=device)
    assert splits > 1 and splits * cps >= 64 and (splits - 1) * cps < 64
    assert QL.split_k(n_chunks=64, n_blocks=10 ** 4, device=device) == (1, 64)   # enough programs: no split


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 17])
def test_half_activations(device, close, dtype, m):
    from slimgraph.codegen.triton.kernels import qlinear as QL
    qw, sc, zs = _weight(40, 256, 4, 128, True)
    sc = sc.half()   # f16 scales, as quantize-weights{scale_dtype=f16} stores them
    x = _x(m, 256, dtype, device) * 0.1
    y = QL.qlinear(x, qw.to(device), sc.to(device), bits=4, group=128)
    ref = REF(x.cpu(), qw, sc, bits=4, group=128)
    assert y.dtype == dtype
    err = (y.float().cpu() - ref.float()).abs().max()
    assert err <= 2e-2 * ref.float().abs().max(), err   # the module docstring's f16/bf16 bound


@pytest.mark.parametrize("bits,sym", [(4, True), (4, False), (8, False)])
def test_prepack_contract(device, close, bits, sym):
    """prepack returns {input index: tensor}; the launcher recognizes the packed layout by the table."""
    from slimgraph.codegen.lowering import get_lowering
    low = get_lowering("triton", "qlinear")
    qw, sc, zs = _weight(40, 192, bits, 64, sym)
    bias = torch.randn(40)
    inputs = [qw, sc] + ([zs] if zs is not None else []) + [bias]
    node = types.SimpleNamespace(attrs={"bits": bits, "group": 64})
    packed = low.prepack(node, {i + 1: t for i, t in enumerate(inputs)})
    assert set(packed) == ({1, 2} if sym else {1, 2, 3})
    assert packed[2].shape == (3, 2, 40) and packed[1].shape[1] == 40      # table [G, 2, N]; K-major weight
    if not sym:
        assert packed[3].numel() == 0          # the zero points moved into the table
    new = [packed.get(i + 1, t) for i, t in enumerate(inputs)]
    x = _x(5, 192, torch.float32, device)
    y = low.fn(x, *[t.to(device) for t in new], bits=bits, group=64)
    close(y, REF(x.cpu(), *inputs, bits=bits, group=64), torch.float32)


def test_pack_roundtrip():
    from slimgraph.codegen.triton.kernels import qlinear as QL
    for bits in (4, 8):
        qw, sc, zs = _weight(24, 160, bits, 32, False)
        packed, table = QL.pack_weight(qw, sc, zs, bits, 32)
        assert torch.equal(QL.unpack_weight(packed, table, bits, 160), Q.dequantize(qw, sc, zs, bits, 32))


def test_unsupported_dtype_falls_back_with_a_warning(device):
    from slimgraph.codegen.triton.kernels import qlinear as QL
    from slimgraph.codegen.triton.kernels._common import SlowPathWarning
    qw, sc, zs = (t.to(device) for t in _weight(16, 64, 4, 32, False))
    x = torch.randn(2, 64, dtype=torch.float64, device=device)
    with pytest.warns(SlowPathWarning, match="qlinear.*float64"):
        y = QL.qlinear(x, qw, sc, zs, bits=4, group=32)
    assert torch.equal(y, REF(x, qw, sc, zs, bits=4, group=32))
    packed, table = QL.pack_weight(qw, sc, zs, 4, 32)   # prepacked inputs fall back through unpack_weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y2 = QL.qlinear(x, packed, table, torch.empty(0, 0, dtype=torch.uint8, device=device), bits=4, group=32)
    torch.testing.assert_close(y2, y)


def test_mismatched_input_dim_is_an_error(device):
    from slimgraph.codegen.triton.kernels import qlinear as QL
    qw, sc, zs = (t.to(device) for t in _weight(16, 128, 4, 32, False))
    x = torch.randn(2, 96, device=device)
    with pytest.raises(ValueError, match="input last dim 96 does not match the weight in=128"):
        QL.qlinear(x, qw, sc, zs, bits=4, group=32)
    packed, table = QL.pack_weight(qw, sc, zs, 4, 32)
    with pytest.raises(ValueError, match="input last dim 96 does not match the prepacked weight"):
        QL.qlinear(x, packed, table, bits=4, group=32)


def test_empty_batch(device):
    from slimgraph.codegen.triton.kernels import qlinear as QL
    qw, sc, _ = (t.to(device) if t is not None else None for t in _weight(16, 128, 4, 32, True))
    assert QL.qlinear(torch.randn(0, 128, device=device), qw, sc, bits=4, group=32).shape == (0, 16)
