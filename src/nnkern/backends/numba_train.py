"""The fused training step of the "numba" backend.

One compiled call (the step :func:`train_step_for` makes for an update rule) runs a whole
optimisation step of an MLP (Linear layers, each followed by an elementwise activation;
the last layer's output z goes to the loss head): forward with the bias and the
activation fused into the GEMM, the loss and its gradient by z in one pass (the head:
fused softmax-cross-entropy on integer labels, or a float-target head, :func:`_float_head`),
backward with the activation-derivative mask, and the optimizer update of every parameter,
into buffers preallocated for the largest batch. It releases the GIL and allocates nothing.

The arithmetic is that of the separate kernels of numba_kernels: the same GEMM
(``numba_kernels.gemm``), loss, activation and update kernels, called from compiled code,
with the optimizer's scalars converted exactly as numba_backend converts them. A step
therefore equals the layer-by-layer path to round-off. Layer l's parameters are updated as
soon as the gradient flowing to layer l-1 has been computed from them, the last time the
step reads them.

Sparse input (``sparse_input``, chosen by :mod:`nnkern.engine` from the data): the first
layer's forward and weight gradient run over the nonzeros of x only, listed once per step
(the row lists, then the column lists), as the Cython step does (kernels/cython/
nnk_sparse_impl.h): the same sums without their zero terms.

Every array reaches the compiled step through one typed list of flat arrays (``bufs``)
and an integer table of the layers (which entry of ``bufs`` holds what), so that one
compiled specialisation per update rule and dtype (and dense or sparse first layer, plain
or weighted mean) serves every depth and width. The rule is the step's compile-time
constant (:func:`train_step_for`), so that a first fit compiles its optimizer's update
only. Compilation is lazy (on the first step of one) and cached on disk, as for every
numba kernel.

Arguments are validated by :mod:`nnkern.engine` before this module is reached.
"""

from __future__ import annotations

import collections
import functools
import math

import numpy as np
from numba import prange, typed, types

from . import ACTIVATION_CODES, OUTPUT_HEAD_CODES, UPDATE_RULE_CODES, UPDATE_RULES
from . import numba_backend as _backend
from . import numba_kernels as _k

__all__ = ["FusedMLPStep", "train_step_for", "OUTPUT_HEAD_CODES"]

# Columns of the layer table: sizes, activation, then indices into ``bufs`` (0: the dummy).
FAN_IN, FAN_OUT, ACT, KEEP_PREACT, W, B, GW, GB, H, Z, W_S0, W_S1, B_S0, B_S1 = range(14)
TABLE_COLUMNS = 14

# Entries of the ``hyper`` array (in the parameters' dtype), as numba_backend converts them.
LR, A, ONE_MINUS_A, B_, ONE_MINUS_B, EPS, NEG_WEIGHT_DECAY, STEP_SIZE, INV_SQRT_BC2, DECAY = range(10)
HYPER_SIZE = 10

# The update rules' codes, as nnkern.backends.UPDATE_RULE_CODES defines them.
RULE_SGD, RULE_MOMENTUM, RULE_ADAGRAD, RULE_RMSPROP, RULE_ADADELTA, RULE_ADAM, RULE_ADAMW, RULE_NESTEROV = (
    UPDATE_RULE_CODES[name]
    for name in ("sgd", "momentum", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "nesterov"))

IDENTITY = ACTIVATION_CODES["identity"]

# The loss heads' codes, as nnkern.backends.OUTPUT_HEAD_CODES defines them.
HEAD_SOFTMAX_CROSS_ENTROPY, HEAD_IDENTITY_SQUARED, HEAD_LOGISTIC_LOG_LOSS, HEAD_SIGMOID_BCE = (
    OUTPUT_HEAD_CODES[name]
    for name in ("softmax_cross_entropy", "identity_squared", "logistic_log_loss", "sigmoid_bce"))

# scikit-learn's clip of the logistic output's p, per dtype (np.finfo's eps), and BCELoss's
# clamp of its logs and gradient denominator (numpy_backend.BCE_CLAMP).
EPS_FLOAT32, EPS_FLOAT64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)
BCE_CLAMP = 1e-12


