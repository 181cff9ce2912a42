"""The compiled kernels of the "numba" backend (CPU).

Every kernel is compiled lazily, on its first call, once per dtype (float32, float64) for
C-contiguous arrays, and cached on disk (``cache=True``); importing this module compiles
nothing. Arguments arrive validated by :mod:`nnkern.ops` (Numba does not bounds-check),
and :mod:`nnkern.backends.numba_backend` hands over flat views and dtype-typed scalars.

GEMM. Numba's LLVM pipeline runs the loop vectorizer but not the SLP vectorizer
(``NUMBA_SLP_VECTORIZE`` is off by default), so a register tile of scalar accumulators
laid out along the output row is never turned into vector code (measured: scalar FMAs
only). Two forms that the loop vectorizer does handle:

* dot-product tiles (k > 128, see numba_backend): both operands packed with k contiguous
  (``A`` by rows, ``B`` transposed); a 3x3 tile of output dot products keeps nine vector
  accumulators while LLVM vectorises and reassociates the k loop (6 loads per 9 FMAs; the
  tile alone runs at ~0.9-1.0x OpenBLAS on one core at k = 784). Each output then needs a
  horizontal sum, which short k cannot amortise;
* row updates (short k, e.g. x.T @ dY with k = batch): two output rows at a time receive
  four rows of B at a time, vectorised along the output row.

Transposes are absorbed by packing: none when the operand is already laid out as the form
reads it, one copy per operand otherwise. Edge tiles repeat the last valid row or column
instead of padding, and store only the valid part. Blocking: k in blocks of
``GEMM_KC_BYTES`` so that the six packed rows of a tile stay in L1, rows in blocks of
``GEMM_MC_ROWS`` so that the A block stays in L2, and columns split across threads (each
packs its own columns). The fused linear adds the bias and applies the activation to each
finished column block while it is still in cache.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from . import ACTIVATION_CODES

# The one place that sets the fast-math flags: reassociation and contraction (what lets LLVM
# vectorise reductions and fuse multiply-adds), approximate reciprocals and functions, and
# no signed zeros. Deliberately without "nnan"/"ninf": softmax subtracts a row max that may be
# -inf, the sigmoid and BCE clamp saturate to infinities, and NaNs must propagate.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


def _jit(*, parallel: bool = False):
    """``numba.njit`` for every kernel here: lazy, fast-math, GIL released, cached on disk.
    Where no cache location is writable (read-only install, no writable home and no
    NUMBA_CACHE_DIR) the kernels still work, compiled once per process instead."""

    def decorate(fn):
        options = dict(nogil=True, fastmath=set(FASTMATH), parallel=parallel)
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return numba.njit(**options)(fn)

    return decorate


IDENTITY = ACTIVATION_CODES["identity"]
SIGMOID = ACTIVATION_CODES["sigmoid"]
TANH = ACTIVATION_CODES["tanh"]
RELU = ACTIVATION_CODES["relu"]
LEAKY_RELU = ACTIVATION_CODES["leaky_relu"]
GELU = ACTIVATION_CODES["gelu"]
GELU_TANH = ACTIVATION_CODES["gelu_tanh"]
STEP = ACTIVATION_CODES["step"]

_SQRT1_2 = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TANH_C = 0.044715
BCE_CLAMP = 1e-12

# GEMM blocking (see the module docstring): a k block of 4 KiB per packed row (all of
# MNIST's k = 784 in float32) keeps the six rows a 3x3 tile reads (24 KiB) in a 32 KiB L1;
# 96 rows of such a block (384 KiB) stay in a 512 KiB L2.
GEMM_TILE = 3
GEMM_KC_BYTES = 4096
GEMM_MC_ROWS = 96
# Below this many multiply-adds a GEMM runs on one thread: a parallel region costs more
# than it saves, and leaves the other cores free for the BLAS or a second model.
GEMM_PARALLEL_MIN_FLOPS = 1 << 19
# Up to this k (twice it where op(b) needs no packing) the GEMM updates whole output rows
# (see _gemm_row_updates, _row_updates_pay); beyond it, register tiles of dot products win.
GEMM_ROW_UPDATES_MAX_K = 128


# ---------------------------------------------------------------------------------------
# Scalar activations: computed in the type of their argument (float32 stays float32)
# ---------------------------------------------------------------------------------------


@_jit()
def _sigmoid(x):
    one = type(x)(1)
    e = math.exp(-abs(x))  # from exp(-|x|), so that no exp overflows
    return one / (one + e) if x >= 0 else e / (one + e)


@_jit()
def _gelu(x):
    return type(x)(0.5) * x * (type(x)(1) + math.erf(x * type(x)(_SQRT1_2)))


@_jit()
def _gelu_tanh_inner(x):
    return type(x)(_SQRT_2_OVER_PI) * (x + type(x)(_GELU_TANH_C) * x * x * x)


@_jit()
def _gelu_tanh(x):
    return type(x)(0.5) * x * (type(x)(1) + math.tanh(_gelu_tanh_inner(x)))


@_jit()
def _gelu_grad(x):
    cdf = type(x)(0.5) * (type(x)(1) + math.erf(x * type(x)(_SQRT1_2)))
    pdf = math.exp(type(x)(-0.5) * x * x) * type(x)(_INV_SQRT_2PI)
    return cdf + x * pdf


@_jit()
def _gelu_tanh_grad(x):
    t = math.tanh(_gelu_tanh_inner(x))
    half = type(x)(0.5)
    return half * (type(x)(1) + t) + half * x * (type(x)(1) - t * t) * type(x)(_SQRT_2_OVER_PI) * (
        type(x)(1) + type(x)(3.0 * _GELU_TANH_C) * x * x
    )


# ---------------------------------------------------------------------------------------
# Elementwise kernels on flat arrays: one loop per activation so that the simple ones
# vectorise
# ---------------------------------------------------------------------------------------


@_jit()
def activation(act, x, slope, out):
    n = x.shape[0]
    zero = x.dtype.type(0)
    if act == SIGMOID:
        for i in range(n):
            out[i] = _sigmoid(x[i])
    elif act == TANH:
        for i in range(n):
            out[i] = math.tanh(x[i])
    elif act == RELU:
        for i in range(n):
            out[i] = x[i] if x[i] > zero else zero
    elif act == LEAKY_RELU:
        for i in range(n):
            out[i] = x[i] if x[i] > zero else slope * x[i]
    elif act == GELU:
        for i in range(n):
            out[i] = _gelu(x[i])
    elif act == GELU_TANH:
        for i in range(n):
            out[i] = _gelu_tanh(x[i])
    elif act == STEP:
        one = x.dtype.type(1)
        for i in range(n):
            out[i] = one if x[i] > zero else zero
    else:
        for i in range(n):
            out[i] = x[i]


@_jit()
def activation_grad(act, src, grad_out, slope, out):
    """out = grad_out * act'(...), where ``src`` is the forward output y for sigmoid and
    tanh and the input x for the others (as GRAD_NEEDS_OUTPUT says)."""
    n = src.shape[0]
    zero = src.dtype.type(0)
    one = src.dtype.type(1)
    if act == SIGMOID:
        for i in range(n):
            out[i] = grad_out[i] * (src[i] * (one - src[i]))
    elif act == TANH:
        for i in range(n):
            out[i] = grad_out[i] * (one - src[i] * src[i])
    elif act == RELU:  # the gradient at 0 is taken as 0
        for i in range(n):
            out[i] = grad_out[i] if src[i] > zero else zero
    elif act == LEAKY_RELU:
        for i in range(n):
            out[i] = grad_out[i] if src[i] > zero else grad_out[i] * slope
    elif act == GELU:
        for i in range(n):
            out[i] = grad_out[i] * _gelu_grad(src[i])
    elif act == GELU_TANH:
        for i in range(n):
            out[i] = grad_out[i] * _gelu_tanh_grad(src[i])
    elif act == STEP:
        for i in range(n):
            out[i] = zero
    else:
        for i in range(n):
            out[i] = grad_out[i]


@_jit()
def bias_grad(dy, out):
    """Column sums, accumulated row by row so that the inner loop runs along memory."""
    n, m = dy.shape
    for j in range(m):
        out[j] = dy[0, j]
    for i in range(1, n):
        for j in range(m):
            out[j] += dy[i, j]


# ---------------------------------------------------------------------------------------
# Softmax and losses: one pass per row; losses accumulate in float64
# ---------------------------------------------------------------------------------------


@_jit()
def _exp_shifted_row(x, out):
    """out = exp(x - max(x)); returns (max(x), sum of out in float64)."""
    c = x.shape[0]
    row_max = x[0]
    for j in range(1, c):
        row_max = max(row_max, x[j])
    total = 0.0
    for j in range(c):
        e = math.exp(x[j] - row_max)
        out[j] = e
        total += e
    return row_max, total


@_jit()
def softmax(x, out):
    for r in range(x.shape[0]):
        _, total = _exp_shifted_row(x[r], out[r])
        inv = out.dtype.type(1.0 / total)
        for j in range(x.shape[1]):
            out[r, j] *= inv


@_jit()
def softmax_cross_entropy_labels(logits, labels, dlogits):
    n, c = logits.shape
    inv_n = 1.0 / n
    loss = 0.0
    for r in range(n):
        row_max, total = _exp_shifted_row(logits[r], dlogits[r])
        # -log softmax[label] = log(sum exp(x - max)) + max - x[label]
        loss += math.log(total) + (float(row_max) - float(logits[r, labels[r]]))
        scale = dlogits.dtype.type(inv_n / total)
        for j in range(c):
            dlogits[r, j] *= scale
        dlogits[r, labels[r]] -= dlogits.dtype.type(inv_n)
    return loss * inv_n


@_jit()
def softmax_cross_entropy_targets(logits, targets, dlogits):
    """-sum_c t_c log p_c per row; its gradient is p * sum_c t_c - t."""
    n, c = logits.shape
    inv_n = 1.0 / n
    loss = 0.0
    for r in range(n):
        row_max, total = _exp_shifted_row(logits[r], dlogits[r])
        log_norm = math.log(total) + float(row_max)
        target_sum = 0.0
        for j in range(c):
            t = float(targets[r, j])
            target_sum += t
            loss += t * (log_norm - float(logits[r, j]))
        scale = dlogits.dtype.type(inv_n * target_sum / total)
        t_scale = dlogits.dtype.type(inv_n)
        for j in range(c):
            dlogits[r, j] = dlogits[r, j] * scale - targets[r, j] * t_scale
    return loss * inv_n


@_jit()
def mse(pred, target, half_sum, dpred):
    n = pred.shape[0]
    total = 0.0
    grad_scale = pred.dtype.type(1.0 if half_sum else 2.0 / n)
    for i in range(n):
        diff = pred[i] - target[i]
        total += float(diff) * float(diff)
        dpred[i] = diff * grad_scale
    return 0.5 * total if half_sum else total / n


@_jit()
def binary_cross_entropy(prob, target, dprob):
    """Clamped exactly as the reference: log(max(p, 1e-12)), log(max(1 - p, 1e-12)), and
    the gradient's denominator max(p (1 - p), 1e-12); all in float64."""
    n = prob.shape[0]
    total = 0.0
    for i in range(n):
        p = float(prob[i])
        t = float(target[i])
        total += t * math.log(max(p, BCE_CLAMP)) + (1.0 - t) * math.log(max(1.0 - p, BCE_CLAMP))
        dprob[i] = (p - t) / max(p * (1.0 - p), BCE_CLAMP) / n
    return -total / n


