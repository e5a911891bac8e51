/* Linears over GGUF's quantized blocks, kept as the file stores them: Q4_0, Q4_1, Q8_0, and
 * the k-quants Q4_K and Q6_K (their part is further down, from "K-quants").
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

/* Dequantization must equal the `gguf` package's float32 math bit for bit: no fused
 * multiply-adds where it rounds twice (GCC's -std=c11 already says so; clang needs this). */
#pragma STDC FP_CONTRACT OFF

#define QK 32
#define QK_K 256
enum { Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, Q4_K = 12, Q6_K = 14 }; /* GGML's type ids */
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
    case Q4_K: return 4 + 12 + QK_K / 2;
    case Q6_K: return QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
    default: return 0;
    }
}

/* Weights a block of `qtype` holds along K (0 for a type this file does not know). */
int64_t gguf_block_values(int qtype) {
    switch (qtype) {
    case Q4_0: case Q4_1: case Q8_0: return QK;
    case Q4_K: case Q6_K: return QK_K;
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

/* K-quants: super-blocks of 256 weights along K, each in sub-blocks with integer scales.
 *   Q4_K (144 bytes): fp16 d, fp16 dmin, 12 bytes packing 8 six-bit scales sc and mins m,
 *     128 bytes of nibbles; sub-block j (32 weights) is w = d sc_j q - dmin m_j. Each 32 bytes
 *     of nibbles hold sub-block 2i in their low halves and 2i + 1 in their high halves.
 *   Q6_K (210 bytes): 128 bytes of low nibbles ql, 64 bytes of high bit pairs qh, 16 int8
 *     scales, fp16 d last; sub-block j (16 weights) is w = d sc_j (q - 32), q = 6 bits.
 * Activations are quantized as llama.cpp's q8_K (`q8k_block`): per 256, d = -max / 127 with
 * max the value of largest magnitude, q = round(x / d), and the sums of each 16 q (`bsums`)
 * for the terms that do not depend on a weight's code. A super-block's dot product is then
 *   Q4_K: d_x (d sum_j sc_j sum(q_w q_x) - dmin sum_j m_j sum_j(q_x))
 *   Q6_K: d_x d (sum_j sc_j sum(q_w q_x) - 32 sum_j sc_j sum_j(q_x))
 * with the codes unsigned (Q6_K's -32 moves to the second term), so the integer work is the
 * same u8 x s8 products as above, each 32 weighted by their sub-block's scale.
 */
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} q8k_block;

/* x [rows, k] (row stride x_stride) -> rows * k/256 q8_K blocks, rounded as llama.cpp's
 * quantize_row_q8_K_ref rounds (the kernels' results depend on it). */
void gguf_quantize_rows_q8_k(const float *x, int64_t x_stride, int64_t rows, int64_t k,
                             q8k_block *out, int num_threads) {
    const int64_t nb = k / QK_K;
#pragma omp parallel for num_threads(num_threads) schedule(static) if (rows * k >= 65536)
    for (int64_t i = 0; i < rows * nb; ++i) {
        const float *src = x + (i / nb) * x_stride + (i % nb) * QK_K;
        q8k_block *dst = out + i;
        float amax = 0.f, max = 0.f;
        for (int j = 0; j < QK_K; ++j) {
            if (fabsf(src[j]) > amax) amax = fabsf(src[j]), max = src[j];
        }
        if (amax == 0.f) {
            memset(dst, 0, sizeof *dst);
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; ++j) {
            const int q = (int)lrintf(iscale * src[j]);
            dst->qs[j] = (int8_t)(q < 127 ? q : 127);
        }
        for (int g = 0; g < QK_K / 16; ++g) {
            int sum = 0;
            for (int j = 0; j < 16; ++j) sum += dst->qs[g * 16 + j];
            dst->bsums[g] = (int16_t)sum;
        }
        dst->d = 1.f / iscale;
    }
}

/* Q4_K's 8 scales and 8 mins, 6 bits each, out of its 12 packed bytes. */
static inline void q4k_scales(const uint8_t *p, int *sc, int *m) {
    for (int j = 0; j < 4; ++j) {
        sc[j] = p[j] & 63, m[j] = p[j + 4] & 63;
        sc[j + 4] = (p[j + 8] & 0x0F) | ((p[j] >> 6) << 4);
        m[j + 4] = (p[j + 8] >> 4) | ((p[j + 4] >> 6) << 4);
    }
}

/* One weight super-block unpacked for the dot products of a tile of activation rows. */
typedef struct {
    __m256i q[8];      /* the 256 unsigned codes, 32 a vector, in K order */
    __m256i scale[8];  /* vector i's sub-block scales, int16 per byte pair (`lane_scales`) */
    __m256i offset16;  /* per 16 codes, the integer weight of that group's bsum */
    float d, doff;     /* the integer sums' factors: d (scale) and doff (offset, subtracted) */
} kblock;

/* acc + the 32 products u * s (u8 x s8), summed in pairs by `vpmaddubsw` (at most
 * 2 * 63 * 127: no saturation), each pair times its lane's int16 scale and summed in pairs
 * again into acc's 8 int32 lanes: `vpdpwssd` (VNNI) or `vpmaddwd` + `vpaddd` (AVX2). */
static inline __m256i add_scaled_dot(__m256i acc, __m256i u, __m256i s, __m256i scale) {
    const __m256i pairs = _mm256_maddubs_epi16(u, s);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(acc, pairs, scale);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, scale));
