"""An `attention` mask may broadcast over any of its dims (SDPA's rule): a key-padding mask [b, 1, 1, kv]
(nn.TransformerEncoder's src_key_padding_mask, a user's SDPA call), one per query [b, 1, q, 1], one per head
[b, h, 1, kv], a 2-D [1, kv]. Every target computes what SDPA computes with it, where the query and key
lengths differ too (a cache before the new rows: the torch target's row-by-row path). Before: ONNX Runtime's
Attention kernel failed at run time on a mask whose last two dims were not [q, kv]; the torch target's
row-by-row path indexed past a [.., q, 1] mask."""
import pytest
import torch
import torch.nn.functional as F

import slimgraph

TARGETS = ["reference", "torch", pytest.param("onnx", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("onnxruntime") is None, reason="needs onnxruntime"))]


class SDPA(torch.nn.Module):
    def forward(self, q, k, v, m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m)


def _masks():
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(2, 4, 5, 6, generator=g) > 0.3
    keep[..., 0] = True
    return {"b11k_bool": keep[:, :1, :1], "b11k_float": torch.where(keep[:, :1, :1], 0.0, -1e9),
            "bh1k": keep[:, :, :1], "b1q1": keep[:, :1, :, :1] | keep[:, :1, :, 1:2], "1k": keep[0, 0, :1],
            "qk": keep[0, 0], "b1qk": keep[:, :1]}


@pytest.mark.parametrize("target", TARGETS)
def test_broadcast_masks_match_sdpa(target):
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 4, 6, 8, generator=g)
    for name, m in _masks().items():
        m = m.clone()
        if not m.any(-1).all():
            m[..., 0] = True if m.dtype == torch.bool else 0.0
        fast = slimgraph.optimize(SDPA(), (q, k, v, m), target=target)
        assert fast.graph.op_counts().get("attention") == 1, name
        err = (fast(q, k, v, m) - SDPA()(q, k, v, m)).abs().max().item()
        assert err < 1e-5, (name, err)


@pytest.mark.parametrize("target", TARGETS)
def test_transformer_encoder_key_padding_mask(target):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0)
    enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.e = enc

        def forward(self, x, pad):
            return self.e(x, src_key_padding_mask=pad)

    x, pad = torch.randn(2, 5, 16), torch.zeros(2, 5, dtype=torch.bool)
    pad[0, -2:] = True
    fast = slimgraph.optimize(M().eval(), (x, pad), target=target)
    with torch.no_grad():
        want = M().eval()(x, pad)
    assert (fast(x, pad) - want).abs().max().item() < 1e-5
