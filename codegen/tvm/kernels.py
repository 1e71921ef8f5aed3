"""slimgraph's own TE/TIR kernels for the `cpu` target: packed-weight dequantization and `qlinear`.

Packed layout: ir/quant_format.py (int4: two codes per byte, column 2k in the low nibble; groups along K;
symmetric int4 has the implied zero point 8, int8 zero 0).

    dequantize_te(qweight, scales, zeros, bits, group, dtype)   # te.Tensor [out, in]
    qlinear(lw, node, x, qweight, scales, zeros, bias, bits, group)   # Relax expr: linear(x, W) (+ bias)
    qembedding(lw, node, ids, qweight, scales, zeros, bits, group, dtype)   # the looked-up rows, unpacked
"""
from __future__ import annotations
import functools

from tvm import te, tirx

from ...ir import quant_format as Q
from ...ir.opset.quant import ACT_QMAX


def _code(qweight, bits, o, i):
    if bits == 8:
        return qweight[o, i].astype("int32")
    byte = qweight[o, tirx.floordiv(i, 2)].astype("int32")
    return tirx.bitwise_and(tirx.shift_right(byte, tirx.floormod(i, 2) * 4), 15)


def dequantize_te(qweight, scales, zeros, bits: int, group: int, dtype: str = "float32"):
    """W[o, i] = (q[o, i] - zero[o, i // g]) * scale[o, i // g] as a TE compute (ir/quant_format.py)."""
    out = qweight.shape[0]   # static for a weight, symbolic for qembedding's looked-up rows
    k = int(qweight.shape[1]) * (2 if bits == 4 else 1)
    g = Q.group_size(group, k)
    implied = Q.implied_zero(bits)

    def w(o, i):
        q = _code(qweight, bits, o, i).astype("float32")
        z = zeros[o, tirx.floordiv(i, g)].astype("float32") if zeros is not None else tirx.const(implied, "float32")
        return ((q - z) * scales[o, tirx.floordiv(i, g)].astype("float32")).astype(dtype)
    return te.compute((out, k), w, name="dequantize")


LANES = 16   # f32 lanes of one AVX-512 register (two AVX2 ones): the accumulator width of the kernels
ROWS = 16    # output rows per parallel task of the GEMV kernels (their scratch accumulators are declared per task)
# Every make_* is cached (functools.cache): a kernel is parsed from TVMScript once per distinct shape and
# options (up to ~1 s each), not once per node that asks for it (a model's 120+ qlinears ask for ~5 shapes).
# Scratch buffers (accumulators, tables) are declared in the default scope, never scope="local": TVM 0.27 lowers a
# "local" buffer on the CPU to a TVMBackendAllocWorkspace/FreeWorkspace pair per loop iteration that declares it,
# and LLVM must then keep the buffer in memory (a store per update); a default-scope buffer of constant size under
# 1024 bytes (TVM's kMaxStackAlloca) becomes a stack alloca, which LLVM promotes to registers. Measured on the W4A8
# panel GEMV (3072 x 576, one row): 28 -> 16 us with its weights in cache, 47 -> 40 us out of cache.


