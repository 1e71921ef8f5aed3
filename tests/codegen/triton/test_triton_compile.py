"""Every launched kernel variant compiles for a GPU (sm_90, H100/H200) with triton's own compiler and ptxas,
on this GPU-less machine: catches what the interpreter accepts but the compiler rejects (codegen/triton/
kernels/aot.py). Runs in a subprocess: this process's kernels are interpreted and cannot be compiled."""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import itertools, sys, torch
    from slimgraph.codegen.triton.kernels import aot, qlinear as QL, norms, rope, attention as A
    from slimgraph.ir import quant_format as Q
    FULL = sys.argv[1] == "full"
    bf16, f16, f32 = torch.bfloat16, torch.float16, torch.float32
    calls = []
    def rec(fn):
        calls.extend(aot.record(fn))
    def qcase(bits, group, sym, m, dtype, bias):
        qw, sc, zs = Q.store(*Q.quantize_rtn(torch.randn(64, 256), bits, group, sym), bits, sym, torch.float16)
        x = torch.randn(m, 256, dtype=dtype)
        rec(lambda: QL.qlinear(x, qw, sc, zs, torch.randn(64) if bias else None, bits=bits, group=group))
    def attn(lq, lk, h, hk, dtype, mask=None, **kw):
        q, k = torch.randn(2, h, lq, 64, dtype=dtype), torch.randn(2, hk, lk, 64, dtype=dtype)
        m = None if mask is None else (torch.ones(2, 1, lq, lk, dtype=torch.bool) if mask == "bool"
                                       else torch.zeros(2, h, lq, lk, dtype=dtype))
        rec(lambda: A.attention(q, k, k, m, **kw))
    if FULL:   # each path and option in bf16, each dtype on the main paths (~45 variants, a few minutes)
        for bits, group, m in itertools.product((4, 8), (128, 32), (1, 128)):
            qcase(bits, group, bits == 4, m, bf16, 0)
        for m, dt in itertools.product((1, 16), (f16, f32)):
            qcase(4, 128, True, m, dt, m == 16)
        qcase(4, 128, False, 128, bf16, 1)
        for lq, mask, kw in itertools.product((1, 100), (None, "bool", "add"),
                                              ({"causal": True}, {"causal": True, "window": 32, "sinks": 4}, {})):
            attn(lq, 200, 8, 2, bf16, mask, **kw)
        for lq, dt in itertools.product((1, 100), (f16, f32)):
            attn(lq, 200, 8, 2, dt, None, causal=True)
        dts = (bf16, f16, f32)
    else:
        qcase(4, 128, True, 1, bf16, 0)
        qcase(4, 32, False, 16, bf16, 1)
        attn(1, 200, 8, 2, bf16, "bool", causal=True, window=32, sinks=4)
        attn(100, 200, 8, 2, bf16, "bool", causal=True)
        dts = (bf16,)
    for dt in dts:
        x, w = torch.randn(3, 4, 96, dtype=dt), torch.randn(96, dtype=dt)
        rec(lambda: norms.rms_norm(x, w, eps=1e-6))
        rec(lambda: norms.layer_norm(x, w, w, axes=1, eps=1e-5))
        rec(lambda: rope.rope(x.view(3, 4, 1, 96), w, w))
    seen = set()
    for kernel, args, consts in calls:
        key = (kernel.__name__, str(aot.signature(kernel, args, consts)), str(sorted(consts.items())))
        if key in seen:
            continue
        seen.add(key)
        aot.compile_call(kernel, args, consts, arch=90)
    print("compiled", len(seen), "variants of", sorted({k[0] for k in seen}))
''')


def _compile(mode):
    pytest.importorskip("triton.backends.nvidia", reason="triton without its NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stdout


def test_kernels_compile_for_sm90(device):
    out = _compile("fast")
    for k in ("_qgemv_kernel", "_qgemm_kernel", "_prefill_kernel", "_decode_kernel", "_rms_norm_kernel",
              "_layer_norm_kernel", "_rope_kernel"):
        assert k in out, out


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_sm90(device):
    assert "compiled" in _compile("full")
