/* The optimizer update rules of the Cython backend, one vectorised pass over parameter,
 * gradient and state; the rules torch.optim documents (see nnkern.ops for the equations).
 *
 *   nnk_update_<s|d>(rule, p, g, s0, s1, n, c)
 *
 * updates p[0:n] from g with the rule's state s0, s1 (NULL where it has none) and the
 * constants c (nnk_update_constants: hyperparameters cast once, Adam's bias corrections).
 * With c->weight_decay != 0 the rule sees g + weight_decay * p (torch's L2 form) without
 * that sum being written back to g (the test on it is hoisted out of the loop by GCC);
 * AdamW instead decays p itself by the factor 1 - lr * weight_decay (torch.optim.AdamW).
 *
 * Written in C rather than in a Cython prange body: the loops here vectorise (sqrt and
 * division included; -fno-math-errno), which Cython's generated loop did not (Adam ran at
 * ~5 cycles per element). "ivdep": p, g and the state may only alias element for element
 * (the same array passed twice), never at an offset, so no iteration feeds another.
 */
#ifndef NNK_UPDATE_H
#define NNK_UPDATE_H

#include <math.h>
#include <stddef.h>

#include "nnk_dispatch.h"

enum { NNK_RULE_SGD, NNK_RULE_MOMENTUM, NNK_RULE_ADAGRAD, NNK_RULE_RMSPROP, NNK_RULE_ADADELTA, NNK_RULE_ADAM,
       NNK_RULE_ADAMW, NNK_RULE_NESTEROV };

#define NNK_IVDEP _Pragma("GCC ivdep")