# Each update rule as one kernel of (p, g, s0, s1, hyper), in the order of the rule codes
# (UPDATE_RULES): _update picks its rule from this table by a compile-time code, so that a
# step compiles its optimizer's rule only.


@_k._jit()
def _sgd(p, g, s0, s1, hyper):
    _k.sgd_update(p, g, hyper[LR])


@_k._jit()
def _momentum(p, g, s0, s1, hyper):
    _k.momentum_update(p, g, s0, hyper[LR], hyper[A])


@_k._jit()
def _adagrad(p, g, s0, s1, hyper):
    _k.adagrad_update(p, g, s0, hyper[LR], hyper[EPS])


@_k._jit()
def _rmsprop(p, g, s0, s1, hyper):
    _k.rmsprop_update(p, g, s0, hyper[LR], hyper[A], hyper[ONE_MINUS_A], hyper[EPS])


@_k._jit()
def _adadelta(p, g, s0, s1, hyper):
    _k.adadelta_update(p, g, s0, s1, hyper[LR], hyper[A], hyper[ONE_MINUS_A], hyper[EPS])


@_k._jit()
def _adam(p, g, s0, s1, hyper):
    _k.adam_update(p, g, s0, s1, hyper[A], hyper[ONE_MINUS_A], hyper[B_], hyper[ONE_MINUS_B],
                   hyper[STEP_SIZE], hyper[INV_SQRT_BC2], hyper[EPS])


@_k._jit()
def _adamw(p, g, s0, s1, hyper):
    _k.adamw_update(p, g, s0, s1, hyper[DECAY], hyper[A], hyper[ONE_MINUS_A], hyper[B_],
                    hyper[ONE_MINUS_B], hyper[STEP_SIZE], hyper[INV_SQRT_BC2], hyper[EPS])


@_k._jit()
def _nesterov(p, g, s0, s1, hyper):
    _k.nesterov_update(p, g, s0, hyper[LR], hyper[A])


# A named tuple: Numba types it field by field (a plain tuple of different dispatchers
# would first be tried as a tuple of first-class functions, with an "experimental" warning).
RuleUpdates = collections.namedtuple("RuleUpdates", UPDATE_RULES)
RULE_UPDATES = RuleUpdates(sgd=_sgd, momentum=_momentum, adagrad=_adagrad, rmsprop=_rmsprop,
                           adadelta=_adadelta, adam=_adam, adamw=_adamw, nesterov=_nesterov)


@_k._jit()
def _update(rule, p, g, s0, s1, hyper, weight_decay):
    """One optimizer update of a flat parameter, by the numba backend's update kernels.
    rule: a compile-time code (a Literal type; Numba compiles this kernel once per rule and
    types the table lookup, hence only that rule's kernel). weight_decay: add the L2 term to
    g first (AdamW's decoupled decay is in hyper[DECAY])."""
    if weight_decay:  # g += wd * p, as nnkern.optim does it: g -= (-wd) * p
        _k.sgd_update(g, p, hyper[NEG_WEIGHT_DECAY])
    RULE_UPDATES[rule](p, g, s0, s1, hyper)


# Below this many elements one thread updates a parameter (as in the Cython update rules):
# a parallel region costs more than the memory pass it would split.
UPDATE_PARALLEL_MIN = 1 << 15


@_k._jit(parallel=True)
def _update_any(rule, p, g, s0, s1, hyper, weight_decay, num_threads):
    """_update, on num_threads contiguous chunks of p, one per thread, where p is large
    enough to pay for a parallel region (elementwise rules: the same numbers as one pass).
    Absent states are the 1-element dummy, never read. rule: a compile-time code, as for
    _update (one specialisation per rule)."""
    n = p.shape[0]
    if num_threads > 1 and n >= UPDATE_PARALLEL_MIN:
        chunk = (n + num_threads - 1) // num_threads
        for c in prange(num_threads):
            lo = min(c * chunk, n)
            hi = min(lo + chunk, n)
            _update(rule, p[lo:hi], g[lo:hi], s0[lo:hi] if s0.shape[0] == n else s0,
                    s1[lo:hi] if s1.shape[0] == n else s1, hyper, weight_decay)
    else:
        _update(rule, p, g, s0, s1, hyper, weight_decay)


