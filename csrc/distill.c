/* distill.c: the losses of data-free knowledge distillation: the temperature-scaled KD divergence
 * (Hinton et al.), DeepInversion's BatchNorm-statistics matching, total-variation prior and adaptive
 * (ADI) competition term, and DAFL's activation and information-entropy terms. DAFL's third term, the
 * one-hot loss, is the softmax cross-entropy against the teacher's own argmax (loss.c), and
 * DeepInversion's L2 prior a plain norm: neither lives here. Each kernel computes one scalar loss; its
 * backward adds dloss times the loss's gradient into the caller's buffer. The networks' backward passes
 * are the caller's (peftc.nn). */
#include <math.h>

#include "peftc.h"

static int row_finite(const float *z, int64_t C)
{
    for (int64_t c = 0; c < C; c++)
        if (!isfinite(z[c]))
            return 0;
    return 1;
}

peftc_status peftc_kd_kl_forward(float *loss, float *ps, float *pt, const float *zs, const float *zt, float tau,
                                 int64_t N, int64_t C)
{
    if (N <= 0 || C <= 0)
        return PEFTC_ERR_SIZE;
    if (!(tau > 0.0f) || !isfinite(tau))
        return PEFTC_ERR_ARG;
    double total = 0.0;
    for (int64_t n = 0; n < N; n++) {
        const float *s = zs + n * C, *t = zt + n * C;
        if (!row_finite(s, C) || !row_finite(t, C))
            return PEFTC_ERR_NONFINITE;
        /* each log-probability is rebuilt from its row's log-sum-exp: no scratch row needed */
        double mxs = (double)s[0] / tau, mxt = (double)t[0] / tau;
        for (int64_t c = 1; c < C; c++) {
            mxs = fmax(mxs, (double)s[c] / tau);
            mxt = fmax(mxt, (double)t[c] / tau);
        }
        double sums = 0.0, sumt = 0.0;
        for (int64_t c = 0; c < C; c++) {
            sums += exp((double)s[c] / tau - mxs);
            sumt += exp((double)t[c] / tau - mxt);
        }
        const double lses = mxs + log(sums), lset = mxt + log(sumt);
        double row = 0.0;
        for (int64_t c = 0; c < C; c++) {
            const double lps = (double)s[c] / tau - lses, lpt = (double)t[c] / tau - lset;
            const double p = exp(lpt);
            row += p * (lpt - lps);
            ps[n * C + c] = (float)exp(lps);
            pt[n * C + c] = (float)p;
        }
        total += row > 0.0 ? row : 0.0; /* KL >= 0: a rounding-level negative row counts as 0 */
    }
    *loss = (float)((double)tau * tau * total / (double)N);
    return PEFTC_OK;
}

peftc_status peftc_kd_kl_backward(float *dzs, float *dzt, float dloss, const float *ps, const float *pt,
                                  const float *zs, const float *zt, float tau, int64_t N, int64_t C)
{
    if (N <= 0 || C <= 0)
        return PEFTC_ERR_SIZE;
    if (!(tau > 0.0f) || !isfinite(tau))
        return PEFTC_ERR_ARG;
    /* d(tau^2/N sum pt (log pt - log ps)) / dzs = tau/N (ps - pt) */
    const double g = (double)dloss * tau / (double)N;
    if (dzs)
        for (int64_t i = 0; i < N * C; i++)
            dzs[i] += (float)(g * ((double)ps[i] - pt[i]));
    if (!dzt)
        return PEFTC_OK;
    /* through pt: tau/N pt_k (r_k - sum_c pt_c r_c) with r = log pt - log ps = (zt - zs) / tau minus a
     * per-row constant, which cancels: no log of a probability (one that underflowed to 0 has none) */
    for (int64_t n = 0; n < N; n++) {
        const float *s = zs + n * C, *t = zt + n * C, *p = pt + n * C;
        double mean_r = 0.0;
        for (int64_t c = 0; c < C; c++)
            mean_r += (double)p[c] * ((double)t[c] - s[c]) / tau;
        for (int64_t c = 0; c < C; c++)
            dzt[n * C + c] += (float)(g * p[c] * (((double)t[c] - s[c]) / tau - mean_r));
    }
    return PEFTC_OK;
}

/* softmax(z / tau) of one row of C logits into p, in double, written as float */
static void softmax_row(float *p, const float *z, float tau, int64_t C)
{
    double mx = (double)z[0] / tau;
    for (int64_t c = 1; c < C; c++)
        mx = fmax(mx, (double)z[c] / tau);
    double sum = 0.0;
    for (int64_t c = 0; c < C; c++)
        sum += exp((double)z[c] / tau - mx);
    for (int64_t c = 0; c < C; c++)
        p[c] = (float)(exp((double)z[c] / tau - mx) / sum);
}

