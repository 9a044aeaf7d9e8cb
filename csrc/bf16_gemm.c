/* bf16_gemm.c: the frozen bf16 linear layer of bf16_gemm.h: rounding and packing, the run-time choice
 * of instruction set, and the forward and input-gradient products for each path. Each x86 path is a
 * set of functions compiled for its instruction set with target attributes, whatever the flags of the
 * rest of the build, and called only after peftc_bf16_path_supported says the CPU runs it.
 *
 * Blocking: the forward walks blocks of FWD_OB weight rows (at most 192 KB of bf16 at KP = 1536, held
 * in L2) and, inside one, the rows of x MR at a time (a few KB, held in L1 while every weight row of
 * the block passes); a register block is MR rows of x by NO rows of w, its MR x NO vector accumulators
 * summed across lanes once at the end of the k loop. The backward walks blocks of BWD_NB rows of dy (in
 * L2) and, inside one, strips of SW columns of dx; a register block is MR rows by SW columns of dx
 * held in registers over the whole o loop, each step one widened strip of a weight row times MR
 * broadcast entries of dy. Not here: the adapters' float32 products (lora.c), any float32 GEMM (blas.c). */
#include "bf16_gemm.h"

#include "parallel.h"

#if defined(__x86_64__) || defined(__i386__)
#define BF16_X86 1
#include <immintrin.h>
#endif

/* multiply-adds per thread below which one thread does all (a part costs microseconds to hand over) */
#define MIN_FMAS_PER_THREAD (1 << 19)
#define FWD_OB 64 /* weight rows per forward block */
#define BWD_NB 48 /* dy rows per backward block */

/* ---- CPU features ------------------------------------------------------------------------------ */

int peftc_bf16_path_supported(peftc_bf16_path path)
{
    switch (path) {
    case PEFTC_BF16_GENERIC:
        return 1;
#ifdef BF16_X86
    /* libgcc's CPUID reading also checks that the OS saves the wider registers (XGETBV) */
    case PEFTC_BF16_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case PEFTC_BF16_AVX512F:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case PEFTC_BF16_AVX512BF16:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    default:
        return 0;
    }
}

peftc_bf16_path peftc_bf16_path_best(void)
{
    for (int p = PEFTC_BF16_NPATHS - 1; p > 0; p--)
        if (peftc_bf16_path_supported((peftc_bf16_path)p))
            return (peftc_bf16_path)p;
    return PEFTC_BF16_GENERIC;
}

/* ---- rounding and packing ------------------------------------------------------------------------ */

static int sizes_ok(int64_t N, int64_t IC, int64_t OC)
{
    const int64_t lim = (int64_t)1 << 40;
    return N >= 0 && IC >= 0 && OC >= 0 && N < lim && IC < lim && OC < lim &&
           (N == 0 || peftc_bf16_padded_ic(IC) <= INT64_MAX / 4 / N) &&
           (OC == 0 || peftc_bf16_padded_ic(IC) <= INT64_MAX / 4 / OC);
}

peftc_status peftc_bf16_round(uint16_t *out, const float *x, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    for (int64_t i = 0; i < P; i++)
        out[i] = peftc_bf16_from_f32(x[i]);
    return PEFTC_OK;
}

/* rows [n0, n1) of x (., IC) into bf16 rows of length KP, zero past IC */
static void round_rows(uint16_t *out, const float *x, int64_t n0, int64_t n1, int64_t IC, int64_t KP)
{
    for (int64_t n = n0; n < n1; n++) {
        uint16_t *o = out + n * KP;
        const float *xr = x + n * IC;
        for (int64_t k = 0; k < IC; k++)
            o[k] = peftc_bf16_from_f32(xr[k]);
        for (int64_t k = IC; k < KP; k++)
            o[k] = 0;
    }
}

peftc_status peftc_bf16_pack(uint16_t *wp, const float *w, int64_t IC, int64_t OC)
{
    if (!sizes_ok(0, IC, OC))
        return PEFTC_ERR_SIZE;
    round_rows(wp, w, 0, OC, IC, peftc_bf16_padded_ic(IC));
    return PEFTC_OK;
}

peftc_status peftc_bf16_unpack(float *w, const uint16_t *wp, int64_t IC, int64_t OC)
{
    if (!sizes_ok(0, IC, OC))
        return PEFTC_ERR_SIZE;
    const int64_t KP = peftc_bf16_padded_ic(IC);
    for (int64_t o = 0; o < OC; o++)
        for (int64_t k = 0; k < IC; k++)
            w[o * IC + k] = peftc_bf16_to_f32(wp[o * KP + k]);
    return PEFTC_OK;
}