# ---------------------------------------------------------------------------------------
# Optimizer updates: one pass over flat p, g and state; scalars arrive in p's dtype
# ---------------------------------------------------------------------------------------


@_jit()
def sgd_update(p, g, lr):
    for i in range(p.shape[0]):
        p[i] -= lr * g[i]


@_jit()
def momentum_update(p, g, v, lr, momentum):
    for i in range(p.shape[0]):
        vi = momentum * v[i] + g[i]
        v[i] = vi
        p[i] -= lr * vi


@_jit()
def adagrad_update(p, g, h, lr, eps):
    for i in range(p.shape[0]):
        gi = g[i]
        hi = h[i] + gi * gi
        h[i] = hi
        p[i] -= lr * gi / (math.sqrt(hi) + eps)


@_jit()
def rmsprop_update(p, g, h, lr, alpha, one_minus_alpha, eps):
    for i in range(p.shape[0]):
        gi = g[i]
        hi = alpha * h[i] + one_minus_alpha * gi * gi
        h[i] = hi
        p[i] -= lr * gi / (math.sqrt(hi) + eps)


@_jit()
def adadelta_update(p, g, h, d, lr, rho, one_minus_rho, eps):
    for i in range(p.shape[0]):
        gi = g[i]
        hi = rho * h[i] + one_minus_rho * gi * gi
        h[i] = hi
        delta = math.sqrt(d[i] + eps) / math.sqrt(hi + eps) * gi
        d[i] = rho * d[i] + one_minus_rho * delta * delta
        p[i] -= lr * delta


