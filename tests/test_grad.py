"""nnkern.grad: the central-difference gradient, and the gradient check of every layer and
loss on the reference and on every fast CPU backend (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from nnkern import nn
from nnkern.grad import (
    GRADCHECK_TOLERANCE,
    assert_gradcheck,
    gradcheck,
    gradients_match,
    numerical_gradient,
    relative_error,
)


def test_numerical_gradient_of_the_source_materials_function():
    """x0^2 + x1^2 at (-3, 4) has gradient (-6, 8); central differences are exact on quadratics."""
    x = np.array([-3.0, 4.0])
    grad = numerical_gradient(lambda v: float(np.sum(v**2)), x)
    np.testing.assert_allclose(grad, [-6.0, 8.0], rtol=1e-10)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4)])
def test_numerical_gradient_any_shape_and_x_restored(shape):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape)
    weights = rng.standard_normal(shape)
    before = x.copy()
    grad = numerical_gradient(lambda v: float(np.sum(np.sin(v) * weights)), x)
    assert grad.shape == shape and grad.dtype == np.float64
    # error of the central difference: h^2/6 * |f'''| <= 1e-8 / 6 * |weights|
    np.testing.assert_allclose(grad, np.cos(before) * weights, atol=2e-9)
    np.testing.assert_array_equal(x, before)


def test_numerical_gradient_uses_h():
    # for f = x^3 the central difference is 3x^2 + h^2 exactly
    x = np.array([2.0])
    grad = numerical_gradient(lambda v: float(v[0] ** 3), x, h=0.1)
    np.testing.assert_allclose(grad, [12.0 + 0.01], rtol=1e-12)


def test_numerical_gradient_restores_x_when_f_raises():
    x = np.array([1.0, 2.0])

    def failing(v):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        numerical_gradient(failing, x)
    np.testing.assert_array_equal(x, [1.0, 2.0])


@pytest.mark.parametrize("bad, error", [
    (np.arange(3), TypeError),            # integers cannot be perturbed by h
    ([1.0, 2.0], TypeError),              # not an array: nothing to perturb in place
])
def test_numerical_gradient_rejects_bad_x(bad, error):
    with pytest.raises(error, match="numerical_gradient"):
        numerical_gradient(lambda v: 0.0, bad)


def test_numerical_gradient_rejects_read_only_x_and_bad_h():
    x = np.ones(2)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        numerical_gradient(lambda v: 0.0, x)
    with pytest.raises(ValueError, match="h must be > 0"):
        numerical_gradient(lambda v: 0.0, np.ones(2), h=0.0)


def test_relative_error():
    assert relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert relative_error([0.0], [0.0]) == 0.0
    assert relative_error([1.0, 4.0], [1.0, 3.0]) == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------
# Gradient check of every layer and loss
# ---------------------------------------------------------------------------------------

# Each hidden activation sits between two Linear layers, so that both the fused forward
# (Linear + activation in one kernel) and the plain one are checked.
ACTIVATION_LAYERS = {
    "sigmoid": lambda: nn.Sigmoid(),
    "tanh": lambda: nn.Tanh(),
    "relu": lambda: nn.ReLU(),
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "leaky_relu_negative_slope": lambda: nn.LeakyReLU(-0.3),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "identity": lambda: nn.Identity(),
    "softmax": lambda: nn.Softmax(),
}


def _inputs(n=6, features=5, seed=0):
    return np.random.default_rng(seed).standard_normal((n, features))


@pytest.mark.parametrize("activation", list(ACTIVATION_LAYERS))
def test_gradcheck_every_activation(any_backend, activation):
    model = nn.Sequential(
        nn.Linear(5, 7, seed=1), ACTIVATION_LAYERS[activation](), nn.Linear(7, 4, seed=2),
        backend=any_backend, dtype=np.float64,
    )
    labels = np.array([0, 1, 2, 3, 1, 0])
    errors = assert_gradcheck(model, nn.CrossEntropyLoss(), _inputs(), labels)
    assert list(errors) == ["0.W", "0.b", "2.W", "2.b"]


def _probabilities(n, c, seed):
    p = np.random.default_rng(seed).random((n, c)) + 0.1
    return p / p.sum(axis=1, keepdims=True)


LOSS_CASES = {
    # name: (output layers after the last Linear, loss, targets for 6 samples x 3 outputs)
    "cross_entropy_labels": ([], nn.CrossEntropyLoss(), np.array([2, 0, 1, 1, 0, 2])),
    "cross_entropy_one_hot": ([], nn.CrossEntropyLoss(), np.eye(3)[[2, 0, 1, 1, 0, 2]]),
    "cross_entropy_probabilities": ([], nn.CrossEntropyLoss(), _probabilities(6, 3, 4)),
    "mse_mean": ([], nn.MSELoss(), np.random.default_rng(5).standard_normal((6, 3))),
    "mse_half_sum": ([], nn.MSELoss("half_sum"), np.random.default_rng(6).standard_normal((6, 3))),
    "bce": ([nn.Sigmoid], nn.BCELoss(), (np.random.default_rng(7).random((6, 3)) > 0.5).astype(float)),
    "bce_soft_targets": ([nn.Sigmoid], nn.BCELoss(), np.random.default_rng(8).random((6, 3))),
    "softmax_then_mse": ([nn.Softmax], nn.MSELoss(), _probabilities(6, 3, 9)),
}


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_gradcheck_every_loss(any_backend, case):
    tail, loss, targets = LOSS_CASES[case]
    model = nn.Sequential(
        nn.Linear(5, 4, seed=3), nn.Tanh(), nn.Linear(4, 3, seed=4), *[layer() for layer in tail],
        backend=any_backend, dtype=np.float64,
    )
    assert_gradcheck(model, loss, _inputs(seed=1), targets)


def test_gradcheck_deep_network(any_backend):
    """The source material's deeper network, shrunk: five Linear layers with ReLU."""
    sizes = [6, 9, 8, 7, 5, 4]
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers += [nn.Linear(n_in, n_out, seed=10 + i), nn.ReLU()]
    model = nn.Sequential(*layers[:-1], backend=any_backend, dtype=np.float64)
    errors = assert_gradcheck(model, "cross_entropy", _inputs(n=8, features=6, seed=2), np.arange(8) % 4)
    assert len(errors) == 10


