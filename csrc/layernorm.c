/* layernorm.c: LayerNorm over the last axis, forward (saving mean and 1/std per row) and
 * backward. Statistics are accumulated in double so that eps = 1e-12 (BERT) behaves as in torch
 * for rows with a large mean. No residual add here: callers add in place before the call. */
#include <math.h>

#include "peftc.h"

peftc_status peftc_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w,
                                     const float *b, float eps, int64_t N, int64_t H)
{
    if (N < 0 || H <= 0)
        return PEFTC_ERR_SIZE;
    if (!(eps >= 0.0f))
        return PEFTC_ERR_ARG;
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * H;
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
        const float r = (float)(1.0 / sqrt(ss / (double)H + (double)eps));
        float *o = out + n * H;
        for (int64_t c = 0; c < H; c++)
            o[c] = (xr[c] - m) * r * w[c] + b[c];
        mean[n] = m;
        rstd[n] = r;
    }
    return PEFTC_OK;
}

/* With xhat = (x - mean) rstd and g = dout * w:
 *   dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)),  dw = sum_n dout * xhat,  db = sum_n dout */
peftc_status peftc_layernorm_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
                                      const float *w, const float *mean, const float *rstd, int64_t N, int64_t H)
{
    if (N < 0 || H <= 0)
        return PEFTC_ERR_SIZE;
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * H;
        const float *d = dout + n * H;
        const float m = mean[n], r = rstd[n];
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
        if (!dx)
            continue;
        const float mg = sum_g / (float)H, mgx = sum_gx / (float)H;
        float *o = dx + n * H;
        for (int64_t c = 0; c < H; c++) {
            const float xhat = (xr[c] - m) * r;
            o[c] += r * (d[c] * w[c] - mg - xhat * mgx);
        }
    }
    return PEFTC_OK;
}
