/* conv.c: 2-D convolution (NCHW, dilation 1, one group) forward and backward.
 *   - 3x3 stride-1 sweeps with at least 8 channels each side: the forward and the input gradient
 *     through Winograd F(4x4, 3x3) or F(2x2, 3x3) (winograd.c).
 *   - A 1x1, stride-1, unpadded convolution is already a GEMM on each image.
 *   - Other forwards, and the input gradients of strided sweeps, without a patch matrix: products whose
 *     B rows are shifted views of zero-bordered copies of the (phase planes of the) images, or of dy
 *     (peftc_small_gemm_ab_rows).
 *   - Everything else, and every weight gradient, runs im2col and one GEMM per block of images: the
 *     patch matrices of a block sit side by side in caller scratch (K, nb*S), rebuilt in the backward
 *     rather than kept, so the forward stores nothing beyond y. Strided sweeps read the image through
 *     its phase planes, so every patch row is unit-stride copies.
 * The forward and input-gradient products (a few dozen channels against many positions) are
 * small_gemm.c's register-blocked ones; the weight gradient, whose k runs over all positions, is
 * OpenBLAS's. Images are split over threads; every output is computed the same way on any thread count.
 * No pooling or norms here. */
#include <string.h>

#include "blas.h"
#include "parallel.h"
#include "small_gemm.h"
#include "winograd.h"

/* scratch floats aimed at per im2col block (patch matrix and gathered outputs): 256 KB, which stays in
 * L2; measured against 1 MB and 4 MB blocks and one image at a time on the EATA network */
#define CONV_BLOCK_FLOATS (1 << 16)

/* Output extent of a window sweep, floor mode; negative when the window does not fit. */
static int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p)
{
    return in + 2 * p < k ? -1 : (in + 2 * p - k) / s + 1;
}

static int conv_args_ok(int64_t N, int64_t IC, int64_t IH, int64_t IW, int64_t OC, int64_t KH, int64_t KW, int64_t SH,
                        int64_t SW, int64_t PH, int64_t PW)
{
    return N >= 0 && IC >= 0 && IH >= 0 && IW >= 0 && OC >= 0 && KH > 0 && KW > 0 && SH > 0 && SW > 0 && PH >= 0 &&
           PW >= 0 && conv_out_size(IH, KH, SH, PH) > 0 && conv_out_size(IW, KW, SW, PW) > 0;
}

static int is_pointwise(int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    return KH == 1 && KW == 1 && SH == 1 && SW == 1 && PH == 0 && PW == 0;
}

/* Row (c, kh, kw) of the patch matrix col (IC*KH*KW, OH*OW), column (oh, ow), holds
 * x[c, oh*SH - PH + kh, ow*SW - PW + kw], zero outside the image.
 *
 * A strided sweep (SH or SW > 1) reads the image through its phase planes: plane (p, q) of channel c
 * holds x[c, p + i*SH, q + j*SW], extent (ceil((IH - p) / SH), ceil((IW - q) / SW)); a channel's
 * planes follow one another in (p, q) order, IH*IW floats in all. Tap (kh, kw) reads only plane
 * ((kh - PH) mod SH, (kw - PW) mod SW), at the constant offset ((kh - PH) div SH, (kw - PW) div SW)
 * from the output position. At stride 1 the one plane is the image itself. So every row of col is a
 * shifted copy of one plane: when the plane is as wide as the output (a "same" convolution, or
 * stride 2 over an even width with padding 1), one long copy in flat (h, w) order, whose entries
 * that wrap into a neighbouring plane row, and the output rows outside the plane, are then zeroed;
 * otherwise one copy per output row. Only the planes some tap reads are written. */
typedef struct {
    int64_t dh, dw, HP, WP, off; /* offset from (oh, ow), the plane's extent and start in its channel */
} conv_tap;

static int64_t floor_mod(int64_t a, int64_t m)
{
    return ((a % m) + m) % m;
}

static int64_t phase_extent(int64_t n, int64_t p, int64_t s)
{
    return (n - p + s - 1) / s;
}

/* where tap (kh, kw) reads */
static conv_tap tap_at(int64_t kh, int64_t kw, int64_t IH, int64_t IW, int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    const int64_t p = floor_mod(kh - PH, SH), q = floor_mod(kw - PW, SW);
    int64_t rows = 0, cols = 0; /* input rows of the phases before p, input columns of those before q */
    for (int64_t a = 0; a < p; a++)
        rows += phase_extent(IH, a, SH);
    for (int64_t b = 0; b < q; b++)
        cols += phase_extent(IW, b, SW);
    const int64_t HP = phase_extent(IH, p, SH);
    return (conv_tap){.dh = (kh - PH - p) / SH,
                      .dw = (kw - PW - q) / SW,
                      .HP = HP,
                      .WP = phase_extent(IW, q, SW),
                      .off = rows * IW + HP * cols};
}

/* The output rows [*oh_lo, *oh_hi) and columns [*lo, *hi) whose plane entry (oh + dh, ow + dw) exists;
 * 0 when there is none. */
static int tap_window(int64_t *oh_lo, int64_t *oh_hi, int64_t *lo, int64_t *hi, const conv_tap *t, int64_t OH,
                      int64_t OW)
{
    int64_t a = -t->dh < 0 ? 0 : -t->dh, b = t->HP - t->dh > OH ? OH : t->HP - t->dh;
    *oh_lo = a;
    *oh_hi = b < a ? a : b;
    a = -t->dw < 0 ? 0 : -t->dw;
    b = t->WP - t->dw > OW ? OW : t->WP - t->dw;
    *lo = a > OW ? OW : a;
    *hi = b < *lo ? *lo : b;
    return *oh_hi > *oh_lo && *hi > *lo;
}

/* whether some tap reads phase p of a kernel extent K, stride S, padding P (every phase when K >= S) */
static int phase_read(int64_t p, int64_t K, int64_t S, int64_t P)
{
    for (int64_t k = 0; k < K && k < S; k++)
        if (floor_mod(k - P, S) == p)
            return 1;
    return 0;
}

