/* Linears over GGUF's Q4_0 / Q4_1 / Q8_0 blocks with float32 activations.
 *
 * Block formats as in `gguf_quants.c` (llama.cpp's ggml-common.h). Each block of 32 weights is
 * dequantized in registers, w = q * d + m (Q4_0: m = -8 d; Q8_0: m = 0), and multiplied into
 * float32 accumulators with the float32 activations: no activation rounding. The dequantized
 * weights are exact in float32 (an fp16 d times a q of at most 8 bits needs at most 19 bits of
 * mantissa, so the one FMA rounds only where the `gguf` package's d * q + m rounds), and the
 * output equals dequantize-then-matmul up to the order of the float32 sums.
 *
 * A decode step's few rows (<= TILE) take the weights straight from the blocks: a weight row
 * is read once for all of them. More rows (prefill) dequantize a weight row into a per-thread
 * float buffer (in L1/L2) once, then run tiles of TILE rows over it, so the dequantization is
 * paid once per weight rather than once per tile. Output columns are split over the threads.
 *
 * Vector paths: AVX-512F (16 lanes), AVX2 + FMA (8 lanes), and plain C otherwise; which one is
 * compiled follows the `-march` flags (tests force the AVX2 and the plain C path).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "decode_parts.h"
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#define QK 32
#define TILE 4
#define CHAINS 4 /* independent accumulators per row: FMA latency, not throughput, bounds one row */
enum { Q4_0 = 2, Q4_1 = 3, Q8_0 = 8 }; /* GGML's type ids */

static int64_t block_bytes(int qtype) {
    switch (qtype) {
    case Q4_0: return 2 + QK / 2;
    case Q4_1: return 4 + QK / 2;
    case Q8_0: return 2 + QK;
    default: return 0;
    }
}

static inline float half_to_float(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000 | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalize */
        int e = -1;
        uint32_t m = man;
        do { ++e, m <<= 1; } while (!(m & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((m & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* A block's scale d and offset m, and where its quants start. */
static inline const uint8_t *block_head(int qtype, const uint8_t *blk, float *d, float *m) {
    *d = half_to_float(blk);
    if (qtype == Q4_1) {
        *m = half_to_float(blk + 2);
        return blk + 4;
    }
    *m = qtype == Q4_0 ? -8.f * *d : 0.f;
    return blk + 2;
}

#if defined(__AVX512F__)
#define LANES 16
typedef __m512 vec;
#define vload _mm512_loadu_ps
#define vstore _mm512_storeu_ps
#define vfma _mm512_fmadd_ps
#define vset1 _mm512_set1_ps
#define vzero _mm512_setzero_ps
#define vadd _mm512_add_ps
#define vhsum _mm512_reduce_add_ps

/* The 32 weights of one block, in w[0] (elements 0..15) and w[1] (16..31). */
static inline void dequant(int qtype, const uint8_t *blk, vec *w) {
    float d, m;
    const uint8_t *qs = block_head(qtype, blk, &d, &m);
    const vec vd = vset1(d), vm = vset1(m);
    if (qtype == Q8_0) {
        for (int v = 0; v < 2; ++v) {
            const __m128i q = _mm_loadu_si128((const __m128i *)(qs + 16 * v));
            w[v] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), vd);
        }
        return;
    }
    /* The block's 16 possible weights, q * d + m for q = 0..15, looked up by nibble: a
     * permute reads only the low 4 bits of each index, so the low nibbles need no mask. */
    const vec table = vfma(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           vd, vm);
    const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    w[0] = _mm512_permutexvar_ps(idx, table);
    w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), table);
}
#elif defined(__AVX2__) && defined(__FMA__)
#define LANES 8
typedef __m256 vec;
#define vload _mm256_loadu_ps
#define vstore _mm256_storeu_ps
#define vfma _mm256_fmadd_ps
#define vset1 _mm256_set1_ps
#define vzero _mm256_setzero_ps
#define vadd _mm256_add_ps

static inline float vhsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 widen_u8(__m128i q) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)); }

/* The 32 weights of one block, 8 to a register: w[0] elements 0..7, ..., w[3] 24..31. */
static inline void dequant(int qtype, const uint8_t *blk, vec *w) {
    float d, m;
    const uint8_t *qs = block_head(qtype, blk, &d, &m);
    const vec vd = vset1(d), vm = vset1(m);
    if (qtype == Q8_0) {
        for (int v = 0; v < 4; ++v) {
            const __m128i q = _mm_loadl_epi64((const __m128i *)(qs + 8 * v));
            w[v] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), vd);
        }
        return;
    }
    const __m128i bytes = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(bytes, mask);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    w[0] = vfma(widen_u8(lo), vd, vm);
    w[1] = vfma(widen_u8(_mm_srli_si128(lo, 8)), vd, vm);
    w[2] = vfma(widen_u8(hi), vd, vm);
    w[3] = vfma(widen_u8(_mm_srli_si128(hi, 8)), vd, vm);
}
#else
#define LANES 1
typedef float vec;
#define vload(p) (*(p))
#define vstore(p, v) (*(p) = (v))
#define vfma(a, b, c) ((a) * (b) + (c))
#define vset1(x) (x)
#define vzero() 0.f
#define vadd(a, b) ((a) + (b))
#define vhsum(v) (v)

