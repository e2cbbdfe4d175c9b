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
