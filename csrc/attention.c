/* attention.c: the multi-head self-attention core on already-projected q, k, v (B,T,H), forward
 * and backward. Each (batch, head) pair is a few GEMMs that read its columns of q, k, v and write
 * its columns of out in place through the leading dimension H: no transposing copies, no head
 * split or merge. Scale, key mask, causal mask and softmax are one pass over each score row.
 * The GEMMs are small_gemm.c's register-blocked small products, not OpenBLAS: at K or N = HS
 * (32 for MiniLM) a BLAS call spends as long packing and dispatching as multiplying.
 * The Q/K/V and output projections are not here (linear.c, lora.c).
 *
 * Threads: the (batch, head) pairs are independent, so they are split into contiguous ranges, one
 * per thread (parallel.h), each thread running whole products on its own slice of the workspace.
 * Results do not depend on the thread count: every pair is computed the same way whichever thread
 * runs it.
 *
 * Also here: the packed-sequence forward and backward, where sequences of different lengths are stored
 * back to back as rows (a padded batch without its padding), each (sequence, head) pair a block of a few
 * thousand multiply-adds; and the decoder's forward against a KV cache (inference), new queries
 * attending to the cached keys. */
#include <math.h>

#include "small_gemm.h"
#include "fastmath.h"
#include "parallel.h"
#include "rng.h"
#include "vec.h"

static int attention_args_ok(float p, int64_t B, int64_t T, int64_t H, int64_t NH)
{
    return p >= 0.0f && p < 1.0f && B >= 0 && T >= 0 && H >= 0 && NH > 0 && H % NH == 0;
}

static uint64_t att_counter(uint64_t offset, int64_t bh, int64_t i, int64_t T)
{
    return offset + (uint64_t)((bh * T + i) * T);
}

/* Reductions over a row in ROW_LANES partial results: a plain loop carries one accumulator, which
 * keeps the compiler from reordering (and vectorising) a float sum or max. */
#define ROW_LANES 16

/* max of x[j] over the keys j < n with keymask[j] != 0 (all when keymask is NULL); NaNs are
 * skipped, -INFINITY when no key is visible */
static inline float masked_row_max(const float *x, const int64_t *keymask, int64_t n)
{
    float m[ROW_LANES];
    for (int l = 0; l < ROW_LANES; l++)
        m[l] = -INFINITY;
    int64_t j = 0;
    /* two loops, not a select on "!keymask || keymask[j]": see exp_row_sum */
    if (keymask) {
        for (; j + ROW_LANES <= n; j += ROW_LANES)
            for (int l = 0; l < ROW_LANES; l++) {
                const float v = keymask[j + l] ? x[j + l] : -INFINITY;
                m[l] = v > m[l] ? v : m[l];
            }
    } else {
        for (; j + ROW_LANES <= n; j += ROW_LANES)
            for (int l = 0; l < ROW_LANES; l++)
                m[l] = x[j + l] > m[l] ? x[j + l] : m[l];
    }
    float mx = -INFINITY;
    for (int l = 0; l < ROW_LANES; l++)
        mx = m[l] > mx ? m[l] : mx;
    for (; j < n; j++) {
        const float v = !keymask || keymask[j] ? x[j] : -INFINITY;
        mx = v > mx ? v : mx;
    }
    return mx;
}

/* sum of x[j] * y[j] over j < n */
static inline float row_dot(const float *x, const float *y, int64_t n)
{
    float acc[ROW_LANES] = {0.0f};
    int64_t j = 0;
    for (; j + ROW_LANES <= n; j += ROW_LANES)
        for (int l = 0; l < ROW_LANES; l++)
            acc[l] += x[j + l] * y[j + l];
    float s = 0.0f;
    for (int l = 0; l < ROW_LANES; l++)
        s += acc[l];
    for (; j < n; j++)
        s += x[j] * y[j];
    return s;
}

/* sum of x[j] over j < n */
static inline float row_sum(const float *x, int64_t n)
{
    float acc[ROW_LANES] = {0.0f};
    int64_t j = 0;
    for (; j + ROW_LANES <= n; j += ROW_LANES)
        for (int l = 0; l < ROW_LANES; l++)
            acc[l] += x[j + l];
    float s = 0.0f;
    for (int l = 0; l < ROW_LANES; l++)
        s += acc[l];
    for (; j < n; j++)
        s += x[j];
    return s;
}

