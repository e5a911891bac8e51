/* Linears over GGUF's quantized blocks, kept as the file stores them: Q4_0, Q4_1, Q8_0.
 *
 * Block formats (llama.cpp's ggml-common.h), 32 weights of one row along K each:
 *   Q4_0: fp16 d, 16 bytes of nibbles            w = (q - 8) * d
 *   Q4_1: fp16 d, fp16 m, 16 bytes of nibbles     w = q * d + m
 *   Q8_0: fp16 d, 32 int8                         w = q * d
 * Nibble j of a block holds element j in its low half and element j + 16 in its high half.
 *
 * As llama.cpp does, the activations are quantized per row to 8-bit blocks of 32 (`q8_block`:
 * scale d = max|x| / 127, q = round(x / d), and s = d * sum(q) for the offset terms), so a
 * block's dot product is integer work: unsigned 4-bit weights times signed 8-bit inputs, 32
 * products summed into 8 int32 lanes by one `vpdpbusd` (AVX-512 VNNI) or `vpmaddubsw` +
 * `vpmaddwd` (AVX2). Q8_0's signed weights take the sign trick (|w| times x with w's sign).
 * Q4_0's -8 and Q4_1's m come out of the integer sum through s:
 *   Q4_0: d_w d_x sum(q_w q_x) - 8 d_w s_x      Q4_1: d_w d_x sum(q_w q_x) + m_w s_x
 *
 * A weight row (at most a few KB) is unpacked once per tile of 4 activation rows, which stay
 * in L1 with it; output rows are split over the threads.
 *
 * LMDEPLOY_CFLAGS: -mavx2 -mfma -mf16c
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define QK 32
enum { Q4_0 = 2, Q4_1 = 3, Q8_0 = 8 }; /* GGML's type ids */
#define TILE 4

typedef struct {
    float d, s;
    int8_t qs[QK];
} q8_block;

static inline float half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

int64_t gguf_block_bytes(int qtype) {
    switch (qtype) {
    case Q4_0: return 2 + QK / 2;
    case Q4_1: return 4 + QK / 2;
    case Q8_0: return 2 + QK;
    default: return 0;
    }
}

/* x [rows, k] (row stride x_stride) -> rows * k/32 q8 blocks. */
void gguf_quantize_rows_q8(const float *x, int64_t x_stride, int64_t rows, int64_t k,
                           q8_block *out, int num_threads) {
    const int64_t nb = k / QK;
#pragma omp parallel for num_threads(num_threads) schedule(static) if (rows * k >= 65536)
    for (int64_t i = 0; i < rows * nb; ++i) {
        const float *src = x + (i / nb) * x_stride + (i % nb) * QK;
        float amax = 0.f;
        for (int j = 0; j < QK; ++j) amax = fmaxf(amax, fabsf(src[j]));
        const float d = amax / 127.f, inv = d != 0.f ? 1.f / d : 0.f;
        int sum = 0;
        for (int j = 0; j < QK; ++j) {
            const int q = (int)lrintf(src[j] * inv);
            out[i].qs[j] = (int8_t)q;
            sum += q;
        }
        out[i].d = d;
        out[i].s = d * (float)sum;
    }
}

/* sum over 32 lanes of u8 * s8, as 8 int32 lanes. */
static inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

static inline __m256i unpack_nibbles(const uint8_t *qs) {
    const __m128i bytes = _mm_loadu_si128((const __m128i *)qs);
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(bytes, mask);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    return _mm256_set_m128i(hi, lo);
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One weight row against R (<= TILE, a constant after inlining) activation rows. */
static inline __attribute__((always_inline)) void
row_dot(int qtype, const uint8_t *w, int64_t nb, const q8_block *const *x, int R, float *out) {
    __m256 acc[TILE];
    float offset[TILE];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps(), offset[r] = 0.f;
    const int64_t bytes = gguf_block_bytes(qtype);
    for (int64_t b = 0; b < nb; ++b, w += bytes) {
        const float dw = half(w);
        __m256i u, sign = _mm256_setzero_si256();
        float mw = 0.f;
        if (qtype == Q4_0) {
            u = unpack_nibbles(w + 2), mw = -8.f * dw;
        } else if (qtype == Q4_1) {
            u = unpack_nibbles(w + 4), mw = half(w + 2);
        } else {
            sign = _mm256_loadu_si256((const __m256i *)(w + 2));
            u = _mm256_sign_epi8(sign, sign);
        }
        for (int r = 0; r < R; ++r) {
            const q8_block *xb = x[r] + b;
            __m256i s = _mm256_loadu_si256((const __m256i *)xb->qs);
            if (qtype == Q8_0) s = _mm256_sign_epi8(s, sign);
            const __m256 dot = _mm256_cvtepi32_ps(dot_u8s8(u, s));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb->d), dot, acc[r]);
            offset[r] += mw * xb->s;
        }
    }
    for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]) + offset[r];
}

