/* lifelong.c: the two kernels of Adapt-inf's data selection that are not plain GEMMs: the per-example
 * gradients of a LoRA adapter for a batch (the sample vectors are projected from them), and the
 * assignment and update steps of k-means (the pseudo-skill clusters). The random projection is one
 * GEMM the caller makes; k-means++ seeding, the selectors, the budgets and the de-duplication are
 * NumPy (peftc.lifelong). No training code here. */
#include <math.h>

#include "blas.h"
#include "peftc.h"

int64_t peftc_lora_per_example_grad_workspace_size(int64_t N, int64_t R)
{
    return N < 0 || R < 0 ? -1 : 2 * N * R;
}

peftc_status peftc_lora_per_example_grad(float *da, float *dbm, float *work, const float *x, const float *dy,
                                         const float *a, const float *bm, const int64_t *offsets, float scale,
                                         int64_t N, int64_t IC, int64_t OC, int64_t R, int64_t E)
{
    if (N < 0 || IC <= 0 || OC <= 0 || R <= 0 || E < 0 || !peftc_blas_sizes_ok(N, IC, OC) ||
        !peftc_blas_sizes_ok(N, R, R))
        return PEFTC_ERR_SIZE;
    if (!isfinite(scale))
        return PEFTC_ERR_ARG;
    /* the segments must tile a prefix of the rows in order: example e owns rows [offsets[e], offsets[e+1]) */
    if (offsets[0] < 0 || offsets[E] > N)
        return PEFTC_ERR_ARG;
    for (int64_t e = 0; e < E; e++)
        if (offsets[e + 1] < offsets[e])
            return PEFTC_ERR_ARG;
    /* a NaN or Inf in the output gradient would spread into every sample vector of its example */
    for (int64_t i = offsets[0] * OC; i < offsets[E] * OC; i++)
        if (!isfinite(dy[i]))
            return PEFTC_ERR_NONFINITE;
    if (N == 0 || E == 0)
        return PEFTC_OK;
    float *u = work;         /* (N,R) x a^T */
    float *g = work + N * R; /* (N,R) dy bm */
    /* u = x a^T: (M, N, K) = (N, R, IC), lda = IC, ldb = IC, ldc = R */
    peftc_status st = peftc_sgemm(0, 1, N, R, IC, 1.0f, x, IC, a, IC, 0.0f, u, R);
    if (st != PEFTC_OK)
        return st;
    /* g = dy bm: (M, N, K) = (N, R, OC), lda = OC, ldb = R, ldc = R */
    st = peftc_sgemm(0, 0, N, R, OC, 1.0f, dy, OC, bm, R, 0.0f, g, R);
    if (st != PEFTC_OK)
        return st;
    for (int64_t e = 0; e < E; e++) {
        const int64_t o = offsets[e], n = offsets[e + 1] - offsets[e];
        if (n == 0)
            continue;
        /* da[e] += s g_e^T x_e: (M, N, K) = (R, IC, n), lda = R, ldb = IC, ldc = IC */
        st = peftc_sgemm(1, 0, R, IC, n, scale, g + o * R, R, x + o * IC, IC, 1.0f, da + e * R * IC, IC);
        if (st != PEFTC_OK)
            return st;
        /* dbm[e] += s dy_e^T u_e: (M, N, K) = (OC, R, n), lda = OC, ldb = R, ldc = R */
        st = peftc_sgemm(1, 0, OC, R, n, scale, dy + o * OC, OC, u + o * R, R, 1.0f, dbm + e * OC * R, R);
        if (st != PEFTC_OK)
            return st;
    }
    return PEFTC_OK;
}

int64_t peftc_kmeans_assign_workspace_size(int64_t N, int64_t K)
{
    return N < 0 || K < 0 ? -1 : N * K + K;
}

peftc_status peftc_kmeans_assign(int64_t *labels, float *dist, float *work, const float *x, const float *c, int64_t N,
                                 int64_t D, int64_t K)
{
    if (N < 0 || D <= 0 || K <= 0 || !peftc_blas_sizes_ok(N, K, D))
        return PEFTC_ERR_SIZE;
    if (N == 0)
        return PEFTC_OK;
    float *dots = work;          /* (N,K) x c^T */
    float *cnorm = work + N * K; /* (K) ||c_k||^2 */
    for (int64_t k = 0; k < K; k++) {
        double s = 0.0;
        for (int64_t j = 0; j < D; j++)
            s += (double)c[k * D + j] * c[k * D + j];
        cnorm[k] = (float)s;
    }
    /* dots = x c^T: (M, N, K) = (N, K, D), lda = D, ldb = D, ldc = K */
    peftc_status st = peftc_sgemm(0, 1, N, K, D, 1.0f, x, D, c, D, 0.0f, dots, K);
    if (st != PEFTC_OK)
        return st;
    for (int64_t n = 0; n < N; n++) {
        double xs = 0.0;
        for (int64_t j = 0; j < D; j++)
            xs += (double)x[n * D + j] * x[n * D + j];
        if (!isfinite(xs))
            return PEFTC_ERR_NONFINITE;
        /* ||x - c_k||^2 = ||x||^2 - 2 x.c_k + ||c_k||^2; the first strictly smaller wins, so ties go to the
         * lowest index */
        int64_t best = 0;
        float best_d = cnorm[0] - 2.0f * dots[n * K];
        for (int64_t k = 1; k < K; k++) {
            const float d = cnorm[k] - 2.0f * dots[n * K + k];
            if (d < best_d) {
                best_d = d;
                best = k;
            }
        }
        labels[n] = best;
        const float d2 = (float)xs + best_d;
        dist[n] = d2 > 0.0f ? d2 : 0.0f; /* cancellation can round a tiny distance below zero */
    }
    return PEFTC_OK;
}

peftc_status peftc_kmeans_update(float *c, int64_t *counts, const float *x, const int64_t *labels, int64_t N, int64_t D,
                                 int64_t K)
{
    if (N < 0 || D <= 0 || K <= 0)
        return PEFTC_ERR_SIZE;
    for (int64_t n = 0; n < N; n++)
        if (labels[n] < 0 || labels[n] >= K)
            return PEFTC_ERR_LABEL;
    for (int64_t k = 0; k < K; k++)
        counts[k] = 0;
    for (int64_t n = 0; n < N; n++)
        counts[labels[n]]++;
    /* rows of clusters with members restart from zero; an empty cluster keeps its centroid */
    for (int64_t k = 0; k < K; k++)
        if (counts[k] > 0)
            for (int64_t j = 0; j < D; j++)
                c[k * D + j] = 0.0f;
    for (int64_t n = 0; n < N; n++) {
        float *ck = c + labels[n] * D;
        const float *xn = x + n * D;
        for (int64_t j = 0; j < D; j++)
            ck[j] += xn[j];
    }
    for (int64_t k = 0; k < K; k++) {
        if (counts[k] == 0)
            continue;
        const float inv = 1.0f / (float)counts[k];
        for (int64_t j = 0; j < D; j++)
            c[k * D + j] *= inv;
    }
    return PEFTC_OK;
}