/* row[j] = exp(row[j] * scale - mx) over the keys j < n, 0 where keymask[j] == 0 (keymask NULL: no
 * key masked); returns the sum of the new values, accumulated as they are written (one pass, not
 * two). The two cases are separate loops: a select on "!keymask || keymask[j]" is compiled to a
 * masked vector load from the NULL pointer, which faults silently (and slowly) on every row. */
static inline float exp_row_sum(float *row, const int64_t *keymask, int64_t n, float scale, float mx)
{
    float acc[ROW_LANES] = {0.0f};
    int64_t j = 0;
    if (keymask) {
        for (; j + ROW_LANES <= n; j += ROW_LANES)
            for (int l = 0; l < ROW_LANES; l++) {
                const float e = peftc_exp_approx(fmaf(row[j + l], scale, -mx));
                const float v = keymask[j + l] ? e : 0.0f;
                row[j + l] = v;
                acc[l] += v;
            }
    } else {
        for (; j + ROW_LANES <= n; j += ROW_LANES)
            for (int l = 0; l < ROW_LANES; l++) {
                const float e = peftc_exp_approx(fmaf(row[j + l], scale, -mx));
                row[j + l] = e;
                acc[l] += e;
            }
    }
    float s = 0.0f;
    for (int l = 0; l < ROW_LANES; l++)
        s += acc[l];
    for (; j < n; j++) {
        const float e = peftc_exp_approx(fmaf(row[j], scale, -mx));
        row[j] = !keymask || keymask[j] ? e : 0.0f;
        s += row[j];
    }
    return s;
}

/* Row i of one (b, h) score block: scale, exclude masked and (if causal) future keys, softmax in
 * place. Excluded keys get exactly 0; a row with no visible key becomes all zeros. Every loop is
 * branch-free so that it vectorises. The max is taken before scaling: scale > 0 and rounding is
 * monotonic, so max(row) * scale is exactly max(row * scale). */
static void masked_softmax_prefix(float *row, const int64_t *keymask, int64_t last, float scale, int64_t T);

static void masked_softmax_row(float *row, const int64_t *keymask, int causal, int64_t i, float scale, int64_t T)
{
    masked_softmax_prefix(row, keymask, causal ? i + 1 : T, scale, T);
}

/* the softmax of the first `last` entries of a row of T (the rest set to 0): the causal row of a
 * query that sees keys 0 .. last-1, in a full block or against a KV cache */
static void masked_softmax_prefix(float *row, const int64_t *keymask, int64_t last, float scale, int64_t T)
{
    float mx = masked_row_max(row, keymask, last);
    if (mx == -INFINITY) {
        for (int64_t j = 0; j < T; j++)
            row[j] = 0.0f;
        return;
    }
    mx *= scale;
    const float inv = 1.0f / exp_row_sum(row, keymask, last, scale, mx);
    for (int64_t j = last; j < T; j++)
        row[j] = 0.0f;
    for (int64_t j = 0; j < last; j++)
        row[j] *= inv;
}

/* Prefetch into L2 (not L1, which the current pair fills) the n floats at x, one cache line at a time.
 * A pair's probability block is T*T floats and all of them, B*NH*T*T, far outgrow the caches, as do
 * the q, k, v columns a pair reads (T rows of HS floats, H apart): each pair asks for row i of the
 * next pair's blocks while it works on its own row i, so that the next pair finds them loaded. */
static inline void prefetch_row_read(const float *x, int64_t n)
{
    for (int64_t c = 0; c < n; c += 16)
        __builtin_prefetch(x + c, 0, 2);
}

static inline void prefetch_row_write(const float *x, int64_t n)
{
    for (int64_t c = 0; c < n; c += 16)
        __builtin_prefetch(x + c, 1, 2);
}

typedef struct {
    float *out, *att_out, *work, *dq, *dk, *dv; /* att_out: the forward's probabilities */
    const float *att, *q, *k, *v, *dout;        /* att: the same, read by the backward */
    const int64_t *mask;
    int causal;
    float p;
    uint64_t key, offset;
    int64_t B, T, H, NH;
} attention_job;

/* threads for B*NH pairs: no more than there are pairs */
static int64_t attention_threads(int64_t pairs)
{
    const int64_t n = peftc_parallel_threads();
    return pairs < n ? (pairs > 0 ? pairs : 1) : n;
}

int64_t peftc_attention_forward_workspace_size(int64_t T, float p)
{
    /* per thread, the dropped probabilities of one (b, h) block */
    return p > 0.0f ? peftc_parallel_threads() * T * T : 0;
}

