/* bf16_gemm.c: the frozen bf16 linear layer of bf16_gemm.h: rounding and packing, the run-time choice
 * of instruction set, and the forward and input-gradient products for each path. Each x86 path is a
 * set of functions compiled for its instruction set with target attributes, whatever the flags of the
 * rest of the build, and called only after peftc_bf16_path_supported says the CPU runs it.
 *
 * Blocking, widening paths (AVX2, AVX-512F): both products run as panel products (see "packed panels"):
 * row blocks of the activations held in L2, per-call packed blocks of the weight (on the stack, read from L2),
 * register blocks of MR rows by NR columns held over a whole reduction block. The AVX512-BF16 forward and the
 * generic path walk blocks of FWD_OB weight rows and, inside one, the rows of x a few at a time; the
 * AVX512-BF16 forward's register block is MR rows of x by NO rows of w, its vector accumulators summed across
 * lanes once at the end of the k loop (vdpbf16ps pairs along k); its backward is the AVX-512F one.
 * Not here: the adapters' float32 products (lora.c), any float32 GEMM (blas.c). */
#include "bf16_gemm.h"

#include "parallel.h"

#if defined(__x86_64__) || defined(__i386__)
#define BF16_X86 1
#include <immintrin.h>
#endif

/* multiply-adds per thread below which one thread does all (a part costs microseconds to hand over) */
#define MIN_FMAS_PER_THREAD (1 << 19)
#define FWD_OB 64 /* weight rows per forward block */

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

/* lanes l < n set (n in [0, 8]) */
AVX2 static inline __m256i mask8(int64_t n)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lanes);
}

/* ---- packed panels: the widening paths' products ---------------------------------------------------------
 *
 * Both products are c (rows x columns) += a (rows x reduction, row-major, the activations as they are) times a
 * (reduction x columns) stretch of the weight: for the forward, c = y, a = x, the reduction runs along IC and
 * the columns along OC (w^T); for the backward, c = dx, a = dy, the reduction runs along OC and the columns along
 * IC (w). Per block of at most PANEL_KC reduction steps and PANEL_BYTES of weight, the weight is copied into
 * panels of NR columns (NR = the register block's width), each panel one row of NR / 2 32-bit words per
 * reduction step, word c holding column c's bf16 in its low half and column c + NR / 2's in its high half: a
 * shift left by 16 and a mask of the high half widen the two half-rows to float32 with one bit operation each,
 * and the panel is read in order from the cache while the register blocks of every row pass. The activations
 * are read in place and broadcast one entry at a time (MR rows per register block). Each output entry is one
 * chain: its base (the entry itself, or for a forward's first block 0 or y, plus the bias), then one
 * multiply-add per reduction step in order, whatever the blocks or the thread split. */
#define PANEL_KC 384            /* reduction steps per packed block (every product of a 384-wide model in one) */
#define PANEL_MC 192            /* rows per row block: their activations, 192 x PANEL_KC floats, stay in L2 */
#define PANEL_BYTES (96 * 1024) /* a packed block, on the stack of the thread that runs the part */

/* c[0:mr, 0:nr] (row stride ldc) = base + a[0:mr, 0:kc] (row stride lda) panel (kc steps of NR columns) */
typedef void (*panel_kernel_fn)(float *c, int64_t ldc, const float *a, int64_t lda, const uint32_t *panel, int64_t kc,
                                int64_t mr, int64_t nr, const float *bias, int load_c);

static const uint16_t zero_row[PANEL_KC]; /* the weight rows past the part's last output column */

/* the 8 x 8 transpose of r (r[i][l] becomes r[l][i]) */
AVX2 static inline void transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* the words of 8 bf16 at a (low halves) and 8 at b (high halves), in order */
AVX2 static inline __m256i pair8(const uint16_t *a, const uint16_t *b)
{
    const __m128i x = _mm_loadu_si128((const __m128i *)a), y = _mm_loadu_si128((const __m128i *)b);
    return _mm256_set_m128i(_mm_unpackhi_epi16(x, y), _mm_unpacklo_epi16(x, y));
}

/* the forward's block: w's rows [o0, o1) (zero past o1), columns [k0, k0 + kc), as panels of NR rows of w:
 * 8 rows at a time, 8 steps of k paired into words and transposed */