@_jit()
def adam_update(p, g, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
                inv_sqrt_bias_correction2, eps):
    """torch.optim.Adam's form: p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)."""
    for i in range(p.shape[0]):
        gi = g[i]
        mi = beta1 * m[i] + one_minus_beta1 * gi
        vi = beta2 * v[i] + one_minus_beta2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (math.sqrt(vi) * inv_sqrt_bias_correction2 + eps)


# ---------------------------------------------------------------------------------------
# GEMM: out = act(a_rows @ b_cols.T + bias), both operands with k contiguous
# ---------------------------------------------------------------------------------------


@_jit()
def pack_transposed(src, dst, lo, hi):
    """dst[lo:hi] = src[:, lo:hi].T, in 16x16 blocks so that both sides are walked a cache
    line at a time. Each block is a pair of views indexed from 0, so that no index needs a
    wraparound. Every caller passes whole C-contiguous arrays: one compiled version."""
    rows = src.shape[0]
    for r0 in range(0, rows, 16):
        for c0 in range(lo, hi, 16):
            block = src[r0:r0 + 16, c0:min(c0 + 16, hi)]
            block_t = dst[c0:min(c0 + 16, hi), r0:r0 + 16]
            for c in range(block.shape[1]):
                for r in range(block.shape[0]):
                    block_t[c, r] = block[r, c]


