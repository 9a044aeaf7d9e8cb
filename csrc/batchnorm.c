/* batchnorm.c: 2-D batch normalisation (per channel over N, IH, IW) forward and backward, in the
 * three ways test-time adaptation needs: training (batch statistics, running buffers updated),
 * test-batch statistics (batch statistics, nothing updated) and eval (running statistics).
 * Per-plane sums run in float lanes (vectorised), the per-channel totals in double; the passes over a
 * channel prefetch the planes ahead (all but the variance pass, which re-reads what the mean pass
 * brought in). x_hat is recomputed in the backward from x, mean and rstd rather than stored. The
 * _relu_ pair fuses a following ReLU (output max(y, 0); backward masks the incoming gradient by that
 * output), saving the activation's separate pass and buffer. Its forward can also hand out each
 * channel's float map y = (x - mean) scale + shift, from which its backward rebuilds the mask instead
 * of reading y: GCC in ISO C mode (-std=c11) contracts nothing into FMAs, so the same operations give
 * the same floats, and the same mask, NaN and -0 included.
 * Channels are split over the BLAS thread count (see bn_parts). No convolution or pooling here. */
#include <math.h>
#include <string.h>

#include "parallel.h"
#include "peftc.h"
#include "vec.h"

static int bn_sizes_ok(int64_t N, int64_t CH, int64_t IH, int64_t IW)
{
    return N >= 0 && CH >= 0 && IH >= 0 && IW >= 0;
}

/* Sums over the N planes of a channel, S values each, run in LANES float lanes per plane (GCC/Clang
 * vectors of vec.h, as wide as the target's registers; __builtin_shufflevector needs GCC 12 or Clang),
 * each plane's lanes then widened and added lane by lane into LANES double lanes, which are summed
 * once per channel. Reducing every plane's lanes to one double instead is a chain of LANES dependent
 * adds per plane, longer than the plane's own work at S = 49. A plane's last S % LANES values join the
 * float lanes as one more vector with its other lanes masked to zero. */
#define LANES PEFTC_VL
#if LANES == 16
#define LOW_LANES 0, 1, 2, 3, 4, 5, 6, 7
#define HIGH_LANES 8, 9, 10, 11, 12, 13, 14, 15
#elif LANES == 8
#define LOW_LANES 0, 1, 2, 3
#define HIGH_LANES 4, 5, 6, 7
#else
#define LOW_LANES 0, 1
#define HIGH_LANES 2, 3
#endif

typedef peftc_vf lanes_f;
typedef int32_t lanes_i __attribute__((vector_size(LANES * sizeof(int32_t))));
typedef double half_d __attribute__((vector_size(LANES / 2 * sizeof(double))));
/* LANES double lanes as two vectors of the target's width: one vector of LANES doubles would be wider
 * than a register, and GCC keeps such a variable in memory (a store and reload per plane) */
typedef struct {
    half_d lo, hi;
} lanes_d;

static inline lanes_f broadcast(float a)
{
    return (lanes_f){0} + a;
}

/* v where live is all ones, +0 where it is zero */
static inline lanes_f keep(lanes_f v, lanes_i live)
{
    return (lanes_f)((lanes_i)v & live);
}

/* all ones in the top n lanes (the live ones of tail_load), zero below */
static inline lanes_i tail_live(int64_t n)
{
    lanes_i index;
    for (int j = 0; j < LANES; j++)
        index[j] = j;
    return index >= (lanes_i){0} + (int32_t)(LANES - n);
}

/* The plane's last n = S % LANES > 0 values in the top n lanes. The lanes below hold earlier values
 * of the plane (a full vector ending at its end: nothing past it is read), or 0 when S < LANES. */
static inline lanes_f tail_load(const float *p, int64_t S)
{
    if (S >= LANES)
        return vec_load(p + S - LANES);
    float t[LANES] = {0.0f};
    for (int64_t j = 0; j < S; j++)
        t[LANES - S + j] = p[j];
    return vec_load(t);
}

/* Brings the plane ahead into the cache while the current one is summed: a channel's planes are
 * CH * S floats apart, a stride the hardware prefetcher follows poorly when planes are short. */
