/* sora.c: the SoRA layer (LoRA with a gate vector between A and B), forward, backward and the
 * proximal threshold on the gates.
 *   y = x w^T + b + s * xd a^T diag(g) bm^T,   xd = dropout_p(x)
 * Both passes fold the gate into a scratch copy bg = bm diag(g) and call the LoRA kernels, so there
 * are no GEMMs here of their own. The gate gradient comes from the gradient of bg:
 *   dbm = dbg diag(g),   dg_i = sum_o dbg[o,i] bm[o,i].
 * The L1 penalty of the SoRA objective is not here: its gradient is a sign vector the caller adds.
 * Merging goes through peftc_lora_merge with bg as well (no merge kernel here). */
#include <math.h>

#include "peftc.h"

static void fold_gate(float *bg, const float *bm, const float *g, int64_t OC, int64_t R)
{
    for (int64_t o = 0; o < OC; o++)
        for (int64_t i = 0; i < R; i++)
            bg[o * R + i] = bm[o * R + i] * g[i];
}

int64_t peftc_sora_forward_workspace_size(int64_t OC, int64_t R)
{
    return OC * R; /* bg */
}

peftc_status peftc_sora_forward(float *y, float *xd, float *u, float *work, const float *x, const float *w,
                                const float *b, const float *a, const float *bm, const float *g, float scale, float p,
                                uint64_t seed, uint64_t offset, int64_t N, int64_t IC, int64_t OC, int64_t R)
{
    if (OC < 0 || R < 0)
        return PEFTC_ERR_SIZE;
    fold_gate(work, bm, g, OC, R);
    return peftc_lora_forward(y, xd, u, x, w, b, a, work, NULL, scale, p, seed, offset, N, IC, OC, R);
}

int64_t peftc_sora_backward_workspace_size(int64_t N, int64_t IC, int64_t OC, int64_t R, float p)
{
    /* bg and dbg (OC,R) each, then the LoRA backward's own scratch */
    return 2 * OC * R + peftc_lora_backward_workspace_size(N, IC, R, p);
}

peftc_status peftc_sora_backward(float *dx, float *da, float *dbm, float *dg, float *work, const float *dy,
                                 const float *xin, const float *u, const float *w, const float *a, const float *bm,
                                 const float *g, float scale, float p, uint64_t seed, uint64_t offset, int64_t N,
                                 int64_t IC, int64_t OC, int64_t R)
{
    if (OC < 0 || R < 0)
        return PEFTC_ERR_SIZE;
    float *bg = work, *dbg = work + OC * R, *lora_work = work + 2 * OC * R;
    fold_gate(bg, bm, g, OC, R);
    const int want_dbg = dbm != NULL || dg != NULL;
    if (want_dbg)
        for (int64_t k = 0; k < OC * R; k++)
            dbg[k] = 0.0f;
    peftc_status st = peftc_lora_backward(dx, da, want_dbg ? dbg : NULL, NULL, lora_work, dy, xin, u, w, a, bg, scale,
                                          p, seed, offset, N, IC, OC, R);
    if (st != PEFTC_OK || !want_dbg)
        return st;
    if (dbm)
        for (int64_t o = 0; o < OC; o++)
            for (int64_t i = 0; i < R; i++)
                dbm[o * R + i] += dbg[o * R + i] * g[i];
    if (dg)
        for (int64_t i = 0; i < R; i++) {
            double sum = 0.0; /* OC terms of mixed sign: sum in double */
            for (int64_t o = 0; o < OC; o++)
                sum += (double)dbg[o * R + i] * (double)bm[o * R + i];
            dg[i] += (float)sum;
        }
    return PEFTC_OK;
}

peftc_status peftc_sora_gate_threshold(float *g, float tau, int compat, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    if (!(tau >= 0.0f) || tau == (float)INFINITY)
        return PEFTC_ERR_ARG;
    for (int64_t k = 0; k < P; k++) {
        float v = g[k];
        if (v != v)
            continue;
        if (compat) {
            /* the official SparseAdamW: three masked writes, each reading the previous one's result */
            if (v > tau)
                v -= tau;
            if (v < -tau)
                v += tau;
            if (fabsf(v) < tau)
                v = 0.0f;
        } else {
            v = v > tau ? v - tau : (v < -tau ? v + tau : 0.0f);
        }
        g[k] = v;
    }
    return PEFTC_OK;
}