@_jit()
def _gemm_tile(a_rows, i, m, b_cols, j, j_end, k0, k1, out, first):
    """The 3x3 output tile at (i, j) over the k block [k0, k1): nine dot products whose k
    loop LLVM vectorises. Rows past ``m`` and columns past ``j_end`` repeat the last valid
    one (no padding, no branch in the loop) and are not stored. The first k block writes
    the tile, the others add to it."""
    # Slices of the k block, so that the loop index is known non-negative and Numba's
    # wraparound of negative indices folds away (else the loads become gathers).
    a0 = a_rows[i, k0:k1]
    a1 = a_rows[min(i + 1, m - 1), k0:k1]
    a2 = a_rows[min(i + 2, m - 1), k0:k1]
    b0 = b_cols[j, k0:k1]
    b1 = b_cols[min(j + 1, j_end - 1), k0:k1]
    b2 = b_cols[min(j + 2, j_end - 1), k0:k1]
    c00 = c01 = c02 = c10 = c11 = c12 = c20 = c21 = c22 = out.dtype.type(0)
    for p in range(k1 - k0):
        x0 = a0[p]
        x1 = a1[p]
        x2 = a2[p]
        y0 = b0[p]
        y1 = b1[p]
        y2 = b2[p]
        c00 += x0 * y0
        c01 += x0 * y1
        c02 += x0 * y2
        c10 += x1 * y0
        c11 += x1 * y1
        c12 += x1 * y2
        c20 += x2 * y0
        c21 += x2 * y1
        c22 += x2 * y2
    tile = ((c00, c01, c02), (c10, c11, c12), (c20, c21, c22))
    # constant trip counts: LLVM unrolls these and the tuple indices become registers
    for r in range(GEMM_TILE):
        if i + r < m:
            for c in range(GEMM_TILE):
                if j + c < j_end:
                    if first:
                        out[i + r, j + c] = tile[r][c]
                    else:
                        out[i + r, j + c] += tile[r][c]


@_jit()
def _bias_activation(out, j0, j1, bias, has_bias, act, slope, spare_row):
    """The linear epilogue on a finished column block (still in L2): + bias, then act. Each
    row segment goes through ``spare_row`` so that the activation never runs in place
    (an in-place call defeats LLVM's vectorizer: its overlap check fails and the scalar,
    branchy loop runs instead, several times slower)."""
    bias_block = bias[j0:j1]
    tmp = spare_row[j0:j1]
    for r in range(out.shape[0]):
        row = out[r, j0:j1]
        if has_bias:
            for j in range(row.shape[0]):
                tmp[j] = row[j] + bias_block[j]
        else:
            for j in range(row.shape[0]):
                tmp[j] = row[j]
        if act != IDENTITY:
            activation(act, tmp, slope, row)
        else:
            for j in range(row.shape[0]):
                row[j] = tmp[j]


