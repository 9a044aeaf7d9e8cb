/* bias_rows.h: y[n, :] = b + scale * bb for every row n of an (N, OC) output, the start of a linear
 * layer's output before its GEMMs accumulate into it (linear.c, lora.c). Rows are split into
 * contiguous ranges on the BLAS thread count (parallel.h): with several threads the GEMMs run
 * threaded inside OpenBLAS, and a fill on one thread would be the step's serial part. */
#ifndef PEFTC_BIAS_ROWS_H
#define PEFTC_BIAS_ROWS_H

#include "parallel.h"

/* elements (rows x OC) per thread below which one thread does all */
#define BIAS_ROWS_MIN_PER_THREAD 65536

typedef struct {
    float *y;            /* (N,OC) overwritten */
    const float *b, *bb; /* (OC) each, either may be NULL (then 0) */
    float scale;         /* multiplies bb */
    int64_t N, OC;
} bias_rows_job;

static inline peftc_status bias_rows_part(void *ctx, int64_t t, int64_t nparts)
{
    const bias_rows_job *j = ctx;
    const int64_t OC = j->OC;
    int64_t n0, n1;
    peftc_part_range(j->N, t, nparts, &n0, &n1);
    for (int64_t n = n0; n < n1; n++) {
        float *yr = j->y + n * OC;
        if (j->b && j->bb)
            for (int64_t o = 0; o < OC; o++)
                yr[o] = j->b[o] + j->scale * j->bb[o];
        else if (j->b)
            for (int64_t o = 0; o < OC; o++)
                yr[o] = j->b[o];
        else
            for (int64_t o = 0; o < OC; o++)
                yr[o] = j->scale * j->bb[o];
    }
    return PEFTC_OK;
}

/* y (N,OC) overwritten with the rows b + scale * bb; at least one of b, bb is not NULL */
static inline peftc_status peftc_bias_rows_fill(float *y, const float *b, const float *bb, float scale, int64_t N,
                                                int64_t OC)
{
    bias_rows_job job = {.y = y, .b = b, .bb = bb, .scale = scale, .N = N, .OC = OC};
    const int64_t per_row = OC > 0 ? OC : 1;
    return peftc_parallel_run(bias_rows_part, &job,
                              peftc_parallel_parts(N, (BIAS_ROWS_MIN_PER_THREAD + per_row - 1) / per_row));
}

#endif
