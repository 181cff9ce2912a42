"""The fused training engine against the layer-by-layer path: same numbers to round-off."""

from __future__ import annotations

import numpy as np
import pytest

import nnkern
from nnkern import nn, optim
from nnkern.engine import fused_train_step

BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(name not in nnkern.available_backends(),
                                                        reason=f"needs the {name} backend"))
            for name in ("cython", "numba")]

OPTIMIZERS = [
    lambda: optim.SGD(lr=0.1),
    lambda: optim.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
    lambda: optim.Adagrad(lr=0.05),
    lambda: optim.RMSprop(lr=0.01),
    lambda: optim.Adadelta(),
    lambda: optim.Adam(lr=1e-3, weight_decay=1e-4),
    lambda: optim.AdamW(lr=1e-2, weight_decay=0.5),
    lambda: optim.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True),
]
ACTIVATIONS = [nn.ReLU, nn.Sigmoid, nn.Tanh, lambda: nn.GELU(), lambda: nn.GELU("tanh"),
               lambda: nn.LeakyReLU(0.2), lambda: nn.LeakyReLU(-0.5)]


def _model(act, dtype, backend, widths=(37, 23, 11, 7)):
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b, seed=i))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers, backend=backend, dtype=dtype)


def _data(n=203, width=37, classes=7):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, width)), rng.integers(0, classes, n)


def _train(act, make_optimizer, dtype, fused, backend):
    x, y = _data()
    model = _model(act, dtype, backend)
    history = model.fit(x.astype(dtype), y, epochs=2, batch_size=16, optimizer=make_optimizer(),
                        seed=3, verbose=False, fused=fused)
    return history.history, [p.copy() for p in model.parameters()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make_optimizer", OPTIMIZERS,
                         ids=["sgd", "momentum", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "nesterov"])
