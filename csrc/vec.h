/* vec.h: the float vector as wide as the target's vector registers, for the core's hand-vectorised
 * loops (GCC/Clang generic vectors): PEFTC_VL lanes (16 with AVX-512, 8 with AVX, 4 below), and
 * unaligned loads and stores. Internal to the core, not part of the public header. */
#ifndef PEFTC_VEC_H
#define PEFTC_VEC_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define PEFTC_VL 16
#elif defined(__AVX__)
#define PEFTC_VL 8
#else
#define PEFTC_VL 4
#endif

typedef float peftc_vf __attribute__((vector_size(PEFTC_VL * sizeof(float))));

/* unaligned vector load and store (strided rows start anywhere) */
static inline peftc_vf vec_load(const float *p)
{
    peftc_vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void vec_store(float *p, peftc_vf v)
{
    memcpy(p, &v, sizeof v);
}

/* c + a * b lane by lane, rounded once on targets with FMA (ISO C does not contract a * b + c by itself;
 * the fmaf loop compiles to one instruction). Without FMA, fmaf is a library call per lane, so there it
 * is a multiply and an add. */
static inline peftc_vf vec_fma(peftc_vf a, peftc_vf b, peftc_vf c)
{
#ifdef __FMA__
    peftc_vf r;
#pragma GCC unroll 16
    for (int l = 0; l < PEFTC_VL; l++)
        r[l] = __builtin_fmaf(a[l], b[l], c[l]);
    return r;
#else
    return a * b + c;
#endif
}

#endif
