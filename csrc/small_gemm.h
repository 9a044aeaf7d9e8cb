/* small_gemm.h: register-blocked matrix products for the small GEMMs of the core, where a BLAS call
 * spends about as long packing its operands and dispatching as multiplying: the per-(batch, head)
 * products of attention.c (head size 32 to 64) and the GEMMs of conv.c and winograd.c (a few dozen
 * channels against a wide patch matrix). They read their operands in place through row strides.
 * Every output entry is one fused multiply-add chain over k in increasing order, so the result
 * depends neither on the blocking nor on which thread computes it. Internal to the core, not part of
 * the public header. */
#ifndef PEFTC_SMALL_GEMM_H
#define PEFTC_SMALL_GEMM_H

#include <stdint.h>

/* C (M,N) = A (M,K) B^T for B (N,K); C overwritten. Row strides lda, ldb, ldc. Any sizes >= 0 (K = 0
 * gives zeros). In attention: the scores q_h k_h^T and dP = dout_h v_h^T (M = N = T, K = HS). */
void peftc_small_gemm_abt(float *C, const float *A, const float *B, int64_t M, int64_t N, int64_t K, int64_t lda,
                          int64_t ldb, int64_t ldc);

/* C (M,N) = op(A) B (+ C when accumulate != 0), op(A) = A (M,K) or, with trans_a, A^T for A (K,M);
 * B (K,N). Row strides lda, ldb, ldc. Any sizes >= 0. In attention: P v_h, dS k_h (M = T, N = HS,
 * K = T) and, transposed, P^T dout_h and dS^T q_h. In conv.c and winograd.c: weights times a patch
 * matrix or transformed tiles (M = output channels, K = input channels x taps, N = positions), and
 * the transposed weights times output gradients. */
void peftc_small_gemm_ab(float *C, const float *A, const float *B, int trans_a, int accumulate, int64_t M, int64_t N,
                         int64_t K, int64_t lda, int64_t ldb, int64_t ldc);

/* peftc_small_gemm_ab without transpose, B's row k read at rows[k] (K pointers, each to N floats): an
 * implicit patch matrix whose rows are shifted views of padded images, with no copy. */
void peftc_small_gemm_ab_rows(float *C, const float *A, const float *const *rows, int accumulate, int64_t M, int64_t N,
                              int64_t K, int64_t lda, int64_t ldc);

#endif
