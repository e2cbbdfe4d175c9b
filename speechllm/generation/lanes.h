/* 16-float lanes as GCC/Clang vector extensions (the compiler maps them to AVX-512, AVX2 or NEON), with
   a fixed-order lane sum and a Cephes-style exp: shared by the engine's kernels (attention.c, rowwise.c). */

#ifndef SPEECHLLM_LANES_H
#define SPEECHLLM_LANES_H

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

static inline v16 load(const float *p) { v16 x; memcpy(&x, p, sizeof x); return x; }
static inline void store(float *p, v16 x) { memcpy(p, &x, sizeof x); }
static inline v16 splat(float x) { return (v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
static inline v16i bits(v16 x) { v16i i; memcpy(&i, &x, sizeof i); return i; }
static inline v16 floats(v16i i) { v16 x; memcpy(&x, &i, sizeof x); return x; }
/* lane-wise `mask ? a : b` (a mask lane is all ones or all zeros) */
static inline v16 select(v16i mask, v16 a, v16 b) { return floats((bits(a) & mask) | (bits(b) & ~mask)); }

/* a fixed pairwise order: lanes i and i + 8, then i and i + 4, ... */
static inline float lanes_sum(v16 a) {
    float s[16];
    store(s, a);
    float h8[8], h4[4];
    for (int i = 0; i < 8; i++) h8[i] = s[i] + s[i + 8];
    for (int i = 0; i < 4; i++) h4[i] = h8[i] + h8[i + 4];
    return (h4[0] + h4[2]) + (h4[1] + h4[3]);
}

/* exp(x) lane-wise (Cephes expf: x = n ln2 + r, a degree-6 polynomial in r); x below -87.3 gives 0 */
static inline v16 exp16(v16 x) {
    const v16 lo = splat(-87.33654475f), hi = splat(88.37626266f);
    v16i under = x < lo;
    x = select(under, lo, x);
    x = select(x > hi, hi, x);
    v16 fx = x * splat(1.44269504088896341f) + splat(0.5f);
    v16i n = __builtin_convertvector(fx, v16i);
    v16 fn = __builtin_convertvector(n, v16);
    v16i above = fn > fx;  /* truncation rounded up a negative: step down to the floor */
    n = n + above;         /* true is -1 */
    fn = __builtin_convertvector(n, v16);
    v16 r = x - fn * splat(0.693359375f) - fn * splat(-2.12194440e-4f);
    v16 y = splat(1.9875691500e-4f);
    y = y * r + splat(1.3981999507e-3f);
    y = y * r + splat(8.3334519073e-3f);
    y = y * r + splat(4.1665795894e-2f);
    y = y * r + splat(1.6666665459e-1f);
    y = y * r + splat(5.0000001201e-1f);
    y = y * r * r + r + splat(1.0f);
    y = y * floats((n + 127) << 23);
    return floats(bits(y) & ~under);
}

#endif
