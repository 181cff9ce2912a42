"""Training and evaluation modes as torch.nn.Module's: train()/eval(), model(x) in the mode
set, fit trains in training mode and restores the mode it found, predict and evaluate in
evaluation mode, and backward after an evaluation-mode forward."""

import numpy as np
import pytest

from nnkern import nn, optim


def _model(backend="numpy"):
    return nn.Sequential(nn.Linear(4, 16, seed=0), nn.ReLU(), nn.Dropout(0.5, seed=1), nn.Linear(16, 3, seed=2),
                         backend=backend, dtype=np.float64)


def _x(n=32):
    return np.random.default_rng(0).standard_normal((n, 4))


def test_a_new_model_is_in_training_mode_and_eval_switches():
    model = _model()
    assert model.training is True
    assert model.eval() is model and model.training is False
    assert model.train() is model and model.training is True
    model.train(False)
    assert model.training is False
    with pytest.raises(TypeError, match="mode must be True or False"):
        model.train("no")


def test_model_call_computes_in_the_current_mode():
    model, x = _model(), _x()
    expected = model.predict(x)
    dropped = model(x).copy()
    assert not np.allclose(dropped, expected)  # dropout in training mode
    model.eval()
    np.testing.assert_array_equal(model(x), expected)
    np.testing.assert_array_equal(model.forward(x), expected)
    np.testing.assert_array_equal(model.forward(x, training=False), expected)


def test_predict_and_evaluate_use_evaluation_mode_whatever_the_mode():
    model, x = _model(), _x()
    y = np.arange(len(x)) % 3
    model.train()
    first, loss = model.predict(x), model.evaluate(x, y)
    np.testing.assert_array_equal(model.predict(x), first)
    assert model.evaluate(x, y) == loss
    assert model.training is True


@pytest.mark.parametrize("mode", [True, False])
def test_fit_trains_in_training_mode_and_restores_the_mode(mode):
    model, x = _model(), _x()
    seen = []

    class Spy(nn.Callback):
        def on_batch_end(self, epoch, step, steps, logs):
            seen.append(self.model.training)

    model.train(mode)
    model.fit(x, np.arange(len(x)) % 3, epochs=1, batch_size=8, optimizer=optim.SGD(0.1), verbose=False,
              callbacks=[Spy()])
    assert seen and all(seen)
    assert model.training is mode


def test_backward_after_an_evaluation_forward_differentiates_what_it_computed():
    x = _x(8)
    y = np.arange(8) % 3
    model = _model().eval()
    loss = nn.CrossEntropyLoss()
    loss.forward(model(x), y, backend="numpy")
    model.backward(loss.backward())
    grads = [g.copy() for g in model.gradients()]
    plain = nn.Sequential(nn.Linear(4, 16, seed=0), nn.ReLU(), nn.Linear(16, 3, seed=2), backend="numpy",
                          dtype=np.float64)  # the same network without the dropout layer
    plain.compute_gradients(x, y, "cross_entropy")
    for got, expected in zip(grads, plain.gradients()):
        np.testing.assert_allclose(got, expected, rtol=1e-13)