/* dst[j] = src[j * stride] for j < n (a phase row gathered from an image row) */
static void strided_copy(float *dst, const float *src, int64_t n, int64_t stride)
{
    if (stride == 2) /* a constant stride, which the compiler vectorises */
        for (int64_t j = 0; j < n; j++)
            dst[j] = src[2 * j];
    else
        for (int64_t j = 0; j < n; j++)
            dst[j] = src[j * stride];
}

/* dst[j * stride] += src[j] for j < n, or = with overwrite (a phase row added back into, or written
 * into, an image row) */
static void strided_add(float *dst, const float *src, int64_t n, int64_t stride, int overwrite)
{
    if (stride == 2)
        for (int64_t j = 0; j < n; j++)
            dst[2 * j] = overwrite ? src[j] : dst[2 * j] + src[j];
    else
        for (int64_t j = 0; j < n; j++)
            dst[j * stride] = overwrite ? src[j] : dst[j * stride] + src[j];
}

/* dx NULL: ph (IC, IH*IW) in phase-plane order from x (IC, IH, IW), overwritten (planes no tap reads
 * skipped). Else back: dx (IC, IH, IW) += ph over the planes some tap reads. */
static void move_phases(float *ph, const float *x, float *dx, int64_t IC, int64_t IH, int64_t IW, int64_t KH,
                        int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    for (int64_t p = 0; p < SH; p++)
        for (int64_t q = 0; q < SW; q++) {
            if (!phase_read(p, KH, SH, PH) || !phase_read(q, KW, SW, PW))
                continue;
            const conv_tap t = tap_at(p + PH, q + PW, IH, IW, SH, SW, PH, PW);
            for (int64_t c = 0; c < IC; c++)
                for (int64_t i = 0; i < t.HP; i++) {
                    const int64_t at = (c * IH + p + i * SH) * IW + q;
                    float *pl = ph + c * IH * IW + t.off + i * t.WP;
                    if (dx)
                        strided_add(dx + at, pl, t.WP, SW, 0);
                    else
                        strided_copy(pl, x + at, t.WP, SW);
                }
        }
}

/* col row of tap t from plane; see the comment above conv_tap */
static void tap_row(float *row, const float *plane, const conv_tap *t, int64_t OH, int64_t OW)
{
    int64_t oh_lo, oh_hi, lo, hi;
    if (!tap_window(&oh_lo, &oh_hi, &lo, &hi, t, OH, OW)) {
        memset(row, 0, (size_t)(OH * OW) * sizeof(float));
        return;
    }
    if (t->WP == OW) {
        /* the span from the first valid entry of the first valid row to the last of the last one, never
         * outside the plane */
        const int64_t s_lo = oh_lo * OW + lo, s_hi = (oh_hi - 1) * OW + hi, shift = t->dh * OW + t->dw;
        memset(row, 0, (size_t)s_lo * sizeof(float));
        memcpy(row + s_lo, plane + s_lo + shift, (size_t)(s_hi - s_lo) * sizeof(float));
        memset(row + s_hi, 0, (size_t)(OH * OW - s_hi) * sizeof(float));
        for (int64_t oh = oh_lo; oh < oh_hi; oh++) {
            for (int64_t ow = 0; ow < lo; ow++)
                row[oh * OW + ow] = 0.0f;
            for (int64_t ow = hi; ow < OW; ow++)
                row[oh * OW + ow] = 0.0f;
        }
        return;
    }
    memset(row, 0, (size_t)(oh_lo * OW) * sizeof(float));
    for (int64_t oh = oh_lo; oh < oh_hi; oh++) {
        float *out = row + oh * OW;
        const float *in = plane + (oh + t->dh) * t->WP + t->dw;
        for (int64_t ow = 0; ow < lo; ow++)
            out[ow] = 0.0f;
        for (int64_t ow = lo; ow < hi; ow++)
            out[ow] = in[ow];
        for (int64_t ow = hi; ow < OW; ow++)
            out[ow] = 0.0f;
    }
    memset(row + oh_hi * OW, 0, (size_t)((OH - oh_hi) * OW) * sizeof(float));
}

/* the adjoint of tap_row: plane += what row read from it (row is scratch: its wrapped entries are
 * zeroed so that a flat row is one long add) */
static void tap_row_add(float *plane, float *row, const conv_tap *t, int64_t OH, int64_t OW)
{
    int64_t oh_lo, oh_hi, lo, hi;
    if (!tap_window(&oh_lo, &oh_hi, &lo, &hi, t, OH, OW))
        return;
    if (t->WP == OW) {
        const int64_t s_lo = oh_lo * OW + lo, s_hi = (oh_hi - 1) * OW + hi, shift = t->dh * OW + t->dw;
        for (int64_t oh = oh_lo; oh < oh_hi; oh++) {
            for (int64_t ow = 0; ow < lo; ow++)
                row[oh * OW + ow] = 0.0f;
            for (int64_t ow = hi; ow < OW; ow++)
                row[oh * OW + ow] = 0.0f;
        }
        float *out = plane + shift;
        for (int64_t s = s_lo; s < s_hi; s++)
            out[s] += row[s];
        return;
    }
    for (int64_t oh = oh_lo; oh < oh_hi; oh++) {
        const float *in = row + oh * OW;
        float *out = plane + (oh + t->dh) * t->WP + t->dw;
        for (int64_t ow = lo; ow < hi; ow++)
            out[ow] += in[ow];
    }
}

/* col (IC*KH*KW, OH*OW) from x; a strided sweep first writes x's phase planes to ph (IC, IH*IW), scratch */
static void im2col(float *col, int64_t ld, float *ph, const float *x, int64_t IC, int64_t IH, int64_t IW, int64_t KH,
                   int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t OH, int64_t OW)
{
    const int strided = SH > 1 || SW > 1;
    if (strided)
        move_phases(ph, x, NULL, IC, IH, IW, KH, KW, SH, SW, PH, PW);
    for (int64_t kh = 0; kh < KH; kh++)
        for (int64_t kw = 0; kw < KW; kw++) {
            const conv_tap t = tap_at(kh, kw, IH, IW, SH, SW, PH, PW);
            for (int64_t c = 0; c < IC; c++)
                tap_row(col + ((c * KH + kh) * KW + kw) * ld, (strided ? ph : x) + c * IH * IW + t.off, &t, OH, OW);
        }
}

/* The adjoint of im2col: dx[c, ih, iw] += every column entry that was read from it (col is scratch and
 * may be overwritten; so is ph, where a strided sweep gathers its phase planes before adding them to dx). */
