"""Losses of the "cython" backend, each returning the loss and writing its gradient.

Every loss is one pass over its inputs; losses are accumulated in double. Rows (or
elements) are split across OpenMP threads only for large inputs. Arguments are validated
by nnkern.ops: C-contiguous, one dtype, matching shapes, labels in range.
"""

from cython.parallel cimport prange
from libc.math cimport exp, expf, log
from libc.stdint cimport int64_t

ctypedef fused real:
    float
    double

# Clamp of probabilities in binary cross entropy, as the reference (numpy_backend.BCE_CLAMP).
cdef double BCE_CLAMP = 1e-12
# Below this many elements one thread does the pass.
cdef Py_ssize_t PARALLEL_MIN = 1 << 15


cdef inline int _threads(Py_ssize_t n, int num_threads) noexcept nogil:
    return num_threads if n >= PARALLEL_MIN else 1


cdef inline double _exp_row(const real[:, ::1] logits, Py_ssize_t i, real[:, ::1] out,
                            double *log_norm) noexcept nogil:
    """out[i] = exp(logits[i] - max); returns the sum of those, and log_norm = max + log(sum)."""
    cdef Py_ssize_t j, cols = logits.shape[1]
    cdef real row_max = logits[i, 0]
    cdef double total = 0.0
    for j in range(1, cols):
        if logits[i, j] > row_max:
            row_max = logits[i, j]
    for j in range(cols):
        if real is float:  # float32 exponentials in float32, as the reference
            out[i, j] = expf(logits[i, j] - row_max)
        else:
            out[i, j] = exp(logits[i, j] - row_max)
        total += out[i, j]
    log_norm[0] = row_max + log(total)
    return total


def softmax_cross_entropy_labels(const real[:, ::1] logits, const int64_t[::1] labels,
                                 real[:, ::1] dlogits, int num_threads):
    """Mean over rows of -log softmax(logits)[label]; dlogits = (softmax - onehot) / N."""
    cdef Py_ssize_t rows = logits.shape[0], cols = logits.shape[1], i, j
    cdef double loss = 0.0, total, log_norm, scale, inv_rows = 1.0 / rows
    with nogil:
        for i in prange(rows, num_threads=_threads(rows * cols, num_threads), schedule="static"):
            total = _exp_row(logits, i, dlogits, &log_norm)
            loss += log_norm - logits[i, labels[i]]
            scale = inv_rows / total
            for j in range(cols):
                dlogits[i, j] = <real>(dlogits[i, j] * scale)
            dlogits[i, labels[i]] -= <real>inv_rows
    return loss * inv_rows


def softmax_cross_entropy_targets(const real[:, ::1] logits, const real[:, ::1] targets,
                                  real[:, ::1] dlogits, int num_threads):
    """Mean over rows of -sum_c t_c log softmax(logits)_c; dlogits = (softmax * sum_c t_c - t) / N
    (= (softmax - t) / N for target distributions)."""
    cdef Py_ssize_t rows = logits.shape[0], cols = logits.shape[1], i, j
    cdef double loss = 0.0, total, log_norm, target_sum, weighted, scale, inv_rows = 1.0 / rows
    with nogil:
        for i in prange(rows, num_threads=_threads(rows * cols, num_threads), schedule="static"):
            total = _exp_row(logits, i, dlogits, &log_norm)
            target_sum = 0.0
            weighted = 0.0
            for j in range(cols):
                target_sum = target_sum + targets[i, j]
                weighted = weighted + targets[i, j] * (logits[i, j] - log_norm)
            loss += -weighted
            scale = target_sum / total
            for j in range(cols):
                dlogits[i, j] = <real>((dlogits[i, j] * scale - targets[i, j]) * inv_rows)
    return loss * inv_rows


def mse(const real[::1] pred, const real[::1] target, bint half_sum, real[::1] dpred,
        int num_threads):
    """Mean of (pred - target)^2 with dpred = 2 (pred - target) / size, or with half_sum
    0.5 * sum of (pred - target)^2 with dpred = pred - target."""
    cdef Py_ssize_t n = pred.shape[0], i
    cdef real diff, grad_scale = <real>(1.0 if half_sum else 2.0 / n)
    cdef double loss = 0.0
    with nogil:
        for i in prange(n, num_threads=_threads(n, num_threads), schedule="static"):
            diff = pred[i] - target[i]
            loss += <double>diff * diff
            dpred[i] = diff * grad_scale
    return 0.5 * loss if half_sum else loss / n


def binary_cross_entropy(const real[::1] prob, const real[::1] target, real[::1] dprob,
                         int num_threads):
    """Mean of -(t log p + (1 - t) log(1 - p)), the logs' arguments clamped at 1e-12;
    dprob = (p - t) / max(p (1 - p), 1e-12) / size."""
    cdef Py_ssize_t n = prob.shape[0], i
    cdef double p, t, loss = 0.0, inv_n = 1.0 / n
    with nogil:
        for i in prange(n, num_threads=_threads(n, num_threads), schedule="static"):
            p = prob[i]
            t = target[i]
            loss += -(t * log(max(p, BCE_CLAMP)) + (1.0 - t) * log(max(1.0 - p, BCE_CLAMP)))
            dprob[i] = <real>((p - t) / max(p * (1.0 - p), BCE_CLAMP) * inv_n)
    return loss * inv_n
