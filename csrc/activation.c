/* activation.c: elementwise ReLU forward and backward. Nothing is cached: the backward reads the
 * sign of the forward input (or output, which has the same positive set). */
#include "peftc.h"

peftc_status peftc_relu_forward(float *y, const float *x, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    /* written as "x < 0 ? 0 : x" so that NaN passes through as in torch */
    for (int64_t i = 0; i < P; i++)
        y[i] = x[i] < 0.0f ? 0.0f : x[i];
    return PEFTC_OK;
}

peftc_status peftc_relu_backward(float *dx, const float *dy, const float *x, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    for (int64_t i = 0; i < P; i++)
        dx[i] += x[i] > 0.0f ? dy[i] : 0.0f;
    return PEFTC_OK;
}
