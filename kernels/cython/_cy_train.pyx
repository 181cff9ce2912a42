"""The fused training step of the "cython" backend.

One call runs a whole optimisation step of an MLP (Linear layers, each followed by an
elementwise activation; the last layer's output is the logits): forward, fused
softmax-cross-entropy, backward and the optimizer update of every parameter, with the GIL
released and nothing allocated. Activations, gradients and the two backward buffers are
preallocated for the largest batch.

The arithmetic is that of the separate kernels: the same GEMM and epilogues (gemm.pxd)
and the same update rules (update_rules.pxd), so a step equals the layer-by-layer path
to round-off. Layer l's weights are updated as soon as the gradient flowing to layer l-1
has been computed from them, which is the last time the step reads them.

Arguments are validated by nnkern.engine before this module is reached.
"""

from libc.math cimport exp, log
from libc.stdint cimport int64_t

from gemm cimport (nnk_gemm_s, nnk_gemm_d, nnk_epilogue_s, nnk_epilogue_d,
                   nnk_act_block_s, nnk_act_block_d, NNK_IDENTITY)
from update_rules cimport real, apply_update, add_weight_decay

cdef enum:
    MAX_LAYERS = 64


cdef struct LayerPlan:
    Py_ssize_t fan_in, fan_out
    int act
    double slope
    # The activation's derivative needs its input (gelu, step, leaky_relu with slope <= 0):
    # the pre-activation is kept in z. Otherwise act' is read from the output h.
    bint keep_preact
    void *w
    void *b
    void *gw
    void *gb
    void *z
    void *h
    void *w_state0
    void *w_state1
    void *b_state0
    void *b_state1


cdef struct StepPlan:
    int n_layers
    int rule
    double lr, a, b, eps, weight_decay
    long t
    int num_threads
    void *delta0
    void *delta1
    LayerPlan layers[MAX_LAYERS]


cdef inline int _gemm(int trans_a, int trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      const real *a, Py_ssize_t lda, const real *b, Py_ssize_t ldb,
                      real *c, Py_ssize_t ldc, const real *bias, int act, double slope,
                      const real *grad_src, Py_ssize_t ld_grad_src, bint with_epilogue,
                      int num_threads) noexcept nogil:
    cdef nnk_epilogue_s ep_s
    cdef nnk_epilogue_d ep_d
    if real is float:
        ep_s.bias = bias
        ep_s.act = act
        ep_s.slope = <float>slope
        ep_s.grad_src = grad_src
        ep_s.ld_grad_src = ld_grad_src
        return nnk_gemm_s(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc,
                          &ep_s if with_epilogue else NULL, num_threads)
    else:
        ep_d.bias = bias
        ep_d.act = act
        ep_d.slope = slope
        ep_d.grad_src = grad_src
        ep_d.ld_grad_src = ld_grad_src
        return nnk_gemm_d(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc,
                          &ep_d if with_epilogue else NULL, num_threads)


cdef inline double _softmax_cross_entropy(const real *logits, const int64_t *labels,
                                          Py_ssize_t rows, Py_ssize_t cols, real *delta,
                                          Py_ssize_t *correct) noexcept nogil:
    """Mean cross entropy of the rows' softmax against the labels; delta = (softmax -
    onehot) / rows; correct = how many rows have their label as the (first) maximum."""
    cdef Py_ssize_t i, j, best
    cdef double loss = 0.0, total, inv_rows = 1.0 / rows, scale
    cdef real row_max
    cdef const real *z
    cdef real *d
    correct[0] = 0
    for i in range(rows):
        z = logits + i * cols
        d = delta + i * cols
        row_max = z[0]
        best = 0
        for j in range(1, cols):
            if z[j] > row_max:
                row_max = z[j]
                best = j
        total = 0.0
        for j in range(cols):
            d[j] = <real>exp(z[j] - row_max)
            total += d[j]
        loss += row_max + log(total) - z[labels[i]]
        scale = inv_rows / total
        for j in range(cols):
            d[j] = <real>(d[j] * scale)
        d[labels[i]] -= <real>inv_rows
        if best == labels[i]:
            correct[0] += 1
    return loss * inv_rows


cdef inline void _column_sums(const real *x, Py_ssize_t rows, Py_ssize_t cols, real *out) noexcept nogil:
    cdef Py_ssize_t i, j
    for j in range(cols):
        out[j] = 0
    for i in range(rows):
        for j in range(cols):
            out[j] += x[i * cols + j]


cdef inline void _update(StepPlan *plan, real *p, real *g, void *s0, void *s1, Py_ssize_t n) noexcept nogil:
    if plan.weight_decay != 0.0:
        add_weight_decay(g, p, n, plan.weight_decay)
    apply_update(plan.rule, p, g, <real *>s0, <real *>s1, n, plan.lr, plan.a, plan.b, plan.eps,
                 plan.t, plan.num_threads)


