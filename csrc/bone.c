/* bone.c: the Bone / MiSS adapters and Bat, forward, backward and merge.
 *
 * Bone ("balance", MiSS's default) and MiSS "mini" share one kernel set. The trainable block
 * d (R,MR) is tiled along the outputs (MR == OC for balance), and the input is cut into shards of R
 * features whose sum is multiplied by d:
 *   s[n, j] = sum_k xd[n, k R + j]   (xd = dropout_p(x); a last partial shard is zero-padded)
 *   y = x w^T + b + s D,             D[j, o] = d[j, o mod MR]
 * so the update is additive and never reads w: merge adds D[c mod R, o] to w[o, c].
 *
 * Bat keeps one R x R matrix t_i per output row-block and changes w blockwise:
 *   w'_{i,k} = w_{i,k} + w_{i,k} t_i + t_i      (w_{i,k} the R x R block at rows iR.., columns kR..)
 * The forward builds w' into caller scratch and runs one dense GEMM, as the whole update is
 * nonlinear in w; the backward rebuilds it rather than keeping an (OC,IC) cache per layer.
 * Row-block i of a row-major w is R*IC contiguous floats, and read as an (IC,R) matrix its row
 * (a, k) is w_{i,k}[a, :]: so "every block of row-block i times t_i" is one GEMM with K = R.
 * Unmerge needs (I + t_i)^{-1}; the caller computes it (an R x R inverse per block, done with
 * LAPACK on the Python side) and passes it in.
 * Not here: Bat has no dropout (PEFT applies none to it). Gradient math: adapters.md section 4. */
#include <string.h>

#include "blas.h"

/* ---- Bone / MiSS ------------------------------------------------------------------------------ */

static int bone_sizes_ok(int64_t N, int64_t IC, int64_t OC, int64_t R, int64_t MR)
{
    return N >= 0 && IC >= 0 && OC >= 0 && R > 0 && MR > 0 && OC % MR == 0;
}

peftc_status peftc_bone_forward(float *y, float *s, float *xd, const float *x, const float *w, const float *b,
                                const float *d, float p, uint64_t seed, uint64_t offset, int64_t N, int64_t IC,
                                int64_t OC, int64_t R, int64_t MR)
{
    if (!(p >= 0.0f && p < 1.0f) || (p > 0.0f) != (xd != NULL))
        return PEFTC_ERR_ARG;
    if (!bone_sizes_ok(N, IC, OC, R, MR))
        return PEFTC_ERR_SIZE;
    peftc_status st = peftc_linear_forward(y, x, w, b, N, IC, OC);
    if (st != PEFTC_OK)
        return st;
    const float *xin = x;
    if (p > 0.0f) {
        st = peftc_dropout_forward(xd, x, p, seed, offset, N * IC);
        if (st != PEFTC_OK)
            return st;
        xin = xd;
    }
    for (int64_t n = 0; n < N; n++) {
        float *sn = s + n * R;
        const float *xn = xin + n * IC;
        memset(sn, 0, (size_t)R * sizeof(float));
        for (int64_t k0 = 0; k0 < IC; k0 += R) {
            const int64_t width = IC - k0 < R ? IC - k0 : R; /* the padded tail adds zeros: skip it */
            for (int64_t j = 0; j < width; j++)
                sn[j] += xn[k0 + j];
        }
    }
    for (int64_t t = 0; t < OC / MR; t++) {
        /* y[:, tMR:(t+1)MR] (N,MR) += s (N,R) d (R,MR): M=N, N=MR, K=R, lda=R, ldb=MR, ldc=OC */
        st = peftc_sgemm(0, 0, N, MR, R, 1.0f, s, R, d, MR, 1.0f, y + t * MR, OC);
        if (st != PEFTC_OK)
            return st;
    }
    return PEFTC_OK;
}

int64_t peftc_bone_backward_workspace_size(int64_t N, int64_t IC, int64_t R, float p)
{
    /* gs = dy D^T (N,R), plus the pre-mask adapter input gradient (N,IC) when dropout is on */
    return N * R + (p > 0.0f ? N * IC : 0);
}

