/* winograd.c: 3x3 stride-1 convolution by Winograd's F(4x4, 3x3) or F(2x2, 3x3) (Lavin and Gray, 2016)
 * for conv.c: the forward, and the input gradient as the same correlation with the flipped, transposed
 * kernel. Images are processed in blocks. A block is first transposed so that the image index is
 * innermost (CI, H, W, nb); each overlapping (m+2)x(m+2) input tile (stride m, zero outside the plane)
 * is transformed to V = B^T d B for all nb images at once, so every transform loop is a unit-stride loop
 * over images; the (m+2)^2 transform points become as many GEMMs M = U V over the channels (U = G g G^T,
 * the transformed kernels); each tile of M goes back to an m x m output tile as A^T M A, again for all
 * images at once, and the block is transposed back. Edge tiles read zeros, and their outputs outside
 * the plane go to a discard row. No weight-gradient path here (conv.c keeps im2col for it). */
#include "winograd.h"

#include <string.h>

#include "small_gemm.h"
#include "vec.h"

/* floats aimed at for the transforms V and products M of one row of tiles of a block: 512 KB, which
 * stays in a core's L2 from the input transform through the GEMMs to the output transform */
#define WINOGRAD_ROW_FLOATS (1 << 17)

static int64_t tiles(int64_t n, int m)
{
    return (n + m - 1) / m;
}
/* images rounded up to whole vectors: a block's transforms and products run over bv lanes, the ones
 * past its images fed zeros and dropped, rather than through partial (copied) vector loads */
static int64_t whole_lanes(int64_t n)
{
    return (n + PEFTC_VL - 1) / PEFTC_VL * PEFTC_VL;
}

/* The output tile side m for an OH x OW output: F(4x4, 3x3) (6x6 input tiles, 36 products per 16
 * outputs) unless its partial edge tiles make it dearer than F(2x2, 3x3) (4x4 tiles, 16 per 4), which
 * also takes ties: its smaller transforms keep its results closer to the exact sum (see winograd.h). */
static int tile_side(int64_t OH, int64_t OW)
{
    const double products4 = 36.0 * (double)tiles(OH, 4) * (double)tiles(OW, 4);
    const double products2 = 16.0 * (double)tiles(OH, 2) * (double)tiles(OW, 2);
    return products4 < products2 ? 4 : 2;
}

/* floats between the end of one transform point's rows in V or M and the start of the next: a tile
 * reads or writes all its 16 or 36 points, and at a power-of-two multiple of 4 KB apart they would
 * share cache sets (48 channels x 16 tiles x 32 images is 96 KB) */
#define POINT_SKEW 48

/* floats per image of a block: V and M of one row of tiles, the transposed input and output, and one
 * float each of the zero row and the discard row */
static int64_t per_image(int64_t CI, int64_t H, int64_t W, int64_t CO, int64_t OH, int64_t OW, int m)
{
    return (m + 2) * (m + 2) * (CI + CO) * tiles(OW, m) + CI * H * W + CO * OH * OW + 2;
}

int64_t peftc_winograd3x3_workspace_size(int64_t nb, int64_t CI, int64_t H, int64_t W, int64_t CO, int64_t PH,
                                         int64_t PW)
{
    const int64_t OH = H + 2 * PH - 2, OW = W + 2 * PW - 2;
    const int m = tile_side(OH, OW), P = (m + 2) * (m + 2);
    return P * CO * CI + 2 * P * POINT_SKEW + whole_lanes(nb) * per_image(CI, H, W, CO, OH, OW, m);
}

int64_t peftc_winograd3x3_block(int64_t N, int64_t CI, int64_t H, int64_t W, int64_t CO, int64_t PH, int64_t PW)
{
    /* a multiple of 16 images (the AVX-512 float lanes of the transform loops), the nearest to the budget */
    const int64_t OW = W + 2 * PW - 2;
    const int m = tile_side(H + 2 * PH - 2, OW);
    const int64_t row = (m + 2) * (m + 2) * (CI + CO) * tiles(OW, m);
    int64_t nb = (row > 0 ? WINOGRAD_ROW_FLOATS / row + 8 : 16) / 16 * 16;
    nb = nb < 16 ? 16 : nb;
    return nb > N ? (N < 1 ? 1 : N) : nb;
}

