"""The reference backend: every kernel in plain, readable NumPy.

This is the oracle every fast kernel is tested against, so it favours being obviously
right over being fast: textbook formulas, float64 accumulation of losses, no tricks.
Arguments arrive validated by :mod:`nnkern.ops` (see :mod:`nnkern.backends`). Its
products run on NumPy's BLAS with the thread count the user and the host have set for it
(nnkern's budget does not apply: README "Threads").
"""

from __future__ import annotations

import math

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)
_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TANH_C = 0.044715
BCE_CLAMP = 1e-12


def matmul(a, b, trans_a, trans_b, out):
    np.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)


def linear(x, w, b, act, slope, out):
    np.matmul(x, w, out=out)
    out += b
    activation(act, out, slope, out)


def sigmoid(x):
    """1 / (1 + exp(-x)), computed from exp(-|x|) so that no exp overflows."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def gelu_erf(x):
    """x * Phi(x), Phi the standard normal CDF: 0.5 * x * (1 + erf(x / sqrt(2)))."""
    return (0.5 * x * (1.0 + _erf(x / _SQRT_2).astype(np.float64))).astype(x.dtype)


def _gelu_tanh_inner(x):
    return _SQRT_2_OVER_PI * (x + _GELU_TANH_C * x**3)


def activation(act, x, slope, out):
    if act == "identity":
        out[...] = x
    elif act == "sigmoid":
        out[...] = sigmoid(x)
    elif act == "tanh":
        np.tanh(x, out=out)
    elif act == "relu":
        np.maximum(x, 0, out=out)
    elif act == "leaky_relu":
        out[...] = np.where(x > 0, x, slope * x)
    elif act == "gelu":
        out[...] = gelu_erf(x)
    elif act == "gelu_tanh":
        out[...] = 0.5 * x * (1.0 + np.tanh(_gelu_tanh_inner(x)))
    elif act == "step":
        out[...] = x > 0
    else:
        raise ValueError(f"unknown activation {act!r}")


def activation_grad(act, x, y, grad_out, slope, out):
    if act == "identity":
        local = 1.0
    elif act == "sigmoid":
        local = y * (1.0 - y)
    elif act == "tanh":
        local = 1.0 - y * y
    elif act == "relu":
        local = x > 0  # the gradient at 0 is taken as 0
    elif act == "leaky_relu":
        local = np.where(x > 0, 1.0, slope)
    elif act == "gelu":
        cdf = 0.5 * (1.0 + _erf(x / _SQRT_2).astype(np.float64))
        pdf = np.exp(-0.5 * x * x) * _INV_SQRT_2PI
        local = cdf + x * pdf
    elif act == "gelu_tanh":
        t = np.tanh(_gelu_tanh_inner(x))
        local = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_C * x * x)
    elif act == "step":
        local = 0.0
    else:
        raise ValueError(f"unknown activation {act!r}")
    out[...] = grad_out * local


def softmax(x, out):
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    out[...] = e / e.sum(axis=1, keepdims=True)


def log_softmax(x):
    """x - logsumexp(x) per row, with the row max subtracted before exponentiating."""
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits, labels, dlogits):
    n = logits.shape[0]
    logp = log_softmax(logits)
    probs = np.exp(logp)
    if labels.ndim == 1:
        rows = np.arange(n)
        loss = -logp[rows, labels].astype(np.float64).sum() / n
        dlogits[...] = probs
        dlogits[rows, labels] -= 1.0
    else:
        # -sum_c t_c log p_c; its gradient is p * sum_c t_c - t (= p - t for distributions)
        loss = -(labels.astype(np.float64) * logp).sum() / n
        dlogits[...] = probs * labels.sum(axis=1, keepdims=True) - labels
    dlogits /= n
    return float(loss)


def mse(pred, target, half_sum, dpred):
    diff = pred - target
    if half_sum:
        loss = 0.5 * np.sum(diff.astype(np.float64) ** 2)
        dpred[...] = diff
    else:
        loss = np.mean(diff.astype(np.float64) ** 2)
        dpred[...] = 2.0 * diff / diff.size
    return float(loss)


def binary_cross_entropy(prob, target, dprob):
    p = prob.astype(np.float64)
    t = target.astype(np.float64)
    log_p = np.log(np.maximum(p, BCE_CLAMP))
    log_1mp = np.log(np.maximum(1.0 - p, BCE_CLAMP))
    loss = -np.mean(t * log_p + (1.0 - t) * log_1mp)
    # d/dp of -(t log p + (1-t) log(1-p)) = (p - t) / (p (1 - p)); the denominator is
    # clamped like the logs so that saturated probabilities give large, finite gradients.
    dprob[...] = (p - t) / np.maximum(p * (1.0 - p), BCE_CLAMP) / p.size
    return float(loss)


def bias_grad(dy, out):
    np.sum(dy, axis=0, out=out)


def sgd_update(p, g, lr):
    p -= lr * g


def momentum_update(p, g, v, lr, momentum):
    v *= momentum
    v += g
    p -= lr * v


def nesterov_update(p, g, v, lr, momentum):
    v *= momentum
    v += g
    p -= lr * (g + momentum * v)


def adagrad_update(p, g, h, lr, eps):
    h += g * g
    p -= lr * g / (np.sqrt(h) + eps)


def rmsprop_update(p, g, h, lr, alpha, eps):
    h *= alpha
    h += (1.0 - alpha) * g * g
    p -= lr * g / (np.sqrt(h) + eps)


def adadelta_update(p, g, h, d, lr, rho, eps):
    h *= rho
    h += (1.0 - rho) * g * g
    delta = np.sqrt(d + eps) / np.sqrt(h + eps) * g
    d *= rho
    d += (1.0 - rho) * delta * delta
    p -= lr * delta


def adam_update(p, g, m, v, t, lr, beta1, beta2, eps):
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g
    m_hat = m / (1.0 - beta1**t)
    v_hat = v / (1.0 - beta2**t)
    p -= lr * m_hat / (np.sqrt(v_hat) + eps)


def adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    p *= 1.0 - lr * weight_decay  # decoupled weight decay, before Adam's step (as torch.optim.AdamW)
    adam_update(p, g, m, v, t, lr, beta1, beta2, eps)


# Normalisation layers. Statistics are computed in float64 (as the losses are) and the
# variance is the biased one, (x - mean)^2 averaged, as torch normalises with; invstd is
# 1 / sqrt(var + eps), saved for the backward pass.


def _normalize_forward(x, weight, bias, eps, axis, out, mean, invstd):
    """Normalise ``x`` over ``axis`` with its own statistics; returns the biased variance."""
    x64 = x.astype(np.float64)
    mean64 = x64.mean(axis=axis)
    centered = x64 - np.expand_dims(mean64, axis)
    var64 = (centered * centered).mean(axis=axis)
    invstd64 = 1.0 / np.sqrt(var64 + eps)
    mean[...] = mean64
    invstd[...] = invstd64
    out[...] = centered * np.expand_dims(invstd64, axis) * weight + bias
    return var64


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, out, mean, invstd):
    if training:
        var = _normalize_forward(x, weight, bias, eps, 0, out, mean, invstd)
        if running_mean is not None:
            n = x.shape[0]
            running_mean *= 1.0 - momentum
            running_mean += momentum * mean.astype(np.float64)
            running_var *= 1.0 - momentum
            running_var += momentum * var * n / (n - 1)  # the unbiased variance, as torch keeps
    else:
        mean[...] = running_mean
        invstd[...] = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
        out[...] = (x - mean) * invstd * weight + bias


def batch_norm_backward(x, grad_out, weight, mean, invstd, training, dx, dweight, dbias):
    g = grad_out.astype(np.float64)
    xhat = (x.astype(np.float64) - mean) * invstd
    sum_g = g.sum(axis=0)
    sum_g_xhat = (g * xhat).sum(axis=0)
    dbias[...] = sum_g
    dweight[...] = sum_g_xhat
    scale = weight.astype(np.float64) * invstd
    if training:  # the batch statistics depend on x: d/dx of (x - mean(x)) / std(x)
        n = x.shape[0]
        dx[...] = scale * (g - sum_g / n - xhat * sum_g_xhat / n)
    else:
        dx[...] = scale * g


def layer_norm_forward(x, weight, bias, eps, out, mean, invstd):
    _normalize_forward(x, weight, bias, eps, 1, out, mean, invstd)


def layer_norm_backward(x, grad_out, weight, mean, invstd, dx, dweight, dbias):
    g = grad_out.astype(np.float64)
    invstd = invstd.astype(np.float64)[:, None]
    xhat = (x.astype(np.float64) - mean[:, None]) * invstd
    dbias[...] = g.sum(axis=0)
    dweight[...] = (g * xhat).sum(axis=0)
    dxhat = g * weight
    dx[...] = invstd * (dxhat - dxhat.mean(axis=1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))


# Whole vectors (gradient clipping by global norm): reductions in float64.


def sum_squares(x):
    return float(np.sum(x.astype(np.float64) ** 2))


def max_abs(x):
    return float(np.max(np.abs(x)))  # NaN when x holds one


def scale(x, alpha):
    x *= alpha
