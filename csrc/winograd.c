/* winograd.c: 3x3 stride-1 convolution by Winograd's F(2x2, 3x3) (Lavin and Gray, 2016) for conv.c:
 * the forward, and the input gradient as the same correlation with the flipped, transposed kernel.
 * Images are processed in blocks. A block is first transposed so that the image index is innermost
 * (CI, H, W, nb); each overlapping 4x4 input tile (stride 2, zero outside the plane) is transformed to
 * V = B^T d B for all nb images at once, so every transform loop is a unit-stride loop over images;
 * the 16 transform points become 16 GEMMs M = U V over the channels (U = G g G^T, the transformed
 * kernels); each 4x4 tile of M goes back to a 2x2 output tile as A^T M A, again for all images at once,
 * and the block is transposed back. Edge tiles read zeros, and their outputs outside the plane go to a
 * discard row. No weight-gradient path here (conv.c keeps im2col for it). */
#include "winograd.h"

#include <string.h>

#include "small_gemm.h"
#include "vec.h"

/* floats aimed at for the transforms V and products M of one row of tiles of a block: 512 KB, which
 * stays in a core's L2 from the input transform through the GEMMs to the output transform */
#define WINOGRAD_ROW_FLOATS (1 << 17)

static int64_t tiles(int64_t n) { return (n + 1) / 2; }

/* floats between the end of one transform point's rows in V or M and the start of the next: a tile
 * reads or writes all 16 points, and at a power-of-two multiple of 4 KB apart they would share cache
 * sets (48 channels x 16 tiles x 32 images is 96 KB) */
#define POINT_SKEW 48

/* floats per image of a block: V and M of one row of tiles, the transposed input and output, and one
 * float each of the zero row and the two discard rows */
static int64_t per_image(int64_t CI, int64_t H, int64_t W, int64_t CO, int64_t OH, int64_t OW)
{
    return 16 * (CI + CO) * tiles(OW) + CI * H * W + CO * OH * OW + 3;
}

int64_t peftc_winograd3x3_workspace_size(int64_t nb, int64_t CI, int64_t H, int64_t W, int64_t CO, int64_t PH,
                                         int64_t PW)
{
    return 16 * CO * CI + 2 * 16 * POINT_SKEW + nb * per_image(CI, H, W, CO, H + 2 * PH - 2, W + 2 * PW - 2);
}

int64_t peftc_winograd3x3_block(int64_t N, int64_t CI, int64_t W, int64_t CO, int64_t PW)
{
    /* a multiple of 16 images (the AVX-512 float lanes of the transform loops), the nearest to the budget */
    const int64_t row = 16 * (CI + CO) * tiles(W + 2 * PW - 2);
    int64_t nb = (row > 0 ? WINOGRAD_ROW_FLOATS / row + 8 : 16) / 16 * 16;
    nb = nb < 16 ? 16 : nb;
    return nb > N ? (N < 1 ? 1 : N) : nb;
}

/* U (16, CO, CI): point p of G k G^T for every kernel k(co, ci), G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1] */
static void transform_kernels(float *U, const float *w, int flip, int64_t CI, int64_t CO)
{
    for (int64_t co = 0; co < CO; co++)
        for (int64_t ci = 0; ci < CI; ci++) {
            float g[9], t[12], u[16];
            const float *k = flip ? w + (ci * CO + co) * 9 : w + (co * CI + ci) * 9;
            for (int i = 0; i < 9; i++)
                g[i] = flip ? k[8 - i] : k[i];
            for (int c = 0; c < 3; c++) {
                t[c] = g[c];
                t[3 + c] = 0.5f * (g[c] + g[3 + c] + g[6 + c]);
                t[6 + c] = 0.5f * (g[c] - g[3 + c] + g[6 + c]);
                t[9 + c] = g[6 + c];
            }
            for (int r = 0; r < 4; r++) {
                u[4 * r] = t[3 * r];
                u[4 * r + 1] = 0.5f * (t[3 * r] + t[3 * r + 1] + t[3 * r + 2]);
                u[4 * r + 2] = 0.5f * (t[3 * r] - t[3 * r + 1] + t[3 * r + 2]);
                u[4 * r + 3] = t[3 * r + 2];
            }
            for (int p = 0; p < 16; p++)
                U[(p * CO + co) * CI + ci] = u[p];
        }
}

/* The tile transforms run over the images of a block PEFTC_VL at a time, a tile's 16 points held in
 * vector registers (vec.h): V = B^T d B in, y = A^T m A out; the last partial group goes through
 * zero-padded copies. The adds are those of the 4-point steps
 * (o0, o1, o2, o3) = (a - e, b + e, e - b, b - f) for B^T and (o0, o1) = (a + b + e, b - e - f) for
 * A^T, rows first, then columns. */
/* v[p] + i0 for the 16 points p (row stride vs) = B^T d B of the tile whose input rows d[k] (k = 4 r + c)
 * are read at + i0, for images [i0, i0 + bn) */
