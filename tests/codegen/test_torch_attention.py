"""The torch target's `attention` kernel (codegen/torch_kernels.py): a call over a cache (a speculative verify)
computes each query row bit for bit as the one-token decode step at its place computes it, and what the
reference computes up to rounding."""
import pytest
import torch

from slimgraph.codegen.torch_kernels import attention
from slimgraph.ir.opset import nn as ref

HK, G, HD = 3, 3, 64        # SmolLM2's attention: 9 query heads over 3 key/value heads of 64


def _step(q, k, v, mask, pos, keys):
    """The decode step of query row `pos`: its own call, over the keys `keys` (indices) in order."""
    m = None if mask is None else mask[..., pos:pos + 1, keys]
    return attention(q[..., pos:pos + 1, :], k[..., keys, :], v[..., keys, :], m, causal=False, scale=HD ** -0.5)


@pytest.mark.parametrize("past", [1, 7, 13, 40, 46, 61, 130])
@pytest.mark.parametrize("n", [2, 5, 9])
def test_chain_verify_rows_are_bit_identical_to_steps(past, n):
    torch.manual_seed(past * 10 + n)
    q, k, v = torch.randn(1, HK * G, n, HD), torch.randn(1, HK, past + n, HD), torch.randn(1, HK, past + n, HD)
    mask = torch.ones(1, 1, n, past + n, dtype=torch.bool).tril(past)      # the decoder's verify mask
    got = attention(q, k, v, mask, causal=True, scale=HD ** -0.5)
    for i in range(n):
        assert torch.equal(got[..., i:i + 1, :], _step(q, k, v, None, i, list(range(past + i + 1)))), i
    torch.testing.assert_close(got, ref.attention(q, k, v, mask, causal=True, scale=HD ** -0.5))


@pytest.mark.parametrize("past", [7, 46])
def test_tree_and_padded_verify_rows_are_bit_identical_to_steps(past):
    """A tree (node i sees the cache and its ancestors) over a batch with a left-padded row."""
    torch.manual_seed(past)
    parents = [-1, 0, 0, 1, 2, 4]
    n = len(parents)
    local = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents):
        while p >= 0:
            local[i, p], p = True, parents[p]
    q, k, v = torch.randn(2, HK * G, n, HD), torch.randn(2, HK, past + n, HD), torch.randn(2, HK, past + n, HD)
    mask = torch.ones(2, 1, n, past + n, dtype=torch.bool)
    mask[..., past:] = local
    mask[1, ..., :3] = False                                                  # row 1: three left pads
    got = attention(q, k, v, mask, causal=False, scale=HD ** -0.5)
    for i in range(n):
        keys = list(range(past)) + [past + j for j in range(n) if local[i, j]]
        assert torch.equal(got[..., i:i + 1, :], _step(q, k, v, mask, i, keys)), i
    torch.testing.assert_close(got, ref.attention(q, k, v, mask, causal=False, scale=HD ** -0.5))


