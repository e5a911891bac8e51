/* The units of work that the single-row decode step (`fused_decode.c`) calls per thread, from
 * inside its one parallel region: each is the body of a kernel's own parallel loop, exported
 * from that kernel's library (which keeps its own compile flags). Each source that defines one
 * includes this header, so a prototype and its definition cannot drift apart. */
#ifndef LMDEPLOY_DECODE_PARTS_H
#define LMDEPLOY_DECODE_PARTS_H
#include <stdint.h>

/* gguf_float.c: output columns [col0, col1) of y = x W^T (+ bias) for at most 4 rows. */
typedef void gguf_float_columns_fn(int qtype, const uint8_t *w, int64_t k, const float *x,
                                   int64_t x_stride, int64_t rows, const float *bias, float *y,
                                   int64_t y_stride, int64_t col0, int64_t col1);
/* gguf_repack.c: groups [g0, g1) (output columns 16 g0 .. 16 g1) of one row's y = x W^T
 * (+ bias), W as Q4 blocks repacked 16 rows a group (AVX-512 builds only). */
typedef void gguf_repack_columns_fn(int qtype, const uint8_t *packed, int64_t k, const float *x,
                                    const float *bias, float *y, int64_t g0, int64_t g1);
/* skinny_gemm.c: x [rows, k] transposed into the 16-row scratch the panels read ... */
typedef void skinny_transpose_fn(const float *x, int64_t x_stride, int64_t rows, int64_t k,
                                 float *scratch);
/* ... and panels [p0, p1) of y [rows, n] (contiguous) against it. */
typedef void skinny_panels_fn(const float *scratch, const float *packed, float *y, int64_t rows,
                              int64_t n, int64_t k, int64_t p0, int64_t p1);
/* cpu_ops.c: one row of add_rms_norm_f32, of rotary_write_kv_f32 (cos/sin: the token's row),
 * and columns [j0, j1) of one row of silu_and_mul_f32 (gate and up apart). */
typedef void add_rms_norm_row_fn(const float *h, float *residual, const float *weight,
                                 float *out, int64_t dim, float eps);
typedef void rotary_write_kv_row_fn(float *row, const float *cos, const float *sin,
                                    int64_t slot, float *k_cache, float *v_cache, int64_t heads,
                                    int64_t kv_heads, int64_t dim);
typedef void silu_and_mul_columns_fn(const float *gate, const float *up, float *out, int64_t j0,
                                     int64_t j1);
/* paged_decode_attention.c: the query heads of KV heads [h0, h1) of one sequence against its
 * tokens [first, end); scores: (h1 - h0) * group * (end - first) floats of scratch. */
typedef void paged_decode_attend_fn(const float *q, const float *k_cache, const float *v_cache,
                                    const int64_t *table, int64_t first, int64_t end, int64_t h0,
                                    int64_t h1, int64_t group, int64_t head_dim,
                                    int64_t block_size, int64_t token_stride, float scale,
                                    float softcap, float *scores, float *out);

/* [begin, end) of `count` items for thread t of T: contiguous chunks, as schedule(static). */
static inline void thread_share(int64_t count, int t, int T, int64_t *begin, int64_t *end) {
    const int64_t chunk = (count + T - 1) / T;
    *begin = t * chunk < count ? t * chunk : count;
    *end = *begin + chunk < count ? *begin + chunk : count;
}
#endif
