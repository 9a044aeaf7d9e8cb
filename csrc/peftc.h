/* peftc.h: the public interface of the peftc compute core, one section per subject.
 *
 * Every kernel works on raw float32 pointers to C-order arrays with int64_t sizes, takes its
 * outputs first, then its inputs, then sizes, and returns a peftc_status. Kernels allocate
 * nothing: callers pass outputs and scratch, and an op that needs scratch has a
 * *_workspace_size() query. Backward kernels accumulate (+=) into gradient buffers; zeroing them
 * is the caller's explicit job. A NULL gradient pointer means "not wanted".
 *
 * Threads: a kernel that splits its own work (the comments below say which) does so into contiguous
 * ranges run on as many threads as OpenBLAS uses (OPENBLAS_NUM_THREADS), each range computed the same
 * way on any thread, so its results are bit-identical for any thread count; inputs too small to pay
 * for a thread stay on the calling one. An adapter kernel splits where it calls the linear, LoRA or
 * dropout kernels. GEMMs handed to OpenBLAS run on its threads as it splits them.
 * A workspace that holds one block per thread (attention, conv2d) grows with the thread count: query
 * its size with the thread count the kernel will run with. The thread pool (parallel.c) and the
 * BLAS / LAPACK door (blas.c) are internal and declare nothing here.
 *
 * Dimension letters used in every shape comment (a section adds its own where it needs more):
 *   N   rows (tokens: batch * sequence, flattened)     IC  input features
 *   OC  output features                                R   adapter rank
 *   C   classes                                        P   parameter count (flat)
 *   B   batch     T  sequence length     H  hidden width     NH  attention heads     HS  head size
 */
#ifndef PEFTC_H
#define PEFTC_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    PEFTC_OK = 0,
    PEFTC_ERR_SIZE = 1,      /* a size is negative, or too large for the 32-bit BLAS interface */
    PEFTC_ERR_ARG = 2,       /* a scalar argument is out of its domain (p outside [0, 1), ...) */
    PEFTC_ERR_LABEL = 3,     /* a class label outside [0, C) that is not the ignore index */
    PEFTC_ERR_LAPACK = 4,    /* LAPACK reported failure (no convergence, illegal argument) */
    PEFTC_ERR_NONFINITE = 5, /* NaN or Inf found where the op cannot proceed */
} peftc_status;

/* ==== linear layer and LoRA (linear.c, lora.c) ===================================================
 * A frozen or trainable linear layer y = x w^T + b, and LoRA on top of it; w is (OC,IC) as in torch.
 * Both build their output in place: a bias starts it as bias rows (split over the threads), and the
 * OpenBLAS GEMMs, the adapter's included, accumulate into it (beta = 1), so no (N,OC) temporary is
 * made. The other adapters build on these kernels (next section). */

/* ---- frozen or trainable linear (linear.c): y = x w^T + b -------------------------------------- */
peftc_status peftc_linear_forward(float *y /* (N,OC) overwritten */, const float *x /* (N,IC) */,
                                  const float *w /* (OC,IC) */, const float *b /* (OC) or NULL */, int64_t N,
                                  int64_t IC, int64_t OC);
peftc_status peftc_linear_backward(float *dx /* (N,IC) accumulated, or NULL */,
                                   float *dw /* (OC,IC) accumulated, or NULL */,
                                   float *db /* (OC) accumulated, or NULL */, const float *dy /* (N,OC) */,
                                   const float *x /* (N,IC), may be NULL when dw is NULL */,
                                   const float *w /* (OC,IC) */, int64_t N, int64_t IC, int64_t OC);

/* ---- LoRA (lora.c): y = x w^T + b + s * (dropout(x) a^T bm^T + bb) ----------------------------
 * w NULL: the base products x w^T and dy w are left to the caller (a bf16 frozen base, bf16_gemm.h). */
peftc_status peftc_lora_forward(float *y /* (N,OC) overwritten */,
                                float *xd /* (N,IC) overwritten: dropped adapter input; NULL iff p == 0 */,
                                float *u /* (N,R) overwritten: xd a^T, kept for backward */,
                                const float *x /* (N,IC) */, const float *w /* (OC,IC) or NULL */,
                                const float *b /* (OC) or NULL */, const float *a /* (R,IC) */,
                                const float *bm /* (OC,R) */, const float *bb /* (OC) or NULL */, float scale, float p,
                                uint64_t seed, uint64_t offset, int64_t N, int64_t IC, int64_t OC, int64_t R);
int64_t peftc_lora_backward_workspace_size(int64_t N, int64_t IC, int64_t R, float p); /* floats */
peftc_status peftc_lora_backward(float *dx /* (N,IC) accumulated, or NULL */,
                                 float *da /* (R,IC) accumulated, or NULL */,
                                 float *dbm /* (OC,R) accumulated, or NULL */,
                                 float *dbb /* (OC) accumulated, or NULL */,
                                 float *work /* peftc_lora_backward_workspace_size() floats */,
                                 const float *dy /* (N,OC) */, const float *xin /* (N,IC): xd if p > 0, else x */,
                                 const float *u /* (N,R) from the forward */, const float *w /* (OC,IC) or NULL */,
                                 const float *a /* (R,IC) */, const float *bm /* (OC,R) */, float scale, float p,
                                 uint64_t seed, uint64_t offset, int64_t N, int64_t IC, int64_t OC, int64_t R);
/* w += sign * s * bm a; b += sign * s * bb (b and bb both NULL or both given); sign is +1 or -1. */
peftc_status peftc_lora_merge(float *w /* (OC,IC) updated */, float *b /* (OC) updated, or NULL */,
                              const float *a /* (R,IC) */, const float *bm /* (OC,R) */,
                              const float *bb /* (OC) or NULL */, float scale, float sign, int64_t IC, int64_t OC,
                              int64_t R);

/* ---- LoRA with one adapter per row (lora_mixed.c): mixed-adapter batches -----------------------
 * K adapters on one frozen layer; row n runs adapter idx[n] (in [0,K)), or the base layer alone when
 * idx[n] = -1:  y[n] = x[n] w^T + b + s_k * (x[n] a_k^T bm_k^T + bb_k),  k = idx[n].
 * Adapter k: a[k] (R_k,IC), bm[k] (OC,R_k), bb[k] (OC) or NULL, scale[k], rank[k] = R_k <= RM. No dropout.
 * The rows are grouped by adapter inside the call (counting sort into iwork, N + K + 1 int64); u holds
 * each group's xk a_k^T in that group order (adapter 0's rows first, each group in row order), in its
 * first R_k columns. The backward regroups from idx, so it takes the forward's idx, x and u. A group whose
 * rows are one block of consecutive rows runs in place; the others are gathered into the workspace, whose
 * size depends on G, the rows of the largest such group (0 when all groups are blocks, N at most). */
int64_t peftc_lora_mixed_workspace_size(int64_t N, int64_t G, int64_t IC, int64_t OC,
                                        int64_t RM); /* floats, both passes */
peftc_status peftc_lora_mixed_forward(
    float *y /* (N,OC) overwritten; with w NULL updated: it holds x w^T + b on entry, the adapters are added */,
    float *u /* (N,RM) overwritten: adapters' rows, first R_k columns */,
    float *work /* peftc_lora_mixed_workspace_size() floats */, int64_t *iwork /* (N+K+1) scratch */,
    const float *x /* (N,IC) */,
    const float *w /* (OC,IC), or NULL: the base product is the caller's (e.g. once for identical rows) */,
    const float *b /* (OC) or NULL; NULL when w is */, const float *const *a /* K pointers: (R_k,IC) */,
    const float *const *bm /* K pointers: (OC,R_k) */, const float *const *bb /* K pointers: (OC) or NULL */,
    const float *scale /* (K) */, const int64_t *rank /* (K) */, const int64_t *idx /* (N) in [-1, K) */, int64_t N,
    int64_t IC, int64_t OC, int64_t K, int64_t RM);