static void col2im_add(float *dx, float *col, int64_t ld, float *ph, int64_t IC, int64_t IH, int64_t IW, int64_t KH,
                       int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t OH, int64_t OW)
{
    const int strided = SH > 1 || SW > 1;
    if (strided)
        memset(ph, 0, (size_t)(IC * IH * IW) * sizeof(float));
    for (int64_t kh = 0; kh < KH; kh++)
        for (int64_t kw = 0; kw < KW; kw++) {
            const conv_tap t = tap_at(kh, kw, IH, IW, SH, SW, PH, PW);
            for (int64_t c = 0; c < IC; c++)
                tap_row_add((strided ? ph : dx) + c * IH * IW + t.off, col + ((c * KH + kh) * KW + kw) * ld, &t, OH,
                            OW);
        }
    if (strided)
        move_phases(ph, NULL, dx, IC, IH, IW, KH, KW, SH, SW, PH, PW);
}

/* a * b when both are >= 0 and it fits int64, else -1 */
static int64_t mul_or_neg(int64_t a, int64_t b)
{
    return a < 0 || b < 0 || (b > 0 && a > INT64_MAX / b) ? -1 : a * b;
}

/* The input gradient of a strided sweep, phase by phase, without a patch matrix. Phase plane (p, q) of
 * dx gets, from each tap (kh, kw) reading that phase, w[:, :, kh, kw]^T times dy shifted by the tap's
 * offset: entry (i, j) of the plane is the sum over those taps and over o of w[o, c, kh, kw]
 * dy[o, i - dh, j - dw]. The dy of a block of nb images is copied into zero-bordered planes laid out
 * (OC, R, nb, CW), each image's rows CW wide side by side, so every shifted dy is one view of it with
 * a constant offset, and a phase plane of the whole block is one product over k = (o, tap) whose B
 * rows are those views (peftc_small_gemm_ab_rows), computed at CW positions per image row of which
 * the first WP are kept. */
#define IMPLICIT_MAX_TAPS 64   /* taps of a kernel */
#define IMPLICIT_MAX_ROWS 1024 /* B rows of one phase's product: OC x its taps */

/* The taps (kh*KW + kw, into tk, which holds KH*KW) that read phase (p, q); returns their count */
static int64_t phase_taps(int64_t *tk, int64_t p, int64_t q, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,
                          int64_t PW)
{
    int64_t T = 0;
    for (int64_t kh = 0; kh < KH; kh++)
        for (int64_t kw = 0; kw < KW; kw++)
            if (floor_mod(kh - PH, SH) == p && floor_mod(kw - PW, SW) == q)
                tk[T++] = kh * KW + kw;
    return T;
}

typedef struct {
    int64_t a, b, R, CW; /* dy's placement (rows a.., columns b..) in its padded plane (R, CW) */
    int64_t HP, WP;      /* the largest phase plane (phase 0, 0) */
    int64_t most_taps;   /* taps of the busiest phase */
    int64_t nb;          /* images per block */
} implicit_geom;

static implicit_geom implicit_geometry(int64_t N, int64_t IC, int64_t IH, int64_t IW, int64_t OC, int64_t KH,
                                       int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t OH,
                                       int64_t OW)
{
    const conv_tap lo = tap_at(0, 0, IH, IW, SH, SW, PH, PW), hi = tap_at(KH - 1, KW - 1, IH, IW, SH, SW, PH, PW);
    implicit_geom g;
    g.a = hi.dh > 0 ? hi.dh : 0;
    g.b = hi.dw > 0 ? hi.dw : 0;
    g.HP = phase_extent(IH, 0, SH);
    g.WP = phase_extent(IW, 0, SW);
    /* rows read: i - dh + a for i < HP, dh >= lo.dh; plus one row for the kept columns' overrun */
    g.R = g.a + (OH > g.HP - lo.dh ? OH : g.HP - lo.dh) + 1;
    g.CW = g.b + (OW > g.WP - lo.dw ? OW : g.WP - lo.dw);
    g.most_taps = 0;
    if (KH * KW <= IMPLICIT_MAX_TAPS)
        for (int64_t p = 0; p < SH; p++)
            for (int64_t q = 0; q < SW; q++) {
                int64_t tk[IMPLICIT_MAX_TAPS];
                const int64_t taps = phase_taps(tk, p, q, KH, KW, SH, SW, PH, PW);
                g.most_taps = taps > g.most_taps ? taps : g.most_taps;
            }
    /* a block's padded dy and one phase's output near CONV_BLOCK_FLOATS */
    const int64_t per_image = (OC * g.R + IC * g.HP) * g.CW;
    g.nb = per_image > 0 && per_image < CONV_BLOCK_FLOATS ? CONV_BLOCK_FLOATS / per_image : 1;
    g.nb = g.nb > N ? (N > 0 ? N : 1) : g.nb;
    return g;
}

/* as use_implicit_fwd, for strided sweeps only (the product has IC rows; at stride 1 the patch path's
 * has IC*KH*KW, which fills the register blocks better for few channels) and products of at most
 * IMPLICIT_MAX_ROWS rows (OC x a phase's taps) */
static int use_implicit(int64_t OC, int64_t KH, int64_t KW, int64_t SH, int64_t SW, const implicit_geom *g)
{
    return (SH > 1 || SW > 1) && KH * KW > 1 && KH * KW <= IMPLICIT_MAX_TAPS && OC * g->most_taps <= IMPLICIT_MAX_ROWS;
}

/* scratch of the implicit input gradient: the padded dy (OC, R, nb, CW), the weights of every phase's
 * product (IC, OC x taps) side by side, and one phase's output (IC, HP, nb, CW); -1 on overflow */
static int64_t implicit_workspace(int64_t IC, int64_t OC, int64_t KH, int64_t KW, const implicit_geom *g)
{
    const int64_t dyp = mul_or_neg(mul_or_neg(OC, g->R), mul_or_neg(g->nb, g->CW));
    const int64_t wts = mul_or_neg(IC, mul_or_neg(OC, KH * KW));
    const int64_t out = mul_or_neg(mul_or_neg(IC, g->HP), mul_or_neg(g->nb, g->CW));
    if (dyp < 0 || wts < 0 || out < 0 || dyp > INT64_MAX - wts - out)
        return -1;
    return dyp + wts + out;
}

