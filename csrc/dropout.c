/* dropout.c: inverted dropout whose keep-mask is element i -> uniform(seed, offset + i) >= p.
 * Nothing is stored between forward and backward; the backward regenerates the same mask. The
 * generator is inlined from rng.h so that both loops vectorise; large inputs are split into
 * contiguous ranges on the BLAS thread count (the mask is a function of the index alone, so the
 * split changes nothing). The rows variants drop chosen rows of a larger array as the whole array's mask
 * would (a packed batch's tokens, rows of the padded batch). */
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
    const int64_t *rows; /* the rows variants: (P) row indices into the larger array */
    float p, keep_scale;
    uint64_t key, offset;
    int64_t P, C;
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

/* ---- rows of a larger array (a packed batch): row n's counters start at offset + rows[n] * C ---------- */

static peftc_status rows_forward_part(void *ctx, int64_t t, int64_t nparts)
{
    const dropout_job *j = ctx;
    int64_t n0, n1;
    peftc_part_range(j->P, t, nparts, &n0, &n1);
    for (int64_t n = n0; n < n1; n++)
        peftc_dropout_row(j->out + n * j->C, j->in + n * j->C, j->p, j->keep_scale, j->key,
                          j->offset + (uint64_t)(j->rows[n] * j->C), j->C);
    return PEFTC_OK;
}

static peftc_status rows_backward_part(void *ctx, int64_t t, int64_t nparts)
{
    const dropout_job *j = ctx;
    int64_t n0, n1;
    peftc_part_range(j->P, t, nparts, &n0, &n1);
    for (int64_t n = n0; n < n1; n++) {
        const float *dout = j->in + n * j->C;
        float *dx = j->out + n * j->C;
        const uint64_t c0 = j->offset + (uint64_t)(j->rows[n] * j->C);
        for (int64_t c = 0; c < j->C; c++)
            dx[c] += peftc_rng_u01(j->key, c0 + (uint64_t)c) >= j->p ? dout[c] * j->keep_scale : 0.0f;
    }
    return PEFTC_OK;
}

static peftc_status dropout_rows_run(peftc_part_fn fn, float *out, const float *in, const int64_t *rows, float p,
                                     uint64_t seed, uint64_t offset, int64_t N, int64_t C)
{
    if (N < 0 || C < 0)
        return PEFTC_ERR_SIZE;
    if (!dropout_args_ok(p, N))
        return PEFTC_ERR_ARG;
    for (int64_t n = 0; n < N; n++)
        if (rows[n] < 0)
            return PEFTC_ERR_ARG;
    dropout_job job = {.out = out,
                       .in = in,
                       .rows = rows,
                       .p = p,
                       .keep_scale = 1.0f / (1.0f - p),
                       .key = peftc_rng_key(seed),
                       .offset = offset,
                       .P = N,
                       .C = C};
    /* whole rows per part: no more parts than rows */
    const int64_t parts = peftc_parallel_parts(N * C, DROPOUT_MIN_PER_THREAD);
    return peftc_parallel_run(fn, &job, parts < N ? parts : (N > 0 ? N : 1));
}

peftc_status peftc_dropout_rows_forward(float *out, const float *x, const int64_t *rows, float p, uint64_t seed,
                                        uint64_t offset, int64_t N, int64_t C)
{
    return dropout_rows_run(rows_forward_part, out, x, rows, p, seed, offset, N, C);
}

peftc_status peftc_dropout_rows_backward(float *dx, const float *dout, const int64_t *rows, float p, uint64_t seed,
                                         uint64_t offset, int64_t N, int64_t C)
{
    return dropout_rows_run(rows_backward_part, dx, dout, rows, p, seed, offset, N, C);
}
