/* attention.c: the multi-head self-attention core on already-projected q, k, v (B,T,H), forward
 * and backward. Each (batch, head) pair is two GEMMs that read its columns of q, k, v and write
 * its columns of out in place through the leading dimension H: no transposing copies, no head
 * split or merge. Scale, key mask, causal mask and softmax are one pass over each score row.
 * The Q/K/V and output projections are not here (linear.c, lora.c). */
#include <math.h>

#include "blas.h"
#include "fastmath.h"

static int attention_args_ok(float p, int64_t B, int64_t T, int64_t H, int64_t NH)
{
    return p >= 0.0f && p < 1.0f && B >= 0 && T >= 0 && H >= 0 && NH > 0 && H % NH == 0;
}

static uint64_t att_counter(uint64_t offset, int64_t bh, int64_t i, int64_t T)
{
    return offset + (uint64_t)((bh * T + i) * T);
}

/* Row i of one (b, h) score block: scale, exclude masked and (if causal) future keys, softmax in
 * place. Excluded keys get exactly 0; a row with no visible key becomes all zeros. The exp loop
 * is branch-free so that it vectorises; the sum is a separate loop. */
static void masked_softmax_row(float *row, const int64_t *keymask, int causal, int64_t i, float scale, int64_t T)
{
    const int64_t last = causal ? i + 1 : T;
    float mx = -INFINITY;
    for (int64_t j = 0; j < last; j++) {
        const float s = row[j] * scale;
        mx = (!keymask || keymask[j]) && s > mx ? s : mx;
    }
    if (mx == -INFINITY) {
        for (int64_t j = 0; j < T; j++)
            row[j] = 0.0f;
        return;
    }
    if (keymask) {
        for (int64_t j = 0; j < last; j++) {
            const float e = peftc_exp_approx(row[j] * scale - mx);
            row[j] = keymask[j] ? e : 0.0f;
        }
    } else {
        for (int64_t j = 0; j < last; j++)
            row[j] = peftc_exp_approx(row[j] * scale - mx);
    }
    for (int64_t j = last; j < T; j++)
        row[j] = 0.0f;
    float sum = 0.0f;
    for (int64_t j = 0; j < last; j++)
        sum += row[j];
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < last; j++)
        row[j] *= inv;
}

int64_t peftc_attention_forward_workspace_size(int64_t T, float p)
{
    /* the dropped probabilities of one (b, h) block */
    return p > 0.0f ? T * T : 0;
}

peftc_status peftc_attention_forward(float *out, float *att, float *work, const float *q, const float *k,
                                     const float *v, const int64_t *mask, int causal, float p, uint64_t seed,
                                     uint64_t offset, int64_t B, int64_t T, int64_t H, int64_t NH)
{
    if (!attention_args_ok(p, B, T, H, NH))
        return p >= 0.0f && p < 1.0f ? PEFTC_ERR_SIZE : PEFTC_ERR_ARG;
    const int64_t HS = H / NH;
    const float scale = HS > 0 ? 1.0f / sqrtf((float)HS) : 1.0f;
    const float keep_scale = 1.0f / (1.0f - p);
    for (int64_t b = 0; b < B; b++) {
        const int64_t *keymask = mask ? mask + b * T : NULL;
        for (int64_t h = 0; h < NH; h++) {
            const int64_t bh = b * NH + h;
            const int64_t col = b * T * H + h * HS;
            float *a = att + bh * T * T;
            /* a (T,T) = q_h (T,HS) k_h^T: M=T, N=T, K=HS, lda=H, ldb=H, ldc=T */
            peftc_status st = peftc_sgemm(0, 1, T, T, HS, 1.0f, q + col, H, k + col, H, 0.0f, a, T);
            if (st != PEFTC_OK)
                return st;
            for (int64_t i = 0; i < T; i++)
                masked_softmax_row(a + i * T, keymask, causal, i, scale, T);
            const float *pv = a;
            if (p > 0.0f) {
                for (int64_t i = 0; i < T; i++) {
                    const uint64_t c0 = att_counter(offset, bh, i, T);
                    for (int64_t j = 0; j < T; j++)
                        work[i * T + j] = peftc_rng_uniform01(seed, c0 + (uint64_t)j) >= p
                                              ? a[i * T + j] * keep_scale : 0.0f;
                }
                pv = work;
            }
            /* out_h (T,HS) = pv (T,T) v_h (T,HS): M=T, N=HS, K=T, lda=T, ldb=H, ldc=H */
            st = peftc_sgemm(0, 0, T, HS, T, 1.0f, pv, T, v + col, H, 0.0f, out + col, H);
            if (st != PEFTC_OK)
                return st;
        }
    }
    return PEFTC_OK;
}