/* dx of images [0, n) (accumulated, or overwritten) by phases; work as implicit_workspace says */
static void implicit_input_grad(float *dx, float *work, const float *dy, const float *w, int overwrite, int64_t n,
                                int64_t IC, int64_t IH, int64_t IW, int64_t OC, int64_t KH, int64_t KW, int64_t SH,
                                int64_t SW, int64_t PH, int64_t PW, int64_t OH, int64_t OW, const implicit_geom *g)
{
    const int64_t nb = g->nb, RS = nb * g->CW, PS = g->R * RS, S = OH * OW; /* row and plane strides of dyp */
    float *dyp = work, *wts = dyp + OC * PS, *out = wts + IC * OC * KH * KW;
    /* the phases some tap reads, each with its taps (those of all phases side by side in taps) and its
     * weights (IC, OC x T) at wp: w[o, c, tap t] at column o*T + t */
    struct {
        int64_t p, q, first, T;
        const float *wp;
    } phases[IMPLICIT_MAX_TAPS];
    conv_tap taps[IMPLICIT_MAX_TAPS];
    int64_t nphases = 0, ntaps = 0;
    float *wp = wts;
    for (int64_t p = 0; p < SH; p++)
        for (int64_t q = 0; q < SW; q++) {
            int64_t tk[IMPLICIT_MAX_TAPS];
            const int64_t T = phase_taps(tk, p, q, KH, KW, SH, SW, PH, PW);
            if (T == 0 || phase_extent(IH, p, SH) == 0 || phase_extent(IW, q, SW) == 0)
                continue;
            for (int64_t t = 0; t < T; t++)
                taps[ntaps + t] = tap_at(tk[t] / KW, tk[t] % KW, IH, IW, SH, SW, PH, PW);
            for (int64_t c = 0; c < IC; c++)
                for (int64_t o = 0; o < OC; o++)
                    for (int64_t t = 0; t < T; t++)
                        wp[c * OC * T + o * T + t] = w[(o * IC + c) * KH * KW + tk[t]];
            phases[nphases].p = p;
            phases[nphases].q = q;
            phases[nphases].first = ntaps;
            phases[nphases].T = T;
            phases[nphases++].wp = wp;
            ntaps += T;
            wp += IC * OC * T;
        }
    /* overwriting: every phase plane is written once, unless some phase has no tap (then zeros first) */
    const int copy = overwrite && nphases == SH * SW;
    if (overwrite && !copy)
        memset(dx, 0, (size_t)(n * IC * IH * IW) * sizeof(float));
    const float *rows[IMPLICIT_MAX_ROWS];
    memset(dyp, 0, (size_t)(OC * PS) * sizeof(float)); /* the border stays zero; each block fills the inside */
    for (int64_t i0 = 0; i0 < n; i0 += nb) {
        const int64_t bn = n - i0 < nb ? n - i0 : nb;
        for (int64_t i = 0; i < bn; i++)
            for (int64_t o = 0; o < OC; o++)
                for (int64_t oh = 0; oh < OH; oh++)
                    memcpy(dyp + o * PS + (g->a + oh) * RS + i * g->CW + g->b, dy + ((i0 + i) * OC + o) * S + oh * OW,
                           (size_t)OW * sizeof(float));
        for (int64_t f = 0; f < nphases; f++) {
            const int64_t p = phases[f].p, q = phases[f].q, T = phases[f].T;
            const conv_tap *tp = taps + phases[f].first;
            for (int64_t o = 0; o < OC; o++)
                for (int64_t t = 0; t < T; t++)
                    rows[o * T + t] = dyp + o * PS + (g->a - tp[t].dh) * RS + (g->b - tp[t].dw);
            /* out (IC, HP*nb*CW) = wp (IC, OC*T) [dy views] (OC*T, HP*nb*CW): M=IC, K=OC*T, lda=OC*T */
            const int64_t HP = tp[0].HP, M = HP * RS;
            peftc_small_gemm_ab_rows(out, phases[f].wp, rows, 0, IC, M, OC * T, OC * T, M);
            for (int64_t i = 0; i < bn; i++)
                for (int64_t c = 0; c < IC; c++)
                    for (int64_t r = 0; r < HP; r++)
                        strided_add(dx + (((i0 + i) * IC + c) * IH + p + r * SH) * IW + q,
                                    out + c * M + r * RS + i * g->CW, tp[0].WP, SW, copy);
        }
    }
}

/* The forward without a patch matrix, for any sweep Winograd does not take (at stride 1 the one phase
 * plane is the image): the phase planes of a block of nb images are copied into zero-bordered planes
 * laid out (IC, SH*SW phases, R, nb, CW), so that the patch row of tap (kh, kw) and channel c is one
 * view of its phase's plane at a constant offset, and y of the whole block is one product
 * (peftc_small_gemm_ab_rows) computed at CW positions per image row, of which the first OW are kept. */
typedef struct {
    int64_t a, b, R, CW; /* a phase plane's placement (rows a.., columns b..) in its padded plane (R, CW) */
    int64_t nb;          /* images per block */
} implicit_fwd_geom;

static implicit_fwd_geom implicit_fwd_geometry(int64_t N, int64_t IC, int64_t IH, int64_t IW, int64_t OC, int64_t KH,
                                               int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t OH,
                                               int64_t OW)
{
    const conv_tap lo = tap_at(0, 0, IH, IW, SH, SW, PH, PW), hi = tap_at(KH - 1, KW - 1, IH, IW, SH, SW, PH, PW);
    implicit_fwd_geom g;
    g.a = -lo.dh; /* >= 0: tap (0, 0) reads at or before the output position */
    g.b = -lo.dw;
    g.R = OH + hi.dh - lo.dh + 1; /* one more row for the kept columns' overrun */
    g.CW = OW + hi.dw - lo.dw;
    const int64_t per_image = (IC * SH * SW * g.R + OC * OH) * g.CW;
    g.nb = per_image > 0 && per_image < CONV_BLOCK_FLOATS ? CONV_BLOCK_FLOATS / per_image : 1;
    g.nb = g.nb > N ? (N > 0 ? N : 1) : g.nb;
    return g;
}

