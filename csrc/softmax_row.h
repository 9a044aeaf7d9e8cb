/* softmax_row.h: the vectorised passes over one row of logits that token sampling (sample.c) and the
 * cross-entropy loss (loss.c) share. Each keeps PEFTC_ROW_LANES partial results so that it vectorises: a
 * plain loop carries one accumulator, which the compiler may not reorder. The exp is fastmath.h's (about
 * 2 ulp). Internal to the core, not part of the public header. */
#ifndef PEFTC_SOFTMAX_ROW_H
#define PEFTC_SOFTMAX_ROW_H

#include <math.h>
#include <stdint.h>

#include "fastmath.h"

#define PEFTC_ROW_LANES 16

/* the largest and smallest of x (V values); returns 0 when a value is NaN or +inf */
static inline int peftc_row_range(const float *x, int64_t V, float *mx, float *mn)
{
    float hi[PEFTC_ROW_LANES], lo[PEFTC_ROW_LANES];
    int bad[PEFTC_ROW_LANES];
    for (int l = 0; l < PEFTC_ROW_LANES; l++) {
        hi[l] = -INFINITY;
        lo[l] = INFINITY;
        bad[l] = 0;
    }
    int64_t i = 0;
    for (; i + PEFTC_ROW_LANES <= V; i += PEFTC_ROW_LANES)
        for (int l = 0; l < PEFTC_ROW_LANES; l++) {
            const float v = x[i + l];
            bad[l] |= !(v < INFINITY); /* NaN or +inf */
            hi[l] = v > hi[l] ? v : hi[l];
            lo[l] = v < lo[l] ? v : lo[l];
        }
    for (; i < V; i++) {
        const float v = x[i];
        bad[0] |= !(v < INFINITY);
        hi[0] = v > hi[0] ? v : hi[0];
        lo[0] = v < lo[0] ? v : lo[0];
    }
    int any = 0;
    *mx = -INFINITY;
    *mn = INFINITY;
    for (int l = 0; l < PEFTC_ROW_LANES; l++) {
        any |= bad[l];
        *mx = hi[l] > *mx ? hi[l] : *mx;
        *mn = lo[l] < *mn ? lo[l] : *mn;
    }
    return !any;
}

/* p[i] = exp(s[i] - top) where s[i] = z[i] * inv_t >= cut, else exactly 0 (also where s[i] - top < -87,
 * below which the approximation would clamp: probability under 1.7e-38, such tokens are never drawn);
 * returns the sum in double. inv_t = 1 and cut = -inf give the plain softmax numerators of z. */
static inline double peftc_exp_row(float *p, const float *z, int64_t V, float inv_t, float top, float cut)
{
    double acc[PEFTC_ROW_LANES] = {0.0};
    int64_t i = 0;
    for (; i + PEFTC_ROW_LANES <= V; i += PEFTC_ROW_LANES)
        for (int l = 0; l < PEFTC_ROW_LANES; l++) {
            const float s = z[i + l] * inv_t, d = s - top;
            const float e = s >= cut && d >= -87.0f ? peftc_exp_approx(d) : 0.0f;
            p[i + l] = e;
            acc[l] += (double)e;
        }
    double sum = 0.0;
    for (int l = 0; l < PEFTC_ROW_LANES; l++)
        sum += acc[l];
    for (; i < V; i++) {
        const float s = z[i] * inv_t, d = s - top;
        p[i] = s >= cut && d >= -87.0f ? peftc_exp_approx(d) : 0.0f;
        sum += (double)p[i];
    }
    return sum;
}

#endif
