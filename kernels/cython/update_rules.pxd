# The optimizer update rules of the Cython backend, on raw pointers, for any .pyx to
# cimport: _cy_optim.pyx (the ops-level update kernels) and _cy_train.pyx (the fused
# training step) both run exactly this code. One pass over p, g and the state; the rules
# are those torch.optim documents (see nnkern.ops for the equations).

from cython.parallel cimport prange
from libc.math cimport sqrt

ctypedef fused real:
    float
    double

cdef enum UpdateRule:
    RULE_SGD = 0
    RULE_MOMENTUM = 1
    RULE_ADAGRAD = 2
    RULE_RMSPROP = 3
    RULE_ADADELTA = 4
    RULE_ADAM = 5

# Below this many elements one thread does the update: starting a parallel region costs
# more than the memory pass it would split.
cdef enum:
    UPDATE_PARALLEL_MIN = 1 << 15


cdef inline void apply_update(int rule, real *p, const real *g, real *s0, real *s1, Py_ssize_t n,
                              double lr, double a, double b, double eps, long t,
                              int num_threads) noexcept nogil:
    """One update of p (n elements) from g with state s0, s1 (NULL where the rule has none).
    a, b: momentum | - | alpha | rho | beta1, beta2 for the rules in UpdateRule order."""
    cdef Py_ssize_t i
    cdef int nt = num_threads if n >= UPDATE_PARALLEL_MIN else 1
    cdef real step = <real>lr, e = <real>eps, ra = <real>a, one_minus_a = <real>(1.0 - a)
    cdef real one_minus_b = <real>(1.0 - b), rb = <real>b
    cdef real gi, si, delta, step_size, inv_sqrt_bc2
    if rule == RULE_SGD:
        for i in prange(n, num_threads=nt, schedule="static"):
            p[i] -= step * g[i]
    elif rule == RULE_MOMENTUM:
        for i in prange(n, num_threads=nt, schedule="static"):
            si = ra * s0[i] + g[i]
            s0[i] = si
            p[i] -= step * si
    elif rule == RULE_ADAGRAD:
        for i in prange(n, num_threads=nt, schedule="static"):
            gi = g[i]
            si = s0[i] + gi * gi
            s0[i] = si
            p[i] -= step * gi / (sqrt(si) + e)
    elif rule == RULE_RMSPROP:
        for i in prange(n, num_threads=nt, schedule="static"):
            gi = g[i]
            si = ra * s0[i] + one_minus_a * gi * gi
            s0[i] = si
            p[i] -= step * gi / (sqrt(si) + e)
    elif rule == RULE_ADADELTA:
        for i in prange(n, num_threads=nt, schedule="static"):
            gi = g[i]
            si = ra * s0[i] + one_minus_a * gi * gi
            s0[i] = si
            delta = sqrt(s1[i] + e) / sqrt(si + e) * gi
            s1[i] = ra * s1[i] + one_minus_a * delta * delta
            p[i] -= step * delta
    elif rule == RULE_ADAM:
        # torch.optim.Adam's form: p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
        step_size = <real>(lr / (1.0 - a ** t))
        inv_sqrt_bc2 = <real>(1.0 / sqrt(1.0 - b ** t))
        for i in prange(n, num_threads=nt, schedule="static"):
            gi = g[i]
            s0[i] = ra * s0[i] + one_minus_a * gi
            s1[i] = rb * s1[i] + one_minus_b * gi * gi
            p[i] -= step_size * s0[i] / (sqrt(s1[i]) * inv_sqrt_bc2 + e)


cdef inline void add_weight_decay(real *g, const real *p, Py_ssize_t n, double weight_decay) noexcept nogil:
    """g += weight_decay * p (torch.optim's L2 penalty, applied before the rule)."""
    cdef Py_ssize_t i
    cdef real wd = <real>weight_decay
    for i in range(n):
        g[i] += wd * p[i]
