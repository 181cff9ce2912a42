"""Whole-vector kernels of the "cython" backend, for gradient clipping by global norm:
the sum of squares and the largest magnitude of a flat array (reductions in double), and
its in-place scaling. Large arrays are split in chunks across OpenMP threads, each
chunk reduced on its own and the partial results combined in chunk order, so a result
does not depend on the thread count. Arguments are validated by nnkern.ops (flat,
C-contiguous, nonempty).
"""

from cython.parallel cimport prange
from libc.math cimport NAN, fabs, isnan
from libc.stdlib cimport free, malloc

ctypedef fused real:
    float
    double

cdef Py_ssize_t CHUNK = 8192
cdef Py_ssize_t PARALLEL_MIN = 1 << 15


cdef inline int _threads(Py_ssize_t n, int num_threads) noexcept nogil:
    return num_threads if n >= PARALLEL_MIN else 1


cdef double *_partials(Py_ssize_t n) except NULL:
    cdef double *p = <double *> malloc(n * sizeof(double))
    if p == NULL:
        raise MemoryError()
    return p


def sum_squares(const real[::1] x, int num_threads):
    """sum(x * x), accumulated in double."""
    cdef Py_ssize_t n = x.shape[0], chunks = (n + CHUNK - 1) // CHUNK, c, i
    cdef double acc, total = 0.0, v
    cdef double *partial = _partials(chunks)
    try:
        with nogil:
            for c in prange(chunks, num_threads=_threads(n, num_threads), schedule="static"):
                acc = 0.0
                for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
                    v = x[i]
                    acc = acc + v * v
                partial[c] = acc
            for c in range(chunks):
                total += partial[c]
    finally:
        free(partial)
    return total


def max_abs(const real[::1] x, int num_threads):
    """max |x|; NaN when x holds a NaN (as NumPy's max)."""
    cdef Py_ssize_t n = x.shape[0], chunks = (n + CHUNK - 1) // CHUNK, c, i
    cdef double best, result = 0.0, v
    cdef double *partial = _partials(chunks)
    try:
        with nogil:
            for c in prange(chunks, num_threads=_threads(n, num_threads), schedule="static"):
                best = 0.0
                for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
                    v = fabs(x[i])
                    if not v <= best:  # true for a larger value and for NaN, which then stays
                        if isnan(best):
                            continue
                        best = v
                partial[c] = best
            for c in range(chunks):
                if isnan(partial[c]):
                    result = NAN
                    break
                if partial[c] > result:
                    result = partial[c]
    finally:
        free(partial)
    return result


def scale(real[::1] x, double alpha, int num_threads):
    """x *= alpha, in place (alpha rounded to x's dtype first, as NumPy multiplies)."""
    cdef Py_ssize_t n = x.shape[0], i
    cdef real factor = <real> alpha
    with nogil:
        for i in prange(n, num_threads=_threads(n, num_threads), schedule="static"):
            x[i] = x[i] * factor