/* sweeps with more than one tap (a 1x1 one reads its single phase, which the patch path copies once as
 * it is) and a product of at most IMPLICIT_MAX_ROWS rows; the callers take Winograd's sweeps first */
static int use_implicit_fwd(int64_t IC, int64_t KH, int64_t KW)
{
    return KH * KW > 1 && IC * KH * KW <= IMPLICIT_MAX_ROWS;
}

/* scratch of the implicit forward: the padded phase planes (IC*SH*SW, R, nb, CW) and the block's output
 * (OC, OH, nb, CW); -1 on overflow */
static int64_t implicit_fwd_workspace(int64_t IC, int64_t OC, int64_t SH, int64_t SW, int64_t OH,
                                      const implicit_fwd_geom *g)
{
    const int64_t planes = mul_or_neg(mul_or_neg(IC, mul_or_neg(SH, SW)), mul_or_neg(g->R, g->CW));
    const int64_t out = mul_or_neg(OC, mul_or_neg(OH, g->CW));
    if (planes < 0 || out < 0 || planes > INT64_MAX - out)
        return -1;
    return mul_or_neg(planes + out, g->nb);
}

/* y of images [0, n) (overwritten, + b when given); work as implicit_fwd_workspace says */
static void implicit_forward(float *y, float *work, const float *x, const float *w, const float *b, int64_t n,
                             int64_t IC, int64_t IH, int64_t IW, int64_t OC, int64_t KH, int64_t KW, int64_t SH,
                             int64_t SW, int64_t PH, int64_t PW, int64_t OH, int64_t OW, const implicit_fwd_geom *g)
{
    const int64_t nb = g->nb, RS = nb * g->CW, PS = g->R * RS, S = OH * OW, K = IC * KH * KW;
    float *pl = work, *out = pl + IC * SH * SW * PS;
    const float *rows[IMPLICIT_MAX_ROWS];
    memset(pl, 0, (size_t)(IC * SH * SW * PS) * sizeof(float)); /* the border stays zero */
    for (int64_t kh = 0; kh < KH; kh++)
        for (int64_t kw = 0; kw < KW; kw++) {
            const conv_tap t = tap_at(kh, kw, IH, IW, SH, SW, PH, PW);
            const int64_t phase = floor_mod(kh - PH, SH) * SW + floor_mod(kw - PW, SW);
            for (int64_t c = 0; c < IC; c++)
                rows[(c * KH + kh) * KW + kw] = pl + (c * SH * SW + phase) * PS + (t.dh + g->a) * RS + (t.dw + g->b);
        }
    for (int64_t i0 = 0; i0 < n; i0 += nb) {
        const int64_t bn = n - i0 < nb ? n - i0 : nb;
        for (int64_t p = 0; p < SH; p++)
            for (int64_t q = 0; q < SW; q++) {
                if (!phase_read(p, KH, SH, PH) || !phase_read(q, KW, SW, PW))
                    continue;
                const int64_t HP = phase_extent(IH, p, SH), WP = phase_extent(IW, q, SW);
                /* plane rows and columns some tap reads */
                const int64_t rows_used = HP < g->R - 1 - g->a ? HP : g->R - 1 - g->a;
                const int64_t cols_used = WP < g->CW - g->b ? WP : g->CW - g->b;
                for (int64_t i = 0; i < bn; i++)
                    for (int64_t c = 0; c < IC; c++)
                        for (int64_t r = 0; r < rows_used; r++)
                            strided_copy(pl + ((c * SH + p) * SW + q) * PS + (r + g->a) * RS + i * g->CW + g->b,
                                         x + (((i0 + i) * IC + c) * IH + p + r * SH) * IW + q, cols_used, SW);
            }
        /* out (OC, OH*nb*CW) = w (OC, K) [patch views] (K, OH*nb*CW): M=OC, K=IC*KH*KW, lda=K */
        peftc_small_gemm_ab_rows(out, w, rows, 0, OC, OH * RS, K, K, OH * RS);
        for (int64_t i = 0; i < bn; i++)
            for (int64_t o = 0; o < OC; o++) {
                const float bias = b ? b[o] : 0.0f;
                float *d = y + ((i0 + i) * OC + o) * S;
                for (int64_t oh = 0; oh < OH; oh++) {
                    const float *src = out + o * OH * RS + oh * RS + i * g->CW;
                    for (int64_t ow = 0; ow < OW; ow++)
                        d[oh * OW + ow] = src[ow] + bias;
                }
            }
    }
}

/* Winograd for 3x3 stride-1 sweeps whose input gradient is again such a sweep (padding
 * at most 2), once both channel counts are large enough for the GEMMs to outweigh the transforms. */
static int use_winograd(int64_t IC, int64_t OC, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    return KH == 3 && KW == 3 && SH == 1 && SW == 1 && PH <= 2 && PW <= 2 && IC >= 8 && OC >= 8;
}

/* Images per im2col block: the patch matrix (K, nb*S) and the gathered outputs (OC, nb*S) of nb
 * images near CONV_BLOCK_FLOATS, at least 1. One GEMM per block rather than per image gives the
 * weight gradient's GEMM a long enough k, and the others a wide N, for small planes (7x7 is 49 columns). */
static int64_t im2col_block(int64_t N, int64_t K, int64_t OC, int64_t S)
{
    const int64_t per_image = (K + OC) * S;
    int64_t nb = per_image > 0 ? CONV_BLOCK_FLOATS / per_image : N;
    nb = nb > N ? N : nb;
    return nb < 1 ? 1 : nb;
}

/* Multiply-adds a part should hold before the images of a convolution are split over threads: a
 * part costs microseconds to hand to a pool thread (tens when it has gone to sleep), 2M multiply-adds
 * about a hundred. */
#define CONV_PART_MACS (1 << 21)

/* Images per block of the forward (input_grad == 0) or of the input gradient of the Winograd and patch
 * paths: the unit of work by which the images are split into parts. */