@_k._jit(inline=True)
def _add_scaled(dst, a, src):
    """dst += a * src (1-D, of dst's length)."""
    for j in range(dst.shape[0]):
        dst[j] += a * src[j]


@_k._jit(inline=True)
def _add_scaled4(dst, a0, s0, a1, s1, a2, s2, a3, s3):
    """dst += a0 * s0 + a1 * s1 + a2 * s2 + a3 * s3: one load and store of dst for four
    source rows."""
    for j in range(dst.shape[0]):
        dst[j] += a0 * s0[j] + a1 * s1[j] + a2 * s2[j] + a3 * s3[j]


@_k._jit(parallel=True)
def _sparse_linear(x, w, bias, out, cols, row_count):
    """out = x @ w + bias from the nonzeros of x, listing each row's nonzero columns first
    (into cols, a row's list at stride fan_in, and row_count); rows split over threads.
    Four nonzeros per pass over the output row: one load and store of it per four rows of
    w (1.3-1.5x faster than one per nonzero); the scan is branch-free (MNIST's zeros and
    nonzeros mix too irregularly for a branch predictor)."""
    rows, k = x.shape
    n = w.shape[1]
    for i in prange(rows):
        xi = x[i]
        ci = cols[i * k:(i + 1) * k]
        count = 0
        for j in range(k):
            ci[count] = j
            count += xi[j] != 0
        row_count[i] = count
        oi = out[i]
        for j in range(n):
            oi[j] = bias[j]
        e = 0
        while e + 4 <= count:
            c0, c1, c2, c3 = ci[e], ci[e + 1], ci[e + 2], ci[e + 3]
            _add_scaled4(oi, xi[c0], w[c0], xi[c1], w[c1], xi[c2], w[c2], xi[c3], w[c3])
            e += 4
        for e in range(e, count):
            _add_scaled(oi, xi[ci[e]], w[ci[e]])


@_k._jit(parallel=True)
def _sparse_weight_grad(x, delta, gw, cols, row_count, rows_of, col_count):
    """gw = x.T @ delta from the nonzeros of x (the row lists of _sparse_linear), through
    the column lists (rows_of at stride rows, col_count); gw's rows split over threads,
    four of x's rows per pass over a row of gw (as in _sparse_linear)."""
    rows, k = x.shape
    n = delta.shape[1]
    col_count[:] = 0
    for i in range(rows):
        for e in range(row_count[i]):
            c = cols[i * k + e]
            rows_of[c * rows + col_count[c]] = i
            col_count[c] += 1
    for c in prange(k):
        g = gw[c]
        for j in range(n):
            g[j] = 0
        ri = rows_of[c * rows:(c + 1) * rows]
        count = col_count[c]
        e = 0
        while e + 4 <= count:
            i0, i1, i2, i3 = ri[e], ri[e + 1], ri[e + 2], ri[e + 3]
            _add_scaled4(g, x[i0, c], delta[i0], x[i1, c], delta[i1], x[i2, c], delta[i2],
                         x[i3, c], delta[i3])
            e += 4
        for e in range(e, count):
            _add_scaled(g, x[ri[e], c], delta[ri[e]])


