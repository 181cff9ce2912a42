"""The fused training step of the "cython" backend.

One call runs a whole optimisation step of an MLP (Linear layers, each followed by an
elementwise activation; the last layer's output z goes to the loss head): forward, the
loss and its gradient by z in one pass (the head: softmax cross entropy on integer labels,
or a float-target head, _float_head), backward and the optimizer update of every
parameter, with the GIL released and nothing allocated. Activations, gradients and the
two backward buffers are preallocated for the largest batch.

The arithmetic is that of the separate kernels: the same GEMM and epilogues (gemm.pxd)
and the same update rules (update_rules.pxd), so a step equals the layer-by-layer path
to round-off. Layer l's weights are updated as soon as the gradient flowing to layer l-1
has been computed from them, which is the last time the step reads them; the first layer's
(no gradient flows below it) inside its weight-gradient product, block by finished block
while the gradient is still in cache (the GEMM's block_done hook). Each bias is updated by
the thread that has just summed its columns of the gradient.

Sparse input: when most of x is zero (MNIST's pixels: 81%), the first layer's two products
with x, the forward and the weight gradient, run over x's nonzeros only (nnk_sparse_impl.h,
indexed once per step), with the same sums to round-off. When every later layer is small
(below the size a team splits), the thread that claims a chunk of rows carries it through
every layer and the loss in one phase (row chains): no barrier between the layers, and no
other core reads those rows' activations until the backward pass.

Threads: the whole step is one parallel region (nnk_team_run). Its threads split every
phase (each product's columns or rows, the bias sums' columns, the updates' elements)
and meet at a spinning barrier (nnk_team.h) after each phase, instead of opening a
region per product: at batch 64 a product takes 10-300 us, and waking sleeping threads
for each one cost as much as the second core gained. Layer l's update runs after the
barrier that ends its backward products, alongside the products of layer l-1. The sparse
first layer's two phases instead hand out small chunks of rows that each thread claims when
it is done with the last (nnk_claim), so a thread slowed by another process on its core
takes fewer.

Arguments are validated by nnkern.engine before this module is reached.
"""

from libc.float cimport DBL_EPSILON, FLT_EPSILON
from libc.math cimport exp, log
from libc.stdint cimport int32_t, int64_t

from libc.stdlib cimport free
from libc.string cimport memcpy
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from gemm cimport (nnk_gemm_s, nnk_gemm_d, nnk_gemm_team_s, nnk_gemm_team_d, nnk_epilogue_s, nnk_epilogue_d,
                   nnk_epilogue_of_s, nnk_epilogue_of_d,
                   nnk_act_block_s, nnk_act_block_d, NNK_IDENTITY, NNK_SIGMOID, nnk_team, nnk_team_run,
                   nnk_team_barrier, nnk_flag_set, nnk_claim, nnk_partition, nnk_alloc,
                   nnk_team_shared_bytes_s, nnk_team_shared_bytes_d, NNK_TEAM_PARALLEL_MIN_MNK,
                   nnk_sparse_index_rows_s, nnk_sparse_index_rows_d, nnk_sparse_index_columns,
                   nnk_sparse_linear_s, nnk_sparse_linear_d,
                   nnk_sparse_weight_grad_s, nnk_sparse_weight_grad_d)
from update_rules cimport (real, apply_update, nnk_update_s, nnk_update_d, nnk_update_constants_s,
                          nnk_update_constants_d, nnk_update_constants_for_s, nnk_update_constants_for_d,
                          RULE_SGD, RULE_MOMENTUM, RULE_ADAGRAD, RULE_RMSPROP, RULE_ADADELTA, RULE_ADAM, RULE_ADAMW,
                          RULE_NESTEROV)

# The update rules' codes as compiled (nnk_update.h's enum), which tests/test_tables.py
# compares with their one definition, nnkern.backends.UPDATE_RULE_CODES.
UPDATE_RULE_CODES = {"sgd": RULE_SGD, "momentum": RULE_MOMENTUM, "adagrad": RULE_ADAGRAD, "rmsprop": RULE_RMSPROP,
                     "adadelta": RULE_ADADELTA, "adam": RULE_ADAM, "adamw": RULE_ADAMW, "nesterov": RULE_NESTEROV}

# The loss heads, in the order of their one definition, nnkern.backends.OUTPUT_HEADS
# (tests/test_tables.py compares OUTPUT_HEAD_CODES with it).
cdef enum:
    HEAD_SOFTMAX_CROSS_ENTROPY = 0
    HEAD_IDENTITY_SQUARED = 1
    HEAD_LOGISTIC_LOG_LOSS = 2
    HEAD_SIGMOID_BCE = 3

OUTPUT_HEAD_CODES = {"softmax_cross_entropy": HEAD_SOFTMAX_CROSS_ENTROPY, "identity_squared": HEAD_IDENTITY_SQUARED,
                     "logistic_log_loss": HEAD_LOGISTIC_LOG_LOSS, "sigmoid_bce": HEAD_SIGMOID_BCE}

# BCELoss's clamp of its logs and of its gradient's denominator (nnkern.backends.numpy_backend.BCE_CLAMP)
cdef double BCE_CLAMP = 1e-12

cdef enum:
    MAX_LAYERS = 64
    # A parameter with fewer elements is updated by one thread (its owner) while the
    # others update other parameters.
    UPDATE_SPLIT_MIN = 1 << 12
    # The sparse first layer's work units, claimed by the threads as they go: rows of the
    # forward, rows of the weight gradient (columns of x, each chunk with its column lists).
    SPARSE_ROW_CHUNK = 8
    SPARSE_COLUMN_CHUNK = 64


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
    void *delta  # with row chains: the loss's gradient by this layer's output, max_rows x fan_out


cdef struct SparseInput:
    # The first layer's input x as index lists (nnk_sparse_impl.h): the nonzero columns of
    # each row (stride fan_in), where each row's list crosses every SPARSE_COLUMN_CHUNK
    # columns, and the rows of each column (stride: the batch's rows).
    int32_t *cols
    int32_t *row_count
    int32_t *splits
    int32_t *rows_of
    int32_t *col_count


cdef struct StepPlan:
    int n_layers
    int rule
    double lr, a, b, eps, weight_decay
    double bias_weight_decay  # the biases' (0: the weights' alone decay, as scikit-learn's L2)
    long t
    # the loss head (HEAD_*) and its constants: d loss / dz = grad_scale * (p - y) * the
    # row's scale, a row's loss = loss_scale * its outputs' summed losses; sums_rows: the
    # loss sums over the rows (each row's scale 1, or its weight) instead of averaging
    int head
    double grad_scale, loss_scale
    bint sums_rows
    void *delta0
    void *delta1
    bint sparse_input  # the first layer reads only x's nonzeros
    SparseInput sparse
    # Row chains (with sparse_input, when every later layer is small): the thread that
    # claims a chunk of rows carries it through every layer, the loss and back through the
    # later layers' input gradients (into each layer's delta), no barrier between; each
    # chunk's loss and correct count land in chunk_loss / chunk_correct.
    bint row_chain
    void *chain_deltas  # the layers' delta buffers but the last's (delta0)
    double *chunk_loss
    Py_ssize_t *chunk_correct
    LayerPlan layers[MAX_LAYERS]


