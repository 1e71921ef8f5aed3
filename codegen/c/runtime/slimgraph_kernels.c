/* slimgraph_kernels.c: see slimgraph_kernels.h. Plain C99; OpenMP parallel loops when built with
 * -fopenmp (guarded by _OPENMP, so a compiler without it builds the same code serially). */
#include "slimgraph_kernels.h"

#include <math.h>
#include <string.h>

#define SG_MIN(a, b) ((a) < (b) ? (a) : (b))

/* A dot product with 8 independent accumulators: the compiler can keep them in one vector register
 * without -ffast-math (the sum order is fixed, not the sequential one). */
static inline float sg_dot(const float *restrict a, const float *restrict b, long n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    long i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

void sg_linear_f32(float *restrict y, const float *restrict x, const float *restrict w,
                   const float *restrict b, long M, long N, long K) {
    /* Blocked over N (a block of weight rows stays in cache while every row of x streams past it). */
    const long NB = 64;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (long n0 = 0; n0 < N; n0 += NB) {
        long n1 = SG_MIN(N, n0 + NB);
        for (long m = 0; m < M; m++) {
            const float *xr = x + m * K;
            float *yr = y + m * N;
            for (long n = n0; n < n1; n++) yr[n] = sg_dot(xr, w + n * K, K) + (b ? b[n] : 0.0f);
        }
    }
}

void sg_matmul_f32(float *restrict c, const float *restrict a, const float *restrict b, long M, long N, long K) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (long m = 0; m < M; m++) {
        float *cr = c + m * N;
        for (long n = 0; n < N; n++) cr[n] = 0.0f;
        for (long k = 0; k < K; k++) {
            float av = a[m * K + k];
            const float *br = b + k * N;
            for (long n = 0; n < N; n++) cr[n] += av * br[n];
        }
    }
}

/* Quantized linear: each weight row is dequantized group by group into a small buffer on the stack,
 * then dotted with every row of x (weights are read once per call, as a decode step wants). */
#define SG_QBLOCK 256
void sg_qlinear_i8_f32(float *restrict y, const float *restrict x, const int8_t *restrict q,
                       const float *restrict scales, const int8_t *restrict zeros, const float *restrict b,
                       long M, long N, long K, long group) {
    long ng = K / group;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (long n = 0; n < N; n++) {
        float wrow[SG_QBLOCK];
        for (long m = 0; m < M; m++) y[m * N + n] = b ? b[n] : 0.0f;
        for (long k0 = 0; k0 < K; k0 += SG_QBLOCK) {
            long k1 = SG_MIN(K, k0 + SG_QBLOCK);
            for (long k = k0; k < k1; k++) {
                long g = n * ng + k / group;
                float z = zeros ? (float)zeros[g] : 0.0f;
                wrow[k - k0] = ((float)q[n * K + k] - z) * scales[g];
            }
            for (long m = 0; m < M; m++) y[m * N + n] += sg_dot(x + m * K + k0, wrow, k1 - k0);
        }
    }
}

void sg_qlinear_i4_f32(float *restrict y, const float *restrict x, const uint8_t *restrict q,
                       const float *restrict scales, const uint8_t *restrict zeros, const float *restrict b,
                       long M, long N, long K, long group) {
    long ng = K / group, kb = K / 2;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (long n = 0; n < N; n++) {
        float wrow[SG_QBLOCK];
        for (long m = 0; m < M; m++) y[m * N + n] = b ? b[n] : 0.0f;
        for (long k0 = 0; k0 < K; k0 += SG_QBLOCK) {
            long k1 = SG_MIN(K, k0 + SG_QBLOCK);
            for (long k = k0; k < k1; k++) {
                long g = n * ng + k / group;
                uint8_t byte = q[n * kb + k / 2];
                float code = (float)((k & 1) ? (byte >> 4) : (byte & 0xF));
                float z = zeros ? (float)zeros[g] : 8.0f;
                wrow[k - k0] = (code - z) * scales[g];
            }
            for (long m = 0; m < M; m++) y[m * N + n] += sg_dot(x + m * K + k0, wrow, k1 - k0);
        }
    }
}