static inline void prefetch_plane(const float *p, int64_t S)
{
    for (int64_t s = 0; s < S; s += LANES)
        __builtin_prefetch(p + s, 0, 3);
    if (S > 0)
        __builtin_prefetch(p + S - 1, 0, 3);
}

/* prefetch_plane for a plane about to be written */
static inline void prefetch_plane_for_write(const float *p, int64_t S)
{
    for (int64_t s = 0; s < S; s += LANES)
        __builtin_prefetch(p + s, 1, 3);
    if (S > 0)
        __builtin_prefetch(p + S - 1, 1, 3);
}

/* how many planes ahead to prefetch: about 4 KiB of each stream (2 KiB was slower at S = 196, 8 KiB
 * much slower at S = 49) */
static inline int64_t prefetch_distance(int64_t S)
{
    return S >= 1024 ? 1 : (1024 + S - 1) / S;
}

/* *tot += acc, lane by lane, widened to double */
static inline void lanes_add(lanes_d *tot, lanes_f acc)
{
    tot->lo += __builtin_convertvector(__builtin_shufflevector(acc, acc, LOW_LANES), half_d);
    tot->hi += __builtin_convertvector(__builtin_shufflevector(acc, acc, HIGH_LANES), half_d);
}

static inline double lanes_sum(const lanes_d *tot)
{
    double t = 0.0;
    for (int j = 0; j < LANES / 2; j++)
        t += tot->lo[j];
    for (int j = 0; j < LANES / 2; j++)
        t += tot->hi[j];
    return t;
}

/* *tot += sum_s p[s], lane by lane */
static inline void plane_sum(lanes_d *tot, const float *p, int64_t S)
{
    lanes_f acc = {0};
    int64_t s = 0;
    for (; s + LANES <= S; s += LANES)
        acc += vec_load(p + s);
    if (s < S)
        acc += keep(tail_load(p, S), tail_live(S - s));
    lanes_add(tot, acc);
}

/* *tot += sum_s (p[s] - m)^2, lane by lane */
static inline void plane_sqdev(lanes_d *tot, const float *p, float m, int64_t S)
{
    lanes_f acc = {0};
    const lanes_f mv = broadcast(m);
    int64_t s = 0;
    for (; s + LANES <= S; s += LANES) {
        const lanes_f d = vec_load(p + s) - mv;
        acc += d * d;
    }
    if (s < S) {
        const lanes_f d = keep(tail_load(p, S) - mv, tail_live(S - s));
        acc += d * d;
    }
    lanes_add(tot, acc);
}

/* g where y > 0, else +0 (a NaN or Inf g is dropped too, as relu.c's backward does), by bit masking
 * so that the loops stay branch-free and vectorise. */
static inline float masked_grad(float g, float y)
{
    union {
        float f;
        uint32_t u;
    } v = {.f = g};
    v.u &= -(uint32_t)(y > 0.0f);
    return v.f;
}

/* masked_grad lane by lane */
static inline lanes_f masked_grad_lanes(lanes_f g, lanes_f y)
{
    return keep(g, y > (lanes_f){0});
}

/* A ReLU mask rebuilt from x: the forward's y = max((x - m) scale + shift, 0) is > 0 exactly where
 * (x - m) scale + shift is (see the top of the file). */
typedef struct {
    float scale, shift;
} relu_map;

/* *tg += sum_s g[s] and *tgx += sum_s g[s] (x[s] - m), lane by lane, where g = dy, or dy masked to
 * y > 0 when y is non-NULL (the ReLU after the norm), or to the map's rebuilt y > 0 when map is
 * non-NULL. The mask gives the values relu.c's backward writes, so the fused and unfused kernels add
 * the same numbers in the same order. */
static inline void plane_grad_sums(lanes_d *tg, lanes_d *tgx, const float *dy, const float *y, const relu_map *map,
                                   const float *x, float m, int64_t S)
{
    lanes_f a = {0}, b = {0};
    const lanes_f mv = broadcast(m), scale = broadcast(map ? map->scale : 0.0f),
                  shift = broadcast(map ? map->shift : 0.0f);
    int64_t s = 0;
    for (; s + LANES <= S; s += LANES) {
        const lanes_f d = vec_load(x + s) - mv;
        lanes_f g = vec_load(dy + s);
        if (y)
            g = masked_grad_lanes(g, vec_load(y + s));
        else if (map)
            g = masked_grad_lanes(g, d * scale + shift);
        a += g;
        b += g * d;
    }
    if (s < S) {
        const lanes_i live = tail_live(S - s);
        const lanes_f d = tail_load(x, S) - mv;
        lanes_f g = tail_load(dy, S);
        if (y)
            g = masked_grad_lanes(g, tail_load(y, S));
        else if (map)
            g = masked_grad_lanes(g, d * scale + shift);
        g = keep(g, live);
        a += g;
        b += g * keep(d, live);
    }
    lanes_add(tg, a);
    lanes_add(tgx, b);
}

