/* hydra.c: the Hydra layer, a parallel and a sequential low-rank branch on one frozen linear layer:
 *   y0 = x w^T + b,   y = y0 + sp * (x ap^T) bp^T + ss * (y0 as^T) bs^T
 * forward, backward, and merge / unmerge into the base weight. The sequential branch reads the
 * base output including the bias, as the reference code does; there is no dropout and no head bias.
 * Gradient math: the shared spec, adapters.md section 3.2; merge: section 3.4. Holds no LoRA code
 * (lora.c) and no LAPACK: the unmerge solves its small (RS,RS) system here. */
#include <math.h>
#include <string.h>

#include "blas.h"

peftc_status peftc_hydra_forward(float *y, float *y0, float *pp, float *q, const float *x, const float *w,
                                 const float *b, const float *ap, const float *bp, const float *as, const float *bs,
                                 float sp, float ss, int64_t N, int64_t IC, int64_t OC, int64_t RP, int64_t RS)
{
    if (!peftc_blas_sizes_ok(N, IC, OC) || !peftc_blas_sizes_ok(RP, RS, 0))
        return PEFTC_ERR_SIZE;
    peftc_status st = peftc_linear_forward(y0, x, w, b, N, IC, OC);
    if (st != PEFTC_OK)
        return st;
    /* pp (N,RP) = x (N,IC) ap^T: M=N, N=RP, K=IC, lda=IC, ldb=IC, ldc=RP */
    if ((st = peftc_sgemm(0, 1, N, RP, IC, 1.0f, x, IC, ap, IC, 0.0f, pp, RP)) != PEFTC_OK)
        return st;
    /* q (N,RS) = y0 (N,OC) as^T: M=N, N=RS, K=OC, lda=OC, ldb=OC, ldc=RS */
    if ((st = peftc_sgemm(0, 1, N, RS, OC, 1.0f, y0, OC, as, OC, 0.0f, q, RS)) != PEFTC_OK)
        return st;
    /* y0 must survive for the backward, so y starts as its copy and the branches accumulate into it */
    if (N * OC > 0)
        memcpy(y, y0, (size_t)(N * OC) * sizeof(float));
    /* y (N,OC) += sp * pp (N,RP) bp^T: M=N, N=OC, K=RP, lda=RP, ldb=RP, ldc=OC */
    if ((st = peftc_sgemm(0, 1, N, OC, RP, sp, pp, RP, bp, RP, 1.0f, y, OC)) != PEFTC_OK)
        return st;
    /* y (N,OC) += ss * q (N,RS) bs^T: M=N, N=OC, K=RS, lda=RS, ldb=RS, ldc=OC */
    return peftc_sgemm(0, 1, N, OC, RS, ss, q, RS, bs, RS, 1.0f, y, OC);
}

int64_t peftc_hydra_backward_workspace_size(int64_t N, int64_t OC, int64_t RP, int64_t RS)
{
    /* gp = dy bp (N,RP), gs = dy bs (N,RS), and the base-output gradient dy0 (N,OC) */
    return N * RP + N * RS + N * OC;
}