/* ADI's clamp range for the probabilities (the reference code's constants) */
#define ADI_LO 0.01
#define ADI_HI 0.99

static double adi_clamp(double v)
{
    return v < ADI_LO ? ADI_LO : (v > ADI_HI ? ADI_HI : v);
}

static double adi_pass(double v)
{
    return v >= ADI_LO && v <= ADI_HI ? 1.0 : 0.0;
}

/* dJS/dp and dJS/dq of one class's term m (log m - (log p' + log q') / 2), p' q' m the clamped values and
 * m = (p + q) / 2 before its clamp: through m (half each) and through p', q' themselves */
static void adi_prob_grads(double *dp, double *dq, double p, double q)
{
    const double mu = 0.5 * (p + q), m = adi_clamp(mu), cp = adi_clamp(p), cq = adi_clamp(q);
    const double dm = 0.5 * adi_pass(mu) * (log(m) + 1.0 - 0.5 * (log(cp) + log(cq)));
    *dp = dm - 0.5 * adi_pass(p) * m / cp;
    *dq = dm - 0.5 * adi_pass(q) * m / cq;
}

peftc_status peftc_adi_js_forward(float *loss, float *ps, float *pt, const float *zs, const float *zt, float tau,
                                  int64_t N, int64_t C)
{
    if (N <= 0 || C <= 0)
        return PEFTC_ERR_SIZE;
    if (!(tau > 0.0f) || !isfinite(tau))
        return PEFTC_ERR_ARG;
    double total = 0.0;
    for (int64_t n = 0; n < N; n++) {
        if (!row_finite(zs + n * C, C) || !row_finite(zt + n * C, C))
            return PEFTC_ERR_NONFINITE;
        float *p = ps + n * C, *q = pt + n * C;
        softmax_row(p, zs + n * C, tau, C);
        softmax_row(q, zt + n * C, tau, C);
        for (int64_t c = 0; c < C; c++) {
            const double m = adi_clamp(0.5 * ((double)p[c] + q[c]));
            total += m * (log(m) - 0.5 * (log(adi_clamp(p[c])) + log(adi_clamp(q[c]))));
        }
    }
    *loss = (float)(total / (double)N);
    return PEFTC_OK;
}

peftc_status peftc_adi_js_backward(float *dzs, float *dzt, float dloss, const float *ps, const float *pt, float tau,
                                   int64_t N, int64_t C)
{
    if (N <= 0 || C <= 0)
        return PEFTC_ERR_SIZE;
    if (!(tau > 0.0f) || !isfinite(tau))
        return PEFTC_ERR_ARG;
    const double g = (double)dloss / ((double)N * tau);
    for (int64_t n = 0; n < N; n++) {
        const float *p = ps + n * C, *q = pt + n * C;
        /* the softmax Jacobian: dz_k = (1/tau) p_k (dp_k - sum_c p_c dp_c) */
        double sp = 0.0, sq = 0.0, dp, dq;
        for (int64_t c = 0; c < C; c++) {
            adi_prob_grads(&dp, &dq, p[c], q[c]);
            sp += p[c] * dp;
            sq += q[c] * dq;
        }
        for (int64_t c = 0; c < C; c++) {
            adi_prob_grads(&dp, &dq, p[c], q[c]);
            if (dzs)
                dzs[n * C + c] += (float)(g * p[c] * (dp - sp));
            if (dzt)
                dzt[n * C + c] += (float)(g * q[c] * (dq - sq));
        }
    }
    return PEFTC_OK;
}

/* per-channel batch mean and biased variance over (N, IH, IW), in double, written as float */
static void channel_stats(float *mean, float *var, const float *x, int64_t N, int64_t CH, int64_t HW)
{
    const double m = (double)N * HW;
    for (int64_t c = 0; c < CH; c++) {
        double s = 0.0;
        for (int64_t n = 0; n < N; n++) {
            const float *p = x + (n * CH + c) * HW;
            for (int64_t i = 0; i < HW; i++)
                s += p[i];
        }
        const double mu = s / m;
        double q = 0.0;
        for (int64_t n = 0; n < N; n++) {
            const float *p = x + (n * CH + c) * HW;
            for (int64_t i = 0; i < HW; i++)
                q += ((double)p[i] - mu) * ((double)p[i] - mu);
        }
        mean[c] = (float)mu;
        var[c] = (float)(q / m);
    }
}

/* ||a - b||_2 over CH values, in double */
static double diff_norm(const float *a, const float *b, int64_t CH)
{
    double s = 0.0;
    for (int64_t c = 0; c < CH; c++)
        s += ((double)a[c] - b[c]) * ((double)a[c] - b[c]);
    return sqrt(s);
}