/* Biased mean and variance of channel c over the N planes of S values, two passes (the second about
 * the float mean). */
static void channel_moments(double *mean, double *var, const float *x, int64_t c, int64_t N, int64_t CH, int64_t S)
{
    lanes_d tot = {{0}, {0}};
    const int64_t ahead = prefetch_distance(S);
    for (int64_t n = 0; n < N; n++) {
        if (n + ahead < N)
            prefetch_plane(x + ((n + ahead) * CH + c) * S, S);
        plane_sum(&tot, x + (n * CH + c) * S, S);
    }
    const double m = lanes_sum(&tot) / (double)(N * S);
    const float mf = (float)m;
    lanes_d sq = {{0}, {0}};
    for (int64_t n = 0; n < N; n++)
        plane_sqdev(&sq, x + (n * CH + c) * S, mf, S);
    /* the second pass is about mf, not m: sum (x - m)^2 = sum (x - mf)^2 - M (m - mf)^2 */
    const double dm = m - (double)mf;
    *mean = m;
    *var = fmax(lanes_sum(&sq) / (double)(N * S) - dm * dm, 0.0);
}

typedef struct {
    float *y, *mean, *rstd, *running_mean, *running_var, *dx, *dgamma, *dbeta;
    float *scale, *shift;                                /* the forward's per-channel map, or NULL */
    const float *res, *res_mean, *res_scale, *res_shift; /* the forward's residual and its map, or NULL */
    const float *x, *gamma, *beta, *dy, *relu_y, *mean_in, *rstd_in;
    const float *scale_in, *shift_in; /* the backward's mask map, or NULL */
    int training, update, relu, overwrite_dx;
    float momentum, eps;
    int64_t N, CH, S;
} bn_job;

/* Channels are split into contiguous ranges over the BLAS thread count (parallel.h); a channel is
 * computed whole by one thread, in the same order on any thread count, so results are bit-identical.
 * A part should hold at least this many elements (about 0.05 ms of one pass): smaller tensors stay on
 * the calling thread. */
#define BN_MIN_PER_THREAD 32768

static int64_t bn_parts(int64_t N, int64_t CH, int64_t S)
{
    const int64_t per_channel = N * S;
    if (per_channel == 0)
        return 1;
    return peftc_parallel_parts(CH, (BN_MIN_PER_THREAD + per_channel - 1) / per_channel);
}

