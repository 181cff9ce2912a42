"""The "cuda" engine (backends/cuda_train.py) with sample weights and with weight decay on
the weights alone (an optimizer with ``DECAY_BIASES = False``, as the estimators' L2
penalty): ``fit`` (``run_epoch``), the per-batch step and ``MLPClassifier.fit(...,
sample_weight=...)`` equal the layer-by-layer path (and the estimator's Cython engine) to
round-off, batches of zero weight taking no step.

Runs under Numba's CUDA simulator (or on a GPU): see conftest.py. Tiny shapes, as in
test_cuda_train.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from nnkern import engine, nn, optim
from nnkern.backends import cuda_train
from nnkern.training import select_step


class _SGD(optim.SGD):
    DECAY_BIASES = False


class _Adam(optim.Adam):
    DECAY_BIASES = False


class _AdamW(optim.AdamW):
    DECAY_BIASES = False


OPTIMIZERS = {  # weight decay on the weights alone, each way the update applies it
    "momentum": lambda: _SGD(0.1, momentum=0.9, weight_decay=0.05),
    "adam": lambda: _Adam(0.02, weight_decay=0.05),
    "adamw": lambda: _AdamW(0.02, weight_decay=0.5),
}


def _data(n, width=40, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, width)), rng.integers(0, classes, n)


def _weights(n, seed=1):
    """Unequal weights, some of them zero."""
    weights = np.random.default_rng(seed).uniform(0.2, 3.0, n)
    weights[::5] = 0.0
    return weights


def _model(backend, dtype=np.float64):
    """GELU keeps its pre-activation for the gradient, and the last Linear is followed
    by an activation (as test_cuda_train's deep model)."""
    return nn.Sequential(nn.Linear(40, 9, seed=0), nn.GELU(), nn.Linear(9, 4, seed=1), nn.Tanh(),
                         backend=backend, dtype=dtype)


def _assert_same(got_model, want_model, rtol, atol):
    want = want_model.state_dict()
    for name, values in got_model.state_dict().items():
        np.testing.assert_allclose(values, want[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.fixture
def split_gemms(monkeypatch):
    """Plans that split K of these small GEMMs (as in test_cuda_train.py)."""
    monkeypatch.setattr(cuda_train, "SIMULATOR_PARALLELISM", 32)
    monkeypatch.setattr(cuda_train, "MIN_SPLIT_K", 16)


@pytest.mark.parametrize("executor,shuffle", [("persistent", True), ("launches", False)])
def test_weighted_device_epochs_equal_the_layer_by_layer_path(split_gemms, monkeypatch, device_epochs, executor,
                                                              shuffle):
    """fit with sample weights trains on the device (run_epoch): two epochs of 14 samples in
    batches of 4, unequal and zero weights, and unshuffled a whole batch (rows 4-7) of zero
    weight, which takes no step; SGD with momentum and L2 decay of the weights alone."""
    monkeypatch.setenv("NNKERN_CUDA_EXECUTOR", executor)
    x, y = _data(n=14)
    weights = _weights(14)
    weights[4:8] = 0.0
    runs = []
    for backend in ("cuda", "numpy"):
        model, opt = _model(backend), OPTIMIZERS["momentum"]()
        history = model.fit(x, y, epochs=2, batch_size=4, optimizer=opt, sample_weight=weights, shuffle=shuffle,
                            seed=3, verbose=False)
        runs.append((model, opt, history.history))
    (model, opt, history), (want_model, want_opt, want_history) = runs
    assert device_epochs == [4, 4]  # both epochs trained on the device
    for key, values in want_history.items():
        np.testing.assert_allclose(history[key], values, rtol=1e-10, err_msg=key)
    assert opt.t == want_opt.t
    if not shuffle:
        assert opt.t == 2 * 3
    _assert_same(model, want_model, rtol=1e-10, atol=1e-13)
    for got, want in zip(opt.state_dict()["state"], want_opt.state_dict()["state"]):
        np.testing.assert_allclose(got["v"], want["v"], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name,dtype", [*((name, np.float64) for name in OPTIMIZERS), ("momentum", np.float32)])
def test_a_weighted_step_equals_the_layer_step(name, dtype):
    """The per-batch API as the estimators call it (select_step's step(xb, yb, wb)), three
    steps with weights that include zeros, against the layer-by-layer step."""
    x, y = _data(n=8)
    x = x.astype(dtype)
    weights = _weights(8)
    steps = []
    for backend in ("cuda", "numpy"):
        model, opt = _model(backend, dtype), OPTIMIZERS[name]()
        opt.bind(model.parameters(), model.gradients(), backend=backend)
        step = select_step(model, opt, model._objective("cross_entropy"), [x], [y], 6, fused=backend == "cuda")
        steps.append((model, opt, step))
    (model, opt, step), (want_model, want_opt, want_step) = steps
    assert step.engine == "cuda device epochs" and step.fallback_reason is None
    rtol, atol = (1e-10, 1e-13) if dtype == np.float64 else (1e-4, 1e-6)
    for rows in (slice(0, 6), slice(6, 8), slice(1, 7)):
        loss, _, correct = step.step(x[rows], y[rows], weights[rows])
        want_loss, _, want_correct = want_step.step(x[rows], y[rows], weights[rows])
        assert loss == pytest.approx(want_loss, rel=rtol)
        assert correct == want_correct
    assert opt.t == want_opt.t == 3
    _assert_same(model, want_model, rtol, atol)


def test_the_estimator_with_sample_weights_equals_cython(monkeypatch):
    """MLPClassifier(backend="cuda").fit(X, y, sample_weight=w) trains on the cuda engine
    (its per-batch step) and reaches the Cython engine's weights: the L2 penalty on the
    weights alone, scikit-learn's Adam and "sgd" with momentum, a batch of zero weight
    skipped."""
    pytest.importorskip("sklearn")  # the estimators need scikit-learn; the engine's tests above do not
    from sklearn.exceptions import ConvergenceWarning

    from nnkern.sklearn import MLPClassifier

    made = []
    make_step = engine._cuda_step
    monkeypatch.setattr(engine, "_cuda_step", lambda *args: made.append(args) or make_step(*args))
    rng = np.random.default_rng(4)
    X = rng.standard_normal((17, 5))
    y = rng.integers(0, 3, 17)
    weights = _weights(17)
    weights[:4] = 0.0  # unshuffled, the first batch weighs nothing
    fits = []
    for backend in ("cuda", "cython"):
        for solver in ("adam", "sgd"):
            clf = MLPClassifier(hidden_layer_sizes=(6,), solver=solver, alpha=0.01, batch_size=4, max_iter=2,
                                nesterovs_momentum=False, shuffle=solver == "adam", random_state=0,
                                backend=backend)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # two epochs
                clf.fit(X, y, sample_weight=weights)
            fits.append(clf)
    assert len(made) == 2  # both cuda fits trained on the cuda engine
    for got, want in zip(fits[:2], fits[2:]):
        np.testing.assert_allclose(got.loss_curve_, want.loss_curve_, rtol=1e-10)
        for got_array, want_array in zip(got.coefs_ + got.intercepts_, want.coefs_ + want.intercepts_):
            np.testing.assert_allclose(got_array, want_array, rtol=1e-10, atol=1e-13)
