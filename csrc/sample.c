/* sample.c: drawing the next token of each row of logits, as Hugging Face's generate() samples with
 * its temperature, top-k and top-p logits warpers (in that order), from the counter-based generator:
 * row n draws uniform(seed, offset + n), so a batch of continuations is reproducible from its seed
 * and independent of the thread count. The forward pass that produced the logits is elsewhere.
 *
 * Neither filter sorts. The k-th largest logit and the top-p probability threshold are each found by
 * bisection over the float's ordered bit pattern (32 passes over the row at most): exact, with no
 * scratch memory and no allocation, and cheap at the vocabularies decoding tasks here use.
 *
 * The softmax uses fastmath.h's exp (about 2 ulp) in vectorised passes; a token whose scaled logit is
 * more than 87 below the largest (probability under 1.7e-38) gets exactly 0 and is never drawn. */
#include <math.h>
#include <string.h>

#include "parallel.h"
#include "peftc.h"
#include "rng.h"
#include "softmax_row.h"

/* rows per thread below which one thread samples all rows */
#define SAMPLE_MIN_ROWS 16

/* a float's bit pattern as an int32 that orders like the float (-0 just below +0) */
static inline int32_t ordered_key(float f)
{
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i < 0 ? i ^ 0x7FFFFFFF : i;
}

static inline float key_float(int32_t k)
{
    const int32_t i = k < 0 ? k ^ 0x7FFFFFFF : k;
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

static int64_t count_at_least(const float *x, float v, int64_t V)
{
    int64_t c = 0;
    for (int64_t j = 0; j < V; j++)
        c += x[j] >= v;
    return c;
}

static double mass_at_least(const float *p, float v, int64_t V)
{
    double s = 0.0;
    for (int64_t j = 0; j < V; j++)
        s += p[j] >= v ? (double)p[j] : 0.0;
    return s;
}

/* the k-th largest of x (V values, none NaN, lo <= hi the ordered keys of their min and max): the largest
 * v with at least k values >= v, by bisection on the keys */
static float kth_largest(const float *x, int64_t k, int64_t lo, int64_t hi, int64_t V)
{
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (count_at_least(x, key_float((int32_t)mid), V) >= k)
            lo = mid;
        else
            hi = mid - 1;
    }
    return key_float((int32_t)lo);
}

/* the largest tau in [0, 1] with sum(p >= tau) >= top_p, for probabilities p that sum to 1 */
static float top_p_threshold(const float *p, float top_p, int64_t V)
{
    int64_t lo = 0, hi = ordered_key(1.0f);
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (mass_at_least(p, key_float((int32_t)mid), V) >= (double)top_p)
            lo = mid;
        else
            hi = mid - 1;
    }
    return key_float((int32_t)lo);
}

typedef struct {
    int64_t *tokens;
    float *probs;
    const float *logits;
    float temperature, top_p;
    int64_t top_k;
    uint64_t key, offset;
    int64_t N, V;
} sample_job;

static peftc_status sample_row(const sample_job *j, int64_t n)
{
    const int64_t V = j->V;
    const float *z = j->logits + n * V;
    float *p = j->probs + n * V;
    float mx, mn;
    if (!peftc_row_range(z, V, &mx, &mn) || mx == -INFINITY)
        return PEFTC_ERR_NONFINITE; /* a NaN or +inf, or every logit -inf: nothing can be drawn */
    if (j->temperature == 0.0f) {
        /* greedy: the first largest logit, with probability one */
        int64_t arg = 0;
        while (z[arg] != mx)
            arg++;
        for (int64_t i = 0; i < V; i++)
            p[i] = i == arg ? 1.0f : 0.0f;
        j->tokens[n] = arg;
        return PEFTC_OK;
    }
    /* temperature, then top-k on the scaled logits (kept: >= the k-th largest, ties included, as the
     * warper's "remove below the k-th value") */
    const float inv_t = 1.0f / j->temperature;
    float cut = -INFINITY;
    if (j->top_k > 0 && j->top_k < V) {
        for (int64_t i = 0; i < V; i++)
            p[i] = z[i] * inv_t;
        cut = kth_largest(p, j->top_k, ordered_key(mn * inv_t), ordered_key(mx * inv_t), V);
    }
    /* softmax over the kept logits; removed ones get exactly 0 */
    double sum = peftc_exp_row(p, z, V, inv_t, mx * inv_t, cut);
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < V; i++)
        p[i] *= inv;
    /* top-p: keep token i when the mass of the tokens more probable than it is below top_p; that set
     * is {p >= tau} for the largest tau whose set holds at least top_p of the mass */
    if (j->top_p < 1.0f) {
        const float tau = top_p_threshold(p, j->top_p, V);
        sum = 0.0;
        for (int64_t i = 0; i < V; i++) {
            p[i] = p[i] >= tau ? p[i] : 0.0f;
            sum += p[i];
        }
        inv = (float)(1.0 / sum);
        for (int64_t i = 0; i < V; i++)
            p[i] *= inv;
    }
    /* inverse CDF at u in [0, 1): the first token whose running mass passes u */
    const double u = (double)peftc_rng_u01(j->key, j->offset + (uint64_t)n);
    double run = 0.0;
    int64_t pick = -1;
    for (int64_t i = 0; i < V; i++) {
        if (p[i] > 0.0f) {
            pick = i; /* the last kept token, should rounding leave u above the total */
            run += p[i];
            if (run > u)
                break;
        }
    }
    j->tokens[n] = pick;
    return PEFTC_OK;
}

static peftc_status sample_part(void *ctx, int64_t t, int64_t nparts)
{
    const sample_job *j = ctx;
    int64_t first, last;
    peftc_part_range(j->N, t, nparts, &first, &last);
    for (int64_t n = first; n < last; n++) {
        const peftc_status st = sample_row(j, n);
        if (st != PEFTC_OK)
            return st;
    }
    return PEFTC_OK;
}

peftc_status peftc_sample_tokens(int64_t *tokens, float *probs, const float *logits, float temperature, int64_t top_k,
                                 float top_p, uint64_t seed, uint64_t offset, int64_t N, int64_t V)
{
    if (N < 0 || V <= 0)
        return PEFTC_ERR_SIZE;
    if (!(temperature >= 0.0f) || temperature == INFINITY || top_k < 0 || !(top_p > 0.0f && top_p <= 1.0f))
        return PEFTC_ERR_ARG;
    sample_job job = {.tokens = tokens,
                      .probs = probs,
                      .logits = logits,
                      .temperature = temperature,
                      .top_p = top_p,
                      .top_k = top_k,
                      .key = peftc_rng_key(seed),
                      .offset = offset,
                      .N = N,
                      .V = V};
    return peftc_parallel_run(sample_part, &job, peftc_parallel_parts(N, SAMPLE_MIN_ROWS));
}
