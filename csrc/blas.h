/* blas.h: the only door to BLAS and LAPACK. Row-major throughout; sizes are int64_t here and are
 * checked against the 32-bit interface of the system OpenBLAS before every call. */
#ifndef PEFTC_BLAS_H
#define PEFTC_BLAS_H

#include <stdint.h>

#include "peftc.h"

/* C (M,N) = alpha * op(A) op(B) + beta * C, row-major, op(X) = X or X^T as trans_x says. */
peftc_status peftc_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                         const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                         int64_t ldc);

/* true when every size fits the BLAS integer */
int peftc_blas_sizes_ok(int64_t a, int64_t b, int64_t c);

/* the number of threads OpenBLAS runs a large GEMM on */
int64_t peftc_blas_threads(void);

/* Largest M*N*K that OpenBLAS 0.3.x computes on the calling thread alone (its SMP threshold,
 * 65536 * GEMM_MULTITHREAD_THRESHOLD with the default threshold 4). Kernels that run GEMMs on
 * several threads of their own keep each call at or below it; a larger call would still be correct,
 * only serialised by OpenBLAS's level-3 lock. */
#define PEFTC_BLAS_SINGLE_THREAD_MNK 262144

/* ---- LAPACK (EVA) --------------------------------------------------------------------------------
 * Thin SVD of the row-major (rows, cols) matrix a = U diag(s) vt keeping only s and vt, with
 * p = min(rows, cols). LAPACK's column-major sgesdd runs on a^T (the same memory), whose left singular
 * vectors are a's right ones, so no transposed copy is made and LAPACKE allocates nothing.
 * work holds the LAPACK scratch, the integer scratch and the unused (p, rows) factor. */
int64_t peftc_svd_right_workspace_size(int64_t rows, int64_t cols); /* floats; -1 if LAPACK cannot say */
peftc_status peftc_svd_right(float *vt /* (p, cols) overwritten */, float *s /* (p) overwritten, descending */,
                             float *a /* (rows, cols) destroyed */, float *work /* workspace_size() floats */,
                             int64_t rows, int64_t cols);

#endif