#endif
}

/* int16 scales: `lo` for bytes 0-15 of a vector, `hi` for bytes 16-31. */
static inline __m256i lane_scales(int lo, int hi) {
    return _mm256_set_m128i(_mm_set1_epi16((int16_t)hi), _mm_set1_epi16((int16_t)lo));
}

static inline void unpack_q4k(const uint8_t *w, kblock *b) {
    int sc[8], m[8];
    q4k_scales(w + 4, sc, m);
    b->d = half(w);
    b->doff = half(w + 2);
    const __m256i low = _mm256_set1_epi8(0x0F);
    for (int i = 0; i < 4; ++i) {
        const __m256i bytes = _mm256_loadu_si256((const __m256i *)(w + 16 + 32 * i));
        b->q[2 * i] = _mm256_and_si256(bytes, low);
        b->q[2 * i + 1] = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);
    }
    for (int j = 0; j < 8; ++j) b->scale[j] = lane_scales(sc[j], sc[j]);
    b->offset16 = _mm256_setr_epi16(m[0], m[0], m[1], m[1], m[2], m[2], m[3], m[3], m[4], m[4],
                                    m[5], m[5], m[6], m[6], m[7], m[7]);
}

static inline void unpack_q6k(const uint8_t *w, kblock *b) {
    const uint8_t *ql = w, *qh = w + QK_K / 2;
    const int8_t *sc = (const int8_t *)(w + QK_K / 2 + QK_K / 4);
    b->d = half(w + QK_K / 2 + QK_K / 4 + QK_K / 16);
    b->doff = 32.f * b->d; /* exact: a power of two */
    const __m256i low = _mm256_set1_epi8(0x0F), high = _mm256_set1_epi8(0x30);
    for (int h = 0; h < 2; ++h) {
        const __m256i l0 = _mm256_loadu_si256((const __m256i *)(ql + 64 * h));
        const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 64 * h + 32));
        const __m256i hb = _mm256_loadu_si256((const __m256i *)(qh + 32 * h));
        /* qh's bit pairs 0-1, 2-3, 4-5, 6-7 are the high bits of the 4 vectors in turn. */
        __m256i *q = b->q + 4 * h;
        q[0] = _mm256_or_si256(_mm256_and_si256(l0, low),
                               _mm256_and_si256(_mm256_slli_epi16(hb, 4), high));
        q[1] = _mm256_or_si256(_mm256_and_si256(l1, low),
                               _mm256_and_si256(_mm256_slli_epi16(hb, 2), high));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low),
                               _mm256_and_si256(hb, high));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low),
                               _mm256_and_si256(_mm256_srli_epi16(hb, 2), high));
    }
    for (int i = 0; i < 8; ++i) b->scale[i] = lane_scales(sc[2 * i], sc[2 * i + 1]);
    b->offset16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
}

/* One weight row of k-quant super-blocks against R (<= TILE) q8_K activation rows. */
static inline __attribute__((always_inline)) void
kquant_row_dot(int qtype, const uint8_t *w, int64_t nb, const q8k_block *const *x, int R,
               float *out) {
    __m256 acc[TILE];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    const int64_t bytes = gguf_block_bytes(qtype);
    kblock b;
    for (int64_t i = 0; i < nb; ++i, w += bytes) {
        if (qtype == Q4_K)
            unpack_q4k(w, &b);
        else
            unpack_q6k(w, &b);
        for (int r = 0; r < R; ++r) {
            const q8k_block *xb = x[r] + i;
            __m256i isum = _mm256_setzero_si256();
            for (int v = 0; v < 8; ++v) {
                const __m256i s = _mm256_loadu_si256((const __m256i *)(xb->qs + 32 * v));
                isum = add_scaled_dot(isum, b.q[v], s, b.scale[v]);
            }
            const __m256i bsums = _mm256_loadu_si256((const __m256i *)xb->bsums);
            const __m256i osum = _mm256_madd_epi16(bsums, b.offset16);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(xb->d * b.d), _mm256_cvtepi32_ps(isum), acc[r]);
            acc[r] = _mm256_fnmadd_ps(_mm256_set1_ps(xb->d * b.doff), _mm256_cvtepi32_ps(osum),
                                      acc[r]);
        }
    }
    for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
}

