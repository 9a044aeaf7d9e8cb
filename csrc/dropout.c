/* dropout.c: inverted dropout whose keep-mask is element i -> uniform(seed, offset + i) >= p.
 * Nothing is stored between forward and backward; the backward regenerates the same mask. */
#include "peftc.h"

static int dropout_args_ok(float p, int64_t P)
{
    return P >= 0 && p >= 0.0f && p < 1.0f;
}

peftc_status peftc_dropout_forward(float *out, const float *x, float p, uint64_t seed, uint64_t offset,
                                   int64_t P)
{
    if (!dropout_args_ok(p, P))
        return P < 0 ? PEFTC_ERR_SIZE : PEFTC_ERR_ARG;
    const float keep_scale = 1.0f / (1.0f - p);
    for (int64_t i = 0; i < P; i++)
        out[i] = peftc_rng_uniform01(seed, offset + (uint64_t)i) >= p ? x[i] * keep_scale : 0.0f;
    return PEFTC_OK;
}

peftc_status peftc_dropout_backward(float *dx, const float *dout, float p, uint64_t seed, uint64_t offset,
                                    int64_t P)
{
    if (!dropout_args_ok(p, P))
        return P < 0 ? PEFTC_ERR_SIZE : PEFTC_ERR_ARG;
    const float keep_scale = 1.0f / (1.0f - p);
    for (int64_t i = 0; i < P; i++)
        if (peftc_rng_uniform01(seed, offset + (uint64_t)i) >= p)
            dx[i] += dout[i] * keep_scale;
    return PEFTC_OK;
}
