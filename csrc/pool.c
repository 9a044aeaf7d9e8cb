/* pool.c: 2-D max pooling (with the argmax cache), average pooling and global average pooling,
 * forward and backward, NCHW. Floor mode, dilation 1. No convolution here (conv.c), and no mean over
 * a sequence's tokens (sentence_mean.c). */
#include <math.h>

#include "peftc.h"

static int64_t pool_out_size(int64_t in, int64_t k, int64_t s, int64_t p)
{
    return in + 2 * p < k ? -1 : (in + 2 * p - k) / s + 1;
}

/* torch's rules: positive window and stride, padding at most half the window, a non-empty output. */
static int pool_args_ok(int64_t N, int64_t CH, int64_t IH, int64_t IW, int64_t KH, int64_t KW, int64_t SH, int64_t SW,
                        int64_t PH, int64_t PW)
{
    return N >= 0 && CH >= 0 && IH >= 0 && IW >= 0 && KH > 0 && KW > 0 && SH > 0 && SW > 0 && PH >= 0 && PW >= 0 &&
           2 * PH <= KH && 2 * PW <= KW && pool_out_size(IH, KH, SH, PH) > 0 && pool_out_size(IW, KW, SW, PW) > 0;
}

peftc_status peftc_maxpool2d_forward(float *y, int64_t *argmax, const float *x, int64_t N, int64_t CH, int64_t IH,
                                     int64_t IW, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    if (!pool_args_ok(N, CH, IH, IW, KH, KW, SH, SW, PH, PW))
        return PEFTC_ERR_SIZE;
    const int64_t OH = pool_out_size(IH, KH, SH, PH), OW = pool_out_size(IW, KW, SW, PW);
    for (int64_t p = 0; p < N * CH; p++) {
        const float *xp = x + p * IH * IW;
        float *yp = y + p * OH * OW;
        int64_t *ap = argmax + p * OH * OW;
        for (int64_t oh = 0; oh < OH; oh++) {
            const int64_t h0 = oh * SH - PH;
            const int64_t h_lo = h0 < 0 ? 0 : h0, h_hi = h0 + KH > IH ? IH : h0 + KH;
            for (int64_t ow = 0; ow < OW; ow++) {
                const int64_t w0 = ow * SW - PW;
                const int64_t w_lo = w0 < 0 ? 0 : w0, w_hi = w0 + KW > IW ? IW : w0 + KW;
                /* padding <= half the window keeps at least one real input in every window */
                int64_t best_i = h_lo * IW + w_lo;
                float best = xp[best_i];
                for (int64_t ih = h_lo; ih < h_hi; ih++)
                    for (int64_t iw = w_lo; iw < w_hi; iw++) {
                        const float v = xp[ih * IW + iw];
                        if (v > best || (isnan(v) && !isnan(best))) {
                            best = v;
                            best_i = ih * IW + iw;
                        }
                    }
                yp[oh * OW + ow] = best;
                ap[oh * OW + ow] = best_i;
            }
        }
    }
    return PEFTC_OK;
}

peftc_status peftc_maxpool2d_backward(float *dx, const float *dy, const int64_t *argmax, int64_t N, int64_t CH,
                                      int64_t IH, int64_t IW, int64_t OH, int64_t OW)
{
    if (N < 0 || CH < 0 || IH < 0 || IW < 0 || OH < 0 || OW < 0)
        return PEFTC_ERR_SIZE;
    /* validate every index before writing anything */
    for (int64_t i = 0; i < N * CH * OH * OW; i++)
        if (argmax[i] < 0 || argmax[i] >= IH * IW)
            return PEFTC_ERR_ARG;
    for (int64_t p = 0; p < N * CH; p++) {
        float *dxp = dx + p * IH * IW;
        const float *dyp = dy + p * OH * OW;
        const int64_t *ap = argmax + p * OH * OW;
        for (int64_t o = 0; o < OH * OW; o++)
            dxp[ap[o]] += dyp[o];
    }
    return PEFTC_OK;
}

