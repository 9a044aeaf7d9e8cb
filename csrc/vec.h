/* vec.h: the float vector as wide as the target's vector registers, for the core's hand-vectorised
 * loops (GCC/Clang generic vectors): PEFTC_VL lanes (16 with AVX-512, 8 with AVX, 4 below), and
 * unaligned whole and partial loads and stores. Internal to the core, not part of the public header. */
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

static inline void vec_store(float *p, peftc_vf v) { memcpy(p, &v, sizeof v); }

/* n <= PEFTC_VL floats of p as a vector, zero past n (a whole vector: one load) */
static inline peftc_vf vec_load_part(const float *p, int64_t n)
{
    peftc_vf v = {0.0f};
    if (n == PEFTC_VL)
        memcpy(&v, p, sizeof v);
    else
        memcpy(&v, p, (size_t)n * sizeof(float));
    return v;
}

/* the first n <= PEFTC_VL lanes of v to p */
static inline void vec_store_part(float *p, peftc_vf v, int64_t n)
{
    if (n == PEFTC_VL)
        memcpy(p, &v, sizeof v);
    else
        memcpy(p, &v, (size_t)n * sizeof(float));
}

#endif