#define ROWS_OF(QT)                                                           \
    switch (R) {                                                              \
    case 4: row_dot(QT, wrow, nb, xs, 4, out); break;                         \
    case 3: row_dot(QT, wrow, nb, xs, 3, out); break;                         \
    case 2: row_dot(QT, wrow, nb, xs, 2, out); break;                         \
    default: row_dot(QT, wrow, nb, xs, 1, out); break;                        \
    }

/* y [rows, n] (row stride y_stride) = x @ W^T, x given as q8 blocks [rows, k/32] and W as
 * n rows of k/32 blocks of `qtype`. Returns 0, or -1 for a type this file does not know. */
int gguf_matmul(int qtype, const uint8_t *w, int64_t n, int64_t k, const q8_block *xq,
                int64_t rows, float *y, int64_t y_stride, int num_threads) {
    const int64_t bytes = gguf_block_bytes(qtype);
    if (bytes == 0) return -1;
    const int64_t nb = k / QK, row_bytes = nb * bytes;
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t col = 0; col < n; ++col) {
        const uint8_t *wrow = w + col * row_bytes;
        for (int64_t row0 = 0; row0 < rows; row0 += TILE) {
            const int R = rows - row0 < TILE ? (int)(rows - row0) : TILE;
            const q8_block *xs[TILE];
            float out[TILE];
            for (int r = 0; r < R; ++r) xs[r] = xq + (row0 + r) * nb;
            /* The type is a constant in each branch, so each inlines to its own loop. */
            if (qtype == Q4_0) {
                ROWS_OF(Q4_0)
            } else if (qtype == Q4_1) {
                ROWS_OF(Q4_1)
            } else {
                ROWS_OF(Q8_0)
            }
            for (int r = 0; r < R; ++r) y[(row0 + r) * y_stride + col] = out[r];
        }
    }
    return 0;
}

/* Rows `index[0..count)` of W (n rows of k/32 blocks) dequantized into out [count, k]. */
int gguf_dequantize_rows(int qtype, const uint8_t *w, int64_t k, const int64_t *index,
                         int64_t count, float *out) {
    const int64_t bytes = gguf_block_bytes(qtype);
    if (bytes == 0) return -1;
    const int64_t nb = k / QK;
    for (int64_t i = 0; i < count; ++i) {
        const uint8_t *blk = w + index[i] * nb * bytes;
        float *dst = out + i * k;
        for (int64_t b = 0; b < nb; ++b, blk += bytes, dst += QK) {
            const float d = half(blk);
            if (qtype == Q8_0) {
                for (int j = 0; j < QK; ++j) dst[j] = d * (float)(int8_t)blk[2 + j];
                continue;
            }
            const float m = qtype == Q4_1 ? half(blk + 2) : -8.f * d;
            const uint8_t *qs = blk + (qtype == Q4_1 ? 4 : 2);
            for (int j = 0; j < QK / 2; ++j) {
                dst[j] = (float)(qs[j] & 0x0F) * d + m;
                dst[j + QK / 2] = (float)(qs[j] >> 4) * d + m;
            }
        }
    }
    return 0;
}

/* 1 where the VNNI path was compiled in (for tests and the benchmark's report). */
int gguf_uses_vnni(void) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return 1;
#else
    return 0;
#endif
}