def test_gradcheck_of_a_float32_model_runs_in_float64():
    model = nn.Sequential(nn.Linear(5, 3, seed=0), nn.Sigmoid(), nn.Linear(3, 2, seed=1), backend="numpy")
    assert model.dtype == np.float32
    errors = gradcheck(model, "cross_entropy", _inputs(), np.array([0, 1, 1, 0, 1, 0]))
    assert max(errors.values()) < GRADCHECK_TOLERANCE
    assert model.dtype == np.float32  # the model itself is untouched


def test_gradcheck_catches_a_wrong_gradient(monkeypatch):
    """A backward that is off by 10% in one parameter fails, and the message names it."""
    model = nn.Sequential(nn.Linear(5, 4, seed=0), nn.Tanh(), nn.Linear(4, 3, seed=1),
                          backend="numpy", dtype=np.float64)
    x, y = _inputs(), np.array([0, 1, 2, 0, 1, 2])
    assert gradients_match(model, "cross_entropy", x, y)
    last = model.layers[2]
    original_backward = last.backward

    def wrong_backward(grad_out, input_grad=True):
        result = original_backward(grad_out, input_grad)
        last.db[...] *= 1.1
        return result

    monkeypatch.setattr(last, "backward", wrong_backward)
    assert not gradients_match(model, "cross_entropy", x, y)
    with pytest.raises(AssertionError, match=r"2\.b: 0\.0"):
        assert_gradcheck(model, "cross_entropy", x, y)
