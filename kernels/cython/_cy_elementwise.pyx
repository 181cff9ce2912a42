"""Activations, their gradients, row softmax and bias gradients of the "cython" backend.

The activation math lives in nnk_act.h, shared with the GEMM epilogue. Large arrays are
split into chunks across OpenMP threads; small ones run on one thread, because starting
a parallel region costs more than the pass it would split. Arguments are validated by
nnkern.ops (C-contiguous, one dtype, matching shapes); activations take flat views.
"""

from cython.parallel cimport prange
from libc.math cimport exp, expf

from gemm cimport (
    nnk_act_block_d,
    nnk_act_block_s,
    nnk_act_grad_block_d,
    nnk_act_grad_block_s,
    nnk_grad_needs_output,
)

ctypedef fused real:
    float
    double

# Elements per parallel work item, and the size below which one thread does the pass.
cdef Py_ssize_t CHUNK = 8192
cdef Py_ssize_t PARALLEL_MIN = 1 << 15


cdef inline int _threads(Py_ssize_t n, int num_threads) noexcept nogil:
    return num_threads if n >= PARALLEL_MIN else 1


def activation(int act, const real[::1] x, double slope, real[::1] out, int num_threads):
    """out = act(x), elementwise over flat arrays."""
    cdef Py_ssize_t n = x.shape[0], chunks = (n + CHUNK - 1) // CHUNK, c, start
    with nogil:
        for c in prange(chunks, num_threads=_threads(n, num_threads), schedule="static"):
            start = c * CHUNK
            if real is float:
                nnk_act_block_s(act, <float>slope, &x[start], 0, &out[start], 0, 1,
                                min(CHUNK, n - start))
            else:
                nnk_act_block_d(act, slope, &x[start], 0, &out[start], 0, 1, min(CHUNK, n - start))


def activation_grad(int act, const real[::1] src, const real[::1] grad_out, double slope,
                    real[::1] out, int num_threads):
    """out = grad_out * act'(.), from src: the forward output for the activations in
    GRAD_NEEDS_OUTPUT (sigmoid, tanh), the input otherwise."""
    cdef Py_ssize_t n = src.shape[0], chunks = (n + CHUNK - 1) // CHUNK, c, start
    cdef bint from_y = nnk_grad_needs_output(act)
    with nogil:
        for c in prange(chunks, num_threads=_threads(n, num_threads), schedule="static"):
            start = c * CHUNK
            if real is float:
                nnk_act_grad_block_s(act, <float>slope, NULL if from_y else &src[start], 0,
                                     &src[start] if from_y else NULL, 0, &grad_out[start], 0,
                                     &out[start], 0, 1, min(CHUNK, n - start))
            else:
                nnk_act_grad_block_d(act, slope, NULL if from_y else &src[start], 0,
                                     &src[start] if from_y else NULL, 0, &grad_out[start], 0,
                                     &out[start], 0, 1, min(CHUNK, n - start))


def softmax(const real[:, ::1] x, real[:, ::1] out, int num_threads):
    """Row softmax, the row maximum subtracted first; the row sum is accumulated in double."""
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1], i, j
    cdef real row_max
    cdef double total, scale
    with nogil:
        for i in prange(rows, num_threads=_threads(rows * cols, num_threads), schedule="static"):
            row_max = x[i, 0]
            for j in range(1, cols):
                if x[i, j] > row_max:
                    row_max = x[i, j]
            total = 0.0
            for j in range(cols):
                if real is float:  # float32 exponentials in float32, as the reference
                    out[i, j] = expf(x[i, j] - row_max)
                else:
                    out[i, j] = exp(x[i, j] - row_max)
                total = total + out[i, j]
            scale = 1.0 / total
            for j in range(cols):
                out[i, j] = <real>(out[i, j] * scale)


# Columns summed per work item in bias_grad: the double accumulators of a block stay in L1.
cdef enum:
    BIAS_BLOCK = 256


cdef void _column_sums(const real[:, ::1] dy, Py_ssize_t j0, Py_ssize_t width,
                       real[::1] out) noexcept nogil:
    cdef double acc[BIAS_BLOCK]
    cdef Py_ssize_t i, j
    for j in range(width):
        acc[j] = 0.0
    for i in range(dy.shape[0]):
        for j in range(width):
            acc[j] += dy[i, j0 + j]
    for j in range(width):
        out[j0 + j] = <real>acc[j]


def bias_grad(const real[:, ::1] dy, real[::1] out, int num_threads):
    """out[j] = sum_i dy[i, j], accumulated in double, one block of columns per work item."""
    cdef Py_ssize_t cols = dy.shape[1], blocks = (cols + BIAS_BLOCK - 1) // BIAS_BLOCK, blk
    with nogil:
        for blk in prange(blocks, num_threads=_threads(dy.shape[0] * cols, num_threads),
                          schedule="static"):
            _column_sums(dy, blk * BIAS_BLOCK, min(BIAS_BLOCK, cols - blk * BIAS_BLOCK), out)