peftc_status peftc_lora_mixed_backward(float *dx /* (N,IC) accumulated, or NULL */,
                                       float *const *da /* K pointers: (R_k,IC) accumulated, or NULL */,
                                       float *const *dbm /* K pointers: (OC,R_k) accumulated, or NULL */,
                                       float *const *dbb /* K pointers: (OC) accumulated, or NULL */,
                                       float *work /* peftc_lora_mixed_workspace_size() floats */,
                                       int64_t *iwork /* (N+K+1) scratch */, const float *dy /* (N,OC) */,
                                       const float *x /* (N,IC) */, const float *u /* (N,RM) from the forward */,
                                       const float *w /* (OC,IC) */, const float *const *a /* K: (R_k,IC) */,
                                       const float *const *bm /* K: (OC,R_k) */, const float *scale /* (K) */,
                                       const int64_t *rank /* (K) */, const int64_t *idx /* (N) in [-1, K) */,
                                       int64_t N, int64_t IC, int64_t OC, int64_t K, int64_t RM);

/* ==== adapters beyond LoRA: SoRA, Hydra, Bone / MiSS, Bat (sora.c, hydra.c, bone.c) ==============
 * Each wraps one linear layer, w (OC,IC) and b (OC) or NULL, with a trainable low-rank or block
 * update: forward, backward (the frozen weight gets no gradient), and merge into w and unmerge (SoRA
 * through peftc_lora_merge), so a merged layer runs as a plain linear one. Extra dimension letters:
 *   RP  parallel rank, RS  sequential rank (Hydra)
 *   MR  columns of the Bone block: OC for Bone / MiSS "balance", mini_r for MiSS "mini" (OC % MR == 0)
 *   NB  output row-blocks of Bat: OC / R (Bat needs IC % R == 0 and OC % R == 0) */

/* ---- SoRA (sora.c): LoRA with a gate vector g between A and B --------------------------------
 *   y = x w^T + b + s * dropout(x) a^T diag(g) bm^T
 * The forward and backward fold g into a copy of bm held in the caller's scratch and run the LoRA
 * kernels on it, so the GEMM structure is lora.c's. The backward returns the gate gradient
 * dg_i = sum_o dbg[o,i] bm[o,i] (dbg the gradient of the folded matrix); an L1 term is the caller's. */
int64_t peftc_sora_forward_workspace_size(int64_t OC, int64_t R); /* floats */
peftc_status peftc_sora_forward(float *y /* (N,OC) overwritten */,
                                float *xd /* (N,IC) overwritten: dropped adapter input; NULL iff p == 0 */,
                                float *u /* (N,R) overwritten: xd a^T (before the gate), kept for backward */,
                                float *work /* peftc_sora_forward_workspace_size() floats */,
                                const float *x /* (N,IC) */, const float *w /* (OC,IC) or NULL */,
                                const float *b /* (OC) or NULL */, const float *a /* (R,IC) */,
                                const float *bm /* (OC,R) */, const float *g /* (R) */, float scale, float p,
                                uint64_t seed, uint64_t offset, int64_t N, int64_t IC, int64_t OC, int64_t R);
int64_t peftc_sora_backward_workspace_size(int64_t N, int64_t IC, int64_t OC, int64_t R, float p); /* floats */
peftc_status peftc_sora_backward(float *dx /* (N,IC) accumulated, or NULL */,
                                 float *da /* (R,IC) accumulated, or NULL */,
                                 float *dbm /* (OC,R) accumulated, or NULL */, float *dg /* (R) accumulated, or NULL */,
                                 float *work /* peftc_sora_backward_workspace_size() floats */,
                                 const float *dy /* (N,OC) */, const float *xin /* (N,IC): xd if p > 0, else x */,
                                 const float *u /* (N,R) from the forward */, const float *w /* (OC,IC) or NULL */,
                                 const float *a /* (R,IC) */, const float *bm /* (OC,R) */, const float *g /* (R) */,
                                 float scale, float p, uint64_t seed, uint64_t offset, int64_t N, int64_t IC,
                                 int64_t OC, int64_t R);
/* The proximal step on the gates after an optimizer step, with threshold tau >= 0.
 * compat == 0: the soft threshold of the SoRA paper, g <- sign(g) max(|g| - tau, 0).
 * compat != 0: the official code's three successive masked writes (g > tau: g -= tau; then
 *   g < -tau: g += tau; then |g| < tau: g = 0), which zeroes every |g| < 2 tau except |g| == tau.
 * NaN stays NaN in both. */
peftc_status peftc_sora_gate_threshold(float *g /* (P) updated */, float tau, int compat, int64_t P);

/* ---- Hydra (hydra.c): a parallel and a sequential low-rank branch on one frozen linear layer ---
 *   y0 = x w^T + b,   y = y0 + sp * (x ap^T) bp^T + ss * (y0 as^T) bs^T
 * No dropout. The sequential branch reads the base output including the bias. */
peftc_status peftc_hydra_forward(float *y /* (N,OC) overwritten */,
                                 float *y0 /* (N,OC) overwritten: base output, kept for backward */,
                                 float *pp /* (N,RP) overwritten: x ap^T, kept for backward */,
                                 float *q /* (N,RS) overwritten: y0 as^T, kept for backward */,
                                 const float *x /* (N,IC) */, const float *w /* (OC,IC) */,
                                 const float *b /* (OC) or NULL */, const float *ap /* (RP,IC) */,
                                 const float *bp /* (OC,RP) */, const float *as /* (RS,OC) */,
                                 const float *bs /* (OC,RS) */, float sp, float ss, int64_t N, int64_t IC, int64_t OC,
                                 int64_t RP, int64_t RS);
int64_t peftc_hydra_backward_workspace_size(int64_t N, int64_t OC, int64_t RP, int64_t RS); /* floats */
peftc_status peftc_hydra_backward(
    float *dx /* (N,IC) accumulated, or NULL */, float *dap /* (RP,IC) accumulated, or NULL */,
    float *dbp /* (OC,RP) accumulated, or NULL */, float *das /* (RS,OC) accumulated, or NULL */,
    float *dbs /* (OC,RS) accumulated, or NULL */, float *work /* peftc_hydra_backward_workspace_size() floats */,
    const float *dy /* (N,OC) */, const float *x /* (N,IC) */, const float *y0 /* (N,OC) */,
    const float *pp /* (N,RP) */, const float *q /* (N,RS) */, const float *w /* (OC,IC) */,
    const float *ap /* (RP,IC) */, const float *bp /* (OC,RP) */, const float *as /* (RS,OC) */,
    const float *bs /* (OC,RS) */, float sp, float ss, int64_t N, int64_t IC, int64_t OC, int64_t RP, int64_t RS);
/* sign = +1 (merge): w <- (I + ss bs as) w + sp bp ap, b <- (I + ss bs as) b.
 * sign = -1 (unmerge, the inverse): w <- (I + ss bs as)^-1 (w - sp bp ap), b <- (I + ss bs as)^-1 b,
 * through the Woodbury identity so only the (RS,RS) matrix I + ss as bs is solved (Gaussian
 * elimination with partial pivoting); PEFTC_ERR_ARG if it is singular. */
int64_t peftc_hydra_merge_workspace_size(int64_t IC, int64_t RS); /* floats */
peftc_status peftc_hydra_merge(float *w /* (OC,IC) updated */, float *b /* (OC) updated, or NULL */,
                               float *work /* peftc_hydra_merge_workspace_size() floats */,
                               const float *ap /* (RP,IC) */, const float *bp /* (OC,RP) */,
                               const float *as /* (RS,OC) */, const float *bs /* (OC,RS) */, float sp, float ss,
                               float sign, int64_t IC, int64_t OC, int64_t RP, int64_t RS);

/* ---- Bone / MiSS and Bat (bone.c) ----------------------------------------------------------------
 * Bone: y = x w^T + b + s D,  s[n, j] = sum_k dropout(x)[n, k R + j] (zero-padded last shard),
 *   D[j, o] = d[j, o mod MR]. Bat: w' = w + blockwise (w_{i,k} t_i + t_i), y = x w'^T + b. */
peftc_status peftc_bone_forward(float *y /* (N,OC) overwritten */,
                                float *s /* (N,R) overwritten: shard sums, kept for backward */,
                                float *xd /* (N,IC) overwritten: dropped adapter input; NULL iff p == 0 */,
                                const float *x /* (N,IC) */, const float *w /* (OC,IC) */,
                                const float *b /* (OC) or NULL */, const float *d /* (R,MR) */, float p, uint64_t seed,
                                uint64_t offset, int64_t N, int64_t IC, int64_t OC, int64_t R, int64_t MR);
