/* optim.c: optimizer steps on flat float32 parameters, following torch.optim's update order so
 * that a peftc run and a torch run agree to float32 rounding. Scalars (bias corrections) are
 * computed in double, as Python computes them in torch. Also the two reductions that global
 * gradient-norm clipping needs. */
#include <math.h>

#include "peftc.h"

peftc_status peftc_adamw_step(float *param, float *m, float *v, const float *grad, float lr, float beta1,
                              float beta2, float eps, float weight_decay, int64_t step, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    if (step < 1 || !(beta1 >= 0.0f && beta1 < 1.0f) || !(beta2 >= 0.0f && beta2 < 1.0f) || !(eps >= 0.0f))
        return PEFTC_ERR_ARG;
    const double bc1 = 1.0 - pow((double)beta1, (double)step);
    const double bc2_sqrt = sqrt(1.0 - pow((double)beta2, (double)step));
    const float step_size = (float)((double)lr / bc1);
    const float decay = 1.0f - lr * weight_decay;
    for (int64_t i = 0; i < P; i++) {
        const float g = grad[i];
        param[i] *= decay;
        m[i] += (g - m[i]) * (1.0f - beta1); /* torch: exp_avg.lerp_(grad, 1 - beta1) */
        v[i] = v[i] * beta2 + (1.0f - beta2) * g * g;
        const float denom = sqrtf(v[i]) / (float)bc2_sqrt + eps;
        param[i] -= step_size * (m[i] / denom);
    }
    return PEFTC_OK;
}

peftc_status peftc_sgd_step(float *param, float *buf, const float *grad, float lr, float momentum,
                            float dampening, float weight_decay, int nesterov, int64_t step, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    if (step < 1 || (momentum != 0.0f && !buf) || (nesterov && (momentum <= 0.0f || dampening != 0.0f)))
        return PEFTC_ERR_ARG;
    for (int64_t i = 0; i < P; i++) {
        float d = grad[i] + weight_decay * param[i];
        if (momentum != 0.0f) {
            buf[i] = step == 1 ? d : momentum * buf[i] + (1.0f - dampening) * d;
            d = nesterov ? d + momentum * buf[i] : buf[i];
        }
        param[i] -= lr * d;
    }
    return PEFTC_OK;
}

peftc_status peftc_sumsq(double *out, const float *x, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    double s = 0.0;
    for (int64_t i = 0; i < P; i++)
        s += (double)x[i] * (double)x[i];
    *out = s;
    return PEFTC_OK;
}

peftc_status peftc_scale_inplace(float *x, float alpha, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    for (int64_t i = 0; i < P; i++)
        x[i] *= alpha;
    return PEFTC_OK;
}