def int4_gemv_ok(bits: int, group: int, k: int, dtype: str) -> bool:
    """The int4 kernel takes f32 activations and groups whose half (bytes per group) is a multiple of 8."""
    g = Q.group_size(group, k)
    return bits == 4 and dtype == "float32" and k % g == 0 and (g // 2) % 8 == 0


@functools.cache
def make_int4_gemv(n: int, k: int, group: int, scale_dtype: str, zero_dtype: str | None):
    """y[m, o] = sum_k x_split[m, k] * W[o, k] for int4 W [n, k] packed as ir/quant_format.py says.

    x_split is x with each group's even columns first, then its odd ones (`split_groups`), so both nibbles
    of a byte meet contiguous activations. Per output row: one LANES-wide f32 accumulator, the nibbles
    unpacked and scaled in registers (no float weight is written anywhere), a horizontal sum at the end.
    Outputs are the outer, parallel loop and rows of x the inner one, so a weight row is read from memory
    once per call whatever M is."""
    from tvm.script import tirx as T
    g = Q.group_size(group, k)
    ng, hb = k // g, g // 2
    lanes = min(LANES, hb)
    jo_n = hb // lanes
    has_zero = zero_dtype is not None
    zshape = (n, ng) if has_zero else (1, 1)
    zdt = zero_dtype or "uint8"

    @T.prim_func(private=True)
    def int4_gemv(x_h: T.handle, qw: T.Buffer((n, k // 2), "uint8"), sc: T.Buffer((n, ng), scale_dtype),
                  zp: T.Buffer(zshape, zdt), y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m_n = T.int64()
        x = T.match_buffer(x_h, (m_n, k), "float32")
        y = T.match_buffer(y_h, (m_n, n), "float32")
        for oc in T.parallel((n + ROWS - 1) // ROWS):
            acc = T.decl_buffer((lanes,), "float32")
            for oi, m in T.grid(ROWS, m_n):
                if oc * ROWS + oi < n:
                    o = T.meta_var(oc * ROWS + oi)
                    for l in T.vectorized(lanes):
                        acc[l] = T.float32(0)
                    for gi in range(ng):
                        for jo in range(jo_n):
                            for l in T.vectorized(lanes):
                                # no let-bindings in this loop: TVM 0.27 vectorizes them wrongly
                                acc[l] = acc[l] + T.Cast("float32", sc[o, gi]) * (
                                    (T.Cast("float32", T.bitwise_and(T.Cast("int32", qw[o, gi * hb + jo * lanes + l]), 15))
                                     - (T.Cast("float32", zp[o, gi]) if has_zero else T.float32(8)))
                                    * x[m, gi * g + jo * lanes + l]
                                    + (T.Cast("float32", T.shift_right(T.Cast("int32", qw[o, gi * hb + jo * lanes + l]), 4))
                                       - (T.Cast("float32", zp[o, gi]) if has_zero else T.float32(8)))
                                    * x[m, gi * g + hb + jo * lanes + l])
                    for l in range(1, lanes):
                        acc[0] = acc[0] + acc[l]
                    y[m, o] = acc[0]
    return int4_gemv


PREFETCH_ROWS = 16   # weight rows ahead the int4 kernels prefetch (~4.6 KB at k = 576): measured best of 8-96,
                     # 1.2-1.4x out of cache on one core (benchmarks/RESULTS.md, fifth session)


def prefetch(buf, row, col):
    """A read prefetch of buf[row, col] into all cache levels (llvm.prefetch; past the end is harmless: no fault)."""
    from tvm.script import tirx as T
    return T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(buf[row, col]), T.int32(0), T.int32(3),
                              T.int32(1))


def has_avx512() -> bool:
    """Whether this host's LLVM CPU (the `cpu` target's, codegen/tvm/target.py) has AVX-512F."""
    import tvm
    from .target import _target_spec
    return bool(tvm.target.codegen.llvm_cpu_has_features("avx512f", tvm.target.Target(_target_spec())))


ROW_BLOCK = 4   # activation rows (tokens of a verify or prefill) the int4 kernels run per weight load
RB = 4   # weight rows the lookup kernel works on at once: RB independent accumulator chains share each x load


def int4_lookup_ok(n: int, k: int, group: int) -> bool:
    """The AVX-512 lookup kernel takes groups of a multiple of 32 columns and n a multiple of RB."""
    g = Q.group_size(group, k)
    return k % g == 0 and (g // 2) % LANES == 0 and n % RB == 0 and has_avx512()


@functools.cache
def make_int4_lookup_gemv(n: int, k: int, group: int, scale_dtype: str, zero_dtype: str | None):
    """make_int4_gemv's contract (same x_split input, same packed weights) by table lookup, for AVX-512.

    Per weight row and group, the 16 values a code can take, (c - zero) * scale for c = 0..15, fill one
    register; `vpermps` (llvm.x86.avx512.permvar.sf.512, which reads only an index's low 4 bits) turns
    16 bytes of codes into 16 f32 weights for each nibble: no mask, no int->float conversion, no scaling
    in the inner loop. A weight is (c - zero) * scale as in the reference; only the order of the f32
    additions differs. RB rows at a time share each activation load, and rows of x run in blocks of
    ROW_BLOCK (then 2, then 1; prefill, speculative verify) that share each looked-up weight vector. Each row
    of x is computed alike whatever M is: a verify of k tokens equals k decode steps bit for bit."""
    from tvm.script import tirx as T
    if ROW_BLOCK > 4:   # the accumulators hold rows 0-1 and 2-3 (two stack buffers, see `block`)
        raise NotImplementedError(f"make_int4_lookup_gemv: ROW_BLOCK = {ROW_BLOCK}; its accumulators hold 4 rows")
    g = Q.group_size(group, k)
    ng, hb = k // g, g // 2
    jo_n = hb // LANES
    has_zero = zero_dtype is not None
    zshape = (n, ng) if has_zero else (1, 1)
    zdt = zero_dtype or "uint8"

    def V(i):
        return T.ramp(i, 1, LANES)

    def lookup(tab, codes):
        return T.call_llvm_pure_intrin(f"float32x{LANES}", "llvm.x86.avx512.permvar.sf.512", tab, codes)

    def table(sc, zp, o, gi):
        z = T.Cast("float32", zp[o, gi]) if has_zero else T.float32(8)
        return (T.Cast(f"float32x{LANES}", T.ramp(T.int32(0), 1, LANES)) - T.broadcast(z, LANES)) \
            * T.broadcast(T.Cast("float32", sc[o, gi]), LANES)

    def low(qw, o, i):
        return T.Cast(f"int32x{LANES}", qw[o, V(i)])

    def high(qw, o, i):
        return T.shift_right(T.Cast(f"int32x{LANES}", qw[o, V(i)]), T.broadcast(4, LANES))

    @T.macro
    def fma_row(acc, i, m, o, r, gi, jo, qw, x, tab):   # acc[i] += row m of x . the looked-up weights of row o
        acc[i, V(0)] = acc[i, V(0)] \
            + lookup(tab[r, V(0)], low(qw, o, gi * hb + jo * LANES)) * x[m, V(gi * g + jo * LANES)] \
            + lookup(tab[r, V(0)], high(qw, o, gi * hb + jo * LANES)) * x[m, V(gi * g + hb + jo * LANES)]

    @T.macro
    def finish_row(acc, i, m, o, y):
        for l in T.unroll(1, LANES):
            acc[i, 0] = acc[i, 0] + acc[i, l]
        y[m, o] = acc[i, 0]

    @T.macro
    def block(o0, m0, rows, qw, sc, zp, x, y, acc01, acc23, tab):   # weight rows o0 .. o0 + RB - 1, x rows m0 ..
        # m0 + rows - 1; rows 0-1 accumulate in acc01 and rows 2-3 in acc23 (two buffers of 512 bytes: each under
        # TVM's stack-allocation limit, so both stay in registers)
        for i in T.unroll(min(rows, 2) * RB):
            acc01[i, V(0)] = T.broadcast(T.float32(0), LANES)
        for i in T.unroll(max(rows - 2, 0) * RB):
            acc23[i, V(0)] = T.broadcast(T.float32(0), LANES)
        for gi in range(ng):
            for r in T.unroll(RB):
                tab[r, V(0)] = table(sc, zp, o0 + r, gi)
                T.evaluate(prefetch(qw, o0 + r + PREFETCH_ROWS, gi * hb))
            for jo in range(jo_n):
                for r in T.unroll(RB):
                    for mb in T.unroll(rows):   # each looked-up weight vector serves every row of x in the block
                        if mb < 2:
                            fma_row(acc01, mb * RB + r, m0 + mb, o0 + r, r, gi, jo, qw, x, tab)
                        else:
                            fma_row(acc23, (mb - 2) * RB + r, m0 + mb, o0 + r, r, gi, jo, qw, x, tab)
        for mb in T.unroll(rows):
            for r in T.unroll(RB):
                if mb < 2:
                    finish_row(acc01, mb * RB + r, m0 + mb, o0 + r, y)
                else:
                    finish_row(acc23, (mb - 2) * RB + r, m0 + mb, o0 + r, y)

    @T.prim_func(private=True)
    def int4_lookup_gemv(x_h: T.handle, qw: T.Buffer((n, k // 2), "uint8"), sc: T.Buffer((n, ng), scale_dtype),
                         zp: T.Buffer(zshape, zdt), y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m_n = T.int64()
        x = T.match_buffer(x_h, (m_n, k), "float32")
        y = T.match_buffer(y_h, (m_n, n), "float32")
        for oc in T.parallel((n + ROWS - 1) // ROWS):
            acc01 = T.decl_buffer((2 * RB, LANES), "float32")
            acc23 = T.decl_buffer((2 * RB, LANES), "float32")
            tab = T.decl_buffer((RB, LANES), "float32")
            for ob in range(ROWS // RB):
                if oc * ROWS + ob * RB < n:
                    for mo in range(m_n // ROW_BLOCK):
                        block(oc * ROWS + ob * RB, mo * ROW_BLOCK, ROW_BLOCK, qw, sc, zp, x, y, acc01, acc23, tab)
                    if m_n % ROW_BLOCK >= 2:
                        block(oc * ROWS + ob * RB, m_n // ROW_BLOCK * ROW_BLOCK, 2, qw, sc, zp, x, y, acc01, acc23, tab)
                    if m_n % 2 == 1:
                        block(oc * ROWS + ob * RB, m_n - 1, 1, qw, sc, zp, x, y, acc01, acc23, tab)
    return int4_lookup_gemv


def has_vnni() -> bool:
    """Whether this host's LLVM CPU has AVX-512 VNNI (`vpdpbusd`: u8 x s8 dot products into int32)."""
    import tvm
    from .target import _target_spec
    t = tvm.target.Target(_target_spec())
    return all(tvm.target.codegen.llvm_cpu_has_features(f, t) for f in ("avx512f", "avx512vl", "avx512vnni"))


@functools.cache
def make_quantize_rows(k: int, group: int, bits: int = 8):
    """x [b, s, k] f32 (read as m = b s rows; other ranks are viewed so by `batch_rows`) -> (q [m, k] i8,
    ss [m, 2 k/g] f32): ir/opset/quant.py quantize_activation's codes, and per
    row and group its scale (ss[:, :k/g]; s = max|x| / 127, q = clamp(round_half_even(x / s), -127, 127)) and the
    group's sum of codes (ss[:, k/g:], the zero-point term of a W4A8 dot product; |sum| <= 127 g < 2^24, so the
    f32 holds it exactly). One buffer for both: each output is a VM allocation per call, ~120 per decode step.

    bits=16 (int16 codes, |q| <= 32639, s = max|x| / 32639): each row of x gives two rows of int8 codes, q = 256 hi
    + lo with hi = floor((q + 128) / 256) in row 2m (its scale 256 s) and lo in row 2m + 1 (scale s), each with
    its own code sums: a W4A8 kernel on those 2m rows that sums each pair (make_vnni_panel_gemv pairs=True) gives
    the int16 product exactly in integers."""
    from tvm.script import tirx as T
    g = Q.group_size(group, k)
    ng = k // g
    lanes = _lanes(g)
    jn = g // lanes

    assert bits in (8, 16), bits
    qmax = float(ACT_QMAX[bits])
    xr = 1 if bits == 8 else 2   # rows of codes per row of x

    @T.macro
    def body(x, q, s, m_n, mx, qs, st):   # mx, qs: lanes of the group's max |x| and code sums; st: scale, divisor
        with T.sblock("root"):   # Relax's reshape-pattern check wants a one-input kernel's body in a block
            for m, gi in T.grid(m_n, ng):
                for l in T.vectorized(lanes):
                    mx[l] = T.float32(0)
                    qs[l] = 0
                    qs[lanes + l] = 0
                for j in range(jn):
                    for l in T.vectorized(lanes):
                        # a NaN or inf in the group makes its scale NaN, as in the reference (max drops NaN)
                        mx[l] = T.max(mx[l], T.Select(T.isfinite(x[m, gi * g + j * lanes + l]),
                                                      T.fabs(x[m, gi * g + j * lanes + l]), T.float32(float("inf"))))
                for l in range(1, lanes):
                    mx[0] = T.max(mx[0], mx[l])
                st[0] = T.Select(mx[0] < T.float32(float("inf")), mx[0] / T.float32(qmax), T.float32(float("nan")))
                st[1] = T.Select(st[0] > T.float32(0), st[0], T.float32(1))
                for j in range(jn):
                    for l in T.vectorized(lanes):
                        code = T.meta_var(T.max(T.min(T.nearbyint(x[m, gi * g + j * lanes + l] / st[1]),
                                                      T.float32(qmax)), T.float32(-qmax)))
                        if bits == 8:
                            q[m, gi * g + j * lanes + l] = T.Cast("int8", code)
                        else:   # q = 256 hi + lo, hi = floor((q + 128) / 256) by an arithmetic shift
                            hi = T.meta_var(T.shift_right(T.Cast("int32", code) + 128, 8))
                            q[2 * m, gi * g + j * lanes + l] = T.Cast("int8", hi)
                            q[2 * m + 1, gi * g + j * lanes + l] = T.Cast("int8", T.Cast("int32", code)
                                                                          - T.shift_left(hi, 8))
                            qs[lanes + l] = qs[lanes + l] + T.Cast("int32", q[2 * m + 1, gi * g + j * lanes + l])
                        qs[l] = qs[l] + T.Cast("int32", q[xr * m, gi * g + j * lanes + l])
                for l in range(1, lanes):
                    qs[0] = qs[0] + qs[l]
                    qs[lanes] = qs[lanes] + qs[lanes + l]
                if bits == 8:
                    s[m, gi] = st[0]
                    s[m, ng + gi] = T.Cast("float32", qs[0])
                else:
                    s[2 * m, gi] = st[0] * T.float32(256)
                    s[2 * m + 1, gi] = st[0]
                    s[2 * m, ng + gi] = T.Cast("float32", qs[0])
                    s[2 * m + 1, ng + gi] = T.Cast("float32", qs[lanes])

    @T.prim_func(private=True, s_tir=True)
    def quantize_rows(x_h: T.handle, q_h: T.handle, s_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        b_n, s_n = T.int64(), T.int64()
        x3 = T.match_buffer(x_h, (b_n, s_n, k), "float32")
        q = T.match_buffer(q_h, (xr * b_n * s_n, k), "int8")
        s = T.match_buffer(s_h, (xr * b_n * s_n, 2 * ng), "float32")
        x = T.decl_buffer((b_n * s_n, k), "float32", data=x3.data)   # the same memory as rows
        mx = T.decl_buffer((lanes,), "float32")
        qs = T.decl_buffer((2 * lanes,), "int32")
        st = T.decl_buffer((2,), "float32")
        body(x, q, s, b_n * s_n, mx, qs, st)
    return quantize_rows


def quantize_activation_te(x, group: int, bits: int = 8):
    """ir/opset/quant.py quantize_activation as a TE compute on x [m, k] (codes returned dequantized); in f32
    whatever x's dtype, the result rounded to it once, as the reference does (int16 codes are not f16 numbers)."""
    qmax = float(ACT_QMAX[bits])
    m, k = x.shape
    g = Q.group_size(group, int(k))
    r = te.reduce_axis((0, g), name="r")

    def xf(i, c):
        return x[i, c] if x.dtype == "float32" else x[i, c].astype("float32")
    big = tirx.const(float("inf"), "float32")   # stands for NaN/inf in the max (which drops NaN): the scale becomes NaN
    amax = te.compute((m, int(k) // g), lambda i, j: te.max(
        tirx.Select(tirx.isfinite(xf(i, j * g + r)), tirx.abs(xf(i, j * g + r)), big), axis=r), name="amax")

    def out(i, c):
        a = amax[i, tirx.floordiv(c, g)]
        s = tirx.Select(a < big, a / tirx.const(qmax, "float32"), tirx.const(float("nan"), "float32"))
        d = tirx.Select(s > 0, s, tirx.const(1, "float32"))
        y = tirx.max(tirx.min(tirx.nearbyint(xf(i, c) / d), qmax), -qmax) * s
        return y if x.dtype == "float32" else y.astype(x.dtype)
    return te.compute((m, k), out, name="quantize_activation")


def int8_gemv_ok(bits: int, group: int, k: int, dtype: str) -> bool:
    """The int8 kernel takes f32 activations and groups (or whole rows, group=0) of a multiple of 16 columns."""
    g = Q.group_size(group, k)
    return bits == 8 and dtype == "float32" and k % g == 0 and g % LANES == 0


@functools.cache
def make_int8_gemv(n: int, k: int, group: int, scale_dtype: str, zero_dtype: str | None):
    """y[m, o] = sum_k x[m, k] * (q[o, k] - zero[o, k // g]) * scale[o, k // g] for int8 q [n, k]
    (ir/quant_format.py; symmetric int8 has zero 0; integer zero points subtracted in int32, float ones, from
    zero_point=float, in f32). Two LANES-wide f32 accumulators per output row (two independent FMA chains),
    codes widened and scaled in registers; outputs outer and parallel."""
    from tvm.script import tirx as T
    g = Q.group_size(group, k)
    ng = k // g
    jo_n = g // LANES
    nc = 2 if jo_n % 2 == 0 else 1
    has_zero = zero_dtype is not None
    zshape = (n, ng) if has_zero else (1, 1)
    zdt = zero_dtype or "int8"
    float_zero = has_zero and "float" in zdt

    def centered(code, z):   # code - zero point, as f32
        if float_zero:
            return T.Cast("float32", code) - T.Cast("float32", z)
        return T.Cast("float32", T.Cast("int32", code) - (T.Cast("int32", z) if has_zero else 0))

    @T.prim_func(private=True)
    def int8_gemv(x_h: T.handle, qw: T.Buffer((n, k), "int8"), sc: T.Buffer((n, ng), scale_dtype),
                  zp: T.Buffer(zshape, zdt), y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m_n = T.int64()
        x = T.match_buffer(x_h, (m_n, k), "float32")
        y = T.match_buffer(y_h, (m_n, n), "float32")
        for oc in T.parallel((n + ROWS - 1) // ROWS):
            acc = T.decl_buffer((nc, LANES), "float32")
            for oi, m in T.grid(ROWS, m_n):
                if oc * ROWS + oi < n:
                    o = T.meta_var(oc * ROWS + oi)
                    for c in T.unroll(nc):
                        for l in T.vectorized(LANES):
                            acc[c, l] = T.float32(0)
                    for gi in range(ng):
                        T.evaluate(prefetch(qw, o + PREFETCH_ROWS, gi * g))
                        for jo in range(jo_n // nc):
                            for c in T.unroll(nc):
                                for l in T.vectorized(LANES):
                                    acc[c, l] = acc[c, l] + centered(qw[o, gi * g + (jo * nc + c) * LANES + l], zp[o, gi]) \
                                        * T.Cast("float32", sc[o, gi]) * x[m, gi * g + (jo * nc + c) * LANES + l]
                    for c in range(1, nc):
                        for l in T.vectorized(LANES):
                            acc[0, l] = acc[0, l] + acc[c, l]
                    for l in range(1, LANES):
                        acc[0, 0] = acc[0, 0] + acc[0, l]
                    y[m, o] = acc[0, 0]
    return int8_gemv


MB = 4   # rows of x per step of the f32 kernel: MB independent FMA chains share each weight vector load
GM, PANEL = 6, 32    # GEMM microkernel: rows of x x outputs held in registers (12 AVX-512 accumulators)


@functools.cache
def make_f32_gemv(n: int, k: int):
    """y[m, o] = sum_k x[m, k] * w[o, k] (torch Linear layout), LANES-wide accumulators over k; outputs outer
    and parallel (ROWS per task), rows of x inner in blocks of MB (a weight row is read once per call, and
    for prefill each weight vector feeds MB independent accumulators instead of one latency-bound chain).
    For the weights prepack cannot pack (n not a multiple of PANEL, or a computed weight); graph weights of
    n % PANEL == 0 take make_f32_panel_gemm."""
    from tvm.script import tirx as T
    lanes = LANES if k % LANES == 0 else 8 if k % 8 == 0 else 1
    ko_n = k // lanes

    @T.prim_func(private=True)
    def f32_gemv(x_h: T.handle, w: T.Buffer((n, k), "float32"), y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m_n = T.int64()
        x = T.match_buffer(x_h, (m_n, k), "float32")
        y = T.match_buffer(y_h, (m_n, n), "float32")
        for oc in T.parallel((n + ROWS - 1) // ROWS):
            acc = T.decl_buffer((MB, lanes), "float32")
            for oi in range(ROWS):
                if oc * ROWS + oi < n:
                    for mo in range(m_n // MB):   # whole blocks of MB rows: no bounds test in the loop
                        for mi in T.unroll(MB):
                            for l in T.vectorized(lanes):
                                acc[mi, l] = T.float32(0)
                        for ko in range(ko_n):
                            for mi in T.unroll(MB):
                                for l in T.vectorized(lanes):
                                    acc[mi, l] = acc[mi, l] + x[mo * MB + mi, ko * lanes + l] * w[oc * ROWS + oi, ko * lanes + l]
                        for mi in T.unroll(MB):
                            for l in range(1, lanes):
                                acc[mi, 0] = acc[mi, 0] + acc[mi, l]
                            y[mo * MB + mi, oc * ROWS + oi] = acc[mi, 0]
                    for m in range(m_n // MB * MB, m_n):   # the last m_n % MB rows (decode: the one row)
                        for l in T.vectorized(lanes):
                            acc[0, l] = T.float32(0)
                        for ko in range(ko_n):
                            for l in T.vectorized(lanes):
                                acc[0, l] = acc[0, l] + x[m, ko * lanes + l] * w[oc * ROWS + oi, ko * lanes + l]
                        for l in range(1, lanes):
                            acc[0, 0] = acc[0, 0] + acc[0, l]
                        y[m, oc * ROWS + oi] = acc[0, 0]
    return f32_gemv


@functools.cache
def make_layer_norm(k: int, eps: float):
    """y[m] = (x[m] - mean) / sqrt(var + eps) * w + b over rows of k (a multiple of LANES) f32 values, biased
    variance of the centered row (two passes, as ir/opset/nn.py layer_norm / torch compute it), in vectors."""
    from tvm.script import tirx as T
    kn = k // LANES

    @T.prim_func(private=True)
    def layer_norm(x_h: T.handle, w: T.Buffer((k,), "float32"), b: T.Buffer((k,), "float32"), y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m_n = T.int64()
        x = T.match_buffer(x_h, (m_n, k), "float32")
        y = T.match_buffer(y_h, (m_n, k), "float32")
        for m in T.parallel(m_n):
            acc = T.decl_buffer((LANES,), "float32")
            st = T.decl_buffer((2,), "float32")   # mean, 1 / std
            for l in T.vectorized(LANES):
                acc[l] = T.float32(0)
            for c in range(kn):
                for l in T.vectorized(LANES):
                    acc[l] = acc[l] + x[m, c * LANES + l]
            st[0] = T.float32(0)
            for l in range(LANES):
                st[0] = st[0] + acc[l]
            st[0] = st[0] / T.float32(k)
            for l in T.vectorized(LANES):
                acc[l] = T.float32(0)
            for c in range(kn):
                for l in T.vectorized(LANES):
                    acc[l] = acc[l] + (x[m, c * LANES + l] - st[0]) * (x[m, c * LANES + l] - st[0])
            st[1] = T.float32(0)
            for l in range(LANES):
                st[1] = st[1] + acc[l]
            st[1] = T.float32(1) / T.sqrt(st[1] / T.float32(k) + T.float32(eps))
            for c in range(kn):
                for l in T.vectorized(LANES):
                    y[m, c * LANES + l] = (x[m, c * LANES + l] - st[0]) * st[1] * w[c * LANES + l] + b[c * LANES + l]
    return layer_norm


@functools.cache
def make_rms_norm(k: int, eps: float):
    """y[..., :] = x[..., :] / sqrt(mean(x^2) + eps) * w over rows of k (a multiple of LANES) f32 values
    (ir/opset/nn.py rms_norm, Zhang & Sennrich 2019), in vectors: the sum of squares in LANES partial sums, where
    TVM's default reduction is one scalar chain (~3 us per SmolLM2 row). x is [b, s, k] (a decoder's hidden states,
    taken as they are: no reshape in the VM before and after; other ranks are viewed so by `batch_rows`)."""
    from tvm.script import tirx as T
    kn = k // LANES

    @T.macro
    def row(x, y, m, w, acc, st):   # row m of x [rows, k] into y
        for l in T.vectorized(LANES):
            acc[l] = T.float32(0)
        for c in range(kn):
            for l in T.vectorized(LANES):
                acc[l] = acc[l] + x[m, c * LANES + l] * x[m, c * LANES + l]
        st[0] = T.float32(0)
        for l in range(LANES):
            st[0] = st[0] + acc[l]
        st[0] = T.float32(1) / T.sqrt(st[0] / T.float32(k) + T.float32(eps))
        for c in range(kn):
            for l in T.vectorized(LANES):
                y[m, c * LANES + l] = x[m, c * LANES + l] * st[0] * w[c * LANES + l]

    @T.prim_func(private=True)
    def rms_norm(x_h: T.handle, w: T.Buffer((k,), "float32"), y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        b_n, s_n = T.int64(), T.int64()
        x3 = T.match_buffer(x_h, (b_n, s_n, k), "float32")
        y3 = T.match_buffer(y_h, (b_n, s_n, k), "float32")
        x = T.decl_buffer((b_n * s_n, k), "float32", data=x3.data)   # the same memory as rows
        y = T.decl_buffer((b_n * s_n, k), "float32", data=y3.data)
        for m in T.parallel(b_n * s_n):
            acc = T.decl_buffer((LANES,), "float32")
            st = T.decl_buffer((1,), "float32")
            row(x, y, m, w, acc, st)
    return rms_norm


def as_rows(lw, x, k):
    """x [..., k] as (x2d [M, k], its leading dims, M): the row view every row-wise kernel here runs on."""
    from tvm import relax
    from tvm.relax import op as R
    x = lw.bb.normalize(x)
    lead = list(x.ty.shape.values)[:-1]
    m = 1
    for d in lead:
        m = m * d
    return lw.bb.emit(R.reshape(x, relax.ShapeExpr([m, k]))), lead, m


def batch_rows(lw, x, k):
    """x [..., k] as (x3 [b, s, k], its leading dims, M = b s): x itself when it has rank 3 (a decoder's hidden
    states), else one reshape to [1, M, k]. The view of the kernels that take [b, s, k] (quantize_rows, rms_norm,
    the panel GEMV), so each has one signature: TVMScript cannot vary a prim_func's rank."""
    from tvm import relax
    from tvm.relax import op as R
    x = lw.bb.normalize(x)
    lead = list(x.ty.shape.values)[:-1]
    m = 1
    for d in lead:
        m = m * d
    if len(lead) == 2:
        return x, lead, m
    return lw.bb.emit(R.reshape(x, relax.ShapeExpr([1, m, k]))), lead, m


def _call_rows(lw, x, k: int, n: int, func, weights, name: str):
    """Run `func(x2d, *weights) -> [M, n]` on x [..., k] and give [..., n]."""
    from tvm import relax
    from tvm.relax import op as R
    x2, lead, m = as_rows(lw, x, k)
    gv = lw.kernel(name, func)
    y = relax.call_tir(gv, [x2, *weights], relax.TensorType([m, n], "float32"))
    return R.reshape(y, relax.ShapeExpr([*lead, n]))


def _call_quantize_rows(lw, x, k: int, g: int, bits: int = 8):
    """make_quantize_rows on x [..., k]: (codes [R, k] i8, scales and code sums [R, 2 k/g] f32, M) as Relax values
    (x viewed as [b, s, k] by `batch_rows`; R = M for int8 codes, 2 M for int16's halves)."""
    from tvm import relax
    x3, _, m = batch_rows(lw, x, k)
    tag = "" if bits == 8 else f"_a{bits}"
    gv = lw.kernel(f"quantize_rows_{k}_g{g}{tag}", make_quantize_rows(k, g, bits))
    rows = m if bits == 8 else 2 * m
    out = lw.bb.emit(relax.call_tir(gv, [x3], [relax.TensorType([rows, k], "int8"),
                                               relax.TensorType([rows, 2 * (k // g)], "float32")]))
    return tuple(lw.bb.emit(relax.TupleGetItem(out, i)) for i in range(2)) + (m,)


def split_groups(x, k: int, g: int):
    """x [..., k] with each group of g columns reordered as (even columns, odd columns): the activation
    order of the int4 kernel's low and high nibbles."""
    from tvm import relax
    from tvm.relax import op as R
    lead = [d for d in x.ty.shape.values[:-1]]
    r = len(lead)
    x4 = R.reshape(x, relax.ShapeExpr([*lead, k // g, g // 2, 2]))
    return R.reshape(R.permute_dims(x4, list(range(r)) + [r, r + 2, r + 1]), relax.ShapeExpr([*lead, k]))


def a8_source(node):
    """The `quantize_activation` node whose output this int4 or int8 f32 `qlinear` reads with its own group
    size, when its product can be computed on int8 codes (W4A8, W8A8; int16 activations as two int8 halves);
    else None."""
    src = node.inputs[0].producer
    bits = node.attrs["bits"]
    if bits not in (4, 8) or node.inputs[0].type.dtype != "f32" or src is None or src.op != "quantize_activation":
        return None
    k = Q.logical_in_dim(node.inputs[1].type.shape, bits)
    g = Q.group_size(node.attrs["group"], k)
    return src if Q.group_size(src.attrs["group"], k) == g and k % g == 0 else None


def qlinear(lw, node, x, qweight, scales, zeros, bias, bits: int, group: int):
    """linear(x, dequantize(qweight, scales, zeros)) + bias. int4 or int8 with f32 activations: the int4 or
    int8 GEMV kernel (weights unpacked in registers); otherwise the weight is dequantized by a TE kernel, then a matmul."""
    from tvm import relax
    from tvm.relax import op as R
    from .module import tvm_dtype
    from .relax_lower import _dtype, linear
    dt = _dtype(x)
    n = node.inputs[1].type.shape[0]
    k = Q.logical_in_dim(node.inputs[1].type.shape, bits)
    src = a8_source(node)
    if src is not None and lw.bb.normalize(qweight).ty.ndim == 3:
        g = Q.group_size(group, k)
        # W4A8 / W8A8 on panels (prepacked at load, relax_lower.prepack_qlinear): codes of x in natural order
        abits = src.attrs["bits"]   # int8 codes, or int16 ones as two int8 rows each (summed in pairs)
        key = ("quantize_rows", id(src.inputs[0]), g, abits)
        if key not in lw.memo:
            lw.memo[key] = _call_quantize_rows(lw, lw.bb.normalize(lw.env[id(src.inputs[0])]), k, g, abits)
        codes = lw.memo[key]
        lead = list(lw.bb.normalize(x).ty.shape.values)[:-1]
        # the panels keep f16 scales, and may hold float zero points as f16 products (pack_vnni_panels)
        zdt = str(lw.bb.normalize(zeros).ty.dtype) if zeros is not None else None
        sdt = str(lw.bb.normalize(scales).ty.dtype)
        gv = lw.kernel(f"int{bits}_vnni_panel_gemv_{n}x{k}_g{g}_{sdt}_{zdt}" + ("_a16" if abits == 16 else ""),
                       make_vnni_panel_gemv(n, k, g, bits, zdt, sdt, abits == 16))
        zpp = zeros if zeros is not None else lw.const([[[0.0]]], "f32")
        # [b, s, n] straight from the kernel for a decoder's hidden states; other ranks as [1, M, n], then reshaped
        shape = lead if len(lead) == 2 else [1, codes[2]]
        y = lw.bb.emit(relax.call_tir(gv, [codes[0], codes[1], qweight, scales, zpp],
                                      relax.TensorType([*shape, n], "float32")))
        if len(lead) != 2:
            y = R.reshape(y, relax.ShapeExpr([*lead, n]))
        return R.add(y, bias) if bias is not None else y
    if int4_gemv_ok(bits, group, k, dt):
        g = Q.group_size(group, k)
        zdt = tvm_dtype(node.inputs[3].type.dtype) if zeros is not None else None
        sdt = tvm_dtype(node.inputs[2].type.dtype)
        zp = zeros if zeros is not None else lw.const([[8]], "u8")
        key = ("split_groups", id(node.inputs[0]), g)   # q/k/v (gate/up) projections share one reordering
        if key not in lw.memo:
            lw.memo[key] = lw.bb.emit(split_groups(lw.bb.normalize(x), k, g))
        xs = lw.memo[key]
        if int4_lookup_ok(n, k, g):
            func, name = make_int4_lookup_gemv(n, k, g, sdt, zdt), f"int4_lookup_gemv_{n}x{k}_g{g}_{sdt}_{zdt}"
        else:
            func, name = make_int4_gemv(n, k, g, sdt, zdt), f"int4_gemv_{n}x{k}_g{g}_{sdt}_{zdt}"
        y = _call_rows(lw, xs, k, n, func, [qweight, scales, zp], name)
        return R.add(y, bias) if bias is not None else y
    if int8_gemv_ok(bits, group, k, dt):
        g = Q.group_size(group, k)
        zdt = tvm_dtype(node.inputs[3].type.dtype) if zeros is not None else None
        sdt = tvm_dtype(node.inputs[2].type.dtype)
        zp = zeros if zeros is not None else lw.const([[0]], "i8")
        func = make_int8_gemv(n, k, g, sdt, zdt)
        y = _call_rows(lw, lw.bb.normalize(x), k, n, func, [qweight, scales, zp], f"int8_gemv_{n}x{k}_g{g}_{sdt}_{zdt}")
        return R.add(y, bias) if bias is not None else y
    w = lw.bb.emit_te(dequantize_te, qweight, scales, zeros, bits, group, dt, primfunc_name_hint="dequantize")
    return linear(x, w, bias)


def f32_linear(lw, node, x, w, bias):
    """linear for f32 x and a static [n, k] f32 weight: the panel GEMM microkernel when the weight parameter
    comes in panels [n / PANEL, k, PANEL] (relax_lower.prepack_linear), else the f32 GEMV kernel."""
    from tvm.relax import op as R
    n, k = node.inputs[1].type.shape
    if lw.bb.normalize(w).ty.ndim == 3:
        y = _call_rows(lw, lw.bb.normalize(x), k, n, make_f32_panel_gemm(n, k), [w], f"f32_panel_gemm_{n}x{k}")
    else:
        y = _call_rows(lw, lw.bb.normalize(x), k, n, make_f32_gemv(n, k), [w], f"f32_gemv_{n}x{k}")
    return R.add(y, bias) if bias is not None else y


@functools.cache
def make_f32_panel_gemm(n: int, k: int):
    """y[m, o] = sum_k x[m, k] * w[o, k] with the weight prepacked in panels wp[o // PANEL, k, o % PANEL]
    (relax_lower.prepack_linear, once at load): a GEMM microkernel for every M. GM rows of x at a time
    accumulate GM x PANEL outputs in registers (x broadcast, weights loaded as vectors: no horizontal sums),
    the panels read in place; ~93 GFLOP/s on one AVX-512 core at M = 128, and a plain stream of the weights
    at M = 1."""
    from tvm.script import tirx as T

    def V(i):
        return T.ramp(i, 1, LANES)

    @T.prim_func(private=True)
    def f32_panel_gemm(x_h: T.handle, wp: T.Buffer((n // PANEL, k, PANEL), "float32"), y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m_n = T.int64()
        x = T.match_buffer(x_h, (m_n, k), "float32")
        y = T.match_buffer(y_h, (m_n, n), "float32")
        for oc in T.parallel(n // PANEL):
            acc = T.decl_buffer((GM, PANEL), "float32")
            for mo in range(m_n // GM):
                for r in T.unroll(GM):
                    for p in T.unroll(PANEL // LANES):
                        acc[r, V(p * LANES)] = T.broadcast(T.float32(0), LANES)
                for kk in range(k):
                    for r in T.unroll(GM):
                        for p in T.unroll(PANEL // LANES):
                            acc[r, V(p * LANES)] = acc[r, V(p * LANES)] \
                                + T.broadcast(x[mo * GM + r, kk], LANES) * wp[oc, kk, V(p * LANES)]
                for r in T.unroll(GM):
                    for p in T.unroll(PANEL // LANES):
                        y[mo * GM + r, V(oc * PANEL + p * LANES)] = acc[r, V(p * LANES)]
            for m in range(m_n // GM * GM, m_n):
                for p in T.unroll(PANEL // LANES):
                    acc[0, V(p * LANES)] = T.broadcast(T.float32(0), LANES)
                for kk in range(k):
                    for p in T.unroll(PANEL // LANES):
                        acc[0, V(p * LANES)] = acc[0, V(p * LANES)] + T.broadcast(x[m, kk], LANES) * wp[oc, kk, V(p * LANES)]
                for p in T.unroll(PANEL // LANES):
                    y[m, V(oc * PANEL + p * LANES)] = acc[0, V(p * LANES)]
    return f32_panel_gemm


def qembedding(lw, node, ids, qweight, scales, zeros, bits: int, group: int, dtype: str):
    """embedding(dequantize(qweight, scales, zeros), ids): the rows of `ids` are taken from the packed
    table (and its scales/zeros), then only they are unpacked (ir/opset/quant.py qembedding)."""
    from tvm import relax
    from tvm.relax import op as R
    shape = lw.shape(node.inputs[0])
    n = 1
    for d in shape:
        n = n * d
    flat = R.reshape(ids, relax.ShapeExpr([n]))
    rows = [lw.bb.emit(R.take(t, flat, axis=0, mode="clip")) for t in (qweight, scales)]
    z = lw.bb.emit(R.take(zeros, flat, axis=0, mode="clip")) if zeros is not None else None
    w = lw.bb.emit_te(dequantize_te, rows[0], rows[1], z, bits, group, dtype, primfunc_name_hint="dequantize_rows")
    k = Q.logical_in_dim(node.inputs[1].type.shape, bits)
    return R.reshape(w, relax.ShapeExpr([*shape, k]))


def _lanes(d: int) -> int:
    return next(w for w in (LANES, 8, 4, 2, 1) if d % w == 0)


PREFILL_MIN_Q = 8   # query rows from which attention takes the blocked prefill form, when there is no past (as many
                    # keys as queries: a prompt, an encoder). With a past (a speculative verify, a step) every row
                    # takes the decode form, whose arithmetic per row is a one-token step's: verify(k) equals k
                    # steps bit for bit, which W4A8 needs (a 1e-7 difference before quantize_activation can move
                    # an int8 code and change the greedy token)


def fast_exp(x):
    """exp(x) for f32 in vectors: Cody-Waite range reduction and Cephes' expf polynomial (relative error
    ~2e-7); exactly 0 below -87.3 (and for -inf, NaN stays NaN), where TVM's exp is a scalar libm call."""
    from tvm.script import tirx as T
    xc = T.max(x, T.float32(-87.3))
    n = T.floor(xc * T.float32(1.4426950408889634) + T.float32(0.5))
    r = xc - n * T.float32(0.693359375) + n * T.float32(2.12194440e-4)
    y = (((((T.float32(1.9875691500e-4) * r + T.float32(1.3981999507e-3)) * r + T.float32(8.3334519073e-3)) * r
           + T.float32(4.1665795894e-2)) * r + T.float32(1.6666665459e-1)) * r + T.float32(5.0000001201e-1)) * r * r \
        + r + T.float32(1)
    p = y * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))
    return T.Select(is_nan(x), x, T.Select(x < T.float32(-87.3), T.float32(0), p))


def is_nan(x):
    """x is NaN, by its bits: TVM's LLVM code is built with fast-math flags, under which a float NaN test may
    be folded to false."""
    from tvm.script import tirx as T
    return T.bitwise_and(T.reinterpret("int32", x), 0x7FFFFFFF) > 0x7F800000   # scalar f32 (vectorized later)


@functools.cache
def make_attention(hq: int, hk: int, d: int, scale: float, causal: bool, window: int, sinks: int,
                   mask_dtype: str | None, mask_batch: bool, mask_rows: bool = True):
    """o[b, h, i] = softmax_j(q[b, h, i] . k[b, h // (hq/hk), j] * scale + mask) v[b, h // (hq/hk), j], as
    ir/opset/nn.py attention: per query row, the scores of every key into a scratch row, then a vector softmax
    (max, exp by polynomial, sum) and p @ v over the keys that count. k and v are read in place from `lk` of
    their rows from rows `k0` and `v0` (a KV buffer's capacity may be larger; a ring starts past row 0). A prompt without a past (lq == lk >= PREFILL_MIN_Q)
    computes the scores LANES keys at a time on k transposed once per task; otherwise each score is a dot
    product of `lanes`-wide vectors and one horizontal reduction. GQA reads the shared k/v head in place (no
    repeat), the causal/window/sink masks are index tests (no mask tensor), an optional mask [b or 1, 1, lq or 1,
    lk] is bool (keep) or float (added). Query rows (batch x heads) are the parallel loop; head_dim is vectorized. A row whose keys are
    all masked gives 0 (torch's scaled_dot_product_attention on CPU, the reference, does); a NaN score among
    the kept keys makes the row NaN."""
    from tvm.script import tirx as T
    lanes = _lanes(d)
    dn = d // lanes
    rep = hq // hk
    has_mask = mask_dtype is not None
    mdt = mask_dtype or "bool"
    bool_mask = mdt == "bool"
    lowest = -3.4028234663852886e38

    def keep(mask, bi, i, j, lq, lk):
        diag = i + lk - lq
        c = T.bool(True)
        if causal:
            c = T.And(c, j <= diag)
        if window:
            w = diag - j <= T.int64(window)
            if sinks:
                w = T.Or(w, j < T.int64(sinks))
            c = T.And(c, w)
        if has_mask and bool_mask:
            c = T.And(c, mask[bi if mask_batch else 0, 0, i if mask_rows else 0, j])
        return c

    def madd(mask, bi, i, j):
        if has_mask and not bool_mask:
            return T.Cast("float32", mask[bi if mask_batch else 0, 0, i if mask_rows else 0, j])
        return T.float32(0)

    @T.prim_func(private=True)
    def attention(q_h: T.handle, k_h: T.handle, v_h: T.handle, m_h: T.handle, lk: T.int64, k0: T.int64,
                  v0: T.int64, o_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        b, lq, kc, vc, mb, mq, mk = T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64()
        q = T.match_buffer(q_h, (b, hq, lq, d), "float32")
        k = T.match_buffer(k_h, (b, hk, kc, d), "float32")   # keys k0..k0+lk-1 of kc rows (a KV buffer's capacity)
        v = T.match_buffer(v_h, (b, hk, vc, d), "float32")   # rows v0..: k's and v's buffers may differ
        mask = T.match_buffer(m_h, (mb, 1, mq, mk), mdt)   # [1, 1, 1, 1] and unread without a mask
        o = T.match_buffer(o_h, (b, hq, lq, d), "float32")
        for bh in T.parallel(b * hq):
            # per query row: the scores of every key into sc (prefill: k transposed once per task, then LANES keys
            # at a time, q broadcast, no horizontal sums; otherwise lanes-wide dot products, one horizontal
            # reduction each), then a vector softmax (max, exp by polynomial, sum) and p @ v over the keys that count
            kt = T.decl_buffer((d, T.Select(T.And(lq >= PREFILL_MIN_Q, lq == lk), (lk + LANES - 1) // LANES * LANES,
                                            T.int64(1))), "float32")
            sc = T.decl_buffer(((lk + LANES - 1) // LANES * LANES,), "float32")
            acc = T.decl_buffer((d,), "float32")
            dot = T.decl_buffer((lanes,), "float32")
            st = T.decl_buffer((2,), "float32")   # max, sum
            mx = T.decl_buffer((LANES,), "float32")
            if lq >= PREFILL_MIN_Q and lq == lk:
                for e, j in T.grid(d, (lk + LANES - 1) // LANES * LANES):
                    kt[e, j] = T.if_then_else(j < lk, k[bh // hq, bh % hq // rep, k0 + T.min(j, lk - 1), e], T.float32(0))
            for i in range(lq):
                if lq >= PREFILL_MIN_Q and lq == lk:
                    for jo in range((lk + LANES - 1) // LANES):
                        for l in T.vectorized(LANES):
                            sc[jo * LANES + l] = T.float32(0)
                        for e in range(d):
                            for l in T.vectorized(LANES):
                                sc[jo * LANES + l] = sc[jo * LANES + l] + q[bh // hq, bh % hq, i, e] * kt[e, jo * LANES + l]
                    for jo in range(lk // LANES):   # whole blocks of keys: masks and scale in vectors
                        for l in T.vectorized(LANES):
                            sc[jo * LANES + l] = T.Select(keep(mask, bh // hq, i, jo * LANES + l, lq, lk),
                                                          sc[jo * LANES + l] * T.float32(scale)
                                                          + madd(mask, bh // hq, i, jo * LANES + l),
                                                          T.float32(float("-inf")))
                    for j in range(lk // LANES * LANES, (lk + LANES - 1) // LANES * LANES):   # the rest, and padding
                        if j < lk and keep(mask, bh // hq, i, j, lq, lk):
                            sc[j] = sc[j] * T.float32(scale) + madd(mask, bh // hq, i, j)
                        else:
                            sc[j] = T.float32(float("-inf"))
                else:
                    for j in range(lk):
                        if keep(mask, bh // hq, i, j, lq, lk):
                            for l in T.vectorized(lanes):
                                dot[l] = q[bh // hq, bh % hq, i, l] * k[bh // hq, bh % hq // rep, k0 + j, l]
                            for c in range(1, dn):
                                for l in T.vectorized(lanes):
                                    dot[l] = dot[l] + q[bh // hq, bh % hq, i, c * lanes + l] * \
                                        k[bh // hq, bh % hq // rep, k0 + j, c * lanes + l]
                            if lanes >= 16:   # pairwise halving: shuffles in registers, not a chain of adds
                                for l in T.vectorized(8):
                                    dot[l] = dot[l] + dot[l + 8]
                            if lanes >= 8:
                                for l in T.vectorized(4):
                                    dot[l] = dot[l] + dot[l + 4]
                            if lanes >= 4:
                                for l in T.vectorized(2):
                                    dot[l] = dot[l] + dot[l + 2]
                            sc[j] = (dot[0] + dot[1] if lanes >= 2 else dot[0]) * T.float32(scale) \
                                + madd(mask, bh // hq, i, j)
                        else:
                            sc[j] = T.float32(float("-inf"))
                    for j in range(lk, (lk + LANES - 1) // LANES * LANES):
                        sc[j] = T.float32(float("-inf"))
                for l in T.vectorized(LANES):
                    mx[l] = T.float32(lowest)
                for jo in range((lk + LANES - 1) // LANES):
                    for l in T.vectorized(LANES):
                        mx[l] = T.max(mx[l], sc[jo * LANES + l])
                st[0] = T.float32(lowest)
                for l in range(LANES):
                    st[0] = T.max(st[0], mx[l])
                for jo in range((lk + LANES - 1) // LANES):
                    for l in T.vectorized(LANES):
                        sc[jo * LANES + l] = fast_exp(sc[jo * LANES + l] - st[0])
                st[1] = T.float32(0)
                for e in T.vectorized(d):
                    acc[e] = T.float32(0)
                for j in range(lk):
                    if T.reinterpret("int32", sc[j]) != 0:   # masked keys are exactly +0 (NaN passes)
                        st[1] = st[1] + sc[j]
                        for e in T.vectorized(d):
                            acc[e] = acc[e] + sc[j] * v[bh // hq, bh % hq // rep, v0 + j, e]
                for e in T.vectorized(d):
                    o[bh // hq, bh % hq, i, e] = T.Select(T.reinterpret("int32", st[1]) == 0, T.float32(0), acc[e] / st[1])
    return attention


def attention_ok(node) -> bool:
    """The fused kernel takes f32 q/k/v [b, heads, len, d] with static heads and d, and a mask that is absent
    or [b or 1, 1, lq or 1, lk]. A mask's last dim may be spelled differently from the keys' (a ring's mask is
    Min(ctx - seq, W + S) + seq, its keys past + seq): `attention` checks at run time that they agree."""
    q, k, v = (x.type for x in node.inputs[:3])
    if node.attrs.get("softcap"):   # the Relax ops of relax_lower.py cap the scores
        return False
    if not (q.rank == k.rank == v.rank == 4 and q.dtype == k.dtype == v.dtype == "f32"):
        return False
    hq, hk, d = q.shape[1], k.shape[1], q.shape[3]
    if not all(isinstance(x, int) for x in (hq, hk, d)) or hk == 0 or hq % hk or k.shape[3] != d or v.shape[3] != d:
        return False
    if q.shape[0] != k.shape[0] or k.shape[0] != v.shape[0] or k.shape[2] != v.shape[2]:
        return False
    if len(node.inputs) > 3:
        m = node.inputs[3].type
        if m.rank != 4 or m.shape[1] != 1 or m.shape[2] not in (1, q.shape[2]) or m.shape[0] not in (1, q.shape[0]) \
                or (m.shape[3] != k.shape[2] and isinstance(m.shape[3], int) and isinstance(k.shape[2], int)):
            return False
    return True


def attention(lw, node, q, k, v, mask):
    """The fused attention kernel (make_attention) on Relax values; `attention_ok(node)` must hold."""
    import math
    from tvm import relax
    from .module import tvm_dtype
    a = node.attrs
    qt, kt = node.inputs[0].type, node.inputs[1].type
    hq, hk, d = qt.shape[1], kt.shape[1], qt.shape[3]
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(d)
    mdt = tvm_dtype(node.inputs[3].type.dtype) if mask is not None else None
    mb = mask is not None and node.inputs[3].type.shape[0] != 1
    rows = mask is None or node.inputs[3].type.shape[2] != 1 or qt.shape[2] == 1
    window, sinks = int(a["window"] or 0), int(a["sinks"] or 0) if a["window"] else 0
    func = make_attention(hq, hk, d, float(scale), bool(a["causal"]), window, sinks, mdt, mb, rows)
    name = f"attention_{hq}x{hk}x{d}_c{int(bool(a['causal']))}_w{window}_s{sinks}_{mdt}{'_b' if mb else ''}{'' if rows else '_r1'}"
    gv = lw.kernel(name + "_" + float(scale).hex().replace(".", "_").replace("+", "").replace("-", "m"), func)
    if mask is None:
        mask = lw.const([[[[True]]]], "bool")
    elif node.inputs[3].type.shape[3] != kt.shape[2]:   # the same length spelled two ways: checked when called
        mask = lw.bb.match_cast(mask, relax.TensorType([*lw.shape(node.inputs[3])[:3], lw.dim(kt.shape[2])], mdt))
    views = [lw.kv_view(x) for x in node.inputs[1:3]]
    if all(views):   # k and v are in-place KV buffers (module.py): read their `length` rows in place
        (k, lk, k0), (v, _, v0) = views
    else:
        lk, k0, v0 = lw.dim(kt.shape[2]), 0, 0
    return relax.call_tir(gv, [q, k, v, mask, lw.prim(lk), lw.prim(k0), lw.prim(v0)],
                          relax.TensorType(lw.shape(node.inputs[0]), "float32"))


@functools.cache
def make_kv_append(axis: int, dtype: str):
    """buf[..., past + i, ...] = new[..., i, ...] along `axis` of rank-4 tensors: the rows of a `cache_append`
    written in place into the KV buffer (capacity rows >= past + new rows; called through call_tir_inplace)."""
    from tvm.script import tirx as T

    def at(i0, i1, i2, i3, past):
        ix = [i0, i1, i2, i3]
        ix[axis] = ix[axis] + past
        return tuple(ix)

    @T.prim_func(private=True)
    def kv_append(buf_h: T.handle, new_h: T.handle, past: T.int64):
        T.func_attr({"tirx.noalias": True, "op_pattern": 8})   # opaque: FuseOps must not fuse an in-place write
        c0, c1, c2, c3, n0, n1, n2, n3 = (T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64(),
                                          T.int64(), T.int64())
        buf = T.match_buffer(buf_h, (c0, c1, c2, c3), dtype)
        new = T.match_buffer(new_h, (n0, n1, n2, n3), dtype)
        for i0, i1, i2, i3 in T.grid(n0, n1, n2, n3):
            buf[at(i0, i1, i2, i3, past)] = new[i0, i1, i2, i3]
    return kv_append


@functools.cache
def make_ring_slide(axis: int, dtype: str, window: int, sinks: int):
    """A ring's `cache_window{window, sinks}` in place (module.py): the ring is buf rows [start, start + total)
    along `axis` (its sinks first); when total > window + sinks, its `sinks` first rows are copied to rows
    start + total - window - sinks ..., just before the last `window` rows, which then form the ring with
    them. Rows move up (destination > source), so they are copied last to first (the ranges may overlap)."""
    from tvm.script import tirx as T
    keep = window + sinks

    def at(i0, i1, i2, i3, row):
        ix = [i0, i1, i2, i3]
        ix[axis] = row
        return tuple(ix)

    @T.prim_func(private=True)
    def ring_slide(buf_h: T.handle, start: T.int64, total: T.int64):
        T.func_attr({"op_pattern": 8})   # opaque: FuseOps must not fuse an in-place write
        c0, c1, c2, c3 = T.int64(), T.int64(), T.int64(), T.int64()
        buf = T.match_buffer(buf_h, (c0, c1, c2, c3), dtype)
        shape = [c0, c1, c2, c3]
        if total > T.int64(keep):
            for r in T.serial(sinks):
                for i0, i1, i2, i3 in T.grid(*at(*shape, T.int64(1))):
                    buf[at(i0, i1, i2, i3, start + total - T.int64(keep) + T.int64(sinks - 1) - r)] = \
                        buf[at(i0, i1, i2, i3, start + T.int64(sinks - 1) - r)]
    return ring_slide


PREFETCH_PANELS = 2   # panels ahead the W4A8 panel kernel prefetches (9 KB at k = 576)
VPANEL = 16   # output rows of one W4A8 panel: one int32 lane each of a 512-bit `vpdpbusd`


def vnni_panels_ok(n: int, k: int, group: int, bits: int) -> bool:
    """The panel kernel takes n a multiple of VPANEL and groups of a multiple of 8 (int4) or 4 (int8) columns,
    on AVX-512 VNNI hosts."""
    g = Q.group_size(group, k)
    return bits in (4, 8) and n % VPANEL == 0 and k % g == 0 and g % (32 // bits) == 0 and has_vnni()


def pack_vnni_panels(qweight, scales, zeros, group: int, bits: int):
    """The panel layout of an int4 or int8 weight (ir/quant_format.py) for make_vnni_panel_gemv, made once at load:
    codes [n / VPANEL, k / C, VPANEL * 4] u8 (C = 8 columns per chunk for int4, 4 for int8), where panel p, chunk
    c, lane r holds output row p * VPANEL + r: int4 columns 8c..8c+3 in the low nibbles and 8c+4..8c+7 in the high
    ones; int8 columns 4c..4c+3 as bytes offset by 128 (u8); scales [n / VPANEL, k / g, VPANEL], f16 when the graph's
    are f16 (half the bytes of f32: at g32 a scale and a float zero point per 32 codes would otherwise be 2 of 6
    bits per weight), else f32; and the zero points in the same layout (None without zero points: the kernel uses
    the implied one): integer ones in their own dtype; float ones beside f32 scales as f32; float ones beside f16
    scales as the f16 product scale x (offset + zero), i.e. the negated group minimum in the scales' precision
    (GGUF Q4_1's block of an f16 scale and an f16 minimum: 5 bits per int4 weight at g32 instead of 5.5).
    quant_format.store rounds a minimum to f16 beside f16 scales, so for the quantizer's graphs that product is
    exact; a graph whose minimums are not f16 numbers gets them rounded (relative error <= 2^-11, as its scales).
    The form depends only on dtypes, never on weight values (the build cache keys on the graph text), and the
    zero points' panel dtype tells make_vnni_panel_gemv which form it gets."""
    import torch
    n = qweight.shape[0]
    k = Q.logical_in_dim(qweight.shape, bits)
    g = Q.group_size(group, k)
    if bits == 4:
        q = Q.unpack(qweight, 4).to(torch.uint8).reshape(n, k // 8, 2, 4)
        codes = q[:, :, 0] | (q[:, :, 1] << 4)
    else:
        codes = (qweight.to(torch.int16) + 128).to(torch.uint8).reshape(n, k // 4, 4)
    codes = codes.reshape(n // VPANEL, VPANEL, -1, 4).permute(0, 2, 1, 3)

    def panels(t):
        return t.reshape(n // VPANEL, VPANEL, k // g).permute(0, 2, 1).contiguous()
    scales = scales if scales.dtype == torch.float16 else scales.float()
    if zeros is not None and zeros.is_floating_point():
        zeros = zeros.float()
        if scales.dtype == torch.float16:
            zeros = (scales.float() * (zeros + (0 if bits == 4 else 128))).half()
            if not bool(torch.isfinite(zeros).all()):   # the interpreter's f32 minimum would be inf here: NaN out
                raise ValueError(f"int{bits} W4A8/W8A8 panels: a group minimum scale x (offset + zero point) is beyond "
                                 "f16's range (|w| > 65504) and the panels hold it in f16 beside f16 scales; quantize "
                                 "this weight with quantize-weights{scale_dtype=f32} (or integer zero points)")
    return (codes.reshape(n // VPANEL, -1, VPANEL * 4).contiguous(), panels(scales),
            panels(zeros) if zeros is not None else None)


@functools.cache
def make_vnni_panel_gemv(n: int, k: int, group: int, bits: int, zero_dtype: str | None, scale_dtype: str = "float32",
                         pairs: bool = False):
    """W4A8 / W8A8 on panels (pack_vnni_panels): y[m, o] = sum_g sx[m, g] * (sw[o, g] * sum_{k in g} c[o, k] q[m, k]
    - sw[o, g] * (offset + zero[o, g]) * sums[m, g]), c the stored u8 codes (int8 weights + 128: offset 128; int4:
    offset 0, implied zero 8), q the int8 codes of make_quantize_rows on x in natural order. With integer (or
    implied) zero points the bracket is computed in int32, exactly, before one f32 scaling; float zero points
    (Q4_1) take the second term in f32, from f32 zero points (zero_dtype "float32") or from the f16 products
    sw * (offset + zero) pack_vnni_panels makes beside f16 scales (zero_dtype "float16").

    Each 64-byte load holds 8 (int4) or 4 (int8) codes of each of VPANEL rows; `vpdpbusd` (llvm.x86.avx512.vpdpbusd.512,
    u8 x s8, four products per int32 lane) against 4 activation codes broadcast to every lane adds them per row:
    the lanes are the output rows, so there is no horizontal sum, and each group's scale and zero-point term are
    two vector FMAs per VPANEL rows (the layout llama.cpp's repacked Q4_0 x Q8_0 kernels interleave rows for).
    The integer products are exact: the result equals qlinear(quantize_activation(x)) up to the order of f32
    additions, and each row of x is computed alike whatever M is (a verify of k tokens equals k steps).

    Rows run in blocks of ROW_BLOCK (then 2, then 1): one load and nibble split of the weights serves every row of
    the block, so verify and prefill do not pay the unpacking per token; past that the kernel is bound by the
    vpdpbusd count (`benchmarks/bench_cpu_kernels.py --rows 1,2,4,8`: M = 4 costs ~1.3-1.5x M = 1, M = 8 ~2.5x).
    y is [b, s, n] (b s = m rows: a decoder's hidden states, no reshape in the VM after the call).
    pairs: x holds 2 m rows (make_quantize_rows bits=16: the hi and lo int8 halves of int16 codes, scaled 256 s and
    s) and y row i is the sum of x rows 2i and 2i + 1."""
    from tvm.script import tirx as T
    g = Q.group_size(group, k)
    cols = 32 // bits                     # columns per 64-byte chunk: 8 (int4) or 4 (int8)
    ng, cg = k // g, g // cols
    unroll = next(u for u in (8, 4, 2, 1) if cg % u == 0)
    has_zero, zdt = zero_dtype is not None, zero_dtype or "float32"
    offset = 0 if bits == 4 else 128
    implied = Q.implied_zero(bits) + offset
    int_zero = not has_zero or "int" in zdt   # integer zero points: the correction is exact in int32
    xr = 2 if pairs else 1                    # rows of x per row of y
    sz_f16 = zdt == "float16"   # float zero points packed as scale x (offset + zero) in f16 (pack_vnni_panels)

    def V(i, w):
        return T.ramp(i, 1, w)

    def dot(acc, codes, xq):
        return T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", acc, codes, xq)

    def scale(sp, p, gi):    # the panel's rows' scales as f32 lanes
        s = sp[p, gi, V(0, VPANEL)]
        return s if scale_dtype == "float32" else T.Cast("float32x16", s)

    def sz(sp, zp, p, gi):   # scale x (offset + zero point) of the panel's rows
        if sz_f16:
            return T.Cast("float32x16", zp[p, gi, V(0, VPANEL)])
        if has_zero:
            return scale(sp, p, gi) * (T.Cast("float32x16", zp[p, gi, V(0, VPANEL)])
                                              + T.broadcast(T.float32(offset), VPANEL))
        return scale(sp, p, gi) * T.broadcast(T.float32(implied), VPANEL)

    def izero(zp, p, gi):   # offset + integer zero point of the panel's rows, as int32 lanes
        if has_zero:
            return T.Cast("int32x16", zp[p, gi, V(0, VPANEL)]) + T.broadcast(T.int32(offset), VPANEL)
        return T.broadcast(T.int32(implied), VPANEL)

    def bcast4(xq, m, c):   # the 4 int8 codes at columns c..c+3, repeated in every int32 lane
        return T.reinterpret("int8x64", T.broadcast(T.reinterpret("int32", xq[m, V(c, 4)]), VPANEL))

    def lo(qp, p, gi, c):   # int4: the chunk's low nibbles (columns 8c..8c+3); int8: the chunk's codes
        if bits == 8:
            return qp[p, gi * cg + c, V(0, VPANEL * 4)]
        return T.bitwise_and(qp[p, gi * cg + c, V(0, VPANEL * 4)], T.broadcast(T.uint8(15), VPANEL * 4))

    def hi(qp, p, gi, c):   # int4: the chunk's high nibbles (columns 8c+4..8c+7)
        return T.shift_right(qp[p, gi * cg + c, V(0, VPANEL * 4)], T.broadcast(T.uint8(4), VPANEL * 4))

    @T.macro
    def block(p, m0, rows, qp, sp, zp, xq, xs, y, acc, dots):   # rows m0 .. m0 + rows - 1 of panel p
        for r in T.unroll(rows):
            acc[V(r * VPANEL, VPANEL)] = T.broadcast(T.float32(0), VPANEL)
        for gi in range(ng):
            for r in T.unroll(rows):
                dots[V(r * VPANEL, VPANEL)] = T.broadcast(T.int32(0), VPANEL)
            for co in range(cg // unroll):
                for cu in T.unroll(unroll):
                    T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0",
                               T.address_of(qp[p + PREFETCH_PANELS, gi * cg + co * unroll + cu, 0]),
                               T.int32(0), T.int32(3), T.int32(1)))
                    for r in T.unroll(rows):   # one load of the weights serves every row of the block
                        if bits == 8:
                            dots[V(r * VPANEL, VPANEL)] = dot(dots[V(r * VPANEL, VPANEL)], lo(qp, p, gi, co * unroll + cu),
                                                              bcast4(xq, m0 + r, gi * g + (co * unroll + cu) * 4))
                        else:
                            dots[V(r * VPANEL, VPANEL)] = dot(
                                dot(dots[V(r * VPANEL, VPANEL)], lo(qp, p, gi, co * unroll + cu),
                                    bcast4(xq, m0 + r, gi * g + (co * unroll + cu) * 8)),
                                hi(qp, p, gi, co * unroll + cu), bcast4(xq, m0 + r, gi * g + (co * unroll + cu) * 8 + 4))
            # the activation scale meets the weight's (or its zero term's) first: an integer dot or code sum up to
            # ~2^15 times an activation scale near f32's max / 127 would overflow where the product stays finite
            for r in T.unroll(rows):
                if int_zero:   # (codes - offset - zero) . q exactly in int32, then one scaling
                    acc[V(r * VPANEL, VPANEL)] = acc[V(r * VPANEL, VPANEL)] + T.Cast(
                        "float32x16", dots[V(r * VPANEL, VPANEL)]
                        - izero(zp, p, gi) * T.broadcast(T.Cast("int32", xs[m0 + r, ng + gi]), VPANEL)) \
                        * (T.broadcast(xs[m0 + r, gi], VPANEL) * scale(sp, p, gi))
                else:
                    acc[V(r * VPANEL, VPANEL)] = acc[V(r * VPANEL, VPANEL)] \
                        + T.Cast("float32x16", dots[V(r * VPANEL, VPANEL)]) \
                        * (T.broadcast(xs[m0 + r, gi], VPANEL) * scale(sp, p, gi)) \
                        - (sz(sp, zp, p, gi) * T.broadcast(xs[m0 + r, gi], VPANEL)) \
                        * T.broadcast(xs[m0 + r, ng + gi], VPANEL)
        if pairs:   # rows come as (hi, lo) pairs of one output row; m0 is even
            for r in T.unroll(rows // 2):
                y[m0 // 2 + r, V(p * VPANEL, VPANEL)] = acc[V(2 * r * VPANEL, VPANEL)] \
                    + acc[V((2 * r + 1) * VPANEL, VPANEL)]
        else:
            for r in T.unroll(rows):
                y[m0 + r, V(p * VPANEL, VPANEL)] = acc[V(r * VPANEL, VPANEL)]

    @T.macro
    def panels(qp, sp, zp, xq, xs, y, m_n):
        for p in T.parallel(n // VPANEL):
            acc = T.decl_buffer((VPANEL * ROW_BLOCK,), "float32")
            dots = T.decl_buffer((VPANEL * ROW_BLOCK,), "int32")
            for mo in range(m_n // ROW_BLOCK):
                block(p, mo * ROW_BLOCK, ROW_BLOCK, qp, sp, zp, xq, xs, y, acc, dots)
            if m_n % ROW_BLOCK >= 2:
                block(p, m_n // ROW_BLOCK * ROW_BLOCK, 2, qp, sp, zp, xq, xs, y, acc, dots)
            if m_n % 2 == 1:
                block(p, m_n - 1, 1, qp, sp, zp, xq, xs, y, acc, dots)

    @T.prim_func(private=True)
    def vnni_panel_gemv(q_h: T.handle, s_h: T.handle,
                         qp: T.Buffer((n // VPANEL, k // cols, VPANEL * 4), "uint8"),
                         sp: T.Buffer((n // VPANEL, ng, VPANEL), scale_dtype),
                         zp: T.Buffer((n // VPANEL, ng, VPANEL) if has_zero else (1, 1, 1), zdt),
                         y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        b_n, s_n = T.int64(), T.int64()
        y3 = T.match_buffer(y_h, (b_n, s_n, n), "float32")
        xq = T.match_buffer(q_h, (xr * b_n * s_n, k), "int8")
        xs = T.match_buffer(s_h, (xr * b_n * s_n, 2 * ng), "float32")
        y = T.decl_buffer((b_n * s_n, n), "float32", data=y3.data)   # the same memory as rows
        panels(qp, sp, zp, xq, xs, y, xr * b_n * s_n)
    return vnni_panel_gemv
