/* y[M, N] = x[M, K] @ W^T for a decode step's few rows (M <= 16), float32, AVX2 + FMA.
 *
 * W [N, K] is packed once into panels of 16 output columns, `[N/16][K][16]` (N padded with
 * zero columns), so a panel streams front to back; x is transposed into `[K][16]` (zero rows
 * past M), so one k's inputs share a cache line. A tile is 6 rows x 16 columns: 12 ymm
 * accumulators, 2 for the panel's weights at k, 1 for the broadcast input: 15 of the 16
 * registers. Per k, 12 FMAs for 8 loads. The rows go in groups of 6 over the same panel, which
 * stays in L1/L2 between them, so every weight byte read from memory serves all rows.
 * Panels are split over the threads.
 *
 * LMDEPLOY_CFLAGS: -mavx2 -mfma
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include <omp.h>

#include "decode_parts.h"

#define LANES 16
#define ROWS 16
#define TILE 6
/* k-steps (64 B each) ahead to prefetch the panel: the first tile of a panel streams it from
 * memory, where the hardware prefetcher alone gave ~8-9 GB/s of weights (with: 9-11). */
#define PREFETCH 128

void pack_panels_f32(const float *w, int64_t n, int64_t k, float *packed) {
    const int64_t panels = (n + LANES - 1) / LANES;
    for (int64_t p = 0; p < panels; ++p)
        for (int64_t kk = 0; kk < k; ++kk)
            for (int64_t l = 0; l < LANES; ++l) {
                const int64_t col = p * LANES + l;
                packed[(p * k + kk) * LANES + l] = col < n ? w[col * k + kk] : 0.f;
            }
}

/* One row of the tile at k: its input broadcast, times the panel's 16 weights, into its two
 * accumulators. Spelled out per row so that the 12 accumulators stay in registers. */
#define ROW(r, lo, hi)                                  \
    {                                                   \
        const __m256 b = _mm256_broadcast_ss(x + (r));  \
        lo = _mm256_fmadd_ps(b, w0, lo);                \
        hi = _mm256_fmadd_ps(b, w1, hi);                \
    }
#define STORE(r, lo, hi) {_mm256_storeu_ps(acc_out[r], lo); _mm256_storeu_ps(acc_out[r] + 8, hi);}
#define EACH_ROW(F) F(0, a00, a01) F(1, a10, a11) F(2, a20, a21) F(3, a30, a31) F(4, a40, a41) F(5, a50, a51)

/* Rows [row0, row0 + TILE) of the transposed input against one panel. */
static void tile(const float *xt, int64_t row0, const float *w, int64_t k, float acc_out[TILE][LANES]) {
    __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps();
    __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
    __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps();
    __m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
    __m256 a40 = _mm256_setzero_ps(), a41 = _mm256_setzero_ps();
    __m256 a50 = _mm256_setzero_ps(), a51 = _mm256_setzero_ps();
    const float *x = xt + row0;
    for (int64_t kk = 0; kk < k; ++kk, w += LANES, x += ROWS) {
        _mm_prefetch((const char *)(w + PREFETCH * LANES), _MM_HINT_T0);
        const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
        EACH_ROW(ROW);
    }
    EACH_ROW(STORE);
}

skinny_transpose_fn skinny_transpose_f32;
/* x: [rows, k] with row stride x_stride, 1 <= rows <= 16, into scratch: 16 * k floats (x
 * transposed, zero rows past `rows`). */
void skinny_transpose_f32(const float *x, int64_t x_stride, int64_t rows, int64_t k,
                          float *scratch) {
    memset(scratch, 0, sizeof(float) * ROWS * k);
    for (int64_t m = 0; m < rows; ++m)
        for (int64_t kk = 0; kk < k; ++kk) scratch[kk * ROWS + m] = x[m * x_stride + kk];
}

skinny_panels_fn skinny_panels_f32;
/* Panels [p0, p1) of y [rows, n] (contiguous) from the transposed input: a thread's work. */
void skinny_panels_f32(const float *scratch, const float *packed, float *y, int64_t rows,
                       int64_t n, int64_t k, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
        const int64_t cols = n - p * LANES < LANES ? n - p * LANES : LANES;
        float acc[TILE][LANES];
        for (int64_t row0 = 0; row0 < rows; row0 += TILE) {
            /* A tile is 6 rows of the 16-wide transposed input: the last one (rows 12..15)
             * starts at 10 instead, and only its rows not yet written are stored. */
            const int64_t start = row0 + TILE > ROWS ? ROWS - TILE : row0;
            tile(scratch, start, packed + p * k * LANES, k, acc);
            for (int64_t m = row0; m < rows && m < row0 + TILE; ++m)
                memcpy(y + m * n + p * LANES, acc[m - start], sizeof(float) * cols);
        }
    }
}

/* x: [rows, k] with row stride x_stride, 1 <= rows <= 16; packed: from pack_panels_f32;
 * y: [rows, n] contiguous; scratch: 16 * k floats. Panels are split over the threads. */
void skinny_gemm_f32(const float *x, int64_t x_stride, const float *packed, float *y,
                     float *scratch, int64_t rows, int64_t n, int64_t k, int num_threads) {
    skinny_transpose_f32(x, x_stride, rows, k, scratch);
    const int64_t panels = (n + LANES - 1) / LANES;
#pragma omp parallel num_threads(num_threads)
    {
        int64_t p0, p1;
        thread_share(panels, omp_get_thread_num(), omp_get_num_threads(), &p0, &p1);
        skinny_panels_f32(scratch, packed, y, rows, n, k, p0, p1);
    }
}