cdef int _step(StepPlan *plan, const real *x, const int64_t *labels, Py_ssize_t rows,
               double *loss, Py_ssize_t *correct) noexcept nogil:
    cdef int l, nt = plan.num_threads
    cdef LayerPlan *layer
    cdef LayerPlan *below
    cdef const real *inp = x
    cdef real *out
    cdef real *delta = <real *>plan.delta0
    cdef real *spare = <real *>plan.delta1
    cdef real *swap
    cdef const real *src

    for l in range(plan.n_layers):  # forward: h = act(inp @ W + b), fused in the GEMM
        layer = &plan.layers[l]
        out = <real *>(layer.z if layer.keep_preact else layer.h)
        if _gemm(0, 0, rows, layer.fan_out, layer.fan_in, inp, layer.fan_in, <real *>layer.w,
                 layer.fan_out, out, layer.fan_out, <real *>layer.b,
                 NNK_IDENTITY if layer.keep_preact else layer.act, layer.slope,
                 <real *>NULL, 0, True, nt) != 0:
            return -1
        if layer.keep_preact:
            if real is float:
                nnk_act_block_s(layer.act, <float>layer.slope, out, layer.fan_out,
                                <float *>layer.h, layer.fan_out, rows, layer.fan_out)
            else:
                nnk_act_block_d(layer.act, layer.slope, out, layer.fan_out,
                                <double *>layer.h, layer.fan_out, rows, layer.fan_out)
        inp = <real *>layer.h

    layer = &plan.layers[plan.n_layers - 1]
    loss[0] = _softmax_cross_entropy(<real *>layer.h, labels, rows, layer.fan_out, delta, correct)

    for l in range(plan.n_layers - 1, -1, -1):  # backward, updating each layer once used
        layer = &plan.layers[l]
        inp = x if l == 0 else <real *>plan.layers[l - 1].h
        # dW = inp.T @ delta; db = column sums of delta
        if _gemm(1, 0, layer.fan_in, layer.fan_out, rows, inp, layer.fan_in, delta,
                 layer.fan_out, <real *>layer.gw, layer.fan_out, <real *>NULL, NNK_IDENTITY,
                 0.0, <real *>NULL, 0, False, nt) != 0:
            return -1
        _column_sums(delta, rows, layer.fan_out, <real *>layer.gb)
        if l > 0:  # delta for the layer below: (delta @ W.T) * act'(its z or h)
            below = &plan.layers[l - 1]
            src = <real *>(below.z if below.keep_preact else below.h)
            if _gemm(0, 1, rows, layer.fan_in, layer.fan_out, delta, layer.fan_out,
                     <real *>layer.w, layer.fan_out, spare, layer.fan_in, <real *>NULL,
                     below.act, below.slope, src, layer.fan_in, True, nt) != 0:
                return -1
            swap = delta
            delta = spare
            spare = swap
        _update(plan, <real *>layer.w, <real *>layer.gw, layer.w_state0, layer.w_state1,
                layer.fan_in * layer.fan_out)
        _update(plan, <real *>layer.b, <real *>layer.gb, layer.b_state0, layer.b_state1,
                layer.fan_out)
    return 0


cdef void *_address(object array):
    """The data pointer of a C-contiguous array (None: NULL)."""
    if array is None:
        return NULL
    return <void *><size_t>array.__array_interface__["data"][0]


cdef class FusedMLPStep:
    """A preallocated training step for one model, optimizer and largest batch size.

    ``layers``: (W, b, gW, gb, act_code, slope, keep_preact, h, z, w_state, b_state) per
    layer, arrays C-contiguous of one dtype, h (and z where kept) of shape
    (max_rows, fan_out), the states tuples of 0-2 arrays; ``delta0``/``delta1``: two
    buffers of max_rows * max width. The object keeps every array alive.
    """

    cdef StepPlan plan
    cdef object arrays
    cdef bint is_double
    cdef Py_ssize_t max_rows

    def __init__(self, layers, delta0, delta1, int rule, bint is_double, Py_ssize_t max_rows):
        if not 0 < len(layers) <= MAX_LAYERS:
            raise ValueError(f"FusedMLPStep: {len(layers)} layers, supported 1..{MAX_LAYERS}")
        self.arrays = (layers, delta0, delta1)
        self.is_double = is_double
        self.max_rows = max_rows
        self.plan.n_layers = len(layers)
        self.plan.rule = rule
        self.plan.delta0 = _address(delta0)
        self.plan.delta1 = _address(delta1)
        cdef LayerPlan *lp
        for i, (w, b, gw, gb, act, slope, keep_preact, h, z, w_state, b_state) in enumerate(layers):
            lp = &self.plan.layers[i]
            lp.fan_in, lp.fan_out = w.shape
            lp.act = act
            lp.slope = slope
            lp.keep_preact = keep_preact
            lp.w, lp.b, lp.gw, lp.gb = _address(w), _address(b), _address(gw), _address(gb)
            lp.h, lp.z = _address(h), _address(z)
            w_state = tuple(w_state) + (None, None)
            b_state = tuple(b_state) + (None, None)
            lp.w_state0, lp.w_state1 = _address(w_state[0]), _address(w_state[1])
            lp.b_state0, lp.b_state1 = _address(b_state[0]), _address(b_state[1])

    def step(self, x, const int64_t[::1] labels, double lr, double a, double b, double eps,
             double weight_decay, long t, int num_threads):
        """One step on the batch (x, labels): returns (mean loss, number of rows whose
        largest logit is their label). x: (rows, fan_in) C-contiguous, rows <= max_rows."""
        cdef Py_ssize_t rows = labels.shape[0], correct = 0
        cdef double loss = 0.0
        cdef int status
        cdef const float[:, ::1] xs
        cdef const double[:, ::1] xd
        if rows == 0 or rows > self.max_rows:
            raise ValueError(f"FusedMLPStep: batch of {rows} rows, expected 1..{self.max_rows}")
        self.plan.lr, self.plan.a, self.plan.b, self.plan.eps = lr, a, b, eps
        self.plan.weight_decay, self.plan.t, self.plan.num_threads = weight_decay, t, num_threads
        if self.is_double:
            xd = x
            with nogil:
                status = _step(&self.plan, &xd[0, 0], &labels[0], rows, &loss, &correct)
        else:
            xs = x
            with nogil:
                status = _step(&self.plan, &xs[0, 0], &labels[0], rows, &loss, &correct)
        if status != 0:
            raise MemoryError("FusedMLPStep: a GEMM work buffer could not be allocated")
        return loss, correct
