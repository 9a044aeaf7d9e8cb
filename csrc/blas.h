/* blas.h: the only door to BLAS and LAPACK. Row-major throughout; sizes are int64_t here and are
 * checked against OpenBLAS's 32-bit interface before every call. The OpenBLAS is the scipy-openblas32
 * wheel's (the default build) or the system's (PEFTC_BLAS=system); only blas.c sees its headers, through
 * the section at the end of this file. */
#ifndef PEFTC_BLAS_H
#define PEFTC_BLAS_H

#include <stdint.h>

#include "peftc.h"

/* C (M,N) = alpha * op(A) op(B) + beta * C, row-major, op(X) = X or X^T as trans_x says. A product
 * too small to gain from a second thread (under 2^23 flops, 2 M N K; blas.c says why) runs on one
 * thread. Its result can differ from a split one in the last bits, as OpenBLAS's results at two
 * thread counts do (its edge blocks change with the split). Meanwhile a product from another thread
 * also runs on one thread. */
peftc_status peftc_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                         int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* the thread count peftc_sgemm gives an (M,N) x K product: 1 below the size rule, else
 * peftc_blas_threads() */
int64_t peftc_sgemm_threads(int64_t M, int64_t N, int64_t K);

/* products peftc_sgemm has run on one thread by the size rule since the process started */
int64_t peftc_sgemm_single_thread_count(void);

/* GEMM accounting for profiles (benchmarks/step_gemm_share.py): peftc_sgemm_profile(1) zeroes the totals and
 * starts counting, (0) zeroes and stops; _read gives the products, their flops (2 M N K) and the CPU time of
 * the threads that called them, spent inside the BLAS call (OpenBLAS's own workers not included: profile at
 * one BLAS thread). Two clock reads per product while on, one atomic load while off. */
void peftc_sgemm_profile(int on);
void peftc_sgemm_profile_read(int64_t *calls, int64_t *flops, int64_t *thread_cpu_ns);

/* true when every size fits the BLAS integer */
int peftc_blas_sizes_ok(int64_t a, int64_t b, int64_t c);

/* the number of threads OpenBLAS runs a large GEMM on (outside any single-thread hold) */
int64_t peftc_blas_threads(void);

/* run OpenBLAS, and so peftc's own kernels, on n >= 1 threads from now on (PEFTC_ERR_ARG otherwise);
 * set during a hold, the count takes effect when the hold ends */
peftc_status peftc_blas_set_threads(int64_t n);

/* Hold OpenBLAS at one thread until peftc_blas_single_thread_end(), for kernels that run BLAS or LAPACK
 * calls on threads of their own. The count is process-wide: the pair holds a lock, so two such
 * sections (from two Python threads, say) run one after the other and the count is restored, and
 * peftc_blas_threads() keeps returning the count from before the hold. */
void peftc_blas_single_thread_begin(void);
void peftc_blas_single_thread_end(void);

/* C (N,N) = alpha * op(A) op(A)^T + beta * C on the upper triangle only (row-major), op(A) = A (N,K)
 * or, with trans, A^T for A (K,N). The strict lower triangle of C is not touched. */
peftc_status peftc_ssyrk(int trans, int64_t N, int64_t K, float alpha, const float *A, int64_t lda, float beta,
                         float *C, int64_t ldc);

/* ---- LAPACK (EVA) --------------------------------------------------------------------------------
 * The k largest eigenvalues of the symmetric (n, n) matrix a, read from its upper triangle (row-major),
 * and their unit eigenvectors, by LAPACK's ssyevr (relatively robust representations) restricted to
 * the index range n-k+1..n, so the other n-k eigenvectors are never formed. The column-major
 * interface works on the same memory (a symmetric matrix is its own transpose) and LAPACKE allocates
 * nothing: work holds the integer and float scratch. */
int64_t peftc_sym_eig_top_workspace_size(int64_t n, int64_t k); /* floats; -1 if LAPACK cannot say */
peftc_status peftc_sym_eig_top(float *w /* (n) first k overwritten: eigenvalues, descending; rest scratch */,
                               float *v /* (k, n) overwritten: row i is the eigenvector of w[i] */,
                               float *a /* (n, n) destroyed */, float *work /* workspace_size() floats */, int64_t n,
                               int64_t k);

/* ---- the library behind these wrappers (blas.c only) ----------------------------------------------
 * The scipy-openblas32 wheel exports every symbol with a prefix (scipy_cblas_sgemm, scipy_LAPACKE_...,
 * scipy_openblas_...), so that it never collides with another OpenBLAS in the process, and its headers
 * declare only the prefixed names; its pkg-config text defines BLAS_SYMBOL_PREFIX=scipy_ (setup.py passes
 * it on). Each plain name blas.c calls is mapped onto the prefixed one here, and nowhere else. A call to
 * a name missing from this list is an implicit declaration in the wheel build, which setup.py makes an
 * error. */
#ifdef PEFTC_BLAS_LIBRARY
#include <cblas.h>
#include <lapacke.h>

#ifdef BLAS_SYMBOL_PREFIX
#define PEFTC_BLAS_PASTE_(prefix, name) prefix##name
#define PEFTC_BLAS_PASTE(prefix, name) PEFTC_BLAS_PASTE_(prefix, name)
#define cblas_sgemm PEFTC_BLAS_PASTE(BLAS_SYMBOL_PREFIX, cblas_sgemm)
#define cblas_ssyrk PEFTC_BLAS_PASTE(BLAS_SYMBOL_PREFIX, cblas_ssyrk)
#define LAPACKE_ssyevr_work PEFTC_BLAS_PASTE(BLAS_SYMBOL_PREFIX, LAPACKE_ssyevr_work)
#define LAPACKE_slamch_work PEFTC_BLAS_PASTE(BLAS_SYMBOL_PREFIX, LAPACKE_slamch_work)
#define openblas_get_num_threads PEFTC_BLAS_PASTE(BLAS_SYMBOL_PREFIX, openblas_get_num_threads)
#define openblas_set_num_threads PEFTC_BLAS_PASTE(BLAS_SYMBOL_PREFIX, openblas_set_num_threads)
#endif
#endif

#endif