int64_t peftc_bone_backward_workspace_size(int64_t N, int64_t IC, int64_t R, float p); /* floats */
peftc_status peftc_bone_backward(float *dx /* (N,IC) accumulated, or NULL */,
                                 float *dd /* (R,MR) accumulated, or NULL */,
                                 float *work /* peftc_bone_backward_workspace_size() floats */,
                                 const float *dy /* (N,OC) */, const float *s /* (N,R) from the forward */,
                                 const float *w /* (OC,IC) */, const float *d /* (R,MR) */, float p, uint64_t seed,
                                 uint64_t offset, int64_t N, int64_t IC, int64_t OC, int64_t R, int64_t MR);
/* w[o, c] += sign * d[c mod R, o mod MR]; sign is +1 (merge) or -1 (unmerge) */
peftc_status peftc_bone_merge(float *w /* (OC,IC) updated */, const float *d /* (R,MR) */, float sign, int64_t IC,
                              int64_t OC, int64_t R, int64_t MR);
/* weff = w + blockwise (w_{i,k} t_i + t_i); weff and w must not overlap */
peftc_status peftc_bat_weight(float *weff /* (OC,IC) overwritten */, const float *w /* (OC,IC) */,
                              const float *t /* (NB,R,R) */, int64_t IC, int64_t OC, int64_t R);
peftc_status peftc_bat_forward(float *y /* (N,OC) overwritten */,
                               float *weff /* (OC,IC) overwritten: scratch for the effective weight */,
                               const float *x /* (N,IC) */, const float *w /* (OC,IC) */,
                               const float *b /* (OC) or NULL */, const float *t /* (NB,R,R) */, int64_t N, int64_t IC,
                               int64_t OC, int64_t R);
int64_t peftc_bat_backward_workspace_size(int64_t IC, int64_t OC); /* floats */
peftc_status peftc_bat_backward(float *dx /* (N,IC) accumulated, or NULL */,
                                float *dt /* (NB,R,R) accumulated, or NULL */,
                                float *work /* peftc_bat_backward_workspace_size() floats */,
                                const float *dy /* (N,OC) */, const float *x /* (N,IC) */, const float *w /* (OC,IC) */,
                                const float *t /* (NB,R,R) */, int64_t N, int64_t IC, int64_t OC, int64_t R);
int64_t peftc_bat_merge_workspace_size(int64_t IC, int64_t R); /* floats */
/* w <- w + blockwise (w_{i,k} t_i + t_i), in place */
peftc_status peftc_bat_merge(float *w /* (OC,IC) updated */, float *work /* peftc_bat_merge_workspace_size() */,
                             const float *t /* (NB,R,R) */, int64_t IC, int64_t OC, int64_t R);
/* w_{i,k} <- (w_{i,k} - t_i) tinv_i with tinv_i = (I + t_i)^{-1}: the inverse of peftc_bat_merge */
peftc_status peftc_bat_unmerge(float *w /* (OC,IC) updated */,
                               float *work /* peftc_bat_merge_workspace_size() floats */, const float *t /* (NB,R,R) */,
                               const float *tinv /* (NB,R,R) */, int64_t IC, int64_t OC, int64_t R);

/* ==== transformer encoder ops (embedding.c, layernorm.c, gelu.c, attention.c, sentence_mean.c) ====
 * The layers of a BERT-style encoder (and of a GPT-2-style decoder) other than its linear layers:
 * tokens laid out (B,T,H), or (N,H) with N = B*T rows where a kernel does not care about sequences.
 * Token ids are int64; a 0 in a key mask (attention_mask) means padding. Extra dimension letters: V vocabulary size, NP
 * position-table rows, NT token-type rows, S sequences packed back to back. */

/* ---- embedding sum (embedding.c): out[b,t] = wte[ids[b,t]] + wpe[t] + wtt[types[b,t]] ------ */
/* Ids outside their table give PEFTC_ERR_LABEL before anything is written; NULL types = all 0;
 * positions are 0..T-1, so T <= NP. */
peftc_status peftc_embedding_forward(float *out /* (B,T,H) overwritten */, const int64_t *ids /* (B,T) */,
                                     const int64_t *types /* (B,T) or NULL */, const float *wte /* (V,H) */,
                                     const float *wpe /* (NP,H) */, const float *wtt /* (NT,H) */, int64_t B, int64_t T,
                                     int64_t H, int64_t V, int64_t NP, int64_t NT);
/* scatter-add of dout into the rows each token read; any gradient table may be NULL. Tokens whose id
 * is padding_idx add nothing to dwte (torch's nn.Embedding padding_idx); -1 means no such id. */
peftc_status peftc_embedding_backward(float *dwte /* (V,H) accumulated, or NULL */,
                                      float *dwpe /* (NP,H) accumulated, or NULL */,
                                      float *dwtt /* (NT,H) accumulated, or NULL */, const float *dout /* (B,T,H) */,
                                      const int64_t *ids /* (B,T) */, const int64_t *types /* (B,T) or NULL */,
                                      int64_t padding_idx, int64_t B, int64_t T, int64_t H, int64_t V, int64_t NP,
                                      int64_t NT);

/* ---- LayerNorm over the last axis (layernorm.c): out = (x - mean) * rstd * w + b ---------------
 * Rows are split over the threads, except in a backward that accumulates dw or db (a sum over all
 * rows), which stays on one thread. */
peftc_status peftc_layernorm_forward(float *out /* (N,H) overwritten */, float *mean /* (N) overwritten */,
                                     float *rstd /* (N) overwritten */, const float *x /* (N,H) */,
                                     const float *w /* (H) */, const float *b /* (H) */, float eps, int64_t N,
                                     int64_t H);
peftc_status peftc_layernorm_backward(float *dx /* (N,H) accumulated, or NULL */,
                                      float *dw /* (H) accumulated, or NULL */,
                                      float *db /* (H) accumulated, or NULL */, const float *dout /* (N,H) */,
                                      const float *x /* (N,H) */, const float *w /* (H) */, const float *mean /* (N) */,
                                      const float *rstd /* (N) */, int64_t N, int64_t H);
/* out = LayerNorm(x + residual) with x overwritten by x + residual, the input of the backward
 * (peftc_layernorm_backward takes it as x): the post-LN block's residual add without a pass of its
 * own. */
peftc_status peftc_layernorm_residual_forward(float *out /* (N,H) overwritten */, float *mean /* (N) overwritten */,
                                              float *rstd /* (N) overwritten */,
                                              float *x /* (N,H) read, then overwritten with x + residual */,
                                              const float *residual /* (N,H) */, const float *w /* (H) */,
                                              const float *b /* (H) */, float eps, int64_t N, int64_t H);

/* ---- GELU, exact erf form (gelu.c): out = x * (1 + erf(x / sqrt 2)) / 2 ----------------------
 * Split over the threads. */
peftc_status peftc_gelu_forward(float *out /* (P) overwritten */, const float *x /* (P) */, int64_t P);
peftc_status peftc_gelu_backward(float *dx /* (P) accumulated */, const float *dout /* (P) */, const float *x /* (P) */,
                                 int64_t P);
/* ---- GELU, tanh approximation (gelu.c): out = x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2 ----
 * GPT-2's activation (Hugging Face "gelu_new", torch approximate="tanh"). Split over the threads. */
peftc_status peftc_gelu_tanh_forward(float *out /* (P) overwritten */, const float *x /* (P) */, int64_t P);
peftc_status peftc_gelu_tanh_backward(float *dx /* (P) accumulated */, const float *dout /* (P) */,
                                      const float *x /* (P) */, int64_t P);