def test_fused_fit_equals_layer_by_layer_fit(dtype, make_optimizer, backend):
    tol = 2e-4 if dtype == np.float32 else 1e-10
    want_history, want_params = _train(nn.ReLU, make_optimizer, dtype, False, backend)
    got_history, got_params = _train(nn.ReLU, make_optimizer, dtype, True, backend)
    np.testing.assert_allclose(got_history["loss"], want_history["loss"], rtol=tol)
    assert got_history["accuracy"] == pytest.approx(want_history["accuracy"], abs=0.01)
    for got, want in zip(got_params, want_params):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTIVATIONS, ids=["relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "leaky", "leaky_neg"])
def test_fused_step_every_activation(act, backend):
    make = lambda: optim.SGD(lr=0.1, momentum=0.5)  # noqa: E731
    want_history, want_params = _train(act, make, np.float64, False, backend)
    got_history, got_params = _train(act, make, np.float64, True, backend)
    np.testing.assert_allclose(got_history["loss"], want_history["loss"], rtol=1e-10)
    for got, want in zip(got_params, want_params):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_ending_in_an_activation_trains_as_layer_by_layer(backend):
    """The CPU steps' logits are the last Linear's output: a model that applies an
    activation after it takes the layer-by-layer path, which backpropagates through it."""
    x, y = _data(n=40)
    histories, params = [], []
    for fused in (False, True):
        model = nn.Sequential(nn.Linear(37, 11, seed=0), nn.ReLU(), nn.Linear(11, 7, seed=1), nn.Sigmoid(),
                              backend=backend, dtype=np.float64)
        histories.append(model.fit(x, y, epochs=2, batch_size=16, optimizer=optim.SGD(lr=0.5), seed=0,
                                   verbose=False, fused=fused).history["loss"])
        params.append(model.parameters())
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-12)
    for got, want in zip(*params):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_uses_the_engine_only_where_it_applies(backend):
    x, y = _data()
    model = _model(nn.ReLU, np.float32, backend)
    opt = optim.SGD(lr=0.1)
    opt.bind(model.parameters(), model.gradients(), backend=backend)
    assert fused_train_step(model, opt, nn.CrossEntropyLoss(), x, y, 16) is not None
    assert fused_train_step(model, opt, nn.MSELoss(), x, y, 16) is None
    assert fused_train_step(model, opt, nn.CrossEntropyLoss(), x, np.eye(7)[y], 16) is None  # one-hot
    assert fused_train_step(model, opt, nn.CrossEntropyLoss(), x, y + 7, 16) is None  # out of range
    assert fused_train_step(model, opt, nn.CrossEntropyLoss(), x[:, :5], y, 16) is None  # wrong width
    dropout = nn.Sequential(nn.Linear(37, 7), nn.Dropout(0.5), backend=backend)
    opt2 = optim.SGD(lr=0.1)
    opt2.bind(dropout.parameters(), dropout.gradients(), backend=backend)
    assert fused_train_step(dropout, opt2, nn.CrossEntropyLoss(), x, y, 16) is None
    numpy_model = nn.Sequential(nn.Linear(37, 7), backend="numpy")
    opt3 = optim.SGD(lr=0.1)
    opt3.bind(numpy_model.parameters(), numpy_model.gradients(), backend="numpy")
    assert fused_train_step(numpy_model, opt3, nn.CrossEntropyLoss(), x, y, 16) is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_labels_still_get_the_clear_error_with_fused_on(backend):
    x, y = _data()
    y[5] = 99
    with pytest.raises(ValueError, match="label 99 .* out of range for 7 classes"):
        _model(nn.ReLU, np.float32, backend).fit(x, y, epochs=1, batch_size=16, optimizer=optim.SGD(lr=0.1), verbose=False)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_step_large_batch_and_wide_layers(backend, threads):
    """Batches over 128 rows (the weight gradient's k: another GEMM form) and a weight of
    more than 2**15 elements (updated on all threads), with Adam and weight decay."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((700, 150)), rng.integers(0, 5, 700)

    def run(fused):
        model = nn.Sequential(nn.Linear(150, 300, seed=0), nn.ReLU(), nn.Linear(300, 40, seed=1), nn.GELU(),
                              nn.Linear(40, 5, seed=2), backend=backend, dtype=np.float64)
        history = model.fit(x, y, epochs=2, batch_size=200, optimizer=optim.Adam(lr=1e-3, weight_decay=1e-4),
                            seed=0, verbose=False, fused=fused)
        return history.history["loss"], [p.copy() for p in model.parameters()]

    before = nnkern.get_num_threads()
    nnkern.set_num_threads(threads)
    try:
        (want_loss, want_params), (got_loss, got_params) = run(False), run(True)
    finally:
        nnkern.set_num_threads(before)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-10)
    for got, want in zip(got_params, want_params):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("widths, batch", [((2, 16, 2), 64), ((64, 64, 40), 300), ((30, 20, 3), 1024),
                                           ((300, 24, 3), 1024)],
                         ids=["tiny_layers_batch64", "batch300", "batch1024", "batch1024_wide_input"])
def test_fused_step_batches_larger_than_any_weight(backend, widths, batch):
    """The weight gradient's packed operand (batch x fan_out) can outgrow every weight: the
    step's work buffers are sized for both. The last case's first weight gradient takes
    several K and M blocks (the update fused into it runs once per finished block)."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((batch + 37, widths[0])), rng.integers(0, widths[-1], batch + 37)

    def run(fused):
        model = nn.Sequential(nn.Linear(widths[0], widths[1], seed=0), nn.Sigmoid(),
                              nn.Linear(widths[1], widths[2], seed=1), backend=backend, dtype=np.float64)
        history = model.fit(x, y, epochs=1, batch_size=batch, optimizer=optim.SGD(lr=0.1), seed=0,
                            verbose=False, fused=fused)
        return history.history["loss"], [p.copy() for p in model.parameters()]

    (want_loss, want_params), (got_loss, got_params) = run(False), run(True)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-10)
    for got, want in zip(got_params, want_params):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_fit_says_when_the_numba_step_may_compile(capsys):
    """A first compilation of the numba step takes most of a minute: verbose fit says so
    before it starts, in a process that has not compiled it yet; the cython step never."""
    x, y = _data()
    for backend in [b for b in ("cython", "numba") if b in nnkern.available_backends()]:
        model = _model(nn.ReLU, np.float32, backend)
        step = fused_train_step(model, optim.SGD(model, lr=0.1), nn.CrossEntropyLoss(), x, y, 16)
        if backend == "cython":
            assert step.first_call_note is None
            continue
        from numba import types

        from nnkern.backends import numba_train

        compiled = numba_train.train_step_for(numba_train.RULE_SGD)  # the step of SGD's rule
        labels_compiled = any(not isinstance(signature[1], types.NoneType) for signature in compiled.signatures)
        assert (step.first_call_note is None) == labels_compiled
        model.fit(x.astype(np.float32), y, epochs=1, batch_size=16, optimizer=optim.SGD(lr=0.1))
        printed = capsys.readouterr().out
        assert (step.first_call_note is not None) == ("numba: compiling the training step" in printed)
        assert compiled.signatures  # compiled (or loaded) now: no note any more
        again = fused_train_step(model, optim.SGD(model, lr=0.1), nn.CrossEntropyLoss(), x, y, 16)
        assert again.first_call_note is None