/* the forward of channels [c0, c1) of part t */
static peftc_status forward_part(void *ctx, int64_t t, int64_t nparts)
{
    const bn_job *j = ctx;
    const int64_t N = j->N, CH = j->CH, S = j->S, M = N * S;
    const float *x = j->x, *gamma = j->gamma, *beta = j->beta;
    int64_t c0, c1;
    peftc_part_range(CH, t, nparts, &c0, &c1);
    for (int64_t c = c0; c < c1; c++) {
        double m, v;
        if (j->training) {
            channel_moments(&m, &v, x, c, N, CH, S);
            if (j->update) {
                const double mom = j->momentum;
                j->running_mean[c] = (float)((1.0 - mom) * j->running_mean[c] + mom * m);
                j->running_var[c] = (float)((1.0 - mom) * j->running_var[c] + mom * v * (double)M / (double)(M - 1));
            }
        } else {
            m = j->running_mean[c];
            v = j->running_var[c];
        }
        const double r = 1.0 / sqrt(v + (double)j->eps);
        j->mean[c] = (float)m;
        j->rstd[c] = (float)r;
        /* y = (x - m) r g + b = (x - mf) scale + shift, about the float mean mf: x - mf is exact for x
         * near the mean, where x * scale + (b - m scale) would cancel when |mean| >> std */
        const float mf = (float)m;
        const double gd = gamma ? gamma[c] : 1.0;
        const float scale = (float)(r * gd);
        const float shift = (float)((beta ? beta[c] : 0.0f) - (m - (double)mf) * r * gd);
        if (j->scale) {
            j->scale[c] = scale;
            j->shift[c] = shift;
        }
        if (!j->y)
            continue; /* the statistics and map only */
        /* the residual's own map (another norm's), applied to it before the sum */
        const float rm = j->res_scale ? j->res_mean[c] : 0.0f, rs = j->res_scale ? j->res_scale[c] : 0.0f,
                    rb = j->res_scale ? j->res_shift[c] : 0.0f;
        const int64_t ahead = prefetch_distance(S);
        for (int64_t n = 0; n < N; n++) {
            const float *xp = x + (n * CH + c) * S;
            float *yp = j->y + (n * CH + c) * S;
            if (n + ahead < N) {
                prefetch_plane_for_write(yp + ahead * CH * S, S);
                prefetch_plane(xp + ahead * CH * S, S);
                if (j->res)
                    prefetch_plane(j->res + (n + ahead) * CH * S + c * S, S);
            }
            if (j->res) {
                /* the bits of the unfused relu(bn(x) + (r or bn_r(r))): each term rounded, then summed */
                const float *rp = j->res + (n * CH + c) * S;
                if (j->res_scale)
                    for (int64_t s = 0; s < S; s++) {
                        const float v = ((xp[s] - mf) * scale + shift) + ((rp[s] - rm) * rs + rb);
                        yp[s] = v < 0.0f ? 0.0f : v;
                    }
                else
                    for (int64_t s = 0; s < S; s++) {
                        const float v = ((xp[s] - mf) * scale + shift) + rp[s];
                        yp[s] = v < 0.0f ? 0.0f : v;
                    }
            } else if (j->relu)
                for (int64_t s = 0; s < S; s++) {
                    const float v = (xp[s] - mf) * scale + shift;
                    yp[s] = v < 0.0f ? 0.0f : v;
                }
            else
                for (int64_t s = 0; s < S; s++)
                    yp[s] = (xp[s] - mf) * scale + shift;
        }
    }
    return PEFTC_OK;
}

/* The forward of the public entry points; relu != 0 writes max(y, 0) (NaN kept, as relu.c does), and the
 * map to scale and shift when given; y NULL computes the statistics (and map) only. With res, y = max(bn(x)
 * + r, 0), r = res, or res mapped by res_mean, res_scale, res_shift when res_scale is given. */
static peftc_status bn_forward(float *y, float *mean, float *rstd, float *scale, float *shift, float *running_mean,
                               float *running_var, const float *x, const float *gamma, const float *beta, int training,
                               float momentum, float eps, int relu, const float *res, const float *res_mean,
                               const float *res_scale, const float *res_shift, int64_t N, int64_t CH, int64_t IH,
                               int64_t IW)
{
    if (!bn_sizes_ok(N, CH, IH, IW))
        return PEFTC_ERR_SIZE;
    const int64_t S = IH * IW, M = N * S;
    const int update = training && running_mean && running_var;
    if ((running_mean == NULL) != (running_var == NULL) || (scale == NULL) != (shift == NULL) || !(eps > 0.0f) ||
        !isfinite(eps))
        return PEFTC_ERR_ARG;
    if (training && M == 0)
        return PEFTC_ERR_SIZE;
    if (!training && !running_mean)
        return PEFTC_ERR_ARG;
    if (!training)
        for (int64_t c = 0; c < CH; c++)
            if (!(running_var[c] >= 0.0f) || !isfinite(running_var[c]) || !isfinite(running_mean[c]))
                return PEFTC_ERR_NONFINITE;
    /* torch refuses to estimate a variance from one value; so do we when it would be recorded */
    if (update && (M < 2 || !(momentum >= 0.0f && momentum <= 1.0f)))
        return M < 2 ? PEFTC_ERR_SIZE : PEFTC_ERR_ARG;
    if (res_scale && (!res_mean || !res_shift))
        return PEFTC_ERR_ARG;
    bn_job job = {.y = y,
                  .mean = mean,
                  .rstd = rstd,
                  .scale = scale,
                  .shift = shift,
                  .running_mean = running_mean,
                  .running_var = running_var,
                  .res = res,
                  .res_mean = res_mean,
                  .res_scale = res_scale,
                  .res_shift = res_shift,
                  .x = x,
                  .gamma = gamma,
                  .beta = beta,
                  .training = training,
                  .update = update,
                  .relu = relu,
                  .momentum = momentum,
                  .eps = eps,
                  .N = N,
                  .CH = CH,
                  .S = S};
    return peftc_parallel_run(forward_part, &job, bn_parts(N, CH, S));
}

