/* Decode attention for the static engine: a few new positions of each row against its KV cache.

   Each query (row, position, head) is computed alone, by the same instructions whatever the number of
   queries in the call: a verify pass of t positions gives each position the numbers a step gives it,
   bit for bit (what speculative decoding needs to be identical to greedy). Position j of a call attends
   to the cache columns [0, start + j], causal, no padding; with a sliding window w > 0, to the last w of
   them (columns (start + j - w, start + j]).

   Lanes are GCC/Clang vector extensions (lanes.h), every sum in a fixed order. Built at first use with
   `cc -O3 -march=native` (see attention.py); head_dim must be a multiple of 16. */

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "lanes.h"

#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)

/* Sixteen lanes' sums of sixteen vectors at once, lane i of the result from vector i, each in the order
   of lanes_sum (a transposing tree: the arithmetic of one vector's sum does not depend on the others). */
static inline v16 lanes_sums(const v16 *x) {
    v16 h8[8], h4[4], h2[2];
    for (int i = 0; i < 8; i++)
        h8[i] = SHUFFLE(x[2 * i], x[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
              + SHUFFLE(x[2 * i], x[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; i++)
        h4[i] = SHUFFLE(h8[2 * i], h8[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27)
              + SHUFFLE(h8[2 * i], h8[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int i = 0; i < 2; i++)
        h2[i] = SHUFFLE(h4[2 * i], h4[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29)
              + SHUFFLE(h4[2 * i], h4[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    return SHUFFLE(h2[0], h2[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
         + SHUFFLE(h2[0], h2[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

/* One query q [dim] over keys/values [length, dim] (rows `stride` floats apart); out [dim].
   scores: scratch of at least length rounded up to 16 floats. */
static void attend_one(const float *q, const float *keys, const float *values, int64_t stride, int64_t length,
                       int64_t dim, float scale, float *scores, float *out) {
    const int64_t chunks = dim / 16, padded = (length + 15) / 16 * 16;
    v16 query[16];  /* dim up to 256 */
    for (int64_t c = 0; c < chunks; c++) query[c] = load(q + 16 * c);
    v16 best = splat(-INFINITY);
    for (int64_t k0 = 0; k0 < padded; k0 += 16) {
        v16 acc[16];
        for (int64_t i = 0; i < 16; i++) {
            acc[i] = splat(0.0f);
            if (k0 + i >= length) continue;  /* past the end: a lane that is masked below */
            const float *key = keys + (k0 + i) * stride;
            for (int64_t c = 0; c < chunks; c++) acc[i] += query[c] * load(key + 16 * c);
        }
        v16 s = lanes_sums(acc) * splat(scale);
        v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
        s = select(lane + (int32_t)k0 < (int32_t)length, s, splat(-INFINITY));
        best = select(s > best, s, best);
        store(scores + k0, s);
    }
    float top = -INFINITY;
    for (int i = 0; i < 16; i++) top = best[i] > top ? best[i] : top;  /* a max: exact in any order */
    v16 total = splat(0.0f);
    for (int64_t k = 0; k < padded; k += 16) {
        v16 p = exp16(load(scores + k) - splat(top));
        store(scores + k, p);
        total += p;
    }
    const float norm = 1.0f / lanes_sum(total);
    v16 acc[16];
    for (int64_t c = 0; c < chunks; c++) acc[c] = splat(0.0f);
    for (int64_t k = 0; k < length; k++) {
        const float *value = values + k * stride;
        v16 p = splat(scores[k]);
        for (int64_t c = 0; c < chunks; c++) acc[c] += p * load(value + 16 * c);
    }
    for (int64_t c = 0; c < chunks; c++) store(out + 16 * c, acc[c] * splat(norm));
}

/* Every (row, position, head) query of q [rows, t, heads, dim] (strides q_row, q_pos, dim) over the cache,
   shared among `threads` OpenMP threads (the runtime torch uses, where built with it). */
static void attend_queries(const float *q, int64_t q_row, int64_t q_pos, const float *keys, const float *values,
                           int64_t kv_row, int64_t capacity, float *out, float *scratch, int64_t rows, int64_t t,
                           int64_t heads, int64_t kv_heads, int64_t dim, int64_t start, int64_t window,
                           float scale, int64_t threads) {
    const int64_t group = heads / kv_heads, queries = rows * t * heads, room = start + t + 16;
    const int64_t spread = queries < threads ? queries : threads;
#pragma omp parallel for num_threads(spread) schedule(static)
    for (int64_t n = 0; n < queries; n++) {
        const int64_t r = n / (t * heads), j = n / heads % t, h = n % heads;
#ifdef _OPENMP
        float *own = scratch + omp_get_thread_num() * room;
#else
        float *own = scratch;
#endif
        const int64_t seen = start + j + 1, first = window > 0 && seen > window ? seen - window : 0;
        const int64_t column = (h / group) * capacity * dim + r * kv_row + first * dim;
        attend_one(q + r * q_row + j * q_pos + h * dim, keys + column, values + column, dim, seen - first, dim,
                   scale, own, out + n * dim);
    }
}

/* q: [rows, t, heads, dim] with strides (q_row, q_pos, dim); keys/values: [rows, kv_heads, capacity, dim]
   contiguous per row (strides kv_row, capacity * dim, dim); out: [rows, t, heads, dim] contiguous.
   Position j of row r attends to columns [0, start + j] (window > 0: the last `window` of them).
   scratch: threads * (start + t + 16) floats. */
int speechllm_attend(const float *q, int64_t q_row, int64_t q_pos, const float *keys, const float *values,
                     int64_t kv_row, int64_t capacity, float *out, float *scratch, int64_t rows, int64_t t,
                     int64_t heads, int64_t kv_heads, int64_t dim, int64_t start, int64_t window, float scale,
                     int64_t threads) {
    if (dim % 16 || dim > 256 || heads % kv_heads) return 1;
    attend_queries(q, q_row, q_pos, keys, values, kv_row, capacity, out, scratch, rows, t, heads, kv_heads, dim,
                   start, window, scale, threads);
    return 0;
}

/* x * cos + roll(x, dim / 2) * sin over one head, each product and the sum rounded on its own (no fused
   multiply-add), as torch's three ops round them: the same numbers as the engine's rotary in torch */
__attribute__((optimize("fp-contract=off")))
static void rotate(const float *x, const float *cos, const float *sin, int64_t dim, float *out) {
    const int64_t half = dim / 2;
    for (int64_t d = 0; d < dim; d++) {
        const float a = x[d] * cos[d];
        const float b = x[(d + half) % dim] * sin[d];
        out[d] = a + b;
    }
}

/* One call per layer for a step or a verify pass: the rotary embedding of q and k, k and v into the cache
   at columns [start, start + t), then speechllm_attend. qk: [rows, t, (heads + kv_heads) * dim] (q heads,
   then k heads; strides qk_row, qk_pos, 1); v: [rows, t, kv_heads * dim] (strides v_row, v_pos, 1);
   cos, sin: [rows, t, dim] contiguous (sin with rotate_half's sign in it); rotated: scratch for the turned
   queries, rows * t * heads * dim floats. */
int speechllm_rope_attend(const float *qk, int64_t qk_row, int64_t qk_pos, const float *v, int64_t v_row,
                          int64_t v_pos, const float *cos, const float *sin, float *keys, float *values,
                          int64_t kv_row, int64_t capacity, float *rotated, float *out, float *scratch,
                          int64_t rows, int64_t t, int64_t heads, int64_t kv_heads, int64_t dim, int64_t start,
                          int64_t window, float scale, int64_t threads) {
    if (dim % 16 || dim > 256 || heads % kv_heads) return 1;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < t; j++) {
            const float *c = cos + (r * t + j) * dim, *s = sin + (r * t + j) * dim;
            const float *x = qk + r * qk_row + j * qk_pos;
            for (int64_t h = 0; h < heads; h++)
                rotate(x + h * dim, c, s, dim, rotated + ((r * t + j) * heads + h) * dim);
            for (int64_t h = 0; h < kv_heads; h++) {
                const int64_t at = r * kv_row + h * capacity * dim + (start + j) * dim;
                rotate(x + (heads + h) * dim, c, s, dim, keys + at);
                memcpy(values + at, v + r * v_row + j * v_pos + h * dim, (size_t)dim * sizeof(float));
            }
        }
    attend_queries(rotated, t * heads * dim, heads * dim, keys, values, kv_row, capacity, out, scratch, rows, t,
                   heads, kv_heads, dim, start, window, scale, threads);
    return 0;
}
