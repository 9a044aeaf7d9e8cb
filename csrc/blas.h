/* blas.h: the only door to BLAS and LAPACK. Row-major throughout; sizes are int64_t here and are
 * checked against OpenBLAS's 32-bit interface before every call. The OpenBLAS is the scipy-openblas32
 * wheel's (the default build) or the system's (PEFTC_BLAS=system); only blas.c sees its headers, through
 * the section at the end of this file. */
#ifndef PEFTC_BLAS_H
#define PEFTC_BLAS_H

#include <stdint.h>

#include "peftc.h"

/* C (M,N) = alpha * op(A) op(B) + beta * C, row-major, op(X) = X or X^T as trans_x says. */
peftc_status peftc_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                         int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* true when every size fits the BLAS integer */
int peftc_blas_sizes_ok(int64_t a, int64_t b, int64_t c);

/* the number of threads OpenBLAS runs a large GEMM on (outside any single-thread hold) */
int64_t peftc_blas_threads(void);

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
