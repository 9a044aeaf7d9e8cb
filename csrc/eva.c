/* eva.c: the incremental PCA step behind EVA's data-driven LoRA initialisation.
 *
 * One call folds a minibatch of layer-input rows into a layer's running PCA state, the way
 * scikit-learn's IncrementalPCA.partial_fit does (PEFT's peft/utils/incremental_pca.py is a torch
 * port of it): the per-feature mean and biased variance are updated with the pairwise (Chan et
 * al.) formulas in double precision, then the new right-singular vectors come from one thin SVD of
 *     first call:  X - mean                          (M rows)
 *     later calls: [diag(S) V; X - mean(X); c]        (K + M + 1 rows)
 * with the mean-correction row c = sqrt(n M / (n + M)) (mean_old - mean(X)). PEFT uses a seeded
 * randomised SVD (torch.svd_lowrank) here; this file takes the exact thin SVD, which that
 * randomised one approximates. Signs follow sklearn's svd_flip on V: each row's largest-magnitude
 * entry is made positive.
 *
 * It does not hold the masking of padding tokens, the convergence bookkeeping across layers or the
 * rank redistribution: those are in peftc/tuners/eva.py. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "blas.h"

/* features handled per pass over the rows when accumulating column statistics */
#define EVA_COL_BLOCK 64

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

static int64_t ipca_rows(int64_t M, int64_t K, int first)
{
    return first ? M : K + M + 1;
}

int64_t peftc_ipca_workspace_size(int64_t M, int64_t IC, int64_t K)
{
    if (M < 0 || IC <= 0 || K < 0)
        return -1;
    int64_t need = 0;
    for (int first = 0; first <= 1; first++) {
        const int64_t rows = ipca_rows(M, K, first);
        if (rows == 0)
            continue;
        const int64_t p = rows < IC ? rows : IC;
        const int64_t svd = peftc_svd_right_workspace_size(rows, IC);
        if (svd < 0)
            return -1;
        /* 2 IC doubles of batch statistics, new mean, new variance, batch mean (IC each), singular
         * values (p), vt (p, IC), z (rows, IC), SVD scratch */
        need = max64(need, 7 * IC + p + p * IC + rows * IC + svd);
    }
    return need;
}

/* Batch column sums and centred sums of squares, both in double, one block of features at a time so
 * the rows are read in order. Returns nonzero if x holds NaN or Inf. */
static int column_stats(double *sum /* (IC) */, double *sq /* (IC): sum (x - sum/M)^2 - (sum (x - sum/M))^2/M */,
                        const float *x /* (M,IC) */, int64_t M, int64_t IC)
{
    for (int64_t j0 = 0; j0 < IC; j0 += EVA_COL_BLOCK) {
        const int64_t nb = IC - j0 < EVA_COL_BLOCK ? IC - j0 : EVA_COL_BLOCK;
        double s[EVA_COL_BLOCK] = {0}, d[EVA_COL_BLOCK] = {0}, d2[EVA_COL_BLOCK] = {0};
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < nb; j++)
                s[j] += x[i * IC + j0 + j];
        for (int64_t j = 0; j < nb; j++)
            if (!isfinite(s[j]))
                return 1;
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < nb; j++) {
                const double t = x[i * IC + j0 + j] - s[j] / (double)M;
                d[j] += t;
                d2[j] += t * t;
            }
        for (int64_t j = 0; j < nb; j++) {
            sum[j0 + j] = s[j];
            sq[j0 + j] = d2[j] - d[j] * d[j] / (double)M;
        }
    }
    return 0;
}