peftc_status peftc_bn_stat_match_forward(float *loss, float *mean, float *var, const float *x,
                                         const float *running_mean, const float *running_var, int64_t N, int64_t CH,
                                         int64_t IH, int64_t IW)
{
    if (N <= 0 || CH <= 0 || IH <= 0 || IW <= 0)
        return PEFTC_ERR_SIZE;
    channel_stats(mean, var, x, N, CH, IH * IW);
    const double dm = diff_norm(mean, running_mean, CH), dv = diff_norm(var, running_var, CH);
    if (!isfinite(dm) || !isfinite(dv))
        return PEFTC_ERR_NONFINITE;
    *loss = (float)(dm + dv);
    return PEFTC_OK;
}

peftc_status peftc_bn_stat_match_backward(float *dx, float dloss, const float *x, const float *mean, const float *var,
                                          const float *running_mean, const float *running_var, int64_t N, int64_t CH,
                                          int64_t IH, int64_t IW)
{
    if (N <= 0 || CH <= 0 || IH <= 0 || IW <= 0)
        return PEFTC_ERR_SIZE;
    const int64_t HW = IH * IW;
    const double m = (double)N * HW;
    const double dm = diff_norm(mean, running_mean, CH), dv = diff_norm(var, running_var, CH);
    for (int64_t c = 0; c < CH; c++) {
        /* d||mu - r||/dmu_c = (mu_c - r_c) / ||mu - r|| (0 at a zero norm, torch's subgradient), and
         * dmu_c/dx = 1/m; d var_c/dx = 2 (x - mu_c) / m (the mean's own dependence sums to zero) */
        const double a = dm > 0.0 ? ((double)mean[c] - running_mean[c]) / dm : 0.0;
        const double b = dv > 0.0 ? ((double)var[c] - running_var[c]) / dv : 0.0;
        const double ga = (double)dloss * a / m, gb = (double)dloss * 2.0 * b / m;
        for (int64_t n = 0; n < N; n++) {
            const float *p = x + (n * CH + c) * HW;
            float *d = dx + (n * CH + c) * HW;
            for (int64_t i = 0; i < HW; i++)
                d[i] += (float)(ga + gb * ((double)p[i] - mean[c]));
        }
    }
    return PEFTC_OK;
}

peftc_status peftc_dafl_activation_forward(float *loss, const float *f, int64_t P)
{
    if (P <= 0)
        return PEFTC_ERR_SIZE;
    double s = 0.0;
    for (int64_t i = 0; i < P; i++)
        s += fabs((double)f[i]);
    if (!isfinite(s))
        return PEFTC_ERR_NONFINITE;
    *loss = (float)(-s / (double)P);
    return PEFTC_OK;
}

peftc_status peftc_dafl_activation_backward(float *df, float dloss, const float *f, int64_t P)
{
    if (P <= 0)
        return PEFTC_ERR_SIZE;
    /* d(-mean |f|)/df = -sign(f) / P, sign(0) = 0 as torch's abs gradient */
    const float g = (float)(-(double)dloss / (double)P);
    for (int64_t i = 0; i < P; i++)
        df[i] += f[i] > 0.0f ? g : (f[i] < 0.0f ? -g : 0.0f);
    return PEFTC_OK;
}

peftc_status peftc_dafl_entropy_forward(float *loss, float *probs, float *pbar, const float *logits, int64_t N,
                                        int64_t C)
{
    if (N <= 0 || C <= 0)
        return PEFTC_ERR_SIZE;
    for (int64_t c = 0; c < C; c++)
        pbar[c] = 0.0f;
    for (int64_t n = 0; n < N; n++) {
        const float *z = logits + n * C;
        if (!row_finite(z, C))
            return PEFTC_ERR_NONFINITE;
        float mx = z[0];
        for (int64_t c = 1; c < C; c++)
            mx = z[c] > mx ? z[c] : mx;
        double sum = 0.0;
        for (int64_t c = 0; c < C; c++)
            sum += exp((double)z[c] - mx);
        for (int64_t c = 0; c < C; c++)
            probs[n * C + c] = (float)(exp((double)z[c] - mx) / sum);
    }
    /* the column means in double, one column at a time so pbar needs no wider scratch */
    double total = 0.0;
    for (int64_t c = 0; c < C; c++) {
        double s = 0.0;
        for (int64_t n = 0; n < N; n++)
            s += probs[n * C + c];
        const double q = s / (double)N;
        pbar[c] = (float)q;
        if (q > 0.0)
            total += q * log(q); /* 0 log 0 = 0 */
    }
    *loss = (float)total;
    return PEFTC_OK;
}

