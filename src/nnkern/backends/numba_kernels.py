"""The compiled kernels of the "numba" backend (CPU).

(One module on purpose, above the ~700 lines the project aims for: the kernels call and
inline one another, GEMM micro-kernels and epilogues included, and Numba's on-disk cache
keys each function by its module; one module keeps them one unit.)

Every kernel is compiled lazily, on its first call, once per dtype (float32, float64) for
C-contiguous arrays, and cached on disk (``cache=True``); importing this module compiles
nothing. Arguments arrive validated by :mod:`nnkern.ops` (Numba does not bounds-check),
and :mod:`nnkern.backends.numba_backend` hands over flat views and dtype-typed scalars.

GEMM (``gemm``), Goto style. Numba's LLVM pipeline runs the loop vectorizer but not the
SLP vectorizer, so a register tile of scalar accumulators never becomes vector code; the
micro-kernel (``_micro_kernel``) is therefore an ``@intrinsic`` that emits the LLVM IR
itself: an MR x NR output tile held in MR x 2 vector accumulators, each k step one
broadcast of op(a) and two ``llvm.fma`` per row, no spills. The vectors are as wide as the
target's registers (``GEMM_VECTOR_BYTES``): with AVX-512, 8 x 32 float32 (8 x 16 float64)
in sixteen <16 x float> (<8 x double>) of the 32 registers; with AVX2, 6 x 16 (6 x 8) in
twelve <8 x float> (<4 x double>) of the 16. (A fixed 256-bit tile ran at half the speed
of the Cython GEMM on an AVX-512 machine.) op(b) is packed per column block into NR-column
panels, which also absorbs its transpose; op(a) is read where it lies, through its strides
(MR rows of it per tile, contiguous along k or along the rows, L1 friendly either way), so
that only a last partial MR-row panel is packed (``_pack_a_tail``) and no thread waits for
an A pack; k in blocks of at most ``GEMM_KC`` = 256 split evenly. Panels are zero padded;
edge tiles go through a scratch tile and only their valid part is stored. Columns are split
across threads in multiples of the panel width, each thread packing its own columns. The
fused linear adds the bias and applies the activation to each finished column block. Each
output is one summation order whatever the thread count or transposes (bit for bit).

Its speed against np.matmul and the Cython GEMM: BENCHMARKS.md (``pytest benchmarks/ -k
test_gemm``).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import ACTIVATION_CODES

# The one place that sets the fast-math flags: reassociation and contraction (what lets LLVM
# vectorise reductions and fuse multiply-adds), approximate reciprocals and functions, and
# no signed zeros. Deliberately without "nnan"/"ninf": softmax subtracts a row max that may be
# -inf, the sigmoid and BCE clamp saturate to infinities, and NaNs must propagate.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


def _jit(*, parallel: bool = False, inline: bool = False):
    """``numba.njit`` for every kernel here: lazy, fast-math, GIL released, cached on disk,
    with NumPy's error model (a float division by zero gives inf or nan, as in NumPy, where
    Python's model raises: its check on every division kept LLVM from vectorising any loop
    that divides, the sigmoid's among them). Where no cache location is writable
    (read-only install, no writable home and no NUMBA_CACHE_DIR) the kernels still work,
    compiled once per process instead.
    A kernel called from another kernel is compiled for the types of its arguments, and
    Numba types a constant argument (``False``, ``0``) as a Literal of that value: callers
    pass flags and codes as run-time values (``bool(False)``, ``int(0)``) so that each
    kernel is compiled once per dtype, whichever caller reaches it first.
    ``inline``: a helper inlined into its callers by Numba itself, where LLVM, left to
    decide, kept the call and the helper's loop lost its vectorisation, or a helper with
    one caller (a kernel of its own would be optimised and compiled to machine code again
    in each caller: seconds of a first fit for the GEMM's)."""

    def decorate(fn):
        options = dict(nogil=True, fastmath=set(FASTMATH), error_model="numpy", parallel=parallel,
                       inline="always" if inline else "never")
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



def _vector_bytes() -> int:
    """The width of the vector registers Numba compiles for: 64 bytes where that target has
    AVX-512F (the host, unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES name another), else 32."""
    if numba.config.CPU_FEATURES is not None:
        return 64 if "+avx512f" in numba.config.CPU_FEATURES.split(",") else 32
    if numba.config.CPU_NAME is not None:  # a named target (e.g. "generic" for portable caches)
        return 32
    return 64 if llvm_binding.get_host_cpu_features().get("avx512f", False) else 32


# GEMM blocking (see the module docstring): MR x NR output tiles (NR = two vectors: 32
# float32 / 16 float64 with AVX-512, whose 32 registers hold 8 x 2 accumulators; 16 / 8
# with AVX2, whose 16 hold 6 x 2), k in blocks of at most GEMM_KC (a packed B panel of
# 16-32 KiB in L1).
GEMM_VECTOR_BYTES = _vector_bytes()
GEMM_MR = 8 if GEMM_VECTOR_BYTES == 64 else 6
GEMM_NR32 = 2 * GEMM_VECTOR_BYTES // 4
GEMM_NR64 = 2 * GEMM_VECTOR_BYTES // 8
GEMM_KC = 256
# Below this many multiply-adds a GEMM runs on one thread: a parallel region costs more
# than it saves, and leaves the other cores free for the BLAS or a second model.
GEMM_PARALLEL_MIN_FLOPS = 1 << 19


# ---------------------------------------------------------------------------------------
# Scalar activations: computed in the type of their argument (float32 stays float32)
# ---------------------------------------------------------------------------------------


@_jit()
def _sigmoid(x):
    one = type(x)(1)
    e = math.exp(-abs(x))  # from exp(-|x|), so that no exp overflows
    return one / (one + e) if x >= 0 else e / (one + e)


@intrinsic
def _float32_of_bits(typingctx, bits):
    """The float32 whose bits are the int32 ``bits`` (a bitcast, which vectorises)."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@_jit(inline=True)
def _exp_nonpositive_f32(x):
    """exp(x) for float32 x <= 0, in operations a loop vectorises (math.exp is a libm call
    per element: a sigmoid over a 100 x 100 batch cost ~27 us): the Cephes expf of the
    Cython backend (kernels/cython/nnk_act.h), x = n ln2 + r with |r| <= ln2 / 2, a degree-7
    polynomial for exp(r), times 2^n built in the exponent bits; 0 below -87.34, where exp
    leaves the normal floats. n is floor(x / ln2 + 1/2): the Cython version's add-and-subtract
    rounding would not survive the fast-math reassociation."""
    underflow = x < np.float32(-87.33654)
    x = np.float32(-87.33654) if underflow else x
    n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    exponent = np.int32(n if n == n else np.float32(0.0))  # NaN: p is NaN already; no NaN cast
    value = p * _float32_of_bits((exponent + np.int32(127)) << np.int32(23))
    return np.float32(0.0) if underflow else value


@_jit(inline=True)
def _sigmoid_f32(x):
    """sigmoid(x) of a float32 through _exp_nonpositive_f32 (vectorises)."""
    e = _exp_nonpositive_f32(-abs(np.float32(x)))
    r = np.float32(1.0) / (np.float32(1.0) + e)
    return r if x >= 0 else e * r


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
    if act == SIGMOID and x.itemsize == 4:  # float32: the vectorised exp
        for i in range(n):
            out[i] = _sigmoid_f32(x[i])
    elif act == SIGMOID:  # float64 keeps math.exp (its tolerance is tight)
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
def softmax_cross_entropy_labels_weighted(logits, labels, row_weights, dlogits):
    """The weighted mean cross entropy, ``sum(row_weights[r] * loss_r)`` for weights that
    sum to 1; row r's gradient is scaled by its weight instead of 1 / n."""
    n, c = logits.shape
    loss = 0.0
    for r in range(n):
        row_max, total = _exp_shifted_row(logits[r], dlogits[r])
        weight = row_weights[r]
        loss += weight * (math.log(total) + (float(row_max) - float(logits[r, labels[r]])))
        scale = dlogits.dtype.type(weight / total)
        for j in range(c):
            dlogits[r, j] *= scale
        dlogits[r, labels[r]] -= dlogits.dtype.type(weight)
    return loss


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
def nesterov_update(p, g, v, lr, momentum):
    for i in range(p.shape[0]):
        gi = g[i]
        vi = momentum * v[i] + gi
        v[i] = vi
        p[i] -= lr * (gi + momentum * vi)


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
def adamw_update(p, g, m, v, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
                 inv_sqrt_bias_correction2, eps):
    """torch.optim.AdamW: p is scaled by decay = 1 - lr * weight_decay (not added to g), then
    Adam's step on the plain gradient."""
    for i in range(p.shape[0]):
        gi = g[i]
        mi = beta1 * m[i] + one_minus_beta1 * gi
        vi = beta2 * v[i] + one_minus_beta2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step_size * mi / (math.sqrt(vi) * inv_sqrt_bias_correction2 + eps)


@_jit()
def adam_update(p, g, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
                inv_sqrt_bias_correction2, eps):
    """torch.optim.Adam's form: p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps): AdamW's
    step without the decay (p * 1 is p exactly)."""
    adamw_update(p, g, m, v, type(beta1)(1), beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
                 inv_sqrt_bias_correction2, eps)


# ---------------------------------------------------------------------------------------
# GEMM: out = act(op(a) @ op(b) + bias), packed panels and an LLVM vector micro-kernel
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# Normalisation (BatchNorm over the rows per column, LayerNorm over the columns per row):
# statistics and the normalised values in double, each kernel one call; BatchNorm's
# column sums run row by row so that the inner loops go along memory
# ---------------------------------------------------------------------------------------


@_jit()
def _column_statistics(x):
    """(mean, biased variance) of every column, in float64, the variance two-pass."""
    n, c = x.shape
    mean = np.zeros(c)
    for i in range(n):
        for j in range(c):
            mean[j] += x[i, j]
    for j in range(c):
        mean[j] /= n
    var = np.zeros(c)
    for i in range(n):
        for j in range(c):
            d = np.float64(x[i, j]) - mean[j]
            var[j] += d * d
    for j in range(c):
        var[j] /= n
    return mean, var


@_jit()
def _scale_shift_columns(x, mean, invstd, weight, bias, out):
    """out = (x - mean) * invstd * weight + bias, per column, in double."""
    n, c = x.shape
    scale = np.empty(c)
    for j in range(c):
        scale[j] = invstd[j] * weight[j]
    for i in range(n):
        for j in range(c):
            out[i, j] = (x[i, j] - mean[j]) * scale[j] + bias[j]


@_jit()
def batch_norm_forward(x, weight, bias, running_mean, running_var, update_running, training, momentum, eps,
                       out, mean, invstd):
    n, c = x.shape
    if training:
        batch_mean, var = _column_statistics(x)
        batch_invstd = np.empty(c)
        for j in range(c):
            batch_invstd[j] = 1.0 / math.sqrt(var[j] + eps)
            mean[j] = batch_mean[j]
            invstd[j] = batch_invstd[j]
        if update_running:
            unbiased = n / (n - 1.0)
            for j in range(c):
                running_mean[j] = (1.0 - momentum) * running_mean[j] + momentum * np.float64(mean[j])
                running_var[j] = (1.0 - momentum) * running_var[j] + momentum * var[j] * unbiased
        _scale_shift_columns(x, batch_mean, batch_invstd, weight, bias, out)
    else:
        for j in range(c):
            mean[j] = running_mean[j]
            invstd[j] = 1.0 / math.sqrt(np.float64(running_var[j]) + eps)
        _scale_shift_columns(x, mean.astype(np.float64), invstd.astype(np.float64), weight, bias, out)


@_jit()
def batch_norm_backward(x, grad_out, weight, mean, invstd, training, dx, dweight, dbias):
    n, c = x.shape
    sum_g = np.zeros(c)
    sum_g_xhat = np.zeros(c)
    for i in range(n):
        for j in range(c):
            g = np.float64(grad_out[i, j])
            sum_g[j] += g
            sum_g_xhat[j] += g * ((x[i, j] - np.float64(mean[j])) * np.float64(invstd[j]))
    scale = np.empty(c)
    for j in range(c):
        dbias[j] = sum_g[j]
        dweight[j] = sum_g_xhat[j]
        scale[j] = np.float64(weight[j]) * np.float64(invstd[j])
    if training:
        for j in range(c):
            sum_g[j] /= n
            sum_g_xhat[j] /= n
        for i in range(n):
            for j in range(c):
                xhat = (x[i, j] - np.float64(mean[j])) * np.float64(invstd[j])
                dx[i, j] = scale[j] * (grad_out[i, j] - sum_g[j] - xhat * sum_g_xhat[j])
    else:
        for i in range(n):
            for j in range(c):
                dx[i, j] = scale[j] * grad_out[i, j]


@_jit()
def layer_norm_forward(x, weight, bias, eps, out, mean, invstd):
    n, c = x.shape
    for i in range(n):
        total = 0.0
        for j in range(c):
            total += x[i, j]
        row_mean = total / c
        squares = 0.0
        for j in range(c):
            d = np.float64(x[i, j]) - row_mean
            squares += d * d
        row_invstd = 1.0 / math.sqrt(squares / c + eps)
        mean[i] = row_mean
        invstd[i] = row_invstd
        for j in range(c):
            out[i, j] = (x[i, j] - row_mean) * row_invstd * weight[j] + bias[j]


@_jit()
def layer_norm_backward(x, grad_out, weight, mean, invstd, dx, dweight, dbias):
    n, c = x.shape
    sum_g = np.zeros(c)
    sum_g_xhat = np.zeros(c)
    for i in range(n):
        row_mean, row_invstd = np.float64(mean[i]), np.float64(invstd[i])
        mean_dxhat = 0.0
        mean_dxhat_xhat = 0.0
        for j in range(c):
            g = np.float64(grad_out[i, j])
            xhat = (x[i, j] - row_mean) * row_invstd
            sum_g[j] += g
            sum_g_xhat[j] += g * xhat
            dxhat = g * weight[j]
            mean_dxhat += dxhat
            mean_dxhat_xhat += dxhat * xhat
        mean_dxhat /= c
        mean_dxhat_xhat /= c
        for j in range(c):
            xhat = (x[i, j] - row_mean) * row_invstd
            dx[i, j] = row_invstd * (grad_out[i, j] * np.float64(weight[j]) - mean_dxhat - xhat * mean_dxhat_xhat)
    for j in range(c):
        dweight[j] = sum_g_xhat[j]
        dbias[j] = sum_g[j]


# ---------------------------------------------------------------------------------------
# Whole vectors, for gradient clipping by global norm: reductions in float64
# ---------------------------------------------------------------------------------------


@_jit()
def sum_squares(x):
    total = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        total += v * v
    return total


@_jit()
def max_abs(x):
    """max |x|; a NaN, once met, is the result (as NumPy's max)."""
    best = 0.0
    for i in range(x.shape[0]):
        v = abs(np.float64(x[i]))
        if not v <= best:  # a larger value, or NaN
            if best != best:
                continue
            best = v
    return best


@_jit()
def scale(x, alpha):
    for i in range(x.shape[0]):
        x[i] *= alpha


@intrinsic
def _micro_kernel(typingctx, a, a_at, a_step_i, a_step_p, b_pack, b_at, kc, c, first):
    """c[:MR, :NR] = (first) or += (else) sum over p < kc of
    a[a_at + i*a_step_i + p*a_step_p] * b_pack[b_at + p*NR + j], with NR = 2 vectors of W
    lanes (GEMM_VECTOR_BYTES of the dtype). ``a`` is any array, indexed in elements from its
    data pointer: a packed panel (steps 1 and MR) or op(a) where it lies (its strides), so
    that full row panels need no packing. The MR x 2 accumulators are LLVM vectors (16 of
    the 32 AVX-512 registers, 12 of the 16 AVX2 ones) and every step is one broadcast of A
    and two fused multiply-adds per row.
    ``c``: a 2D array whose rows are contiguous. Emitted as LLVM IR because Numba's
    vectorizers never turn a register tile of scalars into this (see the module docstring)."""
    dtype = c.dtype
    signature = types.void(a, a_at, a_step_i, a_step_p, b_pack, b_at, kc, c, first)

    def codegen(context, builder, sig, args):
        a_v, a_at_v, a_step_i_v, a_step_p_v, b_v, b_at_v, kc_v, c_v, first_v = args
        flt = context.get_value_type(dtype)
        lanes = GEMM_VECTOR_BYTES // (dtype.bitwidth // 8)
        nr = 2 * lanes
        i64 = ir.IntType(64)
        vec = ir.VectorType(flt, lanes)
        vec_ptr = vec.as_pointer()
        a_arr = cgutils.create_struct_proxy(sig.args[0])(context, builder, value=a_v)
        b_arr = cgutils.create_struct_proxy(sig.args[4])(context, builder, value=b_v)
        c_arr = cgutils.create_struct_proxy(sig.args[7])(context, builder, value=c_v)
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec, None)) for _ in range(2)]
                for _ in range(GEMM_MR)]
        a_at_v, a_step_i_v, a_step_p_v, b_at_v, kc_v = (
            context.cast(builder, v, t, types.int64)
            for v, t in zip((a_at_v, a_step_i_v, a_step_p_v, b_at_v, kc_v),
                            (sig.args[1], sig.args[2], sig.args[3], sig.args[5], sig.args[6])))
        a_rows = [builder.gep(a_arr.data, [builder.add(a_at_v, builder.mul(a_step_i_v,
                                                                           ir.Constant(i64, i)))])
                  for i in range(GEMM_MR)]
        name = "llvm.fma.v%d%s" % (lanes, "f32" if dtype == types.float32 else "f64")
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                             name)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), None)
        with cgutils.for_range(builder, kc_v) as loop:
            p = loop.index
            qa = builder.mul(p, a_step_p_v)
            qb = builder.add(b_at_v, builder.mul(p, ir.Constant(i64, nr)))
            b_row = builder.gep(b_arr.data, [qb])
            bv = [builder.load(builder.bitcast(builder.gep(b_row, [ir.Constant(i64, lanes * h)]),
                                               vec_ptr), align=dtype.bitwidth // 8)
                  for h in range(2)]
            for i in range(GEMM_MR):
                x = builder.load(builder.gep(a_rows[i], [qa]))
                xv = builder.insert_element(ir.Constant(vec, ir.Undefined), x,
                                            ir.Constant(ir.IntType(32), 0))
                xv = builder.shuffle_vector(xv, ir.Constant(vec, ir.Undefined), splat)
                for h in range(2):
                    builder.store(builder.call(fma, [xv, bv[h], builder.load(accs[i][h])]),
                                  accs[i][h])
        row_stride = cgutils.unpack_tuple(builder, c_arr.strides, 2)[0]
        base = builder.bitcast(c_arr.data, ir.IntType(8).as_pointer())
        rows = []
        for i in range(GEMM_MR):
            row = builder.bitcast(builder.gep(base, [builder.mul(row_stride, ir.Constant(i64, i))]),
                                  flt.as_pointer())
            rows.append([builder.bitcast(builder.gep(row, [ir.Constant(i64, lanes * h)]), vec_ptr)
                         for h in range(2)])
        align = dtype.bitwidth // 8
        with builder.if_else(first_v) as (then, otherwise):
            with then:
                for i in range(GEMM_MR):
                    for h in range(2):
                        builder.store(builder.load(accs[i][h]), rows[i][h], align=align)
            with otherwise:
                for i in range(GEMM_MR):
                    for h in range(2):
                        old = builder.load(rows[i][h], align=align)
                        builder.store(builder.fadd(old, builder.load(accs[i][h])), rows[i][h],
                                      align=align)
        return context.get_dummy_value()

    return signature, codegen


@_jit(inline=True)
def _gemm_kc(k):
    """The k block: k split evenly into blocks of at most GEMM_KC (0 when k is 0)."""
    blocks = max((k + GEMM_KC - 1) // GEMM_KC, 1)
    return (k + blocks - 1) // blocks


@_jit()
def _pack_panel(src, k_along_rows, start, count, k0, k1, width, dst, base):
    """One packed panel: dst[base + p*width + c] = line c of the operand at k0 + p, for the
    ``count`` lines from ``start`` (zeros up to ``width``). The operand's k runs along its
    rows (line c is src[k0:k1, start + c]) or along its columns (src[start + c, k0:k1]); the
    loops read src contiguously either way."""
    kc = k1 - k0
    if k_along_rows:
        for p in range(kc):
            line = src[k0 + p, start:start + count]
            out = dst[base + p * width:base + (p + 1) * width]
            for c in range(count):
                out[c] = line[c]
            for c in range(count, width):
                out[c] = 0
    else:
        for c in range(count):
            line = src[start + c, k0:k1]
            for p in range(kc):
                dst[base + p * width + c] = line[p]
        for c in range(count, width):
            for p in range(kc):
                dst[base + p * width + c] = 0


@_jit(inline=True)
def _pack_a_tail(a, trans_a, a_tail, m, k):
    """The last, partial MR-row panel of op(a) (rows m // MR * MR to m), zero padded:
    op(a)[m // MR * MR + r, p] at p*MR + r. The full panels are read where they lie."""
    m_full = m // GEMM_MR * GEMM_MR
    if m_full < m:
        _pack_panel(a, trans_a, m_full, m - m_full, int(0), k, int(GEMM_MR), a_tail, int(0))


@_jit(inline=True)
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
def gemm_columns(a, trans_a, a_tail, b, trans_b, b_pack, spare, out, j0, j1, bias, has_bias,
                 act, slope):
    """Columns [j0, j1) of the output (j0 a multiple of NR), the partial row panel of op(a)
    already packed into ``a_tail`` by _pack_a_tail: for each k block, pack these columns of
    op(b) into NR-column panels (the block at k0 starts at n_pad * k0, panel jp at
    + jp*kc*NR, op(b)[k0 + p, jp*NR + c] at p*NR + c, columns past n zeros), run the
    micro-kernel on every MR x NR tile, reading full row panels of op(a) in place (partial
    tiles through a scratch tile in ``spare``), then add the bias and apply act. Called for
    all columns, this is the one-thread GEMM."""
    m, n = out.shape
    nr = GEMM_NR32 if out.itemsize == 4 else GEMM_NR64
    k = b.shape[1] if trans_b else b.shape[0]
    n_pad = (n + nr - 1) // nr * nr
    # op(a)[i, p] lies at element i*step_i + p*step_p of a's data
    step_i = a.strides[1 if trans_a else 0] // a.itemsize
    step_p = a.strides[0 if trans_a else 1] // a.itemsize
    tile = spare[n + j0 // nr * GEMM_MR * nr:n + (j0 // nr + 1) * GEMM_MR * nr].reshape(
        (GEMM_MR, nr))
    if k == 0:
        for i in range(m):
            for j in range(j0, j1):
                out[i, j] = 0
    kc_max = _gemm_kc(k)
    for k0 in range(0, k, kc_max):
        k1 = min(k0 + kc_max, k)
        kc = k1 - k0
        first = k0 == 0
        for jt in range(j0, j1, nr):
            cols = min(nr, j1 - jt)
            _pack_panel(b, not trans_b, jt, cols, k0, k1, nr, b_pack, n_pad * k0 + jt * kc)
        for jt in range(j0, j1, nr):
            cols = min(nr, j1 - jt)
            b_at = n_pad * k0 + jt * kc
            for i0 in range(0, m, GEMM_MR):
                rows = min(GEMM_MR, m - i0)
                if rows == GEMM_MR and cols == nr:
                    _micro_kernel(a, i0 * step_i + k0 * step_p, step_i, step_p, b_pack, b_at, kc,
                                  out[i0:i0 + GEMM_MR, jt:jt + nr], first)
                    continue
                if rows == GEMM_MR:
                    _micro_kernel(a, i0 * step_i + k0 * step_p, step_i, step_p, b_pack, b_at, kc,
                                  tile, True)
                else:
                    _micro_kernel(a_tail, k0 * GEMM_MR, 1, GEMM_MR, b_pack, b_at, kc, tile, True)
                for r in range(rows):
                    dst = out[i0 + r, jt:jt + cols]
                    src = tile[r]
                    if first:
                        for c in range(cols):
                            dst[c] = src[c]
                    else:
                        for c in range(cols):
                            dst[c] += src[c]
    if has_bias or act != IDENTITY:
        _bias_activation(out, j0, j1, bias, has_bias, act, slope, spare[:n])


def gemm_scratch_sizes(m, n, k):
    """(a_tail, b_pack, spare) element counts that gemm needs for an (m x k) @ (k x n)
    product, whatever the dtype and thread count (plain Python, for the callers)."""
    n_pad = -(-n // GEMM_NR32) * GEMM_NR32
    return GEMM_MR * k, n_pad * k, n + GEMM_MR * n_pad


@_jit(parallel=True)
def gemm(a, trans_a, b, trans_b, out, bias, has_bias, act, slope, a_tail, b_pack, spare,
         num_threads):
    """out = act(op(a) @ op(b) + bias), the whole GEMM in one compiled call: packs the
    partial row panel of op(a) (_pack_a_tail), then splits the columns over Numba's threads
    in blocks of a multiple of NR, each thread packing its own columns of op(b) and using
    its own scratch tile (gemm_columns packs op(b) and runs the micro-kernel). The parallel
    region is entered only for a product large enough to pay for it; the one-thread path
    is a plain call. (One compiled function with both: a separate parallel kernel would be
    optimised and compiled to machine code again inside this one, seconds of a first fit.)

    Scratch (flat, of out's dtype): at least gemm_scratch_sizes(m, n, k) elements each.
    ``bias`` is never read unless ``has_bias`` (pass any array of the dtype).
    ``num_threads``: at most Numba's current thread count (nnkern's, passed in because a
    kernel that asks Numba for it cannot be cached on disk)."""
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    nr = GEMM_NR32 if out.itemsize == 4 else GEMM_NR64
    _pack_a_tail(a, trans_a, a_tail, m, k)
    threads = min(num_threads, (n + nr - 1) // nr)
    if threads > 1 and m * n * k >= GEMM_PARALLEL_MIN_FLOPS:
        block_cols = (n + threads - 1) // threads
        block_cols = (block_cols + nr - 1) // nr * nr
        for block in prange((n + block_cols - 1) // block_cols):
            j0 = block * block_cols
            gemm_columns(a, trans_a, a_tail, b, trans_b, b_pack, spare, out, j0,
                         min(j0 + block_cols, n), bias, has_bias, act, slope)
    else:
        # int(0): a run-time column index, as the parallel loop passes (a constant 0 would
        # be a Literal type to Numba, and gemm_columns would be compiled a second time)
        gemm_columns(a, trans_a, a_tail, b, trans_b, b_pack, spare, out, int(0), n, bias,
                     has_bias, act, slope)
