/* activation.c: elementwise ReLU forward and backward, split over the kernel threads in contiguous
 * ranges (each value is computed alone, so the thread count changes no bits). Nothing is cached: the backward reads the
 * sign of the forward input (or output, which has the same positive set). */
#include "parallel.h"
#include "peftc.h"

/* values a part should hold before an array is split over threads */
#define RELU_MIN_PER_THREAD 65536

typedef struct {
    float *out;           /* y (overwritten), or dx (accumulated) */
    const float *in, *dy; /* x; the backward's dy, NULL in the forward */
    int64_t P;
} relu_job;

static peftc_status relu_part(void *ctx, int64_t t, int64_t nparts)
{
    const relu_job *j = ctx;
    int64_t i0, i1;
    peftc_part_range(j->P, t, nparts, &i0, &i1);
    float *out = j->out;
    const float *x = j->in, *dy = j->dy;
    if (dy)
        for (int64_t i = i0; i < i1; i++)
            out[i] += x[i] > 0.0f ? dy[i] : 0.0f;
    else /* written as "x < 0 ? 0 : x" so that NaN passes through as in torch */
        for (int64_t i = i0; i < i1; i++)
            out[i] = x[i] < 0.0f ? 0.0f : x[i];
    return PEFTC_OK;
}

static peftc_status relu_run(float *out, const float *x, const float *dy, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    relu_job job = {.out = out, .in = x, .dy = dy, .P = P};
    return peftc_parallel_run(relu_part, &job, peftc_parallel_parts(P, RELU_MIN_PER_THREAD));
}

peftc_status peftc_relu_forward(float *y, const float *x, int64_t P)
{
    return relu_run(y, x, NULL, P);
}

peftc_status peftc_relu_backward(float *dx, const float *dy, const float *x, int64_t P)
{
    return relu_run(dx, x, dy, P);
}