/* ---- multi-head self-attention core (attention.c) ---------------------------------------------
 * For each batch b and head h (columns h*HS .. h*HS+HS-1 of q, k, v):
 *   att = softmax(q_h k_h^T / sqrt(HS), keys with mask 0 and, if causal, keys after the query
 *         excluded), out_h = dropout_p(att) v_h.
 * Excluded keys get probability exactly 0; a query row with no visible key gets all-zero
 * probabilities (and a zero output) instead of NaN. The dropout mask of element (b,h,i,j) is
 * uniform(seed, offset + ((b*NH + h)*T + i)*T + j) >= p, regenerated in the backward. The (batch, head)
 * pairs are split over the threads, and the workspaces hold their (T,T) scratch once per thread. */
int64_t peftc_attention_forward_workspace_size(int64_t T, float p); /* floats */
peftc_status peftc_attention_forward(float *out /* (B,T,H) overwritten */,
                                     float *att /* (B,NH,T,T) overwritten: probabilities before dropout */,
                                     float *work /* peftc_attention_forward_workspace_size() floats */,
                                     const float *q /* (B,T,H) */, const float *k /* (B,T,H) */,
                                     const float *v /* (B,T,H) */, const int64_t *mask /* (B,T) or NULL */, int causal,
                                     float p, uint64_t seed, uint64_t offset, int64_t B, int64_t T, int64_t H,
                                     int64_t NH);
int64_t peftc_attention_backward_workspace_size(int64_t T, float p); /* floats */
peftc_status peftc_attention_backward(float *dq /* (B,T,H) accumulated, or NULL */,
                                      float *dk /* (B,T,H) accumulated, or NULL */,
                                      float *dv /* (B,T,H) accumulated, or NULL */,
                                      float *work /* peftc_attention_backward_workspace_size() floats */,
                                      const float *dout /* (B,T,H) */, const float *q /* (B,T,H) */,
                                      const float *k /* (B,T,H) */, const float *v /* (B,T,H) */,
                                      const float *att /* (B,NH,T,T) from the forward */, float p, uint64_t seed,
                                      uint64_t offset, int64_t B, int64_t T, int64_t H, int64_t NH);

/* ---- packed-sequence attention (attention.c) -----------------------------------------------------
 * Self-attention of S sequences stored back to back as N = offsets[S] rows (a padded batch without its
 * padding): sequence s is rows offsets[s] .. offsets[s+1]-1 of q, k, v (N,H) and attends among those
 * rows alone (no mask). Each sequence's output equals peftc_attention_forward on it as a (1,T,H) batch,
 * bit for bit, for any thread count; the (sequence, head) pairs are split over the threads. offsets
 * must start at 0, not decrease and end at N (else PEFTC_ERR_ARG). The workspaces are queried with
 * T = the longest sequence.
 * Training keeps the probabilities in att, NA = NH * (sum over s of T_s^2) floats: pair (s, h) is the
 * row-major (T_s,T_s) block at NH * (T_0^2 + .. + T_{s-1}^2) + h T_s^2 (att NULL: inference, nothing
 * kept, p must be 0). Dropout draws what peftc_attention_forward draws for the padded batch the
 * sequences came from, of width T with sequence s in row s at positions starts[s] .. (starts NULL:
 * at 0): element (s,h,i,j) is kept when uniform(seed, offset + ((s*NH + h)*T + starts[s] + i)*T +
 * starts[s] + j) >= p, so a packed step drops what the padded step drops (p > 0 needs
 * starts[s] + T_s <= T). */
int64_t peftc_attention_packed_forward_workspace_size(int64_t T); /* floats */
peftc_status peftc_attention_packed_forward(float *out /* (N,H) overwritten */,
                                            float *att /* (NA) overwritten: probabilities before dropout, or NULL */,
                                            float *work /* peftc_attention_packed_forward_workspace_size() floats */,
                                            const float *q /* (N,H) */, const float *k /* (N,H) */,
                                            const float *v /* (N,H) */, const int64_t *offsets /* (S+1) */,
                                            const int64_t *starts /* (S) or NULL */, float p, uint64_t seed,
                                            uint64_t offset, int64_t S, int64_t N, int64_t T, int64_t H, int64_t NH);
int64_t peftc_attention_packed_backward_workspace_size(int64_t T, float p); /* floats */
peftc_status peftc_attention_packed_backward(float *dq /* (N,H) accumulated, or NULL */,
                                             float *dk /* (N,H) accumulated, or NULL */,
                                             float *dv /* (N,H) accumulated, or NULL */,
                                             float *work /* peftc_attention_packed_backward_workspace_size() floats */,
                                             const float *dout /* (N,H) */, const float *q /* (N,H) */,
                                             const float *k /* (N,H) */, const float *v /* (N,H) */,
                                             const float *att /* (NA) from the forward */,
                                             const int64_t *offsets /* (S+1) */,
                                             const int64_t *starts /* (S) or NULL */, float p, uint64_t seed,
                                             uint64_t offset, int64_t S, int64_t N, int64_t T, int64_t H, int64_t NH);

/* ---- causal attention against a KV cache (attention.c): the decoder's inference step ----------------
 * TQ new queries per sequence attend to the first TK rows of a key / value cache of TC rows, which
 * already holds the new tokens' own keys and values in rows TK-TQ .. TK-1 (the caller writes them):
 * query i sits at position TK-TQ+i and sees keys 0 .. TK-TQ+i, softmax(q_h k_h^T / sqrt(HS)) v_h as
 * peftc_attention_forward with causal = 1 computes it for the whole sequence. No mask, no dropout, no
 * probabilities kept. Needs TQ <= TK <= TC; the (batch, head) pairs are split over the threads, or with
 * at most 4 new queries (decoding) the sequences, each read row by row of its cache for all heads at once. */
int64_t peftc_attention_cached_forward_workspace_size(int64_t TQ, int64_t TK, int64_t NH); /* floats */
peftc_status peftc_attention_cached_forward(float *out /* (B,TQ,H) overwritten */,
                                            float *work /* peftc_attention_cached_forward_workspace_size() floats */,
                                            const float *q /* (B,TQ,H) */, const float *kc /* (B,TC,H) */,
                                            const float *vc /* (B,TC,H) */, int64_t B, int64_t TQ, int64_t TK,
                                            int64_t TC, int64_t H, int64_t NH);

/* ---- sentence-embedding head (sentence_mean.c): mean over the kept tokens, L2 normalisation ------ */
/* out[b] = sum_t mask[b,t] x[b,t] / max(sum_t mask[b,t], 1) with mask values 0/1 (NULL: all 1);
 * a sequence with no kept token pools to zero. */
peftc_status peftc_mean_pool_forward(float *out /* (B,H) overwritten */, const float *x /* (B,T,H) */,
                                     const int64_t *mask /* (B,T) or NULL */, int64_t B, int64_t T, int64_t H);
peftc_status peftc_mean_pool_backward(float *dx /* (B,T,H) accumulated */, const float *dout /* (B,H) */,
                                      const int64_t *mask /* (B,T) or NULL */, int64_t B, int64_t T, int64_t H);
/* out = x / max(||x||_2, eps) per row (torch.nn.functional.normalize); norm keeps ||x||_2 */
peftc_status peftc_l2_normalize_forward(float *out /* (N,H) overwritten */, float *norm /* (N) overwritten */,
                                        const float *x /* (N,H) */, float eps, int64_t N, int64_t H);
peftc_status peftc_l2_normalize_backward(float *dx /* (N,H) accumulated */, const float *dout /* (N,H) */,
                                         const float *out /* (N,H) from the forward */, const float *norm /* (N) */,
                                         float eps, int64_t N, int64_t H);

/* ==== CNN ops (conv.c, batchnorm.c, pool.c, activation.c) ========================================
 * The layers of a batch-norm CNN. Images are NCHW float32. Extra dimension letters:
 *   CH  channels (batch norm, pooling)   IH IW  input height, width   OH OW  output height, width
 *   KH KW  kernel (window) height, width   SH SW  strides   PH PW  zero padding on each side
 * Output sizes follow torch (floor mode): OH = (IH + 2 PH - KH) / SH + 1, likewise OW. */

