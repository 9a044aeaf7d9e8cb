/* gelu.c: the GELUs of the two model families, forward and backward: the exact (erf) form BERT
 * uses, and the tanh approximation GPT-2 uses (Hugging Face's "gelu_new", torch's approximate="tanh").
 *
 * libm's erff and expf are scalar calls that keep these loops from vectorising, and GELU runs on
 * the widest activation of the encoder (N x 4H). So the loops use inline branch-free versions:
 * Phi from the Chebyshev-fitted erfc of Numerical Recipes (fractional error below 1.2e-7 on all
 * reals, so the left tail stays accurate), and the exp of fastmath.h, both with explicit fmaf
 * Horner steps. The compiler turns the loops into SIMD code (given -fno-trapping-math, setup.py: else
 * the select on the sign of x keeps them scalar). Large inputs are split into
 * contiguous ranges run on the BLAS thread count (parallel.h); each element is computed the same
 * way on any thread. */
#include <math.h>

#include "fastmath.h"
#include "parallel.h"
#include "peftc.h"

/* elements per thread below which one thread does all (about 0.1 ms of work) */
#define GELU_MIN_PER_THREAD 65536

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

/* Phi(x) = P(Z <= x) = erfc(-x / sqrt 2) / 2 */
static inline float normal_cdf(float x)
{
    const float a = fabsf(x) * INV_SQRT2;
    const float t = 1.0f / (1.0f + 0.5f * a);
    float p = 0.17087277f;
    p = fmaf(p, t, -0.82215223f);
    p = fmaf(p, t, 1.48851587f);
    p = fmaf(p, t, -1.13520398f);
    p = fmaf(p, t, 0.27886807f);
    p = fmaf(p, t, -0.18628806f);
    p = fmaf(p, t, 0.09678418f);
    p = fmaf(p, t, 0.37409196f);
    p = fmaf(p, t, 1.00002368f);
    p = fmaf(p, t, -1.26551223f);
    const float half_erfc = 0.5f * t * peftc_exp_approx(fmaf(-a, a, p)); /* erfc(|x| / sqrt 2) / 2 */
    return x >= 0.0f ? 1.0f - half_erfc : half_erfc;
}

typedef struct {
    float *out;
    const float *x, *dout;
    int64_t P;
} gelu_job;

static peftc_status gelu_forward_part(void *ctx, int64_t t, int64_t nparts)
{
    const gelu_job *j = ctx;
    int64_t i0, i1;
    peftc_part_range(j->P, t, nparts, &i0, &i1);
    const float *x = j->x;
    float *out = j->out;
    for (int64_t i = i0; i < i1; i++)
        out[i] = x[i] * normal_cdf(x[i]);
    return PEFTC_OK;
}

peftc_status peftc_gelu_forward(float *out, const float *x, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    gelu_job job = {.out = out, .x = x, .P = P};
    return peftc_parallel_run(gelu_forward_part, &job, peftc_parallel_parts(P, GELU_MIN_PER_THREAD));
}

/* d/dx [x Phi(x)] = Phi(x) + x phi(x) */
static peftc_status gelu_backward_part(void *ctx, int64_t t, int64_t nparts)
{
    const gelu_job *j = ctx;
    int64_t i0, i1;
    peftc_part_range(j->P, t, nparts, &i0, &i1);
    const float *x = j->x, *dout = j->dout;
    float *dx = j->out;
    for (int64_t i = i0; i < i1; i++) {
        const float xi = x[i];
        const float pdf = INV_SQRT_2PI * peftc_exp_approx(-0.5f * xi * xi);
        dx[i] += dout[i] * (normal_cdf(xi) + xi * pdf);
    }
    return PEFTC_OK;
}

peftc_status peftc_gelu_backward(float *dx, const float *dout, const float *x, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    gelu_job job = {.out = dx, .x = x, .dout = dout, .P = P};
    return peftc_parallel_run(gelu_backward_part, &job, peftc_parallel_parts(P, GELU_MIN_PER_THREAD));
}

/* ---- the tanh approximation: out = x (1 + tanh(u)) / 2, u = sqrt(2/pi) (x + 0.044715 x^3) ---------
 * (1 + tanh(u)) / 2 = 1 / (1 + e^{-2u}), a logistic of 2u: one exp of fastmath.h, no libm tanhf, so
 * the loops vectorise. The clamp inside peftc_exp_approx keeps e^{-2u} finite, so the far tails give
 * exactly x (right) and a signed zero-sized value (left) instead of NaN. */
#define SQRT_2_OVER_PI 0.79788456080286535588f
#define GELU_TANH_C 0.044715f

static inline float tanh_gate(float x) /* (1 + tanh(u)) / 2 */
{
    const float u = SQRT_2_OVER_PI * fmaf(GELU_TANH_C * x, x * x, x);
    return 1.0f / (1.0f + peftc_exp_approx(-2.0f * u));
}

static peftc_status gelu_tanh_forward_part(void *ctx, int64_t t, int64_t nparts)
{
    const gelu_job *j = ctx;
    int64_t i0, i1;
    peftc_part_range(j->P, t, nparts, &i0, &i1);
    const float *x = j->x;
    float *out = j->out;
    for (int64_t i = i0; i < i1; i++)
        out[i] = x[i] * tanh_gate(x[i]);
    return PEFTC_OK;
}

peftc_status peftc_gelu_tanh_forward(float *out, const float *x, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    gelu_job job = {.out = out, .x = x, .P = P};
    return peftc_parallel_run(gelu_tanh_forward_part, &job, peftc_parallel_parts(P, GELU_MIN_PER_THREAD));
}

/* with g = (1 + tanh u) / 2:  d/dx [x g] = g + x * 2 g (1 - g) * du/dx,  du/dx = sqrt(2/pi) (1 + 3c x^2),
 * since d tanh(u)/du = 1 - tanh^2 = 4 g (1 - g) */
static peftc_status gelu_tanh_backward_part(void *ctx, int64_t t, int64_t nparts)
{
    const gelu_job *j = ctx;
    int64_t i0, i1;
    peftc_part_range(j->P, t, nparts, &i0, &i1);
    const float *x = j->x, *dout = j->dout;
    float *dx = j->out;
    for (int64_t i = i0; i < i1; i++) {
        const float xi = x[i];
        const float e = peftc_exp_approx(-2.0f * SQRT_2_OVER_PI * fmaf(GELU_TANH_C * xi, xi * xi, xi));
        const float g = 1.0f / (1.0f + e);
        const float gc = e * g; /* 1 - g without the cancellation of 1.0f - g where g is near 1 */
        const float du = SQRT_2_OVER_PI * fmaf(3.0f * GELU_TANH_C * xi, xi, 1.0f);
        dx[i] += dout[i] * fmaf(2.0f * xi * g * gc, du, g);
    }
    return PEFTC_OK;
}

peftc_status peftc_gelu_tanh_backward(float *dx, const float *dout, const float *x, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    gelu_job job = {.out = dx, .x = x, .dout = dout, .P = P};
    return peftc_parallel_run(gelu_tanh_backward_part, &job, peftc_parallel_parts(P, GELU_MIN_PER_THREAD));
}
