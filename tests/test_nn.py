"""nnkern.nn: construction and its errors, forward passes against a hand-written NumPy
forward, workspaces, parameters and state, fit / evaluate / predict, callbacks, non-finite
losses, save / load, and training on a real MNIST subset on every CPU backend."""

from __future__ import annotations

import math
import os
import pickle
import re

import numpy as np
import pytest

import nnkern
from nnkern import nn, ops, optim
from _tolerance import assert_close

DTYPES = [np.float32, np.float64]


def small_model(backend="numpy", dtype=np.float32, seed=0):
    return nn.Sequential(nn.Linear(6, 11, seed=seed), nn.ReLU(), nn.Linear(11, 7, seed=seed + 1), nn.Tanh(),
                         nn.Linear(7, 3, seed=seed + 2), backend=backend, dtype=dtype)


def data(n=30, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)), rng.integers(0, classes, n)


# ---------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------


def test_layer_sizes_that_do_not_chain_fail_naming_layers_and_sizes():
    with pytest.raises(ValueError) as info:
        nn.Sequential(nn.Linear(784, 100), nn.Sigmoid(), nn.Linear(50, 10))
    message = str(info.value)
    assert "layer 2 Linear(50, 10) expects 50 input features" in message
    assert "layer 0 Linear(784, 100) outputs 100" in message


def test_input_of_the_wrong_width_names_both_shapes():
    model = small_model()
    with pytest.raises(ValueError, match=re.escape("input of shape (4x10)") + ".*" + re.escape("(N x 6)")):
        model.predict(np.zeros((4, 10)))
    with pytest.raises(ValueError, match=r"must be 2-D .* shape \(6\); use x.reshape\(1, -1\)"):
        model.predict(np.zeros(6))
    with pytest.raises(TypeError, match="complex"):
        model.predict(np.zeros((2, 6), dtype=complex))


@pytest.mark.parametrize("make, error, message", [
    (lambda: nn.Sequential(nn.Linear(2, 2), "relu"), TypeError, "layer 1 is str"),
    (lambda: nn.Sequential(*[nn.ReLU()] * 2), ValueError, "same layer object"),
    (lambda: nn.Sequential(nn.Linear(2, 2), dtype=np.float16), ValueError, "float32 or float64"),
    (lambda: nn.Sequential(nn.Linear(2, 2), backend="fortran"), ValueError, "unknown backend 'fortran'"),
    (lambda: nn.Linear(0, 3), ValueError, "in_features must be a positive integer"),
    (lambda: nn.Linear(3, 2.5), ValueError, "out_features must be a positive integer"),
    (lambda: nn.Linear(3, 2, init="glorot"), ValueError, "init must be 'he', 'xavier' or a standard deviation"),
    (lambda: nn.Linear(3, 2, init=-0.1), ValueError, "standard deviation >= 0"),
    (lambda: nn.LeakyReLU(float("nan")), ValueError, "negative_slope must be a finite number"),
    (lambda: nn.GELU("fast"), ValueError, "approximate must be 'none' or 'tanh'"),
    (lambda: nn.Dropout(1.0), ValueError, r"p must be in \[0, 1\)"),
    (lambda: nn.MSELoss("sum"), ValueError, "reduction must be 'mean' or 'half_sum'"),
    (lambda: nn.get_loss("hinge"), ValueError, "unknown loss 'hinge'"),
])
def test_bad_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("init, std", [("he", math.sqrt(2 / 400)), ("xavier", math.sqrt(1 / 400)), (0.01, 0.01)])
def test_linear_initialisation(init, std):
    layer = nn.Linear(400, 300, init=init, seed=0)
    assert layer.W.shape == (400, 300) and layer.b.shape == (300,)
    assert np.std(layer.W) == pytest.approx(std, rel=0.01)  # 120000 draws: ~0.2% standard error
    np.testing.assert_array_equal(layer.b, 0)
    np.testing.assert_array_equal(nn.Linear(400, 300, init=init, seed=0).W, layer.W)


def test_model_takes_the_current_backend_and_keeps_it():
    with nnkern.use_backend("numpy"):
        model = small_model(backend=None)
    assert model.backend == "numpy" and model.dtype == np.float32
    assert all(p.dtype == np.float32 for p in model.parameters())