peftc_status peftc_avgpool2d_forward(float *y, const float *x, int64_t N, int64_t CH, int64_t IH, int64_t IW,
                                     int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    if (!pool_args_ok(N, CH, IH, IW, KH, KW, SH, SW, PH, PW))
        return PEFTC_ERR_SIZE;
    const int64_t OH = pool_out_size(IH, KH, SH, PH), OW = pool_out_size(IW, KW, SW, PW);
    const float inv = 1.0f / (float)(KH * KW);
    for (int64_t p = 0; p < N * CH; p++) {
        const float *xp = x + p * IH * IW;
        float *yp = y + p * OH * OW;
        for (int64_t oh = 0; oh < OH; oh++) {
            const int64_t h0 = oh * SH - PH;
            const int64_t h_lo = h0 < 0 ? 0 : h0, h_hi = h0 + KH > IH ? IH : h0 + KH;
            for (int64_t ow = 0; ow < OW; ow++) {
                const int64_t w0 = ow * SW - PW;
                const int64_t w_lo = w0 < 0 ? 0 : w0, w_hi = w0 + KW > IW ? IW : w0 + KW;
                float acc = 0.0f;
                for (int64_t ih = h_lo; ih < h_hi; ih++)
                    for (int64_t iw = w_lo; iw < w_hi; iw++)
                        acc += xp[ih * IW + iw];
                yp[oh * OW + ow] = acc * inv;
            }
        }
    }
    return PEFTC_OK;
}

peftc_status peftc_avgpool2d_backward(float *dx, const float *dy, int64_t N, int64_t CH, int64_t IH, int64_t IW,
                                      int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    if (!pool_args_ok(N, CH, IH, IW, KH, KW, SH, SW, PH, PW))
        return PEFTC_ERR_SIZE;
    const int64_t OH = pool_out_size(IH, KH, SH, PH), OW = pool_out_size(IW, KW, SW, PW);
    const float inv = 1.0f / (float)(KH * KW);
    for (int64_t p = 0; p < N * CH; p++) {
        float *dxp = dx + p * IH * IW;
        const float *dyp = dy + p * OH * OW;
        for (int64_t oh = 0; oh < OH; oh++) {
            const int64_t h0 = oh * SH - PH;
            const int64_t h_lo = h0 < 0 ? 0 : h0, h_hi = h0 + KH > IH ? IH : h0 + KH;
            for (int64_t ow = 0; ow < OW; ow++) {
                const int64_t w0 = ow * SW - PW;
                const int64_t w_lo = w0 < 0 ? 0 : w0, w_hi = w0 + KW > IW ? IW : w0 + KW;
                const float g = dyp[oh * OW + ow] * inv;
                for (int64_t ih = h_lo; ih < h_hi; ih++)
                    for (int64_t iw = w_lo; iw < w_hi; iw++)
                        dxp[ih * IW + iw] += g;
            }
        }
    }
    return PEFTC_OK;
}

#define GAP_PLANES 8

peftc_status peftc_global_avgpool2d_forward(float *y, const float *x, int64_t N, int64_t CH, int64_t IH, int64_t IW)
{
    if (N < 0 || CH < 0 || IH <= 0 || IW <= 0)
        return PEFTC_ERR_SIZE;
    const int64_t S = IH * IW, P = N * CH;
    /* Each plane is summed in double in index order; GAP_PLANES planes side by side, so that the
     * additions of different planes overlap instead of waiting on one chain (same bits as plane by plane). */
    int64_t p = 0;
    for (; p + GAP_PLANES <= P; p += GAP_PLANES) {
        double acc[GAP_PLANES] = {0.0};
        for (int64_t s = 0; s < S; s++)
            for (int j = 0; j < GAP_PLANES; j++)
                acc[j] += x[(p + j) * S + s];
        for (int j = 0; j < GAP_PLANES; j++)
            y[p + j] = (float)(acc[j] / (double)S);
    }
    for (; p < P; p++) {
        double acc = 0.0;
        for (int64_t s = 0; s < S; s++)
            acc += x[p * S + s];
        y[p] = (float)(acc / (double)S);
    }
    return PEFTC_OK;
}

peftc_status peftc_global_avgpool2d_backward(float *dx, const float *dy, int64_t N, int64_t CH, int64_t IH, int64_t IW)
{
    if (N < 0 || CH < 0 || IH <= 0 || IW <= 0)
        return PEFTC_ERR_SIZE;
    const int64_t S = IH * IW;
    for (int64_t p = 0; p < N * CH; p++) {
        const float g = dy[p] / (float)S;
        for (int64_t s = 0; s < S; s++)
            dx[p * S + s] += g;
    }
    return PEFTC_OK;
}
