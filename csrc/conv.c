/* conv.c: 2-D convolution (NCHW, dilation 1, one group) forward and backward through im2col and
 * one GEMM per image. The patch matrix of one image lives in caller scratch and is rebuilt in the
 * backward rather than kept, so the forward stores nothing beyond y. A 1x1, stride-1, unpadded
 * convolution is already a GEMM on the image and skips im2col; a stride-1 convolution whose output is
 * as wide as its input builds (and scatters) each patch row as one shifted copy of the image plane.
 * No pooling or norms here. */
#include <string.h>

#include "blas.h"

/* Output extent of a window sweep, floor mode; negative when the window does not fit. */
static int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p)
{
    return in + 2 * p < k ? -1 : (in + 2 * p - k) / s + 1;
}

static int conv_args_ok(int64_t N, int64_t IC, int64_t IH, int64_t IW, int64_t OC, int64_t KH, int64_t KW,
                        int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    return N >= 0 && IC >= 0 && IH >= 0 && IW >= 0 && OC >= 0 && KH > 0 && KW > 0 && SH > 0 && SW > 0 &&
           PH >= 0 && PW >= 0 && conv_out_size(IH, KH, SH, PH) > 0 && conv_out_size(IW, KW, SW, PW) > 0;
}

static int is_pointwise(int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    return KH == 1 && KW == 1 && SH == 1 && SW == 1 && PH == 0 && PW == 0;
}

int64_t peftc_conv2d_workspace_size(int64_t IC, int64_t KH, int64_t KW, int64_t OH, int64_t OW)
{
    return IC * KH * KW * OH * OW;
}

/* The output columns ow whose input column ow*SW - PW + kw lies inside [0, IW): [*lo, *hi). */
static void valid_columns(int64_t *lo, int64_t *hi, int64_t IW, int64_t kw, int64_t SW, int64_t PW, int64_t OW)
{
    const int64_t shift = PW - kw; /* iw = ow*SW - shift */
    int64_t a = shift <= 0 ? 0 : (shift + SW - 1) / SW;
    int64_t b = IW - 1 + shift < 0 ? 0 : (IW - 1 + shift) / SW + 1;
    a = a > OW ? OW : a;
    b = b > OW ? OW : b;
    *lo = a;
    *hi = b < a ? a : b;
}

/* Stride 1 with OW == IW ("same" width): row (c, kh, kw) of col is the image plane of channel c
 * shifted by the constant (kh - PH) * IW + (kw - PW) in flat (h, w) order, except the entries whose
 * input column falls outside [0, IW) (they wrap into the neighbouring image row) and the output rows
 * whose input row falls outside [0, IH). So each row is one long copy (or add) plus the zeroing of
 * at most (KW - 1) entries per output row. The copied span starts at the first valid entry of the
 * first valid row and ends at the last valid entry of the last one, so it never reads outside the
 * plane. [*s_lo, *s_hi) is that span in col; *shift is the flat input offset. */
static int flat_row_span(int64_t *s_lo, int64_t *s_hi, int64_t *shift, int64_t *oh_lo, int64_t *oh_hi, int64_t lo,
                         int64_t hi, int64_t IH, int64_t IW, int64_t kh, int64_t kw, int64_t PH, int64_t PW, int64_t OH,
                         int64_t OW)
{
    int64_t a = PH - kh, b = IH + PH - kh;
    a = a < 0 ? 0 : a;
    b = b > OH ? OH : b;
    *oh_lo = a;
    *oh_hi = b < a ? a : b;
    *shift = (kh - PH) * IW + (kw - PW);
    if (*oh_hi == *oh_lo || hi == lo)
        return 0;
    *s_lo = *oh_lo * OW + lo;
    *s_hi = (*oh_hi - 1) * OW + hi;
    return 1;
}

static void im2col_flat(float *col, const float *x, int64_t IC, int64_t IH, int64_t IW, int64_t KH, int64_t KW,
                        int64_t PH, int64_t PW, int64_t OH, int64_t OW)
{
    const int64_t S = OH * OW;
    for (int64_t c = 0; c < IC; c++)
        for (int64_t kh = 0; kh < KH; kh++)
            for (int64_t kw = 0; kw < KW; kw++) {
                float *row = col + ((c * KH + kh) * KW + kw) * S;
                const float *plane = x + c * IH * IW;
                int64_t lo, hi, s_lo, s_hi, shift, oh_lo, oh_hi;
                valid_columns(&lo, &hi, IW, kw, 1, PW, OW);
                if (!flat_row_span(&s_lo, &s_hi, &shift, &oh_lo, &oh_hi, lo, hi, IH, IW, kh, kw, PH, PW, OH, OW)) {
                    memset(row, 0, (size_t)S * sizeof(float));
                    continue;
                }
                memset(row, 0, (size_t)s_lo * sizeof(float));
                memcpy(row + s_lo, plane + s_lo + shift, (size_t)(s_hi - s_lo) * sizeof(float));
                memset(row + s_hi, 0, (size_t)(S - s_hi) * sizeof(float));
                for (int64_t oh = oh_lo; oh < oh_hi; oh++) {
                    for (int64_t ow = 0; ow < lo; ow++)
                        row[oh * OW + ow] = 0.0f;
                    for (int64_t ow = hi; ow < OW; ow++)
                        row[oh * OW + ow] = 0.0f;
                }
            }
}