def test_a_list_of_layers_works_too():
    model = nn.Sequential([nn.Linear(3, 2), nn.Softmax()], backend="numpy")
    assert len(model.layers) == 2 and model.in_features == 3 and model.out_features == 2


# ---------------------------------------------------------------------------------------
# Forward passes against NumPy written by hand
# ---------------------------------------------------------------------------------------


def numpy_forward(model, x):
    """The model's forward pass written out in NumPy, in float64, from its weights."""
    def erf(v):
        return np.vectorize(math.erf)(v)

    functions = {
        nn.ReLU: lambda v, l: np.maximum(v, 0),
        nn.Sigmoid: lambda v, l: 1 / (1 + np.exp(-v)),
        nn.Tanh: lambda v, l: np.tanh(v),
        nn.LeakyReLU: lambda v, l: np.where(v > 0, v, l.negative_slope * v),
        nn.GELU: lambda v, l: 0.5 * v * (1 + erf(v / math.sqrt(2))),
        nn.Identity: lambda v, l: v,
        nn.Softmax: lambda v, l: np.exp(v - v.max(1, keepdims=True)) / np.exp(v - v.max(1, keepdims=True)).sum(1, keepdims=True),
        nn.Dropout: lambda v, l: v,
    }
    out = np.asarray(x, np.float64)
    for layer in model.layers:
        if isinstance(layer, nn.Linear):
            out = out @ np.asarray(layer.W, np.float64) + np.asarray(layer.b, np.float64)
        else:
            out = functions[type(layer)](out, layer)
    return out


def every_layer_model(backend, dtype):
    return nn.Sequential(
        nn.Linear(13, 17, seed=0), nn.ReLU(),                 # fused
        nn.Linear(17, 11, seed=1), nn.GELU(),                 # not fused (gradient needs x)
        nn.Linear(11, 9, seed=2), nn.LeakyReLU(0.2),          # fused
        nn.Dropout(0.5, seed=0),                              # identity in evaluation
        nn.Linear(9, 8, seed=3), nn.LeakyReLU(-0.5),          # not fused (sign-changing slope)
        nn.Linear(8, 7, seed=4), nn.Sigmoid(), nn.Identity(),
        nn.Linear(7, 5, seed=5), nn.Tanh(),
        nn.Linear(5, 4, seed=6), nn.Softmax(),
        backend=backend, dtype=dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 64])
def test_forward_matches_numpy_written_by_hand(any_backend, dtype, n):
    model = every_layer_model(any_backend, dtype)
    x = np.random.default_rng(n).standard_normal((n, 13))
    out = model.predict(x)
    assert out.dtype == dtype and out.shape == (n, 4)
    assert_close(out, numpy_forward(model, x.astype(dtype)), dtype, factor=50)


def test_fused_and_unfused_forward_and_backward_agree():
    """Linear+ReLU fused in one kernel gives the same outputs and gradients as the two
    steps run separately (LeakyReLU(0) is ReLU, and Identity breaks the fusion)."""
    x, y = data(n=9, features=6)
    fused = nn.Sequential(nn.Linear(6, 5, seed=0), nn.ReLU(), nn.Linear(5, 3, seed=1), backend="numpy",
                          dtype=np.float64)
    apart = nn.Sequential(nn.Linear(6, 5, seed=0), nn.Identity(), nn.ReLU(), nn.Linear(5, 3, seed=1),
                          backend="numpy", dtype=np.float64)
    assert len(fused._stages) == 2 and len(apart._stages) == 4
    loss_fused, out_fused = fused.compute_gradients(x, y, "cross_entropy")
    loss_apart, out_apart = apart.compute_gradients(x, y, "cross_entropy")
    assert loss_fused == loss_apart
    np.testing.assert_array_equal(out_fused, out_apart)
    for a, b in zip(fused.gradients(), apart.gradients()):
        np.testing.assert_array_equal(a, b)


