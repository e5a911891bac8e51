/* Linears over GGUF's k-quant blocks, kept as the file stores them: Q4_K and Q6_K.
 *
 * Super-blocks of 256 weights along K (llama.cpp's ggml-common.h), in sub-blocks with
 * integer scales:
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
 * u8 x s8 products of gguf_quants.c (Q4_0 and kin), each pair weighted by its sub-block's
 * scale. A super-block's codes and scales are unpacked once per tile of 4 activation rows.
 *
 * The build and the dispatch are gguf_quants.c's: AVX2, with AVX-512 VNNI where -march=native
 * has it (the Python side needs AVX2/FMA/F16C, else the loader dequantizes to float32).
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

#define QK_K 256
enum { Q4_K = 12, Q6_K = 14 }; /* GGML's type ids */
#define TILE 4

static inline float half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static int64_t block_bytes(int qtype) {
    switch (qtype) {
    case Q4_K: return 4 + 12 + QK_K / 2;
    case Q6_K: return QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
    default: return 0;
    }
}

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

/* Q4_K's 8 scales and 8 mins, 6 bits each, out of its 12 packed bytes, 4 at a time: bytes
 * 0-3 hold scales 0-3 (low 6 bits), bytes 4-7 mins 0-3, bytes 8-11 the low 4 bits of scales
 * 4-7 (low nibbles) and mins 4-7 (high nibbles), whose top 2 bits are bytes 0-7's top 2. */
static inline void q4k_scales(const uint8_t *p, uint8_t sc[8], uint8_t m[8]) {
    uint32_t w[3], out[4];
    memcpy(w, p, 12);
    out[0] = w[0] & 0x3F3F3F3Fu;
    out[1] = (w[2] & 0x0F0F0F0Fu) | ((w[0] >> 2) & 0x30303030u);
    out[2] = w[1] & 0x3F3F3F3Fu;
    out[3] = ((w[2] >> 4) & 0x0F0F0F0Fu) | ((w[1] >> 2) & 0x30303030u);
    memcpy(sc, out, 8);
    memcpy(m, out + 2, 8);
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
    uint8_t sc[8], m[8];
    q4k_scales(w + 4, sc, m);
    b->d = half(w);
    b->doff = half(w + 2);
    const __m256i low = _mm256_set1_epi8(0x0F);
    for (int i = 0; i < 4; ++i) {
        const __m256i bytes = _mm256_loadu_si256((const __m256i *)(w + 16 + 32 * i));
        b->q[2 * i] = _mm256_and_si256(bytes, low);
        b->q[2 * i + 1] = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);
    }
    for (int j = 0; j < 8; ++j) b->scale[j] = _mm256_set1_epi16(sc[j]);
    /* Each min twice, for the two 16-value bsums of its sub-block. */
    const __m128i mins = _mm_loadl_epi64((const __m128i *)m);
    b->offset16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins, mins));
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
    const int64_t bytes = block_bytes(qtype);
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
        uint8_t sc[8], m[8];
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

/* y [rows, n] (row stride y_stride) = x @ W^T, W as n rows of k/256 super-blocks of `qtype`
 * and x as q8_K blocks [rows, k/256]. Returns 0, or -1 for a type this file does not know. */
int gguf_kquant_matmul(int qtype, const uint8_t *w, int64_t n, int64_t k, const q8k_block *xq,
                       int64_t rows, float *y, int64_t y_stride, int num_threads) {
    const int64_t bytes = block_bytes(qtype);
    if (bytes == 0) return -1;
    const int64_t nb = k / QK_K, row_bytes = nb * bytes;
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
    return 0;
}

/* Rows `index[0..count)` of W (n rows of k/256 super-blocks) dequantized into out [count, k]. */
int gguf_kquant_dequantize_rows(int qtype, const uint8_t *w, int64_t k, const int64_t *index,
                                int64_t count, float *out) {
    const int64_t bytes = block_bytes(qtype);
    if (bytes == 0) return -1;
    const int64_t nb = k / QK_K;
    for (int64_t i = 0; i < count; ++i) {
        const uint8_t *row = w + index[i] * nb * bytes;
        for (int64_t b = 0; b < nb; ++b)
            dequantize_kblock(qtype, row + b * bytes, out + i * k + b * QK_K);
    }
    return 0;
}

/* 1 where the VNNI path was compiled in (for tests and the benchmark's report). */
int gguf_kquant_uses_vnni(void) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return 1;
#else
    return 0;
#endif
}
