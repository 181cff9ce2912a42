# The C-level API of the Cython backend's GEMM and activations (nnk_gemm.h, nnk_act.h),
# for any .pyx module to cimport: `from gemm cimport *` or named imports. All nogil.
#
#   nnk_gemm_{s,d}(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, epilogue, num_threads)
#       c (m x n, row stride ldc) = op(a) @ op(b), then the epilogue (NULL: none).
#   nnk_pack_b_{s,d}(trans_b, k, n, b, ldb, dst, num_threads)
#       op(b) packed once into dst (nnk_packed_b_size_{s,d}(k, n) elements, 64-byte aligned,
#       e.g. from nnk_alloc), then reused by
#   nnk_gemm_packed_b_{s,d}(trans_a, m, n, k, a, lda, packed_b, c, ldc, epilogue, num_threads)
#   nnk_gemm_team_{s,d}(team, thread, slot, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc,
#                       epilogue)
#       the same product, called by every thread of a team running under nnk_team_run
#       (nnk_team.h), split over it; the team's shared buffer `slot` (nnk_team_shared_bytes_{s,d}
#       of m and k) lets threads pack A together.
# The gemm functions return 0, or -1 when a work buffer could not be allocated.
#   nnk_sparse_*_{s,d}: the first layer of a network whose input is mostly zeros, touching
#       only the nonzeros (index the rows, then forward; index the columns, then the weight
#       gradient); see nnk_sparse_impl.h.
#
# Epilogue (made by nnk_epilogue_of_{s,d}): bias (or NULL) added per column, then activation
# act; or, when grad_src is not NULL, c *= act'(grad_src) (the backward mask, grad_src being
# the activation's input, or its output for the activations nnk_grad_needs_output names).
# block_done, when set, is called with each finished block of c (see nnk_gemm.h).

from libc.stdint cimport int32_t


cdef extern from "nnk_act.h" nogil:
    enum:
        NNK_IDENTITY
        NNK_SIGMOID
        NNK_TANH
        NNK_RELU
        NNK_LEAKY_RELU
        NNK_GELU
        NNK_GELU_TANH
        NNK_STEP
    int nnk_grad_needs_output(int act)
    void nnk_act_block_s(int act, float slope, const float *x, Py_ssize_t ldx, float *y,
                         Py_ssize_t ldy, Py_ssize_t rows, Py_ssize_t cols)
    void nnk_act_block_d(int act, double slope, const double *x, Py_ssize_t ldx, double *y,
                         Py_ssize_t ldy, Py_ssize_t rows, Py_ssize_t cols)
    void nnk_act_grad_block_s(int act, float slope, const float *x, Py_ssize_t ldx,
                              const float *y, Py_ssize_t ldy, const float *g, Py_ssize_t ldg,
                              float *out, Py_ssize_t ldo, Py_ssize_t rows, Py_ssize_t cols)
    void nnk_act_grad_block_d(int act, double slope, const double *x, Py_ssize_t ldx,
                              const double *y, Py_ssize_t ldy, const double *g, Py_ssize_t ldg,
                              double *out, Py_ssize_t ldo, Py_ssize_t rows, Py_ssize_t cols)


cdef extern from "nnk_team.h" nogil:
    ctypedef struct nnk_team:
        int size
        void *shared[2]
        size_t shared_bytes
    void nnk_team_barrier(nnk_team *team)
    void nnk_flag_set(int *flag)
    int nnk_claim(int *counter)
    void nnk_partition(Py_ssize_t units, int parts, int part, Py_ssize_t *lo, Py_ssize_t *hi)