static peftc_status forward_part(void *ctx, int64_t t, int64_t nparts)
{
    const attention_job *j = ctx;
    const int64_t T = j->T, H = j->H, NH = j->NH, HS = H / NH;
    const float scale = HS > 0 ? 1.0f / sqrtf((float)HS) : 1.0f;
    const float p = j->p, keep_scale = 1.0f / (1.0f - p);
    float *work = j->work ? j->work + t * T * T : NULL;
    int64_t first, last;
    peftc_part_range(j->B * NH, t, nparts, &first, &last);
    for (int64_t bh = first; bh < last; bh++) {
        const int64_t b = bh / NH, h = bh % NH;
        const int64_t *keymask = j->mask ? j->mask + b * T : NULL;
        const int64_t col = b * T * H + h * HS;
        float *a = j->att_out + bh * T * T;
        /* a (T,T) = q_h (T,HS) k_h^T: M=T, N=T, K=HS, lda=H, ldb=H, ldc=T */
        peftc_small_gemm_abt(a, j->q + col, j->k + col, T, T, HS, H, H, T);
        /* the next pair's q, k, v columns (read) and probability block (written) */
        const int64_t next = bh + 1 < last ? bh + 1 : bh;
        const int64_t ncol = (next / NH) * T * H + (next % NH) * HS;
        for (int64_t i = 0; i < T; i++) {
            masked_softmax_row(a + i * T, keymask, j->causal, i, scale, T);
            prefetch_row_write(j->att_out + next * T * T + i * T, T);
            prefetch_row_read(j->q + ncol + i * H, HS);
            prefetch_row_read(j->k + ncol + i * H, HS);
            prefetch_row_read(j->v + ncol + i * H, HS);
        }
        const float *pv = a;
        if (p > 0.0f) {
            for (int64_t i = 0; i < T; i++)
                peftc_dropout_row(work + i * T, a + i * T, p, keep_scale, j->key, att_counter(j->offset, bh, i, T), T);
            pv = work;
        }
        /* out_h (T,HS) = pv (T,T) v_h (T,HS): M=T, N=HS, K=T, lda=T, ldb=H, ldc=H */
        peftc_small_gemm_ab(j->out + col, pv, j->v + col, 0, 0, T, HS, T, T, H, H);
    }
    return PEFTC_OK;
}

peftc_status peftc_attention_forward(float *out, float *att, float *work, const float *q, const float *k,
                                     const float *v, const int64_t *mask, int causal, float p, uint64_t seed,
                                     uint64_t offset, int64_t B, int64_t T, int64_t H, int64_t NH)
{
    if (!attention_args_ok(p, B, T, H, NH))
        return p >= 0.0f && p < 1.0f ? PEFTC_ERR_SIZE : PEFTC_ERR_ARG;
    if (B == 0 || T == 0)
        return PEFTC_OK;
    attention_job job = {.out = out,
                         .att_out = att,
                         .work = p > 0.0f ? work : NULL,
                         .q = q,
                         .k = k,
                         .v = v,
                         .mask = mask,
                         .causal = causal,
                         .p = p,
                         .key = peftc_rng_key(seed),
                         .offset = offset,
                         .B = B,
                         .T = T,
                         .H = H,
                         .NH = NH};
    return peftc_parallel_run(forward_part, &job, attention_threads(B * NH));
}

int64_t peftc_attention_backward_workspace_size(int64_t T, float p)
{
    /* per thread, d(probabilities) of one block, plus its dropped probabilities when dropout is on */
    return peftc_parallel_threads() * T * T * (p > 0.0f ? 2 : 1);
}

/* Per (b, h), with P = att, Pd = dropout(P), G = dout_h:
 *   dPd = G v_h^T, dv_h += Pd^T G, dP = dPd through the mask, dS = scale * P o (dP - rowsum(P o dP)),
 *   dq_h += dS k_h, dk_h += dS^T q_h. */
