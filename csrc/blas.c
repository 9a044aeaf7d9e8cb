/* blas.c: thin, checked wrappers over CBLAS. Holds no math of its own and no LAPACK yet: the
 * decompositions arrive with the EVA kernels. */
#include "blas.h"

#include <cblas.h>
#include <limits.h>

int peftc_blas_sizes_ok(int64_t a, int64_t b, int64_t c)
{
    return a >= 0 && b >= 0 && c >= 0 && a <= INT_MAX && b <= INT_MAX && c <= INT_MAX;
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