@_jit()
def _gemm_row_updates(a, trans_a, b_rows, out, spare_rows, j0, j1):
    """out[:, j0:j1] = op(a) @ b_rows[:, j0:j1] for a short k, where the dot products of
    the tiles are too short to pay for their final horizontal sums. Four output rows at a
    time receive four rows of B at a time, vectorised along the output row (which stays in
    L1). op(a)'s scalars are read where they lie (a[p, i] when trans_a): no packing. Rows
    past the last one go to the three rows of ``spare_rows`` (results thrown away), so that
    every row is computed by the same code whatever the number of rows."""
    m = out.shape[0]
    k = a.shape[0] if trans_a else a.shape[1]
    k4 = k - k % 4
    spare0 = spare_rows[0, j0:j1]
    spare1 = spare_rows[1, j0:j1]
    spare2 = spare_rows[2, j0:j1]
    for i in range(0, m, 4):
        i1 = min(i + 1, m - 1)
        i2 = min(i + 2, m - 1)
        i3 = min(i + 3, m - 1)
        c0 = out[i, j0:j1]
        c1 = out[i1, j0:j1] if i + 1 < m else spare0
        c2 = out[i2, j0:j1] if i + 2 < m else spare1
        c3 = out[i3, j0:j1] if i + 3 < m else spare2
        for j in range(c0.shape[0]):
            c0[j] = 0
            c1[j] = 0
            c2[j] = 0
            c3[j] = 0
        for p in range(0, k4, 4):
            if trans_a:
                x00, x01, x02, x03 = a[p, i], a[p + 1, i], a[p + 2, i], a[p + 3, i]
                x10, x11, x12, x13 = a[p, i1], a[p + 1, i1], a[p + 2, i1], a[p + 3, i1]
                x20, x21, x22, x23 = a[p, i2], a[p + 1, i2], a[p + 2, i2], a[p + 3, i2]
                x30, x31, x32, x33 = a[p, i3], a[p + 1, i3], a[p + 2, i3], a[p + 3, i3]
            else:
                x00, x01, x02, x03 = a[i, p], a[i, p + 1], a[i, p + 2], a[i, p + 3]
                x10, x11, x12, x13 = a[i1, p], a[i1, p + 1], a[i1, p + 2], a[i1, p + 3]
                x20, x21, x22, x23 = a[i2, p], a[i2, p + 1], a[i2, p + 2], a[i2, p + 3]
                x30, x31, x32, x33 = a[i3, p], a[i3, p + 1], a[i3, p + 2], a[i3, p + 3]
            b0 = b_rows[p, j0:j1]
            b1 = b_rows[p + 1, j0:j1]
            b2 = b_rows[p + 2, j0:j1]
            b3 = b_rows[p + 3, j0:j1]
            for j in range(c0.shape[0]):
                y0, y1, y2, y3 = b0[j], b1[j], b2[j], b3[j]
                c0[j] += x00 * y0 + x01 * y1 + x02 * y2 + x03 * y3
                c1[j] += x10 * y0 + x11 * y1 + x12 * y2 + x13 * y3
                c2[j] += x20 * y0 + x21 * y1 + x22 * y2 + x23 * y3
                c3[j] += x30 * y0 + x31 * y1 + x32 * y2 + x33 * y3
        for p in range(k4, k):
            if trans_a:
                x0, x1, x2, x3 = a[p, i], a[p, i1], a[p, i2], a[p, i3]
            else:
                x0, x1, x2, x3 = a[i, p], a[i1, p], a[i2, p], a[i3, p]
            b0 = b_rows[p, j0:j1]
            for j in range(c0.shape[0]):
                y0 = b0[j]
                c0[j] += x0 * y0
                c1[j] += x1 * y0
                c2[j] += x2 * y0
                c3[j] += x3 * y0


