/* layernorm.c: LayerNorm over the last axis, forward (saving mean and 1/std per row) and
 * backward. Statistics are float sums over 16 lanes (vectorised), taken about the row's mean
 * (see forward_part), so that eps = 1e-12 (BERT) behaves as in torch for rows with a large mean.
 * peftc_layernorm_residual_forward adds a residual into x row by row first (post-LN blocks).
 * Rows are split into contiguous ranges on the BLAS thread count (parallel.h), except in a
 * backward that accumulates dw or db: those sums run over all rows, so it stays on one thread. */
#include <math.h>

#include "parallel.h"
#include "peftc.h"

/* elements (rows x H) per thread below which one thread does all */
#define LAYERNORM_MIN_PER_THREAD 65536

typedef struct {
    float *out, *mean, *rstd, *dx, *dw, *db;
    float *sum; /* the fused forward's x, overwritten with x + residual; NULL otherwise */
    const float *x, *w, *b, *dout, *mean_in, *rstd_in, *residual;
    float eps;
    int64_t N, H;
} layernorm_job;

static int64_t layernorm_parts(int64_t N, int64_t H)
{
    return peftc_parallel_parts(N, (LAYERNORM_MIN_PER_THREAD + H - 1) / H);
}

/* Reductions over a row in LN_LANES partial sums: one accumulator would keep the compiler from
 * reordering (vectorising) a float sum, and the lanes make it a pairwise-like sum (each lane adds
 * H / LN_LANES terms), accurate enough in float for H in the thousands. */
#define LN_LANES 16

/* sum of x[c] - shift over c < H */
static inline float row_sum_shifted(const float *x, float shift, int64_t H)
{
    float acc[LN_LANES] = {0.0f};
    int64_t c = 0;
    for (; c + LN_LANES <= H; c += LN_LANES)
        for (int l = 0; l < LN_LANES; l++)
            acc[l] += x[c + l] - shift;
    float s = 0.0f;
    for (int l = 0; l < LN_LANES; l++)
        s += acc[l];
    for (; c < H; c++)
        s += x[c] - shift;
    return s;
}

/* sum of (x[c] - shift)^2 over c < H */
static inline float row_sumsq_shifted(const float *x, float shift, int64_t H)
{
    float acc[LN_LANES] = {0.0f};
    int64_t c = 0;
    for (; c + LN_LANES <= H; c += LN_LANES)
        for (int l = 0; l < LN_LANES; l++) {
            const float d = x[c + l] - shift;
            acc[l] = fmaf(d, d, acc[l]);
        }
    float s = 0.0f;
    for (int l = 0; l < LN_LANES; l++)
        s += acc[l];
    for (; c < H; c++) {
        const float d = x[c] - shift;
        s = fmaf(d, d, s);
    }
    return s;
}

/* Statistics in float, three passes over the row (it is in L1 after the first): the mean about the
 * row's first element (a shift that keeps a large common offset out of the sum), the sum of
 * squares about that mean, and the normalised output. The second pass is centred, so a large mean
 * with a small spread loses nothing to cancellation; the leftover mean of the centred values
 * corrects the variance (the two-pass formula of Chan, Golub and LeVeque). */
static peftc_status forward_part(void *ctx, int64_t t, int64_t nparts)
{
    const layernorm_job *j = ctx;
    const int64_t H = j->H;
    const float inv_h = 1.0f / (float)H;
    int64_t n0, n1;
    peftc_part_range(j->N, t, nparts, &n0, &n1);
    for (int64_t n = n0; n < n1; n++) {
        const float *xr = j->x + n * H;
        if (j->sum) {
            /* the residual add, row by row: the row is then in L1 for the passes below */
            float *sr = j->sum + n * H;
            const float *rr = j->residual + n * H;
            for (int64_t c = 0; c < H; c++)
                sr[c] += rr[c];
        }
        const float m = xr[0] + row_sum_shifted(xr, xr[0], H) * inv_h;
        const float dm = row_sum_shifted(xr, m, H) * inv_h;
        const float var = row_sumsq_shifted(xr, m, H) * inv_h - dm * dm;
        const float r = 1.0f / sqrtf((var > 0.0f ? var : 0.0f) + j->eps);
        float *o = j->out + n * H;
        const float *w = j->w, *b = j->b;
        for (int64_t c = 0; c < H; c++)
            o[c] = fmaf((xr[c] - m) * r, w[c], b[c]);
        j->mean[n] = m;
        j->rstd[n] = r;
    }
    return PEFTC_OK;
}