def test_predict_in_chunks_and_classes():
    model = small_model(dtype=np.float64)
    x, _ = data(n=25)
    whole = model.predict(x, batch_size=100)
    # the BLAS may block rows differently for other batch sizes: rounding only
    assert_close(model.predict(x, batch_size=7), whole, np.float64, factor=10)
    np.testing.assert_array_equal(model(x), whole)
    np.testing.assert_array_equal(model.predict_classes(x), np.argmax(whole, axis=1))
    assert model.predict(np.zeros((0, 6))).shape == (0, 3)
    single = nn.Sequential(nn.Linear(6, 1, seed=0), nn.Sigmoid(), backend="numpy")
    np.testing.assert_array_equal(single.predict_classes(x), (single.predict(x)[:, 0] > 0.5).astype(int))


def test_predict_returns_a_copy_but_forward_a_workspace():
    model = small_model()
    x1, _ = data(n=5, seed=1)
    x2, _ = data(n=5, seed=2)
    first = model.predict(x1)
    model.predict(x2)
    np.testing.assert_array_equal(first, model.predict(x1))
    assert model.forward(x1) is model.forward(x2)  # same batch size: same buffer


def test_workspaces_are_allocated_once_per_batch_size():
    model = small_model()
    x, y = data(n=40)
    opt = optim.SGD(model, lr=0.01)
    model.train_step(x[:16], y[:16], opt, "cross_entropy")
    layer = model.layers[-1]
    buffers = dict(layer._buffers._arrays)
    for start in (16, 0, 8):
        model.train_step(x[start:start + 16], y[start:start + 16], opt, "cross_entropy")
    assert all(layer._buffers._arrays[key] is buffers[key] for key in buffers)
    model.train_step(x[:5], y[:5], opt, "cross_entropy")  # a new size gets its own
    model.train_step(x[:16], y[:16], opt, "cross_entropy")  # and the old one is kept
    assert all(layer._buffers._arrays[key] is buffers[key] for key in buffers)


# ---------------------------------------------------------------------------------------
# Parameters and state
# ---------------------------------------------------------------------------------------


def test_parameters_in_layer_order_and_writable_in_place():
    model = small_model(dtype=np.float64)
    params = model.parameters()
    linears = [l for l in model.layers if isinstance(l, nn.Linear)]
    assert [p.shape for p in params] == [s for l in linears for s in (l.W.shape, l.b.shape)]
    assert all(p is q for p, q in zip(params, [a for l in linears for a in (l.W, l.b)]))
    assert [g.shape for g in model.gradients()] == [p.shape for p in params]
    assert [name for name, _ in model.named_parameters()] == ["0.W", "0.b", "2.W", "2.b", "4.W", "4.b"]
    x, _ = data(n=4)
    params[-2][...] = 0
    params[-1][...] = [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(model.predict(x), np.tile([1.0, 2.0, 3.0], (4, 1)))


def test_state_dict_round_trip_and_errors():
    source, target = small_model(seed=0), small_model(seed=10)
    state = source.state_dict()
    assert all(a is not b for a, b in zip(state.values(), source.parameters()))  # copies
    target.load_state_dict(state)
    x, _ = data(n=5)
    np.testing.assert_array_equal(target.predict(x), source.predict(x))
    with pytest.raises(ValueError, match=r"missing keys \['4.b'\], unexpected keys \['9.b'\]"):
        target.load_state_dict({**{k: v for k, v in state.items() if k != "4.b"}, "9.b": np.zeros(3)})
    with pytest.raises(ValueError, match=r"0.W has shape \(6x10\), the model's has \(6x11\)"):
        target.load_state_dict({**state, "0.W": np.zeros((6, 10))})


def test_clone_changes_dtype_and_keeps_weights():
    model = small_model(dtype=np.float32)
    copy = model.clone(dtype=np.float64)
    assert copy.dtype == np.float64 and repr(copy.layers) == repr(model.layers)
    for a, b in zip(copy.parameters(), model.parameters()):
        np.testing.assert_array_equal(a, b.astype(np.float64))


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------


def test_losses_call_the_fused_ops():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    loss = nn.CrossEntropyLoss()
    expected, grad = ops.softmax_cross_entropy(logits, labels, backend="numpy")
    assert loss(logits, labels, backend="numpy") == expected
    np.testing.assert_array_equal(loss.backward(), grad)
    assert loss(logits, np.eye(4)[labels], backend="numpy") == pytest.approx(expected, rel=1e-15)
    assert loss.correct(logits, labels) == np.count_nonzero(logits.argmax(1) == labels)


def test_binary_targets_of_shape_n_fit_an_n_by_1_output():
    prob = np.array([[0.9], [0.2], [0.6]])
    target = np.array([1, 0, 0])
    loss = nn.BCELoss()
    value = loss(prob, target, backend="numpy")
    assert value == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4])), rel=1e-12)
    assert loss.backward().shape == (3, 1)
    assert loss.correct(prob, target) == 2


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.MSELoss().backward()