# -- the float-target heads: squared error and binary log losses ---------------------------

def _output_loss(activation, loss):
    pytest.importorskip("sklearn")
    from nnkern.sklearn._losses import OutputLoss

    return OutputLoss(activation, loss)


# name: (the loss, whether the model ends in a Sigmoid, binary targets)
HEADS = {
    "mse": (nn.MSELoss, False, False),
    "mse_half_sum": (lambda: nn.MSELoss("half_sum"), False, False),
    "bce_after_sigmoid": (nn.BCELoss, True, True),
    "sklearn_logistic": (lambda: _output_loss("logistic", "binary_log_loss"), False, True),
    "sklearn_identity": (lambda: _output_loss("identity", "squared_error"), False, False),
}
HEAD_OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.1),
    "momentum": lambda: optim.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
    "nesterov": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda: optim.Adam(lr=1e-2, weight_decay=1e-3),
}


def _head_steps(backend, head, dtype, outputs, batch, make_optimizer, weighted, steps=4):
    """(loss, right predictions) per step and the parameters after ``steps`` steps of the
    fused step and of LayerStep on the same model, optimizer and batches."""
    from nnkern.training import LayerStep, select_step

    make_loss, sigmoid, binary = HEADS[head]
    rng = np.random.default_rng(batch * 10 + outputs)
    x = rng.standard_normal((batch * steps, 9))
    y = (rng.random((len(x), outputs)) > 0.5) if binary else 3 * rng.standard_normal((len(x), outputs))
    weights = rng.random(len(x)) * 2 if weighted else None
    runs = []
    for fused in (True, False):
        layers = [nn.Linear(9, 13, seed=0), nn.Tanh(), nn.Linear(13, outputs, seed=1)]
        model = nn.Sequential(*layers, *([nn.Sigmoid()] if sigmoid else []), backend=backend, dtype=dtype)
        optimizer = make_optimizer()
        optimizer.bind(model.parameters(), model.gradients(), backend=backend)
        objective = model._objective(make_loss())
        step = select_step(model, optimizer, objective, [x], [y], batch) if fused else \
            LayerStep(model, optimizer, objective)
        assert step.fallback_reason is None, step.fallback_reason
        results = []
        for i in range(steps):
            rows = slice(i * batch, (i + 1) * batch)
            value, _, correct = step.step(x[rows].astype(dtype), y[rows], None if weights is None else weights[rows])
            results.append((value, correct))
        runs.append((results, [p.copy() for p in model.parameters()]))
    return runs


