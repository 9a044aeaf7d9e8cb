/* loss.c: softmax cross-entropy, mean over the rows whose label is not ignore_index (torch's
 * F.cross_entropy with reduction="mean"). When every row is ignored the loss is 0 and count is 0:
 * no gradient flows, where torch would return NaN. The row softmax is softmax_row.h's vectorised
 * passes (fastmath.h's exp); the loss itself is log(sum) minus the shifted label logit, in double. */
#include <math.h>

#include "peftc.h"
#include "softmax_row.h"

peftc_status peftc_cross_entropy_forward(float *loss, int64_t *count, float *probs, const float *logits,
                                         const int64_t *labels, int64_t ignore_index, int64_t N, int64_t C)
{
    if (N < 0 || C <= 0)
        return PEFTC_ERR_SIZE;
    for (int64_t n = 0; n < N; n++)
        if (labels[n] != ignore_index && (labels[n] < 0 || labels[n] >= C))
            return PEFTC_ERR_LABEL;
    double total = 0.0;
    int64_t counted = 0;
    for (int64_t n = 0; n < N; n++) {
        const float *row = logits + n * C;
        float *prow = probs + n * C;
        const float mx = peftc_row_max(row, C);
        const double sum = peftc_exp_row(prow, row, C, 1.0f, mx, -INFINITY);
        const float inv = (float)(1.0 / sum);
        for (int64_t c = 0; c < C; c++)
            prow[c] *= inv;
        if (labels[n] != ignore_index) {
            /* -log softmax = logsumexp - logit, computed from the shifted logits for accuracy */
            total += log(sum) - (double)(row[labels[n]] - mx);
            counted++;
        }
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
