/* rng.c: a counter-based random generator (SplitMix64 indexed by counter). Element i of a draw is
 * a pure function of (seed, offset + i); there is no hidden state, so draws are reproducible,
 * thread-independent, and a dropout mask can be regenerated instead of stored. */
#include <math.h>

#include "peftc.h"

#define GOLDEN_GAMMA 0x9E3779B97F4A7C15ULL

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 24 random bits: every value is exactly representable in float. */
float peftc_rng_uniform01(uint64_t seed, uint64_t counter)
{
    uint64_t z = mix64(mix64(seed) + (counter + 1) * GOLDEN_GAMMA);
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

peftc_status peftc_rng_uniform(float *out, float lo, float hi, uint64_t seed, uint64_t offset, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    if (!(lo <= hi))
        return PEFTC_ERR_ARG;
    for (int64_t i = 0; i < P; i++)
        out[i] = lo + (hi - lo) * peftc_rng_uniform01(seed, offset + (uint64_t)i);
    return PEFTC_OK;
}

/* Box-Muller on counters 2k and 2k+1; 1 - u keeps the log argument in (0, 1]. */
peftc_status peftc_rng_normal(float *out, float mean, float std, uint64_t seed, uint64_t offset, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    if (!(std >= 0.0f))
        return PEFTC_ERR_ARG;
    for (int64_t i = 0; i < P; i++) {
        uint64_t k = 2 * (offset + (uint64_t)i);
        double u1 = 1.0 - (double)peftc_rng_uniform01(seed, k);
        double u2 = (double)peftc_rng_uniform01(seed, k + 1);
        double z = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
        out[i] = mean + std * (float)z;
    }
    return PEFTC_OK;
}
