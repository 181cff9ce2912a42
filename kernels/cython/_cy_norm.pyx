"""BatchNorm1d and LayerNorm of the "cython" backend, forward and backward, each one call.

Statistics and normalised values are computed in double, for float32 and float64 alike,
as the NumPy reference does. BatchNorm's column statistics are split across OpenMP
threads by blocks of columns (each thread runs down every row of its columns, the inner
loop along memory); the elementwise passes and LayerNorm's row statistics are split by
rows. Small problems run on one thread. Arguments are validated by nnkern.ops
(C-contiguous, one dtype, matching shapes; N >= 2 for batch statistics).
"""

from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport free, malloc

ctypedef fused real:
    float
    double

# Columns per work item of the column passes, and the size below which one thread works.
cdef Py_ssize_t COLUMN_BLOCK = 64
cdef Py_ssize_t PARALLEL_MIN = 1 << 15


cdef inline int _threads(Py_ssize_t n, int num_threads) noexcept nogil:
    return num_threads if n >= PARALLEL_MIN else 1


cdef double *_doubles(Py_ssize_t n) except NULL:
    cdef double *p = <double *> malloc((n if n > 0 else 1) * sizeof(double))
    if p == NULL:
        raise MemoryError()
    return p


def batch_norm_forward(const real[:, ::1] x, const real[::1] weight, const real[::1] bias,
                       real[::1] running_mean, real[::1] running_var, bint update_running,
                       bint training, double momentum, double eps, real[:, ::1] out,
                       real[::1] mean, real[::1] invstd, int num_threads):
    """Training: the batch's mean and invstd (biased variance, two passes) into mean and
    invstd, the running statistics moved towards them (unbiased variance) when
    update_running, then out. Evaluation: mean and invstd from the running statistics."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], blocks = (c + COLUMN_BLOCK - 1) // COLUMN_BLOCK
    cdef Py_ssize_t i, j, block, j0, j1
    cdef int threads = _threads(n * c, num_threads)
    cdef double *col_mean = _doubles(c)
    cdef double *col_scale = _doubles(c)  # invstd * weight
    cdef double *col_var = _doubles(c)
    cdef double d, unbiased
    try:
        with nogil:
            if training:
                for block in prange(blocks, num_threads=threads, schedule="static"):
                    j0 = block * COLUMN_BLOCK
                    j1 = min(j0 + COLUMN_BLOCK, c)
                    for j in range(j0, j1):
                        col_mean[j] = 0.0
                        col_var[j] = 0.0
                    for i in range(n):
                        for j in range(j0, j1):
                            col_mean[j] += x[i, j]
                    for j in range(j0, j1):
                        col_mean[j] /= n
                    for i in range(n):
                        for j in range(j0, j1):
                            d = x[i, j] - col_mean[j]
                            col_var[j] += d * d
                unbiased = n / (n - 1.0)
                for j in range(c):
                    col_var[j] /= n
                    d = 1.0 / sqrt(col_var[j] + eps)
                    mean[j] = <real> col_mean[j]
                    invstd[j] = <real> d
                    col_scale[j] = d * weight[j]
                    if update_running:
                        running_mean[j] = <real> ((1.0 - momentum) * running_mean[j] + momentum * mean[j])
                        running_var[j] = <real> ((1.0 - momentum) * running_var[j] + momentum * col_var[j] * unbiased)
            else:
                for j in range(c):
                    mean[j] = running_mean[j]
                    invstd[j] = <real> (1.0 / sqrt(<double> running_var[j] + eps))
                    col_mean[j] = mean[j]
                    col_scale[j] = (<double> invstd[j]) * weight[j]
            for i in prange(n, num_threads=threads, schedule="static"):
                for j in range(c):
                    out[i, j] = <real> ((x[i, j] - col_mean[j]) * col_scale[j] + bias[j])
    finally:
        free(col_mean)
        free(col_scale)
        free(col_var)


def batch_norm_backward(const real[:, ::1] x, const real[:, ::1] grad_out, const real[::1] weight,
                        const real[::1] mean, const real[::1] invstd, bint training,
                        real[:, ::1] dx, real[::1] dweight, real[::1] dbias, int num_threads):
    """dbias = column sums of g, dweight = of g * xhat; dx through the batch statistics
    (training) or through fixed ones."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], blocks = (c + COLUMN_BLOCK - 1) // COLUMN_BLOCK
    cdef Py_ssize_t i, j, block, j0, j1
    cdef int threads = _threads(n * c, num_threads)
    cdef double *sum_g = _doubles(c)
    cdef double *sum_g_xhat = _doubles(c)
    cdef double *scale = _doubles(c)
    cdef double g, xhat
    try:
        with nogil:
            for block in prange(blocks, num_threads=threads, schedule="static"):
                j0 = block * COLUMN_BLOCK
                j1 = min(j0 + COLUMN_BLOCK, c)
                for j in range(j0, j1):
                    sum_g[j] = 0.0
                    sum_g_xhat[j] = 0.0
                for i in range(n):
                    for j in range(j0, j1):
                        g = grad_out[i, j]
                        sum_g[j] += g
                        sum_g_xhat[j] += g * ((x[i, j] - <double> mean[j]) * invstd[j])
            for j in range(c):
                dbias[j] = <real> sum_g[j]
                dweight[j] = <real> sum_g_xhat[j]
                scale[j] = (<double> weight[j]) * invstd[j]
                sum_g[j] /= n
                sum_g_xhat[j] /= n
            if training:
                for i in prange(n, num_threads=threads, schedule="static"):
                    for j in range(c):
                        xhat = (x[i, j] - <double> mean[j]) * invstd[j]
                        dx[i, j] = <real> (scale[j] * (grad_out[i, j] - sum_g[j] - xhat * sum_g_xhat[j]))
            else:
                for i in prange(n, num_threads=threads, schedule="static"):
                    for j in range(c):
                        dx[i, j] = <real> (scale[j] * grad_out[i, j])
    finally:
        free(sum_g)
        free(sum_g_xhat)
        free(scale)


