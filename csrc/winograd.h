/* winograd.h: 3x3 stride-1 convolution by Winograd's minimal filtering, used by conv.c for the forward
 * and for the input gradient (a full correlation of dy with the flipped, transposed kernel).
 * F(4x4, 3x3) costs 36 multiplies per 4x4 output tile and (input, output) channel pair instead of 144,
 * F(2x2, 3x3) 16 per 2x2 tile instead of 36; the larger tiles are used unless the plane's partial edge
 * tiles make them dearer (small planes). Accuracy: the transforms scale values by up to 8 (F(4x4))
 * or 1 (F(2x2)) on the way in and out, so float32 results drift from the exact sum by more than a
 * direct sum's do: benchmarks/bench_conv_shapes.py prints each layer's largest error relative to
 * sum |x| |w|, 1.3e-6 to 2.5e-6 on the EATA network's F(4x4) layers against about 2e-7 on its direct
 * ones. Internal to the core, not part of the public header. */
#ifndef PEFTC_WINOGRAD_H
#define PEFTC_WINOGRAD_H

#include <stdint.h>

#include "peftc.h"

/* Floats of scratch peftc_winograd3x3() needs for blocks of nb images of CI input channels (H, W),
 * padded by (PH, PW), swept to CO output channels. */
int64_t peftc_winograd3x3_workspace_size(int64_t nb, int64_t CI, int64_t H, int64_t W, int64_t CO, int64_t PH,
                                         int64_t PW);

/* Images per block for N images of CI channels (H, W) padded by (PH, PW): the multiple of 16 that keeps
 * the transforms and products of one row of tiles nearest a fixed budget (at least 16), or all N when
 * fewer. */
int64_t peftc_winograd3x3_block(int64_t N, int64_t CI, int64_t H, int64_t W, int64_t CO, int64_t PH, int64_t PW);

/* out[n, co] (overwritten, or accumulated with accumulate != 0) = sum over ci of the 3x3 correlation of
 * in[n, ci] (zero-padded by PH, PW) with the kernel k(co, ci), plus b[co] when b is given. flip == 0:
 * k(co, ci)[a][c] = w[co][ci][a][c] with w (CO,CI,3,3); flip != 0: k(co, ci)[a][c] = w[ci][co][2-a][2-c]
 * with w (CI,CO,3,3), the kernel of the input gradient. Runs on the calling thread (its GEMMs are
 * small_gemm.c's): the callers run this on threads of their own. OH = H + 2 PH - 2, OW = W + 2 PW - 2
 * (both > 0).
 * work holds peftc_winograd3x3_workspace_size(peftc_winograd3x3_block(N, ...), ...) floats. */
peftc_status peftc_winograd3x3(float *out /* (N,CO,OH,OW) */, float *work, const float *in /* (N,CI,H,W) */,
                               const float *w, const float *b /* (CO) or NULL */, int flip, int accumulate, int64_t N,
                               int64_t CI, int64_t H, int64_t W, int64_t CO, int64_t PH, int64_t PW);

#endif
