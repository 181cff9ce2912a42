"""Numba CUDA kernels of the "cuda" backend (launched by :mod:`cuda_backend`).

(One module on purpose, above the ~700 lines the project aims for: every kernel is built
inside one closure per dtype, :func:`kernel_family`, which a split would have to repeat.)

The kernels are built once per float dtype by :func:`kernel_family`: their constants
(``ONE``, ``HALF``, ...) are NumPy scalars of that dtype captured by closure, so Numba
types them as float32 in the float32 family and no float32 kernel is silently promoted
to float64 by a Python float literal. Only the loss sums are float64 on purpose, as in
the NumPy reference (and binary cross entropy computes in float64 throughout, as the
reference does).

:func:`compile_targets` lists every (kernel, signature) pair the backend launches; the
PTX check (tests/cuda_ptx) compiles each of them with the real CUDA compiler, which the
simulator does not run.

Layout of the work:

* GEMM: a 64x64 output tile per block of 16x16 threads, each thread a 4x4 register
  tile (rows ``ty + 16 i``, columns ``tx + 16 j``, so stores are coalesced and shared
  reads are broadcasts), K in steps of 16 through shared memory. Transposed operands are
  read in their stored layout (coalesced) and written transposed into the shared tile;
  nothing is materialised. ``linear`` is the same GEMM with a bias + activation epilogue.
* Row kernels (softmax, softmax cross entropy): one block of ``ROW_THREADS`` (a warp)
  per row, shared-memory tree reductions for the row max and sums.
* Elementwise kernels and optimizer updates: 1-D grid-stride loops.
* Losses: per-block (or per-row) float64 partial sums, then one block sums them into a
  single float64 on the device; the host reads back that one scalar.
"""

from __future__ import annotations

import math
from functools import cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import cuda, types

from . import ACTIVATION_CODES
from .numpy_backend import BCE_CLAMP

THREADS = 256
"""Threads per block of the elementwise, reduction and bias-gradient kernels."""
ROW_THREADS = 32
"""Threads per block (one block per row) of softmax and softmax cross entropy: one warp,
as rows are short in a classifier (10 classes for MNIST); a power of two."""
MAX_BLOCKS = 4096
"""Grid cap of the grid-stride kernels."""
REDUCE_BLOCKS = 256
"""At most this many per-block partial sums per loss (summed by one block of THREADS)."""

TILE = 64
TILE_K = 16
GEMM_SIDE = 16
"""The GEMM block is GEMM_SIDE x GEMM_SIDE threads; each computes a (TILE/GEMM_SIDE)^2 tile."""
_PER_THREAD = TILE // GEMM_SIDE
_GEMM_THREADS = GEMM_SIDE * GEMM_SIDE
_TILE_LOADS = TILE * TILE_K // _GEMM_THREADS
_TILE_PADDED = TILE + 1  # shared tiles get one spare column: see matmul
BIAS_COLUMNS = 32
BIAS_ROW_GROUPS = 8
"""bias_grad blocks are BIAS_COLUMNS x BIAS_ROW_GROUPS threads: columns coalesced, rows split."""

_IDENTITY = ACTIVATION_CODES["identity"]
_SIGMOID = ACTIVATION_CODES["sigmoid"]
_TANH = ACTIVATION_CODES["tanh"]
_RELU = ACTIVATION_CODES["relu"]
_LEAKY_RELU = ACTIVATION_CODES["leaky_relu"]
_GELU = ACTIVATION_CODES["gelu"]
_GELU_TANH = ACTIVATION_CODES["gelu_tanh"]
_STEP = ACTIVATION_CODES["step"]


# ---------------------------------------------------------------------------------------
# Block reductions (any dtype): every thread of the block calls them with its value and
# gets the block's result; `buf` is a shared array of one element per thread.
# ---------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _block_sum(buf, value):
    tid = cuda.threadIdx.x
    buf[tid] = value
    cuda.syncthreads()
    stride = buf.shape[0] // 2
    while stride > 0:
        if tid < stride:
            buf[tid] += buf[tid + stride]
        cuda.syncthreads()
        stride //= 2
    total = buf[0]
    cuda.syncthreads()  # buf is reused by the next reduction
    return total