/* The adjoint of im2col_flat; the wrapped entries of col (scratch) are zeroed first, then each row
 * is one long add. */
static void col2im_flat_add(float *dx, float *col, int64_t IC, int64_t IH, int64_t IW, int64_t KH, int64_t KW,
                            int64_t PH, int64_t PW, int64_t OH, int64_t OW)
{
    const int64_t S = OH * OW;
    for (int64_t c = 0; c < IC; c++)
        for (int64_t kh = 0; kh < KH; kh++)
            for (int64_t kw = 0; kw < KW; kw++) {
                float *row = col + ((c * KH + kh) * KW + kw) * S;
                float *plane = dx + c * IH * IW;
                int64_t lo, hi, s_lo, s_hi, shift, oh_lo, oh_hi;
                valid_columns(&lo, &hi, IW, kw, 1, PW, OW);
                if (!flat_row_span(&s_lo, &s_hi, &shift, &oh_lo, &oh_hi, lo, hi, IH, IW, kh, kw, PH, PW, OH, OW))
                    continue;
                for (int64_t oh = oh_lo; oh < oh_hi; oh++) {
                    for (int64_t ow = 0; ow < lo; ow++)
                        row[oh * OW + ow] = 0.0f;
                    for (int64_t ow = hi; ow < OW; ow++)
                        row[oh * OW + ow] = 0.0f;
                }
                float *out = plane + shift;
                for (int64_t s = s_lo; s < s_hi; s++)
                    out[s] += row[s];
            }
}

/* col (IC*KH*KW, OH*OW): row (c, kh, kw), column (oh, ow) holds x[c, oh*SH - PH + kh, ow*SW - PW + kw],
 * zero outside the image. The in-image column range is found once per kw, so the copy loops carry no
 * bounds tests (a plain copy at stride 1). */
static void im2col(float *col, const float *x, int64_t IC, int64_t IH, int64_t IW, int64_t KH, int64_t KW,
                   int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t OH, int64_t OW)
{
    if (SH == 1 && SW == 1 && OW == IW) {
        im2col_flat(col, x, IC, IH, IW, KH, KW, PH, PW, OH, OW);
        return;
    }
    for (int64_t c = 0; c < IC; c++)
        for (int64_t kh = 0; kh < KH; kh++)
            for (int64_t kw = 0; kw < KW; kw++) {
                float *row = col + ((c * KH + kh) * KW + kw) * OH * OW;
                int64_t lo, hi;
                valid_columns(&lo, &hi, IW, kw, SW, PW, OW);
                for (int64_t oh = 0; oh < OH; oh++) {
                    const int64_t ih = oh * SH - PH + kh;
                    float *out = row + oh * OW;
                    if (ih < 0 || ih >= IH) {
                        for (int64_t ow = 0; ow < OW; ow++)
                            out[ow] = 0.0f;
                        continue;
                    }
                    const float *in = x + (c * IH + ih) * IW;
                    const int64_t off = kw - PW;
                    for (int64_t ow = 0; ow < lo; ow++)
                        out[ow] = 0.0f;
                    if (SW == 1)
                        memcpy(out + lo, in + lo + off, (size_t)(hi - lo) * sizeof(float));
                    else
                        for (int64_t ow = lo; ow < hi; ow++)
                            out[ow] = in[ow * SW + off];
                    for (int64_t ow = hi; ow < OW; ow++)
                        out[ow] = 0.0f;
                }
            }
}

/* The adjoint of im2col: dx[c, ih, iw] += every column entry that was read from it (col is scratch and
 * may be overwritten). */
