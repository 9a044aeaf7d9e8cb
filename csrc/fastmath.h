/* fastmath.h: inline, branch-free float exp for hot loops that libm's scalar expf would keep from
 * vectorising (GELU, softmax). Cody-Waite range reduction plus a degree-6 polynomial: about 2 ulp
 * on [-87, 88]; inputs outside are clamped, so the result is never Inf or NaN (e^-87 ~ 1.6e-38).
 * The Horner steps are explicit fmaf: the build is ISO C (-std=c11), where the compiler does not
 * contract a * b + c on its own, and with -march=native fmaf is one inline instruction that both
 * halves the work and rounds once instead of twice. */
#ifndef PEFTC_FASTMATH_H
#define PEFTC_FASTMATH_H

#include <math.h>
#include <stdint.h>

static inline float peftc_exp_approx(float x)
{
    /* comparisons, not fminf/fmaxf: those stay library calls without -ffinite-math-only */
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* round to nearest by the 1.5 * 2^23 shift: floorf would not vectorise without -fno-trapping-math */
    const float n = fmaf(x, 1.44269504088896341f, 12582912.0f) - 12582912.0f;
    float r = fmaf(n, -0.693145751953125f, x); /* ln 2 split: the high part is exact in float */
    r = fmaf(n, -1.428606765330187e-06f, r);
    float p = 1.0f / 720.0f;
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    union {
        int32_t i;
        float f;
    } scale = {.i = ((int32_t)n + 127) << 23};
    return p * scale.f;
}

#endif