/* U (P, CO, CI): point p of G k G^T for every kernel k(co, ci); F(2x2, 3x3): G = [1 0 0; .5 .5 .5;
 * .5 -.5 .5; 0 0 1]; F(4x4, 3x3): G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6;
 * 1/24 -1/12 1/6; 0 0 1], applied in double and rounded once */
static void transform_kernels(float *U, const float *w, int flip, int64_t CI, int64_t CO, int m)
{
    static const double G2[4][3] = {{1, 0, 0}, {.5, .5, .5}, {.5, -.5, .5}, {0, 0, 1}};
    static const double G4[6][3] = {{1.0 / 4, 0, 0},
                                    {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                    {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                    {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                    {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                    {0, 0, 1}};
    enum { CHUNK = 64 }; /* input channels at a time, innermost in every loop so that they vectorise */
    const int a = m + 2;
    for (int64_t co = 0; co < CO; co++)
        for (int64_t c0 = 0; c0 < CI; c0 += CHUNK) {
            const int64_t nc = CI - c0 < CHUNK ? CI - c0 : CHUNK;
            double g[9][CHUNK], t[6][3][CHUNK];
            for (int64_t i = 0; i < nc; i++) {
                const float *k = flip ? w + ((c0 + i) * CO + co) * 9 : w + (co * CI + c0 + i) * 9;
                for (int e = 0; e < 9; e++)
                    g[e][i] = flip ? k[8 - e] : k[e];
            }
            for (int r = 0; r < a; r++) {
                const double *G = m == 2 ? G2[r] : G4[r];
                for (int c = 0; c < 3; c++)
                    for (int64_t i = 0; i < nc; i++)
                        t[r][c][i] = G[0] * g[c][i] + G[1] * g[3 + c][i] + G[2] * g[6 + c][i];
            }
            for (int r = 0; r < a; r++)
                for (int c = 0; c < a; c++) {
                    const double *G = m == 2 ? G2[c] : G4[c];
                    float *u = U + ((r * a + c) * CO + co) * CI + c0;
                    for (int64_t i = 0; i < nc; i++)
                        u[i] = (float)(G[0] * t[r][0][i] + G[1] * t[r][1][i] + G[2] * t[r][2][i]);
                }
        }
}

/* The tile transforms run over the lanes of a block PEFTC_VL at a time (bn, a multiple of PEFTC_VL; see
 * whole_lanes), a tile's points held in vector registers (vec.h): V = B^T d B in, y = A^T m A out.
 * F(2x2, 3x3): the adds are those of the 4-point steps
 * (o0, o1, o2, o3) = (a - e, b + e, e - b, b - f) for B^T and (o0, o1) = (a + b + e, b - e - f) for
 * A^T, rows first, then columns. */
/* v[p] + i0 for the 16 points p (row stride vs) = B^T d B of the tile whose input rows d[k] (k = 4 r + c)
 * are read at + i0, for images [i0, i0 + bn) */
static void input_tile(float *v, int64_t vs, const float *const d[16], int64_t bn)
{
    for (int64_t i0 = 0; i0 < bn; i0 += PEFTC_VL) {
        peftc_vf x[16], t[16];
        for (int k = 0; k < 16; k++)
            x[k] = vec_load(d[k] + i0);
        for (int c = 0; c < 4; c++) {
            t[c] = x[c] - x[8 + c];
            t[4 + c] = x[4 + c] + x[8 + c];
            t[8 + c] = x[8 + c] - x[4 + c];
            t[12 + c] = x[4 + c] - x[12 + c];
        }
        for (int r = 0; r < 4; r++) {
            vec_store(v + (4 * r) * vs + i0, t[4 * r] - t[4 * r + 2]);
            vec_store(v + (4 * r + 1) * vs + i0, t[4 * r + 1] + t[4 * r + 2]);
            vec_store(v + (4 * r + 2) * vs + i0, t[4 * r + 2] - t[4 * r + 1]);
            vec_store(v + (4 * r + 3) * vs + i0, t[4 * r + 1] - t[4 * r + 3]);
        }
    }
}

/* the 2 x 2 output tile y[r][c] = (A^T m A)[r][c] of the products m (16 points, row stride ms), written
 * to y[2 r + c] + i0, for images [i0, i0 + bn) */
static void output_tile(float *const y[4], const float *m, int64_t ms, int64_t bn)
{
    for (int64_t i0 = 0; i0 < bn; i0 += PEFTC_VL) {
        peftc_vf x[16], t[8];
        for (int k = 0; k < 16; k++)
            x[k] = vec_load(m + k * ms + i0);
        for (int c = 0; c < 4; c++) {
            t[c] = x[c] + x[4 + c] + x[8 + c];
            t[4 + c] = x[4 + c] - x[8 + c] - x[12 + c];
        }
        for (int r = 0; r < 2; r++) {
            vec_store(y[2 * r] + i0, t[4 * r] + t[4 * r + 1] + t[4 * r + 2]);
            vec_store(y[2 * r + 1] + i0, t[4 * r + 1] - t[4 * r + 2] - t[4 * r + 3]);
        }
    }
}

/* F(4x4, 3x3): B^T d on a column of 6 (stride s) into o (stride so):
 * (4 d0 - 5 d2 + d4, d3 + d4 - 4 (d1 + d2), d4 - d3 + 4 (d1 - d2), d4 - d2 + 2 (d3 - d1),
 *  d4 - d2 - 2 (d3 - d1), 4 d1 - 5 d3 + d5) */
static inline void bt6(peftc_vf *o, int so, const peftc_vf *d, int s)
{
    const peftc_vf d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
    const peftc_vf a = d4 - d2, b = 2.0f * (d3 - d1);
    o[0] = 4.0f * d0 - 5.0f * d2 + d4;
    o[so] = d3 + d4 - 4.0f * (d1 + d2);
    o[2 * so] = d4 - d3 + 4.0f * (d1 - d2);
    o[3 * so] = a + b;
    o[4 * so] = a - b;
    o[5 * so] = 4.0f * d1 - 5.0f * d3 + d5;
}

/* F(4x4, 3x3): A^T m on a column of 6 (stride s) into o (stride so):
 * (m0 + m1 + m2 + m3 + m4, m1 - m2 + 2 (m3 - m4), m1 + m2 + 4 (m3 + m4), m1 - m2 + 8 (m3 - m4) + m5) */
static inline void at6(peftc_vf *o, int so, const peftc_vf *x, int s)
{
    const peftc_vf p = x[s] + x[2 * s], q = x[s] - x[2 * s], u = x[3 * s] + x[4 * s], v = x[3 * s] - x[4 * s];
    o[0] = x[0] + p + u;
    o[so] = q + 2.0f * v;
    o[2 * so] = p + 4.0f * u;
    o[3 * so] = q + 8.0f * v + x[5 * s];
}

/* F(4x4, 3x3) input_tile: 36 input rows d[6 r + c], 36 points */
static void input_tile6(float *v, int64_t vs, const float *const d[36], int64_t bn)
{
    for (int64_t i0 = 0; i0 < bn; i0 += PEFTC_VL) {
        peftc_vf x[36], t[36], o[36];
        for (int k = 0; k < 36; k++)
            x[k] = vec_load(d[k] + i0);
        for (int c = 0; c < 6; c++)
            bt6(t + c, 6, x + c, 6); /* columns: B^T d */
        for (int r = 0; r < 6; r++)
            bt6(o + 6 * r, 1, t + 6 * r, 1); /* rows: (B^T d) B */
        for (int k = 0; k < 36; k++)
            vec_store(v + k * vs + i0, o[k]);
    }
}

/* F(4x4, 3x3) output_tile: the 4 x 4 output tile y[4 r + c] from 36 points */
static void output_tile6(float *const y[16], const float *m, int64_t ms, int64_t bn)
{
    for (int64_t i0 = 0; i0 < bn; i0 += PEFTC_VL) {
        peftc_vf x[36], t[24], o[16];
        for (int k = 0; k < 36; k++)
            x[k] = vec_load(m + k * ms + i0);
        for (int c = 0; c < 6; c++)
            at6(t + c, 6, x + c, 6); /* columns: A^T m, 4 rows of 6 */
        for (int r = 0; r < 4; r++)
            at6(o + 4 * r, 1, t + 6 * r, 1); /* rows: (A^T m) A */
        for (int k = 0; k < 16; k++)
            vec_store(y[k] + i0, o[k]);
    }
}

/* Transposing tiles of 16 x 16: dst[j * ldd + i] = src[i * lds + j] (+ bias, added to dst with
 * accumulate), i, j < 16, where the rows i >= live of src (a block's lanes past its images) read as
 * zeros. With AVX-512 each of the 16 rows is one vector and the transpose is four
 * rounds of two-vector permutes (each round swaps the off-diagonal blocks of size 8, 4, 2, 1); without
 * it, element by element. Either way the same values, so the same bits. */
#define TILE 16
#if PEFTC_VL == TILE
#define SWAP_ROUND(H, LO, HI)                                                                                          \
    for (int i = 0; i < TILE; i++)                                                                                     \
        if (!(i & (H))) {                                                                                              \
            const peftc_vf a = r[i], b = r[i + (H)];                                                                   \
            r[i] = __builtin_shufflevector(a, b, LO);                                                                  \
            r[i + (H)] = __builtin_shufflevector(a, b, HI);                                                            \
        }
#define LO8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define HI8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define LO4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define HI4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define LO2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define HI2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define LO1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define HI1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31

static void transpose_tile(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t live, float bias,
                           int accumulate)
{
    peftc_vf r[TILE];
    for (int i = 0; i < TILE; i++)
        if (i < live)
            memcpy(&r[i], src + i * lds, sizeof r[i]);
        else
            r[i] = (peftc_vf){0.0f};
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
static void transpose_tile(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t live, float bias,
                           int accumulate)
{
    for (int j = 0; j < TILE; j++)
        for (int i = 0; i < TILE; i++) {
            const float v = i < live ? src[i * lds + j] : 0.0f;
            dst[j * ldd + i] = accumulate ? dst[j * ldd + i] + (v + bias) : v + bias;
        }
}
#endif

/* dst[j * ldd + i] (+)= src[i * lds + j] + bias for i < rows, j < cols, the rows i >= live of src read
 * as zeros: whole tiles, then the edges element by element with the same arithmetic */
static void transpose_add(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows, int64_t live,
                          int64_t cols, float bias, int accumulate)
{
    const int64_t r16 = rows / TILE * TILE, c16 = cols / TILE * TILE;
    for (int64_t j0 = 0; j0 < c16; j0 += TILE)
        for (int64_t i0 = 0; i0 < r16; i0 += TILE)
            transpose_tile(dst + j0 * ldd + i0, ldd, src + i0 * lds + j0, lds, live - i0, bias, accumulate);
    for (int64_t j = 0; j < cols; j++)
        for (int64_t i = j < c16 ? r16 : 0; i < rows; i++) {
            const float v = i < live ? src[i * lds + j] : 0.0f;
            dst[j * ldd + i] = accumulate ? dst[j * ldd + i] + (v + bias) : v + bias;
        }
}

/* images innermost: X (K, bv) from x (bn, K), the lanes bn <= i < bv zero */
static void transpose_in(float *X, const float *x, int64_t bn, int64_t bv, int64_t K)
{
    transpose_add(X, bv, x, K, bv, bn, K, 0.0f, 0);
}

/* back to images outermost: y[i, co, k] (overwritten, or accumulated) = X[co, k, i] + b[co] for the bn
 * images of X's bv lanes */
static void transpose_out(float *y, const float *X, const float *b, int accumulate, int64_t bn, int64_t bv, int64_t CO,
                          int64_t S)
{
    for (int64_t co = 0; co < CO; co++)
        transpose_add(y + co * S, CO * S, X + co * S * bv, bv, S, S, bn, b ? b[co] : 0.0f, accumulate);
}

peftc_status peftc_winograd3x3(float *out, float *work, const float *in, const float *w, const float *b, int flip,
                               int accumulate, int64_t N, int64_t CI, int64_t H, int64_t W, int64_t CO, int64_t PH,
                               int64_t PW)
{
    const int64_t OH = H + 2 * PH - 2, OW = W + 2 * PW - 2;
    const int m = tile_side(OH, OW), a = m + 2, P = a * a;
    const int64_t TH = tiles(OH, m), TW = tiles(OW, m), HW = H * W, OHW = OH * OW;
    const int64_t nb = peftc_winograd3x3_block(N, CI, H, W, CO, PH, PW), nbv = whole_lanes(nb);
    const int64_t xin = CI * HW, xout = CO * OHW;
    float *U = work;                                 /* (P, CO, CI) */
    float *V = U + P * CO * CI;                      /* (P, CI, TW, nbv), points POINT_SKEW apart */
    float *M = V + P * (CI * TW * nbv + POINT_SKEW); /* (P, CO, TW, nbv), points POINT_SKEW apart */
    float *X = M + P * (CO * TW * nbv + POINT_SKEW); /* (CI, H, W, nbv) */
    float *Y = X + xin * nbv;                        /* (CO, OH, OW, nbv) */
    float *zero = Y + xout * nbv;                    /* (nbv), then the discard row (nbv) */
    float *discard = zero + nbv;
    transform_kernels(U, w, flip, CI, CO, m);
    memset(zero, 0, (size_t)nbv * sizeof(float));
    for (int64_t n0 = 0; n0 < N; n0 += nb) {
        const int64_t bn = N - n0 < nb ? N - n0 : nb, bv = whole_lanes(bn); /* images, lanes */
        transpose_in(X, in + n0 * xin, bn, bv, xin);
        /* one row of tiles at a time, so that its transforms V and products M stay in cache between the
         * input transform, the GEMMs and the output transform */
        const int64_t T = TW * bv, vs = CI * T + POINT_SKEW, ms = CO * T + POINT_SKEW; /* point strides */
        for (int64_t th = 0; th < TH; th++) {
            for (int64_t ci = 0; ci < CI; ci++)
                for (int64_t tw = 0; tw < TW; tw++) {
                    const float *d[36];
                    for (int r = 0; r < a; r++)
                        for (int c = 0; c < a; c++) {
                            const int64_t ih = m * th - PH + r, iw = m * tw - PW + c;
                            d[a * r + c] =
                                ih >= 0 && ih < H && iw >= 0 && iw < W ? X + (ci * HW + ih * W + iw) * bv : zero;
                        }
                    if (m == 2)
                        input_tile(V + ci * T + tw * bv, vs, d, bv);
                    else
                        input_tile6(V + ci * T + tw * bv, vs, d, bv);
                }
            for (int p = 0; p < P; p++) {
                /* M_p (CO,T) = U_p (CO,CI) V_p (CI,T), T = TW*bv: M=CO, N=T, K=CI, lda=CI, ldb=T, ldc=T */
                peftc_small_gemm_ab(M + p * ms, U + p * CO * CI, V + p * vs, 0, 0, CO, T, CI, CI, T, T);
            }
            for (int64_t co = 0; co < CO; co++)
                for (int64_t tw = 0; tw < TW; tw++) {
                    float *y[16];
                    for (int r = 0; r < m; r++)
                        for (int c = 0; c < m; c++) {
                            const int64_t oh = m * th + r, ow = m * tw + c;
                            y[m * r + c] = oh < OH && ow < OW ? Y + (co * OHW + oh * OW + ow) * bv : discard;
                        }
                    if (m == 2)
                        output_tile(y, M + co * T + tw * bv, ms, bv);
                    else
                        output_tile6(y, M + co * T + tw * bv, ms, bv);
                }
        }
        transpose_out(out + n0 * xout, Y, b, accumulate, bn, bv, CO, OHW);
    }
    return PEFTC_OK;
}