static int64_t sweep_block(int input_grad, int64_t N, int64_t IC, int64_t IH, int64_t IW, int64_t OC, int64_t KH,
                           int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t OH, int64_t OW)
{
    if (use_winograd(IC, OC, KH, KW, SH, SW, PH, PW))
        return input_grad ? peftc_winograd3x3_block(N, OC, OH, OW, IC, 2 - PH, 2 - PW)
                          : peftc_winograd3x3_block(N, IC, IH, IW, OC, PH, PW);
    return is_pointwise(KH, KW, SH, SW, PH, PW) ? 1 : im2col_block(N, IC * KH * KW, OC, OH * OW);
}

/* parts the nblocks blocks of nb images of a sweep are split into */
static int64_t conv_parts(int64_t nblocks, int64_t nb, int64_t OC, int64_t K, int64_t S)
{
    const int64_t per_block = mul_or_neg(nb, mul_or_neg(OC, mul_or_neg(K, S)));
    const int64_t min_items = per_block <= 0 ? nblocks : (CONV_PART_MACS + per_block - 1) / per_block;
    return peftc_parallel_parts(nblocks, min_items);
}

/* scratch of one part that sweeps N images on its own, -1 on overflow */
static int64_t part_workspace(int64_t N, int64_t IC, int64_t IH, int64_t IW, int64_t OC, int64_t KH, int64_t KW,
                              int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t OH, int64_t K, int64_t S)
{
    int64_t need = 0;
    if (!is_pointwise(KH, KW, SH, SW, PH, PW)) {
        /* a block of nb > 1 images stays near CONV_BLOCK_FLOATS, so one image bounds the size */
        need = mul_or_neg(K + OC, S);
        if (need < 0)
            return -1;
        need *= im2col_block(N, K, OC, S);
        /* a strided sweep's phase planes of one image, after the block */
        const int64_t planes = SH > 1 || SW > 1 ? mul_or_neg(IC, mul_or_neg(IH, IW)) : 0;
        if (planes < 0 || need > INT64_MAX - planes)
            return -1;
        need += planes;
        const implicit_geom g = implicit_geometry(N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW, OH, S / OH);
        if (use_implicit(OC, KH, KW, SH, SW, &g)) {
            const int64_t implicit = implicit_workspace(IC, OC, KH, KW, &g);
            if (implicit < 0)
                return -1;
            need = implicit > need ? implicit : need;
        }
        if (use_implicit_fwd(IC, KH, KW)) {
            const implicit_fwd_geom gf = implicit_fwd_geometry(N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW, OH, S / OH);
            const int64_t implicit = implicit_fwd_workspace(IC, OC, SH, SW, OH, &gf);
            if (implicit < 0)
                return -1;
            need = implicit > need ? implicit : need;
        }
    }
    if (use_winograd(IC, OC, KH, KW, SH, SW, PH, PW)) {
        const int64_t OW = S / OH;
        /* one image of the forward (IC -> OC) or of the input gradient (OC -> IC), as a bound (a plane of
         * F(2x2, 3x3) tiles holds more points than a row of F(4x4, 3x3) ones) */
        const int64_t planes = mul_or_neg(IC + OC, mul_or_neg(IH + 4, IW + 4));
        const int64_t per_image = mul_or_neg(mul_or_neg(16, IC + OC), mul_or_neg((IH + 5) / 2, (IW + 5) / 2));
        const int64_t kernels = mul_or_neg(36, mul_or_neg(IC, OC));
        /* a block is at least 16 images, or the budget plus 8 images */
        const int64_t block = per_image < 0 || planes < 0 || per_image > INT64_MAX - planes - 3
                                  ? -1
                                  : mul_or_neg(per_image + planes + 3, 16);
        if (block < 0 || kernels < 0 || kernels > INT64_MAX - block - (1 << 21))
            return -1;
        const int64_t fwd = peftc_winograd3x3_workspace_size(peftc_winograd3x3_block(N, IC, IH, IW, OC, PH, PW), IC, IH,
                                                             IW, OC, PH, PW);
        const int64_t bwd = peftc_winograd3x3_workspace_size(peftc_winograd3x3_block(N, OC, OH, OW, IC, 2 - PH, 2 - PW),
                                                             OC, OH, OW, IC, 2 - PH, 2 - PW);
        need = fwd > need ? fwd : need;
        need = bwd > need ? bwd : need;
    }
    return need;
}

int64_t peftc_conv2d_workspace_size(int64_t N, int64_t IC, int64_t IH, int64_t IW, int64_t OC, int64_t KH, int64_t KW,
                                    int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    if (!conv_args_ok(N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW))
        return -1;
    const int64_t OH = conv_out_size(IH, KH, SH, PH), OW = conv_out_size(IW, KW, SW, PW);
    const int64_t S = mul_or_neg(OH, OW), K = mul_or_neg(mul_or_neg(IC, KH), KW);
    if (S < 0 || K < 0 || K > INT64_MAX - OC)
        return -1;
    /* the parts of the forward or the input gradient side by side, each with one block's scratch (the
     * scratch for all N images is one block's, as blocks are capped by a budget); the weight gradient
     * runs on the calling thread in the first part's */
    int64_t parts = 1;
    for (int g = 0; g < 2 && N > 0; g++) {
        const int64_t nb = sweep_block(g, N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW, OH, OW);
        const int64_t p = conv_parts((N + nb - 1) / nb, nb, OC, K, S);
        parts = p > parts ? p : parts;
    }
    return mul_or_neg(parts, part_workspace(N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW, OH, K, S));
}

/* Images per block of the weight gradient: as many as the whole scratch holds, up to WEIGHT_GRAD_FLOATS
 * of patch matrix and gathered dy. Its GEMM sums over the positions of the block, so the longer the
 * block the less OpenBLAS spends packing per multiply (one 14x14 image is k = 196). */
#define WEIGHT_GRAD_FLOATS (1 << 20)

static int64_t weight_grad_block(int64_t N, int64_t IC, int64_t IH, int64_t IW, int64_t OC, int64_t KH, int64_t KW,
                                 int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t K, int64_t S)
{
    const int64_t have = peftc_conv2d_workspace_size(N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW);
    const int64_t planes = SH > 1 || SW > 1 ? IC * IH * IW : 0, per_image = (K + OC) * S;
    int64_t nb = (have - planes) / per_image;
    nb = nb * per_image > WEIGHT_GRAD_FLOATS ? WEIGHT_GRAD_FLOATS / per_image : nb;
    nb = nb > N ? N : nb;
    return nb < 1 ? 1 : nb;
}

