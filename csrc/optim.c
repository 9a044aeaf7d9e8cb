/* optim.c: optimizer steps on flat float32 parameters, following torch.optim's update order so
 * that a peftc run and a torch run agree to float32 rounding. Scalars (bias corrections) are
 * computed in double, as Python computes them in torch. Also the two reductions that global
 * gradient-norm clipping needs. */
#include <math.h>

#include "peftc.h"

peftc_status peftc_adamw_step(float *param, float *m, float *v, const float *grad, double lr, double beta1,
                              double beta2, double eps, double weight_decay, int64_t step, int64_t P)
{
    if (P < 0)
        return PEFTC_ERR_SIZE;
    if (step < 1 || !(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0) || !(eps >= 0.0))
        return PEFTC_ERR_ARG;
    /* Hyper-parameters arrive in double and each scalar is rounded to float only once formed, as
     * torch does: 1 - beta2 from a float beta2 = 0.999f would be off by 1.3e-5 relative. */
    const float b2 = (float)beta2;
    const float one_minus_b1 = (float)(1.0 - beta1);
    const float one_minus_b2 = (float)(1.0 - beta2);
    const float step_size = (float)(lr / (1.0 - pow(beta1, (double)step)));
    const float bc2_sqrt = (float)sqrt(1.0 - pow(beta2, (double)step));
    const float decay = (float)(1.0 - lr * weight_decay);
    const float epsf = (float)eps;
    for (int64_t i = 0; i < P; i++) {
        const float g = grad[i];
        param[i] *= decay;
        m[i] += (g - m[i]) * one_minus_b1; /* torch: exp_avg.lerp_(grad, 1 - beta1) */
        v[i] = v[i] * b2 + one_minus_b2 * g * g;
        const float denom = sqrtf(v[i]) / bc2_sqrt + epsf;
        param[i] -= step_size * (m[i] / denom);
    }
    return PEFTC_OK;
}

peftc_status peftc_sgd_step(float *param, float *buf, const float *grad, float lr, float momentum, float dampening,
                            float weight_decay, int nesterov, int64_t step, int64_t P)
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