static peftc_status backward_part(void *ctx, int64_t t, int64_t nparts)
{
    const attention_job *j = ctx;
    const int64_t T = j->T, H = j->H, NH = j->NH, HS = H / NH;
    const float scale = HS > 0 ? 1.0f / sqrtf((float)HS) : 1.0f;
    const float p = j->p, keep_scale = 1.0f / (1.0f - p);
    float *ds = j->work + t * T * T * (p > 0.0f ? 2 : 1);
    float *pd = ds + T * T;
    int64_t first, last;
    peftc_part_range(j->B * NH, t, nparts, &first, &last);
    for (int64_t bh = first; bh < last; bh++) {
        const int64_t col = (bh / NH) * T * H + (bh % NH) * HS;
        const float *a = j->att + bh * T * T;
        const int64_t next = bh + 1 < last ? bh + 1 : bh;
        const int64_t ncol = (next / NH) * T * H + (next % NH) * HS;
        const float *pv = a;
        if (p > 0.0f) {
            for (int64_t i = 0; i < T; i++)
                peftc_dropout_row(pd + i * T, a + i * T, p, keep_scale, j->key, att_counter(j->offset, bh, i, T), T);
            pv = pd;
        }
        if (j->dv) {
            /* dv_h (T,HS) += pv^T (T,T) G (T,HS): M=T, N=HS, K=T, lda=T, ldb=H, ldc=H */
            peftc_small_gemm_ab(j->dv + col, pv, j->dout + col, 1, 1, T, HS, T, T, H, H);
        }
        if (!j->dq && !j->dk)
            continue;
        /* ds (T,T) = G (T,HS) v_h^T: M=T, N=T, K=HS, lda=H, ldb=H, ldc=T */
        peftc_small_gemm_abt(ds, j->dout + col, j->v + col, T, T, HS, H, H, T);
        for (int64_t i = 0; i < T; i++) {
            /* the next pair's probabilities and q, k, v, dout columns (all read) */
            prefetch_row_read(j->att + next * T * T + i * T, T);
            prefetch_row_read(j->q + ncol + i * H, HS);
            prefetch_row_read(j->k + ncol + i * H, HS);
            prefetch_row_read(j->v + ncol + i * H, HS);
            prefetch_row_read(j->dout + ncol + i * H, HS);
            float *d = ds + i * T;
            const float *pr = a + i * T;
            if (p > 0.0f) {
                /* a dropped element has pd == 0 < P; where P == 0 the factor P below zeroes it anyway,
                 * so pd != 0 is the keep-mask and the generator need not run twice */
                const float *pdr = pd + i * T;
                for (int64_t c = 0; c < T; c++)
                    d[c] = pdr[c] != 0.0f ? d[c] * keep_scale : 0.0f;
            }
            const float dot = row_dot(pr, d, T);
            for (int64_t c = 0; c < T; c++)
                d[c] = scale * pr[c] * (d[c] - dot);
        }
        if (j->dq) {
            /* dq_h (T,HS) += ds (T,T) k_h (T,HS): M=T, N=HS, K=T, lda=T, ldb=H, ldc=H */
            peftc_small_gemm_ab(j->dq + col, ds, j->k + col, 0, 1, T, HS, T, T, H, H);
        }
        if (j->dk) {
            /* dk_h (T,HS) += ds^T (T,T) q_h (T,HS): M=T, N=HS, K=T, lda=T, ldb=H, ldc=H */
            peftc_small_gemm_ab(j->dk + col, ds, j->q + col, 1, 1, T, HS, T, T, H, H);
        }
    }
    return PEFTC_OK;
}

peftc_status peftc_attention_backward(float *dq, float *dk, float *dv, float *work, const float *dout, const float *q,
                                      const float *k, const float *v, const float *att, float p, uint64_t seed,
                                      uint64_t offset, int64_t B, int64_t T, int64_t H, int64_t NH)
{
    if (!attention_args_ok(p, B, T, H, NH))
        return p >= 0.0f && p < 1.0f ? PEFTC_ERR_SIZE : PEFTC_ERR_ARG;
    if (B == 0 || T == 0)
        return PEFTC_OK;
    attention_job job = {.work = work,
                         .dq = dq,
                         .dk = dk,
                         .dv = dv,
                         .q = q,
                         .k = k,
                         .v = v,
                         .dout = dout,
                         .att = att,
                         .p = p,
                         .key = peftc_rng_key(seed),
                         .offset = offset,
                         .B = B,
                         .T = T,
                         .H = H,
                         .NH = NH};
    return peftc_parallel_run(backward_part, &job, attention_threads(B * NH));
}

/* ---- packed sequences: each sequence's rows attend among themselves ------------------------------ */

typedef struct {
    float *out, *att, *work, *dq, *dk, *dv;
    const float *q, *k, *v, *dout, *att_in;
    const int64_t *offsets, *starts;
    float p;
    uint64_t key, offset;
    int64_t S, T, H, NH, Tmax;
} packed_job;

