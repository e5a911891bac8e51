/* A one-row decode step's decoder layers (Llama layout, float32) in one call and one parallel
 * region: per layer, input RMSNorm (+ residual add), q/k/v GEMV, rotary + K/V cache write,
 * decode attention over the sequence's blocks, o GEMV, residual + post-attention RMSNorm,
 * gate/up GEMV, SiLU-and-mul, down GEMV. Barriers sit between the phases, as in llama.cpp's
 * thread pool: one fork/join a step instead of ~10 a layer (each ~10-20 us on 2 threads).
 *
 * A `single` ends in a barrier, so one that would only transpose for float32 panels is
 * skipped for GGUF blocks (the condition is the same on every thread).
 *
 * Nothing here computes: every phase calls the other kernels' per-thread units of work
 * (decode_parts.h) through the pointers of the plan, so each keeps its own library, flags and
 * vector paths, and the result is the layer-by-layer path's up to the order of float sums
 * (the GEMV columns and the attention heads are split over the threads the same way).
 * The small phases (norm, rotary: a few KB) run on one thread.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "decode_parts.h"

#define PANEL 16 /* skinny_gemm.c's panel width */
#define GROUP 16 /* gguf_repack.c's rows a group */
/* A linear's kind: float32 panels, a GGML block type (gguf_float.c), or REPACKED | a Q4 type
 * (gguf_repack.c). */
enum { F32_PANELS = 0, REPACKED = 256 };

typedef struct {
    int32_t kind, pad;
    const void *weight; /* skinny panels [ceil(n/16), k, 16], GGUF blocks [n, k/32], or the
                           repacked blocks [n/16, k/32] chunks */
    int64_t n, k;
} fd_linear;

typedef struct {
    const float *input_norm, *post_norm;
    fd_linear qkv, o, gate_up, down;
    float *k_cache, *v_cache; /* [blocks, block_size, kv_heads, head_dim] */
} fd_layer;

typedef struct {
    gguf_float_columns_fn *gguf_columns;
    skinny_transpose_fn *transpose;
    skinny_panels_fn *panels;
    add_rms_norm_row_fn *norm;
    rotary_write_kv_row_fn *rotary;
    silu_and_mul_columns_fn *silu;
    paged_decode_attend_fn *attend;
    gguf_repack_columns_fn *repack_columns; /* NULL where no linear is REPACKED */
    int64_t num_layers, hidden, heads, kv_heads, head_dim, inter, block_size;
    float eps, scale;
    const fd_layer *layers;
} fd_model;

/* This thread's share of y = x W^T; `xt`: x transposed (skinny_transpose), for f32 panels. */
static void linear_part(const fd_model *m, const fd_linear *l, const float *x, const float *xt,
                        float *y, int t, int T) {
    int64_t begin, end;
    if (l->kind == F32_PANELS) {
        thread_share((l->n + PANEL - 1) / PANEL, t, T, &begin, &end);
        m->panels(xt, l->weight, y, 1, l->n, l->k, begin, end);
    } else if (l->kind & REPACKED) {
        thread_share(l->n / GROUP, t, T, &begin, &end);
        m->repack_columns(l->kind & ~REPACKED, l->weight, l->k, x, NULL, y, begin, end);
    } else {
        thread_share(l->n, t, T, &begin, &end);
        m->gguf_columns(l->kind, l->weight, l->k, x, l->k, 1, NULL, y, l->n, begin, end);
    }
}

/* Called by one thread: x transposed for a f32-panel linear that reads it next. */
static void prepare_input(const fd_model *m, const fd_linear *l, const float *x, float *xt) {
    if (l->kind == F32_PANELS) m->transpose(x, l->k, 1, l->k, xt);
}

/* h [hidden]: the embeddings in, the last layer's MLP output out; residual [hidden]: zeros
 * in, the residual stream before the last MLP out (the model's final norm adds them).
 * cos, sin: the position's rows [head_dim]; slot: the token's cache slot (read in place: the
 * step's slot tensor); table: the sequence's block table; context_len: tokens in the cache
 * after this one (>= 1).
 * Returns 0, or -1 if its scratch could not be allocated. */
int fused_decode_layers_f32(const fd_model *m, float *h, float *residual, const float *cos,
                            const float *sin, const int64_t *slot, const int64_t *table,
                            int64_t context_len, int num_threads) {
    const int64_t hd = m->head_dim, group = m->heads / m->kv_heads;
    const int64_t q_width = m->heads * hd, qkv_width = (m->heads + 2 * m->kv_heads) * hd;
    int64_t k_max = m->hidden > m->inter ? m->hidden : m->inter;
    k_max = k_max > q_width ? k_max : q_width;
    const int64_t scores_len = group * context_len;
    const size_t floats = m->hidden + qkv_width + q_width + 2 * m->inter + m->inter +
                          PANEL * k_max + (size_t)num_threads * scores_len;
    float *scratch = malloc(sizeof(float) * floats);
    if (scratch == NULL) return -1;
    float *xn = scratch, *qkv = xn + m->hidden, *attn = qkv + qkv_width;
    float *gate_up = attn + q_width, *act = gate_up + 2 * m->inter, *xt = act + m->inter;
    float *scores = xt + PANEL * k_max;
#pragma omp parallel num_threads(num_threads)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        for (int64_t i = 0; i < m->num_layers; ++i) {
            const fd_layer *L = &m->layers[i];
#pragma omp single
            {
                m->norm(h, residual, L->input_norm, xn, m->hidden, m->eps);
                prepare_input(m, &L->qkv, xn, xt);
            }
            linear_part(m, &L->qkv, xn, xt, qkv, t, T);
#pragma omp barrier
#pragma omp single
            m->rotary(qkv, cos, sin, *slot, L->k_cache, L->v_cache, m->heads, m->kv_heads, hd);
            for (int64_t kv = t; kv < m->kv_heads; kv += T)
                m->attend(qkv + kv * group * hd, L->k_cache, L->v_cache, table, 0, context_len,
                          kv, kv + 1, group, hd, m->block_size, m->kv_heads * hd, m->scale, 0.f,
                          scores + t * scores_len, attn + kv * group * hd);
#pragma omp barrier
            if (L->o.kind == F32_PANELS) { /* the same on every thread: a legal single */
#pragma omp single
                prepare_input(m, &L->o, attn, xt);
            }
            linear_part(m, &L->o, attn, xt, h, t, T);
#pragma omp barrier
#pragma omp single
            {
                m->norm(h, residual, L->post_norm, xn, m->hidden, m->eps);
                prepare_input(m, &L->gate_up, xn, xt);
            }
            linear_part(m, &L->gate_up, xn, xt, gate_up, t, T);
#pragma omp barrier
            {
                int64_t j0, j1;
                thread_share(m->inter, t, T, &j0, &j1);
                m->silu(gate_up, gate_up + m->inter, act, j0, j1);
            }
#pragma omp barrier
            if (L->down.kind == F32_PANELS) {
#pragma omp single
                prepare_input(m, &L->down, act, xt);
            }
            linear_part(m, &L->down, act, xt, h, t, T);
#pragma omp barrier
        }
    }
    free(scratch);
    return 0;
}
