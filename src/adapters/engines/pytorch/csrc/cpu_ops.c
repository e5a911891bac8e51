/* The decoder layer's elementwise work on the CPU, float32: residual add + RMSNorm, rotary over
 * the query and key heads with the K/V cache write, in one pass each.
 *
 * In torch these are chains of small ops (RMSNorm alone is eight), each a dispatch, an
 * allocation and a pass over memory: at a batch-16 decode step of SmolLM2 they cost ~15 ms of
 * a ~120 ms step on a 2-core machine, for a few hundred KB of data.
 *
 * Numbers: rotary and the residual add round exactly as torch does (no contraction into FMAs,
 * see the flags line), so they are bit for bit torch's; RMSNorm sums squares in double
 * (torch: float with its own order), so it differs from torch in the last bit at most.
 *
 * LMDEPLOY_CFLAGS: -ffp-contract=off
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Below this many elements a parallel region costs more than it saves (decode steps). */
#define PARALLEL_MIN (1 << 16)

/* Per row: x = residual + h (stored back into residual), or x = h when residual is NULL;
 * out = weight * (x * 1 / sqrt(mean(x^2) + eps)). */
void add_rms_norm_f32(const float *h, float *residual, const float *weight, float *out,
                      int64_t rows, int64_t dim, float eps, int num_threads) {
#pragma omp parallel for num_threads(num_threads) if (rows * dim >= PARALLEL_MIN) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const float *x = h + r * dim;
        if (residual != NULL) {
            float *res = residual + r * dim;
#pragma omp simd
            for (int64_t d = 0; d < dim; ++d) res[d] = res[d] + x[d];
            x = res;
        }
        double squares = 0.0;
#pragma omp simd reduction(+ : squares)
        for (int64_t d = 0; d < dim; ++d) squares += (double)x[d] * (double)x[d];
        const float inv = 1.0f / sqrtf((float)(squares / (double)dim) + eps);
        float *o = out + r * dim;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) o[d] = weight[d] * (x[d] * inv);
    }
}

/* qkv: [tokens, (heads + 2 * kv_heads) * dim] with row stride qkv_stride, q | k | v per row.
 * Rotates the q and k heads in place (rotate-half: x1 * cos - x2 * sin, x2 * cos + x1 * sin),
 * then copies each token's k and v heads to its cache slot (slot < 0: none).
 * cos, sin: [tokens, dim] with row stride cs_stride; caches: [slots, kv_heads * dim]. */
void rotary_write_kv_f32(float *qkv, int64_t qkv_stride, const float *cos, const float *sin,
                         int64_t cs_stride, const int64_t *slots, float *k_cache, float *v_cache,
                         int64_t tokens, int64_t heads, int64_t kv_heads, int64_t dim,
                         int num_threads) {
    const int64_t half = dim / 2, kv_width = kv_heads * dim;
#pragma omp parallel for num_threads(num_threads) \
    if (tokens * (heads + kv_heads) * dim >= PARALLEL_MIN) schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
        float *row = qkv + t * qkv_stride;
        const float *c = cos + t * cs_stride, *s = sin + t * cs_stride;
        for (int64_t h = 0; h < heads + kv_heads; ++h) {
            float *x = row + h * dim;
#pragma omp simd
            for (int64_t i = 0; i < half; ++i) {
                const float x1 = x[i], x2 = x[i + half];
                x[i] = x1 * c[i] - x2 * s[i];
                x[i + half] = x2 * c[i + half] + x1 * s[i + half];
            }
        }
        const int64_t slot = slots[t];
        if (slot >= 0) {
            memcpy(k_cache + slot * kv_width, row + heads * dim, sizeof(float) * kv_width);
            memcpy(v_cache + slot * kv_width, row + (heads + kv_heads) * dim,
                   sizeof(float) * kv_width);
        }
    }
}