static int64_t packed_longest(const int64_t *offsets, int64_t S)
{
    int64_t longest = 0;
    for (int64_t s = 0; s < S; s++)
        longest = offsets[s + 1] - offsets[s] > longest ? offsets[s + 1] - offsets[s] : longest;
    return longest;
}

/* Below this many score entries (sum of T^2 over the sequences; each costs about 4 H flops) per
 * thread, a thread costs more than it saves: starting one took some 30-100 us (with the OpenBLAS
 * products this file used before), about what one thread needs for a batch of 16 sequences of 14 tokens at H=384
 * (measured: such a batch ran slower on 2 threads than on 1). */
#define PACKED_MIN_SCORES_PER_THREAD 4096

static int64_t packed_threads(const int64_t *offsets, int64_t S, int64_t NH)
{
    int64_t scores = 0;
    for (int64_t s = 0; s < S; s++)
        scores += (offsets[s + 1] - offsets[s]) * (offsets[s + 1] - offsets[s]);
    const int64_t parts = peftc_parallel_parts(scores, PACKED_MIN_SCORES_PER_THREAD);
    return parts < S * NH ? parts : S * NH;
}

int64_t peftc_attention_packed_forward_workspace_size(int64_t T)
{
    /* per thread, the probabilities (or their dropped copy) of one (sequence, head) block of the longest
     * sequence */
    return peftc_parallel_threads() * T * T;
}

int64_t peftc_attention_packed_backward_workspace_size(int64_t T, float p)
{
    /* per thread, d(probabilities) of one block, plus its dropped probabilities when dropout is on */
    return peftc_parallel_threads() * T * T * (p > 0.0f ? 2 : 1);
}

/* where the probabilities of pair sh = s*NH + h start in att: NH * (sum of the earlier sequences' T^2) + h T^2 */
static int64_t packed_att_start(const int64_t *offsets, int64_t sh, int64_t NH)
{
    const int64_t s = sh / NH, T = offsets[s + 1] - offsets[s];
    int64_t before = 0;
    for (int64_t r = 0; r < s; r++)
        before += (offsets[r + 1] - offsets[r]) * (offsets[r + 1] - offsets[r]);
    return NH * before + (sh % NH) * T * T;
}

/* the dropout counter of query i, key 0 of pair (s, h): that of the same element of the padded batch
 * the sequences came from, row s of width j->T with the sequence at positions starts[s] .. */
static uint64_t packed_counter(const packed_job *j, int64_t s, int64_t h, int64_t i)
{
    const int64_t start = j->starts ? j->starts[s] : 0;
    return j->offset + (uint64_t)(((s * j->NH + h) * j->T + start + i) * j->T + start);
}

/* the (sequence, head) pairs of part t: the arithmetic of forward_part with B=1 and no mask, so a
 * sequence's output does not depend on its neighbours or on the thread count */
static peftc_status packed_part(void *ctx, int64_t t, int64_t nparts)
{
    const packed_job *j = ctx;
    const int64_t H = j->H, NH = j->NH, HS = H / NH;
    const float scale = HS > 0 ? 1.0f / sqrtf((float)HS) : 1.0f;
    const float p = j->p, keep_scale = 1.0f / (1.0f - p);
    float *work = j->work + t * j->Tmax * j->Tmax;
    int64_t first, last;
    peftc_part_range(j->S * NH, t, nparts, &first, &last);
    int64_t at = first < last ? packed_att_start(j->offsets, first, NH) : 0;
    for (int64_t sh = first; sh < last; sh++) {
        const int64_t s = sh / NH, h = sh % NH, row = j->offsets[s], T = j->offsets[s + 1] - row;
        const int64_t col = row * H + h * HS;
        if (T == 0)
            continue;
        float *a = j->att ? j->att + at : work;
        at += T * T;
        /* a (T,T) = q_h (T,HS) k_h^T: M=T, N=T, K=HS, lda=H, ldb=H, ldc=T */
        peftc_small_gemm_abt(a, j->q + col, j->k + col, T, T, HS, H, H, T);
        for (int64_t i = 0; i < T; i++)
            masked_softmax_row(a + i * T, NULL, 0, i, scale, T);
        const float *pv = a;
        if (p > 0.0f) {
            for (int64_t i = 0; i < T; i++)
                peftc_dropout_row(work + i * T, a + i * T, p, keep_scale, j->key, packed_counter(j, s, h, i), T);
            pv = work;
        }
        /* out_h (T,HS) = pv (T,T) v_h (T,HS): M=T, N=HS, K=T, lda=T, ldb=H, ldc=H */
        peftc_small_gemm_ab(j->out + col, pv, j->v + col, 0, 0, T, HS, T, T, H, H);
    }
    return PEFTC_OK;
}

