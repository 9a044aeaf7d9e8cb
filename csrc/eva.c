/* eva.c: the incremental PCA step behind EVA's data-driven LoRA initialisation.
 *
 * One call folds a minibatch of layer-input rows into a layer's running PCA state, the way
 * scikit-learn's IncrementalPCA.partial_fit does (PEFT's peft/utils/incremental_pca.py is a torch
 * port of it): the per-feature mean and biased variance are updated with the pairwise (Chan et
 * al.) formulas in double precision, then the new components are the top K right-singular vectors
 * of the stacked matrix
 *     first call:  Z = X - mean                          (M rows)
 *     later calls: Z = [diag(S) V; X - mean(X); c]        (K + M + 1 rows)
 * with the mean-correction row c = sqrt(n M / (n + M)) (mean_old - mean(X)). PEFT takes a seeded
 * randomised SVD (torch.svd_lowrank) of Z; an exact SVD would form all min(rows, IC) singular
 * vectors on both sides. Only K are needed, so this file takes them from the smaller Gram matrix:
 *   Z = U diag(s) V^T  gives  Z^T Z = V diag(s^2) V^T  and  Z Z^T = U diag(s^2) U^T.
 * With rows >= IC the top K eigenvectors of Z^T Z (IC, IC) are the components and s = sqrt(eigenvalue).
 * With rows < IC the top K eigenvectors u_k of Z Z^T (rows, rows) give v_k = Z^T u_k / s_k; these are
 * re-orthonormalised (twice-run Gram-Schmidt in double) because float rounding in the Gram matrix
 * leaves them orthogonal only to about eps * s_1^2 / (s_j s_k). A component whose s_k is zero (Z has
 * rank < K, e.g. a first batch of exactly K rows, which centring makes rank K - 1) is any unit vector
 * orthogonal to the others, as in an exact SVD; the first standard basis vector that survives the
 * orthogonalisation is taken. Forming the Gram matrix in float squares Z's condition number, so a
 * component is determined to about eps * s_1^2 / (s_k^2 - s_{k+1}^2) instead of eps * s_1 / (s_k -
 * s_{k+1}); for the kept, leading components this is far below the tau = 0.99 cosine EVA tests
 * against, and directions with smaller gaps are not determined by the data in the first place.
 * Signs follow sklearn's svd_flip on V: each row's largest-magnitude entry is made positive.
 *
 * Every update runs on one thread (OpenBLAS held at one thread: the eigensolver at these sizes is no
 * faster on two), so its bits do not depend on the thread count; peftc_ipca_update_many runs the
 * updates of several layers side by side instead.
 *
 * It does not hold the masking of padding tokens, the convergence bookkeeping across layers or the
 * rank redistribution: those are in peftc/tuners/eva.py. */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "blas.h"
#include "parallel.h"

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
        if (rows == 0 || K == 0)
            continue;
        const int64_t n = rows < IC ? rows : IC;
        if (K > n)
            continue;
        const int64_t eig = peftc_sym_eig_top_workspace_size(n, K);
        if (eig < 0 || !peftc_blas_sizes_ok(rows, IC, rows * IC))
            return -1;
        /* 2 IC doubles of batch statistics, new mean, new variance, batch mean (IC each), singular
         * values (K), vt (K, IC), z (rows, IC), Gram matrix (n, n), eigenvalues (n), eigenvectors
         * (K, n), eigensolver scratch */
        need = max64(need, 7 * IC + K + K * IC + rows * IC + n * n + n + K * n + eig);
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

/* Scale v (IC) to unit length after removing its projections on the rows of prev (count, IC), twice
 * (one pass leaves O(eps * cond) of them). Returns the fraction of v's length that is left. */
static double orthonormalise(float *v /* (IC) */, const float *prev /* (count, IC) */, int64_t count, int64_t IC)
{
    double before = 0.0;
    for (int64_t j = 0; j < IC; j++)
        before += (double)v[j] * v[j];
    if (before == 0.0)
        return 0.0;
    for (int pass = 0; pass < 2; pass++)
        for (int64_t r = 0; r < count; r++) {
            double dot = 0.0;
            for (int64_t j = 0; j < IC; j++)
                dot += (double)v[j] * prev[r * IC + j];
            for (int64_t j = 0; j < IC; j++)
                v[j] = (float)(v[j] - dot * prev[r * IC + j]);
        }
    double after = 0.0;
    for (int64_t j = 0; j < IC; j++)
        after += (double)v[j] * v[j];
    const double norm = sqrt(after);
    if (norm > 0.0)
        for (int64_t j = 0; j < IC; j++)
            v[j] = (float)(v[j] / norm);
    return sqrt(after / before);
}

/* The top K right-singular vectors vt (K, IC) and singular values s (K) of z (rows, IC), from the
 * eigen-decomposition of the smaller of z^T z and z z^T (see the file comment). */
