"""The "cython" backend: every kernel compiled from kernels/cython/*.pyx.

Each function here only maps the raw interface of :mod:`nnkern.backends` onto the
compiled modules: activation names to their integer codes, N-D arrays to flat views,
labels to their kernel, and the thread count from :func:`nnkern.get_num_threads`.
Arguments arrive validated by :mod:`nnkern.ops`.
"""

from __future__ import annotations

from .._threads import get_num_threads
from . import ACTIVATION_CODES, GRAD_NEEDS_OUTPUT
from . import _cy_elementwise, _cy_gemm, _cy_losses, _cy_norm, _cy_optim, _cy_vector


def matmul(a, b, trans_a, trans_b, out):
    _cy_gemm.matmul(a, b, trans_a, trans_b, out, get_num_threads())


def linear(x, w, b, act, slope, out):
    _cy_gemm.linear(x, w, b, ACTIVATION_CODES[act], slope, out, get_num_threads())


def activation(act, x, slope, out):
    _cy_elementwise.activation(ACTIVATION_CODES[act], x.reshape(-1), slope, out.reshape(-1),
                               get_num_threads())


def activation_grad(act, x, y, grad_out, slope, out):
    src = y if act in GRAD_NEEDS_OUTPUT else x
    _cy_elementwise.activation_grad(ACTIVATION_CODES[act], src.reshape(-1), grad_out.reshape(-1),
                                    slope, out.reshape(-1), get_num_threads())


def softmax(x, out):
    _cy_elementwise.softmax(x, out, get_num_threads())


def softmax_cross_entropy(logits, labels, dlogits):
    if labels.ndim == 1:
        return _cy_losses.softmax_cross_entropy_labels(logits, labels, dlogits, get_num_threads())
    return _cy_losses.softmax_cross_entropy_targets(logits, labels, dlogits, get_num_threads())


def mse(pred, target, half_sum, dpred):
    return _cy_losses.mse(pred.reshape(-1), target.reshape(-1), half_sum, dpred.reshape(-1),
                          get_num_threads())


def binary_cross_entropy(prob, target, dprob):
    return _cy_losses.binary_cross_entropy(prob.reshape(-1), target.reshape(-1),
                                           dprob.reshape(-1), get_num_threads())


def bias_grad(dy, out):
    _cy_elementwise.bias_grad(dy, out, get_num_threads())


def sgd_update(p, g, lr):
    _cy_optim.sgd_update(p, g, lr, get_num_threads())


def momentum_update(p, g, v, lr, momentum):
    _cy_optim.momentum_update(p, g, v, lr, momentum, get_num_threads())


def adagrad_update(p, g, h, lr, eps):
    _cy_optim.adagrad_update(p, g, h, lr, eps, get_num_threads())


def rmsprop_update(p, g, h, lr, alpha, eps):
    _cy_optim.rmsprop_update(p, g, h, lr, alpha, eps, get_num_threads())


def adadelta_update(p, g, h, d, lr, rho, eps):
    _cy_optim.adadelta_update(p, g, h, d, lr, rho, eps, get_num_threads())


def adam_update(p, g, m, v, t, lr, beta1, beta2, eps):
    _cy_optim.adam_update(p, g, m, v, t, lr, beta1, beta2, eps, get_num_threads())


def adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    _cy_optim.adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay, get_num_threads())


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, out, mean, invstd):
    update_running = training and running_mean is not None
    if running_mean is None:  # typed arguments: the unused running statistics are the outputs
        running_mean, running_var = mean, invstd
    _cy_norm.batch_norm_forward(x, weight, bias, running_mean, running_var, update_running, training, momentum,
                                eps, out, mean, invstd, get_num_threads())


def batch_norm_backward(x, grad_out, weight, mean, invstd, training, dx, dweight, dbias):
    _cy_norm.batch_norm_backward(x, grad_out, weight, mean, invstd, training, dx, dweight, dbias,
                                 get_num_threads())


def layer_norm_forward(x, weight, bias, eps, out, mean, invstd):
    _cy_norm.layer_norm_forward(x, weight, bias, eps, out, mean, invstd, get_num_threads())


def layer_norm_backward(x, grad_out, weight, mean, invstd, dx, dweight, dbias):
    _cy_norm.layer_norm_backward(x, grad_out, weight, mean, invstd, dx, dweight, dbias, get_num_threads())


def sum_squares(x):
    return _cy_vector.sum_squares(x, get_num_threads())


def max_abs(x):
    return _cy_vector.max_abs(x, get_num_threads())


def scale(x, alpha):
    _cy_vector.scale(x, alpha, get_num_threads())