peftc_status peftc_batchnorm2d_forward(float *y, float *mean, float *rstd, float *scale, float *shift,
                                       float *running_mean, float *running_var, const float *x, const float *gamma,
                                       const float *beta, int training, float momentum, float eps, int64_t N,
                                       int64_t CH, int64_t IH, int64_t IW)
{
    return bn_forward(y, mean, rstd, scale, shift, running_mean, running_var, x, gamma, beta, training, momentum, eps,
                      0, NULL, NULL, NULL, NULL, N, CH, IH, IW);
}

peftc_status peftc_batchnorm2d_add_relu_forward(float *y, float *mean, float *rstd, float *running_mean,
                                                float *running_var, const float *x, const float *gamma,
                                                const float *beta, int training, float momentum, float eps,
                                                const float *res, const float *res_mean, const float *res_scale,
                                                const float *res_shift, int64_t N, int64_t CH, int64_t IH, int64_t IW)
{
    if (!y || !res)
        return PEFTC_ERR_ARG;
    return bn_forward(y, mean, rstd, NULL, NULL, running_mean, running_var, x, gamma, beta, training, momentum, eps, 1,
                      res, res_mean, res_scale, res_shift, N, CH, IH, IW);
}

peftc_status peftc_batchnorm2d_relu_forward(float *y, float *mean, float *rstd, float *scale, float *shift,
                                            float *running_mean, float *running_var, const float *x, const float *gamma,
                                            const float *beta, int training, float momentum, float eps, int64_t N,
                                            int64_t CH, int64_t IH, int64_t IW)
{
    if (!y)
        return PEFTC_ERR_ARG;
    return bn_forward(y, mean, rstd, scale, shift, running_mean, running_var, x, gamma, beta, training, momentum, eps,
                      1, NULL, NULL, NULL, NULL, N, CH, IH, IW);
}

/* the backward of channels [c0, c1) of part t; relu_y non-NULL masks dy to relu_y > 0 first, and
 * scale_in (with shift_in) to the rebuilt relu_y > 0 */
