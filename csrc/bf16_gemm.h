/* bf16_gemm.h: a frozen linear layer whose weight is stored in bfloat16, packed once at load, for the
 * forward y = x w^T + b and the input gradient dx += dy w. Activations, outputs, bias and accumulation
 * stay float32; only the frozen weight is bf16 (half the bytes of float32). Adapters on top of such a
 * layer run their own float32 kernels (lora.c with w = NULL) beside these.
 *
 * bf16 is the top 16 bits of a float32 (sign, 8 exponent bits, 7 fraction bits); a float32 becomes one
 * by rounding to nearest, ties to even (NaN stays a quiet NaN; values past the largest bf16 become Inf).
 *
 * The packed weight (peftc_bf16_pack) is w's rows in bf16, each row padded with zeros to KP =
 * peftc_bf16_padded_ic(IC) (IC rounded up to 32) columns: OC x KP x 2 bytes, half of the float32 w
 * plus the padding (none when IC is a multiple of 32, as in every BERT layer). One layout serves both
 * products, each streaming rows of it along k: the forward takes dot products of x's rows with w's rows
 * (y[n,o] = sum_k x[n,k] w[o,k]; the vector lanes run along k and are summed at the end of the row), the
 * backward adds multiples of w's rows into dx's rows (dx[n,:] += sum_o dy[n,o] w[o,:]; the lanes run along
 * k, dx's columns). The zero padding lets every weight load be a full vector.
 *
 * Paths (peftc_bf16_path), chosen by the caller; each kernel refuses (PEFTC_ERR_ARG) a path the CPU
 * cannot run rather than executing an instruction it lacks:
 *   AVX512BF16  forward: x rounded to bf16 into the workspace, then vdpbf16ps (pairs of bf16 products
 *               summed into float32 lanes); backward: the AVX512F kernel (vdpbf16ps pairs along the
 *               reduction axis, which for dx is OC, and this layout pairs along IC).
 *   AVX512F     per call, blocks of the packed weight are copied into panels (each panel row pairs two
 *               columns' bf16 in one 32-bit word, so a shift and an AND widen it to float32); an 8 x 32
 *               register block of outputs then takes one float32 FMA per reduction step, the activations
 *               broadcast in place: per output entry its base (y_in and b, or dx_in), then one FMA per step
 *               of k (forward) or o (backward) in order. 16 lanes.
 *   AVX2        the same with AVX2 + FMA, a 6 x 16 register block, 8 lanes.
 *   GENERIC     plain C, the same arithmetic one float at a time (any CPU).
 *
 * Error bounds, stated against float64 arithmetic on the same bf16-rounded weight wr = bf16(w), for
 * every output entry (u = 2^-24, the float32 unit roundoff; u_bf = 2^-8, bf16's):
 *   forward, AVX2 / AVX512F / GENERIC:  |y - y64| <= (IC + 2) u (sum_k |x[n,k] wr[o,k]| + |b[o]| + |y_in|)
 *   forward, AVX512BF16 (x rounded too): |y - y64| <= (u_bf + (IC + 2) u) (sum_k |x[n,k] wr[o,k]| + |b[o]| + |y_in|)
 *   backward, every path:               |dx - dx64| <= (OC + 1) u (sum_o |dy[n,o] wr[o,k]| + |dx_in[n,k]|)
 * (y_in, dx_in: what an accumulating call adds to; the AVX512BF16 bound is to first order in u_bf).
 * Against the unrounded float32 weight w add u_bf sum |x w| (|wr - w| <= u_bf |w| for each weight).
 * tests/test_bf16_gemm.py checks each path the machine runs against these bounds. Each entry is one fixed
 * chain of operations over k (or o), so results do not depend on the thread count or the split.
 *
 * Threads: the products split their output columns (y's or dx's) into contiguous ranges of whole strips of
 * 16 or 32 (or, where there are fewer strips than threads, their rows) on the BLAS thread count (parallel.h).
 * Kernels allocate nothing: the AVX512-BF16 forward's scratch is the caller's, the widening paths' packed
 * blocks (96 KB) are on the stack of the thread that runs the part. */
