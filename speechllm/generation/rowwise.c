/* Row-wise ops of a decoder layer for the static engine, one native call each instead of the handful of
   torch ops they decompose into on the CPU (torch's rms_norm runs as pow, mean, add, rsqrt and two muls; the MLP's gate as split, silu and mul).

   Each row is computed alone, by the same instructions whatever the number of rows, so a verify pass
   gives each position a step's numbers bit for bit; sums run in a fixed order (16 lanes, then a fixed
   tree). Built at first use with `cc -O3 -march=native` (see rowwise.py). */

#include "lanes.h"

/* out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, for rows of `dim` floats (dim a multiple of 16) */
int speechllm_rms_norm(const float *x, int64_t rows, int64_t dim, const float *weight, float eps, float *out) {
    if (dim % 16) return 1;
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * dim;
        v16 squares = splat(0.0f);
        for (int64_t i = 0; i < dim; i += 16) {
            const v16 v = load(row + i);
            squares += v * v;
        }
        const float inv = 1.0f / sqrtf(lanes_sum(squares) / (float)dim + eps);
        for (int64_t i = 0; i < dim; i += 16) store(out + r * dim + i, load(row + i) * inv * load(weight + i));
    }
    return 0;
}

/* out[r] = silu(gate[r]) * up[r] with gate_up[r] = (gate, up) side by side, `hidden` floats each (a multiple
   of 16); silu(x) = x / (1 + exp(-x)) */
int speechllm_silu_mul(const float *gate_up, int64_t rows, int64_t hidden, float *out) {
    if (hidden % 16) return 1;
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = gate_up + r * 2 * hidden, *up = gate + hidden;
        for (int64_t i = 0; i < hidden; i += 16) {
            const v16 g = load(gate + i);
            store(out + r * hidden + i, g / (splat(1.0f) + exp16(-g)) * load(up + i));
        }
    }
    return 0;
}

/* LoRA deltas added into slices of one output, for layers that read the same input (q, k and v): u =
   x A^T with at = [A_1; A_2; ...]^T [k, r] (each layer's rank zero-padded to lanes of 16: exact zeros;
   r up to 128), then for layer s, out[row, starts[s] + c] += scales[s] * sum_j bt_s[j, c] * u_s[j] with
   bt_s = B_s^T [ranks[s], sizes[s]] (its address in bt[s]). Each row alone, every sum in a fixed order
   whatever the number of rows (u over i in four interleaved partial sums, a delta over j in two). out
   rows are `out_stride` floats apart. */
int speechllm_lora_add(const float *x, int64_t rows, int64_t k, const float *at, int64_t r, int64_t segments,
                       const int64_t *bt, const int64_t *ranks, const int64_t *starts, const int64_t *sizes,
                       const float *scales, float *out, int64_t out_stride) {
    if (r % 16 || r > 128) return 1;
    const int64_t chunks = r / 16;
    for (int64_t row = 0; row < rows; row++) {
        const float *xr = x + row * k;
        v16 part[4][8];
        for (int p = 0; p < 4; p++)
            for (int64_t c = 0; c < chunks; c++) part[p][c] = splat(0.0f);
        int64_t i = 0;
        for (; i + 3 < k; i += 4)
            for (int p = 0; p < 4; p++) {
                const v16 xi = splat(xr[i + p]);
                for (int64_t c = 0; c < chunks; c++) part[p][c] += xi * load(at + (i + p) * r + 16 * c);
            }
        for (; i < k; i++)
            for (int64_t c = 0; c < chunks; c++) part[0][c] += splat(xr[i]) * load(at + i * r + 16 * c);
        float u[128];
        for (int64_t c = 0; c < chunks; c++)
            store(u + 16 * c, (part[0][c] + part[1][c]) + (part[2][c] + part[3][c]));
        const float *us = u;
        for (int64_t s = 0; s < segments; s++) {
            const float *b = (const float *)(intptr_t)bt[s];
            const int64_t n = sizes[s], rank = ranks[s];
            const float scale = scales[s];
            float *o = out + row * out_stride + starts[s];
            int64_t c0 = 0;
            for (; c0 + 15 < n; c0 += 16) {
                v16 even = splat(0.0f), odd = splat(0.0f);
                for (int64_t j = 0; j < rank; j += 2) {
                    even += splat(us[j]) * load(b + j * n + c0);
                    odd += splat(us[j + 1]) * load(b + (j + 1) * n + c0);
                }
                store(o + c0, load(o + c0) + (even + odd) * splat(scale));
            }
            for (; c0 < n; c0++) {
                float even = 0.0f, odd = 0.0f;
                for (int64_t j = 0; j < rank; j += 2) {
                    even += us[j] * b[j * n + c0];
                    odd += us[j + 1] * b[(j + 1) * n + c0];
                }
                o[c0] += (even + odd) * scale;
            }
            us += rank;
        }
    }
    return 0;
}
