"""nnkern.sklearn's estimators train through nnkern's step objects: multiclass, binary and
multilabel classifiers and squared-error regressors on the fused engines of "cython" and
"numba" (scikit-learn's weights to round-off, with the L2 penalty, sample weights and
scikit-learn's Adam epsilon), the Poisson regressor's exp output layer by layer, saying why
(verbose); float32 input trains in float32."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nnkern

pytest.importorskip("sklearn")

from sklearn import neural_network  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from nnkern.sklearn import MLPClassifier, MLPRegressor  # noqa: E402
from nnkern.sklearn._solvers import _ScikitLearnAdam  # noqa: E402

FUSED = [b for b in ("cython", "numba") if b in nnkern.available_backends()]
LAYER_BY_LAYER = "Training layer by layer, not on a fused engine"

X_digits, y_digits = load_digits(n_class=4, return_X_y=True)
X_digits, y_digits = X_digits[:240] / 16.0, y_digits[:240]


def _fit(estimator, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(*args, **kwargs)


def _largest_difference(a, b) -> float:
    return max(float(np.abs(p - q).max()) for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("params", [
    {"solver": "adam", "alpha": 0.05}, {"solver": "sgd", "nesterovs_momentum": False, "alpha": 0.01},
    {"solver": "sgd", "alpha": 0.01},  # Nesterov's momentum, scikit-learn's default
    {"solver": "sgd", "momentum": 0.0, "learning_rate": "invscaling", "learning_rate_init": 0.5},
    {"solver": "adam", "activation": "tanh", "batch_size": 37, "sample_weight": True},
], ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_a_multiclass_classifier_trains_on_the_fused_engine_as_scikit_learn(backend, params, capsys):
    params = dict(params)
    fit_params = {"sample_weight": np.arange(len(y_digits)) % 3} if params.pop("sample_weight", False) else {}
    common = dict(hidden_layer_sizes=(9, 5), max_iter=8, random_state=1, **params)
    ours = _fit(MLPClassifier(**common, backend=backend, verbose=True), X_digits, y_digits, **fit_params)
    assert LAYER_BY_LAYER not in capsys.readouterr().out  # the fused engine trained it
    theirs = _fit(neural_network.MLPClassifier(**common), X_digits, y_digits, **fit_params)
    assert ours.n_iter_ == theirs.n_iter_
    assert _largest_difference(ours, theirs) < 1e-10
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-10)


@pytest.mark.parametrize("make, reason", [
    (lambda: MLPClassifier(backend="numpy"), "the 'numpy' backend has no fused training engine"),
    (lambda: MLPRegressor(loss="poisson"), "scikit-learn's exp / poisson output trains layer by layer"),
], ids=["numpy", "poisson"])
def test_what_trains_layer_by_layer_says_why(make, reason, capsys):
    estimator = make().set_params(hidden_layer_sizes=(5,), max_iter=2, verbose=True)
    _fit(estimator, X_digits, y_digits)
    out = capsys.readouterr().out
    assert f"{LAYER_BY_LAYER}: " in out and reason in out


@pytest.mark.parametrize("backend", FUSED)
def test_the_fused_engine_and_the_layer_path_reach_the_same_weights(backend):
    weights = np.linspace(0.0, 2.0, len(y_digits))
    common = dict(hidden_layer_sizes=(11,), max_iter=6, random_state=0, alpha=0.1, batch_size=50)
    fused = _fit(MLPClassifier(**common, backend=backend), X_digits, y_digits, sample_weight=weights)
    layers = _fit(MLPClassifier(**common, backend="numpy"), X_digits, y_digits, sample_weight=weights)
    assert _largest_difference(fused, layers) < 1e-12
    np.testing.assert_allclose(fused.loss_curve_, layers.loss_curve_, rtol=1e-12)


BINARY, MULTILABEL = y_digits == 0, np.c_[y_digits == 0, y_digits % 2 == 1]
TARGETS, TARGETS_2D = y_digits + X_digits[:, 20], np.c_[y_digits, X_digits[:, 10] * 3]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("ours, theirs, y", [
    (MLPClassifier, neural_network.MLPClassifier, BINARY),
    (MLPClassifier, neural_network.MLPClassifier, MULTILABEL),
    (MLPRegressor, neural_network.MLPRegressor, TARGETS),
    (MLPRegressor, neural_network.MLPRegressor, TARGETS_2D),
], ids=["binary", "multilabel", "regressor", "regressor_2_outputs"])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_logistic_and_identity_outputs_train_on_the_fused_engine(backend, ours, theirs, y, solver, capsys):
    """The logistic (binary log loss) and identity (squared error) outputs take the fused
    step: the weights of the layer path (the "numpy" backend's) and of scikit-learn."""
    weights = np.linspace(0.0, 2.0, len(y_digits))
    common = dict(hidden_layer_sizes=(11,), max_iter=6, random_state=0, alpha=0.1, batch_size=50, solver=solver,
                  learning_rate_init=0.01)
    fused = _fit(ours(**common, backend=backend, verbose=True), X_digits, y, sample_weight=weights)
    assert LAYER_BY_LAYER not in capsys.readouterr().out
    layers = _fit(ours(**common, backend="numpy"), X_digits, y, sample_weight=weights)
    assert _largest_difference(fused, layers) < 1e-10
    np.testing.assert_allclose(fused.loss_curve_, layers.loss_curve_, rtol=1e-10)
    reference = _fit(theirs(**common), X_digits, y, sample_weight=weights)
    assert _largest_difference(fused, reference) < 1e-10
    np.testing.assert_allclose(fused.loss_curve_, reference.loss_curve_, rtol=1e-10)


@pytest.mark.parametrize("backend", FUSED)
def test_float32_input_trains_in_float32_on_the_fused_engine(backend):
    common = dict(hidden_layer_sizes=(16,), max_iter=5, random_state=0, backend=backend)
    single = _fit(MLPClassifier(**common), X_digits.astype(np.float32), y_digits)
    double = _fit(MLPClassifier(**common), X_digits, y_digits)
    assert single.model_.dtype == np.float32 and {c.dtype for c in single.coefs_} == {np.dtype(np.float32)}
    assert _largest_difference(single, double) < 1e-4
    np.testing.assert_allclose(single.loss_curve_, double.loss_curve_, rtol=1e-5)


def test_scikit_learns_adam_epsilon_is_the_fused_rules_for_the_coming_step():
    adam = _ScikitLearnAdam(0.01, betas=(0.9, 0.99), eps=1e-3)
    p, g = np.ones((2, 2)), np.full((2, 2), 0.5)
    adam.bind([p], [g], backend="numpy")
    for t in (1, 2, 3):
        rule = adam.update_rule()  # read before the step, as the fused engines do
        assert rule.name == "adam" and rule.eps == pytest.approx(1e-3 / np.sqrt(1 - 0.99 ** t), rel=1e-15)
        assert rule.bias_weight_decay == 0.0
        adam.step()
        assert adam.t == t