static peftc_status top_right_vectors(float *vt /* (K,IC) overwritten */, float *s /* (K) overwritten */,
                                      const float *z /* (rows,IC) */, float *gram /* (n,n) scratch */,
                                      float *eig_w /* (n) scratch */, float *eig_v /* (K,n) scratch */, float *eig_work,
                                      int64_t rows, int64_t IC, int64_t K)
{
    const int tall = rows >= IC;
    const int64_t n = tall ? IC : rows;
    /* tall: gram = z^T z (N = IC, K = rows, lda = IC); wide: gram = z z^T (N = rows, K = IC, lda = IC) */
    peftc_status st = peftc_ssyrk(tall, n, tall ? rows : IC, 1.0f, z, IC, 0.0f, gram, n);
    if (st != PEFTC_OK)
        return st;
    st = peftc_sym_eig_top(eig_w, tall ? vt : eig_v, gram, eig_work, n, K);
    if (st != PEFTC_OK)
        return st;
    for (int64_t k = 0; k < K; k++)
        s[k] = eig_w[k] > 0.0f ? sqrtf(eig_w[k]) : 0.0f;
    if (tall)
        return PEFTC_OK;
    /* vt (K, IC) = eig_v (K, rows) z (rows, IC): M = K, N = IC, K = rows, lda = rows, ldb = IC, ldc = IC */
    st = peftc_sgemm(0, 0, K, IC, rows, 1.0f, eig_v, rows, z, IC, 0.0f, vt, IC);
    if (st != PEFTC_OK)
        return st;
    for (int64_t k = 0; k < K; k++) {
        float *v = vt + k * IC;
        /* less than half left after orthogonalisation: s_k is at rounding level, so v_k is any unit
         * vector orthogonal to the others */
        for (int64_t j = 0; orthonormalise(v, vt, k, IC) < 0.5; j++) {
            if (j == IC)
                return PEFTC_ERR_LAPACK;
            memset(v, 0, (size_t)IC * sizeof(float));
            v[j] = 1.0f;
        }
    }
    return PEFTC_OK;
}

/* peftc_ipca_update on the calling thread, with OpenBLAS already held at one thread */
static peftc_status ipca_update_one(float *components, float *singular, float *mean, float *var, float *evr,
                                    float *cosine, float *work, const float *x, int64_t n_seen, int64_t M, int64_t IC,
                                    int64_t K)
{
    const int first = n_seen == 0;
    if (n_seen < 0 || M <= 0 || IC <= 0 || K <= 0 || K > IC || (first && K > M))
        return PEFTC_ERR_ARG;
    const int64_t rows = ipca_rows(M, K, first);
    const int64_t n_gram = rows < IC ? rows : IC;
    if (K > n_gram)
        return PEFTC_ERR_ARG;
    const int64_t eig_need = peftc_sym_eig_top_workspace_size(n_gram, K);
    if (!peftc_blas_sizes_ok(rows, IC, rows * IC) || eig_need < 0)
        return PEFTC_ERR_SIZE;
    if ((uintptr_t)work % sizeof(double) != 0)
        return PEFTC_ERR_ARG;
    double *dsum = (double *)work;         /* (IC) batch column sums */
    double *dsq = dsum + IC;               /* (IC) batch centred sums of squares */
    float *new_mean = work + 4 * IC;       /* (IC) */
    float *new_var = new_mean + IC;        /* (IC) */
    float *batch_mean = new_var + IC;      /* (IC) */
    float *s_top = batch_mean + IC;        /* (K) */
    float *vt = s_top + K;                 /* (K, IC) */
    float *z = vt + K * IC;                /* (rows, IC) */
    float *gram = z + rows * IC;           /* (n_gram, n_gram) */
    float *eig_w = gram + n_gram * n_gram; /* (n_gram) */
    float *eig_v = eig_w + n_gram;         /* (K, n_gram) */
    float *eig_work = eig_v + K * n_gram;  /* (eig_need) */
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

    peftc_status st = top_right_vectors(vt, s_top, z, gram, eig_w, eig_v, eig_work, rows, IC, K);
    if (st != PEFTC_OK)
        return st;

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
        const double sk = s_top[k];
        evr[k] = var_sum > 0.0 ? (float)(sk * sk / (total * var_sum)) : 0.0f;
    }
    memcpy(components, vt, (size_t)(K * IC) * sizeof(float));
    memcpy(singular, s_top, (size_t)K * sizeof(float));
    memcpy(mean, new_mean, (size_t)IC * sizeof(float));
    memcpy(var, new_var, (size_t)IC * sizeof(float));
    return PEFTC_OK;
}

peftc_status peftc_ipca_update(float *components, float *singular, float *mean, float *var, float *evr, float *cosine,
                               float *work, const float *x, int64_t n_seen, int64_t M, int64_t IC, int64_t K)
{
    peftc_blas_single_thread_begin();
    const peftc_status st = ipca_update_one(components, singular, mean, var, evr, cosine, work, x, n_seen, M, IC, K);
    peftc_blas_single_thread_end();
    return st;
}

typedef struct {
    peftc_ipca_job *jobs;
    int64_t count;
    _Atomic int64_t next; /* the next job to take: parts take jobs as they finish, so uneven sizes balance */
} ipca_many;

static peftc_status ipca_many_part(void *ctx, int64_t t, int64_t nparts)
{
    (void)t;
    (void)nparts;
    ipca_many *all = ctx;
    for (int64_t i; (i = atomic_fetch_add(&all->next, 1)) < all->count;) {
        peftc_ipca_job *j = &all->jobs[i];
        j->status = ipca_update_one(j->components, j->singular, j->mean, j->var, j->evr, j->cosine, j->work, j->x,
                                    j->n_seen, j->M, j->IC, j->K);
    }
    return PEFTC_OK;
}

peftc_status peftc_ipca_update_many(peftc_ipca_job *jobs, int64_t count)
{
    if (count < 0 || (count > 0 && jobs == NULL))
        return PEFTC_ERR_ARG;
    if (count == 0)
        return PEFTC_OK;
    const int64_t threads = peftc_parallel_threads();
    ipca_many all = {jobs, count, 0};
    peftc_status st = peftc_parallel_run_blas(ipca_many_part, &all, count < threads ? count : threads);
    for (int64_t i = 0; i < count && st == PEFTC_OK; i++)
        st = jobs[i].status;
    return st;
}