/* offsets start at 0, do not decrease and end at N; each sequence fits its padded row (starts[s] >= 0,
 * starts[s] + its length <= T) */
static peftc_status packed_args(const int64_t *offsets, const int64_t *starts, float p, int64_t S, int64_t N, int64_t T,
                                int64_t H, int64_t NH)
{
    if (S < 0 || N < 0 || T < 0 || H < 0 || NH < 1 || H % NH != 0)
        return PEFTC_ERR_SIZE;
    if (!(p >= 0.0f && p < 1.0f) || offsets[0] != 0 || offsets[S] != N)
        return PEFTC_ERR_ARG;
    for (int64_t s = 0; s < S; s++) {
        const int64_t len = offsets[s + 1] - offsets[s], start = starts ? starts[s] : 0;
        if (len < 0 || start < 0 || (p > 0.0f && start + len > T))
            return PEFTC_ERR_ARG;
    }
    return PEFTC_OK;
}

peftc_status peftc_attention_packed_forward(float *out, float *att, float *work, const float *q, const float *k,
                                            const float *v, const int64_t *offsets, const int64_t *starts, float p,
                                            uint64_t seed, uint64_t offset, int64_t S, int64_t N, int64_t T, int64_t H,
                                            int64_t NH)
{
    const peftc_status st = packed_args(offsets, starts, p, S, N, T, H, NH);
    if (st != PEFTC_OK)
        return st;
    if (p > 0.0f && !att)
        return PEFTC_ERR_ARG; /* dropout is for training, which keeps the probabilities */
    if (S == 0 || N == 0)
        return PEFTC_OK;
    packed_job job = {.out = out,
                      .att = att,
                      .work = work,
                      .q = q,
                      .k = k,
                      .v = v,
                      .offsets = offsets,
                      .starts = starts,
                      .p = p,
                      .key = peftc_rng_key(seed),
                      .offset = offset,
                      .S = S,
                      .T = T,
                      .H = H,
                      .NH = NH,
                      .Tmax = packed_longest(offsets, S)};
    return peftc_parallel_run(packed_part, &job, packed_threads(offsets, S, NH));
}

/* backward_part's arithmetic on each (sequence, head) pair of part t, its probabilities read from att */
static peftc_status packed_backward_part(void *ctx, int64_t t, int64_t nparts)
{
    const packed_job *j = ctx;
    const int64_t H = j->H, NH = j->NH, HS = H / NH, Tmax = j->Tmax;
    const float scale = HS > 0 ? 1.0f / sqrtf((float)HS) : 1.0f;
    const float p = j->p, keep_scale = 1.0f / (1.0f - p);
    float *ds = j->work + t * Tmax * Tmax * (p > 0.0f ? 2 : 1);
    float *pd = ds + Tmax * Tmax;
    int64_t first, last;
    peftc_part_range(j->S * NH, t, nparts, &first, &last);
    int64_t at = first < last ? packed_att_start(j->offsets, first, NH) : 0;
    for (int64_t sh = first; sh < last; sh++) {
        const int64_t s = sh / NH, h = sh % NH, row = j->offsets[s], T = j->offsets[s + 1] - row;
        const int64_t col = row * H + h * HS;
        if (T == 0)
            continue;
        const float *a = j->att_in + at;
        at += T * T;
        const float *pv = a;
        if (p > 0.0f) {
            for (int64_t i = 0; i < T; i++)
                peftc_dropout_row(pd + i * T, a + i * T, p, keep_scale, j->key, packed_counter(j, s, h, i), T);
            pv = pd;
        }
        if (j->dv) {
            /* dv_h (T,HS) += pv^T (T,T) G (T,HS): M=T, N=HS, K=T, lda=T, ldb=H, ldc=H */
            peftc_small_gemm_ab(j->dv + col, pv, j->dout + col, 1, 1, T, HS, T, T, H, H);
        }
        if (!j->dq && !j->dk)
            continue;
        /* ds (T,T) = G (T,HS) v_h^T: M=T, N=T, K=HS, lda=H, ldb=H, ldc=T */
        peftc_small_gemm_abt(ds, j->dout + col, j->v + col, T, T, HS, H, H, T);
        for (int64_t i = 0; i < T; i++) {
            float *d = ds + i * T;
            const float *pr = a + i * T;
            if (p > 0.0f) {
                const float *pdr = pd + i * T; /* pd != 0 is the keep-mask, as in backward_part */
                for (int64_t c = 0; c < T; c++)
                    d[c] = pdr[c] != 0.0f ? d[c] * keep_scale : 0.0f;
            }
            const float dot = row_dot(pr, d, T);
            for (int64_t c = 0; c < T; c++)
                d[c] = scale * pr[c] * (d[c] - dot);
        }
        if (j->dq) {
            /* dq_h (T,HS) += ds (T,T) k_h (T,HS): M=T, N=HS, K=T, lda=T, ldb=H, ldc=H */
            peftc_small_gemm_ab(j->dq + col, ds, j->k + col, 0, 1, T, HS, T, T, H, H);
        }
        if (j->dk) {
            /* dk_h (T,HS) += ds^T (T,T) q_h (T,HS): M=T, N=HS, K=T, lda=T, ldb=H, ldc=H */
            peftc_small_gemm_ab(j->dk + col, ds, j->q + col, 1, 1, T, HS, T, T, H, H);
        }
    }
    return PEFTC_OK;
}