/* ---- conv2d (conv.c): y = w * x + b -------------------------------------------------------------
 * Dilation 1, one group. 3x3 stride-1 sweeps (padding <= 2, at least 8 channels each side) run the
 * forward and the input gradient by Winograd F(4x4, 3x3) (F(2x2, 3x3) for small planes; within a few
 * 1e-6 of sum |x| |w|, see winograd.h); other forwards, and the input gradients of strided sweeps, by
 * products over shifted views of zero-bordered copies of the images (or of dy), without a patch
 * matrix; the rest, and every weight gradient, by im2col and one GEMM per block of images. The forward
 * and the input gradient split the blocks over the threads. The scratch holds one block's tiles,
 * copies or patch matrix per thread and is shared by forward and backward; its size is -1 for sizes a
 * convolution rejects or that overflow. */
int64_t peftc_conv2d_workspace_size(int64_t N, int64_t IC, int64_t IH, int64_t IW, int64_t OC, int64_t KH, int64_t KW,
                                    int64_t SH, int64_t SW, int64_t PH, int64_t PW); /* floats */
peftc_status peftc_conv2d_forward(float *y /* (N,OC,OH,OW) overwritten */,
                                  float *work /* peftc_conv2d_workspace_size() floats */,
                                  const float *x /* (N,IC,IH,IW) */, const float *w /* (OC,IC,KH,KW) */,
                                  const float *b /* (OC) or NULL */, int64_t N, int64_t IC, int64_t IH, int64_t IW,
                                  int64_t OC, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW);
/* overwrite_dx != 0: dx is overwritten rather than accumulated (a fresh buffer needs no zeroing first);
 * dw and db always accumulate. */
peftc_status peftc_conv2d_backward(float *dx /* (N,IC,IH,IW) accumulated (or overwritten), or NULL */,
                                   float *dw /* (OC,IC,KH,KW) accumulated, or NULL */,
                                   float *db /* (OC) accumulated, or NULL */,
                                   float *work /* peftc_conv2d_workspace_size() floats */,
                                   const float *dy /* (N,OC,OH,OW) */,
                                   const float *x /* (N,IC,IH,IW), may be NULL when dw is NULL */,
                                   const float *w /* (OC,IC,KH,KW) */, int overwrite_dx, int64_t N, int64_t IC,
                                   int64_t IH, int64_t IW, int64_t OC, int64_t KH, int64_t KW, int64_t SH, int64_t SW,
                                   int64_t PH, int64_t PW);

/* ---- batch norm over (N, H, W) per channel (batchnorm.c), torch.nn.functional.batch_norm's math --
 * training != 0: normalise with the batch statistics (biased variance); if running_mean and
 *   running_var are given, also update them: r = (1 - momentum) r + momentum * batch statistic, the
 *   variance term unbiased (m / (m - 1), m = N*IH*IW; needs m > 1). Passing NULL running buffers
 *   gives the test-batch statistics of BN-adapt / TENT with nothing updated.
 * training == 0: normalise with the running statistics (both required, read only).
 * mean and rstd receive the statistics actually used; the backward needs them and x. scale and shift
 * (both or neither) receive each channel's float map, y = (x - mean) scale + shift; with y NULL only the
 * statistics and the map are computed (a norm whose output a later kernel applies itself).
 *
 * Every peftc_batchnorm2d_* kernel splits its channels into contiguous ranges over the threads, each
 * channel computed whole by one thread in one fixed order. Tensors under about 32k values per thread
 * stay on one thread. */
peftc_status peftc_batchnorm2d_forward(float *y /* (N,CH,IH,IW) overwritten, or NULL */,
                                       float *mean /* (CH) overwritten */, float *rstd /* (CH) overwritten */,
                                       float *scale /* (CH) overwritten, or NULL */,
                                       float *shift /* (CH) overwritten, or NULL */,
                                       float *running_mean /* (CH) updated, read, or NULL */,
                                       float *running_var /* (CH) updated, read, or NULL */,
                                       const float *x /* (N,CH,IH,IW) */, const float *gamma /* (CH) or NULL */,
                                       const float *beta /* (CH) or NULL */, int training, float momentum, float eps,
                                       int64_t N, int64_t CH, int64_t IH, int64_t IW);
/* training says whether the forward used batch statistics (then the gradient flows through them);
 * overwrite_dx != 0 overwrites dx instead of adding to it (dgamma, dbeta always accumulate). */
peftc_status peftc_batchnorm2d_backward(float *dx /* (N,CH,IH,IW) accumulated (or overwritten), or NULL */,
                                        float *dgamma /* (CH) accumulated, or NULL */,
                                        float *dbeta /* (CH) accumulated, or NULL */,
                                        const float *dy /* (N,CH,IH,IW) */, const float *x /* (N,CH,IH,IW) */,
                                        const float *mean /* (CH) */, const float *rstd /* (CH) */,
                                        const float *gamma /* (CH) or NULL */, int training, int overwrite_dx,
                                        int64_t N, int64_t CH, int64_t IH, int64_t IW);

/* ---- batch norm fused with the ReLU that follows it (batchnorm.c) ---------------------------------
 * relu(batchnorm2d(x)) in one pass, with the statistics, modes and argument rules of
 * peftc_batchnorm2d_forward; y receives max(bn(x), 0), and scale, shift (both or neither) each
 * channel's float map, y = max((x - mean) scale + shift, 0). The backward masks dy to y > 0 before
 * the batch-norm backward (the ReLU backward fused), same accumulation rules; it takes either that y,
 * or (y NULL) the map, from which it rebuilds the same mask bit for bit without reading y. */
peftc_status peftc_batchnorm2d_relu_forward(
    float *y /* (N,CH,IH,IW) overwritten */, float *mean /* (CH) overwritten */, float *rstd /* (CH) overwritten */,
    float *scale /* (CH) overwritten, or NULL */, float *shift /* (CH) overwritten, or NULL */,
    float *running_mean /* (CH) updated, read, or NULL */, float *running_var /* (CH) updated, read, or NULL */,
    const float *x /* (N,CH,IH,IW) */, const float *gamma /* (CH) or NULL */, const float *beta /* (CH) or NULL */,
    int training, float momentum, float eps, int64_t N, int64_t CH, int64_t IH, int64_t IW);
peftc_status peftc_batchnorm2d_relu_backward(float *dx /* (N,CH,IH,IW) accumulated (or overwritten), or NULL */,
                                             float *dgamma /* (CH) accumulated, or NULL */,
                                             float *dbeta /* (CH) accumulated, or NULL */,
                                             const float *dy /* (N,CH,IH,IW): gradient of the ReLU output */,
                                             const float *y /* (N,CH,IH,IW): the forward's output, or NULL */,
                                             const float *scale /* (CH): the forward's map, when y is NULL */,
                                             const float *shift /* (CH), likewise */, const float *x /* (N,CH,IH,IW) */,
                                             const float *mean /* (CH) */, const float *rstd /* (CH) */,
                                             const float *gamma /* (CH) or NULL */, int training, int overwrite_dx,
                                             int64_t N, int64_t CH, int64_t IH, int64_t IW);
/* The residual block's output relu(bn(x) + r) in the norm's pass, without writing bn(x): r = res, or,
 * with res_scale, another norm's output applied on the fly, (res - res_mean) res_scale + res_shift with
 * that norm's float map (peftc_batchnorm2d_forward with y NULL gives it). The same bits as the norm(s),
 * their sum and peftc_relu_forward one after the other; the statistics, modes and rules of
 * peftc_batchnorm2d_forward. The backward is the norms' with y as relu_y. */
peftc_status peftc_batchnorm2d_add_relu_forward(
    float *y /* (N,CH,IH,IW) overwritten */, float *mean /* (CH) overwritten */, float *rstd /* (CH) overwritten */,
    float *running_mean /* (CH) updated, read, or NULL */, float *running_var /* (CH) updated, read, or NULL */,
    const float *x /* (N,CH,IH,IW) */, const float *gamma /* (CH) or NULL */, const float *beta /* (CH) or NULL */,
    int training, float momentum, float eps, const float *res /* (N,CH,IH,IW) */,
    const float *res_mean /* (CH) or NULL */, const float *res_scale /* (CH) or NULL */,
    const float *res_shift /* (CH) or NULL */, int64_t N, int64_t CH, int64_t IH, int64_t IW);

/* ---- pooling (pool.c) ------------------------------------------------------------------------------
 * Max pooling pads with -inf and records, per output, the flat index ih*IW + iw of its input in the
 * (IH,IW) plane (the first maximum wins; NaN propagates). Average pooling pads with zeros and divides
 * by KH*KW (torch's count_include_pad=True). Padding must be at most half the window. */
