/* GGUF Q4_0 / Q4_1 weights repacked 16 output rows at a time, and the one-row GEMV over them.
 *
 * Why: `gguf_float.c` reads one row's 32-weight block at a time and pays, per block, two fp16
 * conversions, two broadcasts, a 16-entry table (FMA) and two permutes for two useful FMAs:
 * on a 2-core Zen 4 the GEMV is bound by that per-block work, not by memory (benchmark/NOTES).
 * Here the block headers of 16 rows come as vectors (one vcvtph2ps each, no broadcast) and the
 * input x_j is the broadcast operand, so the header is paid once per 16 rows' blocks.
 *
 * Layout (llama.cpp's repacked "x16" idea; our own format): for each group of 16 weight rows
 * and each block position b, one chunk of
 *   d[16]      fp16, the 16 rows' scales
 *   m[16]      fp16, the 16 rows' offsets (Q4_1 only; Q4_0's offset is -8 d)
 *   qs[16][16] byte j of row r's quants at qs[j][r]: its low nibble is weight j, its high
 *              nibble weight j + 16, as in the GGUF block.
 * Chunks go group-major (group g's blocks are contiguous), so a thread's groups are one range.
 *
 * Per block and 16 rows: S = sum_j q_j x_j (q_j the 16 rows' codes at position j, one
 * vector), then y += d S + m (sum_j x_j), with the blocks' sums of x computed once per call.
 * The result equals dequantize-then-matmul up to the order of the float32 sums.
 *
 * The GEMV needs AVX-512F; elsewhere `gguf_repack_available()` is 0 and callers keep
 * `gguf_float.c`'s path. The repack itself is plain C.
 */
#include <stdint.h>
#include <string.h>

#include <omp.h>

#include "decode_parts.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define QK 32
#define ROWS 16 /* output rows interleaved: one zmm of float32 */
enum { Q4_0 = 2, Q4_1 = 3 }; /* GGML's type ids */

static int64_t source_block_bytes(int qtype) {
    return qtype == Q4_0 ? 2 + QK / 2 : qtype == Q4_1 ? 4 + QK / 2 : 0;
}

/* Bytes of one repacked chunk (16 rows' block b); 0 for a type this file does not repack. */
static int64_t chunk_bytes(int qtype) {
    const int64_t head = qtype == Q4_0 ? 2 * ROWS : qtype == Q4_1 ? 4 * ROWS : -1;
    return head < 0 ? 0 : head + ROWS * QK / 2;
}

/* Bytes the repacked form of an [n, k] weight takes; -1 for a type or shape it cannot take. */
int64_t gguf_repack_bytes(int qtype, int64_t n, int64_t k) {
    if (chunk_bytes(qtype) == 0 || n <= 0 || k <= 0 || n % ROWS || k % QK) return -1;
    return n / ROWS * (k / QK) * chunk_bytes(qtype);
}

/* w: n rows of k/32 GGUF blocks -> out (gguf_repack_bytes bytes). Returns 0, or -1 for a type
 * or shape (n % 16, k % 32) this layout cannot take. */
int gguf_repack(int qtype, const uint8_t *w, int64_t n, int64_t k, uint8_t *out) {
    if (gguf_repack_bytes(qtype, n, k) < 0) return -1;
    const int64_t nb = k / QK, src_bytes = source_block_bytes(qtype), chunk = chunk_bytes(qtype);
    const int head = qtype == Q4_1 ? 4 : 2; /* bytes before a source block's quants */
    for (int64_t g = 0; g < n / ROWS; ++g) {
        for (int64_t b = 0; b < nb; ++b) {
            uint8_t *dst = out + (g * nb + b) * chunk;
            uint8_t *qs = dst + (chunk - ROWS * QK / 2);
            for (int r = 0; r < ROWS; ++r) {
                const uint8_t *blk = w + ((g * ROWS + r) * nb + b) * src_bytes;
                memcpy(dst + 2 * r, blk, 2);                               /* d */
                if (qtype == Q4_1) memcpy(dst + 2 * ROWS + 2 * r, blk + 2, 2); /* m */
                for (int j = 0; j < QK / 2; ++j) qs[j * ROWS + r] = blk[head + j];
            }
        }
    }
    return 0;
}

#if defined(__AVX512F__)
int gguf_repack_available(void) { return 1; }

/* The 16 rows' codes at positions j (low nibbles) and j + 16 (high), as floats: a permute of
 * the constant 0..15 table reads only the low 4 bits of each index, so no mask is needed. */
