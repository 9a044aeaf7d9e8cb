/* blas.c: thin, checked wrappers over CBLAS and LAPACKE. Holds no math of its own: each function
 * checks sizes against the 32-bit interface and maps the library's result to a peftc_status.
 * LAPACKE is called only through its column-major _work interface, which allocates nothing. */
#include "blas.h"

#include <cblas.h>
#include <lapacke.h>
#include <limits.h>

int peftc_blas_sizes_ok(int64_t a, int64_t b, int64_t c)
{
    return a >= 0 && b >= 0 && c >= 0 && a <= INT_MAX && b <= INT_MAX && c <= INT_MAX;
}

int64_t peftc_blas_threads(void)
{
    return openblas_get_num_threads();
}

peftc_status peftc_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                         const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                         int64_t ldc)
{
    if (!peftc_blas_sizes_ok(M, N, K) || !peftc_blas_sizes_ok(lda, ldb, ldc))
        return PEFTC_ERR_SIZE;
    if (M == 0 || N == 0)
        return PEFTC_OK;
    if (K == 0) {
        /* BLAS leaves C alone when K == 0 only if beta == 1; make the beta scaling explicit. */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++)
                C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return PEFTC_OK;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
    return PEFTC_OK;
}

/* sgesdd on the column-major (cols, rows) matrix a^T: its left singular vectors u (cols, p), stored
 * column after column with ldu = cols, are the rows of vt; its right factor (p, rows) is scratch. */
static int64_t svd_int_count(int64_t p)
{
    /* sgesdd's iwork: 8 p integers, counted in float slots */
    return 8 * p * (int64_t)((sizeof(lapack_int) + sizeof(float) - 1) / sizeof(float));
}

int64_t peftc_svd_right_workspace_size(int64_t rows, int64_t cols)
{
    if (!peftc_blas_sizes_ok(rows, cols, rows * cols) || rows == 0 || cols == 0)
        return -1;
    const int64_t p = rows < cols ? rows : cols;
    float query = 0.0f, dummy = 0.0f;
    lapack_int idummy = 0;
    lapack_int info = LAPACKE_sgesdd_work(LAPACK_COL_MAJOR, 'S', (lapack_int)cols, (lapack_int)rows, &dummy,
                                          (lapack_int)cols, &dummy, &dummy, (lapack_int)cols, &dummy,
                                          (lapack_int)p, &query, -1, &idummy);
    if (info != 0)
        return -1;
    return (int64_t)query + 1 + svd_int_count(p) + p * rows;
}

peftc_status peftc_svd_right(float *vt, float *s, float *a, float *work, int64_t rows, int64_t cols)
{
    const int64_t total = peftc_svd_right_workspace_size(rows, cols);
    if (total < 0)
        return PEFTC_ERR_SIZE;
    const int64_t p = rows < cols ? rows : cols;
    float *vscratch = work;                          /* (p, rows) */
    lapack_int *iwork = (lapack_int *)(work + p * rows); /* (8 p) */
    float *lwork = work + p * rows + svd_int_count(p);
    const int64_t nlwork = total - p * rows - svd_int_count(p);
    if (nlwork > INT_MAX)
        return PEFTC_ERR_SIZE;
    lapack_int info = LAPACKE_sgesdd_work(LAPACK_COL_MAJOR, 'S', (lapack_int)cols, (lapack_int)rows, a,
                                          (lapack_int)cols, s, vt, (lapack_int)cols, vscratch, (lapack_int)p,
                                          lwork, (lapack_int)nlwork, iwork);
    return info == 0 ? PEFTC_OK : PEFTC_ERR_LAPACK;
}
