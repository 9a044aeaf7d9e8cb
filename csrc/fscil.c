/* fscil.c: the two representation losses of few-shot class-incremental base training that are not a
 * cross-entropy on logits: the supervised contrastive loss (SupCon, Khosla et al. 2020) over unit
 * embeddings, and the dot-regression alignment of unit features to fixed pre-assigned class prototypes
 * (a simplex ETF). The unit normalisation before them is l2_normalize (sentence_mean.c); the rotation-pretext
 * head's loss is the ordinary cross-entropy (loss.c). No network code here. */
#include <math.h>

#include "blas.h"
#include "peftc.h"

/* P(i) = { j != i : labels[j] == labels[i] }; anchors are the rows with a non-empty P(i). */
static int64_t positives(const int64_t *labels, int64_t i, int64_t N)
{
    int64_t count = 0;
    for (int64_t j = 0; j < N; j++)
        count += j != i && labels[j] == labels[i];
    return count;
}

peftc_status peftc_supcon_forward(float *loss, int64_t *anchors, float *probs, const float *z, const int64_t *labels,
                                  float temperature, int64_t N, int64_t H)
{
    if (N < 0 || H <= 0 || !peftc_blas_sizes_ok(N, N, H))
        return PEFTC_ERR_SIZE;
    if (!(temperature > 0.0f) || !isfinite(temperature))
        return PEFTC_ERR_ARG;
    *loss = 0.0f;
    *anchors = 0;
    if (N == 0)
        return PEFTC_OK;
    /* probs = z z^T: (M, N, K) = (N, N, H), lda = ldb = H, ldc = N */
    peftc_status st = peftc_sgemm(0, 1, N, N, H, 1.0f, z, H, z, H, 0.0f, probs, N);
    if (st != PEFTC_OK)
        return st;
    const double inv_t = 1.0 / (double)temperature;
    double total = 0.0;
    int64_t counted = 0;
    for (int64_t i = 0; i < N; i++) {
        float *row = probs + i * N;
        double mx = -INFINITY;
        for (int64_t j = 0; j < N; j++)
            if (j != i && row[j] * inv_t > mx)
                mx = row[j] * inv_t;
        if (N > 1 && !isfinite(mx))
            return PEFTC_ERR_NONFINITE;
        double sum = 0.0;
        for (int64_t j = 0; j < N; j++)
            if (j != i)
                sum += exp(row[j] * inv_t - mx);
        const double lse = mx + log(sum);
        if (N > 1 && !isfinite(lse))
            return PEFTC_ERR_NONFINITE;
        /* -log q_ip = lse - s_ip over the positives, averaged per anchor; the row is then its softmax */
        const int64_t np = positives(labels, i, N);
        double nll = 0.0;
        for (int64_t j = 0; j < N; j++) {
            const double s = row[j] * inv_t;
            if (j != i && labels[j] == labels[i])
                nll += lse - s;
            row[j] = j == i ? 0.0f : (float)exp(s - lse);
        }
        if (np > 0) {
            total += nll / (double)np;
            counted++;
        }
    }
    *loss = counted ? (float)(total / (double)counted) : 0.0f;
    *anchors = counted;
    return PEFTC_OK;
}

peftc_status peftc_supcon_backward(float *dz, float *work, float dloss, const float *probs, const float *z,
                                   const int64_t *labels, float temperature, int64_t N, int64_t H)
{
    if (N < 0 || H <= 0 || !peftc_blas_sizes_ok(N, N, H))
        return PEFTC_ERR_SIZE;
    if (!(temperature > 0.0f) || !isfinite(temperature))
        return PEFTC_ERR_ARG;
    /* dL/ds_ij = (q_ij - [j in P(i)] / |P(i)|) / anchors for an anchor i, j != i (0 otherwise); G in work */
    int64_t counted = 0;
    for (int64_t i = 0; i < N; i++)
        counted += positives(labels, i, N) > 0;
    if (counted == 0)
        return PEFTC_OK;
    for (int64_t i = 0; i < N; i++) {
        const int64_t np = positives(labels, i, N);
        float *g = work + i * N;
        const float *q = probs + i * N;
        for (int64_t j = 0; j < N; j++) {
            double v = 0.0;
            if (np > 0 && j != i)
                v = (double)q[j] - (labels[j] == labels[i] ? 1.0 / (double)np : 0.0);
            g[j] = (float)v;
        }
    }
    /* s = z z^T / t, so dz += (G + G^T) z * dloss / (t * anchors) */
    const float alpha = (float)((double)dloss / ((double)temperature * (double)counted));
    /* dz += alpha G z: (M, N, K) = (N, H, N), lda = N, ldb = H, ldc = H */
    peftc_status st = peftc_sgemm(0, 0, N, H, N, alpha, work, N, z, H, 1.0f, dz, H);
    if (st != PEFTC_OK)
        return st;
    /* dz += alpha G^T z: (M, N, K) = (N, H, N), lda = N, ldb = H, ldc = H */
    return peftc_sgemm(1, 0, N, H, N, alpha, work, N, z, H, 1.0f, dz, H);
}

peftc_status peftc_etf_align_forward(float *loss, int64_t *count, float *dots, const float *feat, const float *targets,
                                     const int64_t *labels, int64_t ignore_index, int64_t N, int64_t H, int64_t K)
{
    if (N < 0 || H <= 0 || K <= 0)
        return PEFTC_ERR_SIZE;
    for (int64_t n = 0; n < N; n++)
        if (labels[n] != ignore_index && (labels[n] < 0 || labels[n] >= K))
            return PEFTC_ERR_LABEL;
    double total = 0.0;
    int64_t counted = 0;
    for (int64_t n = 0; n < N; n++) {
        dots[n] = 0.0f;
        if (labels[n] == ignore_index)
            continue;
        const float *f = feat + n * H, *m = targets + labels[n] * H;
        double d = 0.0;
        for (int64_t h = 0; h < H; h++)
            d += (double)f[h] * m[h];
        dots[n] = (float)d;
        total += 0.5 * (d - 1.0) * (d - 1.0);
        counted++;
    }
    *loss = counted ? (float)(total / (double)counted) : 0.0f;
    *count = counted;
    return PEFTC_OK;
}

peftc_status peftc_etf_align_backward(float *dfeat, float dloss, const float *dots, const float *targets,
                                      const int64_t *labels, int64_t ignore_index, int64_t N, int64_t H, int64_t K)
{
    if (N < 0 || H <= 0 || K <= 0)
        return PEFTC_ERR_SIZE;
    int64_t counted = 0;
    for (int64_t n = 0; n < N; n++) {
        if (labels[n] == ignore_index)
            continue;
        if (labels[n] < 0 || labels[n] >= K)
            return PEFTC_ERR_LABEL;
        counted++;
    }
    for (int64_t n = 0; n < N; n++) {
        if (labels[n] == ignore_index)
            continue;
        /* d/df of (f.m - 1)^2 / 2 is (f.m - 1) m */
        const float scale = (float)((double)dloss * ((double)dots[n] - 1.0) / (double)counted);
        const float *m = targets + labels[n] * H;
        for (int64_t h = 0; h < H; h++)
            dfeat[n * H + h] += scale * m[h];
    }
    return PEFTC_OK;
}
