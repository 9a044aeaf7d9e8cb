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

#endif
