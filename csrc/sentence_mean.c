/* sentence_mean.c: mean pooling over the unmasked tokens of each sequence, and per-row L2
 * normalisation, each with its backward (the sentence-embedding head). No BLAS, and no 2-D pooling of
 * images (pool.c). */
#include <math.h>

#include "peftc.h"

static float kept_count(const int64_t *mask, int64_t b, int64_t T)
{
    if (!mask)
        return (float)T;
    int64_t c = 0;
    for (int64_t t = 0; t < T; t++)
        c += mask[b * T + t] != 0;
    return (float)c;
}

peftc_status peftc_mean_pool_forward(float *out, const float *x, const int64_t *mask, int64_t B, int64_t T, int64_t H)
{
    if (B < 0 || T < 0 || H < 0)
        return PEFTC_ERR_SIZE;
    for (int64_t b = 0; b < B; b++) {
        float *o = out + b * H;
        for (int64_t c = 0; c < H; c++)
            o[c] = 0.0f;
        const float count = kept_count(mask, b, T);
        if (count == 0.0f)
            continue;
        for (int64_t t = 0; t < T; t++) {
            if (mask && mask[b * T + t] == 0)
                continue;
            const float *xr = x + (b * T + t) * H;
            for (int64_t c = 0; c < H; c++)
                o[c] += xr[c];
        }
        const float inv = 1.0f / count;
        for (int64_t c = 0; c < H; c++)
            o[c] *= inv;
    }
    return PEFTC_OK;
}

peftc_status peftc_mean_pool_backward(float *dx, const float *dout, const int64_t *mask, int64_t B, int64_t T,
                                      int64_t H)
{
    if (B < 0 || T < 0 || H < 0)
        return PEFTC_ERR_SIZE;
    for (int64_t b = 0; b < B; b++) {
        const float count = kept_count(mask, b, T);
        if (count == 0.0f)
            continue;
        const float inv = 1.0f / count;
        const float *d = dout + b * H;
        for (int64_t t = 0; t < T; t++) {
            if (mask && mask[b * T + t] == 0)
                continue;
            float *g = dx + (b * T + t) * H;
            for (int64_t c = 0; c < H; c++)
                g[c] += d[c] * inv;
        }
    }
    return PEFTC_OK;
}

peftc_status peftc_l2_normalize_forward(float *out, float *norm, const float *x, float eps, int64_t N, int64_t H)
{
    if (N < 0 || H < 0)
        return PEFTC_ERR_SIZE;
    if (!(eps > 0.0f))
        return PEFTC_ERR_ARG;
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * H;
        double ss = 0.0;
        for (int64_t c = 0; c < H; c++)
            ss += (double)xr[c] * xr[c];
        const float nr = (float)sqrt(ss);
        const float inv = 1.0f / (nr > eps ? nr : eps);
        float *o = out + n * H;
        for (int64_t c = 0; c < H; c++)
            o[c] = xr[c] * inv;
        norm[n] = nr;
    }
    return PEFTC_OK;
}

/* y = x / ||x||: dx = (dout - y (y . dout)) / ||x||; below eps the divisor is the constant eps */
peftc_status peftc_l2_normalize_backward(float *dx, const float *dout, const float *out, const float *norm, float eps,
                                         int64_t N, int64_t H)
{
    if (N < 0 || H < 0)
        return PEFTC_ERR_SIZE;
    if (!(eps > 0.0f))
        return PEFTC_ERR_ARG;
    for (int64_t n = 0; n < N; n++) {
        const float *y = out + n * H;
        const float *d = dout + n * H;
        float *g = dx + n * H;
        if (norm[n] > eps) {
            float dot = 0.0f;
            for (int64_t c = 0; c < H; c++)
                dot += y[c] * d[c];
            const float inv = 1.0f / norm[n];
            for (int64_t c = 0; c < H; c++)
                g[c] += (d[c] - y[c] * dot) * inv;
        } else {
            const float inv = 1.0f / eps;
            for (int64_t c = 0; c < H; c++)
                g[c] += d[c] * inv;
        }
    }
    return PEFTC_OK;
}
