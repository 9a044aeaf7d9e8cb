/* fill.c: x = value over a flat float array, split over the kernel threads: the explicit zeroing of
 * the gradient buffers that backward kernels accumulate into (functional.zeros). No other arithmetic
 * here. */
#include <math.h>
#include <string.h>

#include "parallel.h"
#include "peftc.h"

/* floats a part should hold before the array is split over threads (a 256 KB memset takes some
 * microseconds, as long as handing a part to another thread) */
#define FILL_MIN_PER_THREAD 65536

typedef struct {
    float *x;
    float value;
    int64_t P;
} fill_job;

static peftc_status fill_part(void *ctx, int64_t t, int64_t nparts)
{
    const fill_job *j = ctx;
    int64_t i0, i1;
    peftc_part_range(j->P, t, nparts, &i0, &i1);
    if (j->value == 0.0f && !signbit(j->value))
        memset(j->x + i0, 0, (size_t)(i1 - i0) * sizeof(float)); /* all-zero bits are +0.0f */
    else
        for (int64_t i = i0; i < i1; i++)
            j->x[i] = j->value;
    return PEFTC_OK;
}

peftc_status peftc_fill(float *x, float value, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    fill_job job = {.x = x, .value = value, .P = P};
    return peftc_parallel_run(fill_part, &job, peftc_parallel_parts(P, FILL_MIN_PER_THREAD));
}
