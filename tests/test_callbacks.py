"""nnkern.callbacks: early stopping and best-weights restore, by their hooks and in fit."""

from __future__ import annotations

import numpy as np
import pytest

from nnkern import callbacks, nn, optim


def _data(n=120, width=10, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, width)), rng.integers(0, classes, n)


def _model():
    return nn.Sequential(nn.Linear(10, 8, seed=1), nn.Tanh(), nn.Linear(8, 3, seed=2), backend="numpy",
                         dtype=np.float64)


def _feed(callback, model, values, key="val_loss"):
    """Run the callback's hooks over epochs whose monitored log takes ``values``; returns
    the epochs fit would have run (it stops after an epoch that sets stop_training)."""
    callback.set_model(model)
    model.stop_training = False
    callback.on_train_begin({"epochs": len(values), "steps": 1, "samples": 1, "validation": True})
    ran = 0
    for epoch, value in enumerate(values, 1):
        ran = epoch
        callback.on_epoch_end(epoch, {"loss": 1.0, key: value, "seconds": 0.0})
        if model.stop_training:
            break
    callback.on_train_end(nn.History())
    return ran


def test_early_stopping_waits_patience_epochs_without_improvement():
    stopper = callbacks.EarlyStopping(patience=2)
    assert _feed(stopper, _model(), [1.0, 0.9, 0.95, 0.91, 0.5]) == 4
    assert (stopper.best, stopper.best_epoch, stopper.stopped_epoch) == (0.9, 2, 4)


def test_min_delta_and_accuracy_mode():
    stopper = callbacks.EarlyStopping(patience=1, min_delta=0.05)
    assert _feed(stopper, _model(), [1.0, 0.97, 0.9]) == 2  # 0.97 is not 0.05 better
    stopper = callbacks.EarlyStopping(monitor="val_accuracy", patience=1)  # "auto": higher is better
    assert stopper._monitor.mode == "max"
    assert _feed(stopper, _model(), [0.5, 0.6, 0.7, 0.65], key="val_accuracy") == 4
    assert stopper.best == 0.7


def test_nan_is_never_an_improvement():
    stopper = callbacks.EarlyStopping(patience=1)
    assert _feed(stopper, _model(), [1.0, float("nan"), 0.5]) == 2


def test_best_weights_are_restored_at_the_end():
    model = _model()
    keeper = callbacks.BestWeights()
    keeper.set_model(model)
    keeper.on_train_begin({"validation": True})
    keeper.on_epoch_end(1, {"val_loss": 0.8})
    best = [p.copy() for p in model.parameters()]
    for p in model.parameters():
        p[...] += 1.0
    keeper.on_epoch_end(2, {"val_loss": 0.9})
    keeper.on_train_end(nn.History())
    for got, want in zip(model.parameters(), best):
        np.testing.assert_array_equal(got, want)
    assert keeper.best_epoch == 1


class WeightsPerEpoch(nn.Callback):
    def __init__(self):
        self.weights = {}

    def on_epoch_end(self, epoch, logs):
        self.weights[epoch] = [p.copy() for p in self.model.parameters()]


def test_fit_stops_early_and_keeps_the_best_epoch():
    """A learning rate far too large: the validation loss gets worse after the first epochs,
    training stops, and the model ends with the weights of the best epoch."""
    x, y = _data()
    x_val, y_val = _data(seed=1)
    model = _model()
    stopper = callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    recorder = WeightsPerEpoch()
    history = model.fit(x, y, epochs=30, batch_size=8, optimizer=optim.SGD(0.5, momentum=0.9), seed=0,
                        validation_data=(x_val, y_val), callbacks=[recorder, stopper], verbose=False)
    val_losses = history.history["val_loss"]
    assert stopper.stopped_epoch == len(val_losses) < 30
    best_epoch = int(np.argmin(val_losses)) + 1
    assert stopper.best_epoch == best_epoch and stopper.best == min(val_losses)
    for got, want in zip(model.parameters(), recorder.weights[best_epoch]):
        np.testing.assert_array_equal(got, want)
    assert model.evaluate(x_val, y_val)[0] == pytest.approx(min(val_losses), rel=1e-12)


def test_monitoring_validation_logs_without_validation_data_fails_before_training():
    x, y = _data()
    model = _model()
    before = [p.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match="monitors 'val_loss', which fit reports only with validation_data"):
        model.fit(x, y, epochs=3, optimizer=optim.SGD(0.1), callbacks=[callbacks.EarlyStopping()], verbose=False)
    for got, want in zip(model.parameters(), before):
        np.testing.assert_array_equal(got, want)


def test_a_log_fit_never_reports_is_a_clear_error():
    x, y = _data()
    with pytest.raises(ValueError, match="monitors 'f1'; fit reports loss, accuracy, val_loss, val_accuracy"):
        _model().fit(x, y, epochs=1, optimizer=optim.SGD(0.1), callbacks=[callbacks.BestWeights("f1")],
                     verbose=False)
    # accuracy is reported for classification losses only, which the epoch's end tells
    with pytest.raises(ValueError, match="monitors 'accuracy', but fit reports only loss"):
        _model().fit(x, np.eye(3)[y], epochs=1, loss="mse", optimizer=optim.SGD(0.1),
                     callbacks=[callbacks.BestWeights("accuracy")], verbose=False)


@pytest.mark.parametrize("make, message", [
    (lambda: callbacks.EarlyStopping(patience=0), "patience must be an integer >= 1"),
    (lambda: callbacks.EarlyStopping(mode="lower"), "mode must be 'auto', 'min' or 'max'"),
    (lambda: callbacks.BestWeights(min_delta=-1), "min_delta must be a finite number >= 0"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
