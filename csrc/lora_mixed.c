/* lora_mixed.c: LoRA with one adapter per row (mixed-adapter batches), forward and backward.
 *   y[n] = x[n] w^T + b + s_k * (x[n] a_k^T bm_k^T + bb_k),   k = idx[n]   (idx[n] = -1: the base layer alone)
 * The frozen product runs once over all N rows (one GEMM); the rows are then grouped by adapter with a
 * counting sort into iwork, and each adapter's two GEMMs run on its rows: in place when its rows are
 * one contiguous block (a batch built adapter by adapter), else on rows gathered into the workspace and
 * added back, so the workspace grows with the largest group that is not a block (G rows), not with N. No dropout here
 * (the single-adapter kernels in lora.c have it). */
#include <string.h>

#include "blas.h"

int64_t peftc_lora_mixed_workspace_size(int64_t N, int64_t G, int64_t IC, int64_t OC, int64_t RM)
{
    /* the backward's: gu (N,RM) for every group, then for the gathered rows dy (G,OC), x (G,IC) and the
     * adapter's dx rows (G,IC); the forward uses G*(IC+OC) of it (x gathered, then its adapter's output) */
    return N * RM + G * (OC + 2 * IC);
}

/* Counting sort of the rows by adapter: order[start[k] .. start[k+1]) are the rows of adapter k in
 * increasing order (the base rows, idx -1, are in no group). PEFTC_ERR_ARG if an index is outside [-1, K). */
static peftc_status group_rows(int64_t *order /* (N) overwritten */, int64_t *start /* (K+1) overwritten */,
                               const int64_t *idx /* (N) */, int64_t N, int64_t K)
{
    memset(start, 0, (size_t)(K + 1) * sizeof(*start));
    for (int64_t n = 0; n < N; n++) {
        if (idx[n] < -1 || idx[n] >= K)
            return PEFTC_ERR_ARG;
        if (idx[n] >= 0)
            start[idx[n] + 1]++;
    }
    for (int64_t k = 0; k < K; k++)
        start[k + 1] += start[k];
    /* start[k] serves as group k's cursor, which leaves it at the group's end = start[k+1] */
    for (int64_t n = 0; n < N; n++)
        if (idx[n] >= 0)
            order[start[idx[n]]++] = n;
    memmove(start + 1, start, (size_t)K * sizeof(*start));
    start[0] = 0;
    return PEFTC_OK;
}

/* the rows of a group are one block of consecutive rows (then the arrays are used in place) */
static int is_block(const int64_t *rows, int64_t n)
{
    return n == 0 || rows[n - 1] - rows[0] == n - 1;
}

static void gather_rows(float *dst /* (n,C) */, const float *src /* (*,C) */, const int64_t *rows, int64_t n, int64_t C)
{
    for (int64_t j = 0; j < n; j++)
        memcpy(dst + j * C, src + rows[j] * C, (size_t)C * sizeof(float));
}

static void add_rows(float *dst /* (*,C) */, const float *src /* (n,C) */, const int64_t *rows, int64_t n, int64_t C)
{
    for (int64_t j = 0; j < n; j++) {
        float *d = dst + rows[j] * C;
        const float *s = src + j * C;
        for (int64_t c = 0; c < C; c++)
            d[c] += s[c];
    }
}

static void add_bias_rows(float *y /* (*,OC) */, const float *bb /* (OC) */, float scale, const int64_t *rows,
                          int64_t n, int64_t OC)
{
    for (int64_t j = 0; j < n; j++) {
        float *d = y + rows[j] * OC;
        for (int64_t o = 0; o < OC; o++)
            d[o] += scale * bb[o];
    }
}

/* G: the rows of the largest group that is not one block (the rows the workspace holds gathered) */
static int64_t gathered_rows(const int64_t *order, const int64_t *start, int64_t K)
{
    int64_t G = 0;
    for (int64_t k = 0; k < K; k++) {
        const int64_t n = start[k + 1] - start[k];
        if (n > G && !is_block(order + start[k], n))
            G = n;
    }
    return G;
}

/* Check the sizes and ranks, then group the rows (group_rows) into iwork: order (N), start (K+1). */
static peftc_status group_checked(int64_t **order, int64_t **start, int64_t *iwork, const int64_t *rank,
                                  const int64_t *idx, int64_t N, int64_t IC, int64_t OC, int64_t K, int64_t RM)
{
    if (!peftc_blas_sizes_ok(N, IC, OC) || K < 0 || RM < 0)
        return PEFTC_ERR_SIZE;
    for (int64_t k = 0; k < K; k++)
        if (rank[k] < 0 || rank[k] > RM)
            return PEFTC_ERR_SIZE;
    *order = iwork;
    *start = iwork + N;
    return group_rows(*order, *start, idx, N, K);
}

