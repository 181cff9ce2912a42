"""The "numba" backend: every kernel compiled by Numba for the CPU (see numba_kernels).

Each function here maps the raw interface of :mod:`nnkern.backends` onto the compiled
kernels: activation names to their integer codes, N-D arrays to flat views, Python floats to
scalars of the arrays' dtype (so that float32 arithmetic stays float32, as in the NumPy
reference), and the GEMM's transposes and scratch buffers (numba_kernels.gemm packs both
operands itself). Arguments arrive validated
by :mod:`nnkern.ops`. Importing this module compiles nothing: each kernel is compiled on its
first call for the dtype it is given, or loaded from Numba's on-disk cache.
"""

from __future__ import annotations

import contextlib
import math
import threading

import numba
import numpy as np

from .. import _threads
from . import ACTIVATION_CODES, GRAD_NEEDS_OUTPUT
from . import numba_kernels as _k

# Numba starts its threading layer now (its omp layer on the OpenMP runtime loaded first,
# with nnkern's spin count). Numba picks the first of tbb, omp and workqueue that loads
# (unless NUMBA_THREADING_LAYER names one); tbb and omp take parallel regions from several
# Python threads at once, workqueue aborts the process when two overlap.
_threads.load_openmp_runtime()
numba.get_num_threads()
THREADING_LAYER = numba.threading_layer()
# Under workqueue nnkern's parallel regions run one at a time, each call its share of the budget.
_workqueue_lock = threading.Lock() if THREADING_LAYER == "workqueue" else contextlib.nullcontext()


@contextlib.contextmanager
def parallel_threads(threads: int):
    """For a compiled call that may open parallel regions, given ``threads`` (its share of
    the budget): at most Numba's pool size, and Numba's own count for this thread (what a
    ``prange`` without an explicit split uses) set to it during the call and restored after;
    under the workqueue layer, one such call at a time."""
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    with _workqueue_lock:
        before = numba.get_num_threads()
        if before != threads:
            numba.set_num_threads(threads)
        try:
            yield threads
        finally:
            if before != threads:
                numba.set_num_threads(before)


# The GEMM's form and threading thresholds live with the kernel (numba_kernels).
GEMM_PARALLEL_MIN_FLOPS = _k.GEMM_PARALLEL_MIN_FLOPS


def _gemm(a, b, trans_a, trans_b, out, bias, act, slope):
    """One compiled call (numba_kernels.gemm) with scratch buffers allocated here."""
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    a_size, b_size, spare_size = _k.gemm_scratch_sizes(m, n, k)
    a_tail = np.empty(a_size, dtype=out.dtype)
    b_pack = np.empty(b_size, dtype=out.dtype)
    spare = np.empty(spare_size, dtype=out.dtype)
    has_bias = bias is not None
    with _threads.claim() as share, parallel_threads(share) as threads:
        _k.gemm(a, trans_a, b, trans_b, out, bias if has_bias else spare, has_bias, act,
                out.dtype.type(slope), a_tail, b_pack, spare, threads)


def matmul(a, b, trans_a, trans_b, out):
    _gemm(a, b, trans_a, trans_b, out, None, ACTIVATION_CODES["identity"], 0.0)


def linear(x, w, b, act, slope, out):
    _gemm(x, w, False, False, out, b, ACTIVATION_CODES[act], slope)


def activation(act, x, slope, out):
    _k.activation(ACTIVATION_CODES[act], x.reshape(-1), x.dtype.type(slope), out.reshape(-1))


def activation_grad(act, x, y, grad_out, slope, out):
    src = y if act in GRAD_NEEDS_OUTPUT else x
    _k.activation_grad(ACTIVATION_CODES[act], src.reshape(-1), grad_out.reshape(-1),
                       src.dtype.type(slope), out.reshape(-1))


def softmax(x, out):
    _k.softmax(x, out)


