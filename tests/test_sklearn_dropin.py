"""nnkern.sklearn as a drop-in for scikit-learn's MLP estimators: scikit-learn's own
estimators as the oracle (the same weights, step for step, from the same random_state),
check_estimator on non-default settings, sparse input, dtypes, sample weights, and
nnkern's extras (class_weight, validation_data, callbacks, backend)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nnkern

sklearn = pytest.importorskip("sklearn")

import scipy.sparse  # noqa: E402
from sklearn import neural_network  # noqa: E402
from sklearn.datasets import load_digits, make_multilabel_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from nnkern import nn  # noqa: E402
from nnkern.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

FAST = [b for b in ("cython", "numba") if b in nnkern.available_backends()]

X_digits, y_digits = load_digits(n_class=3, return_X_y=True)
X_digits, y_digits = X_digits[:200] / 16.0, y_digits[:200]
X_reg, y_reg = make_regression(n_samples=150, n_features=8, noise=5.0, random_state=0)
y_reg = y_reg / y_reg.std()


def _fit_quietly(estimator, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(*args, **kwargs)


def _largest_difference(a, b) -> float:
    return max(float(np.abs(p - q).max()) for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_))


@pytest.mark.parametrize("params", [
    {"solver": "sgd"}, {"solver": "sgd", "nesterovs_momentum": False}, {"solver": "sgd", "momentum": 0.0},
    {"solver": "adam"}, {"solver": "lbfgs"}, {"solver": "adam", "early_stopping": True},
    {"solver": "sgd", "activation": "logistic", "alpha": 0.01}, {"solver": "adam", "activation": "tanh"},
], ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
@pytest.mark.parametrize("target", ["multiclass", "binary"])
def test_classifier_takes_scikit_learns_steps(params, target):
    y = y_digits if target == "multiclass" else y_digits == 1
    common = dict(hidden_layer_sizes=(7,), max_iter=12, random_state=0, **params)
    ours = _fit_quietly(MLPClassifier(**common), X_digits, y)
    theirs = _fit_quietly(neural_network.MLPClassifier(**common), X_digits, y)
    assert ours.n_iter_ == theirs.n_iter_ and ours.n_outputs_ == theirs.n_outputs_
    assert ours.out_activation_ == theirs.out_activation_
    assert _largest_difference(ours, theirs) < 1e-10
    np.testing.assert_allclose(ours.predict_proba(X_digits), theirs.predict_proba(X_digits), rtol=1e-9, atol=1e-12)
    if "loss_curve_" in vars(theirs):
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-10)
    if params.get("early_stopping"):
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("loss", ["squared_error", "poisson"])
def test_regressor_with_sample_weights_takes_scikit_learns_steps(solver, loss):
    y = np.exp(y_reg / 3) if loss == "poisson" else np.c_[y_reg, -y_reg / 2]  # counts-like / two outputs
    weights = np.arange(len(y_reg)) % 3
    common = dict(loss=loss, hidden_layer_sizes=(6,), max_iter=10, random_state=0, solver=solver,
                  learning_rate_init=0.001 if loss == "poisson" else 0.01)
    ours = _fit_quietly(MLPRegressor(**common), X_reg, y, sample_weight=weights)
    theirs = _fit_quietly(neural_network.MLPRegressor(**common), X_reg, y, sample_weight=weights)
    assert ours.n_iter_ == theirs.n_iter_
    assert _largest_difference(ours, theirs) < 1e-9
    np.testing.assert_allclose(ours.predict(X_reg), theirs.predict(X_reg), rtol=1e-8, atol=1e-10)


def test_multilabel_classification_has_a_logistic_output_per_label():
    X, Y = make_multilabel_classification(n_samples=60, n_classes=4, random_state=0)
    common = dict(hidden_layer_sizes=(10,), solver="lbfgs", max_iter=30, random_state=0)
    ours = _fit_quietly(MLPClassifier(**common), X, Y)
    theirs = _fit_quietly(neural_network.MLPClassifier(**common), X, Y)
    assert ours.out_activation_ == "logistic" and ours.n_outputs_ == 4
    assert _largest_difference(ours, theirs) < 1e-9
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))


# Checks that scikit-learn's own MLP estimators fail with the same settings (check_estimator
# on sklearn.neural_network's, scikit-learn 1.9.1): early stopping holds out a part of the
# few samples of these checks (too few for a validation set, or a split that differs when
# the rows are repeated instead of weighted), and partial_fit refuses early stopping.
SCIKIT_LEARN_FAILS_TOO = {
    "early_stopping": {
        "check_estimators_nan_inf": "scikit-learn fails it too: the validation split comes first",
        "check_estimators_partial_fit_n_features": "partial_fit does not support early_stopping=True",
        "check_fit2d_1feature": "scikit-learn fails it too: too few samples for a validation set",
        "check_fit_score_takes_y": "scikit-learn fails it too: too few samples for a validation set",
        "check_n_features_in_after_fitting": "scikit-learn fails it too: partial_fit refuses early stopping",
        "check_sample_weight_equivalence_on_sparse_data": "the held-out rows differ when rows are repeated",
        "check_sample_weight_equivalence_on_dense_data": "the held-out rows differ when rows are repeated "
                                                         "(scikit-learn's regressor fails it too)",
        "check_classifiers_one_label": "scikit-learn fails it too: a one-class validation split",
        "check_regressors_no_decision_function": "scikit-learn fails it too: too few samples for a validation set",
        "check_class_weight_classifiers": "not examined yet (scikit-learn has no class_weight to compare with); "
                                          "passes without early stopping",
    },
    "lbfgs": {
        "check_classifiers_multilabel_output_format_predict_proba":
            "scikit-learn fails it too: lbfgs fits the tiny data until expit rounds to exactly 1.0",
    },
}


def _expected_failures(estimator) -> dict:
    if estimator.early_stopping:
        return SCIKIT_LEARN_FAILS_TOO["early_stopping"]
    if estimator.solver == "lbfgs" and isinstance(estimator, MLPClassifier):
        return SCIKIT_LEARN_FAILS_TOO["lbfgs"]
    return {}


# check_estimator on settings other than the defaults (the defaults: tests/test_sklearn.py);
# every check also runs on scipy.sparse input, as the estimators declare they take it.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks([MLPClassifier(solver="sgd"), MLPClassifier(solver="lbfgs"),
                          MLPClassifier(early_stopping=True), MLPRegressor(solver="lbfgs", dtype="float64"),
                          MLPRegressor(solver="sgd", early_stopping=True)],
                         expected_failed_checks=_expected_failures)
def test_scikit_learn_estimator_checks_on_other_settings(estimator, check):
    check(estimator)


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
@pytest.mark.parametrize("to_sparse", [scipy.sparse.csr_matrix, scipy.sparse.csc_array])
def test_sparse_input_trains_and_predicts_as_dense(solver, to_sparse):
    common = dict(hidden_layer_sizes=(9,), solver=solver, max_iter=8, random_state=2)
    dense = _fit_quietly(MLPClassifier(**common), X_digits, y_digits)
    sparse = _fit_quietly(MLPClassifier(**common), to_sparse(X_digits), y_digits)
    assert _largest_difference(dense, sparse) < 1e-12
    np.testing.assert_allclose(sparse.predict_proba(to_sparse(X_digits)), dense.predict_proba(X_digits), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weights_and_predictions_follow_the_input_dtype(dtype):
    regressor = _fit_quietly(MLPRegressor(hidden_layer_sizes=(5,), max_iter=5, random_state=0),
                             X_reg.astype(dtype), y_reg)
    assert {c.dtype for c in regressor.coefs_ + regressor.intercepts_} == {np.dtype(dtype)}
    assert regressor.model_.dtype == dtype and regressor.predict(X_reg.astype(dtype)).dtype == dtype
    override = _fit_quietly(MLPRegressor(hidden_layer_sizes=(5,), max_iter=5, random_state=0, dtype="float32"),
                            X_reg.astype(dtype), y_reg)
    assert override.coefs_[0].dtype == np.float32


def test_coefs_can_be_assigned_and_predict_uses_them():
    clf = _fit_quietly(MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0), X_digits, y_digits)
    clf.coefs_[1] = np.zeros_like(clf.coefs_[1])
    clf.intercepts_ = [clf.intercepts_[0], np.array([0.0, 5.0, 0.0])]
    np.testing.assert_array_equal(clf.predict(X_digits), np.ones(len(X_digits)))


def test_verbose_prints_scikit_learns_lines(capsys):
    _fit_quietly(MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, verbose=10, early_stopping=True,
                               random_state=0), X_digits, y_digits)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Iteration 1, loss = ") and lines[1].startswith("Validation score: ")
    assert lines[2].startswith("Iteration 2, loss = ")


def test_diverging_training_raises_scikit_learns_value_error():
    X = np.finfo(np.float64).max * np.random.default_rng(0).uniform(size=(10, 2))
    with warnings.catch_warnings(), pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
        warnings.simplefilter("ignore")
        MLPRegressor(max_iter=3).fit(X, np.arange(10.0))


def test_class_weight_equals_sample_weight_of_the_class():
    y = y_digits == 2
    common = dict(hidden_layer_sizes=(5,), max_iter=5, random_state=0, solver="sgd")
    weighted = _fit_quietly(MLPClassifier(class_weight={True: 3.0, False: 1.0}, **common), X_digits, y)
    by_sample = _fit_quietly(MLPClassifier(**common), X_digits, y, sample_weight=np.where(y, 3.0, 1.0))
    assert _largest_difference(weighted, by_sample) == 0.0


def test_validation_data_is_scored_instead_of_a_split():
    X_val, y_val = X_digits[:40], y_digits[:40]
    clf = _fit_quietly(MLPClassifier(hidden_layer_sizes=(6,), max_iter=6, early_stopping=True, n_iter_no_change=100,
                                     validation_data=(X_val, y_val), random_state=0), X_digits, y_digits)
    assert len(clf.validation_scores_) == 6
    clf.coefs_, clf.intercepts_ = clf._best_coefs, clf._best_intercepts
    assert clf.score(X_val, y_val) == clf.best_validation_score_


def test_callbacks_see_every_epoch_and_can_stop_training():
    class StopAtThree(nn.Callback):
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, epoch, logs):
            self.seen.append((epoch, logs["loss"]))
            if epoch == 3:
                self.model.stop_training = True

    callback = StopAtThree()
    clf = _fit_quietly(MLPClassifier(hidden_layer_sizes=(4,), max_iter=50, callbacks=[callback], random_state=0),
                       X_digits, y_digits)
    assert clf.n_iter_ == 3 and [loss for _, loss in callback.seen] == clf.loss_curve_


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_fast_backends_take_the_reference_steps(backend, solver):
    common = dict(hidden_layer_sizes=(7,), max_iter=5, random_state=0, solver=solver)
    reference = _fit_quietly(MLPClassifier(backend="numpy", **common), X_digits, y_digits)
    fast = _fit_quietly(MLPClassifier(backend=backend, **common), X_digits, y_digits)
    assert fast.model_.backend == backend
    assert _largest_difference(reference, fast) < 1e-8