int64_t peftc_bf16_linear_workspace_size(int64_t N, int64_t IC, peftc_bf16_path path)
{
    if (!sizes_ok(N, IC, 0))
        return -1;
    return path == PEFTC_BF16_AVX512BF16 ? N * peftc_bf16_padded_ic(IC) / 2 : 0;
}

/* ---- the jobs, shared by every path ---------------------------------------------------------------- */

typedef struct {
    float *y;           /* (N,OC) */
    const float *x;     /* (N,IC) */
    const uint16_t *xb; /* (N,KP): x in bf16, AVX512BF16 only */
    const uint16_t *wp; /* (OC,KP) */
    const float *b;     /* (OC) or NULL */
    int accumulate;
    int64_t N, IC, KP, OC;
} fwd_job;

typedef struct {
    float *dx;          /* (N,IC) */
    const float *dy;    /* (N,OC) */
    const uint16_t *wp; /* (OC,KP) */
    int64_t N, IC, KP, OC;
} bwd_job;

/* what a forward entry adds its sum to: the entry itself when accumulating, and the bias */
static inline float fwd_base(const fwd_job *j, int64_t n, int64_t o)
{
    return (j->accumulate ? j->y[n * j->OC + o] : 0.0f) + (j->b ? j->b[o] : 0.0f);
}

static inline int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* ---- generic C ------------------------------------------------------------------------------------- */

/* y[n0:n1, o0:o1]: per entry 8 partial sums over k in steps of 8, then the k-tail, then their fixed sum */
static void fwd_tile_generic(const fwd_job *j, int64_t n0, int64_t n1, int64_t o0, int64_t o1)
{
    const int64_t IC = j->IC, KP = j->KP, k8 = IC / 8 * 8;
    for (int64_t n = n0; n < n1; n++) {
        const float *xr = j->x + n * IC;
        for (int64_t o = o0; o < o1; o++) {
            const uint16_t *wr = j->wp + o * KP;
            float s[8] = {0};
            for (int64_t k = 0; k < k8; k += 8)
                for (int l = 0; l < 8; l++)
                    s[l] += xr[k + l] * peftc_bf16_to_f32(wr[k + l]);
            for (int64_t k = k8; k < IC; k++)
                s[k - k8] += xr[k] * peftc_bf16_to_f32(wr[k]);
            const float sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
            j->y[n * j->OC + o] = fwd_base(j, n, o) + sum;
        }
    }
}

/* dx[n0:n1, k0:k1] += dy[n0:n1, :] wp[:, k0:k1], per entry one chain over o in order */
static void bwd_tile_generic(const bwd_job *j, int64_t n0, int64_t n1, int64_t k0, int64_t k1)
{
    for (int64_t n = n0; n < n1; n++) {
        float *dxr = j->dx + n * j->IC;
        for (int64_t o = 0; o < j->OC; o++) {
            const float d = j->dy[n * j->OC + o];
            const uint16_t *wr = j->wp + o * j->KP;
            for (int64_t k = k0; k < k1; k++)
                dxr[k] += d * peftc_bf16_to_f32(wr[k]);
        }
    }
}

#ifdef BF16_X86
/* ---- AVX2 + FMA ------------------------------------------------------------------------------------ */
#define AVX2 __attribute__((target("avx2,fma")))

/* 8 bf16 at p, widened to float32 */
AVX2 static inline __m256 widen8(const uint16_t *p)
{
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* lanes l < n set (n in [0, 8]) */
AVX2 static inline __m256i mask8(int64_t n)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lanes);
}

/* [sum a, sum b, sum c, sum d], each summed in one fixed order */
AVX2 static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    const __m256 abcd = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* register block: MR rows of x by NO rows of w, 12 accumulators of the 16 vector registers */
#define A2_MR 4
#define A2_NO 3

