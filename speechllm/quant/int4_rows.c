/* Int4 weights in groups of 32 along k (w = q * scale + offset, q in 0..15) times activations quantized
   per block of 32 (symmetric int8: x = d * qx, d = max |x| / 127), as llama.cpp's Q4 x Q8 products do:

       out[r, j] = sum_g d[r, g] * (scale[j, g] * sum_i q[j, i] qx[r, i] + offset[j, g] * sum_i qx[r, i])

   The sums over a group are integers (AVX-512 VNNI's u8 x s8 dot product), so the float work is two
   multiply-adds per group, not per weight: a weight costs half a byte to read and a fraction of an
   instruction. Each row takes the same steps in the same order alone or among others (a verify pass
   of speculative decoding gets a single step's numbers, bit for bit), and a batch of rows reads the
   weights once: 8 rows cost two to three single rows, where torch's int4pack pays about three.

   The weights come re-packed (backends.py, _int4_rows_prepare): per block of 16 output rows and group,
   4 x 64 bytes, byte 4c + t of the s-th holding weight row c's codes for k = 8s + t (low nibble) and
   8s + 4 + t (high nibble); and per block and group the 16 scales, then the 16 offsets, as fp16. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#define GROUP 32
#define BLOCK 16
#define CHUNK 8 /* rows a block works on at a time (their sums stay in registers) */

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__F16C__)
#include <immintrin.h>

/* row x [k] -> int8 codes per block of 32, each block's scale d and d * (sum of its codes). The codes
   round to nearest, ties to even (the default rounding mode: nearbyintf's) */
static void quantize_row(const float *x, int64_t k, int8_t *q, float *d, float *d_sum) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t g = 0; g < k / GROUP; g++) {
        const __m512 a = _mm512_loadu_ps(x + g * GROUP), b = _mm512_loadu_ps(x + g * GROUP + 16);
        const __m512 both = _mm512_max_ps(_mm512_andnot_ps(sign, a), _mm512_andnot_ps(sign, b));
        const float amax = _mm512_reduce_max_ps(both);
        /* a NaN anywhere (max drops NaNs) or an inf: NaN out, as a float product would give */
        const int bad = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q)
                        || !isfinite(amax);
        if (bad) {
            memset(q + g * GROUP, 0, GROUP);
            d[g] = d_sum[g] = NAN;
            continue;
        }
        const float scale = amax / 127.0f, inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(inv)));
        const __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, _mm512_set1_ps(inv)));
        _mm_storeu_si128((__m128i *)(q + g * GROUP), _mm512_cvtepi32_epi8(qa));
        _mm_storeu_si128((__m128i *)(q + g * GROUP + 16), _mm512_cvtepi32_epi8(qb));
        d[g] = scale;
        d_sum[g] = scale * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
    }
}

static inline int32_t word(const int8_t *p) { int32_t w; memcpy(&w, p, 4); return w; }

/* one block of 16 output rows against rows [0, rows) of the quantized activations */
static void block_rows(const uint8_t *w, const uint16_t *scales, int64_t groups, const int8_t *q,
                       const float *d, const float *d_sum, int64_t rows, int64_t k, float *out, int64_t n) {
    const __m512i low = _mm512_set1_epi8(15);
    for (int64_t r0 = 0; r0 < rows; r0 += CHUNK) {
        const int chunk = rows - r0 < CHUNK ? (int)(rows - r0) : CHUNK;
        __m512 acc[CHUNK];
        for (int c = 0; c < CHUNK; c++) acc[c] = _mm512_setzero_ps();
        for (int64_t g = 0; g < groups; g++) {
            const uint8_t *wg = w + g * 256;
            __m512i lo[4], hi[4];
            for (int s = 0; s < 4; s++) {
                const __m512i v = _mm512_loadu_si512(wg + 64 * s);
                lo[s] = _mm512_and_si512(v, low);
                hi[s] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            }
            const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + g * 32)));
            const __m512 offset = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + g * 32 + 16)));
            for (int c = 0; c < chunk; c++) {
                const int64_t r = r0 + c;
                const int8_t *x = q + r * k + g * GROUP;
                __m512i sum = _mm512_setzero_si512(), sum2 = _mm512_setzero_si512();
                for (int s = 0; s < 4; s++) {
                    sum = _mm512_dpbusd_epi32(sum, lo[s], _mm512_set1_epi32(word(x + 8 * s)));
                    sum2 = _mm512_dpbusd_epi32(sum2, hi[s], _mm512_set1_epi32(word(x + 8 * s + 4)));
                }
                sum = _mm512_add_epi32(sum, sum2); /* two chains: half the wait on each dot product */
                const __m512 dot = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), scale);
                acc[c] = _mm512_fmadd_ps(dot, _mm512_set1_ps(d[r * groups + g]), acc[c]);
                acc[c] = _mm512_fmadd_ps(offset, _mm512_set1_ps(d_sum[r * groups + g]), acc[c]);
            }
        }
        for (int c = 0; c < chunk; c++) _mm512_storeu_ps(out + (r0 + c) * n, acc[c]);
    }
}

/* x [rows, k] float; packed codes and scales as above (n % 16 == 0, k % 32 == 0); out [rows, n].
   Returns 0, or -1 where there was no memory for the quantized rows. */
int speechllm_int4_rows(const float *x, int64_t rows, int64_t k, const uint8_t *packed,
                        const uint16_t *scales, int64_t n, float *out, int64_t threads) {
    const int64_t groups = k / GROUP;
    float *d = malloc((size_t)(rows * groups * 2) * sizeof(float) + (size_t)(rows * k));
    if (d == NULL) return -1;
    float *d_sum = d + rows * groups;
    int8_t *q = (int8_t *)(d_sum + rows * groups);
    for (int64_t r = 0; r < rows; r++)
        quantize_row(x + r * k, k, q + r * k, d + r * groups, d_sum + r * groups);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < n / BLOCK; b++)
        block_rows(packed + b * groups * 256, scales + b * groups * 32, groups, q, d, d_sum, rows, k,
                   out + b * BLOCK, n);
    free(d);
    return 0;
}

int speechllm_int4_rows_vector(void) { return 1; }
#else
/* no AVX-512 VNNI here: the backend stays out of the choice (speechllm_int4_rows_vector) */
int speechllm_int4_rows(void) { return -1; }
int speechllm_int4_rows_vector(void) { return 0; }
#endif