# ---------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------


def test_dropout_in_training_and_evaluation():
    layer = nn.Dropout(0.25, seed=3)
    layer.bind("numpy", np.float64)
    x = np.ones((200, 50))
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    y = layer.forward(x, training=True)
    kept = y != 0
    assert kept.mean() == pytest.approx(0.75, abs=0.02)
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    grad = layer.backward(np.full_like(x, 2.0))
    np.testing.assert_allclose(grad, 2.0 * y)
    again = nn.Dropout(0.25, seed=3)
    again.bind("numpy", np.float64)
    np.testing.assert_array_equal(again.forward(x, training=True), y)


def test_dropout_is_on_in_fit_and_off_in_predict():
    model = nn.Sequential(nn.Linear(6, 20, seed=0), nn.ReLU(), nn.Dropout(0.5, seed=1), nn.Linear(20, 3, seed=2),
                          backend="numpy", dtype=np.float64)
    x, y = data(n=12)
    np.testing.assert_array_equal(model.predict(x), model.predict(x))
    training_loss, _ = model.compute_gradients(x, y, "cross_entropy")
    assert training_loss != model.evaluate(x, y, loss="cross_entropy")[0]


# ---------------------------------------------------------------------------------------
# fit, evaluate, callbacks
# ---------------------------------------------------------------------------------------


def test_fit_history_and_validation():
    model = small_model()
    x, y = data(n=60)
    history = model.fit(x, y, epochs=3, batch_size=16, optimizer=optim.Adam(0.01), seed=0,
                        validation_data=data(n=20, seed=1), verbose=False)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in history.history.values()) and history.epochs == [1, 2, 3]
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert (history.history["val_loss"][-1], history.history["val_accuracy"][-1]) == \
        model.evaluate(*data(n=20, seed=1))


def test_fit_is_reproducible_with_a_seed():
    x, y = data(n=50)
    histories = [small_model().fit(x, y, epochs=2, batch_size=8, optimizer=optim.SGD(0.1), seed=5, verbose=False)
                 for _ in range(2)]
    assert histories[0].history == histories[1].history


def test_regression_fit_has_no_accuracy():
    """The source material's polynomial y = w1 x^2 + w2 x + w3, fitted by gradient descent on MSE."""
    x = np.linspace(-1, 1, 40)
    features = np.stack([x**2, x], axis=1)
    y = (3 * x**2 - 2 * x + 0.5).reshape(-1, 1)
    model = nn.Sequential(nn.Linear(2, 1, init=0.0), backend="numpy", dtype=np.float64)
    history = model.fit(features, y, epochs=300, batch_size=40, optimizer=optim.SGD(0.5), loss="mse",
                        verbose=False)
    assert set(history.history) == {"loss"}
    loss, accuracy = model.evaluate(features, y)
    assert accuracy is None and loss < 1e-6
    np.testing.assert_allclose(model.layers[0].W[:, 0], [3, -2], atol=1e-3)
    np.testing.assert_allclose(model.layers[0].b, [0.5], atol=1e-3)


