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

#ifdef VNNI
/* lane i: the sum of the lanes of x[i] (integer sums: exact in any order) */
static inline __m512i lanes_sums(__m512i *x) {
    const __m512i a8 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    const __m512i b8 = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    const __m512i a4 = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    const __m512i b4 = _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    const __m512i a2 = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29);
    const __m512i b2 = _mm512_setr_epi32(2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    const __m512i a1 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i b1 = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __m512i h8[8], h4[4], h2[2];
    for (int i = 0; i < 8; i++)
        h8[i] = _mm512_add_epi32(_mm512_permutex2var_epi32(x[2 * i], a8, x[2 * i + 1]),
                                 _mm512_permutex2var_epi32(x[2 * i], b8, x[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        h4[i] = _mm512_add_epi32(_mm512_permutex2var_epi32(h8[2 * i], a4, h8[2 * i + 1]),
                                 _mm512_permutex2var_epi32(h8[2 * i], b4, h8[2 * i + 1]));
    for (int i = 0; i < 2; i++)
        h2[i] = _mm512_add_epi32(_mm512_permutex2var_epi32(h4[2 * i], a2, h4[2 * i + 1]),
                                 _mm512_permutex2var_epi32(h4[2 * i], b2, h4[2 * i + 1]));
    return _mm512_add_epi32(_mm512_permutex2var_epi32(h2[0], a1, h2[1]), _mm512_permutex2var_epi32(h2[0], b1, h2[1]));
}

/* sixteen weight rows [16, k] against every row of q: their block stays in L1 across the rows, and one
   transposing sum per row and block replaces sixteen horizontal ones */
static void block16(const uint8_t *q, int64_t rows, int64_t k, const int8_t *w, const float *w_scale,
                    const int32_t *w_sum, int64_t n, float *out, const float *x_scale, const int32_t *zero) {
    const int64_t body = k / 64 * 64;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *x = q + r * k;
        __m512i acc[16];
        for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_si512();
        for (int64_t i = 0; i < body; i += 64) {
            const __m512i xv = _mm512_loadu_si512(x + i);
            for (int jj = 0; jj < 16; jj++)
                acc[jj] = _mm512_dpbusd_epi32(acc[jj], xv, _mm512_loadu_si512(w + jj * k + i));
        }
        int32_t tail[16];
        for (int jj = 0; jj < 16; jj++) {
            tail[jj] = -zero[r] * w_sum[jj];
            for (int64_t i = body; i < k; i++) tail[jj] += (int32_t)x[i] * (int32_t)w[jj * k + i];
        }
        const __m512i sums = _mm512_add_epi32(lanes_sums(acc), _mm512_loadu_si512(tail));
        const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(x_scale[r]), _mm512_loadu_ps(w_scale));
        _mm512_storeu_ps(out + r * n, _mm512_mul_ps(_mm512_cvtepi32_ps(sums), scale));
    }
}
#endif

/* x [rows, k] float; w [n, k] int8; w_scale [n]; w_sum [n]; out [rows, n];
   scratch: q [rows * k] bytes, x_scale [rows] floats, zero [rows] ints. */
void speechllm_int8_rows(const float *x, int64_t rows, int64_t k, const int8_t *w, const float *w_scale,
                         const int32_t *w_sum, int64_t n, float *out, uint8_t *q, float *x_scale,
                         int32_t *zero, int64_t threads) {
    for (int64_t r = 0; r < rows; r++) x_scale[r] = quantize_row(x + r * k, k, q + r * k, zero + r);
    int64_t blocked = 0;
#ifdef VNNI
    if (rows > 1) {  /* one row reads each weight once either way: the plain loop has less to do */
        blocked = n / 16 * 16;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t j = 0; j < blocked; j += 16)
            block16(q, rows, k, w + j * k, w_scale + j, w_sum + j, n, out + j, x_scale, zero);
    }
#endif
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t j = blocked; j < n; j++) {
        const int8_t *weights = w + j * k;  /* read once for all the rows */
        for (int64_t r = 0; r < rows; r++) {
            const int32_t sum = dot(q + r * k, weights, k) - zero[r] * w_sum[j];
            out[r * n + j] = (float)sum * (x_scale[r] * w_scale[j]);
        }
    }
}