AVX2 static void pack_fwd(uint32_t *blk, const fwd_job *j, int64_t o0, int64_t o1, int64_t k0, int64_t kc, int64_t NR)
{
    const int64_t half = NR / 2, k8 = kc / 8 * 8;
    for (int64_t g = o0; g < o1; g += NR) {
        uint32_t *p = blk + (g - o0) * kc / 2;
        for (int64_t cb = 0; cb < half; cb += 8) {
            const uint16_t *lo[8], *hi[8];
            for (int64_t c = 0; c < 8; c++) {
                const int64_t o = g + cb + c;
                lo[c] = o < o1 ? j->wp + o * j->KP + k0 : zero_row;
                hi[c] = o + half < o1 ? j->wp + (o + half) * j->KP + k0 : zero_row;
            }
            for (int64_t s = 0; s < k8; s += 8) {
                __m256 r[8];
#pragma GCC unroll 8
                for (int c = 0; c < 8; c++)
                    r[c] = _mm256_castsi256_ps(pair8(lo[c] + s, hi[c] + s));
                transpose8(r);
#pragma GCC unroll 8
                for (int l = 0; l < 8; l++)
                    _mm256_store_ps((float *)(p + (s + l) * half + cb), r[l]);
            }
            for (int64_t s = k8; s < kc; s++)
                for (int64_t c = 0; c < 8; c++)
                    p[s * half + cb + c] = (uint32_t)lo[c][s] | (uint32_t)hi[c][s] << 16;
        }
    }
}

/* the backward's block: w's rows [o0, o0 + kc), columns [k0, k1) (k0 a multiple of NR: whole panels lie
 * inside the padded rows, zero past IC), as panels of NR columns */
AVX2 static void pack_bwd(uint32_t *blk, const bwd_job *j, int64_t k0, int64_t k1, int64_t o0, int64_t kc, int64_t NR)
{
    const int64_t half = NR / 2;
    for (int64_t g = k0; g < k1; g += NR) {
        uint32_t *p = blk + (g - k0) * kc / 2;
        for (int64_t s = 0; s < kc; s++) {
            const uint16_t *row = j->wp + (o0 + s) * j->KP + g;
            for (int64_t cb = 0; cb < half; cb += 8)
                _mm256_store_si256((__m256i *)(p + s * half + cb), pair8(row + cb, row + cb + half));
        }
    }
}

/* the next register row block's output rows (cols floats each) and the heads of its activation rows into the
 * cache while this one computes: a block starts by loading its outputs, and every multiply-add waits for them */
AVX2 static inline void prefetch_rows(const float *c, int64_t ldc, int64_t cols, const float *a, int64_t lda,
                                      int64_t rows)
{
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t l = 0; l < cols; l += 16)
            _mm_prefetch((const char *)(c + i * ldc + l), _MM_HINT_T0);
        _mm_prefetch((const char *)(a + i * lda), _MM_HINT_T0);
        _mm_prefetch((const char *)(a + i * lda + 16), _MM_HINT_T0);
    }
}

/* the rows of the next row block: at most PANEL_MC, blocks of about equal size */
static inline int64_t row_block(int64_t n, int64_t n1)
{
    const int64_t blocks = (n1 - n + PANEL_MC - 1) / PANEL_MC;
    return (n1 - n + blocks - 1) / blocks;
}

/* y[n0:n1, o0:o1]: per row block (its x rows kept in L2 across the column blocks), per block of
 * PANEL_BYTES / 2 / PANEL_KC output columns, per PANEL_KC steps of k, one packed block */
AVX2 static void fwd_panels(const fwd_job *j, int64_t n0, int64_t n1, int64_t o0, int64_t o1, panel_kernel_fn kernel,
                            int64_t MR, int64_t NR)
{
    uint32_t blk[PANEL_BYTES / 4] __attribute__((aligned(64)));
    const int64_t IC = j->IC, OC = j->OC, NC = PANEL_BYTES / 2 / PANEL_KC;
    for (int64_t nb = n0; nb < n1; nb += row_block(nb, n1)) {
        const int64_t nb1 = nb + row_block(nb, n1);
        for (int64_t ob = o0; ob < o1; ob += NC) {
            const int64_t ob1 = min64(ob + NC, o1);
            for (int64_t kb = 0; kb == 0 || kb < IC; kb += PANEL_KC) { /* IC = 0: one empty block writes the base */
                const int64_t kc = min64(PANEL_KC, IC - kb);
                pack_fwd(blk, j, ob, ob1, kb, kc, NR);
                for (int64_t n = nb; n < nb1; n += MR) {
                    if (n + MR < nb1)
                        prefetch_rows(j->y + (n + MR) * OC + ob, OC, ob1 - ob, j->x + (n + MR) * IC + kb, IC,
                                      min64(MR, nb1 - n - MR));
                    for (int64_t g = ob; g < ob1; g += NR)
                        kernel(j->y + n * OC + g, OC, j->x + n * IC + kb, IC, blk + (g - ob) * kc / 2, kc,
                               min64(MR, nb1 - n), min64(NR, ob1 - g), kb == 0 && j->b ? j->b + g : NULL,
                               kb > 0 || j->accumulate);
                }
            }
        }
    }
}

