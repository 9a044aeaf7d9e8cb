/* small_gemm.c: the small GEMMs of attention.c, conv.c and winograd.c (see small_gemm.h),
 * register-blocked in plain C with the target-wide vectors of vec.h. A register block is MR rows by
 * NR vectors of C, held in registers over the whole k loop: each step loads NR vectors of one row of
 * the right operand and multiplies them by MR broadcast scalars of the left one.
 *   C = A B^T: the vectors run along C's rows, which are B's rows, so B is first transposed a panel of
 *   NB columns (and KC k's) at a time into a stack buffer; A's scalars are read in place.
 *   C = op(A) B: B's rows are C's rows, read in place; so are A's scalars, with or without transpose.
 *   The last N % PEFTC_VL columns go through a zero-padded copy of B's columns, KC k's at a time.
 * Not here: what the products are for, and any GEMM big enough for OpenBLAS. */
#include "small_gemm.h"

#include <math.h>
#include <string.h>

#include "vec.h"

/* MR x NR accumulators leave registers for NR right-operand vectors and a broadcast (32 vector
 * registers with AVX-512, 16 below it) */
#if PEFTC_VL == 16
#define MR 8
#else
#define MR 6
#endif
#define NR 2
#define NB (NR * PEFTC_VL) /* columns of a register block */
#define KC 128             /* k's of a packed B^T panel: a KC x NB stack buffer, 16 KB with AVX-512 */

/* c + x * b, rounded once on targets with FMA: ISO C does not contract a * b + c by itself, and the
 * fmaf loop compiles to one instruction. Without FMA, fmaf is a library call per lane, so there it is
 * a multiply and an add. */
static inline peftc_vf vmadd(float x, peftc_vf b, peftc_vf c)
{
#ifdef __FMA__
    peftc_vf r;
#pragma GCC unroll 16
    for (int l = 0; l < PEFTC_VL; l++)
        r[l] = fmaf(x, b[l], c[l]);
    return r;
#else
    return b * x + c;
#endif
}

/* C rows [0, mr) x columns [0, nb) (overwritten, or accumulated with accumulate) += sum over k < kc of
 * a[r * lda + k] * panel[k * NB + n]; panel (kc, NB) is B^T, zero in the columns past nb. Rows from mr
 * to MR repeat row mr - 1 so that the k loop stays one fixed register block; they are not stored. */
__attribute__((always_inline)) static inline void block_abt(float *c, const float *a, const float *panel, int64_t mr,
                                                            int64_t nb, int64_t kc, int64_t lda, int64_t ldc,
                                                            int accumulate)
{
    const int full = mr == MR && nb == NB;
    const float *ar[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++)
        ar[r] = a + (r < mr ? r : mr - 1) * lda;
    float edge[MR][NB]; /* the block of a partial tile, through memory */
    peftc_vf s[MR][NR];
    if (accumulate && full) {
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++)
#pragma GCC unroll 16
            for (int v = 0; v < NR; v++)
                s[r][v] = vec_load(c + r * ldc + v * PEFTC_VL);
    } else if (accumulate) {
        memset(edge, 0, sizeof edge);
        for (int64_t r = 0; r < mr; r++)
            memcpy(edge[r], c + r * ldc, (size_t)nb * sizeof(float));
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++)
#pragma GCC unroll 16
            for (int v = 0; v < NR; v++)
                s[r][v] = vec_load(edge[r] + v * PEFTC_VL);
    } else {
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++)
#pragma GCC unroll 16
            for (int v = 0; v < NR; v++)
                s[r][v] = (peftc_vf){0.0f};
    }
    for (int64_t k = 0; k < kc; k++) {
        peftc_vf b[NR];
#pragma GCC unroll 16
        for (int v = 0; v < NR; v++)
            b[v] = vec_load(panel + k * NB + v * PEFTC_VL);
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            const float x = ar[r][k];
#pragma GCC unroll 16
            for (int v = 0; v < NR; v++)
                s[r][v] = vmadd(x, b[v], s[r][v]);
        }
    }
    if (full) {
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++)
#pragma GCC unroll 16
            for (int v = 0; v < NR; v++)
                vec_store(c + r * ldc + v * PEFTC_VL, s[r][v]);
        return;
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 16
        for (int v = 0; v < NR; v++)
            vec_store(edge[r] + v * PEFTC_VL, s[r][v]);
    for (int64_t r = 0; r < mr; r++)
        memcpy(c + r * ldc, edge[r], (size_t)nb * sizeof(float));
}