void sg_dequantize_i8_f32(float *restrict w, const int8_t *restrict q, const float *restrict scales,
                          const int8_t *restrict zeros, long N, long K, long group) {
    long ng = K / group;
    for (long n = 0; n < N; n++)
        for (long k = 0; k < K; k++) {
            long g = n * ng + k / group;
            w[n * K + k] = ((float)q[n * K + k] - (zeros ? (float)zeros[g] : 0.0f)) * scales[g];
        }
}

void sg_dequantize_i4_f32(float *restrict w, const uint8_t *restrict q, const float *restrict scales,
                          const uint8_t *restrict zeros, long N, long K, long group) {
    long ng = K / group, kb = K / 2;
    for (long n = 0; n < N; n++)
        for (long k = 0; k < K; k++) {
            long g = n * ng + k / group;
            uint8_t byte = q[n * kb + k / 2];
            float code = (float)((k & 1) ? (byte >> 4) : (byte & 0xF));
            w[n * K + k] = (code - (zeros ? (float)zeros[g] : 8.0f)) * scales[g];
        }
}

int sg_embedding(void *restrict out, const void *restrict table, const int64_t *restrict ids, long n,
                 long vocab, long dim, long elem) {
    for (long i = 0; i < n; i++) {
        int64_t id = ids[i];
        if (id < 0 || id >= vocab) return SG_ERR_INDEX;
        memcpy((char *)out + i * dim * elem, (const char *)table + id * dim * elem, (size_t)(dim * elem));
    }
    return 0;
}

void sg_layer_norm_f32(float *restrict y, const float *restrict x, const float *restrict w,
                       const float *restrict b, long rows, long n, float eps) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double mean = 0.0, var = 0.0;
        for (long i = 0; i < n; i++) mean += xr[i];
        mean /= (double)n;
        for (long i = 0; i < n; i++) var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
        var /= (double)n;
        float inv = (float)(1.0 / sqrt(var + (double)eps)), mu = (float)mean;
        for (long i = 0; i < n; i++) {
            float v = (xr[i] - mu) * inv;
            if (w) v *= w[i];
            if (b) v += b[i];
            yr[i] = v;
        }
    }
}

void sg_rms_norm_f32(float *restrict y, const float *restrict x, const float *restrict w, long rows, long n,
                     float eps) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double ss = 0.0;
        for (long i = 0; i < n; i++) ss += (double)xr[i] * (double)xr[i];
        float inv = 1.0f / sqrtf((float)(ss / (double)n) + eps);
        for (long i = 0; i < n; i++) yr[i] = w ? (xr[i] * inv) * w[i] : xr[i] * inv;
    }
}

void sg_softmax_f32(float *restrict y, const float *restrict x, long outer, long n, long inner, int log_) {
#ifdef _OPENMP
#pragma omp parallel for collapse(2) schedule(static)
#endif
    for (long o = 0; o < outer; o++)
        for (long j = 0; j < inner; j++) {
            const float *xr = x + o * n * inner + j;
            float *yr = y + o * n * inner + j;
            float mx = -INFINITY;
            for (long i = 0; i < n; i++) mx = xr[i * inner] > mx ? xr[i * inner] : mx;
            double s = 0.0;
            for (long i = 0; i < n; i++) s += exp((double)(xr[i * inner] - mx));
            if (log_) {
                float ls = (float)log(s);
                for (long i = 0; i < n; i++) yr[i * inner] = xr[i * inner] - mx - ls;
            } else {
                float inv = (float)(1.0 / s);
                for (long i = 0; i < n; i++) yr[i * inner] = expf(xr[i * inner] - mx) * inv;
            }
        }
}

void sg_rope_f32(float *restrict y, const float *restrict x, const float *restrict cos_,
                 const float *restrict sin_, int rank, const long *lead, const long *cs_strides, long d) {
    long h = d / 2, rows = 1, idx[16] = {0}, off = 0;
    for (int t = 0; t < rank; t++) rows *= lead[t];
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * d, *c = cos_ + off, *s = sin_ + off;
        float *yr = y + r * d;
        for (long i = 0; i < h; i++) yr[i] = xr[i] * c[i] + (-xr[i + h]) * s[i];
        for (long i = h; i < d; i++) yr[i] = xr[i] * c[i] + xr[i - h] * s[i];
        for (int t = rank - 1; t >= 0; t--) {
            idx[t]++;
            off += cs_strides[t];
            if (idx[t] < lead[t]) break;
            off -= cs_strides[t] * lead[t];
            idx[t] = 0;
        }
    }
}

