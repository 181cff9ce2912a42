"""A Sequential model on the "cuda" backend: parameters, workspaces and optimizer state
live on the device, and training matches the same model on the NumPy reference.

Runs under Numba's CUDA simulator (or on a GPU): see conftest.py. Shapes are tiny because
the simulator runs every CUDA thread as a Python thread.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnkern import nn, optim


def two_layer_model(backend):
    return nn.Sequential(nn.Linear(6, 5, seed=0), nn.Sigmoid(), nn.Linear(5, 3, seed=1), backend=backend,
                         dtype=np.float64)


def dataset():
    rng = np.random.default_rng(0)
    return rng.standard_normal((16, 6)), rng.integers(0, 3, 16)


@pytest.mark.parametrize("make_optimizer", [
    lambda: optim.SGD(0.5, momentum=0.9, weight_decay=0.01),
    lambda: optim.Adam(0.05),
], ids=["sgd_momentum_weight_decay", "adam"])
def test_fit_on_the_device_matches_the_reference(make_optimizer):
    x, y = dataset()
    on_device, reference = two_layer_model("cuda"), two_layer_model("numpy")
    assert all(not isinstance(p, np.ndarray) for p in on_device.parameters())  # device arrays
    histories = [model.fit(x, y, epochs=1, batch_size=8, optimizer=make_optimizer(), shuffle=False,
                           validation_data=(x[:8], y[:8]), verbose=False)
                 for model in (on_device, reference)]
    for key, values in histories[1].history.items():
        np.testing.assert_allclose(histories[0].history[key], values, rtol=1e-12, err_msg=key)
    device_state, host_state = on_device.state_dict(), reference.state_dict()
    assert all(isinstance(a, np.ndarray) for a in device_state.values())
    for name, values in host_state.items():
        np.testing.assert_allclose(device_state[name], values, rtol=1e-12, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(on_device.predict(x), reference.predict(x), rtol=1e-12, atol=1e-14)


def test_save_and_load_on_the_device(tmp_path):
    model = two_layer_model("cuda")
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = nn.load(path, backend="cuda")
    x, _ = dataset()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    np.testing.assert_array_equal(nn.load(path, backend="numpy").predict(x), model.clone(backend="numpy").predict(x))