peftc_status peftc_dafl_entropy_backward(float *dlogits, float dloss, const float *probs, const float *pbar, int64_t N,
                                         int64_t C)
{
    if (N <= 0 || C <= 0)
        return PEFTC_ERR_SIZE;
    /* L = sum_c pbar_c log pbar_c, pbar = mean_n p_n: dL/dz_nk = p_nk (l_k - sum_c p_nc l_c) / N with
     * l = log pbar (the "+1" of d(q log q)/dq cancels because each p_n sums to 1). A class with
     * pbar_c = 0 has p_nc = 0 in every row and contributes nothing. */
    const double g = (double)dloss / (double)N;
    for (int64_t n = 0; n < N; n++) {
        const float *p = probs + n * C;
        double mean_l = 0.0;
        for (int64_t c = 0; c < C; c++)
            if (pbar[c] > 0.0f)
                mean_l += (double)p[c] * log((double)pbar[c]);
        for (int64_t c = 0; c < C; c++)
            if (pbar[c] > 0.0f)
                dlogits[n * C + c] += (float)(g * p[c] * (log((double)pbar[c]) - mean_l));
    }
    return PEFTC_OK;
}

/* DeepInversion's four neighbour differences d = x[i + ra, j + ca] - x[i + rb, j + cb] over
 * i < IH - dr, j < IW - dc: horizontal, vertical, and the two diagonals, in its code's order */
static const struct {
    int64_t ra, ca, rb, cb, dr, dc;
} tv_dirs[4] = {
    {0, 0, 0, 1, 0, 1}, /* x[:, :, :, :-1] - x[:, :, :, 1:] */
    {0, 0, 1, 0, 1, 0}, /* x[:, :, :-1, :] - x[:, :, 1:, :] */
    {1, 0, 0, 1, 1, 1}, /* x[:, :, 1:, :-1] - x[:, :, :-1, 1:] */
    {0, 0, 1, 1, 1, 1}, /* x[:, :, :-1, :-1] - x[:, :, 1:, 1:] */
};

peftc_status peftc_tv_forward(float *l1, float *l2, float *norms, const float *x, int64_t N, int64_t CH, int64_t IH,
                              int64_t IW)
{
    if (N <= 0 || CH <= 0 || IH < 2 || IW < 2)
        return PEFTC_ERR_SIZE;
    double s1 = 0.0, s2 = 0.0;
    for (int d = 0; d < 4; d++) {
        const int64_t rows = IH - tv_dirs[d].dr, cols = IW - tv_dirs[d].dc;
        double a = 0.0, q = 0.0;
        for (int64_t img = 0; img < N * CH; img++) {
            const float *p = x + img * IH * IW;
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < cols; j++) {
                    const double v = (double)p[(i + tv_dirs[d].ra) * IW + j + tv_dirs[d].ca] -
                                     p[(i + tv_dirs[d].rb) * IW + j + tv_dirs[d].cb];
                    a += fabs(v);
                    q += v * v;
                }
        }
        if (!isfinite(q))
            return PEFTC_ERR_NONFINITE;
        norms[d] = (float)sqrt(q);
        s1 += a / ((double)N * CH * rows * cols);
        s2 += sqrt(q);
    }
    *l1 = (float)s1;
    *l2 = (float)s2;
    return PEFTC_OK;
}

peftc_status peftc_tv_backward(float *dx, float dl1, float dl2, const float *x, const float *norms, int64_t N,
                               int64_t CH, int64_t IH, int64_t IW)
{
    if (N <= 0 || CH <= 0 || IH < 2 || IW < 2)
        return PEFTC_ERR_SIZE;
    for (int d = 0; d < 4; d++) {
        const int64_t rows = IH - tv_dirs[d].dr, cols = IW - tv_dirs[d].dc;
        /* mean |v|: sign(v) / count; ||v||_F: v / ||v|| (0 at a zero norm) */
        const double g1 = (double)dl1 / ((double)N * CH * rows * cols);
        const double g2 = norms[d] > 0.0f ? (double)dl2 / norms[d] : 0.0;
        for (int64_t img = 0; img < N * CH; img++) {
            const float *p = x + img * IH * IW;
            float *q = dx + img * IH * IW;
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < cols; j++) {
                    const int64_t ia = (i + tv_dirs[d].ra) * IW + j + tv_dirs[d].ca;
                    const int64_t ib = (i + tv_dirs[d].rb) * IW + j + tv_dirs[d].cb;
                    const double v = (double)p[ia] - p[ib];
                    const double g = g1 * (v > 0.0 ? 1.0 : (v < 0.0 ? -1.0 : 0.0)) + g2 * v;
                    q[ia] += (float)g;
                    q[ib] -= (float)g;
                }
        }
    }
    return PEFTC_OK;
}
