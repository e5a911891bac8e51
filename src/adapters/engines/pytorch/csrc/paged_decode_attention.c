/* Paged decode attention on the CPU, float32.
 *
 * One query token per sequence attends to its whole cached context, read in place through
 * the block table: no padded copy of K/V is made (the torch path gathers every context row
 * into a [seqs, max_len, kv_heads, dim] tensor first, which cost ~40% of a batch-16 decode
 * step at uneven lengths). Work items are (sequence, KV head) pairs; the query heads of a
 * KV group are done together, so each cached K and V row is read once per step and layer.
 * Two passes per item: scores of every context token (K read once), then the softmax-weighted
 * sum of V rows (V read once). Float32 throughout, max-subtracted softmax.
 *
 * Bytes moved per layer: the context's K and V rows, 2 x sum(context_lens) x kv_heads x dim
 * x 4, plus q and out. Threads: the caller's OpenMP pool (torch's libgomp, loaded first).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float dot(const float *a, const float *b, int64_t n) {
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

static void attend_one(const float *q, int64_t q_head_stride, const float *k_cache,
                       const float *v_cache, const int64_t *table, int64_t len, int64_t kv_head,
                       int64_t group, int64_t head_dim, int64_t block_size, int64_t token_stride,
                       float scale, float *scores, float *out) {
    const int64_t block_stride = block_size * token_stride;
    for (int64_t t = 0; t < len; ++t) {
        const int64_t at = table[t / block_size] * block_stride + (t % block_size) * token_stride +
                           kv_head * head_dim;
        for (int64_t g = 0; g < group; ++g)
            scores[g * len + t] = dot(q + g * q_head_stride, k_cache + at, head_dim) * scale;
    }
    float inv_sum[group];
    for (int64_t g = 0; g < group; ++g) {
        float *s = scores + g * len, max = -INFINITY, sum = 0.f;
        for (int64_t t = 0; t < len; ++t) max = s[t] > max ? s[t] : max;
        for (int64_t t = 0; t < len; ++t) {
            s[t] = expf(s[t] - max);
            sum += s[t];
        }
        inv_sum[g] = 1.f / sum;
    }
    memset(out, 0, sizeof(float) * group * head_dim);
    for (int64_t t = 0; t < len; ++t) {
        const float *v = v_cache + table[t / block_size] * block_stride +
                         (t % block_size) * token_stride + kv_head * head_dim;
        for (int64_t g = 0; g < group; ++g) {
            const float p = scores[g * len + t];
            float *o = out + g * head_dim;
#pragma omp simd
            for (int64_t d = 0; d < head_dim; ++d) o[d] += p * v[d];
        }
    }
    for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < head_dim; ++d) out[g * head_dim + d] *= inv_sum[g];
}

/* q: [num_seqs, num_heads, head_dim] with token stride q_token_stride (heads contiguous);
 * k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim] contiguous;
 * block_tables: [num_seqs, max_blocks]; context_lens: [num_seqs] (each >= 1);
 * out: [num_seqs, num_heads, head_dim] contiguous. Returns 0, or -1 if out of memory. */
int paged_decode_attention_f32(const float *q, int64_t q_token_stride, const float *k_cache,
                               const float *v_cache, const int64_t *block_tables,
                               const int64_t *context_lens, float *out, int64_t num_seqs,
                               int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                               int64_t block_size, int64_t max_blocks, float scale,
                               int num_threads) {
    const int64_t group = num_heads / num_kv_heads;
    const int64_t token_stride = num_kv_heads * head_dim;
    int64_t max_len = 0;
    for (int64_t s = 0; s < num_seqs; ++s) max_len = context_lens[s] > max_len ? context_lens[s] : max_len;
    int failed = 0;
#pragma omp parallel num_threads(num_threads) reduction(| : failed)
    {
        float *scores = malloc(sizeof(float) * group * max_len);
        if (scores == NULL) failed = 1;
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int64_t s = 0; s < num_seqs; ++s)
            for (int64_t h = 0; h < num_kv_heads; ++h) {
                if (scores == NULL) continue;
                attend_one(q + s * q_token_stride + h * group * head_dim, head_dim, k_cache,
                           v_cache, block_tables + s * max_blocks, context_lens[s], h, group,
                           head_dim, block_size, token_stride, scale, scores,
                           out + (s * num_heads + h * group) * head_dim);
            }
        free(scores);
    }
    return failed ? -1 : 0;
}
