"""Sample weights: the weighted mean loss on the layer path (every loss), in the fused CPU
steps, and through fit, against two oracles: integer weights equal to repeating the rows,
and the fused steps equal to the layer path."""

import numpy as np
import pytest

from nnkern import nn, optim
from nnkern.data import DataLoader
from nnkern.training import select_step

from _backends import FAST_CPU_BACKENDS


def _model(backend, dtype=np.float64, seed=0):
    return nn.Sequential(nn.Linear(5, 7, seed=seed), nn.Tanh(), nn.Linear(7, 3, seed=seed + 1),
                         backend=backend, dtype=dtype)


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5)), rng.integers(0, 3, n)


@pytest.mark.parametrize("loss, target", [
    (nn.CrossEntropyLoss(), "labels"), (nn.CrossEntropyLoss(), "onehot"),
    (nn.MSELoss(), "float"), (nn.MSELoss("half_sum"), "float"), (nn.BCELoss(), "prob"),
])
def test_integer_weights_equal_repeated_rows(loss, target):
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((6, 3))
    if target == "labels":
        t = rng.integers(0, 3, 6)
    elif target == "onehot":
        t = np.eye(3)[rng.integers(0, 3, 6)]
    elif target == "prob":
        pred = 1 / (1 + np.exp(-pred))
        t = (rng.random((6, 3)) > 0.5).astype(float)
    else:
        t = rng.standard_normal((6, 3))
    weights = np.array([1, 0, 2, 3, 1, 1])
    repeated = np.repeat(np.arange(6), weights)
    plain = type(loss)(**loss.config())
    expected = plain.forward(pred[repeated], t[repeated], backend="numpy")
    expected_grad = plain.backward().copy()
    got = loss.forward(pred, t, backend="numpy", sample_weight=weights)
    grad = loss.backward()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # a repeated row's gradient appears once per copy: their sum is the weighted row's
    summed = np.zeros_like(grad)
    np.add.at(summed, repeated, expected_grad)
    np.testing.assert_allclose(grad, summed, rtol=1e-10, atol=1e-14)


def test_all_ones_weights_change_nothing():
    x, y = _data()
    histories, states = [], []
    for weights in (None, np.ones(len(x))):
        model = _model("numpy")
        histories.append(model.fit(x, y, epochs=2, batch_size=5, optimizer=optim.SGD(0.1, momentum=0.9), seed=1,
                                   verbose=False, sample_weight=weights).history)
        states.append(model.state_dict())
    np.testing.assert_allclose(histories[0]["loss"], histories[1]["loss"], rtol=1e-12)
    for name in states[0]:
        np.testing.assert_allclose(states[0][name], states[1][name], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
@pytest.mark.parametrize("sparse", ["0", "1"])
def test_fused_steps_take_weights_as_the_layer_path(backend, sparse, monkeypatch):
    monkeypatch.setenv("NNKERN_SPARSE_INPUT", sparse)
    x, y = _data(n=37)
    x[x < 0.3] = 0.0  # zeros for the sparse first layer to skip
    weights = np.random.default_rng(5).random(len(x)) * 3
    weights[[2, 11]] = 0.0
    runs = []
    for fused in (True, False):
        model = _model(backend)
        opt = optim.Adam(0.01, weight_decay=1e-3)
        history = model.fit(x, y, epochs=3, batch_size=8, optimizer=opt, seed=2, verbose=False,
                            fused=fused, sample_weight=weights)
        runs.append((history.history, model.state_dict()))
    (fused_logs, fused_state), (layer_logs, layer_state) = runs
    np.testing.assert_allclose(fused_logs["loss"], layer_logs["loss"], rtol=1e-9)
    assert fused_logs["accuracy"] == layer_logs["accuracy"]
    for name in fused_state:
        np.testing.assert_allclose(fused_state[name], layer_state[name], rtol=1e-8, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_select_step_uses_the_fused_engine_with_weights(backend):
    x, y = _data()
    model = _model(backend)
    opt = optim.SGD(0.1)
    opt.bind(model.parameters(), model.gradients(), backend=backend)
    objective = model._objective("cross_entropy")
    step = select_step(model, opt, objective, [x], [y], 8)
    assert step.fallback_reason is None and "fused" in step.engine


def test_a_batch_of_zero_weights_takes_no_step():
    x, y = _data(n=8)
    weights = np.r_[np.zeros(4), np.ones(4)]
    assert [len(batch) for batch in DataLoader(x, y, 4, sample_weight=weights)] == [3, 3]
    model = _model("numpy")
    opt = optim.SGD(0.5)
    history = model.fit(x, y, epochs=1, batch_size=4, optimizer=opt, verbose=False, sample_weight=weights,
                        shuffle=False)
    assert opt.t == 1  # the first batch's weights are all zero: one step, on the second
    reference = _model("numpy")
    expected = reference.fit(x[4:], y[4:], epochs=1, batch_size=4, optimizer=optim.SGD(0.5), verbose=False)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-12)
    for name, value in reference.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[name], value, rtol=1e-12)


@pytest.mark.parametrize("weights, message", [
    (np.ones(3), r"shape \(8,\)"), (np.r_[np.ones(7), -1.0], ">= 0"), (np.r_[np.ones(7), np.nan], "finite"),
    (np.zeros(8), "zero for every sample"),
])
def test_bad_sample_weights_are_refused_before_training(weights, message):
    x, y = _data(n=8)
    with pytest.raises(ValueError, match=message):
        _model("numpy").fit(x, y, epochs=1, batch_size=4, optimizer=optim.SGD(0.1), verbose=False,
                            sample_weight=weights)