cdef enum:
    # phase ends a step can mark: per layer its forward (and activation), its backward
    MAX_MARKS = 3 * MAX_LAYERS + 4


cdef struct StepCall:
    StepPlan *plan
    const void *x
    const int64_t *labels  # the softmax head's targets
    const void *targets  # the float heads' (rows x outputs, the step's dtype)
    const double *row_weights  # each row's share of the mean loss, or weight in a sum (NULL: row_scale each)
    double row_scale  # each row's scale without weights: 1 / rows, or 1 for a loss summed over rows
    Py_ssize_t rows
    bint is_double
    double loss
    Py_ssize_t correct
    int failed
    bint profiled  # thread 0 notes the time at which each phase ends
    int sparse_rows_claimed, sparse_columns_claimed  # work counters (nnk_claim)
    int n_marks
    double marks[MAX_MARKS]


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline void _phase_end(StepCall *call, nnk_team *team, int thread) noexcept nogil:
    """End a phase: every thread waits for the others; thread 0 notes the time when the
    step is profiled."""
    nnk_team_barrier(team)
    if call.profiled and thread == 0:
        call.marks[call.n_marks] = _now()
        call.n_marks += 1


cdef inline double _softmax_cross_entropy(const real *logits, const int64_t *labels,
                                          Py_ssize_t rows, Py_ssize_t cols, real *delta,
                                          Py_ssize_t *correct, double inv_rows,
                                          const double *row_weights) noexcept nogil:
    """The summed cross entropy of the rows' softmax against the labels; delta = (softmax -
    onehot) * inv_rows (1 / the batch's rows); correct = how many rows have their label as
    the (first) maximum. With ``row_weights`` (each row's share of a weighted mean, summing
    to 1 over the batch) row i's delta is scaled by row_weights[i] instead, and the sum
    returned is the weighted one, sum(row_weights[i] * loss_i): the batch's loss itself."""
    cdef Py_ssize_t i, j, best
    cdef double loss = 0.0, total, scale, row_loss, row_scale = inv_rows
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
        row_loss = row_max + log(total) - z[labels[i]]
        if row_weights != NULL:
            row_scale = row_weights[i]
            row_loss = row_loss * row_scale
        loss += row_loss
        scale = row_scale / total
        for j in range(cols):
            d[j] = <real>(d[j] * scale)
        d[labels[i]] -= <real>row_scale
        if best == labels[i]:
            correct[0] += 1
    return loss


cdef inline double _float_head(const StepPlan *plan, const real *z, const real *y, Py_ssize_t rows,
                               Py_ssize_t cols, real *delta, Py_ssize_t *correct, double row_scale,
                               const double *row_weights) noexcept nogil:
    """The float-target heads on the last Linear's output z against targets y (rows x cols):
    p = z (identity_squared) or sigmoid(z) (by the Sigmoid layer's kernel, into delta's row
    first); delta = grad_scale * (p - y) * the row's scale (row_scale, or row_weights[i]),
    for sigmoid_bce BCELoss's gradient by p (its denominator p (1 - p) clamped) times the
    sigmoid's p (1 - p), as the layer path computes it. Returns the rows' losses
    (loss_scale times the sum of the elements' squared errors, binary log losses with p
    clipped to [eps, 1 - eps] of the dtype, or BCELoss's with its logs clamped), summed, or
    with ``row_weights`` summed with those weights (as _softmax_cross_entropy); correct =
    rows whose every p is on its target's side of 0.5 (the sigmoid heads; none for
    identity_squared)."""
    cdef Py_ssize_t i, j, k
    cdef double loss = 0.0, row_loss, scale, t, pd, clipped
    cdef double clip = FLT_EPSILON if real is float else DBL_EPSILON
    cdef real p, d
    cdef bint right
    correct[0] = 0
    for i in range(rows):
        scale = plan.grad_scale * (row_weights[i] if row_weights != NULL else row_scale)
        row_loss = 0.0
        k = i * cols
        if plan.head == HEAD_IDENTITY_SQUARED:
            for j in range(k, k + cols):
                pd = <double>z[j] - y[j]
                row_loss += pd * pd
                delta[j] = <real>(scale * pd)
        else:
            if real is float:
                nnk_act_block_s(NNK_SIGMOID, 0, z + k, cols, delta + k, cols, 1, cols)
            else:
                nnk_act_block_d(NNK_SIGMOID, 0, z + k, cols, delta + k, cols, 1, cols)
            right = True
            for j in range(k, k + cols):
                p = delta[j]
                pd = p
                t = y[j]
                right = right and (p > 0.5) == (t > 0.5)
                if plan.head == HEAD_LOGISTIC_LOG_LOSS:
                    clipped = min(max(pd, clip), 1.0 - clip)
                    row_loss -= t * log(clipped) + (1.0 - t) * log(1.0 - clipped)
                    delta[j] = <real>(scale * (pd - t))
                else:
                    row_loss -= t * log(max(pd, BCE_CLAMP)) + (1.0 - t) * log(max(1.0 - pd, BCE_CLAMP))
                    d = <real>(scale * (pd - t) / max(pd * (1.0 - pd), BCE_CLAMP))
                    delta[j] = d * (p * (1 - p))
            correct[0] += right
        loss += row_loss * (row_weights[i] if row_weights != NULL else 1.0)
    return loss * plan.loss_scale


cdef inline double _output_loss(const StepCall *call, const real *z, Py_ssize_t lo, Py_ssize_t hi,
                                Py_ssize_t cols, real *delta, Py_ssize_t *correct) noexcept nogil:
    """The plan's loss head on rows [lo, hi) of the batch (z and delta: those rows' own)."""
    cdef const double *weights = call.row_weights + lo if call.row_weights != NULL else NULL
    if call.plan.head == HEAD_SOFTMAX_CROSS_ENTROPY:
        return _softmax_cross_entropy(z, call.labels + lo, hi - lo, cols, delta, correct, call.row_scale, weights)
    return _float_head(call.plan, z, <const real *>call.targets + lo * cols, hi - lo, cols, delta, correct,
                       call.row_scale, weights)


cdef inline void _column_sums(const real *x, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t lo,
                              Py_ssize_t hi, real *out) noexcept nogil:
    """out[j] = sum of column j of x (rows x cols), for the columns lo <= j < hi."""
    cdef Py_ssize_t i, j
    for j in range(lo, hi):
        out[j] = 0
    for i in range(rows):
        for j in range(lo, hi):
            out[j] += x[i * cols + j]


