"""The "numpy" reference backend against hand-computed values and textbook formulas.

Every fast kernel is tested against this backend, so this file pins the reference itself
to values worked out by hand and to the update rules as torch.optim writes them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnkern import ops

R = dict(backend="numpy")


def test_matmul_hand_computed():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[5.0, 6.0], [7.0, 8.0]])
    np.testing.assert_array_equal(ops.matmul(a, b, **R), [[19, 22], [43, 50]])
    np.testing.assert_array_equal(ops.matmul(a, b, trans_a=True, **R), [[26, 30], [38, 44]])
    np.testing.assert_array_equal(ops.matmul(a, b, trans_b=True, **R), [[17, 23], [39, 53]])


def test_linear_hand_computed():
    x = np.array([[1.0, -1.0]])
    w = np.array([[2.0, 0.5, 1.0], [1.0, 1.0, 3.0]])
    b = np.array([0.0, -1.0, 1.0])
    # x @ w + b = [1, -1.5, -1]
    np.testing.assert_array_equal(ops.linear(x, w, b, **R), [[1.0, -1.5, -1.0]])
    np.testing.assert_array_equal(ops.linear(x, w, b, "relu", **R), [[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(ops.linear(x, w, b, "leaky_relu", negative_slope=0.2, **R), [[1.0, -0.3, -0.2]])


def test_activations_hand_computed():
    x = np.array([-2.0, 0.0, 1.0])
    np.testing.assert_allclose(ops.activation("sigmoid", x, **R), [1 / (1 + math.e**2), 0.5, 1 / (1 + math.e**-1)])
    np.testing.assert_allclose(ops.activation("tanh", x, **R), [math.tanh(-2), 0.0, math.tanh(1)])
    np.testing.assert_array_equal(ops.activation("relu", x, **R), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(ops.activation("leaky_relu", x, **R), [-0.02, 0.0, 1.0])  # PyTorch default 0.01
    np.testing.assert_array_equal(ops.activation("identity", x, **R), x)
    np.testing.assert_array_equal(ops.activation("step", x, **R), [0.0, 0.0, 1.0])
    # GELU(x) = x * Phi(x); Phi(1) = 0.8413447460685429, Phi(-2) = 0.022750131948179195
    np.testing.assert_allclose(ops.activation("gelu", x, **R), [-2 * 0.022750131948179195, 0.0, 0.8413447460685429], rtol=1e-15)
    tanh_form = 0.5 * 1.0 * (1 + math.tanh(math.sqrt(2 / math.pi) * (1 + 0.044715)))
    np.testing.assert_allclose(ops.activation("gelu", x[2:], approximate="tanh", **R), [tanh_form], rtol=1e-15)


@pytest.mark.parametrize("name,params", [("sigmoid", {}), ("tanh", {}), ("leaky_relu", {"negative_slope": 0.2}),
                                         ("gelu", {}), ("gelu", {"approximate": "tanh"}), ("identity", {})])
def test_activation_grad_is_the_derivative(name, params):
    x = np.array([-3.1, -0.7, 0.3, 1.9, 4.2])
    y = ops.activation(name, x, **R, **params)
    g = np.array([1.0, -2.0, 0.5, 3.0, 1.5])
    h = 1e-6
    numeric = (ops.activation(name, x + h, **R, **params) - ops.activation(name, x - h, **R, **params)) / (2 * h)
    np.testing.assert_allclose(ops.activation_grad(name, x, y, g, **R, **params), g * numeric, rtol=1e-7)


def test_sigmoid_grad_is_s_times_one_minus_s():
    y = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(ops.activation_grad("sigmoid", None, y, np.ones(3), **R), y * (1 - y))


def test_softmax_is_stable_and_sums_to_one():
    x = np.array([[1000.0, 1001.0, 1002.0], [-5.0, 0.0, 5.0]])
    s = ops.softmax(x, **R)
    e = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(s[0], e / e.sum(), rtol=1e-15)
    np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-15)


def test_cross_entropy_hand_computed():
    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0]])
    # softmax rows: [1/2, 1/2] and [3/4, 1/4]; labels 0 and 1 -> losses log 2 and log 4
    loss, d = ops.softmax_cross_entropy(logits, np.array([0, 1]), **R)
    assert loss == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-15)
    np.testing.assert_allclose(d, np.array([[-0.5, 0.5], [0.75, -0.75]]) / 2, rtol=1e-15)
    one_hot_rows = np.array([[1.0, 0.0], [0.0, 1.0]])
    loss2, d2 = ops.softmax_cross_entropy(logits, one_hot_rows, **R)
    assert loss2 == pytest.approx(loss, rel=1e-15)
    np.testing.assert_allclose(d2, d, rtol=1e-15)
    # soft targets: row 0 gives log 2, row 1 gives -(log(3/4) + log(1/4)) / 2
    soft_loss, soft_d = ops.softmax_cross_entropy(logits, np.full((2, 2), 0.5), **R)
    assert soft_loss == pytest.approx((math.log(2) - 0.5 * math.log(3 / 16)) / 2, rel=1e-15)
    np.testing.assert_allclose(soft_d, np.array([[0.0, 0.0], [0.25, -0.25]]) / 2, atol=1e-16)


def test_mse_hand_computed():
    p, t = np.array([1.0, 2.0, 4.0]), np.array([1.0, 0.0, 1.0])
    loss, d = ops.mse(p, t, **R)
    assert loss == pytest.approx((0 + 4 + 9) / 3)
    np.testing.assert_allclose(d, 2 * (p - t) / 3)
    loss, d = ops.mse(p, t, reduction="half_sum", **R)
    assert loss == pytest.approx(0.5 * 13)
    np.testing.assert_allclose(d, p - t)


def test_binary_cross_entropy_hand_computed_and_clamped():
    p, t = np.array([0.8, 0.25]), np.array([1.0, 0.0])
    loss, d = ops.binary_cross_entropy(p, t, **R)
    assert loss == pytest.approx(-(math.log(0.8) + math.log(0.75)) / 2)
    np.testing.assert_allclose(d, [(0.8 - 1) / (0.8 * 0.2) / 2, 0.25 / (0.25 * 0.75) / 2])
    loss, d = ops.binary_cross_entropy(np.array([0.0, 1.0]), np.array([1.0, 0.0]), **R)
    assert loss == pytest.approx(-math.log(1e-12))
    assert np.all(np.isfinite(d))


def test_bias_grad_hand_computed():
    np.testing.assert_array_equal(ops.bias_grad(np.array([[1.0, 2.0], [3.0, 4.0]]), **R), [4.0, 6.0])


# ---------------------------------------------------------------------------------------
# Optimizer updates, step by step, against the equations as torch.optim documents them
# ---------------------------------------------------------------------------------------

P0 = np.array([1.0, -2.0, 0.5])
GRADS = [np.array([0.3, -0.1, 2.0]), np.array([-0.4, 0.2, 1.0]), np.array([0.1, 0.1, -3.0])]


def test_sgd_equation():
    p = P0.copy()
    for g in GRADS:
        ops.sgd_update(p, g, 0.1, **R)
    np.testing.assert_allclose(p, P0 - 0.1 * sum(GRADS), rtol=1e-15)


def test_momentum_equation():
    p, v = P0.copy(), np.zeros(3)
    want_p, b = P0.copy(), None
    for g in GRADS:
        ops.momentum_update(p, g, v, 0.1, 0.9, **R)
        b = g if b is None else 0.9 * b + g  # torch: b_1 = g_1, b_t = mu b_{t-1} + g_t
        want_p = want_p - 0.1 * b
    np.testing.assert_allclose(p, want_p, rtol=1e-15)


def test_nesterov_equation():
    p, v = P0.copy(), np.zeros(3)
    want_p, b = P0.copy(), None
    for g in GRADS:
        ops.nesterov_update(p, g, v, 0.1, 0.9, **R)
        b = g if b is None else 0.9 * b + g  # torch's buffer, as for momentum
        want_p = want_p - 0.1 * (g + 0.9 * b)  # torch: the step is g + mu b_t
    np.testing.assert_allclose(p, want_p, rtol=1e-15)
    np.testing.assert_allclose(v, b, rtol=1e-15)


def test_adagrad_equation():
    p, h = P0.copy(), np.zeros(3)
    want, acc = P0.copy(), np.zeros(3)
    for g in GRADS:
        ops.adagrad_update(p, g, h, 0.01, 1e-10, **R)
        acc = acc + g**2
        want = want - 0.01 * g / (np.sqrt(acc) + 1e-10)
    np.testing.assert_allclose(p, want, rtol=1e-15)
    np.testing.assert_allclose(h, acc, rtol=1e-15)


def test_rmsprop_equation():
    p, h = P0.copy(), np.zeros(3)
    want, sq = P0.copy(), np.zeros(3)
    for g in GRADS:
        ops.rmsprop_update(p, g, h, 0.01, 0.99, 1e-8, **R)
        sq = 0.99 * sq + 0.01 * g**2
        want = want - 0.01 * g / (np.sqrt(sq) + 1e-8)
    np.testing.assert_allclose(p, want, rtol=1e-15)


def test_adadelta_equation():
    p, h, d = P0.copy(), np.zeros(3), np.zeros(3)
    want, sq, acc_delta = P0.copy(), np.zeros(3), np.zeros(3)
    for g in GRADS:
        ops.adadelta_update(p, g, h, d, 1.0, 0.9, 1e-6, **R)
        sq = 0.9 * sq + 0.1 * g**2
        delta = np.sqrt(acc_delta + 1e-6) / np.sqrt(sq + 1e-6) * g
        acc_delta = 0.9 * acc_delta + 0.1 * delta**2
        want = want - delta
    np.testing.assert_allclose(p, want, rtol=1e-14)
    np.testing.assert_allclose(d, acc_delta, rtol=1e-14)


def test_adam_equation():
    p, m, v = P0.copy(), np.zeros(3), np.zeros(3)
    want, m1, m2 = P0.copy(), np.zeros(3), np.zeros(3)
    for t, g in enumerate(GRADS, start=1):
        ops.adam_update(p, g, m, v, t, 1e-3, 0.9, 0.999, 1e-8, **R)
        m1 = 0.9 * m1 + 0.1 * g
        m2 = 0.999 * m2 + 0.001 * g**2
        want = want - 1e-3 * (m1 / (1 - 0.9**t)) / (np.sqrt(m2 / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(p, want, rtol=1e-14)
    # the first Adam step moves every coordinate by about lr, whatever the gradient's size
    q = P0.copy()
    ops.adam_update(q, GRADS[0], np.zeros(3), np.zeros(3), 1, 1e-3, **R)
    np.testing.assert_allclose(np.abs(q - P0), 1e-3, rtol=1e-4)


def test_float32_stays_float32():
    p = P0.astype(np.float32)
    ops.adam_update(p, GRADS[0], np.zeros(3, np.float32), np.zeros(3, np.float32), 1, **R)
    assert p.dtype == np.float32
    loss, d = ops.softmax_cross_entropy(np.zeros((2, 3), np.float32), [0, 1], **R)
    assert d.dtype == np.float32 and isinstance(loss, float)
