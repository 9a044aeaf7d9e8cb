/* tta.c: the per-sample math of test-time adaptation: softmax entropy per row with its backward
 * (TENT, EATA, SAR, the open-set filter all minimise a weighted mean of it), and EATA's sample
 * selection (reliability, redundancy against a moving-average prediction, re-weighting).
 * It holds no network code: the backward through the model is the caller's (peftc.nn). */
#include <math.h>

#include "peftc.h"

peftc_status peftc_softmax_entropy_forward(float *ent, float *probs, const float *logits, int64_t N, int64_t C)
{
    if (N < 0 || C <= 0)
        return PEFTC_ERR_SIZE;
    for (int64_t n = 0; n < N; n++) {
        const float *z = logits + n * C;
        float *p = probs + n * C;
        float mx = z[0];
        for (int64_t c = 1; c < C; c++)
            mx = z[c] > mx ? z[c] : mx;
        if (!isfinite(mx))
            return PEFTC_ERR_NONFINITE;
        double sum = 0.0, pz = 0.0;
        for (int64_t c = 0; c < C; c++) {
            const double e = exp((double)z[c] - mx);
            sum += e;
            pz += e * ((double)z[c] - mx);
        }
        /* H = logsumexp(z) - sum_k p_k z_k, both on the shifted logits (the shift cancels) */
        ent[n] = (float)(log(sum) - pz / sum);
        for (int64_t c = 0; c < C; c++)
            p[c] = (float)(exp((double)z[c] - mx) / sum);
    }
    return PEFTC_OK;
}

peftc_status peftc_softmax_entropy_backward(float *dlogits, const float *dent, const float *probs, const float *logits,
                                            int64_t N, int64_t C)
{
    if (N < 0 || C <= 0)
        return PEFTC_ERR_SIZE;
    for (int64_t n = 0; n < N; n++) {
        if (dent[n] == 0.0f)
            continue; /* unselected rows get no gradient (and skip the work) */
        const float *z = logits + n * C;
        const float *p = probs + n * C;
        double pz = 0.0;
        for (int64_t c = 0; c < C; c++)
            pz += (double)p[c] * z[c];
        /* dH/dz_k = p_k (sum_j p_j z_j - z_k) */
        for (int64_t c = 0; c < C; c++)
            dlogits[n * C + c] += (float)((double)dent[n] * p[c] * (pz - z[c]));
    }
    return PEFTC_OK;
}

peftc_status peftc_eata_select(float *weight, int64_t *counts, float *ema, int64_t *ema_set, const float *ent,
                               const float *probs, float e0, float d_margin, float momentum, int64_t N, int64_t C)
{
    if (N < 0 || C <= 0)
        return PEFTC_ERR_SIZE;
    if (!(momentum >= 0.0f && momentum <= 1.0f) || !(d_margin >= 0.0f) || !isfinite(e0))
        return PEFTC_ERR_ARG;
    double ema_norm = 0.0;
    if (*ema_set) {
        for (int64_t c = 0; c < C; c++)
            ema_norm += (double)ema[c] * ema[c];
        ema_norm = sqrt(ema_norm);
    }
    int64_t reliable = 0, selected = 0;
    for (int64_t n = 0; n < N; n++) {
        weight[n] = 0.0f;
        if (!(ent[n] < e0))
            continue;
        reliable++;
        if (*ema_set) {
            const float *p = probs + n * C;
            double dot = 0.0, pn = 0.0;
            for (int64_t c = 0; c < C; c++) {
                dot += (double)ema[c] * p[c];
                pn += (double)p[c] * p[c];
            }
            /* torch.nn.functional.cosine_similarity clamps each norm at 1e-8 */
            const double cosine = dot / (fmax(ema_norm, 1e-8) * fmax(sqrt(pn), 1e-8));
            if (!(fabs(cosine) < d_margin))
                continue;
        }
        selected++;
        /* 1 / exp(H - E0), detached: a constant factor in the loss */
        weight[n] = (float)(1.0 / exp((double)ent[n] - e0));
    }
    /* moving average of the selected predictions: the first batch sets it, later ones blend */
    if (selected > 0) {
        const double a = *ema_set ? momentum : 0.0;
        for (int64_t c = 0; c < C; c++) {
            double mean = 0.0;
            for (int64_t n = 0; n < N; n++)
                if (weight[n] != 0.0f)
                    mean += probs[n * C + c];
            ema[c] = (float)(a * ema[c] + (1.0 - a) * (mean / (double)selected));
        }
        *ema_set = 1;
    }
    counts[0] = reliable;
    counts[1] = selected;
    return PEFTC_OK;
}
