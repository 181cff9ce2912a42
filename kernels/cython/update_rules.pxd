# The optimizer update rules of the Cython backend (nnk_update.h), for any .pyx to cimport:
# _cy_optim.pyx (the ops-level update kernels) and _cy_train.pyx (the fused training step)
# both run exactly this code.

from cython.parallel cimport prange

ctypedef fused real:
    float
    double

cdef extern from "nnk_update.h" nogil:
    enum:  # the rule codes, in the order of nnkern.backends.UPDATE_RULES
        RULE_SGD "NNK_RULE_SGD"
        RULE_MOMENTUM "NNK_RULE_MOMENTUM"
        RULE_ADAGRAD "NNK_RULE_ADAGRAD"
        RULE_RMSPROP "NNK_RULE_RMSPROP"
        RULE_ADADELTA "NNK_RULE_ADADELTA"
        RULE_ADAM "NNK_RULE_ADAM"
        RULE_ADAMW "NNK_RULE_ADAMW"
        RULE_NESTEROV "NNK_RULE_NESTEROV"
    ctypedef struct nnk_update_constants_s:
        pass
    ctypedef struct nnk_update_constants_d:
        pass
    nnk_update_constants_s nnk_update_constants_for_s(double lr, double a, double b, double eps,
                                                      long t, double weight_decay)
    nnk_update_constants_d nnk_update_constants_for_d(double lr, double a, double b, double eps,
                                                      long t, double weight_decay)
    void nnk_update_s(int rule, float *p, const float *g, float *s0, float *s1, Py_ssize_t n,
                      const nnk_update_constants_s *c)
    void nnk_update_d(int rule, double *p, const double *g, double *s0, double *s1, Py_ssize_t n,
                      const nnk_update_constants_d *c)

# Below this many elements one thread does the update: starting a parallel region costs
# more than the memory pass it would split.
cdef enum:
    UPDATE_PARALLEL_MIN = 1 << 15


cdef inline void apply_update(int rule, real *p, const real *g, real *s0, real *s1, Py_ssize_t n,
                              double lr, double a, double b, double eps, long t,
                              double weight_decay, int num_threads) noexcept nogil:
    """One update of p (n elements) from g (+ weight_decay * p) with state s0, s1 (NULL
    where the rule has none). a, b: - | momentum | - | alpha | rho | beta1, beta2 (Adam, AdamW)
    | momentum (Nesterov) for the rules in UpdateRule order; t: Adam's step count."""
    cdef nnk_update_constants_s cs
    cdef nnk_update_constants_d cd
    cdef Py_ssize_t part, lo, hi
    cdef int nt = num_threads if n >= UPDATE_PARALLEL_MIN else 1
    if real is float:
        cs = nnk_update_constants_for_s(lr, a, b, eps, t, weight_decay)
    else:
        cd = nnk_update_constants_for_d(lr, a, b, eps, t, weight_decay)
    if nt <= 1:
        if real is float:
            nnk_update_s(rule, p, g, s0, s1, n, &cs)
        else:
            nnk_update_d(rule, p, g, s0, s1, n, &cd)
        return
    for part in prange(nt, num_threads=nt, schedule="static", chunksize=1):
        # equal shares starting on 64-byte boundaries (16 floats, 8 doubles: 16 for both)
        lo = (n * part // nt) & ~15
        hi = n if part == nt - 1 else (n * (part + 1) // nt) & ~15
        if real is float:
            nnk_update_s(rule, p + lo, g + lo, s0 + lo if s0 != NULL else NULL,
                         s1 + lo if s1 != NULL else NULL, hi - lo, &cs)
        else:
            nnk_update_d(rule, p + lo, g + lo, s0 + lo if s0 != NULL else NULL,
                         s1 + lo if s1 != NULL else NULL, hi - lo, &cd)
