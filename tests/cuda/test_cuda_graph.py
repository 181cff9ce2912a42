"""A Graph model on the "cuda" backend: merges (Add, Concatenate), gradient sums and
weighted losses run on device arrays, and training matches the same graph on the NumPy
reference. Tiny shapes: the simulator runs every CUDA thread as a Python thread."""

from __future__ import annotations

import numpy as np

from nnkern import nn, optim


def graph(backend):
    """Two inputs; a residual block; two heads, one of them also read by the other."""
    a, b = nn.Input(3, name="a"), nn.Input(2, name="b")
    h = nn.Tanh()(nn.Linear(5, 4, seed=0)(nn.Concatenate()(a, b)))
    h = nn.Add()(h, nn.Sigmoid()(nn.Linear(4, 4, seed=1)(h)))
    values = nn.Linear(4, 2, seed=2)(h, name="values")
    classes = nn.Linear(2, 3, seed=3)(values, name="classes")
    return nn.Graph([a, b], [classes, values], backend=backend, dtype=np.float64)


def dataset():
    rng = np.random.default_rng(0)
    return ([rng.standard_normal((8, 3)), rng.standard_normal((8, 2))],
            [rng.integers(0, 3, 8), rng.standard_normal((8, 2))])


def test_fit_on_the_device_matches_the_reference():
    x, y = dataset()
    on_device, reference = graph("cuda"), graph("numpy")
    assert all(not isinstance(p, np.ndarray) for p in on_device.parameters())
    histories = [model.fit(x, y, epochs=1, batch_size=4, optimizer=optim.Adam(0.05), shuffle=False,
                           loss=["cross_entropy", "mse"], loss_weights=[1.0, 0.5],
                           validation_data=(x, y), verbose=False)
                 for model in (on_device, reference)]
    for key, values in histories[1].history.items():
        np.testing.assert_allclose(histories[0].history[key], values, rtol=1e-12, err_msg=key)
    for name, values in reference.state_dict().items():
        np.testing.assert_allclose(on_device.state_dict()[name], values, rtol=1e-12, atol=1e-14, err_msg=name)
    for got, want in zip(on_device.predict(x), reference.predict(x)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_save_and_load_on_the_device(tmp_path):
    model = graph("cuda")
    path = tmp_path / "graph.npz"
    model.save(path)
    x, _ = dataset()
    for got, want in zip(nn.load(path, backend="cuda").predict(x), model.predict(x)):
        np.testing.assert_array_equal(got, want)
