/* rng.h: the counter generator's mixing function, inline for the hot loops of rng.c, dropout.c and
 * attention.c. Draw i of a call is uniform(seed, offset + i) =
 *     top 24 bits of mix64(mix64(seed) + (offset + i + 1) * golden gamma) / 2^24.
 * The seed is mixed once per call (peftc_rng_key), not once per element, and every loop below is
 * free of calls and branches so that the compiler turns it into SIMD code (64-bit multiplies).
 * Any change here changes every mask and every initialisation: peftc/reference.py must agree. */
#ifndef PEFTC_RNG_H
#define PEFTC_RNG_H

#include <stdint.h>

#define PEFTC_GOLDEN_GAMMA 0x9E3779B97F4A7C15ULL

static inline uint64_t peftc_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* the per-call part of every draw: the mixed seed */
static inline uint64_t peftc_rng_key(uint64_t seed)
{
    return peftc_mix64(seed);
}

/* uniform in [0, 1) with 24 random bits (every value exact in float) from the key and the counter */
static inline float peftc_rng_u01(uint64_t key, uint64_t counter)
{
    const uint64_t z = peftc_mix64(key + (counter + 1) * PEFTC_GOLDEN_GAMMA);
    /* through int32: a 24-bit value converts exactly, and signed converts vectorise everywhere */
    return (float)(int32_t)(z >> 40) * (1.0f / 16777216.0f);
}

/* out[j] = keep_j ? x[j] * keep_scale : 0 over one row, keep_j = uniform(counter0 + j) >= p */
static inline void peftc_dropout_row(float *out, const float *x, float p, float keep_scale, uint64_t key,
                                     uint64_t counter0, int64_t n)
{
    for (int64_t j = 0; j < n; j++)
        out[j] = peftc_rng_u01(key, counter0 + (uint64_t)j) >= p ? x[j] * keep_scale : 0.0f;
}

#endif