@_k._jit()
def _float_head(head, z, targets, row_weights, row_scale, grad_scale, loss_scale, delta):
    """The float-target heads on the last Linear's output z against targets (rows x
    outputs), as the Cython step's _float_head: p = z (identity_squared) or sigmoid(z) (by
    the numba Sigmoid layer's function); delta = grad_scale * (p - y) * the row's scale
    (row_scale, or row_weights[r]), for sigmoid_bce BCELoss's gradient by p (its denominator
    p (1 - p) clamped) times the sigmoid's p (1 - p), as the layer path computes it. Returns
    (the loss: loss_scale times the sum over the rows of each row's scale times its
    elements' summed losses, squared errors, binary log losses with p clipped to
    [eps, 1 - eps] of the dtype, or BCELoss's with clamped logs; right predictions: rows
    whose every p is on its target's side of 0.5, none for identity_squared)."""
    rows, cols = z.shape
    single = z.itemsize == 4
    clip = EPS_FLOAT32 if single else EPS_FLOAT64
    one = z.dtype.type(1)
    loss = 0.0
    correct = 0
    for r in range(rows):
        if row_weights is None:
            row = row_scale
        else:
            row = row_weights[r]
        scale = grad_scale * row
        row_loss = 0.0
        if head == HEAD_IDENTITY_SQUARED:
            for j in range(cols):
                diff = float(z[r, j]) - float(targets[r, j])
                row_loss += diff * diff
                delta[r, j] = scale * diff
        else:
            right = True
            for j in range(cols):
                p = _k._sigmoid_f32(z[r, j]) if single else _k._sigmoid(z[r, j])
                pd, t = float(p), float(targets[r, j])
                right = right and (pd > 0.5) == (t > 0.5)
                if head == HEAD_LOGISTIC_LOG_LOSS:
                    clipped = min(max(pd, clip), 1.0 - clip)
                    row_loss -= t * math.log(clipped) + (1.0 - t) * math.log(1.0 - clipped)
                    delta[r, j] = scale * (pd - t)
                else:
                    row_loss -= t * math.log(max(pd, BCE_CLAMP)) + (1.0 - t) * math.log(max(1.0 - pd, BCE_CLAMP))
                    d = z.dtype.type(scale * (pd - t) / max(pd * (1.0 - pd), BCE_CLAMP))
                    delta[r, j] = d * (p * (one - p))
            correct += right
        loss += row_loss * row
    return loss * loss_scale, correct


