"""Optimizer updates of the "cython" backend: one pass over parameter, gradient and state.

The rules themselves live in update_rules.pxd, shared with the fused training step
(_cy_train.pyx). Arguments are validated by nnkern.ops: 1-D C-contiguous arrays of one
length and dtype.
"""

from update_rules cimport (real, apply_update, RULE_SGD, RULE_MOMENTUM, RULE_NESTEROV, RULE_ADAGRAD,
                           RULE_RMSPROP, RULE_ADADELTA, RULE_ADAM, RULE_ADAMW)


def sgd_update(real[::1] p, const real[::1] g, double lr, int num_threads):
    with nogil:
        apply_update(RULE_SGD, &p[0], &g[0], <real *>NULL, <real *>NULL, p.shape[0],
                     lr, 0.0, 0.0, 0.0, 0, 0.0, num_threads)


def momentum_update(real[::1] p, const real[::1] g, real[::1] v, double lr, double momentum,
                    int num_threads):
    with nogil:
        apply_update(RULE_MOMENTUM, &p[0], &g[0], &v[0], <real *>NULL, p.shape[0],
                     lr, momentum, 0.0, 0.0, 0, 0.0, num_threads)


def nesterov_update(real[::1] p, const real[::1] g, real[::1] v, double lr, double momentum,
                    int num_threads):
    with nogil:
        apply_update(RULE_NESTEROV, &p[0], &g[0], &v[0], <real *>NULL, p.shape[0],
                     lr, momentum, 0.0, 0.0, 0, 0.0, num_threads)


def adagrad_update(real[::1] p, const real[::1] g, real[::1] h, double lr, double eps,
                   int num_threads):
    with nogil:
        apply_update(RULE_ADAGRAD, &p[0], &g[0], &h[0], <real *>NULL, p.shape[0],
                     lr, 0.0, 0.0, eps, 0, 0.0, num_threads)


def rmsprop_update(real[::1] p, const real[::1] g, real[::1] h, double lr, double alpha,
                   double eps, int num_threads):
    with nogil:
        apply_update(RULE_RMSPROP, &p[0], &g[0], &h[0], <real *>NULL, p.shape[0],
                     lr, alpha, 0.0, eps, 0, 0.0, num_threads)


def adadelta_update(real[::1] p, const real[::1] g, real[::1] h, real[::1] d, double lr,
                    double rho, double eps, int num_threads):
    with nogil:
        apply_update(RULE_ADADELTA, &p[0], &g[0], &h[0], &d[0], p.shape[0],
                     lr, rho, 0.0, eps, 0, 0.0, num_threads)


def adam_update(real[::1] p, const real[::1] g, real[::1] m, real[::1] v, long t, double lr,
                double beta1, double beta2, double eps, int num_threads):
    with nogil:
        apply_update(RULE_ADAM, &p[0], &g[0], &m[0], &v[0], p.shape[0],
                     lr, beta1, beta2, eps, t, 0.0, num_threads)


def adamw_update(real[::1] p, const real[::1] g, real[::1] m, real[::1] v, long t, double lr,
                 double beta1, double beta2, double eps, double weight_decay, int num_threads):
    with nogil:
        apply_update(RULE_ADAMW, &p[0], &g[0], &m[0], &v[0], p.shape[0],
                     lr, beta1, beta2, eps, t, weight_decay, num_threads)