void peftc_small_gemm_abt(float *C, const float *A, const float *B, int64_t M, int64_t N, int64_t K, int64_t lda,
                          int64_t ldb, int64_t ldc)
{
    float panel[KC * NB];
    for (int64_t j0 = 0; j0 < N; j0 += NB) {
        const int64_t nb = N - j0 < NB ? N - j0 : NB;
        /* k in chunks of KC, each chunk continuing the previous one's sums: the same chain per entry */
        int64_t k0 = 0;
        do {
            const int64_t kc = K - k0 < KC ? K - k0 : KC;
            for (int64_t n = 0; n < nb; n++)
                for (int64_t k = 0; k < kc; k++)
                    panel[k * NB + n] = B[(j0 + n) * ldb + k0 + k];
            for (int64_t n = nb; n < NB; n++)
                for (int64_t k = 0; k < kc; k++)
                    panel[k * NB + n] = 0.0f;
            for (int64_t i0 = 0; i0 < M; i0 += MR)
                block_abt(C + i0 * ldc + j0, A + i0 * lda + k0, panel, M - i0 < MR ? M - i0 : MR, nb, kc, lda, ldc,
                          k0 > 0);
            k0 += kc;
        } while (k0 < K);
    }
}

/* C rows [0, mr) x columns [0, nv * PEFTC_VL) (overwritten, or accumulated with accumulate) += sum over
 * k < K of op(A)[r][k] * B[k][n], op(A)[r][k] = a[r * lda + k], or a[k * lda + r] with trans_a;
 * B[k][n] = b[k * ldb + n], or rows[k][boff + n] when rows is given. Rows from mr to MR repeat row
 * mr - 1 (computed, not stored), as in block_abt. */