/* the nb images of a block side by side: dst (C, nb*S) from src (nb, C, S), or back */
static void gather_block(float *dst, const float *src, int64_t nb, int64_t C, int64_t S)
{
    for (int64_t i = 0; i < nb; i++)
        for (int64_t c = 0; c < C; c++)
            memcpy(dst + c * nb * S + i * S, src + (i * C + c) * S, (size_t)S * sizeof(float));
}

/* One convolution's sizes and arrays; a part sweeps images [n0, n1) with scratch work + t * part. */
typedef struct {
    float *y, *dx, *work;        /* y (N,OC,OH,OW), dx (N,IC,IH,IW) */
    const float *x, *dy, *w, *b; /* x (N,IC,IH,IW), dy (N,OC,OH,OW), w (OC,IC,KH,KW), b (OC) or NULL */
    int64_t N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW, OH, OW, part;
    int overwrite_dx; /* the input gradient overwrites dx instead of adding to it */
} conv_job;

/* y of images [n0, n0 + n) (overwritten) */
static peftc_status forward_images(const conv_job *j, float *work, int64_t n0, int64_t n)
{
    const int64_t IC = j->IC, IH = j->IH, IW = j->IW, OC = j->OC, KH = j->KH, KW = j->KW, SH = j->SH, SW = j->SW,
                  PH = j->PH, PW = j->PW, OH = j->OH, OW = j->OW;
    const int64_t K = IC * KH * KW, S = OH * OW;
    const float *x = j->x + n0 * IC * IH * IW, *w = j->w, *b = j->b;
    float *y = j->y + n0 * OC * S;
    if (use_winograd(IC, OC, KH, KW, SH, SW, PH, PW))
        return peftc_winograd3x3(y, work, x, w, b, 0, 0, n, IC, IH, IW, OC, PH, PW);
    if (is_pointwise(KH, KW, SH, SW, PH, PW)) {
        for (int64_t i = 0; i < n; i++) {
            float *yn = y + i * OC * S;
            /* yn (OC,S) = w (OC,IC) xn (IC,S): M=OC, N=S, K=IC, lda=IC, ldb=S, ldc=S */
            peftc_small_gemm_ab(yn, w, x + i * IC * S, 0, 0, OC, S, K, K, S, S);
            if (b)
                for (int64_t o = 0; o < OC; o++)
                    for (int64_t s = 0; s < S; s++)
                        yn[o * S + s] += b[o];
        }
        return PEFTC_OK;
    }
    if (use_implicit_fwd(IC, KH, KW)) {
        const implicit_fwd_geom g = implicit_fwd_geometry(n, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW, OH, OW);
        implicit_forward(y, work, x, w, b, n, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW, OH, OW, &g);
        return PEFTC_OK;
    }
    const int64_t nb = im2col_block(n, K, OC, S);
    for (int64_t i0 = 0; i0 < n; i0 += nb) {
        const int64_t bn = n - i0 < nb ? n - i0 : nb, L = bn * S;
        float *col = work, *yb = work + K * L, *ph = yb + OC * L;
        for (int64_t i = 0; i < bn; i++)
            im2col(col + i * S, L, ph, x + (i0 + i) * IC * IH * IW, IC, IH, IW, KH, KW, SH, SW, PH, PW, OH, OW);
        /* yb (OC,L) = w (OC,K) col (K,L), L = bn*S: M=OC, N=L, K=IC*KH*KW, lda=K, ldb=L, ldc=L */
        peftc_small_gemm_ab(yb, w, col, 0, 0, OC, L, K, K, L, L);
        for (int64_t i = 0; i < bn; i++)
            for (int64_t o = 0; o < OC; o++) {
                float *dst = y + ((i0 + i) * OC + o) * S;
                const float *src = yb + o * L + i * S;
                const float bias = b ? b[o] : 0.0f;
                for (int64_t s = 0; s < S; s++)
                    dst[s] = src[s] + bias;
            }
    }
    return PEFTC_OK;
}

/* dx of images [n0, n0 + n) (accumulated, or overwritten with j->overwrite_dx) */
static peftc_status input_grad_images(const conv_job *j, float *work, int64_t n0, int64_t n)
{
    const int64_t IC = j->IC, IH = j->IH, IW = j->IW, OC = j->OC, KH = j->KH, KW = j->KW, SH = j->SH, SW = j->SW,
                  PH = j->PH, PW = j->PW, OH = j->OH, OW = j->OW;
    const int64_t K = IC * KH * KW, S = OH * OW;
    const float *dy = j->dy + n0 * OC * S, *w = j->w;
    float *dx = j->dx + n0 * IC * IH * IW;
    const int add = !j->overwrite_dx;
    if (use_winograd(IC, OC, KH, KW, SH, SW, PH, PW))
        /* the input gradient is the correlation of dy, padded by 2 - P, with the flipped, transposed w */
        return peftc_winograd3x3(dx, work, dy, w, NULL, 1, add, n, OC, OH, OW, IC, 2 - PH, 2 - PW);
    if (is_pointwise(KH, KW, SH, SW, PH, PW)) {
        for (int64_t i = 0; i < n; i++) {
            /* dxn (IC,S) (+)= w^T (IC,OC) dyn (OC,S): M=IC, N=S, K=OC, lda=IC, ldb=S, ldc=S */
            peftc_small_gemm_ab(dx + i * IC * S, w, dy + i * OC * S, 1, add, IC, S, OC, IC, S, S);
        }
        return PEFTC_OK;
    }
    const implicit_geom g = implicit_geometry(n, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW, OH, OW);
    if (use_implicit(OC, KH, KW, SH, SW, &g)) {
        implicit_input_grad(dx, work, dy, w, !add, n, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW, OH, OW, &g);
        return PEFTC_OK;
    }
    if (!add) /* the patch path adds each column entry back where it was read from */
        memset(dx, 0, (size_t)(n * IC * IH * IW) * sizeof(float));
    const int64_t nb = im2col_block(n, K, OC, S);
    for (int64_t i0 = 0; i0 < n; i0 += nb) {
        const int64_t bn = n - i0 < nb ? n - i0 : nb, L = bn * S;
        float *col = work, *dyb = work + K * L, *ph = dyb + OC * L;
        gather_block(dyb, dy + i0 * OC * S, bn, OC, S);
        /* col (K,L) = w^T (K,OC) dyb (OC,L): M=K, N=L, K=OC, lda=K, ldb=L, ldc=L */
        peftc_small_gemm_ab(col, w, dyb, 1, 0, K, L, OC, K, L, L);
        for (int64_t i = 0; i < bn; i++)
            col2im_add(dx + (i0 + i) * IC * IH * IW, col + i * S, L, ph, IC, IH, IW, KH, KW, SH, SW, PH, PW, OH, OW);
    }
    return PEFTC_OK;
}