peftc_status peftc_bone_backward(float *dx, float *dd, float *work, const float *dy, const float *s, const float *w,
                                 const float *d, float p, uint64_t seed, uint64_t offset, int64_t N, int64_t IC,
                                 int64_t OC, int64_t R, int64_t MR)
{
    if (!(p >= 0.0f && p < 1.0f))
        return PEFTC_ERR_ARG;
    if (!bone_sizes_ok(N, IC, OC, R, MR))
        return PEFTC_ERR_SIZE;
    peftc_status st = PEFTC_OK;
    for (int64_t t = 0; dd && t < OC / MR; t++) {
        /* dd (R,MR) += s^T (R,N) dy[:, tMR:(t+1)MR] (N,MR): M=R, N=MR, K=N, lda=R, ldb=OC, ldc=MR */
        st = peftc_sgemm(1, 0, R, MR, N, 1.0f, s, R, dy + t * MR, OC, 1.0f, dd, MR);
        if (st != PEFTC_OK)
            return st;
    }
    if (!dx)
        return PEFTC_OK;
    st = peftc_linear_backward(dx, NULL, NULL, dy, NULL, w, N, IC, OC);
    if (st != PEFTC_OK)
        return st;
    float *gs = work;
    for (int64_t t = 0; t < OC / MR; t++) {
        /* gs (N,R) (+)= dy[:, tMR:(t+1)MR] (N,MR) d^T (MR,R): M=N, N=R, K=MR, lda=OC, ldb=MR, ldc=R */
        st = peftc_sgemm(0, 1, N, R, MR, 1.0f, dy + t * MR, OC, d, MR, t == 0 ? 0.0f : 1.0f, gs, R);
        if (st != PEFTC_OK)
            return st;
    }
    if (OC == 0)
        memset(gs, 0, (size_t)(N * R) * sizeof(float));
    /* every shard of the input receives the same gs; padded columns do not exist in dx */
    float *gx = p > 0.0f ? work + N * R : dx;
    for (int64_t n = 0; n < N; n++)
        for (int64_t k0 = 0; k0 < IC; k0 += R) {
            const int64_t width = IC - k0 < R ? IC - k0 : R;
            for (int64_t j = 0; j < width; j++) {
                if (p > 0.0f)
                    gx[n * IC + k0 + j] = gs[n * R + j];
                else
                    gx[n * IC + k0 + j] += gs[n * R + j];
            }
        }
    if (p > 0.0f)
        return peftc_dropout_backward(dx, gx, p, seed, offset, N * IC);
    return PEFTC_OK;
}

peftc_status peftc_bone_merge(float *w, const float *d, float sign, int64_t IC, int64_t OC, int64_t R, int64_t MR)
{
    if (!(sign == 1.0f || sign == -1.0f))
        return PEFTC_ERR_ARG;
    if (!bone_sizes_ok(0, IC, OC, R, MR))
        return PEFTC_ERR_SIZE;
    for (int64_t o = 0; o < OC; o++)
        for (int64_t c = 0; c < IC; c++)
            w[o * IC + c] += sign * d[(c % R) * MR + o % MR];
    return PEFTC_OK;
}

/* ---- Bat -------------------------------------------------------------------------------------- */

static int bat_sizes_ok(int64_t IC, int64_t OC, int64_t R)
{
    return IC >= 0 && OC >= 0 && R > 0 && IC % R == 0 && OC % R == 0;
}

/* Row-block i: dst_i += src_i t_i + t_i on every R x R block (dst_i, src_i: R*IC floats read as (IC,R)). */
static peftc_status bat_add_delta(float *dst, const float *src, const float *ti, int64_t IC, int64_t R)
{
    /* dst_i (IC,R) += src_i (IC,R) t_i (R,R): M=IC, N=R, K=R, lda=R, ldb=R, ldc=R */
    peftc_status st = peftc_sgemm(0, 0, IC, R, R, 1.0f, src, R, ti, R, 1.0f, dst, R);
    if (st != PEFTC_OK)
        return st;
    for (int64_t a = 0; a < R; a++)
        for (int64_t c = 0; c < IC; c++)
            dst[a * IC + c] += ti[a * R + c % R];
    return PEFTC_OK;
}

peftc_status peftc_bat_weight(float *weff, const float *w, const float *t, int64_t IC, int64_t OC, int64_t R)
{
    if (!bat_sizes_ok(IC, OC, R))
        return PEFTC_ERR_SIZE;
    memcpy(weff, w, (size_t)(OC * IC) * sizeof(float));
    for (int64_t i = 0; i < OC / R; i++) {
        peftc_status st = bat_add_delta(weff + i * R * IC, w + i * R * IC, t + i * R * R, IC, R);
        if (st != PEFTC_OK)
            return st;
    }
    return PEFTC_OK;
}