/* dx[n0:n1, k0:k1]: per row block (its dy rows kept in L2), per block of PANEL_BYTES / 2 / PANEL_KC columns of
 * dx, per PANEL_KC steps of o, one packed block */
AVX2 static void bwd_panels(const bwd_job *j, int64_t n0, int64_t n1, int64_t k0, int64_t k1, panel_kernel_fn kernel,
                            int64_t MR, int64_t NR)
{
    uint32_t blk[PANEL_BYTES / 4] __attribute__((aligned(64)));
    const int64_t IC = j->IC, OC = j->OC, NC = PANEL_BYTES / 2 / PANEL_KC;
    for (int64_t nb = n0; nb < n1; nb += row_block(nb, n1)) {
        const int64_t nb1 = nb + row_block(nb, n1);
        for (int64_t kb = k0; kb < k1; kb += NC) {
            const int64_t kb1 = min64(kb + NC, k1);
            for (int64_t ob = 0; ob < OC; ob += PANEL_KC) {
                const int64_t kc = min64(PANEL_KC, OC - ob);
                pack_bwd(blk, j, kb, kb1, ob, kc, NR);
                for (int64_t n = nb; n < nb1; n += MR) {
                    if (n + MR < nb1)
                        prefetch_rows(j->dx + (n + MR) * IC + kb, IC, kb1 - kb, j->dy + (n + MR) * OC + ob, OC,
                                      min64(MR, nb1 - n - MR));
                    for (int64_t g = kb; g < kb1; g += NR)
                        kernel(j->dx + n * IC + g, IC, j->dy + n * OC + ob, OC, blk + (g - kb) * kc / 2, kc,
                               min64(MR, nb1 - n), min64(NR, kb1 - g), NULL, 1);
                }
            }
        }
    }
}

/* register block: 6 rows by 16 columns, 12 accumulators of the 16 vector registers (and a panel step's two
 * halves and one broadcast entry) */
#define A2_MR 6
#define A2_NR 16

/* the panel product of the widening paths (see "packed panels" above) with 8 lanes: c[0:mr, 0:nr] = base +
 * a[0:mr, 0:kc] panel, base = c's entries when load_c, else 0, plus bias[0:nr] when given; each step one
 * 32-byte panel row widened by a shift (low halves: columns 0-7) and a mask (high halves: columns 8-15) */