static void col2im_add(float *dx, float *col, int64_t IC, int64_t IH, int64_t IW, int64_t KH, int64_t KW,
                       int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t OH, int64_t OW)
{
    if (SH == 1 && SW == 1 && OW == IW) {
        col2im_flat_add(dx, col, IC, IH, IW, KH, KW, PH, PW, OH, OW);
        return;
    }
    for (int64_t c = 0; c < IC; c++)
        for (int64_t kh = 0; kh < KH; kh++)
            for (int64_t kw = 0; kw < KW; kw++) {
                const float *row = col + ((c * KH + kh) * KW + kw) * OH * OW;
                int64_t lo, hi;
                valid_columns(&lo, &hi, IW, kw, SW, PW, OW);
                for (int64_t oh = 0; oh < OH; oh++) {
                    const int64_t ih = oh * SH - PH + kh;
                    if (ih < 0 || ih >= IH)
                        continue;
                    const float *in = row + oh * OW;
                    float *out = dx + (c * IH + ih) * IW;
                    const int64_t off = kw - PW;
                    if (SW == 1)
                        for (int64_t ow = lo; ow < hi; ow++)
                            out[ow + off] += in[ow];
                    else
                        for (int64_t ow = lo; ow < hi; ow++)
                            out[ow * SW + off] += in[ow];
                }
            }
}

peftc_status peftc_conv2d_forward(float *y, float *work, const float *x, const float *w, const float *b, int64_t N,
                                  int64_t IC, int64_t IH, int64_t IW, int64_t OC, int64_t KH, int64_t KW,
                                  int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    if (!conv_args_ok(N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW))
        return PEFTC_ERR_SIZE;
    const int64_t OH = conv_out_size(IH, KH, SH, PH), OW = conv_out_size(IW, KW, SW, PW);
    const int64_t K = IC * KH * KW, S = OH * OW;
    const int pointwise = is_pointwise(KH, KW, SH, SW, PH, PW);
    for (int64_t n = 0; n < N; n++) {
        const float *xn = x + n * IC * IH * IW;
        float *yn = y + n * OC * S;
        const float *col = xn;
        if (!pointwise) {
            im2col(work, xn, IC, IH, IW, KH, KW, SH, SW, PH, PW, OH, OW);
            col = work;
        }
        /* yn (OC,S) = w (OC,K) col (K,S): M=OC, N=S, K=IC*KH*KW, lda=K, ldb=S, ldc=S */
        peftc_status st = peftc_sgemm(0, 0, OC, S, K, 1.0f, w, K, col, S, 0.0f, yn, S);
        if (st != PEFTC_OK)
            return st;
        if (b)
            for (int64_t o = 0; o < OC; o++)
                for (int64_t s = 0; s < S; s++)
                    yn[o * S + s] += b[o];
    }
    return PEFTC_OK;
}

peftc_status peftc_conv2d_backward(float *dx, float *dw, float *db, float *work, const float *dy, const float *x,
                                   const float *w, int64_t N, int64_t IC, int64_t IH, int64_t IW, int64_t OC,
                                   int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    if (!conv_args_ok(N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW))
        return PEFTC_ERR_SIZE;
    if (dw && !x)
        return PEFTC_ERR_ARG;
    const int64_t OH = conv_out_size(IH, KH, SH, PH), OW = conv_out_size(IW, KW, SW, PW);
    const int64_t K = IC * KH * KW, S = OH * OW;
    const int pointwise = is_pointwise(KH, KW, SH, SW, PH, PW);
    peftc_status st = PEFTC_OK;
    for (int64_t n = 0; n < N; n++) {
        const float *dyn = dy + n * OC * S;
        if (dw) {
            const float *xn = x + n * IC * IH * IW;
            const float *col = xn;
            if (!pointwise) {
                im2col(work, xn, IC, IH, IW, KH, KW, SH, SW, PH, PW, OH, OW);
                col = work;
            }
            /* dw (OC,K) += dyn (OC,S) col^T (S,K): M=OC, N=K, K=S, lda=S, ldb=S, ldc=K */
            st = peftc_sgemm(0, 1, OC, K, S, 1.0f, dyn, S, col, S, 1.0f, dw, K);
            if (st != PEFTC_OK)
                return st;
        }
        if (dx) {
            float *dxn = dx + n * IC * IH * IW;
            if (pointwise) {
                /* dxn (IC,S) += w^T (IC,OC) dyn (OC,S): M=IC, N=S, K=OC, lda=IC, ldb=S, ldc=S */
                st = peftc_sgemm(1, 0, IC, S, OC, 1.0f, w, IC, dyn, S, 1.0f, dxn, S);
            } else {
                /* dcol (K,S) = w^T (K,OC) dyn (OC,S): M=K, N=S, K=OC, lda=K, ldb=S, ldc=S */
                st = peftc_sgemm(1, 0, K, S, OC, 1.0f, w, K, dyn, S, 0.0f, work, S);
                if (st == PEFTC_OK)
                    col2im_add(dxn, work, IC, IH, IW, KH, KW, SH, SW, PH, PW, OH, OW);
            }
            if (st != PEFTC_OK)
                return st;
        }
        if (db)
            for (int64_t o = 0; o < OC; o++) {
                double acc = 0.0;
                for (int64_t s = 0; s < S; s++)
                    acc += dyn[o * S + s];
                db[o] += (float)acc;
            }
    }
    return PEFTC_OK;
}
