/* linear.c: y = x w^T + b, forward and backward. A frozen layer passes NULL for dw and db and
 * still returns dx; a trainable head passes them. No LoRA here (lora.c). */
#include "bias_rows.h"
#include "blas.h"

peftc_status peftc_linear_forward(float *y, const float *x, const float *w, const float *b, int64_t N, int64_t IC,
                                  int64_t OC)
{
    /* With a bias, y starts as the bias rows and the GEMM accumulates (beta = 1): one pass over y
     * instead of BLAS zeroing it for beta = 0 and a second pass adding the bias afterwards. */
    if (!peftc_blas_sizes_ok(N, IC, OC))
        return PEFTC_ERR_SIZE;
    if (b) {
        peftc_status st = peftc_bias_rows_fill(y, b, NULL, 1.0f, N, OC);
        if (st != PEFTC_OK)
            return st;
    }
    /* y (N,OC) (+)= x (N,IC) w^T: M=N, N=OC, K=IC, lda=IC, ldb=IC, ldc=OC */
    return peftc_sgemm(0, 1, N, OC, IC, 1.0f, x, IC, w, IC, b ? 1.0f : 0.0f, y, OC);
}

peftc_status peftc_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                                   int64_t N, int64_t IC, int64_t OC)
{
    peftc_status st = PEFTC_OK;
    if (dx) {
        /* dx (N,IC) += dy (N,OC) w (OC,IC): M=N, N=IC, K=OC, lda=OC, ldb=IC, ldc=IC */
        st = peftc_sgemm(0, 0, N, IC, OC, 1.0f, dy, OC, w, IC, 1.0f, dx, IC);
        if (st != PEFTC_OK)
            return st;
    }
    if (dw) {
        if (!x)
            return PEFTC_ERR_ARG;
        /* dw (OC,IC) += dy^T (OC,N) x (N,IC): M=OC, N=IC, K=N, lda=OC, ldb=IC, ldc=IC */
        st = peftc_sgemm(1, 0, OC, IC, N, 1.0f, dy, OC, x, IC, 1.0f, dw, IC);
        if (st != PEFTC_OK)
            return st;
    }
    if (db)
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < OC; o++)
                db[o] += dy[n * OC + o];
    return PEFTC_OK;
}
