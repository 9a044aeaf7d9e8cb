/* embedding.c: the BERT embedding sum (word + position + token type), forward and scatter-add
 * backward. Positions are 0..T-1 for every sequence. No LayerNorm or dropout here (layernorm.c,
 * dropout.c); no BLAS: each token is one row read and one row written. */
#include "peftc.h"

static int embedding_sizes_ok(int64_t B, int64_t T, int64_t H, int64_t V, int64_t NP, int64_t NT)
{
    return B >= 0 && T >= 0 && H >= 0 && V >= 0 && NP >= 0 && NT >= 0 && T <= NP;
}

/* PEFTC_ERR_LABEL when an id or a token type is outside its table */
static peftc_status check_ids(const int64_t *ids, const int64_t *types, int64_t BT, int64_t V, int64_t NT)
{
    for (int64_t i = 0; i < BT; i++) {
        if (ids[i] < 0 || ids[i] >= V)
            return PEFTC_ERR_LABEL;
        if (types ? (types[i] < 0 || types[i] >= NT) : NT < 1)
            return PEFTC_ERR_LABEL;
    }
    return PEFTC_OK;
}

peftc_status peftc_embedding_forward(float *out, const int64_t *ids, const int64_t *types, const float *wte,
                                     const float *wpe, const float *wtt, int64_t B, int64_t T, int64_t H, int64_t V,
                                     int64_t NP, int64_t NT)
{
    if (!embedding_sizes_ok(B, T, H, V, NP, NT))
        return PEFTC_ERR_SIZE;
    peftc_status st = check_ids(ids, types, B * T, V, NT);
    if (st != PEFTC_OK)
        return st;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t t = 0; t < T; t++) {
            const int64_t n = b * T + t;
            const float *we = wte + ids[n] * H;
            const float *pe = wpe + t * H;
            const float *te = wtt + (types ? types[n] : 0) * H;
            float *o = out + n * H;
            for (int64_t c = 0; c < H; c++)
                o[c] = we[c] + pe[c] + te[c];
        }
    }
    return PEFTC_OK;
}

peftc_status peftc_embedding_backward(float *dwte, float *dwpe, float *dwtt, const float *dout, const int64_t *ids,
                                      const int64_t *types, int64_t padding_idx, int64_t B, int64_t T, int64_t H,
                                      int64_t V, int64_t NP, int64_t NT)
{
    if (!embedding_sizes_ok(B, T, H, V, NP, NT))
        return PEFTC_ERR_SIZE;
    peftc_status st = check_ids(ids, types, B * T, V, NT);
    if (st != PEFTC_OK)
        return st;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t t = 0; t < T; t++) {
            const int64_t n = b * T + t;
            const float *d = dout + n * H;
            if (dwte && ids[n] != padding_idx) {
                float *g = dwte + ids[n] * H;
                for (int64_t c = 0; c < H; c++)
                    g[c] += d[c];
            }
            if (dwpe) {
                float *g = dwpe + t * H;
                for (int64_t c = 0; c < H; c++)
                    g[c] += d[c];
            }
            if (dwtt) {
                float *g = dwtt + (types ? types[n] : 0) * H;
                for (int64_t c = 0; c < H; c++)
                    g[c] += d[c];
            }
        }
    }
    return PEFTC_OK;
}