def _assert_same_steps(runs, dtype):
    (fused_results, fused_params), (layer_results, layer_params) = runs
    tol = 2e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose([v for v, _ in fused_results], [v for v, _ in layer_results], rtol=tol, atol=tol)
    assert [c for _, c in fused_results] == [c for _, c in layer_results]  # right predictions, or [None]
    for got, want in zip(fused_params, layer_params):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("outputs", [1, 3])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_float_heads_equal_the_layer_path(backend, dtype, head, batch, outputs, weighted):
    runs = _head_steps(backend, head, dtype, outputs, batch, HEAD_OPTIMIZERS["adam"], weighted)
    _assert_same_steps(runs, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov"])
def test_float_heads_with_every_momentum_rule(backend, dtype, head, optimizer):
    runs = _head_steps(backend, head, dtype, 3, 7, HEAD_OPTIMIZERS[optimizer], weighted=True)
    _assert_same_steps(runs, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mse_fit_trains_on_the_fused_engine(backend, capsys):
    """Model.fit(loss="mse") on float targets takes the fused step (verbose names no
    fallback), with the layer path's losses and weights; its plan is keyed by the head."""
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((90, 37)), rng.standard_normal((90, 2))
    runs = []
    for fused in (True, False):
        model = _model(nn.ReLU, np.float64, backend, widths=(37, 11, 2))
        history = model.fit(x, y, epochs=2, batch_size=16, optimizer=optim.SGD(lr=0.05, momentum=0.9), loss="mse",
                            seed=1, verbose=fused, fused=fused)
        runs.append((history.history, model.parameters()))
    assert "training layer by layer" not in capsys.readouterr().out
    np.testing.assert_allclose(runs[0][0]["loss"], runs[1][0]["loss"], rtol=1e-10)
    assert "accuracy" not in runs[0][0]
    for got, want in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    model = _model(nn.ReLU, np.float32, backend, widths=(37, 11, 2))
    step = fused_train_step(model, optim.SGD(model, lr=0.1), nn.MSELoss(), x, y, 16)
    assert step.plan.network == "37-11relu-2 identity_squared"


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_the_float_heads_refuse(backend):
    """Targets that do not fit, and models a head does not suit, take the layer path
    (FusedStepUnavailable says why); a batch of the wrong shape is a ValueError."""
    from nnkern.engine import FusedStepUnavailable, build_fused_step

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 37)), rng.standard_normal((20, 3))
    model = _model(nn.ReLU, np.float64, backend, widths=(37, 5, 3))
    opt = optim.SGD(model, lr=0.1)
    bad = y.copy()
    bad[4, 1] = np.nan
    for targets, reason in [(y[:, :2], r"shape \(20, 2\) do not fit 20 rows of 3 outputs"),
                            (y.astype(complex), "not real numbers"), (bad, "not all finite .row 4")]:
        with pytest.raises(FusedStepUnavailable, match=reason):
            build_fused_step(model, opt, nn.MSELoss(), x, targets, 8)
    with pytest.raises(FusedStepUnavailable, match="BCELoss trains on the fused engines after a last Sigmoid"):
        build_fused_step(model, opt, nn.BCELoss(), x, y > 0, 8)
    sigmoid_model = nn.Sequential(nn.Linear(37, 3), nn.Sigmoid(), backend=backend, dtype=np.float64)
    with pytest.raises(FusedStepUnavailable, match="take the last Linear's output as the input of MSELoss"):
        build_fused_step(sigmoid_model, optim.SGD(sigmoid_model, lr=0.1), nn.MSELoss(), x, y, 8)
    step = build_fused_step(model, opt, nn.MSELoss(), x, y, 8)
    with pytest.raises(ValueError, match=r"targets of shape \(8, 2\) for a batch of 8 rows and 3 outputs"):
        step(x[:8], y[:8, :2])
    # one output takes (rows,) targets as (rows, 1)
    single = _model(nn.ReLU, np.float64, backend, widths=(37, 5, 1))
    step = build_fused_step(single, optim.SGD(single, lr=0.1), nn.MSELoss(), x, y[:, 0], 8)
    assert step(x[:8], y[:8, 0])[1] is None  # a regression loss counts no right predictions
    poisson = _output_loss("exp", "poisson")
    with pytest.raises(FusedStepUnavailable, match="exp / poisson output trains layer by layer"):
        build_fused_step(single, optim.SGD(single, lr=0.1), poisson, x, np.abs(y[:, 0]), 8)


# -- an epoch in one call (step.epochs: the Cython engine) ---------------------------------------


def _epoch_and_steps(head, dtype, x_dtype, batch, make_optimizer, sparse_x=False):
    """The same epoch (a shuffled order, the last batch shorter unless ``batch`` divides it)
    trained by ``step.epochs`` and by the step one batch at a time, from equal models:
    (per-batch results, parameters, optimizer steps) of each."""
    from nnkern.training import select_step

    make_loss, sigmoid, binary = HEADS[head] if head != "softmax" else (nn.CrossEntropyLoss, False, False)
    rng = np.random.default_rng(batch)  # (the rates keep every loss finite)
    n, outputs = 61, 3
    x = rng.standard_normal((n, 9))
    if sparse_x:
        x[rng.random(x.shape) < 0.8] = 0.0
    x = x.astype(x_dtype)
    if head == "softmax":
        y = rng.integers(0, outputs, n)
    else:
        y = (rng.random((n, outputs)) > 0.5).astype(float) if binary else rng.standard_normal((n, outputs))
    order = rng.permutation(n).astype(np.int64)
    batches = [order[i:i + batch] for i in range(0, n, batch)]
    eps = [1e-8 * (k + 1) for k in range(len(batches))]  # per batch, as scikit-learn's Adam
    decay = [1e-3 / len(rows) for rows in batches]
    runs = []
    for whole_epoch in (True, False):
        layers = [nn.Linear(9, 13, seed=0), nn.ReLU(), nn.Linear(13, outputs, seed=1)]
        model = nn.Sequential(*layers, *([nn.Sigmoid()] if sigmoid else []), backend="cython", dtype=dtype)
        optimizer = make_optimizer()
        optimizer.bind(model.parameters(), model.gradients(), backend="cython")
        step = select_step(model, optimizer, model._objective(make_loss()), [x], [y], batch)
        assert step.epochs is not None, "the Cython step has whole-epoch calls"
        if whole_epoch:
            losses, correct, squares = step.epochs(x, y)(order, batch, eps, decay, weight_squares=True)
            rights = [None] * len(losses) if correct is None else correct.tolist()
            results = list(zip(losses.tolist(), rights, squares.tolist()))
        else:
            results = []
            for k, rows in enumerate(batches):
                squared = sum(float(np.sum(np.square(W, dtype=np.float64))) for W in model.parameters()[0::2])
                optimizer.hyperparameters["eps"] = eps[k]
                optimizer.weight_decay = decay[k]
                value, _, right = step.step(x[rows].astype(dtype), y[rows])
                results.append((value, right[0], squared))
        runs.append((results, [p.copy() for p in model.parameters()], optimizer.t))
    return runs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("head", ["softmax", "mse", "sklearn_logistic", "bce_after_sigmoid"])