AVX2 static void fwd_tile_avx2(const fwd_job *j, int64_t n0, int64_t n1, int64_t o0, int64_t o1)
{
    const int64_t IC = j->IC, KP = j->KP, k8 = IC / 8 * 8;
    const __m256i tail = mask8(IC - k8);
    for (int64_t n = n0; n < n1; n += A2_MR) {
        const int64_t mr = min64(A2_MR, n1 - n);
        const float *xr[A2_MR]; /* rows past mr repeat the last one: computed, not stored */
        for (int i = 0; i < A2_MR; i++)
            xr[i] = j->x + (n + (i < mr ? i : mr - 1)) * IC;
        for (int64_t o = o0; o < o1; o += A2_NO) {
            const int64_t no = min64(A2_NO, o1 - o);
            const uint16_t *wr[A2_NO];
            for (int c = 0; c < A2_NO; c++)
                wr[c] = j->wp + (o + (c < no ? c : no - 1)) * KP;
            __m256 acc[A2_MR][A2_NO];
#pragma GCC unroll 4
            for (int i = 0; i < A2_MR; i++)
#pragma GCC unroll 4
                for (int c = 0; c < A2_NO; c++)
                    acc[i][c] = _mm256_setzero_ps();
            for (int64_t k = 0; k < k8; k += 8) {
                const __m256 w0 = widen8(wr[0] + k), w1 = widen8(wr[1] + k), w2 = widen8(wr[2] + k);
#pragma GCC unroll 4
                for (int i = 0; i < A2_MR; i++) {
                    const __m256 xv = _mm256_loadu_ps(xr[i] + k);
                    acc[i][0] = _mm256_fmadd_ps(xv, w0, acc[i][0]);
                    acc[i][1] = _mm256_fmadd_ps(xv, w1, acc[i][1]);
                    acc[i][2] = _mm256_fmadd_ps(xv, w2, acc[i][2]);
                }
            }
            if (k8 < IC) { /* x's k-tail through a masked load; the packed rows are zero past IC */
                const __m256 w0 = widen8(wr[0] + k8), w1 = widen8(wr[1] + k8), w2 = widen8(wr[2] + k8);
#pragma GCC unroll 4
                for (int i = 0; i < A2_MR; i++) {
                    const __m256 xv = _mm256_maskload_ps(xr[i] + k8, tail);
                    acc[i][0] = _mm256_fmadd_ps(xv, w0, acc[i][0]);
                    acc[i][1] = _mm256_fmadd_ps(xv, w1, acc[i][1]);
                    acc[i][2] = _mm256_fmadd_ps(xv, w2, acc[i][2]);
                }
            }
            for (int64_t i = 0; i < mr; i++) {
                float s[4];
                _mm_storeu_ps(s, hsum4(acc[i][0], acc[i][1], acc[i][2], acc[i][2]));
                for (int64_t c = 0; c < no; c++)
                    j->y[(n + i) * j->OC + o + c] = fwd_base(j, n + i, o + c) + s[c];
            }
        }
    }
}

/* register block: MR rows of dx by 2 vectors (16 columns), 12 accumulators */
#define A2_BMR 6

AVX2 static void bwd_tile_avx2(const bwd_job *j, int64_t n0, int64_t n1, int64_t k0, int64_t k1)
{
    const int64_t IC = j->IC, KP = j->KP, OC = j->OC;
    for (int64_t nb = n0; nb < n1; nb += BWD_NB) {
        const int64_t nb1 = min64(nb + BWD_NB, n1);
        for (int64_t k = k0; k < k1; k += 16) {
            const int64_t nk = min64(16, IC - k); /* k is a multiple of 16 and KP of 32: the weight loads fit */
            const __m256i m0 = mask8(nk < 8 ? nk : 8), m1 = mask8(nk > 8 ? nk - 8 : 0);
            for (int64_t n = nb; n < nb1; n += A2_BMR) {
                const int64_t mr = min64(A2_BMR, nb1 - n);
                const float *dyr[A2_BMR];
                for (int i = 0; i < A2_BMR; i++)
                    dyr[i] = j->dy + (n + (i < mr ? i : mr - 1)) * OC;
                __m256 acc[A2_BMR][2];
#pragma GCC unroll 8
                for (int i = 0; i < A2_BMR; i++) {
                    float *d = j->dx + (n + (i < mr ? i : mr - 1)) * IC + k;
                    acc[i][0] = _mm256_maskload_ps(d, m0);
                    acc[i][1] = _mm256_maskload_ps(d + 8, m1);
                }
                const uint16_t *wk = j->wp + k;
                for (int64_t o = 0; o < OC; o++) {
                    const __m256 w0 = widen8(wk + o * KP), w1 = widen8(wk + o * KP + 8);
#pragma GCC unroll 8
                    for (int i = 0; i < A2_BMR; i++) {
                        const __m256 d = _mm256_broadcast_ss(dyr[i] + o);
                        acc[i][0] = _mm256_fmadd_ps(d, w0, acc[i][0]);
                        acc[i][1] = _mm256_fmadd_ps(d, w1, acc[i][1]);
                    }
                }
                for (int64_t i = 0; i < mr; i++) {
                    float *d = j->dx + (n + i) * IC + k;
                    _mm256_maskstore_ps(d, m0, acc[i][0]);
                    _mm256_maskstore_ps(d + 8, m1, acc[i][1]);
                }
            }
        }
    }
}