cdef inline void _update_elements(const StepPlan *plan, real *p, const real *g, void *s0, void *s1,
                                  Py_ssize_t lo, Py_ssize_t hi, double weight_decay) noexcept nogil:
    """The update of elements [lo, hi) of one parameter p (gradient g, states s0, s1 or
    NULL) with the given weight decay (the plan's for weights, or for biases), on this
    thread."""
    if hi > lo:
        apply_update(plan.rule, p + lo, g + lo, <real *>s0 + lo if s0 != NULL else NULL,
                     <real *>s1 + lo if s1 != NULL else NULL, hi - lo, plan.lr, plan.a, plan.b,
                     plan.eps, plan.t, weight_decay, 1)


cdef inline void _update_share(StepPlan *plan, nnk_team *team, int thread, real *p, real *g,
                               void *s0, void *s1, Py_ssize_t n, int owner) noexcept nogil:
    """This thread's part of one parameter's update: an equal slice of a large parameter,
    all of a small one when the thread is its owner."""
    cdef Py_ssize_t lo = 0, hi = n
    if n >= UPDATE_SPLIT_MIN:
        nnk_partition(n, team.size, thread, &lo, &hi)
    elif thread != owner % team.size:
        return
    _update_elements(plan, p, g, s0, s1, lo, hi, plan.weight_decay)


cdef struct BlockUpdate:
    const StepPlan *plan
    const LayerPlan *layer


cdef inline void _update_block(const BlockUpdate *update, real *block, Py_ssize_t ldc, Py_ssize_t rows,
                               Py_ssize_t cols) noexcept nogil:
    """Update the weights whose gradient `block` (rows x cols of the layer's gW, row stride
    ldc) has just been finished: the rule's constants once (Adam's take two pow), then one
    pass when the block spans whole rows, else row by row."""
    cdef const StepPlan *plan = update.plan
    cdef const LayerPlan *layer = update.layer
    cdef Py_ssize_t offset, i
    cdef real *s0
    cdef real *s1
    cdef nnk_update_constants_s cs
    cdef nnk_update_constants_d cd
    if cols == ldc:
        cols *= rows
        rows = 1
    if real is float:
        cs = nnk_update_constants_for_s(plan.lr, plan.a, plan.b, plan.eps, plan.t, plan.weight_decay)
    else:
        cd = nnk_update_constants_for_d(plan.lr, plan.a, plan.b, plan.eps, plan.t, plan.weight_decay)
    for i in range(rows):
        offset = block - <real *>layer.gw + i * ldc
        s0 = <real *>layer.w_state0 + offset if layer.w_state0 != NULL else NULL
        s1 = <real *>layer.w_state1 + offset if layer.w_state1 != NULL else NULL
        if real is float:
            nnk_update_s(plan.rule, <float *>layer.w + offset, <float *>layer.gw + offset, s0, s1, cols, &cs)
        else:
            nnk_update_d(plan.rule, <double *>layer.w + offset, <double *>layer.gw + offset, s0, s1, cols, &cd)


cdef void _update_block_s(void *update, float *block, Py_ssize_t ldc, Py_ssize_t rows,
                          Py_ssize_t cols) noexcept nogil:
    _update_block(<BlockUpdate *>update, block, ldc, rows, cols)


cdef void _update_block_d(void *update, double *block, Py_ssize_t ldc, Py_ssize_t rows,
                          Py_ssize_t cols) noexcept nogil:
    _update_block(<BlockUpdate *>update, block, ldc, rows, cols)


cdef inline int _gemm(nnk_team *team, int thread, int slot, int trans_a, int trans_b, Py_ssize_t m,
                      Py_ssize_t n, Py_ssize_t k, const real *a, Py_ssize_t lda, const real *b,
                      Py_ssize_t ldb, real *c, Py_ssize_t ldc, const real *bias, int act,
                      double slope, const real *grad_src, Py_ssize_t ld_grad_src,
                      BlockUpdate *update) noexcept nogil:
    """This thread's share of a product split over the team (every thread calls it); two
    products in one phase use different shared-buffer slots. update: NULL, or the weights
    c is the gradient of, updated block by block as the product finishes them."""
    cdef nnk_epilogue_s ep_s
    cdef nnk_epilogue_d ep_d
    if real is float:
        ep_s = nnk_epilogue_of_s(bias, act, <float>slope, grad_src, ld_grad_src)
        if update != NULL:
            ep_s.block_done = _update_block_s
            ep_s.block_context = update
        return nnk_gemm_team_s(team, thread, slot, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, &ep_s)
    else:
        ep_d = nnk_epilogue_of_d(bias, act, slope, grad_src, ld_grad_src)
        if update != NULL:
            ep_d.block_done = _update_block_d
            ep_d.block_context = update
        return nnk_gemm_team_d(team, thread, slot, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, &ep_d)


cdef inline bint _claim_chunk(int *counter, Py_ssize_t chunk, Py_ssize_t total, Py_ssize_t *lo,
                              Py_ssize_t *hi) noexcept nogil:
    """Claim the next chunk [lo, hi) of range(total) from the team's shared counter; False
    when none is left."""
    lo[0] = <Py_ssize_t>nnk_claim(counter) * chunk
    hi[0] = min(total, lo[0] + chunk)
    return lo[0] < total