int64_t peftc_attention_backward_workspace_size(int64_t T, float p)
{
    /* d(probabilities) of one block, plus its dropped probabilities when dropout is on */
    return T * T * (p > 0.0f ? 2 : 1);
}

/* Per (b, h), with P = att, Pd = dropout(P), G = dout_h:
 *   dPd = G v_h^T, dv_h += Pd^T G, dP = dPd through the mask, dS = scale * P o (dP - rowsum(P o dP)),
 *   dq_h += dS k_h, dk_h += dS^T q_h. */
peftc_status peftc_attention_backward(float *dq, float *dk, float *dv, float *work, const float *dout,
                                      const float *q, const float *k, const float *v, const float *att, float p,
                                      uint64_t seed, uint64_t offset, int64_t B, int64_t T, int64_t H, int64_t NH)
{
    if (!attention_args_ok(p, B, T, H, NH))
        return p >= 0.0f && p < 1.0f ? PEFTC_ERR_SIZE : PEFTC_ERR_ARG;
    const int64_t HS = H / NH;
    const float scale = HS > 0 ? 1.0f / sqrtf((float)HS) : 1.0f;
    const float keep_scale = 1.0f / (1.0f - p);
    float *ds = work;
    float *pd = work + T * T;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < NH; h++) {
            const int64_t bh = b * NH + h;
            const int64_t col = b * T * H + h * HS;
            const float *a = att + bh * T * T;
            const float *pv = a;
            if (p > 0.0f) {
                for (int64_t i = 0; i < T; i++) {
                    const uint64_t c0 = att_counter(offset, bh, i, T);
                    for (int64_t j = 0; j < T; j++)
                        pd[i * T + j] = peftc_rng_uniform01(seed, c0 + (uint64_t)j) >= p
                                            ? a[i * T + j] * keep_scale : 0.0f;
                }
                pv = pd;
            }
            peftc_status st;
            if (dv) {
                /* dv_h (T,HS) += pv^T (T,T) G (T,HS): M=T, N=HS, K=T, lda=T, ldb=H, ldc=H */
                st = peftc_sgemm(1, 0, T, HS, T, 1.0f, pv, T, dout + col, H, 1.0f, dv + col, H);
                if (st != PEFTC_OK)
                    return st;
            }
            if (!dq && !dk)
                continue;
            /* ds (T,T) = G (T,HS) v_h^T: M=T, N=T, K=HS, lda=H, ldb=H, ldc=T */
            st = peftc_sgemm(0, 1, T, T, HS, 1.0f, dout + col, H, v + col, H, 0.0f, ds, T);
            if (st != PEFTC_OK)
                return st;
            for (int64_t i = 0; i < T; i++) {
                float *d = ds + i * T;
                const float *pr = a + i * T;
                if (p > 0.0f) {
                    /* a dropped element has pd == 0 < P; where P == 0 the factor P below zeroes it anyway,
                     * so pd != 0 is the keep-mask and the generator need not run twice */
                    const float *pdr = pd + i * T;
                    for (int64_t j = 0; j < T; j++)
                        d[j] = pdr[j] != 0.0f ? d[j] * keep_scale : 0.0f;
                }
                float dot = 0.0f;
                for (int64_t j = 0; j < T; j++)
                    dot += pr[j] * d[j];
                for (int64_t j = 0; j < T; j++)
                    d[j] = scale * pr[j] * (d[j] - dot);
            }
            if (dq) {
                /* dq_h (T,HS) += ds (T,T) k_h (T,HS): M=T, N=HS, K=T, lda=T, ldb=H, ldc=H */
                st = peftc_sgemm(0, 0, T, HS, T, 1.0f, ds, T, k + col, H, 1.0f, dq + col, H);
                if (st != PEFTC_OK)
                    return st;
            }
            if (dk) {
                /* dk_h (T,HS) += ds^T (T,T) q_h (T,HS): M=T, N=HS, K=T, lda=T, ldb=H, ldc=H */
                st = peftc_sgemm(1, 0, T, HS, T, 1.0f, ds, T, q + col, H, 1.0f, dk + col, H);
                if (st != PEFTC_OK)
                    return st;
            }
        }
    }
    return PEFTC_OK;
}