static inline __attribute__((always_inline)) void codes(const uint8_t *qs, int j, __m512 table,
                                                        __m512 *lo, __m512 *hi) {
    const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qs + j * ROWS)));
    *lo = _mm512_permutexvar_ps(idx, table);
    *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), table);
}

static inline __attribute__((always_inline)) void
groups(int qtype, const uint8_t *packed, int64_t nb, const float *x, const float *sx,
       const float *bias, float *y, int64_t g0, int64_t g1) {
    const int64_t chunk = chunk_bytes(qtype);
    const __m512 table =
        _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t g = g0; g < g1; ++g) {
        const uint8_t *c = packed + g * nb * chunk;
        __m512 acc_d = _mm512_setzero_ps(), acc_m = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; ++b, c += chunk) {
            const uint8_t *qs = c + (chunk - ROWS * QK / 2);
            const float *xb = x + b * QK;
            /* Four chains: one would wait on the FMA latency at every position. */
            __m512 s[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                           _mm512_setzero_ps()};
            for (int j = 0; j < QK / 2; j += 2) {
                __m512 lo0, hi0, lo1, hi1;
                codes(qs, j, table, &lo0, &hi0);
                codes(qs, j + 1, table, &lo1, &hi1);
                s[0] = _mm512_fmadd_ps(lo0, _mm512_set1_ps(xb[j]), s[0]);
                s[1] = _mm512_fmadd_ps(hi0, _mm512_set1_ps(xb[j + QK / 2]), s[1]);
                s[2] = _mm512_fmadd_ps(lo1, _mm512_set1_ps(xb[j + 1]), s[2]);
                s[3] = _mm512_fmadd_ps(hi1, _mm512_set1_ps(xb[j + 1 + QK / 2]), s[3]);
            }
            const __m512 sum = _mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3]));
            const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)c));
            acc_d = _mm512_fmadd_ps(d, sum, acc_d);
            /* Q4_0: w = d (q - 8), so its offset is -8 d (exact in float32). */
            const __m512 m = qtype == Q4_1
                                 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(c + 32)))
                                 : _mm512_mul_ps(d, _mm512_set1_ps(-8.f));
            acc_m = _mm512_fmadd_ps(m, _mm512_set1_ps(sx[b]), acc_m);
        }
        __m512 out = _mm512_add_ps(acc_d, acc_m);
        if (bias) out = _mm512_add_ps(out, _mm512_loadu_ps(bias + g * ROWS));
        _mm512_storeu_ps(y + g * ROWS, out);
    }
}

/* Groups [g0, g1) (output columns 16 g0 .. 16 g1) of one row's y = x W^T (+ bias), W repacked:
 * the unit of work of gguf_repack_gemv's threads, and of fused_decode.c's. */
gguf_repack_columns_fn gguf_repack_columns;
void gguf_repack_columns(int qtype, const uint8_t *packed, int64_t k, const float *x,
                         const float *bias, float *y, int64_t g0, int64_t g1) {
    const int64_t nb = k / QK;
    float sx[nb]; /* the blocks' sums of x: k / 32 floats */
    for (int64_t b = 0; b < nb; ++b) sx[b] = _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_loadu_ps(x + b * QK), _mm512_loadu_ps(x + b * QK + 16)));
    /* The type is a constant in each branch, so each inlines to its own loop. */
    if (qtype == Q4_1)
        groups(Q4_1, packed, nb, x, sx, bias, y, g0, g1);
    else
        groups(Q4_0, packed, nb, x, sx, bias, y, g0, g1);
}

/* y [n] = x [k] W^T (+ bias), W repacked by gguf_repack. Returns 0, or -1 for a type or shape
 * the layout does not take. */
int gguf_repack_gemv(int qtype, const uint8_t *packed, int64_t n, int64_t k, const float *x,
                     const float *bias, float *y, int num_threads) {
    if (gguf_repack_bytes(qtype, n, k) < 0) return -1;
#pragma omp parallel num_threads(num_threads)
    {
        int64_t g0, g1;
        thread_share(n / ROWS, omp_get_thread_num(), omp_get_num_threads(), &g0, &g1);
        gguf_repack_columns(qtype, packed, k, x, bias, y, g0, g1);
    }
    return 0;
}
#else
int gguf_repack_available(void) { return 0; }
int gguf_repack_gemv(int qtype, const uint8_t *packed, int64_t n, int64_t k, const float *x,
                     const float *bias, float *y, int num_threads) {
    (void)qtype, (void)packed, (void)n, (void)k, (void)x, (void)bias, (void)y, (void)num_threads;
    return -2; /* no AVX-512 in this build: callers check gguf_repack_available() first */
}
#endif