/* Part t of nparts: an even share of the images, [n0, n0 + *count), swept in blocks of its own. Every
 * output is computed the same way whatever the blocks (transforms and patch rows per image, each
 * product entry one chain over k), so the split changes no bits. */
static int64_t part_images(const conv_job *j, int64_t t, int64_t nparts, int64_t *count)
{
    int64_t n0, n1;
    peftc_part_range(j->N, t, nparts, &n0, &n1);
    *count = n1 - n0;
    return n0;
}

static peftc_status forward_part(void *ctx, int64_t t, int64_t nparts)
{
    const conv_job *j = ctx;
    int64_t count;
    const int64_t n0 = part_images(j, t, nparts, &count);
    return forward_images(j, j->work + t * j->part, n0, count);
}

static peftc_status input_grad_part(void *ctx, int64_t t, int64_t nparts)
{
    const conv_job *j = ctx;
    int64_t count;
    const int64_t n0 = part_images(j, t, nparts, &count);
    return input_grad_images(j, j->work + t * j->part, n0, count);
}

/* The job of a sweep over N images split into *parts (as many as the blocks of nb images have work
 * for), each part with its own slice of work: images on threads beat one small GEMM on several. */
static conv_job conv_job_for(int64_t *parts, int input_grad, float *work, int64_t N, int64_t IC, int64_t IH, int64_t IW,
                             int64_t OC, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    const int64_t OH = conv_out_size(IH, KH, SH, PH), OW = conv_out_size(IW, KW, SW, PW);
    const int64_t K = IC * KH * KW, S = OH * OW;
    const int64_t nb = sweep_block(input_grad, N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW, OH, OW);
    *parts = conv_parts((N + nb - 1) / nb, nb, OC, K, S);
    return (conv_job){.work = work,
                      .N = N,
                      .IC = IC,
                      .IH = IH,
                      .IW = IW,
                      .OC = OC,
                      .KH = KH,
                      .KW = KW,
                      .SH = SH,
                      .SW = SW,
                      .PH = PH,
                      .PW = PW,
                      .OH = OH,
                      .OW = OW,
                      .part = part_workspace(N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW, OH, K, S)};
}

peftc_status peftc_conv2d_forward(float *y, float *work, const float *x, const float *w, const float *b, int64_t N,
                                  int64_t IC, int64_t IH, int64_t IW, int64_t OC, int64_t KH, int64_t KW, int64_t SH,
                                  int64_t SW, int64_t PH, int64_t PW)
{
    if (!conv_args_ok(N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW))
        return PEFTC_ERR_SIZE;
    if (N == 0)
        return PEFTC_OK;
    int64_t parts;
    conv_job job = conv_job_for(&parts, 0, work, N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW);
    job.y = y;
    job.x = x;
    job.w = w;
    job.b = b;
    return peftc_parallel_run(forward_part, &job, parts);
}

peftc_status peftc_conv2d_backward(float *dx, float *dw, float *db, float *work, const float *dy, const float *x,
                                   const float *w, int overwrite_dx, int64_t N, int64_t IC, int64_t IH, int64_t IW,
                                   int64_t OC, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    if (!conv_args_ok(N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW))
        return PEFTC_ERR_SIZE;
    if (dw && !x)
        return PEFTC_ERR_ARG;
    const int64_t OH = conv_out_size(IH, KH, SH, PH), OW = conv_out_size(IW, KW, SW, PW);
    const int64_t K = IC * KH * KW, S = OH * OW;
    peftc_status st = PEFTC_OK;
    if (db)
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < OC; o++) {
                const float *dyo = dy + (n * OC + o) * S;
                double acc = 0.0;
                for (int64_t s = 0; s < S; s++)
                    acc += dyo[s];
                db[o] += (float)acc;
            }
    if (N == 0 || (!dx && !dw))
        return PEFTC_OK;
    /* the weight gradient sums over all images: one part, on this thread, with OpenBLAS's own threads */
    if (dw && is_pointwise(KH, KW, SH, SW, PH, PW)) {
        for (int64_t n = 0; n < N && st == PEFTC_OK; n++)
            /* dw (OC,IC) += dyn (OC,S) xn^T (S,IC): M=OC, N=IC, K=S, lda=S, ldb=S, ldc=IC */
            st = peftc_sgemm(0, 1, OC, K, S, 1.0f, dy + n * OC * S, S, x + n * IC * S, S, 1.0f, dw, K);
    } else if (dw) {
        const int64_t nb = weight_grad_block(N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW, K, S);
        for (int64_t n0 = 0; n0 < N && st == PEFTC_OK; n0 += nb) {
            const int64_t bn = N - n0 < nb ? N - n0 : nb, L = bn * S;
            float *col = work, *dyb = work + K * L, *ph = dyb + OC * L;
            gather_block(dyb, dy + n0 * OC * S, bn, OC, S);
            for (int64_t i = 0; i < bn; i++)
                im2col(col + i * S, L, ph, x + (n0 + i) * IC * IH * IW, IC, IH, IW, KH, KW, SH, SW, PH, PW, OH, OW);
            /* dw (OC,K) += dyb (OC,L) col^T (L,K), L = bn*S: M=OC, N=K, K=L, lda=L, ldb=L, ldc=K */
            st = peftc_sgemm(0, 1, OC, K, L, 1.0f, dyb, L, col, L, 1.0f, dw, K);
        }
    }
    if (st != PEFTC_OK || !dx)
        return st;
    int64_t parts;
    conv_job job = conv_job_for(&parts, 1, work, N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW);
    job.dx = dx;
    job.dy = dy;
    job.w = w;
    job.overwrite_dx = overwrite_dx;
    return peftc_parallel_run(input_grad_part, &job, parts);
}