void sg_attention_f32(float *restrict o, const float *restrict q, const float *restrict k,
                      const float *restrict v, const void *restrict mask, int mask_kind,
                      long msb, long msh, long msi, long msj, long B, long Hq, long Hk, long Lq, long Lk,
                      long D, long Dv, float scale, int causal, long window, long sinks) {
    long groups = Hq / Hk, shift = Lk - Lq;
#ifdef _OPENMP
#pragma omp parallel for collapse(3) schedule(static)
#endif
    for (long b = 0; b < B; b++)
        for (long h = 0; h < Hq; h++)
            for (long i = 0; i < Lq; i++) {
                const float *qi = q + ((b * Hq + h) * Lq + i) * D;
                const float *kb = k + (b * Hk + h / groups) * Lk * D;
                const float *vb = v + (b * Hk + h / groups) * Lk * Dv;
                float *oi = o + ((b * Hq + h) * Lq + i) * Dv;
                float sbuf[512];
                float *s = Lk <= 512 ? sbuf : NULL;
                /* Two passes over the keys when Lk exceeds the stack buffer: max first, then the sum. */
                float mx = -INFINITY;
                for (long j = 0; j < Lk; j++) {
                    float sc;
                    int keep = 1;
                    if (causal && j > i + shift) keep = 0;
                    if (window > 0 && !(j < sinks || (i + shift) - j <= window)) keep = 0;
                    long mo = b * msb + h * msh + i * msi + j * msj;
                    if (mask_kind == 1 && !((const uint8_t *)mask)[mo]) keep = 0;
                    if (!keep) {
                        sc = -INFINITY;
                    } else {
                        sc = sg_dot(qi, kb + j * D, D) * scale;
                        if (mask_kind == 2) sc += ((const float *)mask)[mo];
                    }
                    if (s) s[j] = sc;
                    if (sc > mx) mx = sc;
                }
                for (long e = 0; e < Dv; e++) oi[e] = 0.0f;
                if (mx == -INFINITY) continue;  /* every key masked: zeros, as torch's SDPA gives */
                double sum = 0.0;
                for (long j = 0; j < Lk; j++) {
                    float sc;
                    if (s) {
                        sc = s[j];
                    } else {
                        int keep = 1;
                        if (causal && j > i + shift) keep = 0;
                        if (window > 0 && !(j < sinks || (i + shift) - j <= window)) keep = 0;
                        long mo = b * msb + h * msh + i * msi + j * msj;
                        if (mask_kind == 1 && !((const uint8_t *)mask)[mo]) keep = 0;
                        sc = keep ? sg_dot(qi, kb + j * D, D) * scale : -INFINITY;
                        if (keep && mask_kind == 2) sc += ((const float *)mask)[mo];
                    }
                    if (sc == -INFINITY) continue;
                    float p = expf(sc - mx);
                    sum += p;
                    const float *vj = vb + j * Dv;
                    for (long e = 0; e < Dv; e++) oi[e] += p * vj[e];
                }
                float inv = (float)(1.0 / sum);
                for (long e = 0; e < Dv; e++) oi[e] *= inv;
            }
}

void sg_copy_strided(void *restrict dst, const void *restrict src, long elem, int rank, const long *shape,
                     const long *strides, long offset) {
    long n = 1;
    for (int d = 0; d < rank; d++) n *= shape[d];
    if (n == 0) return;
    long idx[16] = {0};
    long off = offset;
    char *out = (char *)dst;
    const char *in = (const char *)src;
    /* innermost dim as a run: one memcpy when it is contiguous */
    long inner = rank ? shape[rank - 1] : 1, istride = rank ? strides[rank - 1] : 1;
    for (long i = 0; i < n; i += inner) {
        if (istride == 1) {
            memcpy(out + i * elem, in + off * elem, (size_t)(inner * elem));
        } else {
            for (long t = 0; t < inner; t++) memcpy(out + (i + t) * elem, in + (off + t * istride) * elem, (size_t)elem);
        }
        for (int d = rank - 2; d >= 0; d--) {  /* advance the outer multi-index */
            idx[d]++;
            off += strides[d];
            if (idx[d] < shape[d]) break;
            off -= strides[d] * shape[d];
            idx[d] = 0;
        }
    }
}