static void input_tile(float *v, int64_t vs, const float *const d[16], int64_t bn)
{
    for (int64_t i0 = 0; i0 < bn; i0 += PEFTC_VL) {
        const int64_t n = bn - i0 < PEFTC_VL ? bn - i0 : PEFTC_VL;
        peftc_vf x[16], t[16];
        for (int k = 0; k < 16; k++)
            x[k] = vec_load_part(d[k] + i0, n);
        for (int c = 0; c < 4; c++) {
            t[c] = x[c] - x[8 + c];
            t[4 + c] = x[4 + c] + x[8 + c];
            t[8 + c] = x[8 + c] - x[4 + c];
            t[12 + c] = x[4 + c] - x[12 + c];
        }
        for (int r = 0; r < 4; r++) {
            vec_store_part(v + (4 * r) * vs + i0, t[4 * r] - t[4 * r + 2], n);
            vec_store_part(v + (4 * r + 1) * vs + i0, t[4 * r + 1] + t[4 * r + 2], n);
            vec_store_part(v + (4 * r + 2) * vs + i0, t[4 * r + 2] - t[4 * r + 1], n);
            vec_store_part(v + (4 * r + 3) * vs + i0, t[4 * r + 1] - t[4 * r + 3], n);
        }
    }
}

/* the 2 x 2 output tile y[r][c] = (A^T m A)[r][c] of the products m (16 points, row stride ms), written
 * to y[2 r + c] + i0, for images [i0, i0 + bn) */
static void output_tile(float *const y[4], const float *m, int64_t ms, int64_t bn)
{
    for (int64_t i0 = 0; i0 < bn; i0 += PEFTC_VL) {
        const int64_t n = bn - i0 < PEFTC_VL ? bn - i0 : PEFTC_VL;
        peftc_vf x[16], t[8];
        for (int k = 0; k < 16; k++)
            x[k] = vec_load_part(m + k * ms + i0, n);
        for (int c = 0; c < 4; c++) {
            t[c] = x[c] + x[4 + c] + x[8 + c];
            t[4 + c] = x[4 + c] - x[8 + c] - x[12 + c];
        }
        for (int r = 0; r < 2; r++) {
            vec_store_part(y[2 * r] + i0, t[4 * r] + t[4 * r + 1] + t[4 * r + 2], n);
            vec_store_part(y[2 * r + 1] + i0, t[4 * r + 1] - t[4 * r + 2] - t[4 * r + 3], n);
        }
    }
}

/* Transposing tiles of 16 x 16: dst[j * ldd + i] = src[i * lds + j] (+ bias, added to dst with
 * accumulate), i, j < 16. With AVX-512 each of the 16 rows is one vector and the transpose is four
 * rounds of two-vector permutes (each round swaps the off-diagonal blocks of size 8, 4, 2, 1); without
 * it, element by element. Either way the same values, so the same bits. */
#define TILE 16
#if PEFTC_VL == TILE
#define SWAP_ROUND(H, LO, HI)                                                                                    \
    for (int i = 0; i < TILE; i++)                                                                               \
        if (!(i & (H))) {                                                                                        \
            const peftc_vf a = r[i], b = r[i + (H)];                                                             \
            r[i] = __builtin_shufflevector(a, b, LO);                                                            \
            r[i + (H)] = __builtin_shufflevector(a, b, HI);                                                      \
        }
#define LO8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define HI8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define LO4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define HI4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define LO2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define HI2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define LO1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define HI1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31

static void transpose_tile(float *dst, int64_t ldd, const float *src, int64_t lds, float bias, int accumulate)
{
    peftc_vf r[TILE];
    for (int i = 0; i < TILE; i++)
        memcpy(&r[i], src + i * lds, sizeof r[i]);
    SWAP_ROUND(8, LO8, HI8)
    SWAP_ROUND(4, LO4, HI4)
    SWAP_ROUND(2, LO2, HI2)
    SWAP_ROUND(1, LO1, HI1)
    for (int j = 0; j < TILE; j++) {
        peftc_vf v = r[j] + bias, d;
        if (accumulate) {
            memcpy(&d, dst + j * ldd, sizeof d);
            v = d + v;
        }
        memcpy(dst + j * ldd, &v, sizeof v);
    }
}
#else
static void transpose_tile(float *dst, int64_t ldd, const float *src, int64_t lds, float bias, int accumulate)
{
    for (int j = 0; j < TILE; j++)
        for (int i = 0; i < TILE; i++)
            dst[j * ldd + i] = accumulate ? dst[j * ldd + i] + (src[i * lds + j] + bias) : src[i * lds + j] + bias;
}
#endif

/* dst[j * ldd + i] (+)= src[i * lds + j] + bias for i < rows, j < cols: whole tiles, then the edges
 * element by element with the same arithmetic */