__attribute__((always_inline)) static inline void block_ab(float *c, const float *a, const float *b,
                                                           const float *const *rows, int64_t boff, int trans_a, int nv,
                                                           int height, int64_t mr, int64_t K, int64_t lda, int64_t ldb,
                                                           int64_t ldc, int accumulate)
{
    /* height: the register block's rows, MR or MR / 2 (a constant at each call); mr <= height */
    int64_t at[MR]; /* offset of op(A)[r][0] in a */
#pragma GCC unroll 16
    for (int r = 0; r < height; r++)
        at[r] = (r < mr ? r : mr - 1) * (trans_a ? 1 : lda);
    const int64_t kstep = trans_a ? lda : 1;
    peftc_vf s[MR][NR];
#pragma GCC unroll 16
    for (int r = 0; r < height; r++)
#pragma GCC unroll 16
        for (int v = 0; v < NR; v++)
            s[r][v] = accumulate && r < mr && v < nv ? vec_load(c + r * ldc + v * PEFTC_VL) : (peftc_vf){0.0f};
    for (int64_t k = 0; k < K; k++) {
        const float *ak = a + k * kstep, *brow = rows ? rows[k] + boff : b + k * ldb;
        peftc_vf bk[NR];
#pragma GCC unroll 16
        for (int v = 0; v < nv; v++)
            bk[v] = vec_load(brow + v * PEFTC_VL);
#pragma GCC unroll 16
        for (int r = 0; r < height; r++) {
            const float x = ak[at[r]];
#pragma GCC unroll 16
            for (int v = 0; v < nv; v++)
                s[r][v] = vmadd(x, bk[v], s[r][v]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < height; r++)
#pragma GCC unroll 16
        for (int v = 0; v < nv; v++)
            if (r < mr)
                vec_store(c + r * ldc + v * PEFTC_VL, s[r][v]);
}

/* block_ab over all row blocks of one column strip; rows (NULL or not), trans_a and nv are constants
 * at each call, so each strip is compiled on its own */
__attribute__((always_inline)) static inline void strip_ab(float *C, const float *A, const float *B,
                                                           const float *const *rows, int64_t boff, int trans_a, int nv,
                                                           int accumulate, int64_t M, int64_t K, int64_t lda,
                                                           int64_t ldb, int64_t ldc)
{
    int64_t i0 = 0;
    for (; M - i0 > MR / 2; i0 += MR)
        block_ab(C + i0 * ldc, A + i0 * (trans_a ? 1 : lda), B, rows, boff, trans_a, nv, MR, M - i0 < MR ? M - i0 : MR,
                 K, lda, ldb, ldc, accumulate);
    if (i0 < M) /* at most MR / 2 rows left: a half-height block rather than a full one mostly repeated */
        block_ab(C + i0 * ldc, A + i0 * (trans_a ? 1 : lda), B, rows, boff, trans_a, nv, MR / 2, M - i0, K, lda, ldb,
                 ldc, accumulate);
}

/* The last nt < PEFTC_VL columns: B's columns (B + k * ldb, or rows[k] + boff) copied KC k's at a time into a
 * panel (kc, PEFTC_VL) zero past nt, each row block summed in an edge block across the chunks (a stored
 * float reloads exactly, so every entry is still one chain over k in order), then its nt columns
 * copied out. */
static void tail_ab(float *C, const float *A, const float *B, const float *const *rows, int64_t boff, int trans_a,
                    int accumulate, int64_t M, int64_t nt, int64_t K, int64_t lda, int64_t ldb, int64_t ldc)
{
    float panel[KC * PEFTC_VL], edge[MR * PEFTC_VL];
    for (int64_t i0 = 0; i0 < M; i0 += MR) {
        const int64_t mr = M - i0 < MR ? M - i0 : MR;
        for (int64_t r = 0; r < mr; r++)
            for (int64_t n = 0; n < PEFTC_VL; n++)
                edge[r * PEFTC_VL + n] = accumulate && n < nt ? C[(i0 + r) * ldc + n] : 0.0f;
        int64_t k0 = 0;
        do {
            const int64_t kc = K - k0 < KC ? K - k0 : KC;
            for (int64_t k = 0; k < kc; k++) {
                const float *brow = rows ? rows[k0 + k] + boff : B + (k0 + k) * ldb;
                for (int64_t n = 0; n < PEFTC_VL; n++)
                    panel[k * PEFTC_VL + n] = n < nt ? brow[n] : 0.0f;
            }
            const int keep = accumulate || k0 > 0;
            if (trans_a)
                block_ab(edge, A + i0 + k0 * lda, panel, NULL, 0, 1, 1, MR, mr, kc, lda, PEFTC_VL, PEFTC_VL, keep);
            else
                block_ab(edge, A + i0 * lda + k0, panel, NULL, 0, 0, 1, MR, mr, kc, lda, PEFTC_VL, PEFTC_VL, keep);
            k0 += kc;
        } while (k0 < K);
        for (int64_t r = 0; r < mr; r++)
            memcpy(C + (i0 + r) * ldc, edge + r * PEFTC_VL, (size_t)nt * sizeof(float));
    }
}

/* C = op(A) B over N columns: whole register strips of NR vectors, then single vectors, then the tail;
 * B's rows at B + k * ldb, or at rows[k] (B NULL) from column 0 of this call. Inlined with constant
 * rows (NULL or not) and trans_a at each call, so every combination is compiled on its own. */
__attribute__((always_inline)) static inline void gemm_ab(float *C, const float *A, const float *B,
                                                          const float *const *rows, int trans_a, int accumulate,
                                                          int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                                                          int64_t ldc)
{
    int64_t n0 = 0;
    for (; n0 + NB <= N; n0 += NB)
        strip_ab(C + n0, A, rows ? NULL : B + n0, rows, n0, trans_a, NR, accumulate, M, K, lda, ldb, ldc);
    for (; n0 + PEFTC_VL <= N; n0 += PEFTC_VL)
        strip_ab(C + n0, A, rows ? NULL : B + n0, rows, n0, trans_a, 1, accumulate, M, K, lda, ldb, ldc);
    if (n0 < N)
        tail_ab(C + n0, A, rows ? NULL : B + n0, rows, n0, trans_a, accumulate, M, N - n0, K, lda, ldb, ldc);
}

void peftc_small_gemm_ab(float *C, const float *A, const float *B, int trans_a, int accumulate, int64_t M, int64_t N,
                         int64_t K, int64_t lda, int64_t ldb, int64_t ldc)
{
    if (trans_a)
        gemm_ab(C, A, B, NULL, 1, accumulate, M, N, K, lda, ldb, ldc);
    else
        gemm_ab(C, A, B, NULL, 0, accumulate, M, N, K, lda, ldb, ldc);
}

void peftc_small_gemm_ab_rows(float *C, const float *A, const float *const *rows, int accumulate, int64_t M, int64_t N,
                              int64_t K, int64_t lda, int64_t ldc)
{
    gemm_ab(C, A, NULL, rows, 0, accumulate, M, N, K, lda, 0, ldc);
}