void sg_copy_rows(void *restrict dst, long dst_pitch, const void *restrict src, long src_pitch, long rows,
                  long row_bytes) {
    for (long r = 0; r < rows; r++) memcpy((char *)dst + r * dst_pitch, (const char *)src + r * src_pitch, (size_t)row_bytes);
}

void sg_gather_offsets(void *restrict dst, const void *restrict src, long elem, const int32_t *restrict offsets,
                       long n) {
    char *out = (char *)dst;
    const char *in = (const char *)src;
    if (elem == 4) {
        for (long i = 0; i < n; i++) ((uint32_t *)out)[i] = ((const uint32_t *)in)[offsets[i]];
    } else {
        for (long i = 0; i < n; i++) memcpy(out + i * elem, in + (long)offsets[i] * elem, (size_t)elem);
    }
}

int sg_index_select(void *restrict out, const void *restrict x, const int64_t *restrict idx, long nidx,
                    long outer, long n, long inner, long elem) {
    for (long o = 0; o < outer; o++)
        for (long t = 0; t < nidx; t++) {
            int64_t j = idx[t];
            if (j < 0) j += n;
            if (j < 0 || j >= n) return SG_ERR_INDEX;
            memcpy((char *)out + ((o * nidx + t) * inner) * elem, (const char *)x + ((o * n + j) * inner) * elem,
                   (size_t)(inner * elem));
        }
    return 0;
}

void sg_reduce_f32(float *restrict y, const float *restrict x, int rank, const long *shape, const int *red,
                   int kind) {
    long n = 1, ny = 1, count = 1;
    long ystride[16];
    for (int d = rank - 1; d >= 0; d--) {
        n *= shape[d];
        if (red[d]) {
            ystride[d] = 0;
            count *= shape[d];
        } else {
            ystride[d] = ny;
            ny *= shape[d];
        }
    }
    float init = kind == 2 ? -INFINITY : kind == 3 ? INFINITY : kind == 4 ? 1.0f : 0.0f;
    for (long i = 0; i < ny; i++) y[i] = init;
    long idx[16] = {0};
    long yo = 0;
    for (long i = 0; i < n; i++) {
        float v = x[i];
        switch (kind) {
        case 0: case 1: y[yo] += v; break;
        case 2: if (v > y[yo] || v != v) y[yo] = v; break;
        case 3: if (v < y[yo] || v != v) y[yo] = v; break;
        default: y[yo] *= v; break;
        }
        for (int d = rank - 1; d >= 0; d--) {
            idx[d]++;
            yo += ystride[d];
            if (idx[d] < shape[d]) break;
            yo -= ystride[d] * shape[d];
            idx[d] = 0;
        }
    }
    if (kind == 1)
        for (long i = 0; i < ny; i++) y[i] /= (float)count;
}

void sg_conv2d_f32(float *restrict y, const float *restrict x, const float *restrict w, const float *restrict b,
                   long N, long C, long H, long W, long OC, long KH, long KW, long OH, long OW, long sh, long sw,
                   long ph, long pw, long dh, long dw, long groups) {
    long cg = C / groups, ocg = OC / groups;
#ifdef _OPENMP
#pragma omp parallel for collapse(2) schedule(static)
#endif
    for (long n = 0; n < N; n++)
        for (long oc = 0; oc < OC; oc++) {
            long g = oc / ocg;
            float *yo = y + (n * OC + oc) * OH * OW;
            for (long i = 0; i < OH * OW; i++) yo[i] = b ? b[oc] : 0.0f;
            for (long c = 0; c < cg; c++) {
                const float *xc = x + (n * C + g * cg + c) * H * W;
                const float *wc = w + (oc * cg + c) * KH * KW;
                for (long kh = 0; kh < KH; kh++)
                    for (long kw = 0; kw < KW; kw++) {
                        float wv = wc[kh * KW + kw];
                        for (long oh = 0; oh < OH; oh++) {
                            long ih = oh * sh - ph + kh * dh;
                            if (ih < 0 || ih >= H) continue;
                            for (long ow = 0; ow < OW; ow++) {
                                long iw = ow * sw - pw + kw * dw;
                                if (iw >= 0 && iw < W) yo[oh * OW + ow] += wv * xc[ih * W + iw];
                            }
                        }
                    }
            }
        }
}