@functools.cache
def train_step_for(rule: int):
    """The compiled training step of one optimizer update rule (its code, UPDATE_RULE_CODES).
    The code is a constant of the step (a closure over it), which reaches _update_any and
    _update as a Literal type: each rule's step compiles that rule's update kernel only, not
    all eight. Numba caches each rule's step on disk under the one function, keyed by the
    closure's value."""

    @_k._jit()
    def train_step(x, labels, targets, head, head_scales, row_weights, bufs, table, slopes, hyper, bias_hyper,
                   weight_decay, bias_weight_decay, delta0, delta1, delta2, a_tail, b_pack, spare, sparse_lists,
                   num_threads):
        """One training step on (x, labels or targets): returns (the loss, right predictions:
        rows whose first largest logit is their label, or those _float_head counts).
        x: (rows, fan_in) C-contiguous; labels int64 in range for the softmax head, else
        None and targets (rows, outputs) of x's dtype, for the float head ``head`` with
        head_scales (row scale without weights, gradient scale, loss scale) (_float_head).
        row_weights: float64, each row's share of a weighted mean loss (its weight in a
        loss summed over rows), or None for the plain mean (sum).
        bias_hyper, bias_weight_decay: the biases' hyperparameters and L2 flag (their weight
        decay may differ from the weights').
        delta0-2: flat buffers of rows * the widest layer; the derivative mask reads one and
        writes another (in place, LLVM would not vectorise it). sparse_lists: None, or the
        first layer reads only x's nonzeros, listed in (cols, row_count, rows_of, col_count)
        (int32).

        None arguments are told apart by type: Numba compiles the step once per combination
        and prunes the branches of the absent ones before typing them, so that a dense,
        unweighted fit compiles neither the sparse kernels nor the weighted loss."""
        rows = x.shape[0]
        n_layers = table.shape[0]
        dummy = bufs[0]
        zero = slopes.dtype.type(0)
        # run-time flags and codes: constants would reach numba_kernels.gemm as Literal types,
        # and it would be compiled once per combination of them (numba_kernels._jit)
        no, yes, identity = bool(False), bool(True), int(IDENTITY)

        inp = x
        for l in range(n_layers):  # forward: h = act(inp @ W + b), fused in the GEMM
            fan_in, fan_out, act = table[l, FAN_IN], table[l, FAN_OUT], table[l, ACT]
            w = bufs[table[l, W]].reshape((fan_in, fan_out))
            h = bufs[table[l, H]][:rows * fan_out].reshape((rows, fan_out))
            if sparse_lists is not None and l == 0:
                cols, row_count, _, _ = sparse_lists
                pre = bufs[table[l, Z]][:rows * fan_out] if table[l, KEEP_PREACT] else h.reshape(-1)
                _sparse_linear(inp, w, bufs[table[l, B]], pre.reshape((rows, fan_out)), cols, row_count)
                _k.activation(act, pre, slopes[l], h.reshape(-1))
            elif table[l, KEEP_PREACT]:
                z = bufs[table[l, Z]][:rows * fan_out]
                _k.gemm(inp, no, w, no, z.reshape((rows, fan_out)), bufs[table[l, B]], yes,
                        identity, slopes[l], a_tail, b_pack, spare, num_threads)
                _k.activation(act, z, slopes[l], h.reshape(-1))
            else:
                _k.gemm(inp, no, w, no, h, bufs[table[l, B]], yes, act, slopes[l], a_tail,
                        b_pack, spare, num_threads)
            inp = h

        n_classes = table[n_layers - 1, FAN_OUT]
        logits = bufs[table[n_layers - 1, H]][:rows * n_classes].reshape((rows, n_classes))
        delta = delta0[:rows * n_classes].reshape((rows, n_classes))
        # two tests of None, not one with an else: Numba prunes the branch of an argument
        # that is None, not the other branch of an array's test
        loss, correct = 0.0, 0
        if targets is not None:
            loss, correct = _float_head(head, logits, targets, row_weights, head_scales[0], head_scales[1],
                                        head_scales[2], delta)
        if labels is not None:
            if row_weights is not None:
                loss = _k.softmax_cross_entropy_labels_weighted(logits, labels, row_weights, delta)
            else:
                loss = _k.softmax_cross_entropy_labels(logits, labels, delta)
            for r in range(rows):
                best = 0
                for j in range(1, n_classes):
                    if logits[r, j] > logits[r, best]:
                        best = j
                if best == labels[r]:
                    correct += 1

        current, free0, free1 = delta0, delta1, delta2
        for l in range(n_layers - 1, -1, -1):  # backward, updating each layer once used
            fan_in, fan_out = table[l, FAN_IN], table[l, FAN_OUT]
            delta = current[:rows * fan_out].reshape((rows, fan_out))
            if l == 0:
                inp = x
            else:
                inp = bufs[table[l - 1, H]][:rows * fan_in].reshape((rows, fan_in))
            w = bufs[table[l, W]].reshape((fan_in, fan_out))
            gw = bufs[table[l, GW]].reshape((fan_in, fan_out))
            # dW = inp.T @ delta; db = column sums of delta
            if sparse_lists is not None and l == 0:
                cols, row_count, rows_of, col_count = sparse_lists
                _sparse_weight_grad(inp, delta, gw, cols, row_count, rows_of, col_count)
            else:
                _k.gemm(inp, yes, delta, no, gw, dummy, no, identity, zero, a_tail, b_pack, spare,
                        num_threads)
            _k.bias_grad(delta, bufs[table[l, GB]])
            if l > 0:  # delta for the layer below: (delta @ W.T) * act'(its z or h)
                below = l - 1
                grad = free0[:rows * fan_in]
                _k.gemm(delta, no, w, yes, grad.reshape((rows, fan_in)), dummy, no, identity, zero,
                        a_tail, b_pack, spare, num_threads)
                src = bufs[table[below, Z] if table[below, KEEP_PREACT] else table[below, H]]
                _k.activation_grad(table[below, ACT], src[:rows * fan_in], grad, slopes[below],
                                   free1[:rows * fan_in])
                current, free0, free1 = free1, current, free0
            _update_any(rule, bufs[table[l, W]], bufs[table[l, GW]], bufs[table[l, W_S0]],
                        bufs[table[l, W_S1]], hyper, weight_decay, num_threads)
            _update_any(rule, bufs[table[l, B]], bufs[table[l, GB]], bufs[table[l, B_S0]],
                        bufs[table[l, B_S1]], bias_hyper, bias_weight_decay, num_threads)
        return loss, correct

    return train_step


@_k._jit()
def _buffer_list(first):
    """A typed list of flat arrays holding ``first``. Built by cached kernels (this and
    _append_buffer): typed.List(arrays) from Python compiles Numba's own list helpers in
    every process, about a second of each first step."""
    arrays = typed.List()
    arrays.append(first)
    return arrays


