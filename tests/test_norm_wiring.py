"""The normalisation layers and gradient clipping as parts of the network API: exported by
nnkern.nn and nnkern.optim, running statistics saved with the model, ``fit(max_grad_norm=)``
equal to a hand-written loop that clips, and the reason fit gives for the engine it uses."""

import numpy as np
import pytest

from nnkern import nn, optim
from nnkern.training import select_step


def _bn_model(backend="numpy"):
    return nn.Sequential(nn.Linear(5, 8, seed=0), nn.BatchNorm1d(8), nn.ReLU(), nn.LayerNorm(8),
                         nn.Linear(8, 3, seed=1), backend=backend, dtype=np.float64)


def _data(n=40):
    rng = np.random.default_rng(2)
    return rng.standard_normal((n, 5)) * 3 + 1, rng.integers(0, 3, n)


@pytest.mark.parametrize("backend", ["numpy", "cython", "numba"])
def test_running_statistics_are_saved_and_loaded(tmp_path, backend):
    x, y = _data()
    model = _bn_model(backend)
    model.fit(x, y, epochs=2, batch_size=8, optimizer=optim.SGD(0.05), verbose=False)
    state = model.state_dict()
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(state)
    assert int(state["1.num_batches_tracked"]) == 10 and state["1.num_batches_tracked"].dtype.kind == "i"
    assert not np.allclose(state["1.running_mean"], 0)
    model.save(tmp_path / "bn.npz")
    again = nn.load(tmp_path / "bn.npz", backend=backend)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    assert set(again.state_dict()) == set(state)
    assert len(again.parameters()) == len(model.parameters()) == 8  # buffers are no parameters


def test_fit_with_max_grad_norm_is_a_loop_that_clips():
    x, y = _data()
    model = _bn_model()
    history = model.fit(x, y, epochs=2, batch_size=8, optimizer=optim.SGD(0.5, momentum=0.9), shuffle=False,
                        verbose=False, max_grad_norm=0.1)
    by_hand = _bn_model()
    opt = optim.SGD(by_hand, lr=0.5, momentum=0.9)
    losses = []
    for _ in range(2):
        for start in range(0, len(x), 8):
            loss, _ = by_hand.compute_gradients(x[start:start + 8], y[start:start + 8], "cross_entropy")
            norm = optim.clip_grad_norm_(by_hand, 0.1)
            assert norm > 0.1  # the clipping did something
            opt.step()
            losses.append(loss)
    np.testing.assert_allclose(history.history["loss"], np.mean(np.reshape(losses, (2, -1)), axis=1), rtol=1e-12)
    for name, value in by_hand.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[name], value, rtol=1e-12, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_the_step_says_why_it_trains_layer_by_layer(backend):
    x, y = _data()
    model = _bn_model(backend)
    opt = optim.SGD(0.1)
    opt.bind(model.parameters(), model.gradients(), backend=backend)
    step = select_step(model, opt, model._objective("cross_entropy"), [x], [y], 8)
    assert step.engine == "layer by layer" and "BatchNorm1d" in step.fallback_reason
    plain = nn.Sequential(nn.Linear(5, 3, seed=0), backend=backend)
    opt2 = optim.SGD(0.1)
    opt2.bind(plain.parameters(), plain.gradients(), backend=backend)
    clipped = select_step(plain, opt2, plain._objective("cross_entropy"), [x], [y], 8, max_grad_norm=1.0)
    assert "clipping" in clipped.fallback_reason


def test_fit_verbose_prints_the_reason(capsys):
    x, y = _data()
    _bn_model("cython").fit(x, y, epochs=1, batch_size=8, optimizer=optim.SGD(0.1), verbose=True)
    assert "training layer by layer, not on the cython fused engine: layer 1 BatchNorm1d" in capsys.readouterr().out
