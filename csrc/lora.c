/* lora.c: the LoRA linear layer, forward, backward and merge.
 *   y = x w^T + b + s * (xd a^T bm^T + bb),   xd = dropout_p(x)
 * The frozen base product and the adapter share one output buffer: the adapter GEMM accumulates
 * into y with beta = 1, so there is no temporary of size (N,OC). The dropout mask is regenerated
 * from (seed, offset) in the backward. Gradient math: ../shared spec, adapters.md section 1.2.
 * w may be NULL: the base layer's products are then the caller's (a bf16 frozen base, bf16_gemm.h, adds
 * x w^T into y after the forward and dy w into dx after the backward). */
#include "bias_rows.h"
#include "blas.h"

peftc_status peftc_lora_forward(float *y, float *xd, float *u, const float *x, const float *w, const float *b,
                                const float *a, const float *bm, const float *bb, float scale, float p, uint64_t seed,
                                uint64_t offset, int64_t N, int64_t IC, int64_t OC, int64_t R)
{
    if (!(p >= 0.0f && p < 1.0f) || (p > 0.0f) != (xd != NULL))
        return PEFTC_ERR_ARG;
    if (!peftc_blas_sizes_ok(N, IC, OC) || R < 0)
        return PEFTC_ERR_SIZE;
    /* Both biases go into y before the GEMMs, which then accumulate: one pass over (N,OC) for the
     * biases instead of BLAS zeroing y and one more pass per bias afterwards. */
    const int has_bias = b != NULL || bb != NULL;
    peftc_status st = has_bias ? peftc_bias_rows_fill(y, b, bb, scale, N, OC) : PEFTC_OK;
    if (st != PEFTC_OK)
        return st;
    int filled = has_bias; /* y holds values the next GEMM adds to */
    if (w) {
        /* y (N,OC) (+)= x (N,IC) w^T: M=N, N=OC, K=IC, lda=IC, ldb=IC, ldc=OC */
        st = peftc_sgemm(0, 1, N, OC, IC, 1.0f, x, IC, w, IC, filled ? 1.0f : 0.0f, y, OC);
        if (st != PEFTC_OK)
            return st;
        filled = 1;
    }
    const float *xin = x;
    if (p > 0.0f) {
        st = peftc_dropout_forward(xd, x, p, seed, offset, N * IC);
        if (st != PEFTC_OK)
            return st;
        xin = xd;
    }
    /* u (N,R) = xin (N,IC) a^T: M=N, N=R, K=IC, lda=IC, ldb=IC, ldc=R */
    st = peftc_sgemm(0, 1, N, R, IC, 1.0f, xin, IC, a, IC, 0.0f, u, R);
    if (st != PEFTC_OK)
        return st;
    /* y (N,OC) (+)= s * u (N,R) bm^T: M=N, N=OC, K=R, lda=R, ldb=R, ldc=OC */
    return peftc_sgemm(0, 1, N, OC, R, scale, u, R, bm, R, filled ? 1.0f : 0.0f, y, OC);
}

int64_t peftc_lora_backward_workspace_size(int64_t N, int64_t IC, int64_t R, float p)
{
    /* gu = dy bm (N,R), plus the pre-mask adapter input gradient (N,IC) when dropout is on */
    return N * R + (p > 0.0f ? N * IC : 0);
}

peftc_status peftc_lora_backward(float *dx, float *da, float *dbm, float *dbb, float *work, const float *dy,
                                 const float *xin, const float *u, const float *w, const float *a, const float *bm,
                                 float scale, float p, uint64_t seed, uint64_t offset, int64_t N, int64_t IC,
                                 int64_t OC, int64_t R)
{
    if (!(p >= 0.0f && p < 1.0f))
        return PEFTC_ERR_ARG;
    float *gu = work;
    peftc_status st = PEFTC_OK;
    if (da || dx) {
        /* gu (N,R) = dy (N,OC) bm (OC,R): M=N, N=R, K=OC, lda=OC, ldb=R, ldc=R */
        st = peftc_sgemm(0, 0, N, R, OC, 1.0f, dy, OC, bm, R, 0.0f, gu, R);
        if (st != PEFTC_OK)
            return st;
    }
    if (dbm) {
        /* dbm (OC,R) += s * dy^T (OC,N) u (N,R): M=OC, N=R, K=N, lda=OC, ldb=R, ldc=R */
        st = peftc_sgemm(1, 0, OC, R, N, scale, dy, OC, u, R, 1.0f, dbm, R);
        if (st != PEFTC_OK)
            return st;
    }
    if (dbb)
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < OC; o++)
                dbb[o] += scale * dy[n * OC + o];
    if (da) {
        /* da (R,IC) += s * gu^T (R,N) xin (N,IC): M=R, N=IC, K=N, lda=R, ldb=IC, ldc=IC */
        st = peftc_sgemm(1, 0, R, IC, N, scale, gu, R, xin, IC, 1.0f, da, IC);
        if (st != PEFTC_OK)
            return st;
    }
    if (!dx)
        return PEFTC_OK;
    /* base path: dx (N,IC) += dy (N,OC) w (OC,IC), unless the caller does it (w NULL) */
    st = w ? peftc_linear_backward(dx, NULL, NULL, dy, NULL, w, N, IC, OC) : PEFTC_OK;
    if (st != PEFTC_OK)
        return st;
    if (p == 0.0f) {
        /* dx (N,IC) += s * gu (N,R) a (R,IC): M=N, N=IC, K=R, lda=R, ldb=IC, ldc=IC */
        return peftc_sgemm(0, 0, N, IC, R, scale, gu, R, a, IC, 1.0f, dx, IC);
    }
    float *gxd = work + N * R;
    /* gxd (N,IC) = s * gu (N,R) a (R,IC), then through the regenerated dropout mask into dx */
    st = peftc_sgemm(0, 0, N, IC, R, scale, gu, R, a, IC, 0.0f, gxd, IC);
    if (st != PEFTC_OK)
        return st;
    return peftc_dropout_backward(dx, gxd, p, seed, offset, N * IC);
}

peftc_status peftc_lora_merge(float *w, float *b, const float *a, const float *bm, const float *bb, float scale,
                              float sign, int64_t IC, int64_t OC, int64_t R)
{
    if ((b == NULL) != (bb == NULL) || !(sign == 1.0f || sign == -1.0f))
        return PEFTC_ERR_ARG;
    /* w (OC,IC) += sign * s * bm (OC,R) a (R,IC): M=OC, N=IC, K=R, lda=R, ldb=IC, ldc=IC */
    peftc_status st = peftc_sgemm(0, 0, OC, IC, R, sign * scale, bm, R, a, IC, 1.0f, w, IC);
    if (st != PEFTC_OK)
        return st;
    if (b)
        for (int64_t o = 0; o < OC; o++)
            b[o] += sign * scale * bb[o];
    return PEFTC_OK;
}