def softmax_cross_entropy(logits, labels, dlogits):
    if labels.ndim == 1:
        return _k.softmax_cross_entropy_labels(logits, labels, dlogits)
    return _k.softmax_cross_entropy_targets(logits, labels, dlogits)


def mse(pred, target, half_sum, dpred):
    return _k.mse(pred.reshape(-1), target.reshape(-1), bool(half_sum), dpred.reshape(-1))


def binary_cross_entropy(prob, target, dprob):
    return _k.binary_cross_entropy(prob.reshape(-1), target.reshape(-1), dprob.reshape(-1))


def bias_grad(dy, out):
    _k.bias_grad(dy, out)


# Optimizer hyperparameters become scalars of p's dtype; 1 - beta and the bias corrections
# are computed in double first, as the reference (and torch.optim) do.


def sgd_update(p, g, lr):
    _k.sgd_update(p, g, p.dtype.type(lr))


def momentum_update(p, g, v, lr, momentum):
    real = p.dtype.type
    _k.momentum_update(p, g, v, real(lr), real(momentum))


def nesterov_update(p, g, v, lr, momentum):
    real = p.dtype.type
    _k.nesterov_update(p, g, v, real(lr), real(momentum))


def adagrad_update(p, g, h, lr, eps):
    real = p.dtype.type
    _k.adagrad_update(p, g, h, real(lr), real(eps))


def rmsprop_update(p, g, h, lr, alpha, eps):
    real = p.dtype.type
    _k.rmsprop_update(p, g, h, real(lr), real(alpha), real(1.0 - alpha), real(eps))


def adadelta_update(p, g, h, d, lr, rho, eps):
    real = p.dtype.type
    _k.adadelta_update(p, g, h, d, real(lr), real(rho), real(1.0 - rho), real(eps))


def adam_scalars(t, lr, beta1, beta2):
    """(lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t)): Adam's bias corrections, in double (also
    used by the fused step, numba_train)."""
    return lr / (1.0 - beta1**t), 1.0 / math.sqrt(1.0 - beta2**t)


def adam_update(p, g, m, v, t, lr, beta1, beta2, eps):
    real = p.dtype.type
    step_size, inv_sqrt_bias_correction2 = adam_scalars(t, lr, beta1, beta2)
    _k.adam_update(p, g, m, v, real(beta1), real(1.0 - beta1), real(beta2), real(1.0 - beta2),
                   real(step_size), real(inv_sqrt_bias_correction2), real(eps))


def adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    real = p.dtype.type
    step_size, inv_sqrt_bias_correction2 = adam_scalars(t, lr, beta1, beta2)
    _k.adamw_update(p, g, m, v, real(1.0 - lr * weight_decay), real(beta1), real(1.0 - beta1), real(beta2),
                    real(1.0 - beta2), real(step_size), real(inv_sqrt_bias_correction2), real(eps))


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, out, mean, invstd):
    update_running = training and running_mean is not None
    if running_mean is None:  # Numba needs arrays of one type: the unused running statistics are the outputs
        running_mean, running_var = mean, invstd
    _k.batch_norm_forward(x, weight, bias, running_mean, running_var, update_running, bool(training),
                          float(momentum), float(eps), out, mean, invstd)


def batch_norm_backward(x, grad_out, weight, mean, invstd, training, dx, dweight, dbias):
    _k.batch_norm_backward(x, grad_out, weight, mean, invstd, bool(training), dx, dweight, dbias)


def layer_norm_forward(x, weight, bias, eps, out, mean, invstd):
    _k.layer_norm_forward(x, weight, bias, float(eps), out, mean, invstd)


def layer_norm_backward(x, grad_out, weight, mean, invstd, dx, dweight, dbias):
    _k.layer_norm_backward(x, grad_out, weight, mean, invstd, dx, dweight, dbias)


def sum_squares(x):
    return _k.sum_squares(x)


def max_abs(x):
    return _k.max_abs(x)


def scale(x, alpha):
    _k.scale(x, x.dtype.type(alpha))