peftc_status peftc_maxpool2d_forward(float *y /* (N,CH,OH,OW) overwritten */,
                                     int64_t *argmax /* (N,CH,OH,OW) overwritten */, const float *x /* (N,CH,IH,IW) */,
                                     int64_t N, int64_t CH, int64_t IH, int64_t IW, int64_t KH, int64_t KW, int64_t SH,
                                     int64_t SW, int64_t PH, int64_t PW);
peftc_status peftc_maxpool2d_backward(float *dx /* (N,CH,IH,IW) accumulated */, const float *dy /* (N,CH,OH,OW) */,
                                      const int64_t *argmax /* (N,CH,OH,OW) from the forward */, int64_t N, int64_t CH,
                                      int64_t IH, int64_t IW, int64_t OH, int64_t OW);
peftc_status peftc_avgpool2d_forward(float *y /* (N,CH,OH,OW) overwritten */, const float *x /* (N,CH,IH,IW) */,
                                     int64_t N, int64_t CH, int64_t IH, int64_t IW, int64_t KH, int64_t KW, int64_t SH,
                                     int64_t SW, int64_t PH, int64_t PW);
peftc_status peftc_avgpool2d_backward(float *dx /* (N,CH,IH,IW) accumulated */, const float *dy /* (N,CH,OH,OW) */,
                                      int64_t N, int64_t CH, int64_t IH, int64_t IW, int64_t KH, int64_t KW, int64_t SH,
                                      int64_t SW, int64_t PH, int64_t PW);
/* global average pooling: y[n, c] = mean over the (IH,IW) plane */
peftc_status peftc_global_avgpool2d_forward(float *y /* (N,CH) overwritten */, const float *x /* (N,CH,IH,IW) */,
                                            int64_t N, int64_t CH, int64_t IH, int64_t IW);
peftc_status peftc_global_avgpool2d_backward(float *dx /* (N,CH,IH,IW) accumulated */, const float *dy /* (N,CH) */,
                                             int64_t N, int64_t CH, int64_t IH, int64_t IW);

/* ---- ReLU (activation.c): y = max(x, 0), NaN passes through ----------------------------------------
 * Split over the threads. */
peftc_status peftc_relu_forward(float *y /* (P) overwritten; may be x itself */, const float *x /* (P) */, int64_t P);
/* dx += dy where the forward input (or, equivalently, its output) is > 0 */
peftc_status peftc_relu_backward(float *dx /* (P) accumulated */, const float *dy /* (P) */,
                                 const float *x /* (P) forward input or output */, int64_t P);

/* ==== test-time adaptation (tta.c): softmax entropy, EATA sample selection =======================
 * The per-sample math that TENT, EATA, SAR and the open-set filter share: each minimises a weighted
 * mean of the softmax entropy of the logits (N,C); EATA's selection gives the weights. The backward
 * through the network is the caller's. The supervised loss on the same logits, cross-entropy, sits with
 * the optimizers (the training step), not here.
 * Entropy per row H_n = -sum_k p_nk log p_nk of p = softmax(logits). */
peftc_status peftc_softmax_entropy_forward(float *ent /* (N) overwritten */, float *probs /* (N,C) overwritten */,
                                           const float *logits /* (N,C) */, int64_t N, int64_t C);
/* dlogits[n] += dent[n] * dH_n/dlogits[n]; rows with dent[n] == 0 are skipped */
peftc_status peftc_softmax_entropy_backward(float *dlogits /* (N,C) accumulated */, const float *dent /* (N) */,
                                            const float *probs /* (N,C) from the forward */,
                                            const float *logits /* (N,C) */, int64_t N, int64_t C);
/* EATA: row n is selected when H_n < e0 (reliable) and, once the moving average exists,
 * |cos(ema, p_n)| < d_margin (not redundant). weight[n] = exp(e0 - H_n) if selected, else 0.
 * ema is set to the mean of the selected p_n on the first batch with a selection
 * (*ema_set 0 -> 1), else ema = momentum * ema + (1 - momentum) * mean; unchanged when none is
 * selected. counts = {reliable, selected}. */
peftc_status peftc_eata_select(float *weight /* (N) overwritten */, int64_t *counts /* (2) overwritten */,
                               float *ema /* (C) read and updated */, int64_t *ema_set /* (1) read and updated */,
                               const float *ent /* (N) */, const float *probs /* (N,C) */, float e0, float d_margin,
                               float momentum, int64_t N, int64_t C);

/* ==== few-shot class-incremental learning (fscil.c): representation losses of base training ========
 * Both read unit rows (the caller L2-normalises with peftc_l2_normalize_forward and chains its backward).
 * Extra dimension letter for this section: K  pre-assigned prototypes (classes, including future ones).
 *
 * SupCon (Khosla et al. 2020): s_ij = z_i . z_j / temperature; for every anchor i (a row with at least one
 * other row of its label, P(i) those rows) l_i = -1/|P(i)| sum_{p in P(i)} log softmax_{j != i}(s_ij)_p;
 * loss = mean of l_i over the anchors (0 and anchors = 0 when there is none). probs row i holds the
 * softmax over j != i (probs_ii = 0), kept for the backward. Labels are any int64 (a SimCSE-style
 * unsupervised pair passes the row's pair index). */
peftc_status peftc_supcon_forward(float *loss /* (1) overwritten */, int64_t *anchors /* (1) overwritten */,
                                  float *probs /* (N,N) overwritten */, const float *z /* (N,H) unit rows */,
                                  const int64_t *labels /* (N) */, float temperature, int64_t N, int64_t H);
/* dz += dloss * dloss/dz; work is (N,N) scratch */
peftc_status peftc_supcon_backward(float *dz /* (N,H) accumulated */, float *work /* (N,N) scratch */, float dloss,
                                   const float *probs /* (N,N) from the forward */, const float *z /* (N,H) */,
                                   const int64_t *labels /* (N) */, float temperature, int64_t N, int64_t H);
/* Dot-regression alignment to fixed prototypes (NC-FSCIL's loss for ETF targets): over the rows whose
 * label is not ignore_index, loss = mean (feat_n . targets[label_n] - 1)^2 / 2; dots[n] keeps the dot
 * (0 for ignored rows). A label outside [0, K) that is not ignore_index is PEFTC_ERR_LABEL. */
peftc_status peftc_etf_align_forward(float *loss /* (1) overwritten */, int64_t *count /* (1) overwritten */,
                                     float *dots /* (N) overwritten */, const float *feat /* (N,H) unit rows */,
                                     const float *targets /* (K,H) */, const int64_t *labels /* (N) */,
                                     int64_t ignore_index, int64_t N, int64_t H, int64_t K);
/* dfeat[n] += dloss * (dots[n] - 1) * targets[label_n] / count */
peftc_status peftc_etf_align_backward(float *dfeat /* (N,H) accumulated */, float dloss,
                                      const float *dots /* (N) from the forward */, const float *targets /* (K,H) */,
                                      const int64_t *labels /* (N) */, int64_t ignore_index, int64_t N, int64_t H,
                                      int64_t K);

/* ==== data-free knowledge distillation losses (distill.c) ========================================
 * The losses that train a student without the teacher's data (DAFL, DeepInversion, noise-perturbed
 * pseudo-samples). Each forward writes one scalar loss; each backward adds dloss times its gradient
 * into the buffer(s) given. DAFL's one-hot term is peftc_cross_entropy_forward against the teacher's
 * argmax; the networks' backward passes are the caller's. */

/* ---- KD divergence (Hinton et al.): loss = tau^2 / N sum_n KL(pt_n || ps_n), "batchmean" ------------
 * ps = softmax(zs / tau) (student), pt = softmax(zt / tau) (teacher), kept for the backward; a row whose
 * KL rounds below 0 counts as 0. torch: tau^2 * F.kl_div(log_softmax(zs/tau), softmax(zt/tau),
 * reduction="batchmean"). NaN or Inf in a logit gives PEFTC_ERR_NONFINITE; tau must be > 0. */