cdef inline int _chunk_layer(const LayerPlan *layer, const real *inp, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Rows [lo, hi) of a later layer's forward, h = act(inp @ W + b), on this thread alone."""
    cdef nnk_epilogue_s ep_s
    cdef nnk_epilogue_d ep_d
    if real is float:
        ep_s = nnk_epilogue_of_s(<float *>layer.b, layer.act, <float>layer.slope, NULL, 0)
        return nnk_gemm_s(0, 0, hi - lo, layer.fan_out, layer.fan_in, inp + lo * layer.fan_in, layer.fan_in,
                          <float *>layer.w, layer.fan_out, <float *>layer.h + lo * layer.fan_out, layer.fan_out,
                          &ep_s, 1)
    else:
        ep_d = nnk_epilogue_of_d(<double *>layer.b, layer.act, layer.slope, NULL, 0)
        return nnk_gemm_d(0, 0, hi - lo, layer.fan_out, layer.fan_in, inp + lo * layer.fan_in, layer.fan_in,
                          <double *>layer.w, layer.fan_out, <double *>layer.h + lo * layer.fan_out, layer.fan_out,
                          &ep_d, 1)


cdef inline int _chunk_input_grad(const LayerPlan *layer, const LayerPlan *below, const real *delta,
                                  Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Rows [lo, hi) of the layer below's delta = (delta, this layer's, @ W.T) * act'(its h),
    on this thread alone (row chains: no layer keeps its pre-activation)."""
    cdef nnk_epilogue_s ep_s
    cdef nnk_epilogue_d ep_d
    if real is float:
        ep_s = nnk_epilogue_of_s(NULL, below.act, <float>below.slope, <float *>below.h + lo * below.fan_out,
                                 below.fan_out)
        return nnk_gemm_s(0, 1, hi - lo, layer.fan_in, layer.fan_out, delta + lo * layer.fan_out,
                          layer.fan_out, <float *>layer.w, layer.fan_out, <float *>below.delta + lo * below.fan_out,
                          below.fan_out, &ep_s, 1)
    else:
        ep_d = nnk_epilogue_of_d(NULL, below.act, below.slope, <double *>below.h + lo * below.fan_out,
                                 below.fan_out)
        return nnk_gemm_d(0, 1, hi - lo, layer.fan_in, layer.fan_out, delta + lo * layer.fan_out,
                          layer.fan_out, <double *>layer.w, layer.fan_out, <double *>below.delta + lo * below.fan_out,
                          below.fan_out, &ep_d, 1)


cdef inline int _sparse_forward(StepCall *call, const real *x, real *out) noexcept nogil:
    """The first layer's forward from x's nonzeros, SPARSE_ROW_CHUNK rows at a time as this
    thread claims them: index the rows, then out = act(x @ W + b) (the activation left out
    where the pre-activation is kept). With row chains, each chunk then goes on through the
    later layers, the loss (into delta0, the last layer's delta) and back through the later
    layers' input gradients. Returns the products' status."""
    cdef StepPlan *plan = call.plan
    cdef LayerPlan *layer = &plan.layers[0]
    cdef LayerPlan *last = &plan.layers[plan.n_layers - 1]
    cdef SparseInput *sp = &plan.sparse
    cdef Py_ssize_t lo, hi
    cdef int act = NNK_IDENTITY if layer.keep_preact else layer.act, l, status = 0
    while _claim_chunk(&call.sparse_rows_claimed, SPARSE_ROW_CHUNK, call.rows, &lo, &hi):
        if real is float:
            nnk_sparse_index_rows_s(x, layer.fan_in, layer.fan_in, lo, hi, sp.cols, sp.row_count,
                                    SPARSE_COLUMN_CHUNK, sp.splits)
            nnk_sparse_linear_s(lo, hi, layer.fan_out, layer.fan_in, x, layer.fan_in, sp.cols, sp.row_count,
                                <float *>layer.w, layer.fan_out, <float *>layer.b, act, <float>layer.slope,
                                out, layer.fan_out)
        else:
            nnk_sparse_index_rows_d(x, layer.fan_in, layer.fan_in, lo, hi, sp.cols, sp.row_count,
                                    SPARSE_COLUMN_CHUNK, sp.splits)
            nnk_sparse_linear_d(lo, hi, layer.fan_out, layer.fan_in, x, layer.fan_in, sp.cols, sp.row_count,
                                <double *>layer.w, layer.fan_out, <double *>layer.b, act, layer.slope,
                                out, layer.fan_out)
        if plan.row_chain:
            for l in range(1, plan.n_layers):
                status |= _chunk_layer(&plan.layers[l], <real *>plan.layers[l - 1].h, lo, hi)
            plan.chunk_loss[lo // SPARSE_ROW_CHUNK] = _output_loss(
                call, <real *>last.h + lo * last.fan_out, lo, hi, last.fan_out,
                <real *>plan.delta0 + lo * last.fan_out, &plan.chunk_correct[lo // SPARSE_ROW_CHUNK])
            for l in range(plan.n_layers - 1, 0, -1):
                status |= _chunk_input_grad(&plan.layers[l], &plan.layers[l - 1], <real *>plan.layers[l].delta,
                                            lo, hi)
    return status


cdef inline void _sparse_weight_grad(StepCall *call, const real *x, const real *delta,
                                     BlockUpdate *update) noexcept nogil:
    """The first layer's dW = x.T @ delta from x's nonzeros, SPARSE_COLUMN_CHUNK rows of dW
    at a time as this thread claims them: the chunk's column lists of x, then its rows of dW;
    W updated block by block as they finish."""
    cdef LayerPlan *layer = &call.plan.layers[0]
    cdef SparseInput *sp = &call.plan.sparse
    cdef Py_ssize_t lo, hi, rows = call.rows
    cdef nnk_epilogue_s ep_s
    cdef nnk_epilogue_d ep_d
    if real is float:
        ep_s = nnk_epilogue_of_s(NULL, NNK_IDENTITY, 0, NULL, 0)
        ep_s.block_done = _update_block_s
        ep_s.block_context = update
    else:
        ep_d = nnk_epilogue_of_d(NULL, NNK_IDENTITY, 0, NULL, 0)
        ep_d.block_done = _update_block_d
        ep_d.block_context = update
    while _claim_chunk(&call.sparse_columns_claimed, SPARSE_COLUMN_CHUNK, layer.fan_in, &lo, &hi):
        nnk_sparse_index_columns(rows, layer.fan_in, sp.cols, sp.splits, SPARSE_COLUMN_CHUNK,
                                 lo // SPARSE_COLUMN_CHUNK, sp.rows_of, sp.col_count)
        if real is float:
            nnk_sparse_weight_grad_s(lo, hi, rows, layer.fan_out, x, layer.fan_in, sp.rows_of, sp.col_count,
                                     delta, layer.fan_out, <float *>layer.gw, layer.fan_out, &ep_s)
        else:
            nnk_sparse_weight_grad_d(lo, hi, rows, layer.fan_out, x, layer.fan_in, sp.rows_of, sp.col_count,
                                     delta, layer.fan_out, <double *>layer.gw, layer.fan_out, &ep_d)


cdef inline void _chunk_loss_total(StepCall *call) noexcept nogil:
    """The batch's mean loss and correct count from the row chains' per-chunk sums (summed
    in chunk order: the same number whichever thread ran which chunk)."""
    cdef Py_ssize_t c, chunks = (call.rows + SPARSE_ROW_CHUNK - 1) // SPARSE_ROW_CHUNK
    cdef double total = 0.0
    call.correct = 0
    for c in range(chunks):
        total += call.plan.chunk_loss[c]
        call.correct += call.plan.chunk_correct[c]
    call.loss = total if call.row_weights != NULL else total * call.row_scale


cdef void _row_chain_share(StepCall *call, nnk_team *team, int thread, const real *x) noexcept nogil:
    """A step with row chains, in two phases: every layer forward, the loss and the later
    layers' input gradients, chunk by chunk of rows (_sparse_forward); then the weight
    gradients and updates: each later layer's (a product over all rows, small) on one
    thread, the first layer's in chunks of its rows as the threads claim them, each bias's
    over the threads' column shares."""
    cdef StepPlan *plan = call.plan
    cdef LayerPlan *layer
    cdef BlockUpdate first_layer_update
    cdef Py_ssize_t rows = call.rows, lo, hi
    cdef int l, status = _sparse_forward(call, x, <real *>plan.layers[0].h)
    _phase_end(call, team, thread)
    if thread == 0:
        _chunk_loss_total(call)
    for l in range(1, plan.n_layers):
        if thread != l % team.size:
            continue
        layer = &plan.layers[l]
        if real is float:
            status |= nnk_gemm_s(1, 0, layer.fan_in, layer.fan_out, rows, <float *>plan.layers[l - 1].h,
                                 layer.fan_in, <float *>layer.delta, layer.fan_out, <float *>layer.gw,
                                 layer.fan_out, NULL, 1)
        else:
            status |= nnk_gemm_d(1, 0, layer.fan_in, layer.fan_out, rows, <double *>plan.layers[l - 1].h,
                                 layer.fan_in, <double *>layer.delta, layer.fan_out, <double *>layer.gw,
                                 layer.fan_out, NULL, 1)
        _column_sums(<real *>layer.delta, rows, layer.fan_out, 0, layer.fan_out, <real *>layer.gb)
        _update_elements(plan, <real *>layer.b, <real *>layer.gb, layer.b_state0, layer.b_state1, 0, layer.fan_out,
                         plan.bias_weight_decay)
        _update_elements(plan, <real *>layer.w, <real *>layer.gw, layer.w_state0, layer.w_state1, 0,
                         layer.fan_in * layer.fan_out, plan.weight_decay)
    layer = &plan.layers[0]
    first_layer_update.plan = plan
    first_layer_update.layer = layer
    _sparse_weight_grad(call, x, <real *>layer.delta, &first_layer_update)
    nnk_partition(layer.fan_out, team.size, thread, &lo, &hi)
    _column_sums(<real *>layer.delta, rows, layer.fan_out, lo, hi, <real *>layer.gb)
    _update_elements(plan, <real *>layer.b, <real *>layer.gb, layer.b_state0, layer.b_state1, lo, hi,
                     plan.bias_weight_decay)
    if status != 0:
        nnk_flag_set(&call.failed)


cdef void _step_share(StepCall *call, nnk_team *team, int thread, const real *x) noexcept nogil:
    """Thread `thread`'s part of one training step; every thread of the team runs it."""
    cdef StepPlan *plan = call.plan
    cdef Py_ssize_t rows = call.rows, lo, hi
    cdef int l, status = 0
    cdef LayerPlan *layer
    cdef LayerPlan *below
    cdef const real *inp = x
    cdef real *out
    cdef real *delta = <real *>plan.delta0
    cdef real *spare = <real *>plan.delta1
    cdef real *swap
    cdef const real *src
    cdef BlockUpdate first_layer_update

    if plan.row_chain:
        _row_chain_share(call, team, thread, x)
        return
    for l in range(plan.n_layers):  # forward: h = act(inp @ W + b), fused in the GEMM
        layer = &plan.layers[l]
        out = <real *>(layer.z if layer.keep_preact else layer.h)
        if l == 0 and plan.sparse_input:
            status |= _sparse_forward(call, x, out)
        else:
            status |= _gemm(team, thread, 0, 0, 0, rows, layer.fan_out, layer.fan_in, inp, layer.fan_in,
                            <real *>layer.w, layer.fan_out, out, layer.fan_out, <real *>layer.b,
                            NNK_IDENTITY if layer.keep_preact else layer.act, layer.slope,
                            <real *>NULL, 0, NULL)
        _phase_end(call, team, thread)
        if layer.keep_preact:
            nnk_partition(rows, team.size, thread, &lo, &hi)
            if real is float:
                nnk_act_block_s(layer.act, <float>layer.slope, out + lo * layer.fan_out, layer.fan_out,
                                <float *>layer.h + lo * layer.fan_out, layer.fan_out, hi - lo, layer.fan_out)
            else:
                nnk_act_block_d(layer.act, layer.slope, out + lo * layer.fan_out, layer.fan_out,
                                <double *>layer.h + lo * layer.fan_out, layer.fan_out, hi - lo, layer.fan_out)
            _phase_end(call, team, thread)
        inp = <real *>layer.h

    if thread == 0:  # 64 x 10 or so: not worth splitting
        layer = &plan.layers[plan.n_layers - 1]
        call.loss = _output_loss(call, <real *>layer.h, 0, rows, layer.fan_out, delta, &call.correct)
        if call.row_weights == NULL:
            call.loss *= call.row_scale
    _phase_end(call, team, thread)

    first_layer_update.plan = plan
    first_layer_update.layer = &plan.layers[0]
    for l in range(plan.n_layers - 1, -1, -1):  # backward, updating each layer once used
        layer = &plan.layers[l]
        inp = x if l == 0 else <real *>plan.layers[l - 1].h
        # dW = inp.T @ delta (the first layer's W updated as its blocks finish)
        if l == 0 and plan.sparse_input:
            _sparse_weight_grad(call, x, delta, &first_layer_update)
        else:
            status |= _gemm(team, thread, 0, 1, 0, layer.fan_in, layer.fan_out, rows, inp, layer.fan_in,
                            delta, layer.fan_out, <real *>layer.gw, layer.fan_out, <real *>NULL,
                            NNK_IDENTITY, 0.0, <real *>NULL, 0, &first_layer_update if l == 0 else NULL)
        # db = column sums of delta, and b's update, over this thread's columns
        nnk_partition(layer.fan_out, team.size, thread, &lo, &hi)
        _column_sums(delta, rows, layer.fan_out, lo, hi, <real *>layer.gb)
        _update_elements(plan, <real *>layer.b, <real *>layer.gb, layer.b_state0, layer.b_state1, lo, hi,
                         plan.bias_weight_decay)
        if l == 0:
            break  # the parallel region's end joins the threads
        # delta for the layer below: (delta @ W.T) * act'(its z or h)
        below = &plan.layers[l - 1]
        src = <real *>(below.z if below.keep_preact else below.h)
        status |= _gemm(team, thread, 1, 0, 1, rows, layer.fan_in, layer.fan_out, delta,
                        layer.fan_out, <real *>layer.w, layer.fan_out, spare, layer.fan_in,
                        <real *>NULL, below.act, below.slope, src, layer.fan_in, NULL)
        _phase_end(call, team, thread)  # W and delta read for the last time; dW complete
        swap = delta
        delta = spare
        spare = swap
        _update_share(plan, team, thread, <real *>layer.w, <real *>layer.gw, layer.w_state0,
                      layer.w_state1, layer.fan_in * layer.fan_out, l)
    if status != 0:
        nnk_flag_set(&call.failed)


cdef void _run_step_share(nnk_team *team, int thread, void *context) noexcept nogil:
    cdef StepCall *call = <StepCall *>context
    if call.is_double:
        _step_share(call, team, thread, <const double *>call.x)
    else:
        _step_share(call, team, thread, <const float *>call.x)


cdef inline void _start_step(StepPlan *plan, StepCall *call, double lr, double a, double b, double eps,
                             double weight_decay, double bias_weight_decay, long t, Py_ssize_t rows) noexcept nogil:
    """The hyperparameters and the per-step fields of a step on ``rows`` rows (what step()
    and each batch of epoch() set before running it)."""
    plan.lr, plan.a, plan.b, plan.eps = lr, a, b, eps
    plan.weight_decay, plan.bias_weight_decay, plan.t = weight_decay, bias_weight_decay, t
    call.row_scale = 1.0 if plan.sums_rows else 1.0 / rows
    call.rows = rows
    call.loss = 0.0
    call.correct = 0
    call.failed = 0
    call.n_marks = 0
    call.sparse_rows_claimed = call.sparse_columns_claimed = 0


cdef double _squares(const real *w, Py_ssize_t count) noexcept nogil:
    """The sum of w's squared entries in float64 (four partial sums: independent chains of
    additions, ~4x one chain's speed)."""
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    cdef Py_ssize_t i = 0
    while i + 4 <= count:
        s0 += <double>w[i] * w[i]
        s1 += <double>w[i + 1] * w[i + 1]
        s2 += <double>w[i + 2] * w[i + 2]
        s3 += <double>w[i + 3] * w[i + 3]
        i += 4
    while i < count:
        s0 += <double>w[i] * w[i]
        i += 1
    return (s0 + s1) + (s2 + s3)


cdef inline void _convert_row(char *out, const char *row, Py_ssize_t n, bint to_double) noexcept nogil:
    """A row of n floats into doubles (to_double), or of n doubles into floats."""
    cdef Py_ssize_t i
    if to_double:
        for i in range(n):
            (<double *>out)[i] = (<const float *>row)[i]
    else:
        for i in range(n):
            (<float *>out)[i] = <float>(<const double *>row)[i]


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
    ``sparse_input``: the first layer reads only the nonzeros of x (nnk_sparse_impl.h),
    which pays when most of x is zero (nnkern.engine decides from the data set).
    ``head``: the loss head's code (OUTPUT_HEAD_CODES), with its ``grad_scale``,
    ``loss_scale`` and ``sums_rows`` (see _float_head; the softmax head takes 1, 1, False).
    """

    cdef StepPlan plan
    cdef object arrays
    cdef bint is_double
    cdef Py_ssize_t max_rows, largest_product
    cdef nnk_team team
    cdef bint busy
    cdef object epoch_rows  # epoch()'s gathered batch: (x rows, target rows), made by its first call

    def __cinit__(self):
        self.team.shared[0] = self.team.shared[1] = NULL
        self.plan.sparse.cols = self.plan.sparse.row_count = self.plan.sparse.splits = NULL
        self.plan.sparse.rows_of = self.plan.sparse.col_count = NULL
        self.plan.chunk_loss = NULL
        self.plan.chunk_correct = NULL
        self.plan.chain_deltas = NULL
        self.busy = False

    def __dealloc__(self):
        free(self.team.shared[0])
        free(self.team.shared[1])
        free(self.plan.sparse.cols)
        free(self.plan.sparse.row_count)
        free(self.plan.sparse.splits)
        free(self.plan.sparse.rows_of)
        free(self.plan.sparse.col_count)
        free(self.plan.chunk_loss)
        free(self.plan.chunk_correct)
        free(self.plan.chain_deltas)

    def __init__(self, layers, delta0, delta1, int rule, bint is_double, Py_ssize_t max_rows,
                 bint sparse_input=False, int head=HEAD_SOFTMAX_CROSS_ENTROPY, double grad_scale=1.0,
                 double loss_scale=1.0, bint sums_rows=False):
        if not 0 < len(layers) <= MAX_LAYERS:
            raise ValueError(f"FusedMLPStep: {len(layers)} layers, supported 1..{MAX_LAYERS}")
        if head not in OUTPUT_HEAD_CODES.values():
            raise ValueError(f"FusedMLPStep: no loss head of code {head}")
        self.plan.head = head
        self.plan.grad_scale, self.plan.loss_scale, self.plan.sums_rows = grad_scale, loss_scale, sums_rows
        self.arrays = (layers, delta0, delta1)
        self.is_double = is_double
        self.max_rows = max_rows
        self.largest_product = 0
        self.plan.n_layers = len(layers)
        self.plan.rule = rule
        self.plan.delta0 = _address(delta0)
        self.plan.delta1 = _address(delta1)
        cdef LayerPlan *lp
        cdef size_t shared_bytes = 0
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
            self.largest_product = max(self.largest_product, max_rows * lp.fan_in * lp.fan_out)
            # the A operands of the step's products: x or h (forward), x.T or h.T (weight
            # gradient), delta (input gradient)
            for m, k in ((max_rows, lp.fan_in), (lp.fan_in, max_rows), (max_rows, lp.fan_out)):
                shared_bytes = max(shared_bytes, nnk_team_shared_bytes_d(m, k) if is_double
                                   else nnk_team_shared_bytes_s(m, k))
        for slot in range(2):
            free(self.team.shared[slot])
            self.team.shared[slot] = nnk_alloc(shared_bytes)
            if self.team.shared[slot] == NULL:
                raise MemoryError(f"FusedMLPStep: could not allocate a {shared_bytes}-byte work buffer")
        self.team.shared_bytes = shared_bytes
        self.plan.sparse_input = sparse_input
        # row chains: every layer after the first small enough to run on one thread, and no
        # activation that keeps its pre-activation (a phase of its own)
        self.plan.row_chain = sparse_input and self.plan.n_layers > 1 and all(
            not self.plan.layers[i].keep_preact for i in range(self.plan.n_layers)) and all(
            max_rows * self.plan.layers[i].fan_in * self.plan.layers[i].fan_out < NNK_TEAM_PARALLEL_MIN_MNK
            for i in range(1, self.plan.n_layers))
        if sparse_input:
            self._allocate_sparse_index(self.plan.layers[0].fan_in, max_rows)
        if self.plan.row_chain:
            self._allocate_chain_deltas(max_rows)

    cdef _allocate_chain_deltas(self, Py_ssize_t max_rows):
        """Each layer's delta buffer for row chains: the last layer's is delta0 (the loss
        writes it), the others' one allocation."""
        cdef size_t item = sizeof(double) if self.is_double else sizeof(float), offset = 0, total = 0
        cdef int i, last = self.plan.n_layers - 1
        for i in range(last):
            total += max_rows * self.plan.layers[i].fan_out * item
        free(self.plan.chain_deltas)
        self.plan.chain_deltas = nnk_alloc(total)
        if self.plan.chain_deltas == NULL:
            raise MemoryError(f"FusedMLPStep: could not allocate {total} bytes of row-chain gradients")
        for i in range(last):
            self.plan.layers[i].delta = <char *>self.plan.chain_deltas + offset
            offset += max_rows * self.plan.layers[i].fan_out * item
        self.plan.layers[last].delta = self.plan.delta0

    cdef _allocate_sparse_index(self, Py_ssize_t fan_in, Py_ssize_t max_rows):
        cdef SparseInput *sp = &self.plan.sparse
        cdef size_t index = sizeof(int32_t) * fan_in * max_rows
        free(sp.cols)
        free(sp.row_count)
        free(sp.splits)
        free(sp.rows_of)
        free(sp.col_count)
        sp.cols = <int32_t *>nnk_alloc(index)
        sp.row_count = <int32_t *>nnk_alloc(sizeof(int32_t) * max_rows)
        sp.splits = <int32_t *>nnk_alloc(sizeof(int32_t) * max_rows * (
            (fan_in + SPARSE_COLUMN_CHUNK - 1) // SPARSE_COLUMN_CHUNK + 1))
        sp.rows_of = <int32_t *>nnk_alloc(index)
        sp.col_count = <int32_t *>nnk_alloc(sizeof(int32_t) * fan_in)
        free(self.plan.chunk_loss)
        free(self.plan.chunk_correct)
        self.plan.chunk_loss = <double *>nnk_alloc(sizeof(double) * (max_rows // SPARSE_ROW_CHUNK + 1))
        self.plan.chunk_correct = <Py_ssize_t *>nnk_alloc(sizeof(Py_ssize_t) * (max_rows // SPARSE_ROW_CHUNK + 1))
        if (sp.cols == NULL or sp.row_count == NULL or sp.splits == NULL or sp.rows_of == NULL or sp.col_count == NULL
                or self.plan.chunk_loss == NULL or self.plan.chunk_correct == NULL):
            raise MemoryError(f"FusedMLPStep: could not allocate the {2 * index}-byte index of a sparse input")

    def step(self, x, targets, double lr, double a, double b, double eps, double weight_decay,
             long t, int num_threads, row_weights=None, bias_weight_decay=None):
        """One step on the batch (x, targets): returns (the loss, right predictions: rows
        whose largest logit is their label, or for the sigmoid heads whose every output is
        on its target's side of 0.5). x: (rows, fan_in) C-contiguous, rows <= max_rows;
        targets: int64 labels (rows,) for the softmax head, else (rows, outputs) C-contiguous
        of x's dtype. ``row_weights``: float64 (rows,), each row's share of a weighted mean
        loss (summing to 1), or its weight in a loss summed over rows (``sums_rows``); None:
        the plain mean (sum). ``bias_weight_decay``: the biases' weight decay (None:
        ``weight_decay``, as the weights')."""
        cdef StepCall call
        call.profiled = False
        self._run(&call, x, targets, lr, a, b, eps, weight_decay, t, num_threads, row_weights, bias_weight_decay)
        return call.loss, call.correct

    def step_profiled(self, x, targets, double lr, double a, double b, double eps,
                      double weight_decay, long t, int num_threads, row_weights=None, bias_weight_decay=None):
        """As step(), also returning the seconds of each phase of the step (in the order
        of phase_names(); the last one runs from the last barrier to the end of the
        parallel region: the first layer's backward and update)."""
        cdef StepCall call
        cdef int i
        call.profiled = True
        self._run(&call, x, targets, lr, a, b, eps, weight_decay, t, num_threads, row_weights, bias_weight_decay)
        return call.loss, call.correct, [call.marks[i + 1] - call.marks[i] for i in range(call.n_marks - 1)]

    def phase_names(self):
        """What each phase of a step does, as step_profiled() times them."""
        cdef int l
        cdef LayerPlan *lp
        names = []
        if self.plan.row_chain:
            lp = &self.plan.layers[0]
            return [f"forward of every layer and the loss, each thread carrying its chunks of rows through "
                    f"and back through the later layers' input gradients (layer 1: x @ W ({lp.fan_in}x{lp.fan_out}) "
                    f"from x's nonzeros)",
                    f"backward layer 1: dW ({lp.fan_in}x{lp.fan_out}) from x's nonzeros with W's update, db, "
                    f"b's update; dW, db and the updates of layer"
                    + (" 2" if self.plan.n_layers == 2 else f"s 2-{self.plan.n_layers}")]
        for l in range(self.plan.n_layers):
            lp = &self.plan.layers[l]
            names.append(f"forward layer {l + 1}: x @ W ({lp.fan_in}x{lp.fan_out}) + b"
                         + ("" if lp.keep_preact else ", activation")
                         + (" (x's nonzeros only)" if l == 0 and self.plan.sparse_input else ""))
            if lp.keep_preact:
                names.append(f"activation of layer {l + 1} (pre-activation kept)")
        names.append({HEAD_SOFTMAX_CROSS_ENTROPY: "softmax-cross-entropy", HEAD_IDENTITY_SQUARED: "squared error",
                      HEAD_LOGISTIC_LOG_LOSS: "logistic binary log loss",
                      HEAD_SIGMOID_BCE: "sigmoid binary cross entropy"}[self.plan.head])
        for l in range(self.plan.n_layers - 1, -1, -1):
            lp = &self.plan.layers[l]
            what = f"backward layer {l + 1}: dW ({lp.fan_in}x{lp.fan_out})"
            if l == 0 and self.plan.sparse_input:
                what += " from x's nonzeros"
            what += " with W's update, db, b's update" if l == 0 else ", db, b's update, dX * act'"
            if l < self.plan.n_layers - 1:
                what += f"; W's update of layer {l + 2}"
            names.append(what)
        return names

    cdef _run(self, StepCall *call, x, targets, double lr, double a, double b,
              double eps, double weight_decay, long t, int num_threads, row_weights, bias_weight_decay):
        cdef Py_ssize_t rows = len(targets), outputs = self.plan.layers[self.plan.n_layers - 1].fan_out
        cdef const int64_t[::1] labels
        cdef const double[::1] weights
        cdef const float[:, ::1] xs, ys
        cdef const double[:, ::1] xd, yd
        # a model too small to split runs on one thread: no region, no barriers
        cdef int threads = num_threads if self.largest_product >= NNK_TEAM_PARALLEL_MIN_MNK else 1
        if rows == 0 or rows > self.max_rows:
            raise ValueError(f"FusedMLPStep: batch of {rows} rows, expected 1..{self.max_rows}")
        if len(x) != rows:
            raise ValueError(f"FusedMLPStep: {len(x)} rows of x for {rows} targets")
        if row_weights is not None:
            weights = row_weights
            if weights.shape[0] != rows:
                raise ValueError(f"FusedMLPStep: {weights.shape[0]} row weights for a batch of {rows} rows")
        # one step at a time: two Python threads stepping one model would share the team's
        # barrier and its plan (and race on every buffer); checked before the plan changes
        if self.busy:
            raise RuntimeError("FusedMLPStep: step() called from two threads at once on one model")
        self.busy = True
        try:
            _start_step(&self.plan, call, lr, a, b, eps, weight_decay,
                        weight_decay if bias_weight_decay is None else bias_weight_decay, t, rows)
            call.plan = &self.plan
            call.labels = NULL
            call.targets = NULL
            if self.plan.head == HEAD_SOFTMAX_CROSS_ENTROPY:
                labels = targets
                call.labels = &labels[0]
            elif self.is_double:
                yd = targets
                call.targets = &yd[0, 0]
            else:
                ys = targets
                call.targets = &ys[0, 0]
            if self.plan.head != HEAD_SOFTMAX_CROSS_ENTROPY and targets.shape[1] != outputs:
                raise ValueError(f"FusedMLPStep: targets of {targets.shape[1]} columns for {outputs} outputs")
            call.row_weights = &weights[0] if row_weights is not None else NULL
            call.is_double = self.is_double
            if self.is_double:
                xd = x
                call.x = &xd[0, 0]
            else:
                xs = x
                call.x = &xs[0, 0]
            with nogil:
                if call.profiled:
                    call.marks[0] = _now()
                    call.n_marks = 1
                nnk_team_run(&self.team, threads, _run_step_share, call)
                if call.profiled:
                    call.marks[call.n_marks] = _now()
                    call.n_marks += 1
        finally:
            self.busy = False
        if call.failed:
            raise MemoryError("FusedMLPStep: a GEMM work buffer could not be allocated")

    def epoch(self, x, targets, order, Py_ssize_t batch_size, double lr, double a, double b, eps, weight_decay,
              long t, int num_threads, bint decay_biases=True, bint weight_squares=False):
        """A pass over the rows ``order`` of (x, targets) in batches of ``batch_size`` (the
        last one shorter), one step each as step() takes it, in one call with the GIL
        released: each batch's rows are gathered into a buffer of this step's, then stepped.
        ``eps`` and ``weight_decay``: float64, one per batch; batch k is step ``t + k + 1``;
        the biases decay with the weights when ``decay_biases``. Returns per batch (float64
        loss, int64 right predictions, float64 sum of the squared weight matrices before
        its step, computed when ``weight_squares`` and else 0). x: (n, fan_in) C-contiguous
        of the step's dtype; targets as step()'s, n rows; order: int64 indices in 0..n-1."""
        import numpy as np

        cdef Py_ssize_t fan_in = self.plan.layers[0].fan_in
        cdef Py_ssize_t outputs = self.plan.layers[self.plan.n_layers - 1].fan_out
        cdef bint labelled = self.plan.head == HEAD_SOFTMAX_CROSS_ENTROPY
        dtype = np.float64 if self.is_double else np.float32
        if not 1 <= batch_size <= self.max_rows:
            raise ValueError(f"FusedMLPStep.epoch: batches of {batch_size} rows, expected 1..{self.max_rows}")
        if not (isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64) and x.ndim == 2
                and x.shape[1] == fan_in and x.flags.c_contiguous):
            raise ValueError(f"FusedMLPStep.epoch: x must be C-contiguous float32 or float64 (n, {fan_in}), "
                             f"not {getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
        expected = tuple([len(x)] if labelled else [len(x), outputs])
        if not (isinstance(targets, np.ndarray) and targets.shape == expected and targets.flags.c_contiguous
                and targets.dtype == (np.int64 if labelled else dtype)):
            raise ValueError(f"FusedMLPStep.epoch: targets must be C-contiguous {expected}")
        order = np.asarray(order)
        if order.dtype != np.int64 or order.ndim != 1 or (len(order) and not 0 <= order.min() <= order.max() < len(x)):
            raise ValueError(f"FusedMLPStep.epoch: order must be int64 row indices in 0..{len(x) - 1}")
        cdef Py_ssize_t n = len(order), batches = (n + batch_size - 1) // batch_size
        eps = np.ascontiguousarray(eps, np.float64)
        weight_decay = np.ascontiguousarray(weight_decay, np.float64)
        if eps.shape != (batches,) or weight_decay.shape != (batches,):
            raise ValueError(f"FusedMLPStep.epoch: eps and weight_decay need one value per batch ({batches})")
        if self.epoch_rows is None:
            self.epoch_rows = (np.empty((self.max_rows, fan_in), dtype),
                               np.empty(self.max_rows, np.int64) if labelled else np.empty((self.max_rows, outputs), dtype))
        losses, squares = np.zeros(batches), np.zeros(batches)
        correct = np.zeros(batches, np.int64)
        cdef const int64_t[::1] rows_of = order
        cdef const double[::1] eps_of = eps, decay_of = weight_decay
        cdef double[::1] loss_out = losses, squares_out = squares
        cdef int64_t[::1] correct_out = correct
        cdef const char *x_all = <const char *>_address(x)
        cdef const char *targets_all = <const char *>_address(targets)
        cdef char *x_rows = <char *>_address(self.epoch_rows[0])
        cdef char *target_rows = <char *>_address(self.epoch_rows[1])
        cdef size_t item = sizeof(double) if self.is_double else sizeof(float)
        cdef size_t x_bytes = fan_in * item
        # x in the other float type is converted row by row as it is gathered (no copy of x)
        cdef bint x_converts = (x.dtype == np.float64) != self.is_double
        cdef size_t x_row_stride = fan_in * (sizeof(double) if x.dtype == np.float64 else sizeof(float))
        cdef size_t target_bytes = sizeof(int64_t) if labelled else outputs * item
        cdef int threads = num_threads if self.largest_product >= NNK_TEAM_PARALLEL_MIN_MNK else 1
        cdef Py_ssize_t k, r, lo, rows
        cdef int64_t source
        cdef StepCall call
        if self.busy:
            raise RuntimeError("FusedMLPStep: epoch() called while another thread steps this model")
        self.busy = True
        try:
            call.plan = &self.plan
            call.labels = <const int64_t *>target_rows if labelled else NULL
            call.targets = NULL if labelled else target_rows
            call.row_weights = NULL
            call.is_double = self.is_double
            call.x = x_rows
            call.profiled = False
            call.failed = 0
            with nogil:
                for k in range(batches):
                    lo = k * batch_size
                    rows = min(batch_size, n - lo)
                    for r in range(rows):
                        source = rows_of[lo + r]
                        if x_converts:
                            _convert_row(x_rows + r * x_bytes, x_all + source * x_row_stride, fan_in, self.is_double)
                        else:
                            memcpy(x_rows + r * x_bytes, x_all + source * x_bytes, x_bytes)
                        memcpy(target_rows + r * target_bytes, targets_all + source * target_bytes, target_bytes)
                    if weight_squares:
                        squares_out[k] = self._weight_squares()
                    _start_step(&self.plan, &call, lr, a, b, eps_of[k], decay_of[k],
                                decay_of[k] if decay_biases else 0.0, t + k + 1, rows)
                    nnk_team_run(&self.team, threads, _run_step_share, &call)
                    if call.failed:
                        break
                    loss_out[k] = call.loss
                    correct_out[k] = call.correct
        finally:
            self.busy = False
        if call.failed:
            raise MemoryError("FusedMLPStep: a GEMM work buffer could not be allocated")
        return losses, correct, squares

    cdef double _weight_squares(self) noexcept nogil:
        """The sum of the squared entries of every layer's weight matrix, in float64."""
        cdef double total = 0.0
        cdef Py_ssize_t count
        cdef int l
        for l in range(self.plan.n_layers):
            count = self.plan.layers[l].fan_in * self.plan.layers[l].fan_out
            if self.is_double:
                total += _squares(<const double *>self.plan.layers[l].w, count)
            else:
                total += _squares(<const float *>self.plan.layers[l].w, count)
        return total