def test_the_row_by_row_verify_runs_only_where_it_makes_the_verify_exact():
    """Float GEMMs round a k-row product differently from k 1-row ones anyway: there the codegen emits the
    batched kernel (one SDPA call), and the row-by-row one only where every matmul is a packed int kernel."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import slimgraph
    from slimgraph.codegen import torch_kernels
    from tiny_lm import tiny_llama
    ex = (torch.zeros(1, 4, dtype=torch.long),)
    fp32 = slimgraph.optimize(tiny_llama(), ex, target="torch")
    int4 = slimgraph.optimize(tiny_llama(), ex, target="torch", pipeline=(
        "canonicalize,quantize-weights{bits=4,group=32},quantize-weights{bits=8,group=0,include=[lm_head.weight]},"
        "fuse-dequant-matmul,cse,dce"))
    assert not torch_kernels.verify_as_steps(fp32.graph) and torch_kernels.verify_as_steps(int4.graph)
    code = {name: c.runner.code for name, c in (("fp32", fp32), ("int4", int4))}
    assert "attention_batched" in code["fp32"] and "attention_batched" not in code["int4"], code


def test_float_medusa_heads_on_a_quantized_base_keep_the_verify_row_by_row():
    """Medusa heads are float `linear`s on the last hidden state: they pick the candidates, but the verified
    tokens (the base's logits) and the cache never depend on them, so an int4 base with float heads still
    verifies row by row (exact); a float GEMM the logits depend on (an fp32 lm_head) still turns it off."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import slimgraph
    from slimgraph.codegen import torch_kernels
    from tiny_lm import tiny_llama
    ex = (torch.zeros(1, 4, dtype=torch.long),)
    heads = "insert-draft-heads{num_heads=2}"
    int4 = slimgraph.optimize(tiny_llama(), ex, target="torch", pipeline=(
        "canonicalize,quantize-weights{bits=4,group=32},quantize-weights{bits=8,group=0,include=[lm_head.weight]},"
        f"fuse-dequant-matmul,cse,dce,{heads}"))
    assert any(n.op == "linear" for n in int4.graph.nodes)            # the heads' float GEMMs
    assert torch_kernels.verify_as_steps(int4.graph) and "attention_batched" not in int4.runner.code
    float_lm_head = slimgraph.optimize(tiny_llama(), ex, target="torch", pipeline=(
        f"canonicalize,quantize-weights{{bits=4,group=32}},fuse-dequant-matmul,cse,dce,{heads}"))
    assert not torch_kernels.verify_as_steps(float_lm_head.graph)


@pytest.mark.parametrize("hq,hk", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("b", [1, 3])
def test_a_padding_mask_broadcast_over_the_queries_computes_what_the_reference_does(hq, hk, causal, b):
    """A graph's own padding mask [b, 1, 1, keys] or [1, keys] (broadcast over the query rows, as HF builds one), over
    a cache of past keys: every path of the kernel (rows as steps, the one-call GQA fold) broadcasts it as the
    reference does; it crashed (reshape of a [b, 1, 1, lq] slice to [lq, lq]) or, where b x lq happened to be a
    multiple of lq x lq, read the batch axis as query rows (wrong outputs)."""
    torch.manual_seed(b * 10 + hk)
    lq, lk = 3, 11
    q, k, v = torch.randn(b, hq, lq, HD), torch.randn(b, hk, lk, HD), torch.randn(b, hk, lk, HD)
    pad = torch.ones(b, 1, 1, lk, dtype=torch.bool)
    pad[0, ..., :2] = False                                                   # row 0: two left pads
    for mask in (pad, pad[0, 0]):
        got = attention(q, k, v, mask, causal=causal, scale=HD ** -0.5)
        torch.testing.assert_close(got, ref.attention(q, k, v, mask, causal=causal, scale=HD ** -0.5))


def own_attention(q, k, v, mask=None, *, causal, scale, window=0, sinks=0, softcap=0.0):
    """Another target's attention kernel (as the triton target's is), for the test below."""
    return ref.attention(q, k, v, mask, causal=causal, scale=scale, window=window, sinks=sinks, softcap=softcap)


@pytest.mark.parametrize("pipeline", ["canonicalize", "canonicalize,sparsify-attention{window=8,sinks=2}"])
def test_a_target_that_reuses_the_torch_codegen_keeps_its_own_attention_kernel(pipeline):
    """torch_fx.build(graph, lower=...) (the triton target's build) emits the given target's attention kernel: the
    torch kernel's variants (the one-call `attention_batched` where float GEMMs run, the ring rows) replace the
    torch kernel only; they replaced any target's (an fp32 graph on the cuda target lost its triton attention)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import slimgraph
    from slimgraph.codegen import torch_fx
    from slimgraph.codegen.lowering import Lowering, get_lowering
    from tiny_lm import tiny_llama
    graph = slimgraph.optimize(tiny_llama(), (torch.zeros(1, 4, dtype=torch.long),), target="reference",
                               pipeline=pipeline).graph
    mine = Lowering("other", "attention", own_attention)
    code = torch_fx.build(graph, lower=lambda op: mine if op == "attention" else get_lowering("torch", op))
    src = code.read_bytes(torch_fx.SOURCE).decode()
    assert "own_attention" in src and "attention_batched" not in src and "attention_ring" not in src, src


@pytest.mark.parametrize("pads", [0, 2])
def test_ring_rows_compute_what_the_reference_does(pads):
    """`attention_ring` (a verify over a ring state: sinks, then the window, then the new rows) drops from each
    row's keys the ring rows that left its window (as its step's slid ring has), which changes no value: it
    computes the reference's attention, for a chain and a tree, with and without a left-padded batch row."""
    from slimgraph.codegen.torch_kernels import attention_ring
    torch.manual_seed(pads)
    S, W, n = 2, 6, 5                                    # a full ring of S + W rows, 5 new rows
    past = S + W
    pos = torch.arange(past + n) + 20                    # ring rows: 2 sinks at 0, 1 then positions 22..27
    pos[:S] = torch.arange(S)
    for parents in ([-1, 0, 1, 2, 3], [-1, 0, 0, 1, 2]):
        local = torch.eye(n, dtype=torch.bool)
        depth = torch.zeros(n, dtype=torch.long)
        for i, p in enumerate(parents):
            depth[i] = 0 if p < 0 else depth[p] + 1
            while p >= 0:
                local[i, p], p = True, parents[p]
        qpos = past + 20 + depth
        keep = (pos[None, :past] < S) | (qpos[:, None] - pos[None, :past] <= W)
        mask = torch.cat((keep, local), 1)[None, None].repeat(2, 1, 1, 1)
        mask[1, ..., S:S + pads] = False                 # batch row 1: pads after its sinks
        q, k, v = torch.randn(2, HK * G, n, HD), torch.randn(2, HK, past + n, HD), torch.randn(2, HK, past + n, HD)
        got = attention_ring(q, k, v, mask, causal=False, scale=HD ** -0.5)
        torch.testing.assert_close(got, ref.attention(q, k, v, mask, causal=False, scale=HD ** -0.5))