peftc_status peftc_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w,
                                     const float *b, float eps, int64_t N, int64_t H)
{
    if (N < 0 || H <= 0)
        return PEFTC_ERR_SIZE;
    if (!(eps >= 0.0f))
        return PEFTC_ERR_ARG;
    layernorm_job job = {.out = out, .mean = mean, .rstd = rstd, .x = x, .w = w, .b = b, .eps = eps, .N = N, .H = H};
    return peftc_parallel_run(forward_part, &job, layernorm_parts(N, H));
}

/* The post-LN block's "LayerNorm(x + residual)" in one pass over the rows instead of an add over
 * the whole array and then the LayerNorm: x is overwritten with the sum, which is the input the
 * backward takes (the backward is peftc_layernorm_backward on that sum). */
peftc_status peftc_layernorm_residual_forward(float *out, float *mean, float *rstd, float *x, const float *residual,
                                              const float *w, const float *b, float eps, int64_t N, int64_t H)
{
    if (N < 0 || H <= 0)
        return PEFTC_ERR_SIZE;
    if (!(eps >= 0.0f))
        return PEFTC_ERR_ARG;
    layernorm_job job = {.out = out,
                         .mean = mean,
                         .rstd = rstd,
                         .sum = x,
                         .x = x,
                         .residual = residual,
                         .w = w,
                         .b = b,
                         .eps = eps,
                         .N = N,
                         .H = H};
    return peftc_parallel_run(forward_part, &job, layernorm_parts(N, H));
}

/* With xhat = (x - mean) rstd and g = dout * w:
 *   dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)),  dw = sum_n dout * xhat,  db = sum_n dout */
static peftc_status backward_part(void *ctx, int64_t t, int64_t nparts)
{
    const layernorm_job *j = ctx;
    const int64_t H = j->H;
    const float *w = j->w;
    float *dw = j->dw, *db = j->db;
    int64_t n0, n1;
    peftc_part_range(j->N, t, nparts, &n0, &n1);
    for (int64_t n = n0; n < n1; n++) {
        const float *xr = j->x + n * H;
        const float *d = j->dout + n * H;
        const float m = j->mean_in[n], r = j->rstd_in[n];
        /* the parameter sums: their own loops, so that the row sums below have no branch in them */
        if (dw)
            for (int64_t c = 0; c < H; c++)
                dw[c] = fmaf(d[c], (xr[c] - m) * r, dw[c]);
        if (db)
            for (int64_t c = 0; c < H; c++)
                db[c] += d[c];
        if (!j->dx)
            continue;
        float acc_g[LN_LANES] = {0.0f}, acc_gx[LN_LANES] = {0.0f};
        int64_t c = 0;
        for (; c + LN_LANES <= H; c += LN_LANES)
            for (int l = 0; l < LN_LANES; l++) {
                const float g = d[c + l] * w[c + l];
                acc_g[l] += g;
                acc_gx[l] = fmaf(g, (xr[c + l] - m) * r, acc_gx[l]);
            }
        float sum_g = 0.0f, sum_gx = 0.0f;
        for (int l = 0; l < LN_LANES; l++) {
            sum_g += acc_g[l];
            sum_gx += acc_gx[l];
        }
        for (; c < H; c++) {
            const float g = d[c] * w[c];
            sum_g += g;
            sum_gx = fmaf(g, (xr[c] - m) * r, sum_gx);
        }
        const float mg = sum_g / (float)H, mgx = sum_gx / (float)H;
        float *o = j->dx + n * H;
        for (c = 0; c < H; c++) {
            const float xhat = (xr[c] - m) * r;
            o[c] = fmaf(r, fmaf(d[c], w[c], -mg) - xhat * mgx, o[c]);
        }
    }
    return PEFTC_OK;
}

peftc_status peftc_layernorm_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
                                      const float *w, const float *mean, const float *rstd, int64_t N, int64_t H)
{
    if (N < 0 || H <= 0)
        return PEFTC_ERR_SIZE;
    layernorm_job job = {
        .dx = dx, .dw = dw, .db = db, .x = x, .w = w, .dout = dout, .mean_in = mean, .rstd_in = rstd, .N = N, .H = H};
    return peftc_parallel_run(backward_part, &job, dw || db ? 1 : layernorm_parts(N, H));
}
