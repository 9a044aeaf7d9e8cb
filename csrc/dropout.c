/* dropout.c: inverted dropout whose keep-mask is element i -> uniform(seed, offset + i) >= p.
 * Nothing is stored between forward and backward; the backward regenerates the same mask. The
 * generator is inlined from rng.h so that both loops vectorise; large inputs are split into
 * contiguous ranges on the BLAS thread count (the mask is a function of the index alone, so the
 * split changes nothing). */
#include "parallel.h"
#include "peftc.h"
#include "rng.h"

/* elements per thread below which one thread does all */
#define DROPOUT_MIN_PER_THREAD 65536

static int dropout_args_ok(float p, int64_t P)
{
    return P >= 0 && p >= 0.0f && p < 1.0f;
}

typedef struct {
    float *out;
    const float *in;
    float p, keep_scale;
    uint64_t key, offset;
    int64_t P;
} dropout_job;

static peftc_status forward_part(void *ctx, int64_t t, int64_t nparts)
{
    const dropout_job *j = ctx;
    int64_t i0, i1;
    peftc_part_range(j->P, t, nparts, &i0, &i1);
    peftc_dropout_row(j->out + i0, j->in + i0, j->p, j->keep_scale, j->key, j->offset + (uint64_t)i0, i1 - i0);
    return PEFTC_OK;
}

static peftc_status backward_part(void *ctx, int64_t t, int64_t nparts)
{
    const dropout_job *j = ctx;
    int64_t i0, i1;
    peftc_part_range(j->P, t, nparts, &i0, &i1);
    const float *dout = j->in;
    float *dx = j->out;
    /* an add of 0 where dropped, not a branch: the loop stays SIMD */
    for (int64_t i = i0; i < i1; i++)
        dx[i] += peftc_rng_u01(j->key, j->offset + (uint64_t)i) >= j->p ? dout[i] * j->keep_scale : 0.0f;
    return PEFTC_OK;
}

static peftc_status dropout_run(peftc_part_fn fn, float *out, const float *in, float p, uint64_t seed, uint64_t offset,
                                int64_t P)
{
    if (!dropout_args_ok(p, P))
        return P < 0 ? PEFTC_ERR_SIZE : PEFTC_ERR_ARG;
    dropout_job job = {.out = out,
                       .in = in,
                       .p = p,
                       .keep_scale = 1.0f / (1.0f - p),
                       .key = peftc_rng_key(seed),
                       .offset = offset,
                       .P = P};
    return peftc_parallel_run(fn, &job, peftc_parallel_parts(P, DROPOUT_MIN_PER_THREAD));
}

peftc_status peftc_dropout_forward(float *out, const float *x, float p, uint64_t seed, uint64_t offset, int64_t P)
{
    return dropout_run(forward_part, out, x, p, seed, offset, P);
}

peftc_status peftc_dropout_backward(float *dx, const float *dout, float p, uint64_t seed, uint64_t offset, int64_t P)
{
    return dropout_run(backward_part, dx, dout, p, seed, offset, P);
}