peftc_status peftc_bat_forward(float *y, float *weff, const float *x, const float *w, const float *b, const float *t,
                               int64_t N, int64_t IC, int64_t OC, int64_t R)
{
    peftc_status st = peftc_bat_weight(weff, w, t, IC, OC, R);
    if (st != PEFTC_OK)
        return st;
    return peftc_linear_forward(y, x, weff, b, N, IC, OC);
}

int64_t peftc_bat_backward_workspace_size(int64_t IC, int64_t OC)
{
    /* dW = dy^T x, then the effective weight, in turn */
    return OC * IC;
}

peftc_status peftc_bat_backward(float *dx, float *dt, float *work, const float *dy, const float *x, const float *w,
                                const float *t, int64_t N, int64_t IC, int64_t OC, int64_t R)
{
    if (!bat_sizes_ok(IC, OC, R) || N < 0)
        return PEFTC_ERR_SIZE;
    peftc_status st = PEFTC_OK;
    if (dt) {
        float *dw = work;
        /* dw (OC,IC) = dy^T (OC,N) x (N,IC): M=OC, N=IC, K=N, lda=OC, ldb=IC, ldc=IC */
        st = peftc_sgemm(1, 0, OC, IC, N, 1.0f, dy, OC, x, IC, 0.0f, dw, IC);
        if (st != PEFTC_OK)
            return st;
        for (int64_t i = 0; i < OC / R; i++) {
            const float *wi = w + i * R * IC, *dwi = dw + i * R * IC;
            float *dti = dt + i * R * R;
            /* dt_i (R,R) += w_i^T (R,IC) dw_i (IC,R), both read as (IC,R): M=R, N=R, K=IC, lda=R, ldb=R, ldc=R */
            st = peftc_sgemm(1, 0, R, R, IC, 1.0f, wi, R, dwi, R, 1.0f, dti, R);
            if (st != PEFTC_OK)
                return st;
            for (int64_t a = 0; a < R; a++)
                for (int64_t c = 0; c < IC; c++)
                    dti[a * R + c % R] += dwi[a * IC + c];
        }
    }
    if (!dx)
        return PEFTC_OK;
    st = peftc_bat_weight(work, w, t, IC, OC, R);
    if (st != PEFTC_OK)
        return st;
    /* dx (N,IC) += dy (N,OC) w' (OC,IC) */
    return peftc_linear_backward(dx, NULL, NULL, dy, NULL, work, N, IC, OC);
}

int64_t peftc_bat_merge_workspace_size(int64_t IC, int64_t R)
{
    return R * IC; /* one row-block of w */
}

peftc_status peftc_bat_merge(float *w, float *work, const float *t, int64_t IC, int64_t OC, int64_t R)
{
    if (!bat_sizes_ok(IC, OC, R))
        return PEFTC_ERR_SIZE;
    for (int64_t i = 0; i < OC / R; i++) {
        float *wi = w + i * R * IC;
        memcpy(work, wi, (size_t)(R * IC) * sizeof(float));
        peftc_status st = bat_add_delta(wi, work, t + i * R * R, IC, R);
        if (st != PEFTC_OK)
            return st;
    }
    return PEFTC_OK;
}

peftc_status peftc_bat_unmerge(float *w, float *work, const float *t, const float *tinv, int64_t IC, int64_t OC,
                               int64_t R)
{
    if (!bat_sizes_ok(IC, OC, R))
        return PEFTC_ERR_SIZE;
    for (int64_t i = 0; i < OC / R; i++) {
        float *wi = w + i * R * IC;
        const float *ti = t + i * R * R;
        for (int64_t a = 0; a < R; a++)
            for (int64_t c = 0; c < IC; c++)
                work[a * IC + c] = wi[a * IC + c] - ti[a * R + c % R];
        /* w_i (IC,R) = (w_i - t_i) (IC,R) (I + t_i)^{-1} (R,R): M=IC, N=R, K=R, lda=R, ldb=R, ldc=R */
        peftc_status st = peftc_sgemm(0, 0, IC, R, R, 1.0f, work, R, tinv + i * R * R, R, 0.0f, wi, R);
        if (st != PEFTC_OK)
            return st;
    }
    return PEFTC_OK;
}
