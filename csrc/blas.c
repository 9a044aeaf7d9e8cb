/* blas.c: thin, checked wrappers over CBLAS and LAPACKE. Holds no math of its own: each function
 * checks sizes against the 32-bit interface and maps the library's result to a peftc_status.
 * LAPACKE is called only through its column-major _work interface, which allocates nothing. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime and the thread CPU clock under -std=c11 */
#define PEFTC_BLAS_LIBRARY     /* blas.h adds the library's own headers, names mapped to the build's OpenBLAS */
#include "blas.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

int peftc_blas_sizes_ok(int64_t a, int64_t b, int64_t c)
{
    return a >= 0 && b >= 0 && c >= 0 && a <= INT_MAX && b <= INT_MAX && c <= INT_MAX;
}

/* OpenBLAS's thread count is one process-wide number, and peftc lowers it to 1 for two reasons: a hold
 * (peftc_blas_single_thread_begin) and products too small to split (peftc_sgemm). While either is in
 * force, `configured` keeps the count to come back to, and peftc_blas_threads() reports it, so that
 * part counts and workspace sizes computed meanwhile (on other threads) see the count the process runs
 * with. Guarded by state_lock, which is held for a few calls, never over a product. */
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static int configured = 0;   /* the count outside the lowered spans; read from OpenBLAS when one begins */
static int64_t lowered = 0;  /* holds and small products in flight */
static pthread_mutex_t single_thread_lock = PTHREAD_MUTEX_INITIALIZER; /* one hold at a time */
static _Atomic int64_t single_thread_products = 0; /* products run on one thread by the size rule */

/* Start a lowered span. The count is read afresh when no span is active, so that a count set behind
 * peftc's back (through ctypes, say) is the one restored. */
static void lower_begin(void)
{
    pthread_mutex_lock(&state_lock);
    if (lowered++ == 0) {
        configured = openblas_get_num_threads();
        if (configured != 1)
            openblas_set_num_threads(1);
    }
    pthread_mutex_unlock(&state_lock);
}

static void lower_end(void)
{
    pthread_mutex_lock(&state_lock);
    if (--lowered == 0 && configured != 1)
        openblas_set_num_threads(configured);
    pthread_mutex_unlock(&state_lock);
}

int64_t peftc_blas_threads(void)
{
    pthread_mutex_lock(&state_lock);
    const int n = lowered ? configured : openblas_get_num_threads();
    pthread_mutex_unlock(&state_lock);
    return n;
}

peftc_status peftc_blas_set_threads(int64_t n)
{
    if (n < 1 || n > INT_MAX)
        return PEFTC_ERR_ARG;
    pthread_mutex_lock(&state_lock);
    if (lowered)
        configured = (int)n; /* applied when the last lowered span ends */
    else
        openblas_set_num_threads((int)n);
    pthread_mutex_unlock(&state_lock);
    return PEFTC_OK;
}

void peftc_blas_single_thread_begin(void)
{
    pthread_mutex_lock(&single_thread_lock);
    lower_begin();
}

void peftc_blas_single_thread_end(void)
{
    lower_end();
    pthread_mutex_unlock(&single_thread_lock);
}

/* Products below this many flops (2 M N K) run on one thread. A core of the machines peftc runs on
 * does at most about 100 GFLOP/s of sgemm (Zen 3 with AVX2: 2 FMA pipes x 8 lanes x 2 flops x ~3 GHz;
 * 265 GFLOP/s was measured on two Zen 4/5 threads), so a second thread can save at most 2^22 flops
 * / 100 GFLOP/s, about 40 us, on a product below 2^23 flops. Handing it its half costs a wake-up:
 * OPENBLAS_THREAD_TIMEOUT=14 (set by peftc) puts an idle OpenBLAS worker to sleep after some
 * microseconds, so between the products of a training step it is asleep, and waking it takes tens
 * of microseconds on a quiet machine and up to a scheduler slice (35 ms measured) on a loaded one.
 * In the main job's step (N = 32 x T rows, hidden 384) this keeps the LoRA products (N x 384 x 8:
 * 2^23 flops only from T = 43) and the head (32 x 384 x 41) on one thread and splits every frozen
 * product (N x 384 x 384 and up: 2^23 flops from T = 1). OpenBLAS's own cut-off (M N K <= 2^18)
 * is 16 times lower. */
#define SGEMM_SPLIT_MIN_FLOPS (1 << 23)

static int sgemm_small(int64_t M, int64_t N, int64_t K)
{
    /* M, N, K < 2^31 each: the product fits a double exactly enough for the comparison */
    return 2.0 * (double)M * (double)N * (double)K < (double)SGEMM_SPLIT_MIN_FLOPS;
}

int64_t peftc_sgemm_threads(int64_t M, int64_t N, int64_t K)
{
    return sgemm_small(M, N, K) ? 1 : peftc_blas_threads();
}

int64_t peftc_sgemm_single_thread_count(void)
{
    return atomic_load(&single_thread_products);
}

/* GEMM accounting, off unless asked for: calls, flops and the calling thread's CPU time inside cblas_sgemm */
static _Atomic int profiling = 0;
static _Atomic int64_t profile_calls = 0, profile_flops = 0, profile_ns = 0;

void peftc_sgemm_profile(int on)
{
    atomic_store(&profile_calls, 0);
    atomic_store(&profile_flops, 0);
    atomic_store(&profile_ns, 0);
    atomic_store(&profiling, on != 0);
}

void peftc_sgemm_profile_read(int64_t *calls, int64_t *flops, int64_t *thread_cpu_ns)
{
    *calls = atomic_load(&profile_calls);
    *flops = atomic_load(&profile_flops);
    *thread_cpu_ns = atomic_load(&profile_ns);
}

static int64_t thread_cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (int64_t)t.tv_sec * 1000000000 + (int64_t)t.tv_nsec;
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
    const int small = sgemm_small(M, N, K);
    if (small) {
        atomic_fetch_add(&single_thread_products, 1);
        lower_begin();
    }
    const int64_t t0 = atomic_load_explicit(&profiling, memory_order_relaxed) ? thread_cpu_ns() : -1;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
    if (t0 >= 0) {
        atomic_fetch_add(&profile_ns, thread_cpu_ns() - t0);
        atomic_fetch_add(&profile_calls, 1);
        atomic_fetch_add(&profile_flops, 2 * M * N * K);
    }
    if (small)
        lower_end();
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
