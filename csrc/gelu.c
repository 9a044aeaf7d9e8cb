/* gelu.c: the exact (erf) GELU that BERT uses, forward and backward. Not the tanh approximation. */
#include <math.h>

#include "peftc.h"

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

peftc_status peftc_gelu_forward(float *out, const float *x, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    for (int64_t i = 0; i < P; i++)
        out[i] = 0.5f * x[i] * (1.0f + erff(x[i] * INV_SQRT2));
    return PEFTC_OK;
}

/* d/dx [x Phi(x)] = Phi(x) + x phi(x) */
peftc_status peftc_gelu_backward(float *dx, const float *dout, const float *x, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    for (int64_t i = 0; i < P; i++) {
        const float xi = x[i];
        const float cdf = 0.5f * (1.0f + erff(xi * INV_SQRT2));
        const float pdf = INV_SQRT_2PI * expf(-0.5f * xi * xi);
        dx[i] += dout[i] * (cdf + xi * pdf);
    }
    return PEFTC_OK;
}