static void transpose_add(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows, int64_t cols,
                          float bias, int accumulate)
{
    const int64_t r16 = rows / TILE * TILE, c16 = cols / TILE * TILE;
    for (int64_t j0 = 0; j0 < c16; j0 += TILE)
        for (int64_t i0 = 0; i0 < r16; i0 += TILE)
            transpose_tile(dst + j0 * ldd + i0, ldd, src + i0 * lds + j0, lds, bias, accumulate);
    for (int64_t j = 0; j < cols; j++)
        for (int64_t i = j < c16 ? r16 : 0; i < rows; i++)
            dst[j * ldd + i] = accumulate ? dst[j * ldd + i] + (src[i * lds + j] + bias) : src[i * lds + j] + bias;
}

/* images innermost: X (K, bn) from x (bn, K) */
static void transpose_in(float *X, const float *x, int64_t bn, int64_t K)
{
    transpose_add(X, bn, x, K, bn, K, 0.0f, 0);
}

/* back to images outermost: y[i, co, k] (overwritten, or accumulated) = X[co, k, i] + b[co] */
static void transpose_out(float *y, const float *X, const float *b, int accumulate, int64_t bn, int64_t CO,
                          int64_t S)
{
    for (int64_t co = 0; co < CO; co++)
        transpose_add(y + co * S, CO * S, X + co * S * bn, bn, S, bn, b ? b[co] : 0.0f, accumulate);
}

peftc_status peftc_winograd3x3(float *out, float *work, const float *in, const float *w, const float *b, int flip,
                               int accumulate, int64_t N, int64_t CI, int64_t H, int64_t W, int64_t CO, int64_t PH,
                               int64_t PW)
{
    const int64_t OH = H + 2 * PH - 2, OW = W + 2 * PW - 2;
    const int64_t TH = tiles(OH), TW = tiles(OW), HW = H * W, OHW = OH * OW;
    const int64_t nb = peftc_winograd3x3_block(N, CI, W, CO, PW);
    const int64_t xin = CI * HW, xout = CO * OHW;
    float *U = work;                                  /* (16, CO, CI) */
    float *V = U + 16 * CO * CI;                     /* (16, CI, TW, nb), points POINT_SKEW apart */
    float *M = V + 16 * (CI * TW * nb + POINT_SKEW); /* (16, CO, TW, nb), points POINT_SKEW apart */
    float *X = M + 16 * (CO * TW * nb + POINT_SKEW); /* (CI, H, W, nb) */
    float *Y = X + xin * nb;                         /* (CO, OH, OW, nb) */
    float *zero = Y + xout * nb;                     /* (nb), then the discard rows (nb) each */
    float *discard0 = zero + nb, *discard1 = discard0 + nb;
    transform_kernels(U, w, flip, CI, CO);
    memset(zero, 0, (size_t)nb * sizeof(float));
    for (int64_t n0 = 0; n0 < N; n0 += nb) {
        const int64_t bn = N - n0 < nb ? N - n0 : nb;
        transpose_in(X, in + n0 * xin, bn, xin);
        /* one row of tiles at a time, so that its transforms V and products M stay in cache between the
         * input transform, the GEMMs and the output transform */
        const int64_t T = TW * bn, vs = CI * T + POINT_SKEW, ms = CO * T + POINT_SKEW; /* point strides */
        for (int64_t th = 0; th < TH; th++) {
            for (int64_t ci = 0; ci < CI; ci++)
                for (int64_t tw = 0; tw < TW; tw++) {
                    const float *d[16];
                    for (int r = 0; r < 4; r++)
                        for (int c = 0; c < 4; c++) {
                            const int64_t ih = 2 * th - PH + r, iw = 2 * tw - PW + c;
                            d[4 * r + c] = ih >= 0 && ih < H && iw >= 0 && iw < W ? X + (ci * HW + ih * W + iw) * bn
                                                                                   : zero;
                        }
                    input_tile(V + ci * T + tw * bn, vs, d, bn);
                }
            for (int p = 0; p < 16; p++) {
                /* M_p (CO,T) = U_p (CO,CI) V_p (CI,T), T = TW*bn: M=CO, N=T, K=CI, lda=CI, ldb=T, ldc=T */
                peftc_small_gemm_ab(M + p * ms, U + p * CO * CI, V + p * vs, 0, 0, CO, T, CI, CI, T, T);
            }
            for (int64_t co = 0; co < CO; co++)
                for (int64_t tw = 0; tw < TW; tw++) {
                    float *y[4];
                    for (int r = 0; r < 2; r++) {
                        const int64_t oh = 2 * th + r, ow = 2 * tw;
                        y[2 * r] = oh < OH ? Y + (co * OHW + oh * OW + ow) * bn : discard0;
                        y[2 * r + 1] = oh < OH && ow + 1 < OW ? y[2 * r] + bn : discard1;
                    }
                    output_tile(y, M + co * T + tw * bn, ms, bn);
                }
        }
        transpose_out(out + n0 * xout, Y, b, accumulate, bn, CO, OHW);
    }
    return PEFTC_OK;
}