peftc_status peftc_attention_packed_backward(float *dq, float *dk, float *dv, float *work, const float *dout,
                                             const float *q, const float *k, const float *v, const float *att,
                                             const int64_t *offsets, const int64_t *starts, float p, uint64_t seed,
                                             uint64_t offset, int64_t S, int64_t N, int64_t T, int64_t H, int64_t NH)
{
    const peftc_status st = packed_args(offsets, starts, p, S, N, T, H, NH);
    if (st != PEFTC_OK)
        return st;
    if (S == 0 || N == 0)
        return PEFTC_OK;
    packed_job job = {.work = work,
                      .dq = dq,
                      .dk = dk,
                      .dv = dv,
                      .q = q,
                      .k = k,
                      .v = v,
                      .dout = dout,
                      .att_in = att,
                      .offsets = offsets,
                      .starts = starts,
                      .p = p,
                      .key = peftc_rng_key(seed),
                      .offset = offset,
                      .S = S,
                      .T = T,
                      .H = H,
                      .NH = NH,
                      .Tmax = packed_longest(offsets, S)};
    return peftc_parallel_run(packed_backward_part, &job, packed_threads(offsets, S, NH));
}

/* ---- causal attention of new queries against a KV cache (decoding) ------------------------------- */
/* Up to FEW_QUERIES new queries per sequence (decoding: one) go row by row, all heads of a sequence
 * together: its cached keys and values are then read as they lie, whole rows of H floats one after the
 * other. Pair by pair, each head would read only its HS floats of every row, H floats apart, and the
 * blocked products would transpose the keys into a panel and compute MR query rows of which all but
 * these few repeat the last. Decoding is bound by reading the cache, so this is its inner loop. */
#define FEW_QUERIES 4

/* x . y over n floats: PEFTC_VL partial sums, then the lanes and the tail in order */
static float dot_row(const float *x, const float *y, int64_t n)
{
    peftc_vf s = {0.0f};
    int64_t c = 0;
    for (; c + PEFTC_VL <= n; c += PEFTC_VL)
        s = vec_fma(vec_load(x + c), vec_load(y + c), s);
    float r = 0.0f;
    for (int l = 0; l < PEFTC_VL; l++)
        r += s[l];
    for (; c < n; c++)
        r = fmaf(x[c], y[c], r);
    return r;
}

/* y (n floats) += alpha * x */
static void axpy_row(float *y, float alpha, const float *x, int64_t n)
{
    const peftc_vf va = (peftc_vf){0.0f} + alpha;
    int64_t c = 0;
    for (; c + PEFTC_VL <= n; c += PEFTC_VL)
        vec_store(y + c, vec_fma(va, vec_load(x + c), vec_load(y + c)));
    for (; c < n; c++)
        y[c] = fmaf(alpha, x[c], y[c]);
}

typedef struct {
    float *out, *work;
    const float *q, *kc, *vc;
    int64_t B, TQ, TK, TC, H, NH;
} cached_job;

int64_t peftc_attention_cached_forward_workspace_size(int64_t TQ, int64_t TK, int64_t NH)
{
    /* per thread, the (TQ,TK) probability block of one (b, h) pair, or with few queries the (NH,TK)
     * probabilities of one query's heads */
    return peftc_parallel_threads() * TK * (TQ <= FEW_QUERIES ? NH : TQ);
}

