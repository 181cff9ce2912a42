"""Matrix products of the "cython" backend: matmul and the fused linear layer.

Thin nogil wrappers over the packed, register-tiled GEMM in nnk_gemm.h (see gemm.pxd for
its C-level API). Besides the raw kernels of nnkern.backends, this module offers what a
training step can reuse: ``PackedB`` (an operand packed once, e.g. the weights between two
updates), products with it, and the product fused with an activation's backward mask.
Arguments are validated by nnkern.ops (C-contiguous, one dtype, shapes that agree).
"""

from libc.stdlib cimport free

from gemm cimport (
    nnk_alloc,
    nnk_epilogue_d,
    nnk_epilogue_of_d,
    nnk_epilogue_of_s,
    nnk_epilogue_s,
    nnk_gemm_d,
    nnk_gemm_packed_b_d,
    nnk_gemm_packed_b_s,
    nnk_gemm_s,
    nnk_gemm_variant,
    nnk_grad_needs_output,
    nnk_pack_b_d,
    nnk_pack_b_s,
    nnk_packed_b_size_d,
    nnk_packed_b_size_s,
)

ctypedef fused real:
    float
    double


def gemm_variant() -> str:
    """The GEMM variant this CPU runs and how it was chosen, e.g. "AVX-512 tiles, portable
    build (chosen at run time)"."""
    return nnk_gemm_variant().decode()


cdef inline void _check(int status) except *:
    if status != 0:
        raise MemoryError("nnkern GEMM: could not allocate its packing buffers")


def matmul(const real[:, ::1] a, const real[:, ::1] b, bint trans_a, bint trans_b,
           real[:, ::1] out, int num_threads):
    """out = op(a) @ op(b); op transposes where trans_* is set (the packing reads it so)."""
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef int status
    with nogil:
        if real is float:
            status = nnk_gemm_s(trans_a, trans_b, m, n, k, &a[0, 0], a.shape[1], &b[0, 0],
                                b.shape[1], &out[0, 0], n, NULL, num_threads)
        else:
            status = nnk_gemm_d(trans_a, trans_b, m, n, k, &a[0, 0], a.shape[1], &b[0, 0],
                                b.shape[1], &out[0, 0], n, NULL, num_threads)
    _check(status)


def linear(const real[:, ::1] x, const real[:, ::1] w, const real[::1] bias, int act,
           double slope, real[:, ::1] out, int num_threads):
    """out = act(x @ w + bias) in one GEMM: bias and activation are its epilogue."""
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1], k = x.shape[1]
    cdef int status
    cdef nnk_epilogue_s ep_s
    cdef nnk_epilogue_d ep_d
    with nogil:
        if real is float:
            ep_s = nnk_epilogue_of_s(&bias[0], act, <float>slope, NULL, 0)
            status = nnk_gemm_s(False, False, m, n, k, &x[0, 0], k, &w[0, 0], n, &out[0, 0], n,
                                &ep_s, num_threads)
        else:
            ep_d = nnk_epilogue_of_d(&bias[0], act, slope, NULL, 0)
            status = nnk_gemm_d(False, False, m, n, k, &x[0, 0], k, &w[0, 0], n, &out[0, 0], n,
                                &ep_d, num_threads)
    _check(status)


def matmul_act_grad(const real[:, ::1] a, const real[:, ::1] b, bint trans_a, bint trans_b,
                    int act, const real[:, ::1] grad_src, double slope, real[:, ::1] out,
                    int num_threads):
    """out = (op(a) @ op(b)) * act'(grad_src): the backward pass through a linear layer
    and the activation before it (dY @ W.T times the mask) in one GEMM. grad_src is the
    activation's input, or its output for sigmoid and tanh (GRAD_NEEDS_OUTPUT)."""
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef int status
    cdef nnk_epilogue_s ep_s
    cdef nnk_epilogue_d ep_d
    with nogil:
        if real is float:
            ep_s = nnk_epilogue_of_s(NULL, act, <float>slope, &grad_src[0, 0], n)
            status = nnk_gemm_s(trans_a, trans_b, m, n, k, &a[0, 0], a.shape[1], &b[0, 0],
                                b.shape[1], &out[0, 0], n, &ep_s, num_threads)
        else:
            ep_d = nnk_epilogue_of_d(NULL, act, slope, &grad_src[0, 0], n)
            status = nnk_gemm_d(trans_a, trans_b, m, n, k, &a[0, 0], a.shape[1], &b[0, 0],
                                b.shape[1], &out[0, 0], n, &ep_d, num_threads)
    _check(status)