AVX2 static void panel_kernel_avx2(float *c, int64_t ldc, const float *a, int64_t lda, const uint32_t *panel,
                                   int64_t kc, int64_t mr, int64_t nr, const float *bias, int load_c)
{
    const __m256i m0 = mask8(nr < 8 ? nr : 8), m1 = mask8(nr > 8 ? nr - 8 : 0);
    const int full = nr == A2_NR;
    const float *ar[A2_MR]; /* rows past mr repeat the last one: computed, not stored */
    float *cr[A2_MR];
    for (int i = 0; i < A2_MR; i++) {
        ar[i] = a + (i < mr ? i : mr - 1) * lda;
        cr[i] = c + (i < mr ? i : mr - 1) * ldc;
    }
    __m256 acc[A2_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < A2_MR; i++) {
        if (load_c) {
            acc[i][0] = full ? _mm256_loadu_ps(cr[i]) : _mm256_maskload_ps(cr[i], m0);
            acc[i][1] = full ? _mm256_loadu_ps(cr[i] + 8) : _mm256_maskload_ps(cr[i] + 8, m1);
        } else {
            acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        }
    }
    if (bias) {
        const __m256 b0 = _mm256_maskload_ps(bias, m0), b1 = _mm256_maskload_ps(bias + 8, m1);
#pragma GCC unroll 6
        for (int i = 0; i < A2_MR; i++) {
            acc[i][0] = _mm256_add_ps(acc[i][0], b0);
            acc[i][1] = _mm256_add_ps(acc[i][1], b1);
        }
    }
    const __m256i high = _mm256_set1_epi32((int)0xffff0000u);
    for (int64_t s = 0; s < kc; s++) {
        const __m256i w = _mm256_load_si256((const __m256i *)(panel + 8 * s));
        const __m256 lo = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
        const __m256 hi = _mm256_castsi256_ps(_mm256_and_si256(w, high));
#pragma GCC unroll 6
        for (int i = 0; i < A2_MR; i++) {
            const __m256 av = _mm256_broadcast_ss(ar[i] + s);
            acc[i][0] = _mm256_fmadd_ps(av, lo, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(av, hi, acc[i][1]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < A2_MR; i++) { /* constant indices keep acc in registers */
        if (i >= mr)
            break;
        if (full) {
            _mm256_storeu_ps(cr[i], acc[i][0]);
            _mm256_storeu_ps(cr[i] + 8, acc[i][1]);
        } else {
            _mm256_maskstore_ps(cr[i], m0, acc[i][0]);
            _mm256_maskstore_ps(cr[i] + 8, m1, acc[i][1]);
        }
    }
}

AVX2 static void fwd_tile_avx2(const fwd_job *j, int64_t n0, int64_t n1, int64_t o0, int64_t o1)
{
    fwd_panels(j, n0, n1, o0, o1, panel_kernel_avx2, A2_MR, A2_NR);
}

AVX2 static void bwd_tile_avx2(const bwd_job *j, int64_t n0, int64_t n1, int64_t k0, int64_t k1)
{
    bwd_panels(j, n0, n1, k0, k1, panel_kernel_avx2, A2_MR, A2_NR);
}

/* ---- AVX-512F: bf16 widened to float32, 16 lanes ---------------------------------------------------- */
#define AVX512 __attribute__((target("avx512f,avx2,fma")))

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

/* the AVX512-BF16 forward's register block: 4 rows of x by 4 rows of w, 16 of the 32 vector registers */
#define A5_MR 4
#define A5_NO 4

/* the panel kernel's register block: 8 rows by 32 columns, 16 accumulators of the 32 vector registers */
#define A5_PMR 8
#define A5_NR 32

/* panel_kernel_avx2 with 16 lanes: each step one 64-byte panel row, columns 0-15 in the low halves and 16-31 in
 * the high halves */
AVX512 static void panel_kernel_avx512f(float *c, int64_t ldc, const float *a, int64_t lda, const uint32_t *panel,
                                        int64_t kc, int64_t mr, int64_t nr, const float *bias, int load_c)
{
    const __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xffffu : (1u << nr) - 1u);
    const __mmask16 m1 = (__mmask16)(nr >= 32 ? 0xffffu : nr > 16 ? (1u << (nr - 16)) - 1u : 0u);
    const float *ar[A5_PMR]; /* rows past mr repeat the last one: computed, not stored */
    float *cr[A5_PMR];
    for (int i = 0; i < A5_PMR; i++) {
        ar[i] = a + (i < mr ? i : mr - 1) * lda;
        cr[i] = c + (i < mr ? i : mr - 1) * ldc;
    }
    __m512 acc[A5_PMR][2];
#pragma GCC unroll 8
    for (int i = 0; i < A5_PMR; i++) {
        acc[i][0] = load_c ? _mm512_maskz_loadu_ps(m0, cr[i]) : _mm512_setzero_ps();
        acc[i][1] = load_c ? _mm512_maskz_loadu_ps(m1, cr[i] + 16) : _mm512_setzero_ps();
    }
    if (bias) {
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, bias), b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
#pragma GCC unroll 8
        for (int i = 0; i < A5_PMR; i++) {
            acc[i][0] = _mm512_add_ps(acc[i][0], b0);
            acc[i][1] = _mm512_add_ps(acc[i][1], b1);
        }
    }
    const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
    for (int64_t s = 0; s < kc; s++) {
        const __m512i w = _mm512_load_si512((const void *)(panel + 16 * s));
        const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
        const __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(w, high));
#pragma GCC unroll 8
        for (int i = 0; i < A5_PMR; i++) {
            const __m512 av = _mm512_set1_ps(ar[i][s]);
            acc[i][0] = _mm512_fmadd_ps(av, lo, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(av, hi, acc[i][1]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < A5_PMR; i++) { /* constant indices keep acc in registers */
        if (i >= mr)
            break;
        _mm512_mask_storeu_ps(cr[i], m0, acc[i][0]);
        _mm512_mask_storeu_ps(cr[i] + 16, m1, acc[i][1]);
    }
}

AVX512 static void fwd_tile_avx512f(const fwd_job *j, int64_t n0, int64_t n1, int64_t o0, int64_t o1)
{
    fwd_panels(j, n0, n1, o0, o1, panel_kernel_avx512f, A5_PMR, A5_NR);
}

AVX512 static void bwd_tile_avx512f(const bwd_job *j, int64_t n0, int64_t n1, int64_t k0, int64_t k1)
{
    bwd_panels(j, n0, n1, k0, k1, panel_kernel_avx512f, A5_PMR, A5_NR);
}

/* ---- AVX512-BF16: vdpbf16ps on x and w both in bf16 ------------------------------------------------ */
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512bf16,avx2,fma")))

AVX512BF16 static inline __m512bh load_bh(const uint16_t *p)
{
    return (__m512bh)_mm512_loadu_si512((const void *)p);
}

/* the AVX512-BF16 forward on x's bf16 rows (padded to KP like the weight's, so no tail): a register block of
 * A5_MR rows of x by A5_NO rows of w, dot products along k */
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

/* a path's tiles; parts split the output's columns (y's, dx's) at multiples of strip, and the forward's tile
 * is called on at most fwd_block columns at a time (the panel tiles block by themselves) */
typedef struct {
    fwd_tile_fn fwd;
    bwd_tile_fn bwd;
    int64_t strip, fwd_block;
} path_tiles;

static path_tiles tiles(peftc_bf16_path path)
{
    switch (path) {
#ifdef BF16_X86
    case PEFTC_BF16_AVX2:
        return (path_tiles){fwd_tile_avx2, bwd_tile_avx2, A2_NR, INT64_MAX};
    case PEFTC_BF16_AVX512F:
        return (path_tiles){fwd_tile_avx512f, bwd_tile_avx512f, A5_NR, INT64_MAX};
    case PEFTC_BF16_AVX512BF16:
        return (path_tiles){fwd_tile_avx512bf16, bwd_tile_avx512f, A5_NR, FWD_OB};
#endif
    default:
        return (path_tiles){fwd_tile_generic, bwd_tile_generic, 16, FWD_OB};
    }
}

/* parts for a product of N rows by M column strips, K multiply-adds per row and strip: as many as the threads
 * allow, each holding at least MIN_FMAS_PER_THREAD; split along the strips while there is one per part (a part
 * then reads only its own columns of the weight), else along the rows (at least 16 each), else into fewer
 * parts along the strips; sets *split_rows */
static int64_t product_parts(int64_t N, int64_t M, int64_t K, int *split_rows)
{
    const int64_t fmas = N * M * (K > 0 ? K : 1);
    int64_t parts = peftc_parallel_parts(fmas / MIN_FMAS_PER_THREAD, 1);
    *split_rows = M < parts && N >= parts * 16;
    if (!*split_rows && M < parts)
        parts = M > 1 ? M : 1;
    return parts;
}

/* columns [c0, c1) of C of part t of nparts, in whole strips */
static void strip_range(int64_t C, int64_t strip, int64_t t, int64_t nparts, int64_t *c0, int64_t *c1)
{
    int64_t s0, s1;
    peftc_part_range((C + strip - 1) / strip, t, nparts, &s0, &s1);
    *c0 = min64(s0 * strip, C);
    *c1 = min64(s1 * strip, C);
}

typedef struct {
    fwd_job job;
    path_tiles tiles;
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
        strip_range(j->OC, r->tiles.strip, t, nparts, &o0, &o1);
    for (int64_t ob = o0; ob < o1; ob += min64(r->tiles.fwd_block, o1 - ob))
        r->tiles.fwd(j, n0, n1, ob, ob + min64(r->tiles.fwd_block, o1 - ob));
    return PEFTC_OK;
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
        .tiles = tiles(path),
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
    const int64_t strip = r.tiles.strip;
    const int64_t parts = product_parts(N, (OC + strip - 1) / strip, IC * strip, &r.split_rows);
    return peftc_parallel_run(fwd_part, &r, parts);
}

typedef struct {
    bwd_job job;
    path_tiles tiles;
    int split_rows; /* parts split N, else IC in whole strips */
} bwd_run;

static peftc_status bwd_part(void *ctx, int64_t t, int64_t nparts)
{
    const bwd_run *r = ctx;
    const bwd_job *j = &r->job;
    int64_t n0 = 0, n1 = j->N, k0 = 0, k1 = j->IC;
    if (r->split_rows)
        peftc_part_range(j->N, t, nparts, &n0, &n1);
    else
        strip_range(j->IC, r->tiles.strip, t, nparts, &k0, &k1);
    r->tiles.bwd(j, n0, n1, k0, k1);
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
    r.tiles = tiles(path);
    const int64_t strip = r.tiles.strip;
    const int64_t parts = product_parts(N, (IC + strip - 1) / strip, OC * strip, &r.split_rows);
    return peftc_parallel_run(bwd_part, &r, parts);
}