/* the few queries of the sequences [first, last) (cached_rows_part): each query's scores for every head
 * (a, NH rows of TK), their softmax, then out = sum over keys of p v, both passes reading the sequence's
 * cache rows in order; every output entry is one chain over the keys in order */
static peftc_status cached_rows_part(void *ctx, int64_t t, int64_t nparts)
{
    const cached_job *j = ctx;
    const int64_t TQ = j->TQ, TK = j->TK, TC = j->TC, H = j->H, NH = j->NH, HS = H / NH;
    const float scale = HS > 0 ? 1.0f / sqrtf((float)HS) : 1.0f;
    float *a = j->work + t * NH * TK;
    int64_t first, end;
    peftc_part_range(j->B, t, nparts, &first, &end);
    for (int64_t b = first; b < end; b++) {
        const float *kb = j->kc + b * TC * H, *vb = j->vc + b * TC * H;
        for (int64_t i = 0; i < TQ; i++) {
            const float *qi = j->q + (b * TQ + i) * H;
            float *oi = j->out + (b * TQ + i) * H;
            const int64_t last = TK - TQ + i + 1; /* query i sits at position last - 1 */
            for (int64_t n = 0; n < last; n++)
                for (int64_t h = 0; h < NH; h++)
                    a[h * TK + n] = dot_row(qi + h * HS, kb + n * H + h * HS, HS);
            for (int64_t h = 0; h < NH; h++)
                masked_softmax_prefix(a + h * TK, NULL, last, scale, TK);
            for (int64_t c = 0; c < H; c++)
                oi[c] = 0.0f;
            for (int64_t n = 0; n < last; n++)
                for (int64_t h = 0; h < NH; h++)
                    axpy_row(oi + h * HS, a[h * TK + n], vb + n * H + h * HS, HS);
        }
    }
    return PEFTC_OK;
}

static peftc_status cached_part(void *ctx, int64_t t, int64_t nparts)
{
    const cached_job *j = ctx;
    const int64_t TQ = j->TQ, TK = j->TK, TC = j->TC, H = j->H, NH = j->NH, HS = H / NH;
    const float scale = HS > 0 ? 1.0f / sqrtf((float)HS) : 1.0f;
    float *a = j->work + t * TQ * TK;
    int64_t first, last;
    peftc_part_range(j->B * NH, t, nparts, &first, &last);
    for (int64_t bh = first; bh < last; bh++) {
        const int64_t b = bh / NH, h = bh % NH;
        const int64_t qcol = b * TQ * H + h * HS, ccol = b * TC * H + h * HS;
        /* a (TQ,TK) = q_h (TQ,HS) k_h^T: M=TQ, N=TK, K=HS, lda=H, ldb=H, ldc=TK */
        peftc_small_gemm_abt(a, j->q + qcol, j->kc + ccol, TQ, TK, HS, H, H, TK);
        /* query i sits at position TK - TQ + i and sees the keys up to it */
        for (int64_t i = 0; i < TQ; i++)
            masked_softmax_prefix(a + i * TK, NULL, TK - TQ + i + 1, scale, TK);
        /* out_h (TQ,HS) = a (TQ,TK) v_h (TK,HS): M=TQ, N=HS, K=TK, lda=TK, ldb=H, ldc=H */
        peftc_small_gemm_ab(j->out + qcol, a, j->vc + ccol, 0, 0, TQ, HS, TK, TK, H, H);
    }
    return PEFTC_OK;
}

peftc_status peftc_attention_cached_forward(float *out, float *work, const float *q, const float *kc, const float *vc,
                                            int64_t B, int64_t TQ, int64_t TK, int64_t TC, int64_t H, int64_t NH)
{
    if (!attention_args_ok(0.0f, B, TQ, H, NH) || TK < TQ || TC < TK)
        return PEFTC_ERR_SIZE;
    if (B == 0 || TQ == 0)
        return PEFTC_OK;
    cached_job job = {
        .out = out, .work = work, .q = q, .kc = kc, .vc = vc, .B = B, .TQ = TQ, .TK = TK, .TC = TC, .H = H, .NH = NH};
    if (TQ <= FEW_QUERIES)
        return peftc_parallel_run(cached_rows_part, &job, attention_threads(B));
    return peftc_parallel_run(cached_part, &job, attention_threads(B * NH));
}