cdef class PackedB:
    """op(b) (k x n) packed once into the GEMM's panel layout, to be reused by
    ``matmul_packed`` / ``linear_packed`` until ``repack`` is called with new values (the
    weights of a layer change only at the optimizer update)."""

    cdef void *data
    cdef readonly Py_ssize_t k, n
    cdef readonly bint trans_b
    cdef readonly bint is_double

    def __cinit__(self, b, bint trans_b, int num_threads):
        self.data = NULL
        self.trans_b = trans_b
        self.is_double = b.dtype.itemsize == 8
        self.k, self.n = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
        cdef size_t count = (nnk_packed_b_size_d(self.k, self.n) if self.is_double
                             else nnk_packed_b_size_s(self.k, self.n))
        self.data = nnk_alloc(count * (8 if self.is_double else 4))
        if self.data == NULL:
            raise MemoryError("PackedB: could not allocate the packed operand")
        self.repack(b, num_threads)

    def __dealloc__(self):
        free(self.data)

    def repack(self, const real[:, ::1] b, int num_threads):
        """Pack b again (same shape, dtype and transpose flag as at construction)."""
        if (sizeof(real) == 8) != self.is_double:
            raise TypeError("PackedB.repack: b has another dtype than the packed operand")
        cdef Py_ssize_t k = b.shape[1] if self.trans_b else b.shape[0]
        cdef Py_ssize_t n = b.shape[0] if self.trans_b else b.shape[1]
        if k != self.k or n != self.n:
            raise ValueError("PackedB.repack: b has another shape than the packed operand")
        with nogil:
            if real is float:
                nnk_pack_b_s(self.trans_b, self.k, self.n, &b[0, 0], b.shape[1], <float *>self.data,
                             num_threads)
            else:
                nnk_pack_b_d(self.trans_b, self.k, self.n, &b[0, 0], b.shape[1], <double *>self.data,
                             num_threads)


def linear_packed(const real[:, ::1] a, PackedB b, bint trans_a, const real[::1] bias, int act,
                  double slope, real[:, ::1] out, int num_threads):
    """out = act(op(a) @ B + bias) with B packed beforehand; bias may be None and act
    NNK_IDENTITY (0) for a plain product."""
    # No nnkern.ops layer checks this entry point, so it guards its own memory accesses.
    if (sizeof(real) == 8) != b.is_double:
        raise TypeError("linear_packed: a and the packed operand differ in dtype")
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1], k = b.k
    if (a.shape[0] if trans_a else a.shape[1]) != k or (a.shape[1] if trans_a else a.shape[0]) != m:
        raise ValueError(f"linear_packed: cannot multiply a of shape ({a.shape[0]}x{a.shape[1]}) by the packed ({k}x{b.n})")
    if n != b.n or (bias is not None and bias.shape[0] != n):
        raise ValueError("linear_packed: out or bias does not match the packed operand's columns")
    cdef int status
    cdef nnk_epilogue_s ep_s
    cdef nnk_epilogue_d ep_d
    with nogil:
        if real is float:
            ep_s = nnk_epilogue_of_s(&bias[0] if bias is not None else NULL, act, <float>slope, NULL, 0)
            status = nnk_gemm_packed_b_s(trans_a, m, n, k, &a[0, 0], a.shape[1], <float *>b.data,
                                         &out[0, 0], n, &ep_s, num_threads)
        else:
            ep_d = nnk_epilogue_of_d(&bias[0] if bias is not None else NULL, act, slope, NULL, 0)
            status = nnk_gemm_packed_b_d(trans_a, m, n, k, &a[0, 0], a.shape[1], <double *>b.data,
                                         &out[0, 0], n, &ep_d, num_threads)
    _check(status)