peftc_status peftc_hydra_backward(float *dx, float *dap, float *dbp, float *das, float *dbs, float *work,
                                  const float *dy, const float *x, const float *y0, const float *pp, const float *q,
                                  const float *w, const float *ap, const float *bp, const float *as, const float *bs,
                                  float sp, float ss, int64_t N, int64_t IC, int64_t OC, int64_t RP, int64_t RS)
{
    if (!peftc_blas_sizes_ok(N, IC, OC) || !peftc_blas_sizes_ok(RP, RS, 0))
        return PEFTC_ERR_SIZE;
    float *gp = work, *gs = work + N * RP, *dy0 = work + N * RP + N * RS;
    peftc_status st;
    /* gp (N,RP) = dy (N,OC) bp (OC,RP): M=N, N=RP, K=OC, lda=OC, ldb=RP, ldc=RP */
    if ((dap || dx) && (st = peftc_sgemm(0, 0, N, RP, OC, 1.0f, dy, OC, bp, RP, 0.0f, gp, RP)) != PEFTC_OK)
        return st;
    /* gs (N,RS) = dy (N,OC) bs (OC,RS): M=N, N=RS, K=OC, lda=OC, ldb=RS, ldc=RS */
    if ((das || dx) && (st = peftc_sgemm(0, 0, N, RS, OC, 1.0f, dy, OC, bs, RS, 0.0f, gs, RS)) != PEFTC_OK)
        return st;
    /* dbp (OC,RP) += sp * dy^T (OC,N) pp (N,RP): M=OC, N=RP, K=N, lda=OC, ldb=RP, ldc=RP */
    if (dbp && (st = peftc_sgemm(1, 0, OC, RP, N, sp, dy, OC, pp, RP, 1.0f, dbp, RP)) != PEFTC_OK)
        return st;
    /* dbs (OC,RS) += ss * dy^T (OC,N) q (N,RS): M=OC, N=RS, K=N, lda=OC, ldb=RS, ldc=RS */
    if (dbs && (st = peftc_sgemm(1, 0, OC, RS, N, ss, dy, OC, q, RS, 1.0f, dbs, RS)) != PEFTC_OK)
        return st;
    /* dap (RP,IC) += sp * gp^T (RP,N) x (N,IC): M=RP, N=IC, K=N, lda=RP, ldb=IC, ldc=IC */
    if (dap && (st = peftc_sgemm(1, 0, RP, IC, N, sp, gp, RP, x, IC, 1.0f, dap, IC)) != PEFTC_OK)
        return st;
    /* das (RS,OC) += ss * gs^T (RS,N) y0 (N,OC): M=RS, N=OC, K=N, lda=RS, ldb=OC, ldc=OC */
    if (das && (st = peftc_sgemm(1, 0, RS, OC, N, ss, gs, RS, y0, OC, 1.0f, das, OC)) != PEFTC_OK)
        return st;
    if (!dx)
        return PEFTC_OK;
    /* the gradient reaching the base output: dy0 = dy + ss * gs as */
    if (N * OC > 0)
        memcpy(dy0, dy, (size_t)(N * OC) * sizeof(float));
    /* dy0 (N,OC) += ss * gs (N,RS) as (RS,OC): M=N, N=OC, K=RS, lda=RS, ldb=OC, ldc=OC */
    if ((st = peftc_sgemm(0, 0, N, OC, RS, ss, gs, RS, as, OC, 1.0f, dy0, OC)) != PEFTC_OK)
        return st;
    /* dx (N,IC) += dy0 (N,OC) w (OC,IC) */
    if ((st = peftc_linear_backward(dx, NULL, NULL, dy0, NULL, w, N, IC, OC)) != PEFTC_OK)
        return st;
    /* dx (N,IC) += sp * gp (N,RP) ap (RP,IC): M=N, N=IC, K=RP, lda=RP, ldb=IC, ldc=IC */
    return peftc_sgemm(0, 0, N, IC, RP, sp, gp, RP, ap, IC, 1.0f, dx, IC);
}

int64_t peftc_hydra_merge_workspace_size(int64_t IC, int64_t RS)
{
    /* t = as w (RS,IC), tb = as b (RS), and the (RS,RS) system of the unmerge */
    return RS * IC + RS + RS * RS;
}

/* Solve k z = [t | tb] in place (z overwrites t and tb) by Gaussian elimination with partial
 * pivoting; k (R,R) is destroyed. tb may be NULL. */
static peftc_status solve_small(float *k, float *t, float *tb, int64_t R, int64_t C)
{
    for (int64_t c = 0; c < R; c++) {
        int64_t piv = c;
        for (int64_t r = c + 1; r < R; r++)
            if (fabsf(k[r * R + c]) > fabsf(k[piv * R + c]))
                piv = r;
        const float pivot = k[piv * R + c];
        if (!(fabsf(pivot) > 0.0f) || !isfinite(pivot))
            return PEFTC_ERR_ARG;
        if (piv != c) {
            for (int64_t j = 0; j < R; j++) {
                float s = k[c * R + j];
                k[c * R + j] = k[piv * R + j];
                k[piv * R + j] = s;
            }
            for (int64_t j = 0; j < C; j++) {
                float s = t[c * C + j];
                t[c * C + j] = t[piv * C + j];
                t[piv * C + j] = s;
            }
            if (tb) {
                float s = tb[c];
                tb[c] = tb[piv];
                tb[piv] = s;
            }
        }
        for (int64_t r = c + 1; r < R; r++) {
            const float f = k[r * R + c] / pivot;
            if (f == 0.0f)
                continue;
            for (int64_t j = c; j < R; j++)
                k[r * R + j] -= f * k[c * R + j];
            for (int64_t j = 0; j < C; j++)
                t[r * C + j] -= f * t[c * C + j];
            if (tb)
                tb[r] -= f * tb[c];
        }
    }
    for (int64_t c = R - 1; c >= 0; c--) {
        for (int64_t r = c + 1; r < R; r++) {
            const float f = k[c * R + r];
            for (int64_t j = 0; j < C; j++)
                t[c * C + j] -= f * t[r * C + j];
            if (tb)
                tb[c] -= f * tb[r];
        }
        const float inv = 1.0f / k[c * R + c];
        for (int64_t j = 0; j < C; j++)
            t[c * C + j] *= inv;
        if (tb)
            tb[c] *= inv;
    }
    return PEFTC_OK;
}

