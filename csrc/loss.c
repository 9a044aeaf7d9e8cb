/* loss.c: softmax cross-entropy, mean over the rows whose label is not ignore_index (torch's
 * F.cross_entropy with reduction="mean"). When every row is ignored the loss is 0 and count is 0:
 * no gradient flows, where torch would return NaN. The rows' softmax is softmax_row.h's vectorised
 * passes (fastmath.h's exp), the rows split over the threads; the loss is summed in row order. A NaN or
 * +inf logit, or a row of -inf only, is refused (PEFTC_ERR_NONFINITE) rather than passed on as NaN. */
#include <math.h>

#include "parallel.h"
#include "peftc.h"
#include "softmax_row.h"

/* the rows' softmax, split over the threads: rows are independent and each is computed the same way
 * whichever thread runs it */
typedef struct {
    float *probs;
    const float *logits;
    int64_t N, C;
} softmax_job;

/* a part should hold at least this many logits: a wake-up costs about as much as softmaxing 64k */
#define CE_MIN_PART_LOGITS 65536

static peftc_status softmax_part(void *ctx, int64_t t, int64_t nparts)
{
    const softmax_job *j = ctx;
    int64_t first, last;
    peftc_part_range(j->N, t, nparts, &first, &last);
    for (int64_t n = first; n < last; n++) {
        const float *row = j->logits + n * j->C;
        float *prow = j->probs + n * j->C;
        float mx, mn;
        if (!peftc_row_range(row, j->C, &mx, &mn) || mx == -INFINITY)
            return PEFTC_ERR_NONFINITE; /* NaN, +inf, or every logit -inf: no distribution */
        const float inv = (float)(1.0 / peftc_exp_row(prow, row, j->C, 1.0f, mx, -INFINITY));
        for (int64_t c = 0; c < j->C; c++)
            prow[c] *= inv;
    }
    return PEFTC_OK;
}

/* -log softmax(row)[label] = logsumexp - logit, from the shifted logits in double; for the rare label whose
 * probability rounded to 0 (its logit 87 or more below the top) */
static double row_nll(const float *row, int64_t label, int64_t C)
{
    float mx, mn;
    peftc_row_range(row, C, &mx, &mn); /* the row was found finite by softmax_part */
    double sum = 0.0;
    for (int64_t c = 0; c < C; c++)
        sum += exp((double)row[c] - (double)mx);
    return log(sum) - ((double)row[label] - (double)mx);
}

peftc_status peftc_cross_entropy_forward(float *loss, int64_t *count, float *probs, const float *logits,
                                         const int64_t *labels, int64_t ignore_index, int64_t N, int64_t C)
{
    if (N < 0 || C <= 0)
        return PEFTC_ERR_SIZE;
    for (int64_t n = 0; n < N; n++)
        if (labels[n] != ignore_index && (labels[n] < 0 || labels[n] >= C))
            return PEFTC_ERR_LABEL;
    softmax_job job = {.probs = probs, .logits = logits, .N = N, .C = C};
    const int64_t min_rows = CE_MIN_PART_LOGITS / C;
    const peftc_status st =
        peftc_parallel_run(softmax_part, &job, peftc_parallel_parts(N, min_rows > 1 ? min_rows : 1));
    if (st != PEFTC_OK)
        return st;
    /* the mean over the counted rows, summed in row order (the same on any thread count): -log of the label's
     * probability, a float within a few ulp (about 1e-7 absolute on the loss), or exactly when it is 0 */
    double total = 0.0;
    int64_t counted = 0;
    for (int64_t n = 0; n < N; n++) {
        if (labels[n] == ignore_index)
            continue;
        const float p = probs[n * C + labels[n]];
        total += p > 0.0f ? -log((double)p) : row_nll(logits + n * C, labels[n], C);
        counted++;
    }
    *loss = counted ? (float)(total / (double)counted) : 0.0f;
    *count = counted;
    return PEFTC_OK;
}

peftc_status peftc_cross_entropy_backward(float *dlogits, float dloss, const float *probs, const int64_t *labels,
                                          int64_t ignore_index, int64_t N, int64_t C)
{
    if (N < 0 || C <= 0)
        return PEFTC_ERR_SIZE;
    int64_t counted = 0;
    for (int64_t n = 0; n < N; n++) {
        if (labels[n] == ignore_index)
            continue;
        if (labels[n] < 0 || labels[n] >= C)
            return PEFTC_ERR_LABEL;
        counted++;
    }
    if (counted == 0)
        return PEFTC_OK;
    const float g = dloss / (float)counted;
    for (int64_t n = 0; n < N; n++) {
        if (labels[n] == ignore_index)
            continue;
        const float *prow = probs + n * C;
        float *drow = dlogits + n * C;
        for (int64_t c = 0; c < C; c++)
            drow[c] += g * prow[c];
        drow[labels[n]] -= g;
    }
    return PEFTC_OK;
}
