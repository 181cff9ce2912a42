"""nnkern.sklearn: scikit-learn's own estimator checks, labels of any type, Pipeline and
GridSearchCV, partial_fit, warm_start, early stopping, pickling, the fused engine, errors.

scikit-learn is an optional extra ([sklearn], also in [test]): without it this module is
skipped."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

import nnkern

sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import make_blobs, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from nnkern import nn  # noqa: E402
from nnkern.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

FAST = [b for b in ("cython", "numba") if b in nnkern.available_backends()]


# Every check of scikit-learn's check_estimator on the default estimators. Two are skipped
# by scikit-learn itself here: check_*_data_not_an_array without pandas installed, and
# check_array_api_input unless SCIPY_ARRAY_API=1 (nnkern takes NumPy arrays only).
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks([MLPClassifier(), MLPRegressor()])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def blobs(n=240, classes=3, seed=0):
    return make_blobs(n_samples=n, centers=classes, n_features=5, random_state=seed)


@pytest.mark.parametrize("labels", [
    np.array(["cat", "dog", "emu"]), np.array([-1.0, 0.0, 2.0]), np.array([10, -3, 7]),
    np.array([False, True]), np.array(["b", "a"], dtype=object),
], ids=["strings", "floats", "ints", "bools", "objects"])
def test_labels_of_any_type(labels):
    X, index = blobs(classes=len(labels))
    y = labels[index]
    clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, max_iter=50, tol=1e-3,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    assert list(clf.classes_) == sorted(labels.tolist())
    predicted = clf.predict(X)
    assert predicted.dtype == clf.classes_.dtype and set(predicted.tolist()) <= set(labels.tolist())
    assert clf.score(X, y) > 0.9
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), len(labels))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), proba, rtol=1e-10, atol=1e-300)


def test_pipeline_and_grid_search():
    X, y = blobs(n=180)
    pipeline = make_pipeline(StandardScaler(), MLPClassifier(max_iter=30, random_state=0))
    search = GridSearchCV(pipeline, {"mlpclassifier__hidden_layer_sizes": [(8,), (32, 16)],
                                     "mlpclassifier__learning_rate_init": [1e-3, 1e-2]}, cv=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_score_ > 0.9 and search.score(X, y) > 0.9
    assert search.best_estimator_[-1].n_features_in_ == 5


@pytest.mark.parametrize("backend", FAST)
def test_a_classifier_trains_on_each_fast_backend(backend):
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=40, random_state=0, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    assert clf.model_.backend == backend and clf.score(X, y) > 0.95


def test_partial_fit_continues_one_epoch_at_a_time():
    X, y = blobs()
    common = dict(hidden_layer_sizes=(12,), random_state=3, shuffle=False, solver="sgd", learning_rate_init=0.05)
    with pytest.raises(ValueError, match="classes must be passed on the first call to partial_fit"):
        MLPClassifier(**common).partial_fit(X, y)
    stepped = MLPClassifier(**common)
    for _ in range(3):
        stepped.partial_fit(X, y, classes=[0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = MLPClassifier(**common, max_iter=3, n_iter_no_change=10).fit(X, y)
    # n_iter_ counts the epochs of the last call, t_ the samples of every call
    assert stepped.n_iter_ == 1 and fitted.n_iter_ == 3 and stepped.t_ == 3 * len(X)
    for got, want in zip(stepped.coefs_ + stepped.intercepts_, fitted.coefs_ + fitted.intercepts_):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(stepped.loss_curve_, fitted.loss_curve_, rtol=1e-6)
    with pytest.raises(ValueError, match=r"`y` has classes not in `self.classes_`"):
        stepped.partial_fit(X[:3], [7, 0, 1])
    with pytest.raises(ValueError, match=r"is not the same as on last call to partial_fit"):
        stepped.partial_fit(X, y, classes=[0, 1])


def test_warm_start_continues_from_the_previous_weights():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, warm_start=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
        model, first_loss = clf.model_, clf.loss_curve_[0]
        clf.fit(X, y)
    assert clf.model_ is model and clf.n_iter_ == 5 and len(clf.loss_curve_) == 10
    assert clf.loss_curve_[5] < first_loss


def test_training_stops_when_the_loss_stops_improving():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.05, tol=1e-2, n_iter_no_change=3,
                        max_iter=500, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # it converges before max_iter
        clf.fit(X, y)
    assert clf.n_iter_ < 500 and clf.best_loss_ == min(clf.loss_curve_)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(2\) reached"):
        MLPClassifier(max_iter=2).fit(X, y)


def test_early_stopping_keeps_the_best_validation_epoch():
    X, y = blobs(n=300)
    clf = MLPClassifier(hidden_layer_sizes=(16,), early_stopping=True, n_iter_no_change=4, max_iter=300,
                        learning_rate_init=0.01, random_state=0).fit(X, y)
    assert clf.n_iter_ < 300 and clf.best_loss_ is None
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    scores = clf.validation_scores_  # the last 5 epochs (n_iter_no_change + 1) did not beat the best by tol
    assert max(scores[-5:]) < max(scores[:-5]) + clf.tol
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        clf.partial_fit(X, y)


@pytest.mark.parametrize("make", [lambda: MLPClassifier(hidden_layer_sizes=(8,), random_state=0),
                                  lambda: MLPRegressor(hidden_layer_sizes=(8,), random_state=0,
                                                       learning_rate="invscaling", solver="sgd")],
                         ids=["classifier", "regressor_invscaling"])
def test_pickled_estimators_predict_and_continue_the_same(make):
    X, y = blobs()
    estimator = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(X, y.astype(float) if isinstance(estimator, MLPRegressor) else y)
    copy = pickle.loads(pickle.dumps(estimator))
    np.testing.assert_array_equal(copy.predict(X), estimator.predict(X))
    target = y.astype(float) if isinstance(estimator, MLPRegressor) else y
    copy.partial_fit(X, target)
    estimator.partial_fit(X, target)
    np.testing.assert_array_equal(copy.predict(X), estimator.predict(X))


def test_regressor_one_and_several_outputs():
    X, y = make_regression(n_samples=200, n_features=6, n_targets=2, noise=0.1, random_state=0)
    y = y / y.std(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        two = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=300, random_state=0).fit(X, y)
        one = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=300, random_state=0).fit(
            X, y[:, 0])
    assert two.predict(X).shape == (200, 2) and one.predict(X).shape == (200,)
    assert two.score(X, y) > 0.95 and one.score(X, y[:, 0]) > 0.95
    assert [c.shape for c in two.coefs_] == [(6, 32), (32, 2)] and two.n_layers_ == 3


@pytest.mark.parametrize("schedule, expected", [
    ("invscaling", lambda n, k: 0.1 / (k * n + 1) ** 0.5),
    ("cosine", lambda n, k: 0.1 * (1 + np.cos(np.pi * k / 4)) / 2),
])
def test_learning_rate_schedules(schedule, expected):
    X, y = blobs(n=60)
    clf = MLPClassifier(hidden_layer_sizes=(4,), solver="sgd", learning_rate=schedule, learning_rate_init=0.1,
                        max_iter=4, n_iter_no_change=10, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    assert clf.optimizer_.lr == pytest.approx(expected(60, 4), rel=1e-12, abs=1e-15)


def test_adaptive_rate_divides_by_five_and_stops_below_1e_6():
    X, y = blobs(n=60)
    clf = MLPClassifier(hidden_layer_sizes=(4,), solver="sgd", learning_rate="adaptive", learning_rate_init=0.1,
                        tol=10.0, n_iter_no_change=1, max_iter=200, random_state=0).fit(X, y)  # never better
    assert clf.optimizer_.lr < 1e-6 and clf.n_iter_ < 200
    assert clf.optimizer_.lr == pytest.approx(0.1 * 0.2 ** round(np.log(clf.optimizer_.lr / 0.1) / np.log(0.2)))


@pytest.mark.parametrize("params, error, message", [
    ({"solver": "newton"}, ValueError, "solver must be one of 'lbfgs', 'adam', 'sgd'"),
    ({"hidden_layer_sizes": (10, 0)}, ValueError, r"hidden_layer_sizes entries must be in \[1, inf\)"),
    ({"hidden_layer_sizes": "wide"}, TypeError, "hidden_layer_sizes entries must be an integer"),
    ({"learning_rate_init": 0.0}, ValueError, r"learning_rate_init must be in \(0, inf\)"),
    ({"momentum": 1.5}, ValueError, r"momentum must be in \[0, 1\]"),
    ({"n_iter_no_change": 0}, ValueError, r"n_iter_no_change must be in \[1, inf\)"),
    ({"max_fun": 0}, ValueError, r"max_fun must be in \[1, inf\)"),
    ({"nesterovs_momentum": "no"}, TypeError, "nesterovs_momentum must be True or False"),
    ({"batch_size": 0}, ValueError, r"batch_size must be in \[1, inf\)"),
    ({"dtype": "float16"}, ValueError, "dtype must be None, 'float32' or 'float64'"),
    ({"backend": "tpu"}, ValueError, "unknown backend 'tpu'"),
    ({"shuffle": "yes"}, TypeError, "shuffle must be True or False"),
])
def test_bad_parameters_are_refused_at_fit(params, error, message):
    X, y = blobs(n=30)
    clf = MLPClassifier(**params)  # the constructor only stores them
    with pytest.raises(error, match=message):
        clf.fit(X, y)


def test_bad_data_is_refused():
    X, y = blobs(n=30)
    scipy_sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(ValueError, match="Sample weights must contain at least one non-zero number"):
        MLPClassifier().fit(X, y, sample_weight=np.zeros(30))
    with pytest.raises(ValueError, match="non-negative"):
        MLPClassifier().fit(X, y, sample_weight=-np.ones(30))
    with pytest.raises(ValueError, match="The validation set is too small"):
        MLPClassifier(early_stopping=True).fit(X[:4], y[:4])
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier().fit(X, np.linspace(0, 1, 30))
    with pytest.raises(NotFittedError):
        MLPRegressor().predict(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="X has 4 features, but MLPClassifier is expecting 5 features"):
        clf.predict(X[:, :4])
