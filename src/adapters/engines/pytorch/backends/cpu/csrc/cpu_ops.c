/* The decoder layer's elementwise work on the CPU, float32: residual add + RMSNorm, rotary over
 * the query and key heads with the K/V cache write, SiLU-and-mul, in one pass each.
 *
 * In torch these are chains of small ops (RMSNorm alone is eight), each a dispatch, an
 * allocation and a pass over memory: at a batch-16 decode step of SmolLM2 they cost ~15 ms of
 * a ~120 ms step on a 2-core machine, for a few hundred KB of data.
 *
 * Numbers: rotary and the residual add round exactly as torch does (no contraction into FMAs,
 * see the flags line), so they are bit for bit torch's; RMSNorm sums squares in double
 * (torch: float with its own order), so it differs from torch in the last bit at most. SiLU
 * uses its own exp (below): a few ulp from torch's.
 *
 * LMDEPLOY_CFLAGS: -ffp-contract=off
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "decode_parts.h"
#ifdef __AVX2__
#include <immintrin.h>
#endif

/* Below this many elements a parallel region costs more than it saves (decode steps). */
#define PARALLEL_MIN (1 << 16)

add_rms_norm_row_fn add_rms_norm_row_f32;
/* One row: x = residual + h (stored back into residual), or x = h when residual is NULL;
 * out = weight * (x * 1 / sqrt(mean(x^2) + eps)). */
void add_rms_norm_row_f32(const float *h, float *residual, const float *weight, float *out,
                          int64_t dim, float eps) {
    const float *x = h;
    if (residual != NULL) {
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) residual[d] = residual[d] + h[d];
        x = residual;
    }
    double squares = 0.0;
#pragma omp simd reduction(+ : squares)
    for (int64_t d = 0; d < dim; ++d) squares += (double)x[d] * (double)x[d];
    const float inv = 1.0f / sqrtf((float)(squares / (double)dim) + eps);
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) out[d] = weight[d] * (x[d] * inv);
}

void add_rms_norm_f32(const float *h, float *residual, const float *weight, float *out,
                      int64_t rows, int64_t dim, float eps, int num_threads) {
#pragma omp parallel for num_threads(num_threads) if (rows * dim >= PARALLEL_MIN) schedule(static)
    for (int64_t r = 0; r < rows; ++r)
        add_rms_norm_row_f32(h + r * dim, residual == NULL ? NULL : residual + r * dim, weight,
                             out + r * dim, dim, eps);
}

rotary_write_kv_row_fn rotary_write_kv_row_f32;
/* One token's row of q | k | v heads: rotates the q and k heads in place (rotate-half:
 * x1 * cos - x2 * sin, x2 * cos + x1 * sin), then copies its k and v heads to cache slot
 * `slot` (< 0: none) of caches [slots, kv_heads * dim]. */
void rotary_write_kv_row_f32(float *row, const float *c, const float *s, int64_t slot,
                             float *k_cache, float *v_cache, int64_t heads, int64_t kv_heads,
                             int64_t dim) {
    const int64_t half = dim / 2, kv_width = kv_heads * dim;
    for (int64_t h = 0; h < heads + kv_heads; ++h) {
        float *x = row + h * dim;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
            const float x1 = x[i], x2 = x[i + half];
            x[i] = x1 * c[i] - x2 * s[i];
            x[i + half] = x2 * c[i + half] + x1 * s[i + half];
        }
    }
    if (slot >= 0) {
        memcpy(k_cache + slot * kv_width, row + heads * dim, sizeof(float) * kv_width);
        memcpy(v_cache + slot * kv_width, row + (heads + kv_heads) * dim, sizeof(float) * kv_width);
    }
}

/* qkv: [tokens, (heads + 2 * kv_heads) * dim] with row stride qkv_stride, q | k | v per row;
 * cos, sin: [tokens, dim] with row stride cs_stride; slots: each token's cache slot. */
void rotary_write_kv_f32(float *qkv, int64_t qkv_stride, const float *cos, const float *sin,
                         int64_t cs_stride, const int64_t *slots, float *k_cache, float *v_cache,
                         int64_t tokens, int64_t heads, int64_t kv_heads, int64_t dim,
                         int num_threads) {
#pragma omp parallel for num_threads(num_threads) \
    if (tokens * (heads + kv_heads) * dim >= PARALLEL_MIN) schedule(static)
    for (int64_t t = 0; t < tokens; ++t)
        rotary_write_kv_row_f32(qkv + t * qkv_stride, cos + t * cs_stride, sin + t * cs_stride,
                                slots[t], k_cache, v_cache, heads, kv_heads, dim);
}

/* SiLU-and-mul over 8 lanes with its own e^x (libm's expf is a call per element): x = n ln2 + r
 * with |r| <= ln2 / 2, e^r by its degree-6 Taylor polynomial (error ~2e-8 there), times 2^n
 * built in the exponent bits; the argument is clamped to [-88, 88]. Within 3 ulp of the exact
 * silu(x) * up (torch's vectorized one: within 2). */
#ifdef __AVX2__
static inline __m256 exp8(__m256 x) {
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
    static const float coef[] = {1.f / 720.f, 1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f, 1.f, 1.f};
    __m256 p = _mm256_set1_ps(coef[0]);
    for (int i = 1; i < 7; ++i) p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(coef[i]));
    const __m256i bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

static inline float silu_mul(float x, float up) { return x / (1.f + expf(-x)) * up; }

silu_and_mul_columns_fn silu_and_mul_columns_f32;
/* out[j] = silu(gate[j]) * up[j] for j in [j0, j1). */
void silu_and_mul_columns_f32(const float *g, const float *u, float *o, int64_t j0, int64_t j1) {
    int64_t j = j0;
#ifdef __AVX2__
    const __m256 one = _mm256_set1_ps(1.f), lo = _mm256_set1_ps(-88.f), hi = _mm256_set1_ps(88.f);
    for (; j + 8 <= j1; j += 8) {
        const __m256 x = _mm256_loadu_ps(g + j);
        const __m256 neg = _mm256_min_ps(_mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), x), lo), hi);
        const __m256 silu = _mm256_div_ps(x, _mm256_add_ps(one, exp8(neg)));
        _mm256_storeu_ps(o + j, _mm256_mul_ps(silu, _mm256_loadu_ps(u + j)));
    }
#endif
    for (; j < j1; ++j) o[j] = silu_mul(g[j], u[j]);
}

/* gate_up: [rows, 2 * inter] (gate | up); out: [rows, inter] = silu(gate) * up. */
void silu_and_mul_f32(const float *gate_up, float *out, int64_t rows, int64_t inter,
                      int num_threads) {
#pragma omp parallel for num_threads(num_threads) if (rows * inter >= PARALLEL_MIN) schedule(static)
    for (int64_t r = 0; r < rows; ++r)
        silu_and_mul_columns_f32(gate_up + r * 2 * inter, gate_up + r * 2 * inter + inter,
                                 out + r * inter, 0, inter);
}
