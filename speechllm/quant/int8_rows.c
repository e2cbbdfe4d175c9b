/* Int8 weights times activations quantized per row (asymmetric, 8 bits: a scale and a zero point per
   row over the row's range and 0): out[r, j] = x_scale[r] * w_scale[j] * sum_i (qx[r, i] - zero[r]) * w[j, i].

   The sums are integers, exact in any order, so a row gets the same numbers alone or among others:
   a batch of rows costs one pass over the weight (what a verify pass of speculative decoding needs,
   bit for bit). The u8 codes meet the s8 weights in AVX-512 VNNI's u8 x s8 dot product; w_sum (each
   weight row's sum) takes the zero point back out. Plain C elsewhere. */

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define VNNI 1
#endif

/* row x [k] -> u8 codes q; returns the row's scale and sets its zero point */
static float quantize_row(const float *x, int64_t k, uint8_t *q, int32_t *zero) {
    float low = 0.0f, high = 0.0f;
    for (int64_t i = 0; i < k; i++) {
        low = x[i] < low ? x[i] : low;
        high = x[i] > high ? x[i] : high;
    }
    const float scale = (high - low) / 255.0f;
    if (!(scale > 0.0f) || !isfinite(scale)) {  /* all zeros (or not finite: NaN out, as a float product) */
        memset(q, 0, (size_t)k);
        *zero = 0;
        return scale > 0.0f || scale == 0.0f ? 0.0f : NAN;
    }
    const float inv = 1.0f / scale;
    const float z = nearbyintf(-low * inv);
    *zero = (int32_t)z;
    for (int64_t i = 0; i < k; i++) {
        const float code = nearbyintf(x[i] * inv) + z;
        q[i] = (uint8_t)(code < 0.0f ? 0.0f : code > 255.0f ? 255.0f : code);
    }
    return scale;
}

static inline int32_t dot(const uint8_t *a, const int8_t *b, int64_t k) {
    int64_t i = 0;
    int32_t sum = 0;
#ifdef VNNI
    __m512i acc = _mm512_setzero_si512();
    for (; i + 64 <= k; i += 64)
        acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(a + i), _mm512_loadu_si512(b + i));
    sum = _mm512_reduce_add_epi32(acc);
#endif
    for (; i < k; i++) sum += (int32_t)a[i] * (int32_t)b[i];
    return sum;
}

/* x [rows, k] float; w [n, k] int8; w_scale [n]; w_sum [n]; out [rows, n];
   scratch: q [rows * k] bytes, x_scale [rows] floats, zero [rows] ints. */
void speechllm_int8_rows(const float *x, int64_t rows, int64_t k, const int8_t *w, const float *w_scale,
                         const int32_t *w_sum, int64_t n, float *out, uint8_t *q, float *x_scale,
                         int32_t *zero, int64_t threads) {
    for (int64_t r = 0; r < rows; r++) x_scale[r] = quantize_row(x + r * k, k, q + r * k, zero + r);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t j = 0; j < n; j++) {
        const int8_t *weights = w + j * k;  /* read once for all the rows */
        for (int64_t r = 0; r < rows; r++) {
            const int32_t sum = dot(q + r * k, weights, k) - zero[r] * w_sum[j];
            out[r * n + j] = (float)sum * (x_scale[r] * w_scale[j]);
        }
    }
}
