"""The "cython" backend: every kernel compiled from kernels/cython/*.pyx.

Each function here only maps the raw interface of :mod:`nnkern.backends` onto the
compiled modules: activation names to their integer codes, N-D arrays to flat views,
labels to their kernel, and the thread count: each call's share of the thread budget
(:class:`nnkern._threads.claim`). Arguments arrive validated by :mod:`nnkern.ops`.
"""

from __future__ import annotations

from .. import _threads
from . import ACTIVATION_CODES, GRAD_NEEDS_OUTPUT

# the OpenMP runtime the compiled modules link, loaded first with nnkern's spin count
_threads.load_openmp_runtime()

from . import _cy_elementwise, _cy_gemm, _cy_losses, _cy_norm, _cy_optim, _cy_vector  # noqa: E402


def gemm_variant() -> str:
    """The GEMM variant this CPU runs and how it was chosen (see _cy_gemm.gemm_variant)."""
    return _cy_gemm.gemm_variant()


def _run(kernel, *args):
    """kernel(*args, threads): one call, with its share of the thread budget."""
    with _threads.claim() as threads:
        return kernel(*args, threads)


def matmul(a, b, trans_a, trans_b, out):
    _run(_cy_gemm.matmul, a, b, trans_a, trans_b, out)


def linear(x, w, b, act, slope, out):
    _run(_cy_gemm.linear, x, w, b, ACTIVATION_CODES[act], slope, out)


def activation(act, x, slope, out):
    _run(_cy_elementwise.activation, ACTIVATION_CODES[act], x.reshape(-1), slope, out.reshape(-1))


def activation_grad(act, x, y, grad_out, slope, out):
    src = y if act in GRAD_NEEDS_OUTPUT else x
    _run(_cy_elementwise.activation_grad, ACTIVATION_CODES[act], src.reshape(-1), grad_out.reshape(-1),
                                    slope, out.reshape(-1))


def softmax(x, out):
    _run(_cy_elementwise.softmax, x, out)


def softmax_cross_entropy(logits, labels, dlogits):
    if labels.ndim == 1:
        return _run(_cy_losses.softmax_cross_entropy_labels, logits, labels, dlogits)
    return _run(_cy_losses.softmax_cross_entropy_targets, logits, labels, dlogits)


def mse(pred, target, half_sum, dpred):
    return _run(_cy_losses.mse, pred.reshape(-1), target.reshape(-1), half_sum, dpred.reshape(-1))


def binary_cross_entropy(prob, target, dprob):
    return _run(_cy_losses.binary_cross_entropy, prob.reshape(-1), target.reshape(-1),
                                           dprob.reshape(-1))


def bias_grad(dy, out):
    _run(_cy_elementwise.bias_grad, dy, out)


def sgd_update(p, g, lr):
    _run(_cy_optim.sgd_update, p, g, lr)


def momentum_update(p, g, v, lr, momentum):
    _run(_cy_optim.momentum_update, p, g, v, lr, momentum)


def nesterov_update(p, g, v, lr, momentum):
    _run(_cy_optim.nesterov_update, p, g, v, lr, momentum)


def adagrad_update(p, g, h, lr, eps):
    _run(_cy_optim.adagrad_update, p, g, h, lr, eps)


def rmsprop_update(p, g, h, lr, alpha, eps):
    _run(_cy_optim.rmsprop_update, p, g, h, lr, alpha, eps)


def adadelta_update(p, g, h, d, lr, rho, eps):
    _run(_cy_optim.adadelta_update, p, g, h, d, lr, rho, eps)


def adam_update(p, g, m, v, t, lr, beta1, beta2, eps):
    _run(_cy_optim.adam_update, p, g, m, v, t, lr, beta1, beta2, eps)


def adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    _run(_cy_optim.adamw_update, p, g, m, v, t, lr, beta1, beta2, eps, weight_decay)


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, out, mean, invstd):
    update_running = training and running_mean is not None
    if running_mean is None:  # typed arguments: the unused running statistics are the outputs
        running_mean, running_var = mean, invstd
    _run(_cy_norm.batch_norm_forward, x, weight, bias, running_mean, running_var, update_running, training,
         momentum, eps, out, mean, invstd)


def batch_norm_backward(x, grad_out, weight, mean, invstd, training, dx, dweight, dbias):
    _run(_cy_norm.batch_norm_backward, x, grad_out, weight, mean, invstd, training, dx, dweight, dbias)


def layer_norm_forward(x, weight, bias, eps, out, mean, invstd):
    _run(_cy_norm.layer_norm_forward, x, weight, bias, eps, out, mean, invstd)


def layer_norm_backward(x, grad_out, weight, mean, invstd, dx, dweight, dbias):
    _run(_cy_norm.layer_norm_backward, x, grad_out, weight, mean, invstd, dx, dweight, dbias)


def sum_squares(x):
    return _run(_cy_vector.sum_squares, x)


def max_abs(x):
    return _run(_cy_vector.max_abs, x)


def scale(x, alpha):
    _run(_cy_vector.scale, x, alpha)
