"""The `cpu` target's fused `linear_attention` kernel (ir/opset/linear_attention.py): feature maps, the LoLCATs
shared normalizer over the softmax window and the linear scores, and the fold into the fixed kv/z state, in one
TIR function with no intermediate tensors.

Why: the op as Relax ops (relax_lower.py `_linear_attention`, kept for what this kernel does not take) is ~40
kernels per layer whose calls, allocations and shape checks cost ~0.2 ms per layer in a decode step, where the
arithmetic is a few microseconds (SmolLM2: a step's feature maps, state read and window of 68 keys are ~0.1
MFLOP per layer); a hybrid step cost twice the sliding window's.

One parallel task per (batch, key head) (GQA: its g query heads share the key head's feature maps and state):
1. phi(k_j) for the keys lo .. hi that can be linear for some query of the call (relax_lower.py's argument:
   lo = min(sinks, n - 1), hi = min(n, max(lo + 1, n - window))), once, into task scratch;
2. the fold: kv' = kv + sum valid_j phi(k_j) v_j^T, z' = z + sum valid_j phi(k_j) over sinks <= j < n - window,
   valid_j the mask's last row (a padding mask's key column);
3. per query head and query row: phi(q), then num / den over the state (phi(q) kv, phi(q) . z), the linear keys
   (phi(q) . phi(k_j)) and the window's softmax scores (exp(wf) exp(q . k_j scale - max)), out = num / max(den,
   EPS). Causality is by index; windows and sinks by position with `depth` (a candidate tree's nodes sit at
   n - s + depth), as the reference's split_scores.
k and v may be in-place KV buffers (a ring's rows k0 .., v0 ..; module.py). exp is `fast_exp` (relative error
~2e-7). Arithmetic is the reference's in another order: tested to 1e-4 against it.
"""
from __future__ import annotations
import functools

from ...ir.opset.linear_attention import EPS
from .kernels import _lanes, fast_exp


def fused_ok(node) -> bool:
    """The kernel takes f32 q/k/v/kv/z/wq/wk/wf with static heads, head dims and feature sizes, a mask absent or
    bool [b or 1, 1, s, n]."""
    ts = [x.type for x in node.inputs]
    if any(t.dtype != "f32" for t in ts[:8]):
        return False
    q, k, v, kv, z, wq = ts[:6]
    static = (q.shape[1], k.shape[1], q.shape[3], v.shape[3], wq.shape[2], kv.shape[2])
    if not all(isinstance(x, int) for x in static) or static[1] == 0 or static[0] % static[1]:
        return False
    if len(ts) > 8:
        m = ts[8]
        if m.rank != 4 or m.shape[1] != 1 or m.shape[0] not in (1, q.shape[0]):
            return False
    return True


