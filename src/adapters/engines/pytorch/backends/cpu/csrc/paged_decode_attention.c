/* Paged decode attention on the CPU, float32.
 *
 * One query token per sequence attends to its whole cached context, read in place through
 * the block table: no padded copy of K/V is made (the torch path gathers every context row
 * into a [seqs, max_len, kv_heads, dim] tensor first, which cost ~40% of a batch-16 decode
 * step at uneven lengths). Work items are sequences (or, for fewer sequences than twice the
 * threads, (sequence, KV head) pairs); the query heads of a KV group are done together, so
 * each cached K and V row is read once per step and layer.
 * Two passes per item: scores of every context token (K read once), then the softmax-weighted
 * sum of V rows (V read once). Float32 throughout, max-subtracted softmax.
 *
 * Two options for Mistral and Gemma 2: a sliding window W (> 0) keeps the last W positions,
 * the query's own included (transformers' kv_idx > q_idx - W); the tokens before it are not
 * read at all. A soft cap c (> 0) replaces each scaled score s by c * tanh(s / c).
 *
 * Bytes moved per layer: the context's K and V rows, 2 x sum(context_lens) x kv_heads x dim
 * x 4, plus q and out. Threads: the caller's OpenMP pool (torch's libgomp, loaded first).
 *
 * Built with fast-math's parts, not -ffast-math itself: the dot products' sums reassociate
 * into vector lanes and the softmax's expf runs through glibc's vector expf (libmvec, within a
 * few ulp; its declarations need __FAST_MATH__): 1.6x faster for one sequence at 128-512
 * tokens of context (CPU time: 55 -> 34 us a layer at 256). -ffast-math would also link
 * crtfastmath.o, whose constructor sets flush-to-zero for the whole process when the library
 * loads (every float op of torch and numpy after it). The code keeps to finite values: each
 * softmax's max starts from its first score.
 *
 * LMDEPLOY_CFLAGS: -fno-math-errno -fno-trapping-math -fassociative-math -fno-signed-zeros -freciprocal-math -ffinite-math-only -D__FAST_MATH__
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "decode_parts.h"

static inline float dot(const float *a, const float *b, int64_t n) {
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

/* Query heads of KV heads [h0, h1) of one sequence against its context. Each pass walks the
 * context token by token and, within a token, the KV heads in memory order: with every KV
 * head of a sequence in one item, a block's rows are read front to back (one sequential
 * stream the hardware prefetcher follows), where one item per KV head read 1/kv_heads of
 * each row at a stride and ran at a fraction of the memory bandwidth once K/V left the cache. */
paged_decode_attend_fn paged_decode_attend_f32; /* exported: fused_decode.c calls it per thread */
void paged_decode_attend_f32(const float *q, const float *k_cache, const float *v_cache,
                             const int64_t *table, int64_t first, int64_t end, int64_t h0,
                             int64_t h1, int64_t group, int64_t head_dim, int64_t block_size,
                             int64_t token_stride, float scale, float softcap, float *scores,
                             float *out) {
    const int64_t block_stride = block_size * token_stride;
    const int64_t rows = (h1 - h0) * group; /* query heads of this item, in order */
    const int64_t len = end - first;          /* tokens [first, end) are attended */
    for (int64_t t = 0; t < len; ++t) {
        const int64_t pos = first + t;
        const float *row = k_cache + table[pos / block_size] * block_stride +
                           (pos % block_size) * token_stride;
        for (int64_t h = h0; h < h1; ++h)
            for (int64_t g = 0; g < group; ++g) {
                const int64_t r = (h - h0) * group + g;
                scores[r * len + t] = dot(q + r * head_dim, row + h * head_dim, head_dim) * scale;
            }
    }
    if (softcap > 0.f)
        for (int64_t i = 0; i < rows * len; ++i) scores[i] = softcap * tanhf(scores[i] / softcap);
    float inv_sum[rows];
    for (int64_t r = 0; r < rows; ++r) {
        float *s = scores + r * len, max = s[0], sum = 0.f; /* len >= 1 */
        for (int64_t t = 0; t < len; ++t) max = s[t] > max ? s[t] : max;
        for (int64_t t = 0; t < len; ++t) {
            s[t] = expf(s[t] - max);
            sum += s[t];
        }
        inv_sum[r] = 1.f / sum;
    }
    memset(out, 0, sizeof(float) * rows * head_dim);
    for (int64_t t = 0; t < len; ++t) {
        const int64_t pos = first + t;
        const float *row = v_cache + table[pos / block_size] * block_stride +
                           (pos % block_size) * token_stride;
        for (int64_t h = h0; h < h1; ++h)
            for (int64_t g = 0; g < group; ++g) {
                const int64_t r = (h - h0) * group + g;
                const float p = scores[r * len + t], *v = row + h * head_dim;
                float *o = out + r * head_dim;
#pragma omp simd
                for (int64_t d = 0; d < head_dim; ++d) o[d] += p * v[d];
            }
    }
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = 0; d < head_dim; ++d) out[r * head_dim + d] *= inv_sum[r];
}

/* q: [num_seqs, num_heads, head_dim] with token stride q_token_stride (heads contiguous);
 * k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim] contiguous;
 * block_tables: [num_seqs, max_blocks]; context_lens: [num_seqs] (each >= 1);
 * out: [num_seqs, num_heads, head_dim] contiguous; sliding_window: 0 for none;
 * softcap: 0 for none. Returns 0, or -1 if out of memory. */
int paged_decode_attention_f32(const float *q, int64_t q_token_stride, const float *k_cache,
                               const float *v_cache, const int64_t *block_tables,
                               const int64_t *context_lens, float *out, int64_t num_seqs,
                               int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                               int64_t block_size, int64_t max_blocks, float scale,
                               int64_t sliding_window, float softcap, int num_threads) {
    const int64_t group = num_heads / num_kv_heads;
    const int64_t token_stride = num_kv_heads * head_dim;
    int64_t max_len = 0;
    for (int64_t s = 0; s < num_seqs; ++s) max_len = context_lens[s] > max_len ? context_lens[s] : max_len;
    if (sliding_window > 0 && sliding_window < max_len) max_len = sliding_window;
    /* Items: whole sequences when there are enough to keep every thread busy, else one per
     * (sequence, KV head) so that a short batch still spreads over the threads. */
    const int64_t split = num_seqs >= 2 * (int64_t)num_threads ? 1 : num_kv_heads;
    const int64_t heads_per_item = num_kv_heads / split;
    int failed = 0;
#pragma omp parallel num_threads(num_threads) reduction(| : failed)
    {
        float *scores = malloc(sizeof(float) * heads_per_item * group * max_len);
        if (scores == NULL) failed = 1;
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int64_t s = 0; s < num_seqs; ++s)
            for (int64_t part = 0; part < split; ++part) {
                if (scores == NULL) continue;
                const int64_t h0 = part * heads_per_item, end = context_lens[s];
                const int64_t first =
                    sliding_window > 0 && end > sliding_window ? end - sliding_window : 0;
                paged_decode_attend_f32(
                    q + s * q_token_stride + h0 * group * head_dim, k_cache, v_cache,
                    block_tables + s * max_blocks, first, end, h0, h0 + heads_per_item, group,
                    head_dim, block_size, token_stride, scale, softcap, scores,
                    out + (s * num_heads + h0 * group) * head_dim);
            }
        free(scores);
    }
    return failed ? -1 : 0;
}