static inline void dequant(int qtype, const uint8_t *blk, vec *w) {
    float d, m;
    const uint8_t *qs = block_head(qtype, blk, &d, &m);
    if (qtype == Q8_0) {
        for (int j = 0; j < QK; ++j) w[j] = (float)(int8_t)qs[j] * d;
        return;
    }
    for (int j = 0; j < QK / 2; ++j) {
        w[j] = (float)(qs[j] & 0x0F) * d + m;
        w[j + QK / 2] = (float)(qs[j] >> 4) * d + m;
    }
}
#endif

#define NV (QK / LANES) /* vectors a block */

/* Blocks a step of the loop: with fewer vectors a block than chains, consecutive blocks
 * go to different chains (indices known at compile time keep the accumulators in registers). */
#define CHAIN_COUNT (CHAINS > NV ? CHAINS : NV)
#define STEP (CHAIN_COUNT / NV)

/* out[r] = x[r] . (weight row), R (<= TILE) rows, the weights dequantized in registers from
 * the blocks at `w`. */
static inline __attribute__((always_inline)) void
tile_dot(int qtype, const uint8_t *w, int64_t nb, const float *const *x, int R, float *out) {
    const int64_t bytes = block_bytes(qtype);
    vec acc[TILE][CHAIN_COUNT];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < CHAIN_COUNT; ++c) acc[r][c] = vzero();
    int64_t b = 0;
    for (; b + STEP <= nb; b += STEP) {
        for (int s = 0; s < STEP; ++s) {
            vec wv[NV];
            dequant(qtype, w + (b + s) * bytes, wv);
            for (int r = 0; r < R; ++r)
                for (int v = 0; v < NV; ++v)
                    acc[r][s * NV + v] =
                        vfma(wv[v], vload(x[r] + (b + s) * QK + v * LANES), acc[r][s * NV + v]);
        }
    }
    for (; b < nb; ++b) { /* a last odd block */
        vec wv[NV];
        dequant(qtype, w + b * bytes, wv);
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v)
                acc[r][v] = vfma(wv[v], vload(x[r] + b * QK + v * LANES), acc[r][v]);
    }
    for (int r = 0; r < R; ++r) {
        vec sum = acc[r][0];
        for (int c = 1; c < CHAIN_COUNT; ++c) sum = vadd(sum, acc[r][c]);
        out[r] = vhsum(sum);
    }
}

#define TILE_OF(QT)                                                           \
    switch (R) {                                                              \
    case 4: tile_dot(QT, wrow, nb, xs, 4, out); break;                        \
    case 3: tile_dot(QT, wrow, nb, xs, 3, out); break;                        \
    case 2: tile_dot(QT, wrow, nb, xs, 2, out); break;                        \
    default: tile_dot(QT, wrow, nb, xs, 1, out); break;                       \
    }

/* Columns [col0, col1) of a decode step's (<= TILE) rows: each weight row read once,
 * dequantized in registers, for all rows. The unit of work of matmul_few_rows's threads, and
 * of fused_decode.c's. */
gguf_float_columns_fn gguf_float_columns;
void gguf_float_columns(int qtype, const uint8_t *w, int64_t k, const float *x, int64_t x_stride,
                        int64_t rows, const float *bias, float *y, int64_t y_stride, int64_t col0,
                        int64_t col1) {
    const int64_t nb = k / QK, row_bytes = nb * block_bytes(qtype);
    const float *xs[TILE];
    for (int r = 0; r < rows; ++r) xs[r] = x + r * x_stride;
    const int R = (int)rows;
    for (int64_t col = col0; col < col1; ++col) {
        const uint8_t *wrow = w + col * row_bytes;
        float out[TILE];
        /* The type is a constant in each branch, so each inlines to its own loop. */
        if (qtype == Q4_0) {
            TILE_OF(Q4_0)
        } else if (qtype == Q4_1) {
            TILE_OF(Q4_1)
        } else {
            TILE_OF(Q8_0)
        }
        const float b = bias ? bias[col] : 0.f;
        for (int r = 0; r < R; ++r) y[r * y_stride + col] = out[r] + b;
    }
}

static void matmul_few_rows(int qtype, const uint8_t *w, int64_t n, int64_t k, const float *x,
                            int64_t x_stride, int64_t rows, const float *bias, float *y,
                            int64_t y_stride, int num_threads) {
#pragma omp parallel num_threads(num_threads)
    {
        int64_t col0, col1;
        thread_share(n, omp_get_thread_num(), omp_get_num_threads(), &col0, &col1);
        gguf_float_columns(qtype, w, k, x, x_stride, rows, bias, y, y_stride, col0, col1);
    }
}