peftc_status peftc_ipca_update(float *components, float *singular, float *mean, float *var, float *evr,
                               float *cosine, float *work, const float *x, int64_t n_seen, int64_t M, int64_t IC,
                               int64_t K)
{
    const int first = n_seen == 0;
    if (n_seen < 0 || M <= 0 || IC <= 0 || K <= 0 || K > IC || (first && K > M))
        return PEFTC_ERR_ARG;
    const int64_t rows = ipca_rows(M, K, first);
    const int64_t p = rows < IC ? rows : IC;
    if (!peftc_blas_sizes_ok(rows, IC, rows * IC))
        return PEFTC_ERR_SIZE;
    if ((uintptr_t)work % sizeof(double) != 0)
        return PEFTC_ERR_ARG;
    double *dsum = (double *)work;     /* (IC) batch column sums */
    double *dsq = dsum + IC;           /* (IC) batch centred sums of squares */
    float *new_mean = work + 4 * IC;   /* (IC) */
    float *new_var = new_mean + IC;    /* (IC) */
    float *batch_mean = new_var + IC;  /* (IC) */
    float *s_all = batch_mean + IC;    /* (p) */
    float *vt = s_all + p;             /* (p, IC) */
    float *z = vt + p * IC;            /* (rows, IC) */
    float *svd_work = z + rows * IC;
    if (column_stats(dsum, dsq, x, M, IC))
        return PEFTC_ERR_NONFINITE;

    /* running mean and biased variance (Chan, Golub, LeVeque pairwise update, as sklearn) */
    const double n = (double)n_seen, m = (double)M, total = n + m;
    double var_sum = 0.0;
    for (int64_t j = 0; j < IC; j++) {
        const double last_sum = first ? 0.0 : (double)mean[j] * n;
        const double mu = (last_sum + dsum[j]) / total;
        double unnorm = dsq[j];
        if (!first) {
            const double last_over_new = n / m;
            const double diff = last_sum / last_over_new - dsum[j];
            unnorm += (double)var[j] * n + last_over_new / total * diff * diff;
        }
        new_mean[j] = (float)mu;
        new_var[j] = (float)(unnorm / total);
        batch_mean[j] = (float)(dsum[j] / m);
        var_sum += unnorm / total;
    }

    /* z: the stacked matrix whose right-singular vectors are the updated components */
    float *zx = z;
    if (!first) {
        for (int64_t k = 0; k < K; k++)
            for (int64_t j = 0; j < IC; j++)
                z[k * IC + j] = singular[k] * components[k * IC + j];
        zx = z + K * IC;
    }
    const float *centre = first ? new_mean : batch_mean;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < IC; j++)
            zx[i * IC + j] = x[i * IC + j] - centre[j];
    if (!first) {
        const double corr = sqrt(n / total * m);
        float *c = zx + M * IC;
        for (int64_t j = 0; j < IC; j++)
            c[j] = (float)(corr * ((double)mean[j] - (double)batch_mean[j]));
    }

    peftc_status st = peftc_svd_right(vt, s_all, z, svd_work, rows, IC);
    if (st != PEFTC_OK)
        return st;
    if (p < K)
        return PEFTC_ERR_ARG;

    for (int64_t k = 0; k < K; k++) {
        float *v = vt + k * IC;
        int64_t arg = 0;
        for (int64_t j = 1; j < IC; j++)
            if (fabsf(v[j]) > fabsf(v[arg]))
                arg = j;
        if (v[arg] < 0.0f)
            for (int64_t j = 0; j < IC; j++)
                v[j] = -v[j];
        double dot = 0.0, nn = 0.0, no = 0.0;
        if (!first)
            for (int64_t j = 0; j < IC; j++) {
                dot += (double)v[j] * components[k * IC + j];
                nn += (double)v[j] * v[j];
                no += (double)components[k * IC + j] * components[k * IC + j];
            }
        /* torch.nn.functional.cosine_similarity clamps each norm at eps = 1e-8 */
        cosine[k] = first ? 0.0f : (float)(dot / (fmax(sqrt(nn), 1e-8) * fmax(sqrt(no), 1e-8)));
        const double sk = s_all[k];
        evr[k] = var_sum > 0.0 ? (float)(sk * sk / (total * var_sum)) : 0.0f;
    }
    memcpy(components, vt, (size_t)(K * IC) * sizeof(float));
    memcpy(singular, s_all, (size_t)K * sizeof(float));
    memcpy(mean, new_mean, (size_t)IC * sizeof(float));
    memcpy(var, new_var, (size_t)IC * sizeof(float));
    return PEFTC_OK;
}