static peftc_status backward_part(void *ctx, int64_t t, int64_t nparts)
{
    const bn_job *j = ctx;
    const int64_t N = j->N, CH = j->CH, S = j->S, M = N * S;
    const float *x = j->x, *dy = j->dy, *relu_y = j->relu_y;
    int64_t c0, c1;
    peftc_part_range(CH, t, nparts, &c0, &c1);
    for (int64_t c = c0; c < c1; c++) {
        const double m = j->mean_in[c], r = j->rstd_in[c];
        const relu_map map_c = {j->scale_in ? j->scale_in[c] : 0.0f, j->shift_in ? j->shift_in[c] : 0.0f};
        const relu_map *map = j->scale_in ? &map_c : NULL;
        /* sum(dy) and sum(dy * x_hat) = r sum(dy (x - mean)) over the channel */
        lanes_d tg = {{0}, {0}}, tgx = {{0}, {0}};
        const int64_t ahead = prefetch_distance(S);
        for (int64_t n = 0; n < N; n++) {
            const int64_t o = (n * CH + c) * S;
            if (n + ahead < N) {
                const int64_t oa = o + ahead * CH * S;
                prefetch_plane(dy + oa, S);
                prefetch_plane(x + oa, S);
                if (relu_y)
                    prefetch_plane(relu_y + oa, S);
            }
            plane_grad_sums(&tg, &tgx, dy + o, relu_y ? relu_y + o : NULL, map, x + o, (float)m, S);
        }
        const double sdy = lanes_sum(&tg);
        double sdyx = lanes_sum(&tgx);
        sdyx *= r;
        if (j->dgamma)
            j->dgamma[c] += (float)sdyx;
        if (j->dbeta)
            j->dbeta[c] += (float)sdy;
        if (!j->dx)
            continue;
        const double g = j->gamma ? j->gamma[c] : 1.0;
        const float a = (float)(g * r);
        /* batch statistics: dx = g r (dy - mean(dy) - x_hat mean(dy x_hat)); eval: dx = g r dy */
        const float mdy = j->training && M > 0 ? (float)(sdy / (double)M) : 0.0f;
        const float mdyx = j->training && M > 0 ? (float)(sdyx / (double)M) : 0.0f;
        const float mf = (float)m, rf = (float)r, scale = map_c.scale, shift = map_c.shift;
        /* images last to first: the sums pass just read the last ones, which may still be in L2 when a
         * channel's x, dy (and y) are larger than it */
        for (int64_t n = N - 1; n >= 0; n--) {
            const int64_t o = (n * CH + c) * S;
            const float *xp = x + o, *gp = dy + o;
            float *dp = j->dx + o;
            if (n - ahead >= 0) {
                const int64_t oa = o - ahead * CH * S;
                prefetch_plane_for_write(j->dx + oa, S);
                prefetch_plane(dy + oa, S);
                prefetch_plane(x + oa, S);
                if (relu_y)
                    prefetch_plane(relu_y + oa, S);
            }
            /* g is dy masked as in the sums pass; both flags are loop-invariant, so each case is a loop
             * of its own */
            const float *yp = relu_y ? relu_y + o : NULL;
            for (int64_t s = 0; s < S; s++) {
                const float d = xp[s] - mf;
                const float g = yp ? masked_grad(gp[s], yp[s]) : map ? masked_grad(gp[s], d * scale + shift) : gp[s];
                const float v = a * (g - mdy - d * rf * mdyx);
                dp[s] = j->overwrite_dx ? v : dp[s] + v;
            }
        }
    }
    return PEFTC_OK;
}

/* The backward of both public entry points. relu_y non-NULL: the forward was BN then ReLU with output
 * relu_y, so the incoming gradient is first masked to relu_y > 0 (the ReLU backward, fused); or, with
 * the forward's map scale, shift instead, to the rebuilt relu_y > 0. */
static peftc_status bn_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *relu_y,
                                const float *scale, const float *shift, const float *x, const float *mean,
                                const float *rstd, const float *gamma, int training, int overwrite_dx, int64_t N,
                                int64_t CH, int64_t IH, int64_t IW)
{
    if (!bn_sizes_ok(N, CH, IH, IW))
        return PEFTC_ERR_SIZE;
    if ((scale == NULL) != (shift == NULL) || (relu_y && scale))
        return PEFTC_ERR_ARG;
    const int64_t S = IH * IW;
    bn_job job = {.dx = dx,
                  .dgamma = dgamma,
                  .dbeta = dbeta,
                  .dy = dy,
                  .relu_y = relu_y,
                  .scale_in = scale,
                  .shift_in = shift,
                  .x = x,
                  .mean_in = mean,
                  .rstd_in = rstd,
                  .gamma = gamma,
                  .training = training,
                  .overwrite_dx = overwrite_dx,
                  .N = N,
                  .CH = CH,
                  .S = S};
    return peftc_parallel_run(backward_part, &job, bn_parts(N, CH, S));
}

peftc_status peftc_batchnorm2d_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                                        const float *mean, const float *rstd, const float *gamma, int training,
                                        int overwrite_dx, int64_t N, int64_t CH, int64_t IH, int64_t IW)
{
    return bn_backward(dx, dgamma, dbeta, dy, NULL, NULL, NULL, x, mean, rstd, gamma, training, overwrite_dx, N, CH, IH,
                       IW);
}

peftc_status peftc_batchnorm2d_relu_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *y,
                                             const float *scale, const float *shift, const float *x, const float *mean,
                                             const float *rstd, const float *gamma, int training, int overwrite_dx,
                                             int64_t N, int64_t CH, int64_t IH, int64_t IW)
{
    if (!y && !scale)
        return PEFTC_ERR_ARG;
    return bn_backward(dx, dgamma, dbeta, dy, y, scale, shift, x, mean, rstd, gamma, training, overwrite_dx, N, CH, IH,
                       IW);
}
