/* blas.c: thin, checked wrappers over CBLAS and LAPACKE. Holds no math of its own: each function
 * checks sizes against the 32-bit interface and maps the library's result to a peftc_status.
 * LAPACKE is called only through its column-major _work interface, which allocates nothing. */
#define PEFTC_BLAS_LIBRARY /* blas.h adds the library's own headers, names mapped to the build's OpenBLAS */
#include "blas.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>

int peftc_blas_sizes_ok(int64_t a, int64_t b, int64_t c)
{
    return a >= 0 && b >= 0 && c >= 0 && a <= INT_MAX && b <= INT_MAX && c <= INT_MAX;
}

/* the thread count from before a single-thread hold, 0 when none is active: workspace queries and
 * part counts made meanwhile (from other threads) see the count the process runs with */
static _Atomic int held_threads = 0;
static pthread_mutex_t single_thread_lock = PTHREAD_MUTEX_INITIALIZER;

int64_t peftc_blas_threads(void)
{
    const int held = atomic_load(&held_threads);
    return held ? held : openblas_get_num_threads();
}

void peftc_blas_single_thread_begin(void)
{
    pthread_mutex_lock(&single_thread_lock);
    const int n = openblas_get_num_threads();
    atomic_store(&held_threads, n);
    if (n != 1)
        openblas_set_num_threads(1);
}

void peftc_blas_single_thread_end(void)
{
    const int n = atomic_load(&held_threads);
    if (n != 1)
        openblas_set_num_threads(n);
    atomic_store(&held_threads, 0);
    pthread_mutex_unlock(&single_thread_lock);
}

peftc_status peftc_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                         int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
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
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
    return PEFTC_OK;
}

peftc_status peftc_ssyrk(int trans, int64_t N, int64_t K, float alpha, const float *A, int64_t lda, float beta,
                         float *C, int64_t ldc)
{
    if (!peftc_blas_sizes_ok(N, K, lda) || !peftc_blas_sizes_ok(ldc, 0, 0))
        return PEFTC_ERR_SIZE;
    if (N == 0)
        return PEFTC_OK;
    if (K == 0) {
        for (int64_t i = 0; i < N; i++)
            for (int64_t j = i; j < N; j++)
                C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return PEFTC_OK;
    }
    cblas_ssyrk(CblasRowMajor, CblasUpper, trans ? CblasTrans : CblasNoTrans, (int)N, (int)K, alpha, A, (int)lda, beta,
                C, (int)ldc);
    return PEFTC_OK;
}

/* ssyevr on a symmetric matrix, which has the same memory in row- and column-major order: the upper
 * triangle of the row-major a is the lower triangle ('L') of the column-major one. Its eigenvectors
 * come out as columns of a column-major (n, k) matrix with ldz = n, i.e. as the rows of a row-major
 * (k, n) one. Scratch: isuppz (2 k integers), iwork (liwork integers), then lwork floats. */
static int eig_query(int64_t n, int64_t k, int64_t *lwork, int64_t *liwork)
{
    float a = 0.0f, w = 0.0f, z = 0.0f, query = 0.0f;
    lapack_int m = 0, isuppz[2] = {0, 0}, iquery = 0;
    lapack_int info = LAPACKE_ssyevr_work(LAPACK_COL_MAJOR, 'V', 'I', 'L', (lapack_int)n, &a, (lapack_int)n, 0.0f, 0.0f,
                                          (lapack_int)(n - k + 1), (lapack_int)n, 0.0f, &m, &w, &z, (lapack_int)n,
                                          isuppz, &query, -1, &iquery, -1);
    if (info != 0)
        return 1;
    *lwork = (int64_t)query + 1;
    *liwork = (int64_t)iquery;
    return 0;
}

/* lapack_int slots counted in floats */
static int64_t int_slots(int64_t count)
{
    return count * (int64_t)((sizeof(lapack_int) + sizeof(float) - 1) / sizeof(float));
}

int64_t peftc_sym_eig_top_workspace_size(int64_t n, int64_t k)
{
    if (!peftc_blas_sizes_ok(n, k, n * n) || n == 0 || k <= 0 || k > n)
        return -1;
    int64_t lwork = 0, liwork = 0;
    if (eig_query(n, k, &lwork, &liwork))
        return -1;
    return int_slots(2 * k) + int_slots(liwork) + lwork;
}

peftc_status peftc_sym_eig_top(float *w, float *v, float *a, float *work, int64_t n, int64_t k)
{
    if (peftc_sym_eig_top_workspace_size(n, k) < 0)
        return PEFTC_ERR_SIZE;
    int64_t lwork = 0, liwork = 0;
    if (eig_query(n, k, &lwork, &liwork))
        return PEFTC_ERR_LAPACK;
    if (lwork > INT_MAX || liwork > INT_MAX)
        return PEFTC_ERR_SIZE;
    lapack_int *isuppz = (lapack_int *)work;                     /* (2 k) */
    lapack_int *iwork = (lapack_int *)(work + int_slots(2 * k)); /* (liwork) */
    float *fwork = work + int_slots(2 * k) + int_slots(liwork);  /* (lwork) */
    lapack_int found = 0;
    /* twice the underflow threshold: the tolerance at which bisection is most accurate */
    const float abstol = 2.0f * LAPACKE_slamch_work('S');
    lapack_int info = LAPACKE_ssyevr_work(LAPACK_COL_MAJOR, 'V', 'I', 'L', (lapack_int)n, a, (lapack_int)n, 0.0f, 0.0f,
                                          (lapack_int)(n - k + 1), (lapack_int)n, abstol, &found, w, v, (lapack_int)n,
                                          isuppz, fwork, (lapack_int)lwork, iwork, (lapack_int)liwork);
    if (info != 0 || found != (lapack_int)k)
        return PEFTC_ERR_LAPACK;
    /* LAPACK returns them ascending; the callers want the largest first */
    for (int64_t i = 0, j = k - 1; i < j; i++, j--) {
        const float t = w[i];
        w[i] = w[j];
        w[j] = t;
        for (int64_t c = 0; c < n; c++) {
            const float u = v[i * n + c];
            v[i * n + c] = v[j * n + c];
            v[j * n + c] = u;
        }
    }
    return PEFTC_OK;
}