static void dequant_row(int qtype, const uint8_t *w, int64_t nb, float *dst) {
    const int64_t bytes = block_bytes(qtype);
    for (int64_t b = 0; b < nb; ++b) {
        vec wv[NV];
        dequant(qtype, w + b * bytes, wv);
        for (int v = 0; v < NV; ++v) vstore(dst + b * QK + v * LANES, wv[v]);
    }
}

/* Output columns a prefill micro-tile holds: TILE x COLS accumulators stay in registers. */
#if LANES == 16
#define COLS 4
#elif LANES == 8
#define COLS 2
#else
#define COLS 1
#endif

/* acc[r][c] = x[r] . wf[c], over k floats: TILE rows x COLS dequantized weight rows. */
static inline void micro_tile(const float *wf, int64_t k, const float *const *x,
                              float out[TILE][COLS]) {
    vec acc[TILE][COLS];
    for (int r = 0; r < TILE; ++r)
        for (int c = 0; c < COLS; ++c) acc[r][c] = vzero();
    for (int64_t kk = 0; kk < k; kk += LANES) {
        vec wv[COLS];
        for (int c = 0; c < COLS; ++c) wv[c] = vload(wf + c * k + kk);
        for (int r = 0; r < TILE; ++r) {
            const vec xv = vload(x[r] + kk);
            for (int c = 0; c < COLS; ++c) acc[r][c] = vfma(xv, wv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < TILE; ++r)
        for (int c = 0; c < COLS; ++c) out[r][c] = vhsum(acc[r][c]);
}

/* Prefill: COLS weight rows at a time dequantized into a per-thread buffer (dequantization
 * paid once per weight), then every tile of TILE rows against them. Edge tiles compute on
 * zero weight rows / repeated input rows and store only the real outputs. Returns -2 when a
 * thread's buffer could not be allocated. */
static int matmul_many_rows(int qtype, const uint8_t *w, int64_t n, int64_t k, const float *x,
                            int64_t x_stride, int64_t rows, const float *bias, float *y,
                            int64_t y_stride, int num_threads) {
    const int64_t nb = k / QK, row_bytes = nb * block_bytes(qtype);
    const int64_t groups = (n + COLS - 1) / COLS;
    int failed = 0;
#pragma omp parallel num_threads(num_threads) reduction(| : failed)
    {
        float *wf = aligned_alloc(64, (size_t)((COLS * k * 4 + 63) / 64 * 64));
        failed = wf == NULL;
#pragma omp for schedule(static)
        for (int64_t g = 0; g < groups; ++g) {
            if (failed) continue;
            const int64_t col0 = g * COLS, cols = n - col0 < COLS ? n - col0 : COLS;
            for (int64_t c = 0; c < COLS; ++c) {
                if (c < cols)
                    dequant_row(qtype, w + (col0 + c) * row_bytes, nb, wf + c * k);
                else
                    memset(wf + c * k, 0, sizeof(float) * k);
            }
            for (int64_t row0 = 0; row0 < rows; row0 += TILE) {
                const float *xs[TILE];
                float out[TILE][COLS];
                for (int r = 0; r < TILE; ++r)
                    xs[r] = x + (row0 + r < rows ? row0 + r : row0) * x_stride;
                micro_tile(wf, k, xs, out);
                for (int64_t r = 0; r < TILE && row0 + r < rows; ++r)
                    for (int64_t c = 0; c < cols; ++c)
                        y[(row0 + r) * y_stride + col0 + c] =
                            out[r][c] + (bias ? bias[col0 + c] : 0.f);
            }
        }
        free(wf);
    }
    return failed ? -2 : 0;
}

/* y [rows, n] (row stride y_stride) = x @ W^T (+ bias), x float32 [rows, k] (row stride
 * x_stride), W n rows of k/32 blocks of `qtype`, bias n floats or NULL. Returns 0; -1 for a
 * type this file does not know; -2 when a prefill's row buffer could not be allocated. */
int gguf_float_matmul(int qtype, const uint8_t *w, int64_t n, int64_t k, const float *x,
                      int64_t x_stride, int64_t rows, const float *bias, float *y,
                      int64_t y_stride, int num_threads) {
    if (block_bytes(qtype) == 0) return -1;
    if (rows > TILE)
        return matmul_many_rows(qtype, w, n, k, x, x_stride, rows, bias, y, y_stride, num_threads);
    matmul_few_rows(qtype, w, n, k, x, x_stride, rows, bias, y, y_stride, num_threads);
    return 0;
}

/* The vector width compiled in (16, 8 or 1), for tests and the benchmark's report. */
int gguf_float_lanes(void) { return LANES; }