def layer_norm_forward(const real[:, ::1] x, const real[::1] weight, const real[::1] bias, double eps,
                       real[:, ::1] out, real[::1] mean, real[::1] invstd, int num_threads):
    """Per row: mean, biased variance (two passes), invstd, then the normalised row."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], i, j
    cdef double total, squares, d, row_mean, row_invstd
    with nogil:
        for i in prange(n, num_threads=_threads(n * c, num_threads), schedule="static"):
            total = 0.0
            for j in range(c):
                total = total + x[i, j]
            row_mean = total / c
            squares = 0.0
            for j in range(c):
                d = x[i, j] - row_mean
                squares = squares + d * d
            row_invstd = 1.0 / sqrt(squares / c + eps)
            mean[i] = <real> row_mean
            invstd[i] = <real> row_invstd
            for j in range(c):
                out[i, j] = <real> ((x[i, j] - row_mean) * row_invstd * weight[j] + bias[j])


def layer_norm_backward(const real[:, ::1] x, const real[:, ::1] grad_out, const real[::1] weight,
                        const real[::1] mean, const real[::1] invstd, real[:, ::1] dx,
                        real[::1] dweight, real[::1] dbias, int num_threads):
    """dx row by row (its two row means of dxhat and dxhat * xhat, dxhat = g * weight);
    then dweight and dbias, column sums, by blocks of columns."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], blocks = (c + COLUMN_BLOCK - 1) // COLUMN_BLOCK
    cdef Py_ssize_t i, j, block, j0, j1
    cdef int threads = _threads(n * c, num_threads)
    cdef double row_mean, row_invstd, xhat, dxhat, mean_dxhat, mean_dxhat_xhat, g
    cdef double *sum_g = _doubles(c)
    cdef double *sum_g_xhat = _doubles(c)
    try:
        with nogil:
            for i in prange(n, num_threads=threads, schedule="static"):
                row_mean = mean[i]
                row_invstd = invstd[i]
                mean_dxhat = 0.0
                mean_dxhat_xhat = 0.0
                for j in range(c):
                    dxhat = (<double> grad_out[i, j]) * weight[j]
                    mean_dxhat = mean_dxhat + dxhat
                    mean_dxhat_xhat = mean_dxhat_xhat + dxhat * ((x[i, j] - row_mean) * row_invstd)
                mean_dxhat = mean_dxhat / c
                mean_dxhat_xhat = mean_dxhat_xhat / c
                for j in range(c):
                    xhat = (x[i, j] - row_mean) * row_invstd
                    dx[i, j] = <real> (row_invstd * ((<double> grad_out[i, j]) * weight[j] - mean_dxhat
                                                     - xhat * mean_dxhat_xhat))
            for block in prange(blocks, num_threads=threads, schedule="static"):
                j0 = block * COLUMN_BLOCK
                j1 = min(j0 + COLUMN_BLOCK, c)
                for j in range(j0, j1):
                    sum_g[j] = 0.0
                    sum_g_xhat[j] = 0.0
                for i in range(n):
                    row_mean = mean[i]
                    row_invstd = invstd[i]
                    for j in range(j0, j1):
                        g = grad_out[i, j]
                        sum_g[j] += g
                        sum_g_xhat[j] += g * ((x[i, j] - row_mean) * row_invstd)
            for j in range(c):
                dbias[j] = <real> sum_g[j]
                dweight[j] = <real> sum_g_xhat[j]
    finally:
        free(sum_g)
        free(sum_g_xhat)