@_k._jit()
def _append_buffer(arrays, array):
    arrays.append(array)


class FusedMLPStep:
    """A preallocated training step for one model, optimizer and largest batch size, with
    the constructor and ``step`` of the Cython backend's ``_cy_train.FusedMLPStep``.

    ``layers``: (W, b, gW, gb, act_code, slope, keep_preact, h, z, w_state, b_state) per
    layer, arrays C-contiguous of one dtype, h (and z where kept) of shape
    (max_rows, fan_out), the state tuples of 0-2 arrays; ``delta0``/``delta1``: two flat
    buffers of max_rows * max width. The object keeps every array alive. ``sparse_input``:
    the first layer reads only the nonzeros of x. ``head``: the loss head's code
    (OUTPUT_HEAD_CODES), with its ``grad_scale``, ``loss_scale`` and ``sums_rows`` (the loss
    sums over the rows instead of averaging; see _float_head).
    """

    def __init__(self, layers, delta0, delta1, rule: int, is_double: bool, max_rows: int,
                 sparse_input: bool = False, head: int = HEAD_SOFTMAX_CROSS_ENTROPY, grad_scale: float = 1.0,
                 loss_scale: float = 1.0, sums_rows: bool = False):
        if head not in OUTPUT_HEAD_CODES.values():
            raise ValueError(f"FusedMLPStep: no loss head of code {head}")
        self.head, self.sums_rows = int(head), bool(sums_rows)
        self.head_scales = np.array([1.0, grad_scale, loss_scale])  # the row scale is set at each step
        dtype = np.dtype(np.float64 if is_double else np.float32)
        self.dtype = dtype
        self.rule = int(rule)
        self.train_step = train_step_for(self.rule)  # compiled on its first call, or loaded
        self.max_rows = int(max_rows)
        self.delta0, self.delta1 = delta0.reshape(-1), delta1.reshape(-1)
        self.delta2 = np.empty_like(self.delta0)
        bufs = [np.zeros(1, dtype)]  # entry 0: the dummy for absent arrays

        def index(array):
            if array is None:
                return 0
            bufs.append(array.reshape(-1))  # a view: the step writes into the model's arrays
            return len(bufs) - 1

        table = np.zeros((len(layers), TABLE_COLUMNS), np.int64)
        slopes = np.zeros(len(layers), dtype)
        a_size, b_size, spare_size = 1, 1, 1
        for l, (w, b, gw, gb, act, slope, keep_preact, h, z, w_state, b_state) in enumerate(layers):
            w_state = tuple(w_state) + (None, None)
            b_state = tuple(b_state) + (None, None)
            table[l, FAN_IN], table[l, FAN_OUT] = w.shape
            table[l, ACT], table[l, KEEP_PREACT] = act, bool(keep_preact)
            for column, array in ((W, w), (B, b), (GW, gw), (GB, gb), (H, h), (Z, z),
                                  (W_S0, w_state[0]), (W_S1, w_state[1]),
                                  (B_S0, b_state[0]), (B_S1, b_state[1])):
                table[l, column] = index(array)
            slopes[l] = slope
            # the three GEMMs of the layer: forward, dW = inp.T @ delta, delta @ W.T
            fan_in, fan_out = w.shape
            for m, n, k in ((self.max_rows, fan_out, fan_in), (fan_in, fan_out, self.max_rows),
                            (self.max_rows, fan_in, fan_out)):
                sizes = _k.gemm_scratch_sizes(m, n, k)
                a_size, b_size, spare_size = (max(a_size, sizes[0]), max(b_size, sizes[1]),
                                              max(spare_size, sizes[2]))
        self.bufs = _buffer_list(bufs[0])
        for array in bufs[1:]:
            _append_buffer(self.bufs, array)
        self.table = table
        self.slopes = slopes
        self.hyper = np.zeros(HYPER_SIZE, dtype)
        self.bias_hyper = np.zeros(HYPER_SIZE, dtype)
        # GEMM scratch (numba_kernels.gemm): op(a)'s partial row panel, packed op(b),
        # epilogue row and edge tiles, for the largest of the step's GEMMs
        self.a_tail = np.empty(a_size, dtype)
        self.b_pack = np.empty(b_size, dtype)
        self.spare = np.empty(spare_size, dtype)
        # the sparse input's index lists (cols, row_count, rows_of, col_count), or None
        self.sparse_input = bool(sparse_input)
        self.sparse_lists = None
        if sparse_input:
            fan_in = int(table[0, FAN_IN])
            self.sparse_lists = (np.empty(self.max_rows * fan_in, np.int32), np.empty(self.max_rows, np.int32),
                                 np.empty(self.max_rows * fan_in, np.int32), np.empty(fan_in, np.int32))

    def is_compiled(self) -> bool:
        """Whether this process has the step compiled (or loaded from Numba's cache) for
        this rule and kind of targets (labels, or the float heads'), so that a first call
        takes no compilation (bar a weighted or sparse variant of it)."""
        float_targets = self.head != HEAD_SOFTMAX_CROSS_ENTROPY
        return any(isinstance(signature[1], types.NoneType) == float_targets
                   for signature in self.train_step.signatures)

    def step(self, x, targets, lr, a, b, eps, weight_decay, t, num_threads, row_weights=None,
             bias_weight_decay=None):
        """One step on the batch (x, targets): returns (the loss, right predictions), as the
        Cython step's. x: (rows, fan_in) C-contiguous of the model's dtype, rows <= max_rows;
        targets: int64 labels (rows,) for the softmax head, else (rows, outputs)
        C-contiguous of x's dtype. ``row_weights``: float64 (rows,), each row's share of a
        weighted mean loss (summing to 1), or its weight in a loss summed over rows
        (``sums_rows``); None: the plain mean (sum). ``bias_weight_decay``: the biases'
        weight decay (None: ``weight_decay``)."""
        rows = len(targets)
        if rows == 0 or rows > self.max_rows:
            raise ValueError(f"FusedMLPStep: batch of {rows} rows, expected 1..{self.max_rows}")
        if len(x) != rows:
            raise ValueError(f"FusedMLPStep: {len(x)} rows of x for {rows} targets")
        labels = targets if self.head == HEAD_SOFTMAX_CROSS_ENTROPY else None
        if labels is None:
            outputs = int(self.table[-1, FAN_OUT])
            if targets.ndim != 2 or targets.shape[1] != outputs:
                raise ValueError(f"FusedMLPStep: targets of shape {targets.shape} for {outputs} outputs")
            self.head_scales[0] = 1.0 if self.sums_rows else 1.0 / rows
        else:
            targets = None
        if row_weights is not None and len(row_weights) != rows:
            raise ValueError(f"FusedMLPStep: {len(row_weights)} row weights for a batch of {rows} rows")
        hyper = self.hyper
        hyper[LR], hyper[A], hyper[B_], hyper[EPS] = lr, a, b, eps
        hyper[ONE_MINUS_A], hyper[ONE_MINUS_B] = 1.0 - a, 1.0 - b
        hyper[NEG_WEIGHT_DECAY] = -weight_decay
        hyper[DECAY] = 1.0 - lr * weight_decay
        if self.rule in (RULE_ADAM, RULE_ADAMW):
            hyper[STEP_SIZE], hyper[INV_SQRT_BC2] = _backend.adam_scalars(t, lr, a, b)
        l2_decay = weight_decay != 0.0 and self.rule != RULE_ADAMW
        bias_hyper, bias_l2_decay = hyper, l2_decay
        if bias_weight_decay is not None and bias_weight_decay != weight_decay:
            bias_hyper = self.bias_hyper
            bias_hyper[:] = hyper
            bias_hyper[NEG_WEIGHT_DECAY] = -bias_weight_decay
            bias_hyper[DECAY] = 1.0 - lr * bias_weight_decay
            bias_l2_decay = bias_weight_decay != 0.0 and self.rule != RULE_ADAMW
        with _backend.parallel_threads(num_threads) as threads:
            return self.train_step(x, labels, targets, self.head, self.head_scales, row_weights, self.bufs,
                                   self.table, self.slopes, hyper, bias_hyper, l2_decay, bias_l2_decay, self.delta0,
                                   self.delta1, self.delta2, self.a_tail, self.b_pack, self.spare, self.sparse_lists,
                                   threads)