void sg_pool2d_f32(float *restrict y, const float *restrict x, long NC, long H, long W, long OH, long OW, long KH,
                   long KW, long sh, long sw, long ph, long pw, int kind, int count_include_pad) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (long p = 0; p < NC; p++)
        for (long oh = 0; oh < OH; oh++)
            for (long ow = 0; ow < OW; ow++) {
                float acc = kind == 0 ? -INFINITY : 0.0f;
                long cnt = 0;
                for (long kh = 0; kh < KH; kh++)
                    for (long kw = 0; kw < KW; kw++) {
                        long ih = oh * sh - ph + kh, iw = ow * sw - pw + kw;
                        if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                        float v = x[(p * H + ih) * W + iw];
                        if (kind == 0) {
                            if (v > acc || v != v) acc = v;
                        } else {
                            acc += v;
                        }
                        cnt++;
                    }
                if (kind == 1) {
                    /* torch: padded positions count, positions past the padded input do not */
                    long h0 = oh * sh - ph, w0 = ow * sw - pw;
                    long h1 = h0 + KH < H + ph ? h0 + KH : H + ph, w1 = w0 + KW < W + pw ? w0 + KW : W + pw;
                    long div = count_include_pad ? (h1 - h0) * (w1 - w0) : cnt;
                    acc /= (float)div;
                }
                y[(p * OH + oh) * OW + ow] = acc;
            }
}

void sg_adaptive_avg_pool2d_f32(float *restrict y, const float *restrict x, long NC, long H, long W, long OH,
                                long OW) {
    for (long p = 0; p < NC; p++)
        for (long oh = 0; oh < OH; oh++)
            for (long ow = 0; ow < OW; ow++) {
                long h0 = oh * H / OH, h1 = ((oh + 1) * H + OH - 1) / OH;
                long w0 = ow * W / OW, w1 = ((ow + 1) * W + OW - 1) / OW;
                float acc = 0.0f;
                for (long ih = h0; ih < h1; ih++)
                    for (long iw = w0; iw < w1; iw++) acc += x[(p * H + ih) * W + iw];
                y[(p * OH + oh) * OW + ow] = acc / (float)((h1 - h0) * (w1 - w0));
            }
}

void sg_argmax_f32(int64_t *restrict y, const float *restrict x, long outer, long n, long inner, int is_min) {
    for (long o = 0; o < outer; o++)
        for (long j = 0; j < inner; j++) {
            const float *xr = x + o * n * inner + j;
            long best = 0;
            float bv = xr[0];
            for (long i = 1; i < n && bv == bv; i++) {
                float v = xr[i * inner];
                if (v != v || (is_min ? v < bv : v > bv)) {
                    best = i;
                    bv = v;
                }
            }
            y[o * inner + j] = best;
        }
}

int sg_qembedding_f32(float *restrict out, const int64_t *restrict ids, long n, const void *restrict q,
                      const float *restrict scales, const void *restrict zeros, long vocab, long K, long group,
                      int bits) {
    long ng = K / group;
    for (long i = 0; i < n; i++) {
        int64_t id = ids[i];
        if (id < 0 || id >= vocab) return SG_ERR_INDEX;
        if (bits == 8)
            sg_dequantize_i8_f32(out + i * K, (const int8_t *)q + id * K, scales + id * ng,
                                 zeros ? (const int8_t *)zeros + id * ng : NULL, 1, K, group);
        else
            sg_dequantize_i4_f32(out + i * K, (const uint8_t *)q + id * (K / 2), scales + id * ng,
                                 zeros ? (const uint8_t *)zeros + id * ng : NULL, 1, K, group);
    }
    return 0;
}