@pytest.mark.parametrize("batch", [1, 7, 61, 64])
@pytest.mark.parametrize("make_optimizer", [lambda: optim.SGD(lr=0.01, momentum=0.9),
                                            lambda: optim.Adam(lr=1e-2)], ids=["momentum", "adam"])
def test_an_epoch_in_one_call_equals_its_steps(dtype, x_dtype, head, batch, make_optimizer):
    """step.epochs gathers each batch's rows (converting x of the other float type as the
    per-step path does) and runs the very steps the per-batch calls run: the parameters are
    equal to the last bit, the losses too, and the weights' squares to round-off."""
    pytest.importorskip("nnkern.backends.cython_backend")
    if head != "softmax":
        pytest.importorskip("sklearn")
    (epoch_results, epoch_params, epoch_t), (step_results, step_params, step_t) = _epoch_and_steps(
        head, dtype, x_dtype, batch, make_optimizer)
    assert epoch_t == step_t == -(-61 // batch)
    for got, want in zip(epoch_params, step_params):
        np.testing.assert_array_equal(got, want)
    assert np.all(np.isfinite([loss for loss, _, _ in step_results]))
    np.testing.assert_array_equal([loss for loss, _, _ in epoch_results], [loss for loss, _, _ in step_results])
    if head in ("softmax", "sklearn_logistic", "bce_after_sigmoid"):
        assert [right for _, right, _ in epoch_results] == [right for _, right, _ in step_results]
    np.testing.assert_allclose([s for _, _, s in epoch_results], [s for _, _, s in step_results], rtol=1e-12)


def test_an_epoch_in_one_call_on_sparse_input():
    pytest.importorskip("nnkern.backends.cython_backend")
    (epoch_results, epoch_params, _), (step_results, step_params, _) = _epoch_and_steps(
        "softmax", np.float32, np.float32, 16, lambda: optim.SGD(lr=0.1), sparse_x=True)
    for got, want in zip(epoch_params, step_params):
        np.testing.assert_array_equal(got, want)
    assert [r[:2] for r in epoch_results] == [r[:2] for r in step_results]


def test_an_epoch_in_one_call_checks_its_arguments():
    pytest.importorskip("nnkern.backends.cython_backend")
    from nnkern.training import select_step

    x, y = _data(n=40, width=9, classes=3)
    model = _model(nn.ReLU, np.float32, "cython", widths=(9, 5, 3))
    optimizer = optim.SGD(lr=0.1)
    optimizer.bind(model.parameters(), model.gradients(), backend="cython")
    step = select_step(model, optimizer, model._objective(nn.CrossEntropyLoss()), [x], [y], 8)
    run = step.epochs(x, y)
    order = np.arange(40, dtype=np.int64)
    with pytest.raises(ValueError, match=r"order must be int64 row indices in 0\.\.39"):
        run(np.append(order, 40), 8, [0.0] * 6, [0.0] * 6)
    with pytest.raises(ValueError, match=r"order must be int64 row indices"):
        run(order.astype(np.int32), 8, [0.0] * 5, [0.0] * 5)
    with pytest.raises(ValueError, match=r"one value per batch \(5\)"):
        run(order, 8, [0.0] * 4, [0.0] * 5)
    with pytest.raises(ValueError, match=r"batches of 9 rows, expected 1\.\.8"):
        run(order, 9, [0.0] * 5, [0.0] * 5)
    with pytest.raises(ValueError, match=r"labels 0\.\.3 for 3 classes"):
        step.epochs(x, np.append(y[:-1], 3))
    with pytest.raises(ValueError, match=r"x must be C-contiguous float32 or float64 \(n, 9\)"):
        step.epochs(np.asfortranarray(x), y)(order, 8, [0.0] * 5, [0.0] * 5)
    assert optimizer.t == 0  # nothing trained