/* One k-quant super-block as float32, as the `gguf` package computes it. */
static void dequantize_kblock(int qtype, const uint8_t *w, float *dst) {
    if (qtype == Q4_K) {
        int sc[8], m[8];
        q4k_scales(w + 4, sc, m);
        const float d = half(w), dmin = half(w + 2);
        const uint8_t *qs = w + 16;
        for (int j = 0; j < 8; ++j) {
            const float dj = d * (float)sc[j], mj = dmin * (float)m[j];
            const uint8_t *bytes = qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; ++l) {
                const float scaled = dj * (float)((bytes[l] >> shift) & 0x0F);
                dst[32 * j + l] = scaled - mj;
            }
        }
        return;
    }
    const uint8_t *ql = w, *qh = w + QK_K / 2;
    const int8_t *sc = (const int8_t *)(w + QK_K / 2 + QK_K / 4);
    const float d = half(w + QK_K / 2 + QK_K / 4 + QK_K / 16);
    for (int v = 0; v < QK_K; ++v) {
        /* v = 128 h + 32 t + l: ql byte 64 h + l + 32 (t % 2), nibble t / 2; qh pair t. */
        const int h = v / 128, t = (v % 128) / 32, l = v % 32;
        const int lo = (ql[64 * h + l + 32 * (t % 2)] >> (4 * (t / 2))) & 0x0F;
        const int hi = (qh[32 * h + l] >> (2 * t)) & 3;
        dst[v] = (d * (float)sc[v / 16]) * (float)((lo | (hi << 4)) - 32);
    }
}

#define KROWS_OF(QT)                                                          \
    switch (R) {                                                              \
    case 4: kquant_row_dot(QT, wrow, nb, xs, 4, out); break;                  \
    case 3: kquant_row_dot(QT, wrow, nb, xs, 3, out); break;                  \
    case 2: kquant_row_dot(QT, wrow, nb, xs, 2, out); break;                  \
    default: kquant_row_dot(QT, wrow, nb, xs, 1, out); break;                 \
    }

static void kquant_matmul(int qtype, const uint8_t *w, int64_t n, int64_t k, const q8k_block *xq,
                          int64_t rows, float *y, int64_t y_stride, int num_threads) {
    const int64_t nb = k / QK_K, row_bytes = nb * gguf_block_bytes(qtype);
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t col = 0; col < n; ++col) {
        const uint8_t *wrow = w + col * row_bytes;
        for (int64_t row0 = 0; row0 < rows; row0 += TILE) {
            const int R = rows - row0 < TILE ? (int)(rows - row0) : TILE;
            const q8k_block *xs[TILE];
            float out[TILE];
            for (int r = 0; r < R; ++r) xs[r] = xq + (row0 + r) * nb;
            if (qtype == Q4_K) {
                KROWS_OF(Q4_K)
            } else {
                KROWS_OF(Q6_K)
            }
            for (int r = 0; r < R; ++r) y[(row0 + r) * y_stride + col] = out[r];
        }
    }
}

/* y [rows, n] (row stride y_stride) = x @ W^T, W as n rows of blocks of `qtype` and x as
 * activation blocks [rows, k / block values]: q8_K for the k-quants, q8 for the others.
 * Returns 0, or -1 for a type this file does not know. */
int gguf_matmul(int qtype, const uint8_t *w, int64_t n, int64_t k, const void *x,
                int64_t rows, float *y, int64_t y_stride, int num_threads) {
    const int64_t bytes = gguf_block_bytes(qtype);
    if (bytes == 0) return -1;
    if (gguf_block_values(qtype) == QK_K) {
        kquant_matmul(qtype, w, n, k, (const q8k_block *)x, rows, y, y_stride, num_threads);
        return 0;
    }
    const q8_block *xq = (const q8_block *)x;
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

/* Rows `index[0..count)` of W (n rows of blocks of `qtype` along k) dequantized into
 * out [count, k]. */
int gguf_dequantize_rows(int qtype, const uint8_t *w, int64_t k, const int64_t *index,
                         int64_t count, float *out) {
    const int64_t bytes = gguf_block_bytes(qtype), values = gguf_block_values(qtype);
    if (bytes == 0) return -1;
    const int64_t nb = k / values;
    for (int64_t i = 0; i < count; ++i) {
        const uint8_t *blk = w + index[i] * nb * bytes;
        float *dst = out + i * k;
        if (values == QK_K) {
            for (int64_t b = 0; b < nb; ++b) dequantize_kblock(qtype, blk + b * bytes, dst + b * QK_K);
            continue;
        }
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