#ifndef PEFTC_BF16_GEMM_H
#define PEFTC_BF16_GEMM_H

#include <stdint.h>
#include <string.h>

#include "peftc.h"

typedef enum {
    PEFTC_BF16_GENERIC = 0,
    PEFTC_BF16_AVX2 = 1,
    PEFTC_BF16_AVX512F = 2,
    PEFTC_BF16_AVX512BF16 = 3,
} peftc_bf16_path;

#define PEFTC_BF16_NPATHS 4

/* 1 when this CPU (CPUID, and the OS's saved vector state) can run the path, else 0 */
int peftc_bf16_path_supported(peftc_bf16_path path);

/* the fastest path this CPU can run */
peftc_bf16_path peftc_bf16_path_best(void);

/* IC rounded up to a multiple of 32, or -1 for IC < 0 */
static inline int64_t peftc_bf16_padded_ic(int64_t IC)
{
    return IC < 0 ? -1 : (IC + 31) / 32 * 32;
}

/* float32 -> bf16, round to nearest with ties to even; a NaN stays a (quiet) NaN of the same sign */
static inline uint16_t peftc_bf16_from_f32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* bf16 -> float32 (exact) */
static inline float peftc_bf16_to_f32(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* out = bf16(x) elementwise */
peftc_status peftc_bf16_round(uint16_t *out /* (P) overwritten */, const float *x /* (P) */, int64_t P);

/* wp = w in bf16, rows padded with zeros to KP columns */
peftc_status peftc_bf16_pack(uint16_t *wp /* (OC,KP) overwritten */, const float *w /* (OC,IC) */, int64_t IC,
                             int64_t OC);

/* w = the float32 values of wp's first IC columns (exact) */
peftc_status peftc_bf16_unpack(float *w /* (OC,IC) overwritten */, const uint16_t *wp /* (OC,KP) */, int64_t IC,
                               int64_t OC);

/* floats of scratch peftc_bf16_linear_forward needs on this path: N * KP / 2 (x in bf16) for
 * AVX512BF16, 0 for the others; -1 for negative sizes */
int64_t peftc_bf16_linear_workspace_size(int64_t N, int64_t IC, peftc_bf16_path path);

/* y = x wp^T + b, or with accumulate != 0, y += x wp^T + b */
peftc_status peftc_bf16_linear_forward(float *y /* (N,OC) overwritten, or accumulated */,
                                       float *work /* peftc_bf16_linear_workspace_size() floats, or NULL if 0 */,
                                       const float *x /* (N,IC) */, const uint16_t *wp /* (OC,KP) */,
                                       const float *b /* (OC) or NULL */, int accumulate, peftc_bf16_path path,
                                       int64_t N, int64_t IC, int64_t OC);

/* dx += dy wp (the frozen layer's input gradient; the weight has none) */
peftc_status peftc_bf16_linear_backward(float *dx /* (N,IC) accumulated */, const float *dy /* (N,OC) */,
                                        const uint16_t *wp /* (OC,KP) */, peftc_bf16_path path, int64_t N, int64_t IC,
                                        int64_t OC);

/* The machine's bf16 dot-product peak, for benchmarks: on each of `threads` threads (in [1, PEFTC_MAX_THREADS]),
 * `iterations` rounds of 16 independent vdpbf16ps (16 accumulators, as many as keep the unit busy at its
 * latency), 64 FLOPs each. *flops = the FLOPs done; checksum[t] = thread t's sum, so that the loop is kept.
 * PEFTC_ERR_ARG where the CPU lacks AVX512-BF16 (and on other architectures). */
peftc_status peftc_bf16_dot_peak(float *checksum /* (threads) overwritten */, int64_t *flops, int64_t iterations,
                                 int64_t threads);

#endif
