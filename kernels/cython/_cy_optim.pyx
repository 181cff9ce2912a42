"""Optimizer updates of the "cython" backend: one pass over parameter, gradient and state.

Each update reads p, g and its state once and writes p and the state once, with no
temporaries, in parallel over the flat parameter when it is large enough to pay for the
thread start-up. The update rules are those torch.optim documents (see nnkern.ops).
Arguments are validated by nnkern.ops: 1-D C-contiguous arrays of one length and dtype.
"""

from cython.parallel cimport prange
from libc.math cimport sqrt

ctypedef fused real:
    float
    double

# Below this many elements one thread does the update: starting a parallel region costs
# more than the memory pass it would split.
cdef Py_ssize_t PARALLEL_MIN = 1 << 15


cdef inline int _threads(Py_ssize_t n, int num_threads) noexcept nogil:
    return num_threads if n >= PARALLEL_MIN else 1


def sgd_update(real[::1] p, const real[::1] g, double lr, int num_threads):
    cdef Py_ssize_t i, n = p.shape[0]
    cdef real step = <real>lr
    with nogil:
        for i in prange(n, num_threads=_threads(n, num_threads), schedule="static"):
            p[i] -= step * g[i]


def momentum_update(real[::1] p, const real[::1] g, real[::1] v, double lr, double momentum,
                    int num_threads):
    cdef Py_ssize_t i, n = p.shape[0]
    cdef real step = <real>lr, mu = <real>momentum, vi
    with nogil:
        for i in prange(n, num_threads=_threads(n, num_threads), schedule="static"):
            vi = mu * v[i] + g[i]
            v[i] = vi
            p[i] -= step * vi


def adagrad_update(real[::1] p, const real[::1] g, real[::1] h, double lr, double eps,
                   int num_threads):
    cdef Py_ssize_t i, n = p.shape[0]
    cdef real step = <real>lr, e = <real>eps, gi, hi
    with nogil:
        for i in prange(n, num_threads=_threads(n, num_threads), schedule="static"):
            gi = g[i]
            hi = h[i] + gi * gi
            h[i] = hi
            p[i] -= step * gi / (sqrt(hi) + e)


def rmsprop_update(real[::1] p, const real[::1] g, real[::1] h, double lr, double alpha,
                   double eps, int num_threads):
    cdef Py_ssize_t i, n = p.shape[0]
    cdef real step = <real>lr, a = <real>alpha, one_minus_a = <real>(1.0 - alpha)
    cdef real e = <real>eps, gi, hi
    with nogil:
        for i in prange(n, num_threads=_threads(n, num_threads), schedule="static"):
            gi = g[i]
            hi = a * h[i] + one_minus_a * gi * gi
            h[i] = hi
            p[i] -= step * gi / (sqrt(hi) + e)


def adadelta_update(real[::1] p, const real[::1] g, real[::1] h, real[::1] d, double lr,
                    double rho, double eps, int num_threads):
    cdef Py_ssize_t i, n = p.shape[0]
    cdef real step = <real>lr, r = <real>rho, one_minus_r = <real>(1.0 - rho)
    cdef real e = <real>eps, gi, hi, delta
    with nogil:
        for i in prange(n, num_threads=_threads(n, num_threads), schedule="static"):
            gi = g[i]
            hi = r * h[i] + one_minus_r * gi * gi
            h[i] = hi
            delta = sqrt(d[i] + e) / sqrt(hi + e) * gi
            d[i] = r * d[i] + one_minus_r * delta * delta
            p[i] -= step * delta


def adam_update(real[::1] p, const real[::1] g, real[::1] m, real[::1] v, long t, double lr,
                double beta1, double beta2, double eps, int num_threads):
    cdef Py_ssize_t i, n = p.shape[0]
    cdef real b1 = <real>beta1, b2 = <real>beta2
    cdef real one_minus_b1 = <real>(1.0 - beta1), one_minus_b2 = <real>(1.0 - beta2)
    # torch.optim.Adam's form: p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
    cdef real step_size = <real>(lr / (1.0 - beta1 ** t))
    cdef real inv_sqrt_bc2 = <real>(1.0 / sqrt(1.0 - beta2 ** t))
    cdef real e = <real>eps, gi, mi, vi
    with nogil:
        for i in prange(n, num_threads=_threads(n, num_threads), schedule="static"):
            gi = g[i]
            mi = b1 * m[i] + one_minus_b1 * gi
            vi = b2 * v[i] + one_minus_b2 * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] -= step_size * mi / (sqrt(vi) * inv_sqrt_bc2 + e)