cdef extern from "nnk_gemm.h" nogil:
    enum:
        NNK_TEAM_PARALLEL_MIN_MNK
    const char *nnk_gemm_variant()
    ctypedef void (*nnk_team_fn)(nnk_team *team, int thread, void *context) noexcept nogil
    void nnk_team_run(nnk_team *team, int threads, nnk_team_fn fn, void *context)
    ctypedef struct nnk_epilogue_s:
        const float *bias
        int act
        float slope
        const float *grad_src
        Py_ssize_t ld_grad_src
        void (*block_done)(void *context, float *block, Py_ssize_t ldc, Py_ssize_t rows,
                           Py_ssize_t cols) noexcept nogil
        void *block_context
    ctypedef struct nnk_epilogue_d:
        const double *bias
        int act
        double slope
        const double *grad_src
        Py_ssize_t ld_grad_src
        void (*block_done)(void *context, double *block, Py_ssize_t ldc, Py_ssize_t rows,
                           Py_ssize_t cols) noexcept nogil
        void *block_context
    nnk_epilogue_s nnk_epilogue_of_s(const float *bias, int act, float slope,
                                     const float *grad_src, Py_ssize_t ld_grad_src)
    nnk_epilogue_d nnk_epilogue_of_d(const double *bias, int act, double slope,
                                     const double *grad_src, Py_ssize_t ld_grad_src)

    void *nnk_alloc(size_t nbytes)

    int nnk_gemm_s(int trans_a, int trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                   const float *a, Py_ssize_t lda, const float *b, Py_ssize_t ldb,
                   float *c, Py_ssize_t ldc, const nnk_epilogue_s *ep, int num_threads)
    int nnk_gemm_d(int trans_a, int trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                   const double *a, Py_ssize_t lda, const double *b, Py_ssize_t ldb,
                   double *c, Py_ssize_t ldc, const nnk_epilogue_d *ep, int num_threads)

    size_t nnk_packed_b_size_s(Py_ssize_t k, Py_ssize_t n)
    size_t nnk_packed_b_size_d(Py_ssize_t k, Py_ssize_t n)
    void nnk_pack_b_s(int trans_b, Py_ssize_t k, Py_ssize_t n, const float *b, Py_ssize_t ldb,
                      float *dst, int num_threads)
    void nnk_pack_b_d(int trans_b, Py_ssize_t k, Py_ssize_t n, const double *b, Py_ssize_t ldb,
                      double *dst, int num_threads)
    int nnk_gemm_packed_b_s(int trans_a, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                            const float *a, Py_ssize_t lda, const float *b_packed,
                            float *c, Py_ssize_t ldc, const nnk_epilogue_s *ep, int num_threads)
    int nnk_gemm_packed_b_d(int trans_a, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                            const double *a, Py_ssize_t lda, const double *b_packed,
                            double *c, Py_ssize_t ldc, const nnk_epilogue_d *ep, int num_threads)

    int nnk_gemm_team_s(nnk_team *team, int thread, int slot, int trans_a, int trans_b, Py_ssize_t m,
                        Py_ssize_t n, Py_ssize_t k, const float *a, Py_ssize_t lda,
                        const float *b, Py_ssize_t ldb, float *c, Py_ssize_t ldc,
                        const nnk_epilogue_s *ep)
    int nnk_gemm_team_d(nnk_team *team, int thread, int slot, int trans_a, int trans_b, Py_ssize_t m,
                        Py_ssize_t n, Py_ssize_t k, const double *a, Py_ssize_t lda,
                        const double *b, Py_ssize_t ldb, double *c, Py_ssize_t ldc,
                        const nnk_epilogue_d *ep)
    # the sparse-input first layer (nnk_sparse_impl.h)
    void nnk_sparse_index_rows_s(const float *x, Py_ssize_t ldx, Py_ssize_t k, Py_ssize_t r0,
                                 Py_ssize_t r1, int32_t *cols, int32_t *row_count, Py_ssize_t chunk,
                                 int32_t *splits)
    void nnk_sparse_index_rows_d(const double *x, Py_ssize_t ldx, Py_ssize_t k, Py_ssize_t r0,
                                 Py_ssize_t r1, int32_t *cols, int32_t *row_count, Py_ssize_t chunk,
                                 int32_t *splits)
    void nnk_sparse_index_columns(Py_ssize_t m, Py_ssize_t k, const int32_t *cols, const int32_t *splits,
                                  Py_ssize_t chunk, Py_ssize_t s, int32_t *rows_of, int32_t *col_count)
    void nnk_sparse_linear_s(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n, Py_ssize_t k, const float *x,
                             Py_ssize_t ldx, const int32_t *cols, const int32_t *row_count,
                             const float *w, Py_ssize_t ldw, const float *bias, int act, float slope,
                             float *out, Py_ssize_t ldo)
    void nnk_sparse_linear_d(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n, Py_ssize_t k, const double *x,
                             Py_ssize_t ldx, const int32_t *cols, const int32_t *row_count,
                             const double *w, Py_ssize_t ldw, const double *bias, int act,
                             double slope, double *out, Py_ssize_t ldo)
    void nnk_sparse_weight_grad_s(Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t m, Py_ssize_t n,
                                  const float *x, Py_ssize_t ldx, const int32_t *rows_of,
                                  const int32_t *col_count, const float *delta, Py_ssize_t ld_delta,
                                  float *gw, Py_ssize_t ldg, const nnk_epilogue_s *ep)
    void nnk_sparse_weight_grad_d(Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t m, Py_ssize_t n,
                                  const double *x, Py_ssize_t ldx, const int32_t *rows_of,
                                  const int32_t *col_count, const double *delta, Py_ssize_t ld_delta,
                                  double *gw, Py_ssize_t ldg, const nnk_epilogue_d *ep)
    size_t nnk_team_shared_bytes_s(Py_ssize_t m, Py_ssize_t k)
    size_t nnk_team_shared_bytes_d(Py_ssize_t m, Py_ssize_t k)