def test_synthetic_rule_learned_by_linear_and_sigmoid():
    """5-dim x is positive when x[0] > x[4]: Linear(5, 1) + Sigmoid with binary cross entropy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 5))
    y = (x[:, 0] > x[:, 4]).astype(np.float64)
    model = nn.Sequential(nn.Linear(5, 1, seed=0), nn.Sigmoid(), backend="numpy")
    history = model.fit(x, y, epochs=30, batch_size=20, optimizer=optim.Adam(0.05), loss="bce", seed=0,
                        verbose=False)
    assert history.history["accuracy"][-1] > 0.95
    assert np.mean(model.predict_classes(x) == y) > 0.95


def test_verbose_prints_one_line_per_epoch(capsys):
    model = small_model()
    model.fit(*data(n=20), epochs=2, batch_size=10, optimizer=optim.SGD(0.01))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert re.match(r"epoch 1/2  loss \d\.\d{4}  accuracy \d\.\d{4}  \(\d+\.\d s\)", lines[0])


class Recorder(nn.Callback):
    def __init__(self, stop_after=None):
        self.calls = []
        self.stop_after = stop_after
        self.model = None

    def on_train_begin(self, info):
        self.calls.append(("train_begin", info))

    def on_epoch_begin(self, epoch, steps):
        self.calls.append(("epoch_begin", epoch, steps))

    def on_batch_end(self, epoch, step, steps, logs):
        self.calls.append(("batch_end", epoch, step, steps, sorted(logs)))

    def on_epoch_end(self, epoch, logs):
        self.calls.append(("epoch_end", epoch, sorted(logs)))
        if epoch == self.stop_after:
            self.model.stop_training = True

    def on_train_end(self, history):
        self.calls.append(("train_end", len(history.epochs)))


def test_callbacks_see_every_epoch_and_batch():
    model = small_model()
    recorder = Recorder()
    model.fit(*data(n=25), epochs=2, batch_size=10, optimizer=optim.SGD(0.01), validation_data=data(n=5),
              callbacks=[recorder], verbose=False)
    batch = lambda e, s: ("batch_end", e, s, 3, ["accuracy", "loss"])
    epoch_end = lambda e: ("epoch_end", e, ["accuracy", "loss", "seconds", "val_accuracy", "val_loss"])
    assert recorder.calls == [
        ("train_begin", {"epochs": 2, "steps": 3, "samples": 25, "validation": True}),
        ("epoch_begin", 1, 3), batch(1, 1), batch(1, 2), batch(1, 3), epoch_end(1),
        ("epoch_begin", 2, 3), batch(2, 1), batch(2, 2), batch(2, 3), epoch_end(2),
        ("train_end", 2),
    ]


def test_a_callback_can_stop_training():
    model = small_model()
    recorder = Recorder(stop_after=2)
    recorder.model = model
    history = model.fit(*data(n=20), epochs=10, batch_size=10, optimizer=optim.SGD(0.01), callbacks=[recorder],
                        verbose=False)
    assert history.epochs == [1, 2]


class _NanWeightAfterFirstStep(nn.Callback):
    """Makes the training diverge from the second step on (a NaN weight): bad input is
    refused before the first step, so a non-finite loss comes from training."""

    def on_batch_end(self, epoch, step, steps, logs):
        if (epoch, step) == (1, 1):
            self.model.parameters()[0][0, 0] = np.nan


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's warnings about the NaNs
def test_a_non_finite_loss_stops_training_naming_epoch_and_step():
    model = small_model(dtype=np.float64)
    x, y = data(n=40)
    with pytest.raises(nn.NonFiniteLossError, match=r"loss became nan at epoch 1, step 2 of 3") as info:
        model.fit(x, y, epochs=2, batch_size=16, optimizer=optim.SGD(0.1), shuffle=False, verbose=False,
                  callbacks=[_NanWeightAfterFirstStep()])
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, ArithmeticError)
    history = small_model().fit(x, y, epochs=2, batch_size=16, optimizer=optim.SGD(0.1), shuffle=False,
                                verbose=False, on_nonfinite="ignore", callbacks=[_NanWeightAfterFirstStep()])
    assert len(history.epochs) == 2 and math.isnan(history.history["loss"][-1])


@pytest.mark.parametrize("backend", [b for b in ("numpy", "cython", "numba") if b in nnkern.available_backends()])
def test_bad_data_is_refused_before_the_first_step_naming_its_row(backend):
    x, y = data(n=300)
    model = small_model(backend=backend)
    before = [p.copy() for p in model.parameters()]
    bad_x = x.copy()
    bad_x[200, 4] = np.inf
    with pytest.raises(ValueError, match=r"fit: x has inf at row 200, column 4; the inputs must be finite"):
        model.fit(bad_x, y, epochs=1, batch_size=16, optimizer=optim.SGD(0.1), verbose=False)
    bad_y = y.copy()
    bad_y[200] = 3
    with pytest.raises(ValueError, match=r"fit: label 3 at row 200 of y is out of range for 3 classes \(0\.\.2\)"):
        model.fit(x, bad_y, epochs=1, batch_size=16, optimizer=optim.SGD(0.1), verbose=False)
    x_val, y_val = x[:10].copy(), y[:10].copy()
    y_val[7] = -1
    with pytest.raises(ValueError, match=r"fit: label -1 at row 7 of y of validation_data is out of range"):
        model.fit(x, y, epochs=1, optimizer="sgd", verbose=False, validation_data=(x_val, y_val))
    x_val[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"fit: x of validation_data has nan at row 3, column 0"):
        model.fit(x, y, epochs=1, optimizer="sgd", verbose=False, validation_data=(x_val, y[:10]))
    assert all(np.array_equal(a, b) for a, b in zip(before, model.parameters()))  # no step was taken


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_diverging_learning_rate_is_reported():
    model = nn.Sequential(nn.Linear(6, 1, seed=0), backend="numpy", dtype=np.float64)
    x, _ = data(n=32)
    with pytest.raises(nn.NonFiniteLossError, match=r"at epoch \d+, step \d+ of 4"):
        model.fit(x, x[:, :1] * 1e3, epochs=100, batch_size=8, optimizer=optim.SGD(10.0), loss="mse", verbose=False)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"epochs": -1}, ValueError, "epochs must be an integer >= 0"),
    ({"on_nonfinite": "warn"}, ValueError, "on_nonfinite must be 'raise' or 'ignore'"),
    ({"optimizer": 0.1}, TypeError, "optimizer must be an nnkern.optim optimizer"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
    ({"loss": "hinge"}, ValueError, "unknown loss"),
])
def test_fit_argument_errors(kwargs, error, message):
    arguments = {"epochs": 1, "batch_size": 4, "optimizer": optim.SGD(0.1), "verbose": False, **kwargs}
    with pytest.raises(error, match=message):
        small_model().fit(*data(n=8), **arguments)


def test_fit_and_evaluate_in_float64_with_one_hot_targets():
    model = small_model(dtype=np.float64)
    x, y = data(n=30)
    history = model.fit(x, np.eye(3)[y], epochs=2, batch_size=10, optimizer="adam", verbose=False)
    assert model.parameters()[0].dtype == np.float64
    loss, accuracy = model.evaluate(x, np.eye(3)[y])
    assert (loss, accuracy) == pytest.approx(model.evaluate(x, y), rel=1e-12)
    assert 0 <= history.history["accuracy"][-1] <= 1


# ---------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_and_load_give_identical_predictions(tmp_path, any_backend, dtype):
    model = every_layer_model(any_backend, dtype)
    model.fit(*data(n=20, features=13, classes=4), epochs=1, batch_size=8, optimizer=optim.SGD(0.1),
              verbose=False)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = nn.load(path, backend=any_backend)
    assert repr(loaded) == repr(model) and loaded.dtype == dtype
    x, _ = data(n=9, features=13)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert os.listdir(tmp_path) == ["model.npz"]  # exactly that name, no temporary left
    (tmp_path / "plain").write_bytes(b"")
    assert os.stat(path).st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777


def test_save_replaces_atomically_and_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "weights"
    first = small_model(seed=0)
    first.save(path)
    small_model(seed=5).save(path)  # replaces
    x, _ = data(n=3)
    np.testing.assert_array_equal(nn.load(path, backend="numpy").predict(x), small_model(seed=5).predict(x))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        first.save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["weights"]
    np.testing.assert_array_equal(nn.load(path, backend="numpy").predict(x), small_model(seed=5).predict(x))


@pytest.mark.parametrize("where, error, message", [
    ("missing/model.npz", FileNotFoundError, "save {path}: the folder {tmp}/missing does not exist"),
    (".", IsADirectoryError, "save {path}: is a folder"),
])
def test_save_to_a_bad_path_names_it(tmp_path, where, error, message):
    path = str(tmp_path / where)
    with pytest.raises(error) as exc:
        small_model().save(path)
    assert message.format(path=path, tmp=tmp_path) in str(exc.value)


def test_loading_a_truncated_or_foreign_file_names_it(tmp_path):
    path = tmp_path / "model.npz"
    small_model().save(path)
    content = path.read_bytes()
    cases = {
        "truncated.npz": content[: len(content) // 2],
        "empty.npz": b"",
        "text.npz": b"hello, not a model\n",
    }
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    np.save(tmp_path / "array.npy", np.zeros(3))
    for name in [*cases, "foreign.npz", "array.npy"]:
        with pytest.raises(nn.ModelFileError, match=re.escape(str(tmp_path / name))):
            nn.load(tmp_path / name)
    # files of pickled Python objects: said so, without suggesting allow_pickle
    np.save(tmp_path / "objects.npy", np.array([{"w": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "objects.npz", __nnkern__=np.array('{"format": "nnkern.Sequential", "version": 1}'),
             weights=np.array([{"w": 1}], dtype=object))
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(small_model().state_dict()))
    for name in ("objects.npy", "objects.npz", "model.pkl"):
        with pytest.raises(nn.ModelFileError) as info:
            nn.load(tmp_path / name)
        assert "not an nnkern model file (it holds pickled Python objects" in str(info.value)
        assert "allow_pickle" not in str(info.value)
    with pytest.raises(nn.ModelFileError, match=r"text.npz: not a readable nnkern model file \(neither an .npz") as info:
        nn.load(tmp_path / "text.npz")
    assert "allow_pickle" not in str(info.value)
    with pytest.raises(FileNotFoundError):
        nn.load(tmp_path / "missing.npz")


# ---------------------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_subset():
    from nnkern.data import load_mnist

    (x_train, y_train), (x_test, y_test) = load_mnist()
    return x_train[:6000], y_train[:6000], x_test[:1000], y_test[:1000]


@pytest.mark.slow
def test_fit_on_an_mnist_subset_reaches_90_percent(any_backend, mnist_subset):
    """784-64-10 ReLU, Adam, 3 epochs on the first 6000 training images: at least 90% of
    the first 1000 test images right (measured 91.4% on every backend; ~1.5 s on a quiet
    2-core machine)."""
    x_train, y_train, x_test, y_test = mnist_subset
    model = nn.Sequential(nn.Linear(784, 64, seed=0), nn.ReLU(), nn.Linear(64, 10, seed=1), backend=any_backend)
    history = model.fit(x_train, y_train, epochs=3, batch_size=50, optimizer=optim.Adam(2e-3), seed=0,
                        validation_data=(x_test, y_test), verbose=False)
    assert history.history["accuracy"][-1] > history.history["accuracy"][0]
    loss, accuracy = model.evaluate(x_test, y_test)
    assert accuracy >= 0.90, f"test accuracy {accuracy:.3f} after {history.history}"
    assert accuracy == history.history["val_accuracy"][-1]


def test_layers_work_on_their_own():
    """A layer outside a Sequential binds itself to the current backend and its input's dtype."""
    rng = np.random.default_rng(0)
    x, grad_out = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    with nnkern.use_backend("numpy"):
        linear = nn.Linear(3, 2, seed=0)
        y = linear.forward(x)
        dx = linear.backward(grad_out)
        assert linear.backend == "numpy" and linear.dtype == np.float64
        relu = nn.ReLU()
        r = relu.forward(y)
        dr = relu.backward(grad_out)
    np.testing.assert_allclose(y, x @ linear.W + linear.b, rtol=1e-14)
    np.testing.assert_allclose(linear.dW, x.T @ grad_out, rtol=1e-14)
    np.testing.assert_allclose(linear.db, grad_out.sum(axis=0), rtol=1e-14)
    np.testing.assert_allclose(dx, grad_out @ linear.W.T, rtol=1e-14)
    np.testing.assert_array_equal(r, np.maximum(y, 0))
    np.testing.assert_array_equal(dr, grad_out * (y > 0))


def test_any_object_with_some_hooks_is_a_callback():
    class EpochsOnly:
        def __init__(self):
            self.epochs = []

        def on_epoch_end(self, epoch, logs):
            self.epochs.append((epoch, round(logs["loss"], 12)))

    watcher = EpochsOnly()
    history = small_model().fit(*data(n=20), epochs=2, batch_size=10, optimizer=optim.SGD(0.01),
                                callbacks=[watcher], verbose=False)
    assert watcher.epochs == [(1, round(history.history["loss"][0], 12)), (2, round(history.history["loss"][1], 12))]