peftc_status peftc_kd_kl_forward(float *loss /* (1) overwritten */, float *ps /* (N,C) overwritten */,
                                 float *pt /* (N,C) overwritten */, const float *zs /* (N,C) student logits */,
                                 const float *zt /* (N,C) teacher logits */, float tau, int64_t N, int64_t C);
/* dzs += dloss tau/N (ps - pt); dzt (the gradient through the teacher's distribution, for adversarial
 * or input-space uses) += dloss tau/N pt (r - sum pt r), r = log pt - log ps */
peftc_status peftc_kd_kl_backward(float *dzs /* (N,C) accumulated, or NULL */,
                                  float *dzt /* (N,C) accumulated, or NULL */, float dloss, const float *ps /* (N,C) */,
                                  const float *pt /* (N,C) */, const float *zs /* (N,C) */, const float *zt /* (N,C) */,
                                  float tau, int64_t N, int64_t C);

/* ---- Adaptive DeepInversion's competition term: Jensen-Shannon of clamped softmaxes -----------------
 * ps = softmax(zs / tau) (student), pt = softmax(zt / tau) (teacher), kept for the backward; m = (ps + pt)/2
 * taken before clamping, then ps, pt and m each clamped to [0.01, 0.99] (the order of the reference
 * code). loss = 1/N sum_n (1/2 KL(m || ps) + 1/2 KL(m || pt)) on the clamped values, "batchmean", not
 * clamped (the caller forms 1 - clamp(loss, 0, 1)). The clamps pass gradient where the value lies in
 * [0.01, 0.99] (ends included, as torch.clamp) and none outside. NaN or Inf in a logit gives
 * PEFTC_ERR_NONFINITE; tau must be > 0. */
peftc_status peftc_adi_js_forward(float *loss /* (1) overwritten */, float *ps /* (N,C) overwritten */,
                                  float *pt /* (N,C) overwritten */, const float *zs /* (N,C) student logits */,
                                  const float *zt /* (N,C) teacher logits */, float tau, int64_t N, int64_t C);
/* dzs, dzt += dloss times the loss's gradient to the student's and the teacher's logits (either NULL) */
peftc_status peftc_adi_js_backward(float *dzs /* (N,C) accumulated, or NULL */,
                                   float *dzt /* (N,C) accumulated, or NULL */, float dloss,
                                   const float *ps /* (N,C) */, const float *pt /* (N,C) */, float tau, int64_t N,
                                   int64_t C);

/* ---- BatchNorm-statistics matching (DeepInversion's R_feature for one BN layer) --------------------
 * loss = ||mean - running_mean||_2 + ||var - running_var||_2, mean and var the per-channel batch mean
 * and biased variance of the BN layer's input x over (N, IH, IW) (written out; the backward needs
 * them). A zero norm has gradient 0 (torch's subgradient). */
peftc_status peftc_bn_stat_match_forward(float *loss /* (1) overwritten */, float *mean /* (CH) overwritten */,
                                         float *var /* (CH) overwritten */, const float *x /* (N,CH,IH,IW) */,
                                         const float *running_mean /* (CH) */, const float *running_var /* (CH) */,
                                         int64_t N, int64_t CH, int64_t IH, int64_t IW);
peftc_status peftc_bn_stat_match_backward(float *dx /* (N,CH,IH,IW) accumulated */, float dloss,
                                          const float *x /* (N,CH,IH,IW) */, const float *mean /* (CH) */,
                                          const float *var /* (CH) */, const float *running_mean /* (CH) */,
                                          const float *running_var /* (CH) */, int64_t N, int64_t CH, int64_t IH,
                                          int64_t IW);

/* ---- DAFL's generator terms (Chen et al. 2019) ------------------------------------------------------
 * activation: loss = -mean |f| over the P values of the teacher's penultimate features.
 * information entropy: loss = sum_c pbar_c ln pbar_c, pbar = mean over the rows of softmax(logits): the
 * negative entropy of the batch-mean prediction (natural log; DAFL's code takes log10, a factor
 * 1/ln 10 its caller folds into the weight). probs and pbar are kept for the backward. */
peftc_status peftc_dafl_activation_forward(float *loss /* (1) overwritten */, const float *f /* (P) */, int64_t P);
peftc_status peftc_dafl_activation_backward(float *df /* (P) accumulated */, float dloss, const float *f /* (P) */,
                                            int64_t P);
peftc_status peftc_dafl_entropy_forward(float *loss /* (1) overwritten */, float *probs /* (N,C) overwritten */,
                                        float *pbar /* (C) overwritten */, const float *logits /* (N,C) */, int64_t N,
                                        int64_t C);
peftc_status peftc_dafl_entropy_backward(float *dlogits /* (N,C) accumulated */, float dloss,
                                         const float *probs /* (N,C) */, const float *pbar /* (C) */, int64_t N,
                                         int64_t C);

/* ---- total variation (DeepInversion's image priors) -------------------------------------------------
 * Over the four neighbour differences of each (IH,IW) plane (horizontal, vertical, both diagonals):
 * l1 = sum over the directions of mean |difference|, l2 = sum over the directions of the Frobenius norm
 * of the difference (norms, the four terms of l2, kept for the backward). Needs IH, IW >= 2. */
peftc_status peftc_tv_forward(float *l1 /* (1) overwritten */, float *l2 /* (1) overwritten */,
                              float *norms /* (4) overwritten */, const float *x /* (N,CH,IH,IW) */, int64_t N,
                              int64_t CH, int64_t IH, int64_t IW);
peftc_status peftc_tv_backward(float *dx /* (N,CH,IH,IW) accumulated */, float dl1, float dl2,
                               const float *x /* (N,CH,IH,IW) */, const float *norms /* (4) */, int64_t N, int64_t CH,
                               int64_t IH, int64_t IW);

/* ==== EVA (eva.c): incremental PCA of one layer's input rows =====================================
 * The update follows scikit-learn's IncrementalPCA (and PEFT's torch port of it): running mean
 * and variance per feature, then the top K right-singular vectors of [diag(S) V; X - mean(X); mean
 * correction row], taken from the eigenvectors of its smaller Gram matrix (see eva.c).
 * Extra dimension letters for this section:
 *   M  rows of this minibatch (tokens left after masking)     K  components kept
 * n_seen is the number of rows folded in before this call (0 on the first call, when components,
 * singular and the statistics are only written). The kernel needs K <= IC and, on the first call,
 * K <= M; NaN or Inf in x returns PEFTC_ERR_NONFINITE with the state untouched. work must be
 * 8-byte aligned (it also holds double-precision column sums). */
int64_t peftc_ipca_workspace_size(int64_t M, int64_t IC, int64_t K); /* floats; -1 if LAPACK cannot say */
peftc_status peftc_ipca_update(float *components /* (K,IC) updated: rows are unit right-singular vectors */,
                               float *singular /* (K) updated: singular values, descending */,
                               float *mean /* (IC) updated */, float *var /* (IC) updated: biased variance */,
                               float *evr /* (K) overwritten: explained-variance ratio of each component */,
                               float *cosine /* (K) overwritten: cos(new row k, old row k); 0 on the first call */,
                               float *work /* peftc_ipca_workspace_size() floats */, const float *x /* (M,IC) */,
                               int64_t n_seen, int64_t M, int64_t IC, int64_t K);

/* peftc_ipca_update runs on the calling thread with OpenBLAS held at one thread (the LAPACK
 * eigensolver at these sizes is no faster on two), so its bits do not depend on the thread count.
 * peftc_ipca_update_many runs several independent updates (one per layer; no two may share memory
 * either writes) side by side on the OpenBLAS thread count, each exactly as peftc_ipca_update would.
 * Every job's status is written to it; the call returns the status of the first job (in order)
 * that failed, PEFTC_OK if none did. */
typedef struct {
    float *components, *singular, *mean, *var, *evr, *cosine, *work; /* as peftc_ipca_update */
    const float *x;
    int64_t n_seen, M, IC, K;
    peftc_status status; /* written */
} peftc_ipca_job;
peftc_status peftc_ipca_update_many(peftc_ipca_job *jobs /* (count) */, int64_t count);