@functools.cache
def make_linear_attention(hq: int, hk: int, d: int, dv: int, m: int, feature_map: str, window: int, sinks: int,
                          scale: float, has_mask: bool, mask_batch: bool, has_depth: bool):
    """The TIR kernel (module docstring) for one op configuration:
    (q [b, hq, s, d], k [b, hk, kc, d], v [b, hk, vc, dv], kv [b, hk, f, dv], z [b, hk, f], wq [hq, d, m],
    wk [hk, d, m], wf [hq], mask [mb, 1, s, n] bool, depth [b, s] i64, n, k0, v0) -> (out [b, hq, s, dv],
    kv' [b, hk, f, dv], z' [b, hk, f]); the keys are k rows k0 .. k0 + n - 1 (v: v0 ..)."""
    from tvm.script import tirx as T
    g = hq // hk
    f = 2 * m if feature_map == "hedgehog" else m
    lf, ld = _lanes(f), _lanes(d)
    lowest = -3.4028234663852886e38

    @T.macro
    def phi(x, w, hw, out, row, y, st):
        """out[row, :] = phi(x . w[hw]) for the vector x [d]; y [m], st [4]: scratch."""
        for c in T.vectorized(m):
            y[c] = T.float32(0)
        for e in range(d):
            for c in T.vectorized(m):
                y[c] = y[c] + x[e] * w[hw, e, c]
        if feature_map == "hedgehog":     # [softmax(y), softmax(-y)]
            st[0] = T.float32(lowest)
            st[1] = T.float32(-lowest)
            for c in range(m):
                st[0] = T.max(st[0], y[c])
                st[1] = T.min(st[1], y[c])
            st[2] = T.float32(0)
            st[3] = T.float32(0)
            for c in T.vectorized(m):
                out[row, c] = fast_exp(y[c] - st[0])
                out[row, m + c] = fast_exp(st[1] - y[c])
            for c in range(m):
                st[2] = st[2] + out[row, c]
                st[3] = st[3] + out[row, m + c]
            for c in T.vectorized(m):
                out[row, c] = out[row, c] / st[2]
                out[row, m + c] = out[row, m + c] / st[3]
        elif feature_map == "elu":        # elu(y) + 1
            for c in T.vectorized(m):
                out[row, c] = T.Select(y[c] > T.float32(0), y[c] + T.float32(1), fast_exp(y[c]))
        else:                             # relu(y)^2
            for c in T.vectorized(m):
                out[row, c] = T.max(y[c], T.float32(0)) * T.max(y[c], T.float32(0))

    def at(depth, bi, j, n, s):
        """key j's position: its index for the past keys, n - s + its depth for a new one (with depth)"""
        if not has_depth:
            return j
        return T.Select(j < n - s, j, n - s + depth[bi, T.max(j - (n - s), T.int64(0))])

    def masked(mask, bi, i, j):
        return mask[bi if mask_batch else 0, 0, i, j] if has_mask else T.bool(True)

    def is_lin(depth, mask, bi, i, j, n, s):
        """causal by index, past the window by position and no sink (pure linear: every causal key), unmasked"""
        c = j <= n - s + i
        if window:
            c = T.And(c, T.And(at(depth, bi, n - s + i, n, s) - at(depth, bi, j, n, s) > T.int64(window),
                               j >= T.int64(sinks)))
        return T.And(c, masked(mask, bi, i, j))

    def is_win(depth, mask, bi, i, j, n, s):
        c = T.And(j <= n - s + i, T.Or(at(depth, bi, n - s + i, n, s) - at(depth, bi, j, n, s) <= T.int64(window),
                                       j < T.int64(sinks)))
        return T.And(c, masked(mask, bi, i, j))

    def folds(mask, bi, j, n, ms):
        """key j leaves the window in this call, and the last query may attend to it (key validity)"""
        c = T.And(j >= T.int64(sinks), j + T.int64(window) < n)
        return T.And(c, mask[bi if mask_batch else 0, 0, ms - 1, j]) if has_mask else c

    @T.macro
    def score(depth, mask, t, i, j, n, s, xin, k, k0, dot, sc, nd):
        """sc[j] = q . k_j * scale for a window key (else -inf); nd[1]: the running max"""
        if is_win(depth, mask, t // hk, i, j, n, s):
            for l in T.vectorized(ld):
                dot[l] = xin[l] * k[t // hk, t % hk, k0 + j, l]
            for c in range(1, d // ld):
                for l in T.vectorized(ld):
                    dot[l] = dot[l] + xin[c * ld + l] * k[t // hk, t % hk, k0 + j, c * ld + l]
            nd[2] = T.float32(0)
            for l in range(ld):
                nd[2] = nd[2] + dot[l]
            sc[j] = nd[2] * T.float32(scale)
            nd[1] = T.max(nd[1], sc[j])
        else:
            sc[j] = T.float32(float("-inf"))

    @T.macro
    def gather(t, gi, j, sc, nd, num, v, v0, wf):
        """a window key's exp(wf) exp(score - max) into num and the normalizer"""
        if sc[j] > T.float32(float("-inf")):
            nd[2] = fast_exp(sc[j] - nd[1]) * fast_exp(wf[t % hk * g + gi])
            nd[0] = nd[0] + nd[2]
            for e in T.vectorized(dv):
                num[e] = num[e] + nd[2] * v[t // hk, t % hk, v0 + j, e]

    @T.prim_func(private=True)
    def linear_attention(q_h: T.handle, k_h: T.handle, v_h: T.handle, kv_h: T.handle, z_h: T.handle,
                         wq_h: T.handle, wk_h: T.handle, wf_h: T.handle, m_h: T.handle, dp_h: T.handle,
                         n: T.int64, k0: T.int64, v0: T.int64, o_h: T.handle, kv2_h: T.handle, z2_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        b, s, kc, vc, mb, ms, mn, db, ds = (T.int64(), T.int64(), T.int64(), T.int64(), T.int64(), T.int64(),
                                            T.int64(), T.int64(), T.int64())
        q = T.match_buffer(q_h, (b, hq, s, d), "float32")
        k = T.match_buffer(k_h, (b, hk, kc, d), "float32")
        v = T.match_buffer(v_h, (b, hk, vc, dv), "float32")
        kv = T.match_buffer(kv_h, (b, hk, f, dv), "float32")
        z = T.match_buffer(z_h, (b, hk, f), "float32")
        wq = T.match_buffer(wq_h, (hq, d, m), "float32")
        wk = T.match_buffer(wk_h, (hk, d, m), "float32")
        wf = T.match_buffer(wf_h, (hq,), "float32")
        mask = T.match_buffer(m_h, (mb, 1, ms, mn), "bool")     # [1, 1, 1, 1] and unread without a mask
        depth = T.match_buffer(dp_h, (db, ds), "int64")        # [1, 1] and unread without depth
        o = T.match_buffer(o_h, (b, hq, s, dv), "float32")
        kv2 = T.match_buffer(kv2_h, (b, hk, f, dv), "float32")
        z2 = T.match_buffer(z2_h, (b, hk, f), "float32")
        for t in T.parallel(b * hk):
            fk = T.decl_buffer((T.min(n, T.max(T.min(T.int64(sinks), n - 1) + 1, n - T.int64(window)))
                                - T.min(T.int64(sinks), n - 1), f), "float32")
            fq = T.decl_buffer((1, f), "float32")
            xin = T.decl_buffer((d,), "float32")
            y = T.decl_buffer((m,), "float32")
            st = T.decl_buffer((4,), "float32")
            num = T.decl_buffer((dv,), "float32")
            nd = T.decl_buffer((3,), "float32")      # den, window max, a score
            dot = T.decl_buffer((max(lf, ld),), "float32")
            sc = T.decl_buffer((n,), "float32")
            lo = T.min(T.int64(sinks), n - 1)
            hi = T.min(n, T.max(lo + 1, n - T.int64(window)))
            for jj in range(hi - lo):
                for e in T.vectorized(d):
                    xin[e] = k[t // hk, t % hk, k0 + lo + jj, e]
                phi(xin, wk, t % hk, fk, jj, y, st)
            # the fold: keys sinks .. n - window - 1 leave the window now
            for c, e in T.grid(f, dv):
                kv2[t // hk, t % hk, c, e] = kv[t // hk, t % hk, c, e]
            for c in range(f):
                z2[t // hk, t % hk, c] = z[t // hk, t % hk, c]
            for jj in range(hi - lo):
                if folds(mask, t // hk, lo + jj, n, ms):
                    for c in range(f):
                        z2[t // hk, t % hk, c] = z2[t // hk, t % hk, c] + fk[jj, c]
                        for e in T.vectorized(dv):
                            kv2[t // hk, t % hk, c, e] = kv2[t // hk, t % hk, c, e] \
                                + fk[jj, c] * v[t // hk, t % hk, v0 + lo + jj, e]
            for gi, i in T.grid(g, s):
                for e in T.vectorized(d):
                    xin[e] = q[t // hk, t % hk * g + gi, i, e]
                phi(xin, wq, t % hk * g + gi, fq, 0, y, st)
                nd[0] = T.float32(0)      # the state: every key folded by earlier calls
                for e in T.vectorized(dv):
                    num[e] = T.float32(0)
                for c in range(f):
                    nd[0] = nd[0] + fq[0, c] * z[t // hk, t % hk, c]
                    for e in T.vectorized(dv):
                        num[e] = num[e] + fq[0, c] * kv[t // hk, t % hk, c, e]
                for jj in range(T.min(hi, n - s + i + 1) - lo):   # the linear keys of this call (causal: <= i)
                    if is_lin(depth, mask, t // hk, i, lo + jj, n, s):
                        for l in T.vectorized(lf):
                            dot[l] = fq[0, l] * fk[jj, l]
                        for c in range(1, f // lf):
                            for l in T.vectorized(lf):
                                dot[l] = dot[l] + fq[0, c * lf + l] * fk[jj, c * lf + l]
                        nd[2] = T.float32(0)
                        for l in range(lf):
                            nd[2] = nd[2] + dot[l]
                        nd[0] = nd[0] + nd[2]
                        for e in T.vectorized(dv):
                            num[e] = num[e] + nd[2] * v[t // hk, t % hk, v0 + lo + jj, e]
                if window > 0:   # the softmax window and sinks, weighted exp(wf) against the linear part: the
                    # sinks, and the keys from the query's position - window (a key's position is at most its
                    # index) to the query's own index
                    nd[1] = T.float32(lowest)
                    for j in range(T.min(T.int64(sinks), n)):
                        score(depth, mask, t, i, j, n, s, xin, k, k0, dot, sc, nd)
                    for j in range(T.max(T.int64(sinks), at(depth, t // hk, n - s + i, n, s) - T.int64(window)),
                                   n - s + i + 1):
                        score(depth, mask, t, i, j, n, s, xin, k, k0, dot, sc, nd)
                    for j in range(T.min(T.int64(sinks), n)):
                        gather(t, gi, j, sc, nd, num, v, v0, wf)
                    for j in range(T.max(T.int64(sinks), at(depth, t // hk, n - s + i, n, s) - T.int64(window)),
                                   n - s + i + 1):
                        gather(t, gi, j, sc, nd, num, v, v0, wf)
                for e in T.vectorized(dv):
                    o[t // hk, t % hk * g + gi, i, e] = num[e] / T.max(nd[0], T.float32(EPS))
    return linear_attention


def linear_attention(lw, node, args):
    """The fused kernel on Relax values (`fused_ok(node)` must hold): [out, kv', z']."""
    from tvm import relax
    a = node.attrs
    qt, kt, vt, kvt = (x.type for x in node.inputs[:4])
    hq, hk, d, dv, m = qt.shape[1], kt.shape[1], qt.shape[3], vt.shape[3], node.inputs[5].type.shape[2]
    scale = a["scale"] if a["scale"] is not None else d ** -0.5
    has_mask, has_depth = len(args) > 8, len(args) > 9
    mask_batch = has_mask and node.inputs[8].type.shape[0] != 1
    window, sinks = int(a["window"] or 0), int(a["sinks"] or 0)
    func = make_linear_attention(hq, hk, d, dv, m, a["feature_map"], window, sinks, float(scale), has_mask,
                                 mask_batch, has_depth)
    name = (f"linear_attention_{a['feature_map']}_{hq}x{hk}x{d}x{dv}x{m}_w{window}_s{sinks}"
            f"{'_m' if has_mask else ''}{'b' if mask_batch else ''}{'_d' if has_depth else ''}_"
            + float(scale).hex().replace(".", "_").replace("+", "").replace("-", "m"))
    gv = lw.kernel(name, func)
    q, k, v, kv, z, wq, wk, wf = args[:8]
    views = [lw.kv_view(x) for x in node.inputs[1:3]]
    if all(views):   # a ring's buffers (module.py): read its rows in place
        (k, n, k0), (v, _, v0) = views
    else:
        n, k0, v0 = lw.dim(kt.shape[2]), 0, 0
    mask = args[8] if has_mask else lw.const([[[[True]]]], "bool")
    depth = args[9] if has_depth else lw.const([[0]], "i64")
    outs = [relax.TensorType(lw.shape(node.outputs[0]), "float32"), relax.TensorType(lw.shape(node.inputs[3]), "float32"),
            relax.TensorType(lw.shape(node.inputs[4]), "float32")]
    call = lw.bb.emit(relax.call_tir(gv, [q, k, v, kv, z, wq, wk, wf, mask, depth, lw.prim(n), lw.prim(k0), lw.prim(v0)],
                                     outs))
    return [relax.TupleGetItem(call, i) for i in range(3)]
