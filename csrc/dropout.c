/* dropout.c: inverted dropout whose keep-mask is element i -> uniform(seed, offset + i) >= p.
 * Nothing is stored between forward and backward; the backward regenerates the same mask. The
 * generator is inlined from rng.h so that both loops vectorise. */
#include "peftc.h"
#include "rng.h"

static int dropout_args_ok(float p, int64_t P)
{
    return P >= 0 && p >= 0.0f && p < 1.0f;
}

peftc_status peftc_dropout_forward(float *out, const float *x, float p, uint64_t seed, uint64_t offset,
                                   int64_t P)
{
    if (!dropout_args_ok(p, P))
        return P < 0 ? PEFTC_ERR_SIZE : PEFTC_ERR_ARG;
    peftc_dropout_row(out, x, p, 1.0f / (1.0f - p), peftc_rng_key(seed), offset, P);
    return PEFTC_OK;
}

peftc_status peftc_dropout_backward(float *dx, const float *dout, float p, uint64_t seed, uint64_t offset,
                                    int64_t P)
{
    if (!dropout_args_ok(p, P))
        return P < 0 ? PEFTC_ERR_SIZE : PEFTC_ERR_ARG;
    const float keep_scale = 1.0f / (1.0f - p);
    const uint64_t key = peftc_rng_key(seed);
    /* an add of 0 where dropped, not a branch: the loop stays SIMD */
    for (int64_t i = 0; i < P; i++)
        dx[i] += peftc_rng_u01(key, offset + (uint64_t)i) >= p ? dout[i] * keep_scale : 0.0f;
    return PEFTC_OK;
}
