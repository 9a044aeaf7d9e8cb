/* rng.c: a counter-based random generator (SplitMix64 indexed by counter). Element i of a draw is
 * a pure function of (seed, offset + i); there is no hidden state, so draws are reproducible,
 * thread-independent, and a dropout mask can be regenerated instead of stored. */
#include <math.h>

#include "peftc.h"
#include "rng.h"

/* Uniform in [0, 1) with 24 random bits: every value is exactly representable in float. */
float peftc_rng_uniform01(uint64_t seed, uint64_t counter)
{
    return peftc_rng_u01(peftc_rng_key(seed), counter);
}

peftc_status peftc_rng_uniform(float *out, float lo, float hi, uint64_t seed, uint64_t offset, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    if (!(lo <= hi))
        return PEFTC_ERR_ARG;
    const uint64_t key = peftc_rng_key(seed);
    for (int64_t i = 0; i < P; i++)
        out[i] = lo + (hi - lo) * peftc_rng_u01(key, offset + (uint64_t)i);
    return PEFTC_OK;
}

/* Box-Muller on counters 2k and 2k+1; 1 - u keeps the log argument in (0, 1]. */
peftc_status peftc_rng_normal(float *out, float mean, float std, uint64_t seed, uint64_t offset, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    if (!(std >= 0.0f))
        return PEFTC_ERR_ARG;
    const uint64_t key = peftc_rng_key(seed);
    for (int64_t i = 0; i < P; i++) {
        uint64_t k = 2 * (offset + (uint64_t)i);
        double u1 = 1.0 - (double)peftc_rng_u01(key, k);
        double u2 = (double)peftc_rng_u01(key, k + 1);
        double z = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
        out[i] = mean + std * (float)z;
    }
    return PEFTC_OK;
}