peftc_status peftc_hydra_merge(float *w, float *b, float *work, const float *ap, const float *bp, const float *as,
                               const float *bs, float sp, float ss, float sign, int64_t IC, int64_t OC, int64_t RP,
                               int64_t RS)
{
    if (!(sign == 1.0f || sign == -1.0f))
        return PEFTC_ERR_ARG;
    if (!peftc_blas_sizes_ok(IC, OC, 0) || !peftc_blas_sizes_ok(RP, RS, 0))
        return PEFTC_ERR_SIZE;
    float *t = work, *tb = work + RS * IC, *k = work + RS * IC + RS;
    peftc_status st;
    if (sign < 0.0f) {
        /* w (OC,IC) -= sp * bp (OC,RP) ap (RP,IC): M=OC, N=IC, K=RP, lda=RP, ldb=IC, ldc=IC */
        if ((st = peftc_sgemm(0, 0, OC, IC, RP, -sp, bp, RP, ap, IC, 1.0f, w, IC)) != PEFTC_OK)
            return st;
    }
    /* t (RS,IC) = as (RS,OC) w (OC,IC): M=RS, N=IC, K=OC, lda=OC, ldb=IC, ldc=IC */
    if ((st = peftc_sgemm(0, 0, RS, IC, OC, 1.0f, as, OC, w, IC, 0.0f, t, IC)) != PEFTC_OK)
        return st;
    /* tb (RS,1) = as (RS,OC) b (OC,1): M=RS, N=1, K=OC, lda=OC, ldb=1, ldc=1 */
    if (b && (st = peftc_sgemm(0, 0, RS, 1, OC, 1.0f, as, OC, b, 1, 0.0f, tb, 1)) != PEFTC_OK)
        return st;
    if (sign > 0.0f) {
        /* w (OC,IC) += sp * bp (OC,RP) ap (RP,IC): M=OC, N=IC, K=RP, lda=RP, ldb=IC, ldc=IC */
        if ((st = peftc_sgemm(0, 0, OC, IC, RP, sp, bp, RP, ap, IC, 1.0f, w, IC)) != PEFTC_OK)
            return st;
    } else {
        /* Woodbury: (I + ss bs as)^-1 = I - ss bs (I + ss as bs)^-1 as, so subtract ss bs k^-1 [t | tb].
         * k (RS,RS) = ss * as (RS,OC) bs (OC,RS) + I: M=RS, N=RS, K=OC, lda=OC, ldb=RS, ldc=RS */
        if ((st = peftc_sgemm(0, 0, RS, RS, OC, ss, as, OC, bs, RS, 0.0f, k, RS)) != PEFTC_OK)
            return st;
        for (int64_t i = 0; i < RS; i++)
            k[i * RS + i] += 1.0f;
        if ((st = solve_small(k, t, b ? tb : NULL, RS, IC)) != PEFTC_OK)
            return st;
    }
    /* w (OC,IC) += sign * ss * bs (OC,RS) t (RS,IC): M=OC, N=IC, K=RS, lda=RS, ldb=IC, ldc=IC */
    if ((st = peftc_sgemm(0, 0, OC, IC, RS, sign * ss, bs, RS, t, IC, 1.0f, w, IC)) != PEFTC_OK)
        return st;
    /* b (OC,1) += sign * ss * bs (OC,RS) tb (RS,1): M=OC, N=1, K=RS, lda=RS, ldb=1, ldc=1 */
    if (b && (st = peftc_sgemm(0, 0, OC, 1, RS, sign * ss, bs, RS, tb, 1, 1.0f, b, 1)) != PEFTC_OK)
        return st;
    return PEFTC_OK;
}