/* ---- AVX-512F: bf16 widened to float32, 16 lanes ---------------------------------------------------- */
#define AVX512 __attribute__((target("avx512f,avx2,fma")))

AVX512 static inline __m512 widen16(const uint16_t *p)
{
    const __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* the 8-lane sum of a vector's two halves */
AVX512 static inline __m256 halves(__m512 a)
{
    return _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}

AVX512 static inline __m128 hsum4_512(__m512 a, __m512 b, __m512 c, __m512 d)
{
    const __m256 ab = _mm256_hadd_ps(halves(a), halves(b)), cd = _mm256_hadd_ps(halves(c), halves(d));
    const __m256 abcd = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* register block: 4 rows of x by 4 rows of w, 16 of the 32 vector registers */
#define A5_MR 4
#define A5_NO 4

AVX512 static void fwd_tile_avx512f(const fwd_job *j, int64_t n0, int64_t n1, int64_t o0, int64_t o1)
{
    const int64_t IC = j->IC, KP = j->KP, k16 = IC / 16 * 16;
    const __mmask16 tail = (__mmask16)((1u << (IC - k16)) - 1u);
    for (int64_t n = n0; n < n1; n += A5_MR) {
        const int64_t mr = min64(A5_MR, n1 - n);
        const float *xr[A5_MR];
        for (int i = 0; i < A5_MR; i++)
            xr[i] = j->x + (n + (i < mr ? i : mr - 1)) * IC;
        for (int64_t o = o0; o < o1; o += A5_NO) {
            const int64_t no = min64(A5_NO, o1 - o);
            const uint16_t *wr[A5_NO];
            for (int c = 0; c < A5_NO; c++)
                wr[c] = j->wp + (o + (c < no ? c : no - 1)) * KP;
            __m512 acc[A5_MR][A5_NO];
#pragma GCC unroll 4
            for (int i = 0; i < A5_MR; i++)
#pragma GCC unroll 4
                for (int c = 0; c < A5_NO; c++)
                    acc[i][c] = _mm512_setzero_ps();
            for (int64_t k = 0; k < k16; k += 16) {
                __m512 w[A5_NO];
#pragma GCC unroll 4
                for (int c = 0; c < A5_NO; c++)
                    w[c] = widen16(wr[c] + k);
#pragma GCC unroll 4
                for (int i = 0; i < A5_MR; i++) {
                    const __m512 xv = _mm512_loadu_ps(xr[i] + k);
#pragma GCC unroll 4
                    for (int c = 0; c < A5_NO; c++)
                        acc[i][c] = _mm512_fmadd_ps(xv, w[c], acc[i][c]);
                }
            }
            if (k16 < IC) {
                __m512 w[A5_NO];
#pragma GCC unroll 4
                for (int c = 0; c < A5_NO; c++)
                    w[c] = widen16(wr[c] + k16);
#pragma GCC unroll 4
                for (int i = 0; i < A5_MR; i++) {
                    const __m512 xv = _mm512_maskz_loadu_ps(tail, xr[i] + k16);
#pragma GCC unroll 4
                    for (int c = 0; c < A5_NO; c++)
                        acc[i][c] = _mm512_fmadd_ps(xv, w[c], acc[i][c]);
                }
            }
            for (int64_t i = 0; i < mr; i++) {
                float s[4];
                _mm_storeu_ps(s, hsum4_512(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
                for (int64_t c = 0; c < no; c++)
                    j->y[(n + i) * j->OC + o + c] = fwd_base(j, n + i, o + c) + s[c];
            }
        }
    }
}

/* register block: 8 rows of dx by 2 vectors (32 columns, one KP step), 16 accumulators */
#define A5_BMR 8

AVX512 static void bwd_tile_avx512f(const bwd_job *j, int64_t n0, int64_t n1, int64_t k0, int64_t k1)
{
    const int64_t IC = j->IC, KP = j->KP, OC = j->OC;
    for (int64_t nb = n0; nb < n1; nb += BWD_NB) {
        const int64_t nb1 = min64(nb + BWD_NB, n1);
        for (int64_t k = k0; k < k1; k += 32) {
            const int64_t nk = min64(32, IC - k);
            const __mmask16 m0 = (__mmask16)(nk >= 16 ? 0xffffu : (1u << nk) - 1u);
            const __mmask16 m1 = (__mmask16)(nk >= 32 ? 0xffffu : nk > 16 ? (1u << (nk - 16)) - 1u : 0u);
            for (int64_t n = nb; n < nb1; n += A5_BMR) {
                const int64_t mr = min64(A5_BMR, nb1 - n);
                const float *dyr[A5_BMR];
                for (int i = 0; i < A5_BMR; i++)
                    dyr[i] = j->dy + (n + (i < mr ? i : mr - 1)) * OC;
                __m512 acc[A5_BMR][2];
#pragma GCC unroll 8
                for (int i = 0; i < A5_BMR; i++) {
                    const float *d = j->dx + (n + (i < mr ? i : mr - 1)) * IC + k;
                    acc[i][0] = _mm512_maskz_loadu_ps(m0, d);
                    acc[i][1] = _mm512_maskz_loadu_ps(m1, d + 16);
                }
                const uint16_t *wk = j->wp + k;
                for (int64_t o = 0; o < OC; o++) {
                    const __m512 w0 = widen16(wk + o * KP), w1 = widen16(wk + o * KP + 16);
#pragma GCC unroll 8
                    for (int i = 0; i < A5_BMR; i++) {
                        const __m512 d = _mm512_set1_ps(dyr[i][o]);
                        acc[i][0] = _mm512_fmadd_ps(d, w0, acc[i][0]);
                        acc[i][1] = _mm512_fmadd_ps(d, w1, acc[i][1]);
                    }
                }
                for (int64_t i = 0; i < mr; i++) {
                    float *d = j->dx + (n + i) * IC + k;
                    _mm512_mask_storeu_ps(d, m0, acc[i][0]);
                    _mm512_mask_storeu_ps(d + 16, m1, acc[i][1]);
                }
            }
        }
    }
}

/* ---- AVX512-BF16: vdpbf16ps on x and w both in bf16 ------------------------------------------------ */
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512bf16,avx2,fma")))

AVX512BF16 static inline __m512bh load_bh(const uint16_t *p)
{
    return (__m512bh)_mm512_loadu_si512((const void *)p);
}

/* as fwd_tile_avx512f, on x's bf16 rows (padded to KP like the weight's, so no tail) */
AVX512BF16 static void fwd_tile_avx512bf16(const fwd_job *j, int64_t n0, int64_t n1, int64_t o0, int64_t o1)
{
    const int64_t KP = j->KP;
    for (int64_t n = n0; n < n1; n += A5_MR) {
        const int64_t mr = min64(A5_MR, n1 - n);
        const uint16_t *xr[A5_MR];
        for (int i = 0; i < A5_MR; i++)
            xr[i] = j->xb + (n + (i < mr ? i : mr - 1)) * KP;
        for (int64_t o = o0; o < o1; o += A5_NO) {
            const int64_t no = min64(A5_NO, o1 - o);
            const uint16_t *wr[A5_NO];
            for (int c = 0; c < A5_NO; c++)
                wr[c] = j->wp + (o + (c < no ? c : no - 1)) * KP;
            __m512 acc[A5_MR][A5_NO];
#pragma GCC unroll 4
            for (int i = 0; i < A5_MR; i++)
#pragma GCC unroll 4
                for (int c = 0; c < A5_NO; c++)
                    acc[i][c] = _mm512_setzero_ps();
            for (int64_t k = 0; k < KP; k += 32) {
                __m512bh w[A5_NO];
#pragma GCC unroll 4
                for (int c = 0; c < A5_NO; c++)
                    w[c] = load_bh(wr[c] + k);
#pragma GCC unroll 4
                for (int i = 0; i < A5_MR; i++) {
                    const __m512bh xv = load_bh(xr[i] + k);
#pragma GCC unroll 4
                    for (int c = 0; c < A5_NO; c++)
                        acc[i][c] = _mm512_dpbf16_ps(acc[i][c], xv, w[c]);
                }
            }
            for (int64_t i = 0; i < mr; i++) {
                float s[4];
                _mm_storeu_ps(s, hsum4_512(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
                for (int64_t c = 0; c < no; c++)
                    j->y[(n + i) * j->OC + o + c] = fwd_base(j, n + i, o + c) + s[c];
            }
        }
    }
}

/* 16 chains of vdpbf16ps on constants: the instruction's throughput at its latency */
AVX512BF16 static float dot_peak_run(int64_t iterations)
{
    const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80); /* 1.0 */
    const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3380); /* 2^-24: the sums stay finite */
    __m512 acc[16];
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++)
        acc[r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < iterations; i++)
#pragma GCC unroll 16
        for (int r = 0; r < 16; r++)
            acc[r] = _mm512_dpbf16_ps(acc[r], a, b);
    __m512 s = acc[0];
    for (int r = 1; r < 16; r++)
        s = _mm512_add_ps(s, acc[r]);
    return _mm512_reduce_add_ps(s);
}
#endif /* BF16_X86 */

/* ---- the bf16 peak, for benchmarks ----------------------------------------------------------------------- */

typedef struct {
    float *checksum;
    int64_t iterations;
} peak_job;

static peftc_status peak_part(void *ctx, int64_t t, int64_t nparts)
{
    (void)nparts;
    peak_job *j = ctx;
#ifdef BF16_X86
    j->checksum[t] = dot_peak_run(j->iterations);
    return PEFTC_OK;
#else
    (void)j;
    (void)t;
    return PEFTC_ERR_ARG;
#endif
}

peftc_status peftc_bf16_dot_peak(float *checksum, int64_t *flops, int64_t iterations, int64_t threads)
{
    if (iterations < 0 || threads < 1 || threads > PEFTC_MAX_THREADS || iterations > INT64_MAX / 1024 / threads)
        return PEFTC_ERR_SIZE;
    if (!peftc_bf16_path_supported(PEFTC_BF16_AVX512BF16))
        return PEFTC_ERR_ARG;
    peak_job j = {.checksum = checksum, .iterations = iterations};
    *flops = threads * iterations * 16 * 64;
    return peftc_parallel_run(peak_part, &j, threads);
}

/* ---- dispatch and threads ---------------------------------------------------------------------------- */

typedef void (*fwd_tile_fn)(const fwd_job *, int64_t, int64_t, int64_t, int64_t);
typedef void (*bwd_tile_fn)(const bwd_job *, int64_t, int64_t, int64_t, int64_t);

static fwd_tile_fn fwd_tile(peftc_bf16_path path)
{
    switch (path) {
#ifdef BF16_X86
    case PEFTC_BF16_AVX2:
        return fwd_tile_avx2;
    case PEFTC_BF16_AVX512F:
        return fwd_tile_avx512f;
    case PEFTC_BF16_AVX512BF16:
        return fwd_tile_avx512bf16;
#endif
    default:
        return fwd_tile_generic;
    }
}

/* the backward's tile and the width of its column strips (a part's columns start on a strip) */
static bwd_tile_fn bwd_tile(peftc_bf16_path path, int64_t *strip)
{
    switch (path) {
#ifdef BF16_X86
    case PEFTC_BF16_AVX2:
        *strip = 16;
        return bwd_tile_avx2;
    case PEFTC_BF16_AVX512F:
    case PEFTC_BF16_AVX512BF16:
        *strip = 32;
        return bwd_tile_avx512f;
#endif
    default:
        *strip = 16;
        return bwd_tile_generic;
    }
}

typedef struct {
    fwd_job job;
    fwd_tile_fn tile;
    int split_rows; /* parts split N, else OC */
    uint16_t *xb;   /* AVX512BF16: where x's bf16 rows go */
} fwd_run;

static peftc_status round_x_part(void *ctx, int64_t t, int64_t nparts)
{
    const fwd_run *r = ctx;
    int64_t n0, n1;
    peftc_part_range(r->job.N, t, nparts, &n0, &n1);
    round_rows(r->xb, r->job.x, n0, n1, r->job.IC, r->job.KP);
    return PEFTC_OK;
}

static peftc_status fwd_part(void *ctx, int64_t t, int64_t nparts)
{
    const fwd_run *r = ctx;
    const fwd_job *j = &r->job;
    int64_t n0 = 0, n1 = j->N, o0 = 0, o1 = j->OC;
    if (r->split_rows)
        peftc_part_range(j->N, t, nparts, &n0, &n1);
    else
        peftc_part_range(j->OC, t, nparts, &o0, &o1);
    for (int64_t ob = o0; ob < o1; ob += FWD_OB)
        r->tile(j, n0, n1, ob, min64(ob + FWD_OB, o1));
    return PEFTC_OK;
}

/* parts for a product of N x M x K multiply-adds split along its N rows (at least min_rows each), else
 * along M (at least min_m each): as many as the threads allow, each holding at least
 * MIN_FMAS_PER_THREAD; sets *split_rows */
static int64_t product_parts(int64_t N, int64_t M, int64_t K, int64_t min_rows, int64_t min_m, int *split_rows)
{
    const int64_t fmas = N * M * (K > 0 ? K : 1);
    int64_t parts = peftc_parallel_parts(fmas / MIN_FMAS_PER_THREAD, 1);
    *split_rows = N >= parts * min_rows;
    if (!*split_rows && M < parts * min_m)
        parts = M / min_m > 1 ? M / min_m : 1;
    return parts;
}

peftc_status peftc_bf16_linear_forward(float *y, float *work, const float *x, const uint16_t *wp, const float *b,
                                       int accumulate, peftc_bf16_path path, int64_t N, int64_t IC, int64_t OC)
{
    if (!sizes_ok(N, IC, OC))
        return PEFTC_ERR_SIZE;
    if (!peftc_bf16_path_supported(path) || (path == PEFTC_BF16_AVX512BF16 && N > 0 && IC > 0 && !work))
        return PEFTC_ERR_ARG;
    fwd_run r = {
        .job = {.y = y,
                .x = x,
                .wp = wp,
                .b = b,
                .accumulate = accumulate,
                .N = N,
                .IC = IC,
                .KP = peftc_bf16_padded_ic(IC),
                .OC = OC},
        .tile = fwd_tile(path),
    };
    if (N == 0 || OC == 0)
        return PEFTC_OK;
    peftc_status st;
    if (path == PEFTC_BF16_AVX512BF16) {
        /* x rounded to bf16 once, not once per block of weight rows */
        r.xb = (uint16_t *)work;
        r.job.xb = r.xb;
        st = peftc_parallel_run(round_x_part, &r, peftc_parallel_parts(N * r.job.KP, 65536));
        if (st != PEFTC_OK)
            return st;
    }
    const int64_t parts = product_parts(N, OC, IC, 16, 16, &r.split_rows);
    return peftc_parallel_run(fwd_part, &r, parts);
}

typedef struct {
    bwd_job job;
    bwd_tile_fn tile;
    int64_t strip;
    int split_rows; /* parts split N, else IC in whole strips */
} bwd_run;

static peftc_status bwd_part(void *ctx, int64_t t, int64_t nparts)
{
    const bwd_run *r = ctx;
    const bwd_job *j = &r->job;
    if (r->split_rows) {
        int64_t n0, n1;
        peftc_part_range(j->N, t, nparts, &n0, &n1);
        r->tile(j, n0, n1, 0, j->IC);
        return PEFTC_OK;
    }
    int64_t s0, s1;
    peftc_part_range((j->IC + r->strip - 1) / r->strip, t, nparts, &s0, &s1);
    r->tile(j, 0, j->N, s0 * r->strip, min64(s1 * r->strip, j->IC));
    return PEFTC_OK;
}

peftc_status peftc_bf16_linear_backward(float *dx, const float *dy, const uint16_t *wp, peftc_bf16_path path, int64_t N,
                                        int64_t IC, int64_t OC)
{
    if (!sizes_ok(N, IC, OC))
        return PEFTC_ERR_SIZE;
    if (!peftc_bf16_path_supported(path))
        return PEFTC_ERR_ARG;
    if (N == 0 || IC == 0 || OC == 0)
        return PEFTC_OK;
    bwd_run r = {.job = {.dx = dx, .dy = dy, .wp = wp, .N = N, .IC = IC, .KP = peftc_bf16_padded_ic(IC), .OC = OC}};
    r.tile = bwd_tile(path, &r.strip);
    const int64_t parts = product_parts(N, (IC + r.strip - 1) / r.strip, OC * r.strip, 16, 1, &r.split_rows);
    return peftc_parallel_run(bwd_part, &r, parts);
}