/* ==== optimizers and the training loss (optim.c, fill.c, loss.c) =================================
 * What one supervised training step needs around the layers' backward kernels: the loss whose
 * gradient starts the backward (softmax cross-entropy, here rather than with the encoder or TTA
 * kernels because it is the training step's loss), the zeroing of the gradient buffers the backward
 * accumulates into, the reductions of global gradient-norm clipping, and the optimizer steps. All but
 * the loss work on flat float32 arrays of P values. */

/* ---- loss (loss.c): mean softmax cross-entropy over rows whose label is not ignore_index ------ */
peftc_status peftc_cross_entropy_forward(float *loss /* (1) overwritten */,
                                         int64_t *count /* (1) overwritten: rows counted */,
                                         float *probs /* (N,C) overwritten: softmax, kept for backward */,
                                         const float *logits /* (N,C) */, const int64_t *labels /* (N) */,
                                         int64_t ignore_index, int64_t N, int64_t C);
peftc_status peftc_cross_entropy_backward(float *dlogits /* (N,C) accumulated */, float dloss,
                                          const float *probs /* (N,C) */, const int64_t *labels /* (N) */,
                                          int64_t ignore_index, int64_t N, int64_t C);

/* ---- optimizers (optim.c): one step over a flat parameter, same math as torch.optim ---------- */
peftc_status peftc_adamw_step(float *param /* (P) updated */, float *m /* (P) updated */, float *v /* (P) updated */,
                              const float *grad /* (P) */, double lr, double beta1, double beta2, double eps,
                              double weight_decay, int64_t step /* 1-based */, int64_t P);
peftc_status peftc_sgd_step(float *param /* (P) updated */, float *buf /* (P) updated, or NULL if momentum == 0 */,
                            const float *grad /* (P) */, float lr, float momentum, float dampening, float weight_decay,
                            int nesterov, int64_t step /* 1-based */, int64_t P);

/* ---- gradient buffers: norm clipping (optim.c) and zeroing (fill.c) ------------------------------ */
/* sum of squares of a flat array, accumulated in double (for global gradient-norm clipping) */
peftc_status peftc_sumsq(double *out /* (1) overwritten */, const float *x /* (P) */, int64_t P);
peftc_status peftc_scale_inplace(float *x /* (P) updated */, float alpha, int64_t P);
/* x = value everywhere (the explicit zeroing of accumulated gradient buffers); split over the threads */
peftc_status peftc_fill(float *x /* (P) overwritten */, float value, int64_t P);

/* ==== random numbers, dropout and token sampling (rng.c, dropout.c, sample.c) =====================
 * A counter-based generator: element i of a draw is a pure function of (seed, offset + i), so
 * results do not depend on threads or call order, and a dropout mask can be regenerated in the
 * backward pass instead of stored. Uniform draws use one counter per element, normal draws two. */
float peftc_rng_uniform01(uint64_t seed, uint64_t counter);
peftc_status peftc_rng_uniform(float *out /* (P) overwritten */, float lo, float hi, uint64_t seed, uint64_t offset,
                               int64_t P);
peftc_status peftc_rng_normal(float *out /* (P) overwritten */, float mean, float std, uint64_t seed, uint64_t offset,
                              int64_t P);

/* ---- token sampling (sample.c): the next token of each row of logits (V: vocabulary size) ------
 * Hugging Face generate()'s sampling: logits / temperature, then top-k (keep the logits >= the k-th
 * largest; top_k = 0 or >= V keeps all), softmax, then top-p (keep the most probable tokens until
 * their mass reaches top_p, i.e. token i stays when the mass of the tokens more probable than it is
 * below top_p; top_p = 1 keeps all), renormalise, and draw row n by the inverse CDF at
 * uniform(seed, offset + n). temperature = 0 is greedy (the first largest logit). probs receives the
 * distribution each token was drawn from (zeros where filtered). NaN or +inf logits, or a row of
 * -inf only, give PEFTC_ERR_NONFINITE; temperature < 0, top_k < 0 or top_p outside (0, 1]
 * PEFTC_ERR_ARG. Rows are split over the threads. */
peftc_status peftc_sample_tokens(int64_t *tokens /* (N) overwritten */, float *probs /* (N,V) overwritten */,
                                 const float *logits /* (N,V) */, float temperature, int64_t top_k, float top_p,
                                 uint64_t seed, uint64_t offset, int64_t N, int64_t V);

/* ---- dropout (dropout.c): inverted dropout, the mask regenerated from (seed, offset) ----------
 * Split over the threads (the mask is a function of the index alone). */
peftc_status peftc_dropout_forward(float *out /* (P) overwritten */, const float *x /* (P) */, float p, uint64_t seed,
                                   uint64_t offset, int64_t P);
peftc_status peftc_dropout_backward(float *dx /* (P) accumulated */, const float *dout /* (P) */, float p,
                                    uint64_t seed, uint64_t offset, int64_t P);
/* The same masks on chosen rows of a larger (R,C) array: row n of x is row rows[n] of it, whose element
 * (rows[n], c) is kept when uniform(seed, offset + rows[n]*C + c) >= p (what peftc_dropout_forward
 * draws for the whole array; a packed batch drops what its padded batch drops). rows[n] >= 0. */
peftc_status peftc_dropout_rows_forward(float *out /* (N,C) overwritten */, const float *x /* (N,C) */,
                                        const int64_t *rows /* (N) */, float p, uint64_t seed, uint64_t offset,
                                        int64_t N, int64_t C);
peftc_status peftc_dropout_rows_backward(float *dx /* (N,C) accumulated */, const float *dout /* (N,C) */,
                                         const int64_t *rows /* (N) */, float p, uint64_t seed, uint64_t offset,
                                         int64_t N, int64_t C);

/* ==== lifelong data selection (lifelong.c): Adapt-inf's sample vectors and pseudo-skill clusters ======
 * Extra dimension letters for this section: E  examples (segments of rows)   D  sample-vector width
 * K  clusters.
 *
 * Per-example LoRA gradients: rows [offsets[e], offsets[e+1]) of x and dy belong to example e (offsets
 * non-decreasing, offsets[E] <= N; rows outside every segment are ignored). With u = x a^T and
 * g = dy bm (both in work), da[e] += s g_e^T x_e and dbm[e] += s dy_e^T u_e: summed over e they are what
 * peftc_lora_backward adds (p = 0). A NaN or Inf in dy gives PEFTC_ERR_NONFINITE; bad offsets
 * PEFTC_ERR_ARG. */
int64_t peftc_lora_per_example_grad_workspace_size(int64_t N, int64_t R); /* floats */
peftc_status peftc_lora_per_example_grad(float *da /* (E,R,IC) accumulated */, float *dbm /* (E,OC,R) accumulated */,
                                         float *work /* peftc_lora_per_example_grad_workspace_size() floats */,
                                         const float *x /* (N,IC) */, const float *dy /* (N,OC) */,
                                         const float *a /* (R,IC) */, const float *bm /* (OC,R) */,
                                         const int64_t *offsets /* (E+1) */, float scale, int64_t N, int64_t IC,
                                         int64_t OC, int64_t R, int64_t E);
/* k-means assignment: labels[n] = argmin_k ||x_n - c_k||^2 (ties to the lowest k), dist[n] that squared
 * distance (clamped at 0). A non-finite row of x gives PEFTC_ERR_NONFINITE. */
int64_t peftc_kmeans_assign_workspace_size(int64_t N, int64_t K); /* floats */
peftc_status peftc_kmeans_assign(int64_t *labels /* (N) overwritten */, float *dist /* (N) overwritten */,
                                 float *work /* peftc_kmeans_assign_workspace_size() floats */,
                                 const float *x /* (N,D) */, const float *c /* (K,D) */, int64_t N, int64_t D,
                                 int64_t K);
/* k-means update: counts[k] = |{n : labels[n] = k}|; c[k] = the mean of those rows (summed in row order),
 * left as it was when the cluster is empty. A label outside [0, K) gives PEFTC_ERR_LABEL. */
peftc_status peftc_kmeans_update(float *c /* (K,D) updated */, int64_t *counts /* (K) overwritten */,
                                 const float *x /* (N,D) */, const int64_t *labels /* (N) */, int64_t N, int64_t D,
                                 int64_t K);

#endif