@_jit()
def gemm_columns(a, trans_a, b, trans_b, b_pack, row_updates, spare_rows, out, j0, j1, bias,
                 has_bias, act, slope):
    """Columns [j0, j1) of the output: pack them if tiles need it (B columns; row updates
    read ``b_pack``, op(b) packed by the caller), compute them (tiles block by block over k
    and over rows), then add the bias and apply act. Tiles read ``a`` as k-contiguous rows
    (trans_a is False: the caller packed op(a)); row updates read a where it lies. Called
    for all columns, this is the one-thread GEMM (no extra level of compiled code: each
    level costs compile time). ``spare_rows``: (3, n) scratch."""
    m = out.shape[0]
    if row_updates:
        _gemm_row_updates(a, trans_a, b_pack, out, spare_rows, j0, j1)
    else:
        k = a.shape[1]
        if trans_b:
            b_cols = b
        else:
            b_cols = b_pack
            pack_transposed(b, b_pack, j0, j1)
        kc = max(GEMM_KC_BYTES // out.itemsize, 1)
        for k0 in range(0, k, kc):
            k1 = min(k0 + kc, k)
            for i0 in range(0, m, GEMM_MC_ROWS):
                i1 = min(i0 + GEMM_MC_ROWS, m)
                for j in range(j0, j1, GEMM_TILE):
                    for i in range(i0, i1, GEMM_TILE):
                        _gemm_tile(a, i, m, b_cols, j, j1, k0, k1, out, k0 == 0)
    if has_bias or act != IDENTITY:
        _bias_activation(out, j0, j1, bias, has_bias, act, slope, spare_rows[0])


@_jit(parallel=True)
def gemm_parallel(a, trans_a, b, trans_b, b_pack, row_updates, spare_rows, out, bias, has_bias,
                  act, slope, block_cols):
    """The column blocks spread over Numba's threads, each packing its own columns."""
    n = out.shape[1]
    n_blocks = (n + block_cols - 1) // block_cols
    for block in prange(n_blocks):
        j0 = block * block_cols
        gemm_columns(a, trans_a, b, trans_b, b_pack, row_updates, spare_rows, out, j0,
                     min(j0 + block_cols, n), bias, has_bias, act, slope)


@_jit()
def _row_updates_pay(n, k, trans_b):
    """Whether row updates beat tiles (measured at the MNIST shapes, one thread): for k up
    to GEMM_ROW_UPDATES_MAX_K unless the rows are narrow (n < 32) and k is long enough for
    dot products (>= 32); up to twice that k when op(b) needs no packing."""
    if n < 32:
        return k < 32
    return k <= GEMM_ROW_UPDATES_MAX_K or (k <= 2 * GEMM_ROW_UPDATES_MAX_K and not trans_b)


@_jit()
def gemm(a, trans_a, b, trans_b, out, bias, has_bias, act, slope, a_pack, b_pack, spare,
         num_threads):
    """out = act(op(a) @ op(b) + bias), the whole GEMM in one compiled call: picks the
    form (row updates or tiles, _row_updates_pay), packs what the form needs
    into the caller's flat scratch buffers and splits the columns over Numba's threads.

    Scratch: ``a_pack`` >= m*k elements when trans_a and tiles; ``b_pack`` >= k*n elements
    unless b is read as it is (row updates without trans_b, tiles with trans_b); ``spare``
    >= 3*n. ``bias`` is never read unless ``has_bias`` (pass any array of the dtype).
    ``num_threads``: at most Numba's current thread count (nnkern's, passed in because a
    kernel that asks Numba for it cannot be cached on disk)."""
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    row_updates = _row_updates_pay(n, k, trans_b)
    # Tiles read k-contiguous rows of op(a): a transposed op(a) is packed once here. Row
    # updates read rows of op(b) (short: packed here when b is transposed); tiles read
    # k-contiguous rows of op(b).T, packed per column block by gemm_columns unless b is
    # already op(b).T.
    if trans_a and not row_updates:
        a_op = a_pack[:m * k].reshape((m, k))
        pack_transposed(a, a_op, 0, m)
        a_trans = False
    else:
        a_op = a
        a_trans = trans_a
    if row_updates and trans_b:
        packed_b = b_pack[:k * n].reshape((k, n))
        pack_transposed(b, packed_b, 0, k)
    elif row_updates or trans_b:
        packed_b = b
    else:
        packed_b = b_pack[:n * k].reshape((n, k))
    spare_rows = spare[:3 * n].reshape((3, n))
    threads = min(num_threads, (n + GEMM_TILE - 1) // GEMM_TILE)
    if threads > 1 and m * n * k >= GEMM_PARALLEL_MIN_FLOPS:
        block_cols = (n + threads - 1) // threads
        block_cols = (block_cols + GEMM_TILE - 1) // GEMM_TILE * GEMM_TILE
        gemm_parallel(a_op, a_trans, b, trans_b, packed_b, row_updates, spare_rows, out, bias,
                      has_bias, act, slope, block_cols)
    else:
        gemm_columns(a_op, a_trans, b, trans_b, packed_b, row_updates, spare_rows, out, 0, n,
                     bias, has_bias, act, slope)