#define NNK_UPDATE_DEFINE(T, S, SQRT)                                                          \
    typedef struct {                                                                           \
        T lr, a, one_minus_a, b, one_minus_b, eps, weight_decay;                               \
        T adam_step, adam_inv_sqrt_bc2; /* lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t) */        \
        T decoupled_decay;              /* AdamW: 1 - lr * weight_decay */                     \
    } nnk_update_constants_##S;                                                                \
                                                                                               \
    /* a, b: - | momentum | - | alpha | rho | beta1, beta2 (Adam and AdamW) | momentum         \
     * (Nesterov) for the rules in enum order; t: Adam's step count (from 1). */               \
    static inline nnk_update_constants_##S nnk_update_constants_for_##S(                       \
        double lr, double a, double b, double eps, long t, double weight_decay) {              \
        nnk_update_constants_##S c;                                                            \
        c.lr = (T)lr;                                                                          \
        c.a = (T)a;                                                                            \
        c.one_minus_a = (T)(1.0 - a);                                                          \
        c.b = (T)b;                                                                            \
        c.one_minus_b = (T)(1.0 - b);                                                          \
        c.eps = (T)eps;                                                                        \
        c.weight_decay = (T)weight_decay;                                                      \
        c.adam_step = t > 0 ? (T)(lr / (1.0 - pow(a, (double)t))) : (T)0;                      \
        c.adam_inv_sqrt_bc2 = t > 0 ? (T)(1.0 / sqrt(1.0 - pow(b, (double)t))) : (T)0;         \
        c.decoupled_decay = (T)(1.0 - lr * weight_decay);                                      \
        return c;                                                                              \
    }                                                                                          \
                                                                                               \
    NNK_MULTIVERSION static void nnk_update_##S(int rule, T *p, const T *g, T *s0, T *s1, ptrdiff_t n,          \
                               const nnk_update_constants_##S *c) {                            \
        const T lr = c->lr, a = c->a, one_minus_a = c->one_minus_a, b = c->b,                  \
                one_minus_b = c->one_minus_b, eps = c->eps, wd = c->weight_decay;              \
        switch (rule) {                                                                        \
        case NNK_RULE_SGD:                                                                     \
            NNK_IVDEP for (ptrdiff_t i = 0; i < n; i++) p[i] -= lr * (wd != 0 ? g[i] + wd * p[i] : g[i]);       \
            break;                                                                             \
        case NNK_RULE_MOMENTUM:                                                                \
            NNK_IVDEP for (ptrdiff_t i = 0; i < n; i++) {                                      \
                T v = a * s0[i] + (wd != 0 ? g[i] + wd * p[i] : g[i]);                                          \
                s0[i] = v;                                                                     \
                p[i] -= lr * v;                                                                \
            }                                                                                  \
            break;                                                                             \
        case NNK_RULE_NESTEROV: /* torch.optim.SGD(nesterov=True): the step is g + momentum * v */ \
            NNK_IVDEP for (ptrdiff_t i = 0; i < n; i++) {                                      \
                T gi = wd != 0 ? g[i] + wd * p[i] : g[i], v = a * s0[i] + gi;                  \
                s0[i] = v;                                                                     \
                p[i] -= lr * (gi + a * v);                                                     \
            }                                                                                  \
            break;                                                                             \
        case NNK_RULE_ADAGRAD:                                                                 \
            NNK_IVDEP for (ptrdiff_t i = 0; i < n; i++) {                                      \
                T gi = wd != 0 ? g[i] + wd * p[i] : g[i], h = s0[i] + gi * gi;                                  \
                s0[i] = h;                                                                     \
                p[i] -= lr * gi / (SQRT(h) + eps);                                             \
            }                                                                                  \
            break;                                                                             \
        case NNK_RULE_RMSPROP:                                                                 \
            NNK_IVDEP for (ptrdiff_t i = 0; i < n; i++) {                                      \
                T gi = wd != 0 ? g[i] + wd * p[i] : g[i], h = a * s0[i] + one_minus_a * gi * gi;                \
                s0[i] = h;                                                                     \
                p[i] -= lr * gi / (SQRT(h) + eps);                                             \
            }                                                                                  \
            break;                                                                             \
        case NNK_RULE_ADADELTA:                                                                \
            NNK_IVDEP for (ptrdiff_t i = 0; i < n; i++) {                                      \
                T gi = wd != 0 ? g[i] + wd * p[i] : g[i], h = a * s0[i] + one_minus_a * gi * gi;                \
                s0[i] = h;                                                                     \
                T delta = SQRT(s1[i] + eps) / SQRT(h + eps) * gi;                              \
                s1[i] = a * s1[i] + one_minus_a * delta * delta;                               \
                p[i] -= lr * delta;                                                            \
            }                                                                                  \
            break;                                                                             \
        case NNK_RULE_ADAM: {                                                                  \
            /* torch.optim.Adam's form: p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps) */   \
            const T step = c->adam_step, inv_sqrt_bc2 = c->adam_inv_sqrt_bc2;                  \
            NNK_IVDEP for (ptrdiff_t i = 0; i < n; i++) {                                      \
                T gi = wd != 0 ? g[i] + wd * p[i] : g[i];                                                       \
                T m = a * s0[i] + one_minus_a * gi, v = b * s1[i] + one_minus_b * gi * gi;     \
                s0[i] = m;                                                                     \
                s1[i] = v;                                                                     \
                p[i] -= step * m / (SQRT(v) * inv_sqrt_bc2 + eps);                             \
            }                                                                                  \
            break;                                                                             \
        }                                                                                      \
        case NNK_RULE_ADAMW: {                                                                 \
            /* torch.optim.AdamW: the weight decay scales p (p *= 1 - lr * wd), it is not      \
             * added to g; then Adam's step on the plain gradient. */                          \
            const T step = c->adam_step, inv_sqrt_bc2 = c->adam_inv_sqrt_bc2,                  \
                    decay = c->decoupled_decay;                                                \
            NNK_IVDEP for (ptrdiff_t i = 0; i < n; i++) {                                      \
                T gi = g[i];                                                                   \
                T m = a * s0[i] + one_minus_a * gi, v = b * s1[i] + one_minus_b * gi * gi;     \
                s0[i] = m;                                                                     \
                s1[i] = v;                                                                     \
                p[i] = p[i] * decay - step * m / (SQRT(v) * inv_sqrt_bc2 + eps);               \
            }                                                                                  \
            break;                                                                             \
        }                                                                                      \
        }                                                                                      \
    }

NNK_UPDATE_DEFINE(float, s, sqrtf)
NNK_UPDATE_DEFINE(double, d, sqrt)

#endif /* NNK_UPDATE_H */