@cuda.jit(device=True)
def _block_max(buf, value):
    tid = cuda.threadIdx.x
    buf[tid] = value
    cuda.syncthreads()
    stride = buf.shape[0] // 2
    while stride > 0:
        if tid < stride:
            buf[tid] = max(buf[tid], buf[tid + stride])
        cuda.syncthreads()
        stride //= 2
    result = buf[0]
    cuda.syncthreads()
    return result


def _sum_reduce(values, total):
    """total[0] = sum(values), by one block of THREADS threads (float64)."""
    buf = cuda.shared.array(THREADS, types.float64)
    acc = 0.0
    for i in range(cuda.threadIdx.x, values.shape[0], THREADS):
        acc += values[i]
    result = _block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        total[0] = result


sum_reduce = cuda.jit(_sum_reduce)
_SUM_REDUCE_SIGNATURE = (types.float64[::1], types.float64[::1])


@cache
def kernel_family(dtype) -> SimpleNamespace:
    """The kernels for one float dtype (float32 or float64), built and cached on first use.

    The namespace holds the launchable kernels by name, ``scalar`` (the NumPy scalar type
    their float arguments are passed as), ``signatures``: name -> (Python function,
    argument types) of every kernel, as the backend launches it, and ``device``: the
    device functions (activations and update rules) that cuda_train's kernels call too.
    """
    dtype = np.dtype(dtype)
    real = numba.from_dtype(dtype)
    f = dtype.type
    ZERO, HALF, ONE = f(0), f(0.5), f(1)
    INV_SQRT_2 = f(1.0 / math.sqrt(2.0))
    SQRT_2_OVER_PI = f(math.sqrt(2.0 / math.pi))
    INV_SQRT_2PI = f(1.0 / math.sqrt(2.0 * math.pi))
    GELU_TANH_C = f(0.044715)
    GELU_TANH_3C = f(3 * 0.044715)
    NEG_INF = f(-np.inf)

    vec = real[::1]
    mat = real[:, ::1]
    signatures = {}
    launchable = {}

    def kernel(*argtypes):
        """Register a kernel with the argument types the backend launches it with."""

        def register(pyfunc):
            signatures[pyfunc.__name__] = (pyfunc, argtypes)
            launchable[pyfunc.__name__] = cuda.jit(pyfunc)
            return launchable[pyfunc.__name__]

        return register

    # -- activations (device functions, switched on the code of ACTIVATION_CODES) ------

    @cuda.jit(device=True)
    def activate(code, v, slope):
        if code == _SIGMOID:  # from exp(-|v|), which never overflows
            e = math.exp(-abs(v))
            return ONE / (ONE + e) if v >= ZERO else e / (ONE + e)
        if code == _TANH:
            return math.tanh(v)
        if code == _RELU:
            return v if v > ZERO else ZERO
        if code == _LEAKY_RELU:
            return v if v > ZERO else slope * v
        if code == _GELU:
            return HALF * v * (ONE + math.erf(v * INV_SQRT_2))
        if code == _GELU_TANH:
            return HALF * v * (ONE + math.tanh(SQRT_2_OVER_PI * (v + GELU_TANH_C * v * v * v)))
        if code == _STEP:
            return ONE if v > ZERO else ZERO
        return v

    @cuda.jit(device=True)
    def local_grad(code, v, slope):
        """d act / d x, from the output v = y for sigmoid and tanh, from the input v = x
        for the others (GRAD_NEEDS_OUTPUT)."""
        if code == _SIGMOID:
            return v * (ONE - v)
        if code == _TANH:
            return ONE - v * v
        if code == _RELU:  # the gradient at 0 is taken as 0
            return ONE if v > ZERO else ZERO
        if code == _LEAKY_RELU:
            return ONE if v > ZERO else slope
        if code == _GELU:
            cdf = HALF * (ONE + math.erf(v * INV_SQRT_2))
            pdf = math.exp(-HALF * v * v) * INV_SQRT_2PI
            return cdf + v * pdf
        if code == _GELU_TANH:
            t = math.tanh(SQRT_2_OVER_PI * (v + GELU_TANH_C * v * v * v))
            return HALF * (ONE + t) + HALF * v * (ONE - t * t) * SQRT_2_OVER_PI * (ONE + GELU_TANH_3C * v * v)
        if code == _STEP:
            return ZERO
        return ONE

    @kernel(types.int64, vec, real, vec)
    def activation(code, x, slope, out):
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            out[i] = activate(code, x[i], slope)

    @kernel(types.int64, vec, vec, real, vec)
    def activation_grad(code, v, grad_out, slope, out):
        for i in range(cuda.grid(1), v.shape[0], cuda.gridsize(1)):
            out[i] = grad_out[i] * local_grad(code, v[i], slope)

    # -- GEMM ------------------------------------------------------------------------

    @cuda.jit(device=True)
    def gemm_accumulate(a, b, trans_a, trans_b, a_tile, b_tile, b_frag, acc):
        """acc[i, j] = (op(a) @ op(b))[row0 + ty + 16 i, col0 + tx + 16 j] for this block's
        64x64 tile; out-of-range rows, columns and k read as zero."""
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * GEMM_SIDE + tx
        row0 = cuda.blockIdx.y * TILE
        col0 = cuda.blockIdx.x * TILE
        m = a.shape[1] if trans_a else a.shape[0]
        k = a.shape[0] if trans_a else a.shape[1]
        n = b.shape[0] if trans_b else b.shape[1]
        for i in range(_PER_THREAD):
            for j in range(_PER_THREAD):
                acc[i, j] = ZERO
        for k0 in range(0, k, TILE_K):
            # Consecutive threads read consecutive addresses of the stored layout.
            for r in range(_TILE_LOADS):
                idx = tid + r * _GEMM_THREADS
                if trans_a:  # a is stored (k, m)
                    kk = idx // TILE
                    mm = idx % TILE
                    gk = k0 + kk
                    gm = row0 + mm
                    a_tile[kk, mm] = a[gk, gm] if gk < k and gm < m else ZERO
                else:  # a is stored (m, k)
                    kk = idx % TILE_K
                    mm = idx // TILE_K
                    gk = k0 + kk
                    gm = row0 + mm
                    a_tile[kk, mm] = a[gm, gk] if gk < k and gm < m else ZERO
                if trans_b:  # b is stored (n, k)
                    kk = idx % TILE_K
                    nn = idx // TILE_K
                    gk = k0 + kk
                    gn = col0 + nn
                    b_tile[kk, nn] = b[gn, gk] if gk < k and gn < n else ZERO
                else:  # b is stored (k, n)
                    kk = idx // TILE
                    nn = idx % TILE
                    gk = k0 + kk
                    gn = col0 + nn
                    b_tile[kk, nn] = b[gk, gn] if gk < k and gn < n else ZERO
            cuda.syncthreads()
            for kk in range(TILE_K):
                for j in range(_PER_THREAD):
                    b_frag[j] = b_tile[kk, tx + GEMM_SIDE * j]
                for i in range(_PER_THREAD):
                    a_value = a_tile[kk, ty + GEMM_SIDE * i]
                    for j in range(_PER_THREAD):
                        acc[i, j] += a_value * b_frag[j]
            cuda.syncthreads()

    # The shared tiles are padded by one column so that the transposing stores of the
    # tile loads do not all fall in one memory bank.

    @kernel(mat, mat, types.boolean, types.boolean, mat)
    def matmul(a, b, trans_a, trans_b, out):
        a_tile = cuda.shared.array((TILE_K, _TILE_PADDED), real)
        b_tile = cuda.shared.array((TILE_K, _TILE_PADDED), real)
        b_frag = cuda.local.array(_PER_THREAD, real)
        acc = cuda.local.array((_PER_THREAD, _PER_THREAD), real)
        gemm_accumulate(a, b, trans_a, trans_b, a_tile, b_tile, b_frag, acc)
        for i in range(_PER_THREAD):
            row = cuda.blockIdx.y * TILE + cuda.threadIdx.y + GEMM_SIDE * i
            for j in range(_PER_THREAD):
                col = cuda.blockIdx.x * TILE + cuda.threadIdx.x + GEMM_SIDE * j
                if row < out.shape[0] and col < out.shape[1]:
                    out[row, col] = acc[i, j]

    @kernel(mat, mat, vec, types.int64, real, mat)
    def linear(x, w, bias, code, slope, out):
        a_tile = cuda.shared.array((TILE_K, _TILE_PADDED), real)
        b_tile = cuda.shared.array((TILE_K, _TILE_PADDED), real)
        b_frag = cuda.local.array(_PER_THREAD, real)
        acc = cuda.local.array((_PER_THREAD, _PER_THREAD), real)
        gemm_accumulate(x, w, False, False, a_tile, b_tile, b_frag, acc)
        # Two passes: a loop around the large inlined `activate` is not unrolled, and
        # indexing `acc` in a loop that is not unrolled would move it (for the whole
        # GEMM) from registers to local memory. Each thread re-reads only what it wrote.
        for i in range(_PER_THREAD):
            row = cuda.blockIdx.y * TILE + cuda.threadIdx.y + GEMM_SIDE * i
            for j in range(_PER_THREAD):
                col = cuda.blockIdx.x * TILE + cuda.threadIdx.x + GEMM_SIDE * j
                if row < out.shape[0] and col < out.shape[1]:
                    out[row, col] = acc[i, j] + bias[col]
        for i in range(_PER_THREAD):
            row = cuda.blockIdx.y * TILE + cuda.threadIdx.y + GEMM_SIDE * i
            for j in range(_PER_THREAD):
                col = cuda.blockIdx.x * TILE + cuda.threadIdx.x + GEMM_SIDE * j
                if row < out.shape[0] and col < out.shape[1]:
                    out[row, col] = activate(code, out[row, col], slope)

    @kernel(mat, vec)
    def bias_grad(dy, out):
        buf = cuda.shared.array((BIAS_ROW_GROUPS, BIAS_COLUMNS), real)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        col = cuda.blockIdx.x * BIAS_COLUMNS + tx
        acc = ZERO
        if col < dy.shape[1]:
            for row in range(ty, dy.shape[0], BIAS_ROW_GROUPS):
                acc += dy[row, col]
        buf[ty, tx] = acc
        cuda.syncthreads()
        if ty == 0 and col < dy.shape[1]:
            total = ZERO
            for group in range(BIAS_ROW_GROUPS):
                total += buf[group, tx]
            out[col] = total

    # -- row kernels: one block per row ------------------------------------------------

    @cuda.jit(device=True)
    def row_max_and_log_sum(x, row, buf):
        """(max, log(sum(exp(x[row] - max)))) of one row, for every thread of the block."""
        local_max = NEG_INF
        for j in range(cuda.threadIdx.x, x.shape[1], ROW_THREADS):
            local_max = max(local_max, x[row, j])
        row_max = _block_max(buf, local_max)
        local_sum = ZERO
        for j in range(cuda.threadIdx.x, x.shape[1], ROW_THREADS):
            local_sum += math.exp(x[row, j] - row_max)
        return row_max, math.log(_block_sum(buf, local_sum))

    @kernel(mat, mat)
    def softmax(x, out):
        buf = cuda.shared.array(ROW_THREADS, real)
        row = cuda.blockIdx.x
        row_max, log_sum = row_max_and_log_sum(x, row, buf)
        for j in range(cuda.threadIdx.x, x.shape[1], ROW_THREADS):
            out[row, j] = math.exp(x[row, j] - row_max - log_sum)

    @kernel(mat, types.int64[::1], real, mat, types.float64[::1])
    def softmax_cross_entropy_labels(logits, labels, n_rows, dlogits, row_loss):
        """dlogits = (softmax - onehot) / n_rows; row_loss[row] = -log softmax[label]."""
        buf = cuda.shared.array(ROW_THREADS, real)
        row = cuda.blockIdx.x
        row_max, log_sum = row_max_and_log_sum(logits, row, buf)
        label = labels[row]
        if label < 0 or label >= logits.shape[1]:
            # Device labels are not range-checked on the host (that would cost a transfer):
            # an impossible loss, -inf, tells the host wrapper, which raises.
            if cuda.threadIdx.x == 0:
                row_loss[row] = -math.inf
            return
        for j in range(cuda.threadIdx.x, logits.shape[1], ROW_THREADS):
            p = math.exp(logits[row, j] - row_max - log_sum)
            if j == label:
                p -= ONE
            dlogits[row, j] = p / n_rows
        if cuda.threadIdx.x == 0:
            row_loss[row] = -float(logits[row, label] - row_max - log_sum)

    @kernel(mat, mat, real, mat, types.float64[::1])
    def softmax_cross_entropy_targets(logits, targets, n_rows, dlogits, row_loss):
        """dlogits = (softmax * sum(t) - t) / n_rows; row_loss[row] = -sum t log softmax."""
        buf = cuda.shared.array(ROW_THREADS, real)
        buf64 = cuda.shared.array(ROW_THREADS, types.float64)
        row = cuda.blockIdx.x
        row_max, log_sum = row_max_and_log_sum(logits, row, buf)
        local_t = ZERO
        local_loss = 0.0
        for j in range(cuda.threadIdx.x, logits.shape[1], ROW_THREADS):
            t = targets[row, j]
            local_t += t
            local_loss -= float(t) * float(logits[row, j] - row_max - log_sum)
        t_sum = _block_sum(buf, local_t)
        loss = _block_sum(buf64, local_loss)
        for j in range(cuda.threadIdx.x, logits.shape[1], ROW_THREADS):
            p = math.exp(logits[row, j] - row_max - log_sum)
            dlogits[row, j] = (p * t_sum - targets[row, j]) / n_rows
        if cuda.threadIdx.x == 0:
            row_loss[row] = loss

    # -- elementwise losses: gradient, plus one float64 partial sum per block ---------

    @kernel(vec, vec, real, vec, types.float64[::1])
    def mse(pred, target, grad_scale, dpred, partials):
        """dpred = (pred - target) * grad_scale; partials[block] = sum of squared diffs."""
        buf = cuda.shared.array(THREADS, types.float64)
        acc = 0.0
        for i in range(cuda.grid(1), pred.shape[0], cuda.gridsize(1)):
            diff = pred[i] - target[i]
            dpred[i] = diff * grad_scale
            d = float(diff)
            acc += d * d
        total = _block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            partials[cuda.blockIdx.x] = total

    @kernel(vec, vec, vec, types.float64[::1])
    def binary_cross_entropy(prob, target, dprob, partials):
        """In float64 as the reference, logs and denominator clamped at BCE_CLAMP:
        dprob = (p - t) / max(p (1 - p), clamp) / size;
        partials[block] = sum of t log p + (1 - t) log(1 - p)."""
        buf = cuda.shared.array(THREADS, types.float64)
        size = float(prob.shape[0])
        acc = 0.0
        for i in range(cuda.grid(1), prob.shape[0], cuda.gridsize(1)):
            p = float(prob[i])
            t = float(target[i])
            log_p = math.log(max(p, BCE_CLAMP))
            log_1mp = math.log(max(1.0 - p, BCE_CLAMP))
            acc += t * log_p + (1.0 - t) * log_1mp
            dprob[i] = (p - t) / max(p * (1.0 - p), BCE_CLAMP) / size
        total = _block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            partials[cuda.blockIdx.x] = total

    # -- optimizer updates, in place; the rules and their order of operations are those
    # of numpy_backend. Coefficients such as 1 - beta are computed by the caller in
    # float64 and passed in the array dtype, as NumPy does with Python floats. Each rule
    # is a device function updating element i, shared by its kernel here and by the
    # fused training step (cuda_train), so the two compute the same numbers. ---------

    @cuda.jit(device=True)
    def sgd_at(i, p, g, lr):
        p[i] -= lr * g[i]

    @cuda.jit(device=True)
    def momentum_at(i, p, g, v, lr, momentum):
        velocity = momentum * v[i] + g[i]
        v[i] = velocity
        p[i] -= lr * velocity

    @cuda.jit(device=True)
    def nesterov_at(i, p, g, v, lr, momentum):
        grad = g[i]
        velocity = momentum * v[i] + grad
        v[i] = velocity
        p[i] -= lr * (grad + momentum * velocity)

    @cuda.jit(device=True)
    def adagrad_at(i, p, g, h, lr, eps):
        grad = g[i]
        accumulated = h[i] + grad * grad
        h[i] = accumulated
        p[i] -= lr * grad / (math.sqrt(accumulated) + eps)

    @cuda.jit(device=True)
    def rmsprop_at(i, p, g, h, lr, alpha, one_minus_alpha, eps):
        grad = g[i]
        average = alpha * h[i] + one_minus_alpha * grad * grad
        h[i] = average
        p[i] -= lr * grad / (math.sqrt(average) + eps)

    @cuda.jit(device=True)
    def adadelta_at(i, p, g, h, d, lr, rho, one_minus_rho, eps):
        grad = g[i]
        square_avg = rho * h[i] + one_minus_rho * grad * grad
        h[i] = square_avg
        delta = math.sqrt(d[i] + eps) / math.sqrt(square_avg + eps) * grad
        d[i] = rho * d[i] + one_minus_rho * delta * delta
        p[i] -= lr * delta

    @cuda.jit(device=True)
    def adam_at(i, p, g, m, v, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
                bias_correction1, bias_correction2, eps):
        grad = g[i]
        m_i = beta1 * m[i] + one_minus_beta1 * grad
        v_i = beta2 * v[i] + one_minus_beta2 * grad * grad
        m[i] = m_i
        v[i] = v_i
        p[i] -= lr * (m_i / bias_correction1) / (math.sqrt(v_i / bias_correction2) + eps)

    @kernel(vec, vec, real)
    def sgd_update(p, g, lr):
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            sgd_at(i, p, g, lr)

    @kernel(vec, vec, vec, real, real)
    def momentum_update(p, g, v, lr, momentum):
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            momentum_at(i, p, g, v, lr, momentum)

    @kernel(vec, vec, vec, real, real)
    def nesterov_update(p, g, v, lr, momentum):
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            nesterov_at(i, p, g, v, lr, momentum)

    @kernel(vec, vec, vec, real, real)
    def adagrad_update(p, g, h, lr, eps):
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            adagrad_at(i, p, g, h, lr, eps)

    @kernel(vec, vec, vec, real, real, real, real)
    def rmsprop_update(p, g, h, lr, alpha, one_minus_alpha, eps):
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            rmsprop_at(i, p, g, h, lr, alpha, one_minus_alpha, eps)

    @kernel(vec, vec, vec, vec, real, real, real, real)
    def adadelta_update(p, g, h, d, lr, rho, one_minus_rho, eps):
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            adadelta_at(i, p, g, h, d, lr, rho, one_minus_rho, eps)

    @kernel(vec, vec, vec, vec, real, real, real, real, real, real, real, real)
    def adam_update(p, g, m, v, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
                    bias_correction1, bias_correction2, eps):
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            adam_at(i, p, g, m, v, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
                    bias_correction1, bias_correction2, eps)

    @cuda.jit(device=True)
    def adamw_at(i, p, g, m, v, decay, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
                 bias_correction1, bias_correction2, eps):
        """torch.optim.AdamW: p *= decay (1 - lr * weight_decay), then Adam's step."""
        grad = g[i]
        m_i = beta1 * m[i] + one_minus_beta1 * grad
        v_i = beta2 * v[i] + one_minus_beta2 * grad * grad
        m[i] = m_i
        v[i] = v_i
        decayed = p[i] * decay
        p[i] = decayed - lr * (m_i / bias_correction1) / (math.sqrt(v_i / bias_correction2) + eps)

    @kernel(vec, vec, vec, vec, real, real, real, real, real, real, real, real, real)
    def adamw_update(p, g, m, v, decay, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
                     bias_correction1, bias_correction2, eps):
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            adamw_at(i, p, g, m, v, decay, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
                     bias_correction1, bias_correction2, eps)

    # -- normalisation: statistics and normalised values in float64, as the reference.
    # BatchNorm and LayerNorm's parameter gradients are column kernels: a block of
    # BIAS_COLUMNS x BIAS_ROW_GROUPS threads per BIAS_COLUMNS columns (coalesced along
    # the rows), each row group striding down the rows; LayerNorm's other kernels take a
    # row per block of ROW_THREADS, as softmax. --------------------------------------

    @cuda.jit(device=True)
    def column_total(buf, value):
        """The sum of ``value`` over the row groups of this thread's column, for each of them."""
        tx = cuda.threadIdx.x
        buf[cuda.threadIdx.y, tx] = value
        cuda.syncthreads()
        total = 0.0
        for group in range(BIAS_ROW_GROUPS):
            total += buf[group, tx]
        cuda.syncthreads()  # buf is reused by the next total
        return total

    @kernel(mat, vec, vec, vec, vec, types.boolean, types.boolean, types.float64, types.float64, mat, vec, vec)
    def batch_norm_forward(x, weight, bias, running_mean, running_var, update_running, training, momentum, eps,
                           out, mean, invstd):
        """Training: the column's mean and biased variance (two passes), saved as mean and
        invstd, the running statistics updated (unbiased variance) when update_running;
        evaluation: the running statistics. Then out = (x - mean) * invstd * weight + bias."""
        buf = cuda.shared.array((BIAS_ROW_GROUPS, BIAS_COLUMNS), types.float64)
        ty = cuda.threadIdx.y
        col = cuda.blockIdx.x * BIAS_COLUMNS + cuda.threadIdx.x
        n = x.shape[0]
        inside = col < x.shape[1]
        if training:  # every thread reaches the column totals (they synchronise the block)
            acc = 0.0
            if inside:
                for row in range(ty, n, BIAS_ROW_GROUPS):
                    acc += np.float64(x[row, col])
            col_mean = column_total(buf, acc) / n
            acc = 0.0
            if inside:
                for row in range(ty, n, BIAS_ROW_GROUPS):
                    d = np.float64(x[row, col]) - col_mean
                    acc += d * d
            var = column_total(buf, acc) / n
            col_invstd = 1.0 / math.sqrt(var + eps)
            if inside and ty == 0:
                mean[col] = col_mean
                invstd[col] = col_invstd
                if update_running:
                    running_mean[col] = (1.0 - momentum) * np.float64(running_mean[col]) + momentum * np.float64(f(col_mean))
                    running_var[col] = (1.0 - momentum) * np.float64(running_var[col]) + momentum * var * (n / (n - 1.0))
        elif inside:  # the statistics as saved, in the dtype
            col_mean = np.float64(running_mean[col])
            col_invstd = np.float64(f(1.0 / math.sqrt(np.float64(running_var[col]) + eps)))
            if ty == 0:
                mean[col] = running_mean[col]
                invstd[col] = col_invstd
        if inside:
            scale = col_invstd * np.float64(weight[col])
            shift = np.float64(bias[col])
            for row in range(ty, n, BIAS_ROW_GROUPS):
                out[row, col] = (np.float64(x[row, col]) - col_mean) * scale + shift

    @kernel(mat, mat, vec, vec, vec, types.boolean, mat, vec, vec)
    def batch_norm_backward(x, grad_out, weight, mean, invstd, training, dx, dweight, dbias):
        """dbias and dweight (column sums of g and g * xhat); dx through the batch
        statistics (training) or through fixed ones."""
        buf = cuda.shared.array((BIAS_ROW_GROUPS, BIAS_COLUMNS), types.float64)
        ty = cuda.threadIdx.y
        col = cuda.blockIdx.x * BIAS_COLUMNS + cuda.threadIdx.x
        n = x.shape[0]
        inside = col < x.shape[1]
        col_mean = 0.0
        col_invstd = 0.0
        acc_g = 0.0
        acc_g_xhat = 0.0
        if inside:
            col_mean = np.float64(mean[col])
            col_invstd = np.float64(invstd[col])
            for row in range(ty, n, BIAS_ROW_GROUPS):
                g = np.float64(grad_out[row, col])
                acc_g += g
                acc_g_xhat += g * ((np.float64(x[row, col]) - col_mean) * col_invstd)
        sum_g = column_total(buf, acc_g)
        sum_g_xhat = column_total(buf, acc_g_xhat)
        if inside:
            if ty == 0:
                dbias[col] = sum_g
                dweight[col] = sum_g_xhat
            scale = np.float64(weight[col]) * col_invstd
            if training:
                mean_g = sum_g / n
                mean_g_xhat = sum_g_xhat / n
                for row in range(ty, n, BIAS_ROW_GROUPS):
                    xhat = (np.float64(x[row, col]) - col_mean) * col_invstd
                    dx[row, col] = scale * (np.float64(grad_out[row, col]) - mean_g - xhat * mean_g_xhat)
            else:
                for row in range(ty, n, BIAS_ROW_GROUPS):
                    dx[row, col] = scale * np.float64(grad_out[row, col])

    @kernel(mat, vec, vec, types.float64, mat, vec, vec)
    def layer_norm_forward(x, weight, bias, eps, out, mean, invstd):
        """One row: its mean and biased variance (two passes), then the normalised row."""
        buf = cuda.shared.array(ROW_THREADS, types.float64)
        row = cuda.blockIdx.x
        c = x.shape[1]
        acc = 0.0
        for j in range(cuda.threadIdx.x, c, ROW_THREADS):
            acc += np.float64(x[row, j])
        row_mean = _block_sum(buf, acc) / c
        acc = 0.0
        for j in range(cuda.threadIdx.x, c, ROW_THREADS):
            d = np.float64(x[row, j]) - row_mean
            acc += d * d
        row_invstd = 1.0 / math.sqrt(_block_sum(buf, acc) / c + eps)
        if cuda.threadIdx.x == 0:
            mean[row] = row_mean
            invstd[row] = row_invstd
        for j in range(cuda.threadIdx.x, c, ROW_THREADS):
            out[row, j] = (np.float64(x[row, j]) - row_mean) * row_invstd * np.float64(weight[j]) + np.float64(bias[j])

    @kernel(mat, mat, vec, vec, vec, mat)
    def layer_norm_input_grad(x, grad_out, weight, mean, invstd, dx):
        """One row of dx = invstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = g weight."""
        buf = cuda.shared.array(ROW_THREADS, types.float64)
        row = cuda.blockIdx.x
        c = x.shape[1]
        row_mean = np.float64(mean[row])
        row_invstd = np.float64(invstd[row])
        acc = 0.0
        acc_xhat = 0.0
        for j in range(cuda.threadIdx.x, c, ROW_THREADS):
            dxhat = np.float64(grad_out[row, j]) * np.float64(weight[j])
            acc += dxhat
            acc_xhat += dxhat * ((np.float64(x[row, j]) - row_mean) * row_invstd)
        mean_dxhat = _block_sum(buf, acc) / c
        mean_dxhat_xhat = _block_sum(buf, acc_xhat) / c
        for j in range(cuda.threadIdx.x, c, ROW_THREADS):
            xhat = (np.float64(x[row, j]) - row_mean) * row_invstd
            dx[row, j] = row_invstd * (np.float64(grad_out[row, j]) * np.float64(weight[j]) - mean_dxhat
                                       - xhat * mean_dxhat_xhat)

    @kernel(mat, mat, vec, vec, vec, vec)
    def layer_norm_parameter_grad(x, grad_out, mean, invstd, dweight, dbias):
        """Column sums of g (dbias) and of g * xhat (dweight), xhat by the row statistics."""
        buf = cuda.shared.array((BIAS_ROW_GROUPS, BIAS_COLUMNS), types.float64)
        col = cuda.blockIdx.x * BIAS_COLUMNS + cuda.threadIdx.x
        acc_g = 0.0
        acc_g_xhat = 0.0
        if col < x.shape[1]:
            for row in range(cuda.threadIdx.y, x.shape[0], BIAS_ROW_GROUPS):
                g = np.float64(grad_out[row, col])
                acc_g += g
                acc_g_xhat += g * ((np.float64(x[row, col]) - np.float64(mean[row])) * np.float64(invstd[row]))
        sum_g = column_total(buf, acc_g)
        sum_g_xhat = column_total(buf, acc_g_xhat)
        if col < x.shape[1] and cuda.threadIdx.y == 0:
            dbias[col] = sum_g
            dweight[col] = sum_g_xhat

    # -- whole vectors (gradient clipping): per-block float64 partial results ---------

    @kernel(vec, types.float64[::1])
    def sum_squares(x, partials):
        buf = cuda.shared.array(THREADS, types.float64)
        acc = 0.0
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            v = np.float64(x[i])
            acc += v * v
        total = _block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            partials[cuda.blockIdx.x] = total

    @kernel(vec, types.float64[::1])
    def max_abs(x, partials):
        """partials[block] = the block's max |x|, or NaN when it met one."""
        buf = cuda.shared.array(THREADS, types.float64)
        best = 0.0
        nans = 0.0
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            v = abs(np.float64(x[i]))
            if v != v:
                nans += 1.0
            elif v > best:
                best = v
        best = _block_max(buf, best)
        if _block_sum(buf, nans) > 0.0:
            best = math.nan
        if cuda.threadIdx.x == 0:
            partials[cuda.blockIdx.x] = best

    @kernel(vec, real)
    def scale(x, alpha):
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            x[i] *= alpha

    # The device functions other kernel modules build on (cuda_train's fused step).
    device = SimpleNamespace(activate=activate, local_grad=local_grad, sgd_at=sgd_at,
                             momentum_at=momentum_at, nesterov_at=nesterov_at, adagrad_at=adagrad_at,
                             rmsprop_at=rmsprop_at, adadelta_at=adadelta_at, adam_at=adam_at, adamw_at=adamw_at)

    return SimpleNamespace(scalar=f, signatures=signatures, device=device, **launchable)


FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def compile_targets():
    """Every (name, Python function, argument types) the backend launches, for both
    dtypes: what the PTX check compiles."""
    targets = [("sum_reduce", _sum_reduce, _SUM_REDUCE_SIGNATURE)]
    for dtype in FLOAT_DTYPES:
        for name, (pyfunc, argtypes) in kernel_family(dtype).signatures.items():
            targets.append((f"{name}[{dtype.name}]", pyfunc, argtypes))
    return targets
