/* layernorm.c: LayerNorm over the last axis, forward (saving mean and 1/std per row) and
 * backward. Statistics are accumulated in double so that eps = 1e-12 (BERT) behaves as in torch
 * for rows with a large mean. No residual add here: callers add in place before the call.
 * Rows are split into contiguous ranges on the BLAS thread count (parallel.h), except in a
 * backward that accumulates dw or db: those sums run over all rows, so it stays on one thread. */
#include <math.h>

#include "parallel.h"
#include "peftc.h"

/* elements (rows x H) per thread below which one thread does all */
#define LAYERNORM_MIN_PER_THREAD 65536

typedef struct {
    float *out, *mean, *rstd, *dx, *dw, *db;
    const float *x, *w, *b, *dout, *mean_in, *rstd_in;
    float eps;
    int64_t N, H;
} layernorm_job;

static int64_t layernorm_parts(int64_t N, int64_t H)
{
    return peftc_parallel_parts(N, (LAYERNORM_MIN_PER_THREAD + H - 1) / H);
}

static peftc_status forward_part(void *ctx, int64_t t, int64_t nparts)
{
    const layernorm_job *j = ctx;
    const int64_t H = j->H;
    int64_t n0, n1;
    peftc_part_range(j->N, t, nparts, &n0, &n1);
    for (int64_t n = n0; n < n1; n++) {
        const float *xr = j->x + n * H;
        double s = 0.0;
        for (int64_t c = 0; c < H; c++)
            s += xr[c];
        const double mu = s / (double)H;
        double ss = 0.0;
        for (int64_t c = 0; c < H; c++) {
            const double d = xr[c] - mu;
            ss += d * d;
        }
        const float m = (float)mu;
        const float r = (float)(1.0 / sqrt(ss / (double)H + (double)j->eps));
        float *o = j->out + n * H;
        for (int64_t c = 0; c < H; c++)
            o[c] = (xr[c] - m) * r * j->w[c] + j->b[c];
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
        float sum_g = 0.0f, sum_gx = 0.0f;
        for (int64_t c = 0; c < H; c++) {
            const float xhat = (xr[c] - m) * r;
            const float g = d[c] * w[c];
            sum_g += g;
            sum_gx += g * xhat;
            if (dw)
                dw[c] += d[c] * xhat;
            if (db)
                db[c] += d[c];
        }
        if (!j->dx)
            continue;
        const float mg = sum_g / (float)H, mgx = sum_gx / (float)H;
        float *o = j->dx + n * H;
        for (int64_t c = 0; c < H; c++) {
            const float xhat = (xr[c] - m) * r;
            o[c] += r * (d[c] * w[c] - mg - xhat * mgx);
        }
    }
    return PEFTC_OK;
}

peftc_status peftc_layernorm_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
                                      const float *w, const float *mean, const float *rstd, int64_t N, int64_t H)
{
    if (N < 0 || H <= 0)
        return PEFTC_ERR_SIZE;
    layernorm_job job = {.dx = dx, .dw = dw, .db = db, .x = x, .w = w, .dout = dout, .mean_in = mean,
                         .rstd_in = rstd, .N = N, .H = H};
    return peftc_parallel_run(backward_part, &job, dw || db ? 1 : layernorm_parts(N, H));
}
