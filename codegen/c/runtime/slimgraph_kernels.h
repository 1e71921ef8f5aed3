/* slimgraph_kernels.h: the hand-written kernel library of slimgraph's `c` target.
 *
 * Plain C99 (+ optional OpenMP), no dependencies beyond libm. Every tensor is a dense row-major
 * buffer; shapes are passed as arguments (the generated model.c resolves them at build time).
 * Float kernels compute in f32. Functions returning int return 0 on success and a nonzero
 * SG_ERR_* code on bad data (e.g. an embedding id out of range).
 */
#ifndef SLIMGRAPH_KERNELS_H
#define SLIMGRAPH_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SG_ERR_INDEX 1 /* an index/id input is out of range */

/* Python-style integer division and remainder (torch.floor_divide / torch.remainder). */
static inline int64_t sg_floordiv_i64(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
static inline int64_t sg_rem_i64(int64_t a, int64_t b) {
    int64_t r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}

/* y[M,N] = x[M,K] @ w[N,K]^T (+ b[N]); w laid out as torch.nn.Linear's weight. */
void sg_linear_f32(float *restrict y, const float *restrict x, const float *restrict w,
                   const float *restrict b, long M, long N, long K);
/* c[M,N] = a[M,K] @ b[K,N] (row-major b). */
void sg_matmul_f32(float *restrict c, const float *restrict a, const float *restrict b, long M, long N, long K);
/* Quantized linear (ir/opset/quant.py `qlinear`): W[n,k] = (q[n,k] - zero[n,k/g]) * scale[n,k/g].
 * int8: q i8[N,K], zeros i8[N,K/g] or NULL (zero 0). int4: q u8[N,K/2] (column 2j in the low nibble,
 * 2j+1 in the high one), zeros u8[N,K/g] or NULL (implied zero 8). scales f32[N,K/g]; group g divides K. */
void sg_qlinear_i8_f32(float *restrict y, const float *restrict x, const int8_t *restrict q,
                       const float *restrict scales, const int8_t *restrict zeros, const float *restrict b,
                       long M, long N, long K, long group);
void sg_qlinear_i4_f32(float *restrict y, const float *restrict x, const uint8_t *restrict q,
                       const float *restrict scales, const uint8_t *restrict zeros, const float *restrict b,
                       long M, long N, long K, long group);
/* dequantize to f32 W[N,K] (same layouts as above). */
void sg_dequantize_i8_f32(float *restrict w, const int8_t *restrict q, const float *restrict scales,
                          const int8_t *restrict zeros, long N, long K, long group);
void sg_dequantize_i4_f32(float *restrict w, const uint8_t *restrict q, const float *restrict scales,
                          const uint8_t *restrict zeros, long N, long K, long group);

/* out[i, :] = table[ids[i], :] for n ids of a [vocab, dim] table of `elem` bytes per element. */
int sg_embedding(void *restrict out, const void *restrict table, const int64_t *restrict ids, long n,
                 long vocab, long dim, long elem);
/* Normalizations over the last n elements of each of `rows` rows. w/b may be NULL. */
void sg_layer_norm_f32(float *restrict y, const float *restrict x, const float *restrict w,
                       const float *restrict b, long rows, long n, float eps);
void sg_rms_norm_f32(float *restrict y, const float *restrict x, const float *restrict w, long rows, long n,
                     float eps);
/* softmax (or log_softmax when `log`) over the middle dim of x viewed as [outer, n, inner]. */
void sg_softmax_f32(float *restrict y, const float *restrict x, long outer, long n, long inner, int log);
/* Rotary embedding, rotate-half form: y = x * cos + rotate_half(x) * sin, x and y [lead..., d] (lead has
 * `rank` dims); cos/sin rows [d] start at sum_t idx_t * cs_strides[t] (0 where they broadcast). */
void sg_rope_f32(float *restrict y, const float *restrict x, const float *restrict cos_,
                 const float *restrict sin_, int rank, const long *lead, const long *cs_strides, long d);

/* Attention (ir/opset/nn.py `attention`): q [B,Hq,Lq,D], k [B,Hk,Lk,D], v [B,Hk,Lk,Dv] -> o [B,Hq,Lq,Dv];
 * Hq % Hk == 0 (GQA). mask: NULL, or bool (mask_kind 1) / f32 additive (mask_kind 2) elements at
 * mask[b*msb + h*msh + i*msi + j*msj] (strides in elements, 0 where broadcast). causal: key j visible
 * to query i iff j <= i + Lk - Lq; window > 0: also j < sinks or (i + Lk - Lq) - j <= window. A row
 * with every key masked gives zeros (torch's scaled_dot_product_attention does the same). */
void sg_attention_f32(float *restrict o, const float *restrict q, const float *restrict k,
                      const float *restrict v, const void *restrict mask, int mask_kind,
                      long msb, long msh, long msi, long msj, long B, long Hq, long Hk, long Lq, long Lk,
                      long D, long Dv, float scale, int causal, long window, long sinks);

/* dst[i] = src[offset + sum_d idx_d * strides[d]] over a rank-r index space (strides in elements,
 * may be 0 or negative); elem = bytes per element. Permute, slice, select, expand, concat pieces. */
void sg_copy_strided(void *restrict dst, const void *restrict src, long elem, int rank, const long *shape,
                     const long *strides, long offset);
/* rows x row_bytes bytes from src (row pitch src_pitch bytes) to dst (pitch dst_pitch): concat pieces. */
void sg_copy_rows(void *restrict dst, long dst_pitch, const void *restrict src, long src_pitch, long rows,
                  long row_bytes);
/* dst[i] = src[offsets[i]] for n elements: gathers whose pattern is known at build time. */
void sg_gather_offsets(void *restrict dst, const void *restrict src, long elem, const int32_t *restrict offsets,
                       long n);
/* Row gather along one axis: x viewed as [outer, n, inner] -> out [outer, len(idx), inner]. */
int sg_index_select(void *restrict out, const void *restrict x, const int64_t *restrict idx, long nidx,
                    long outer, long n, long inner, long elem);

/* Reductions: x of rank r with shape[]; red[d] != 0 marks reduced dims; y holds the kept dims in order.
 * kind: 0 sum, 1 mean, 2 max, 3 min, 4 prod. */
void sg_reduce_f32(float *restrict y, const float *restrict x, int rank, const long *shape, const int *red,
                   int kind);

/* 2-D convolution (NCHW, weight [OC, C/groups, KH, KW], bias [OC] or NULL), torch.nn.functional.conv2d. */
void sg_conv2d_f32(float *restrict y, const float *restrict x, const float *restrict w, const float *restrict b,
                   long N, long C, long H, long W, long OC, long KH, long KW, long OH, long OW, long sh, long sw,
                   long ph, long pw, long dh, long dw, long groups);
/* Pooling over the last two dims of x [NC, H, W]: kind 0 max, 1 average (count_include_pad: divide by
 * KH*KW, else by the in-bounds count); padding as torch (max ignores padded positions). */
void sg_pool2d_f32(float *restrict y, const float *restrict x, long NC, long H, long W, long OH, long OW, long KH,
                   long KW, long sh, long sw, long ph, long pw, int kind, int count_include_pad);
/* adaptive average pooling: output cell i covers rows floor(i*H/OH) .. ceil((i+1)*H/OH) - 1 (likewise cols). */
void sg_adaptive_avg_pool2d_f32(float *restrict y, const float *restrict x, long NC, long H, long W, long OH,
                                long OW);
/* index of the largest (is_min: smallest) element along the middle dim of [outer, n, inner]; the first
 * one on ties, a NaN counts as the largest (and smallest), as torch.argmax/argmin. */
void sg_argmax_f32(int64_t *restrict y, const float *restrict x, long outer, long n, long inner, int is_min);
/* embedding rows dequantized from a packed table (ir/opset/quant.py `qembedding`, layouts as qlinear). */
int sg_qembedding_f32(float *restrict out, const int64_t *restrict ids, long n, const void *restrict q,
                      const float *restrict scales, const void *restrict zeros, long vocab, long K, long group,
                      int bits);

#ifdef __cplusplus
}
#endif
#endif