peftc_status peftc_lora_mixed_forward(float *y, float *u, float *work, int64_t *iwork, const float *x, const float *w,
                                      const float *b, const float *const *a, const float *const *bm,
                                      const float *const *bb, const float *scale, const int64_t *rank,
                                      const int64_t *idx, int64_t N, int64_t IC, int64_t OC, int64_t K, int64_t RM)
{
    int64_t *order, *start;
    peftc_status st = group_checked(&order, &start, iwork, rank, idx, N, IC, OC, K, RM);
    if (st != PEFTC_OK)
        return st;
    /* every row: y (N,OC) = x w^T + b, one GEMM for all the adapters */
    if ((st = peftc_linear_forward(y, x, w, b, N, IC, OC)) != PEFTC_OK)
        return st;
    const int64_t G = gathered_rows(order, start, K);
    float *xg = work, *t = work + G * IC;
    for (int64_t k = 0; k < K; k++) {
        const int64_t *rows = order + start[k], n = start[k + 1] - start[k], R = rank[k];
        if (n == 0)
            continue;
        const int block = is_block(rows, n);
        const float *xk = x + rows[0] * IC;
        if (!block) {
            gather_rows(xg, x, rows, n, IC);
            xk = xg;
        }
        float *uk = u + start[k] * RM;
        /* uk (n,R) = xk (n,IC) a_k^T: M=n, N=R, K=IC, lda=IC, ldb=IC, ldc=RM */
        if ((st = peftc_sgemm(0, 1, n, R, IC, 1.0f, xk, IC, a[k], IC, 0.0f, uk, RM)) != PEFTC_OK)
            return st;
        if (block) {
            /* y rows (n,OC) += s_k uk (n,R) bm_k^T: M=n, N=OC, K=R, lda=RM, ldb=R, ldc=OC */
            st = peftc_sgemm(0, 1, n, OC, R, scale[k], uk, RM, bm[k], R, 1.0f, y + rows[0] * OC, OC);
        } else {
            /* t (n,OC) = s_k uk (n,R) bm_k^T: M=n, N=OC, K=R, lda=RM, ldb=R, ldc=OC; then added to y's rows */
            st = peftc_sgemm(0, 1, n, OC, R, scale[k], uk, RM, bm[k], R, 0.0f, t, OC);
            if (st == PEFTC_OK)
                add_rows(y, t, rows, n, OC);
        }
        if (st != PEFTC_OK)
            return st;
        if (bb[k])
            add_bias_rows(y, bb[k], scale[k], rows, n, OC);
    }
    return PEFTC_OK;
}

peftc_status peftc_lora_mixed_backward(float *dx, float *const *da, float *const *dbm, float *const *dbb, float *work,
                                       int64_t *iwork, const float *dy, const float *x, const float *u, const float *w,
                                       const float *const *a, const float *const *bm, const float *scale,
                                       const int64_t *rank, const int64_t *idx, int64_t N, int64_t IC, int64_t OC,
                                       int64_t K, int64_t RM)
{
    int64_t *order, *start;
    peftc_status st = group_checked(&order, &start, iwork, rank, idx, N, IC, OC, K, RM);
    if (st != PEFTC_OK)
        return st;
    /* base path, every row: dx (N,IC) += dy (N,OC) w (OC,IC) */
    if (dx && (st = peftc_linear_backward(dx, NULL, NULL, dy, NULL, w, N, IC, OC)) != PEFTC_OK)
        return st;
    const int64_t G = gathered_rows(order, start, K);
    float *gu = work, *dyg = work + N * RM, *xg = dyg + G * OC, *gx = xg + G * IC;
    for (int64_t k = 0; k < K; k++) {
        const int64_t *rows = order + start[k], n = start[k + 1] - start[k], R = rank[k];
        if (n == 0)
            continue;
        const float s = scale[k];
        const float *uk = u + start[k] * RM;
        const int block = is_block(rows, n);
        const float *dyk = dy + rows[0] * OC, *xk = x + rows[0] * IC;
        if (!block) {
            gather_rows(dyg, dy, rows, n, OC);
            dyk = dyg;
            if (da[k]) {
                gather_rows(xg, x, rows, n, IC);
                xk = xg;
            }
        }
        if (da[k] || dx) {
            /* gu (n,R) = dyk (n,OC) bm_k (OC,R): M=n, N=R, K=OC, lda=OC, ldb=R, ldc=R */
            if ((st = peftc_sgemm(0, 0, n, R, OC, 1.0f, dyk, OC, bm[k], R, 0.0f, gu, R)) != PEFTC_OK)
                return st;
        }
        if (dbm[k]) {
            /* dbm_k (OC,R) += s dyk^T (OC,n) uk (n,R): M=OC, N=R, K=n, lda=OC, ldb=RM, ldc=R */
            if ((st = peftc_sgemm(1, 0, OC, R, n, s, dyk, OC, uk, RM, 1.0f, dbm[k], R)) != PEFTC_OK)
                return st;
        }
        if (dbb[k])
            for (int64_t j = 0; j < n; j++)
                for (int64_t o = 0; o < OC; o++)
                    dbb[k][o] += s * dyk[j * OC + o];
        if (da[k]) {
            /* da_k (R,IC) += s gu^T (R,n) xk (n,IC): M=R, N=IC, K=n, lda=R, ldb=IC, ldc=IC */
            if ((st = peftc_sgemm(1, 0, R, IC, n, s, gu, R, xk, IC, 1.0f, da[k], IC)) != PEFTC_OK)
                return st;
        }
        if (!dx)
            continue;
        if (block) {
            /* dx rows (n,IC) += s gu (n,R) a_k (R,IC): M=n, N=IC, K=R, lda=R, ldb=IC, ldc=IC */
            st = peftc_sgemm(0, 0, n, IC, R, s, gu, R, a[k], IC, 1.0f, dx + rows[0] * IC, IC);
        } else {
            /* gx (n,IC) = s gu a_k: M=n, N=IC, K=R, lda=R, ldb=IC, ldc=IC; then added to dx's rows */
            st = peftc_sgemm(0, 0, n, IC, R, s, gu, R, a[k], IC, 0.0f, gx, IC);
            if (st == PEFTC_OK)
                add_rows(dx, gx, rows, n, IC);
        }
        if (st != PEFTC_OK)
            return st;
    }
    return PEFTC_OK;
}
