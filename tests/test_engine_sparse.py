"""The fused steps' sparse-input first layer (kernels/cython/nnk_sparse_impl.h, and its
Numba counterpart in backends/numba_train.py): on
inputs that are mostly zeros it gives the numbers of the layer-by-layer path, for every
thread count, dtype, optimizer and activation kind, first-layer widths that leave partial
vectors and several register chunks, empty rows and empty columns; and the choice between
it and the dense products follows the data (or NNKERN_SPARSE_INPUT)."""

from __future__ import annotations

import numpy as np
import pytest

import nnkern
from nnkern import engine, nn, optim

BACKENDS = [b for b in ("cython", "numba") if b in nnkern.available_backends()]
pytestmark = pytest.mark.skipif(not BACKENDS, reason="needs the cython or the numba backend")


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def sparse_path(monkeypatch):
    """The fused steps built in the test take the sparse-input path, whatever the data."""
    monkeypatch.setenv("NNKERN_SPARSE_INPUT", "1")


def _sparse_data(rows, width, density, classes, seed=0):
    """Inputs with about `density` of their entries nonzero, one row and one column all zero."""
    rng = np.random.default_rng(seed)
    x = rng.random((rows, width)) * (rng.random((rows, width)) < density)
    x[3] = 0.0
    x[:, width // 2] = 0.0
    return x, rng.integers(0, classes, rows)


def _train(x, y, widths, act, make_optimizer, dtype, fused, batch=64, backend="cython"):
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b, seed=i))
        if i < len(widths) - 2:
            layers.append(act())
    model = nn.Sequential(*layers, backend=backend, dtype=dtype)
    history = model.fit(x.astype(dtype), y, epochs=2, batch_size=batch, optimizer=make_optimizer(), seed=3,
                        verbose=False, fused=fused)
    return history.history["loss"], [p.copy() for p in model.parameters()]


def _assert_same(got, want, dtype):
    tol = 2e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got[0], want[0], rtol=tol)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden", [1, 5, 16, 44, 97, 300], ids=lambda n: f"hidden{n}")
def test_sparse_first_layer_equals_layer_by_layer(sparse_path, backend, threads, dtype, hidden):
    # 203 rows: 3 batches of 64, then 11; 150 inputs (not a multiple of any vector width)
    x, y = _sparse_data(203, 150, 0.2, 10)
    widths = (150, hidden, 10)
    want = _train(x, y, widths, nn.ReLU, lambda: optim.SGD(lr=0.1), dtype, fused=False, backend=backend)
    got = _train(x, y, widths, nn.ReLU, lambda: optim.SGD(lr=0.1), dtype, fused=True, backend=backend)
    _assert_same(got, want, dtype)


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.GELU, nn.Tanh], ids=["sigmoid", "gelu_keeps_preact", "tanh"])
@pytest.mark.parametrize("make_optimizer", [lambda: optim.Adam(lr=1e-3, weight_decay=1e-4),
                                            lambda: optim.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
                                            lambda: optim.AdamW(lr=1e-2, weight_decay=0.5)],
                         ids=["adam_wd", "momentum_wd", "adamw"])
def test_sparse_first_layer_every_activation_and_stateful_optimizer(sparse_path, backend, threads, act,
                                                                    make_optimizer):
    x, y = _sparse_data(203, 150, 0.2, 10, seed=1)
    widths = (150, 97, 61, 10)
    want = _train(x, y, widths, act, make_optimizer, np.float32, fused=False, backend=backend)
    got = _train(x, y, widths, act, make_optimizer, np.float32, fused=True, backend=backend)
    _assert_same(got, want, np.float32)


def test_row_chains_carry_rows_through_every_layer(sparse_path, threads):
    """A sparse first layer followed by small layers: each thread takes chunks of rows
    through the whole forward, the loss and back through the later layers' input gradients
    (one phase; the weight gradients in a second); the numbers stay the layer path's,
    including a last batch whose rows do not fill the last chunk."""
    x, y = _sparse_data(203, 150, 0.2, 7, seed=5)
    widths = (150, 40, 12, 7)
    step = _step(x, y, widths=(150, 40, 7))
    names = step.phase_names()
    assert len(names) == 2 and names[0].startswith("forward of every layer and the loss")
    adam = lambda: optim.Adam(lr=1e-3, weight_decay=1e-4)  # noqa: E731
    for dtype in (np.float32, np.float64):
        want = _train(x, y, widths, nn.Sigmoid, adam, dtype, fused=False)
        got = _train(x, y, widths, nn.Sigmoid, adam, dtype, fused=True)
        _assert_same(got, want, dtype)


def test_sparse_first_layer_with_a_batch_larger_than_the_input_width(sparse_path, backend):
    """Batches of 300 rows: the column lists hold more rows than a row list holds columns."""
    x, y = _sparse_data(700, 40, 0.3, 5, seed=2)
    widths = (40, 33, 5)
    sgd = lambda: optim.SGD(lr=0.1)  # noqa: E731
    want = _train(x, y, widths, nn.ReLU, sgd, np.float64, fused=False, batch=300, backend=backend)
    got = _train(x, y, widths, nn.ReLU, sgd, np.float64, fused=True, batch=300, backend=backend)
    _assert_same(got, want, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("inputs", [64, 130, 257], ids=lambda n: f"inputs{n}")
def test_sparse_first_layer_input_widths_around_the_column_chunks(sparse_path, backend, threads, dtype, inputs):
    """Inputs of one column chunk (64), and widths whose last chunk boundary falls after the
    last whole vector (130, 257): each chunk's column lists come from the row splits."""
    x, y = _sparse_data(150, inputs, 0.2, 7, seed=4)
    widths = (inputs, 24, 7)
    sgd = lambda: optim.SGD(lr=0.1)  # noqa: E731
    want = _train(x, y, widths, nn.ReLU, sgd, dtype, fused=False, backend=backend)
    got = _train(x, y, widths, nn.ReLU, sgd, dtype, fused=True, backend=backend)
    _assert_same(got, want, dtype)


def _step(x, y, widths=(150, 20, 10), backend="cython"):
    model = nn.Sequential(nn.Linear(widths[0], widths[1], seed=0), nn.ReLU(), nn.Linear(widths[1], widths[2], seed=1),
                          backend=backend, dtype=np.float32)
    return engine.fused_train_step(model, optim.SGD(model, lr=0.1), nn.CrossEntropyLoss(), x.astype(np.float32),
                                   y, 64)


def test_the_data_decides_between_sparse_and_dense(monkeypatch, backend):
    monkeypatch.delenv("NNKERN_SPARSE_INPUT", raising=False)
    sparse_x, y = _sparse_data(128, 150, 0.2, 10)
    dense_x = np.random.default_rng(0).standard_normal((128, 150))
    assert np.count_nonzero(sparse_x) <= engine.SPARSE_INPUT_MAX_DENSITY * sparse_x.size
    assert _step(sparse_x, y, backend=backend).sparse_input
    assert not _step(dense_x, y, backend=backend).sparse_input
    if backend == "cython":  # the step that names its phases
        assert "x's nonzeros" in _step(sparse_x, y).phase_names()[0]
        assert "nonzeros" not in " ".join(_step(dense_x, y).phase_names())


def test_nnkern_sparse_input_overrides_the_choice(monkeypatch):
    sparse_x, y = _sparse_data(128, 150, 0.2, 10)
    dense_x = np.random.default_rng(0).standard_normal((128, 150))
    monkeypatch.setenv("NNKERN_SPARSE_INPUT", "0")
    assert not _step(sparse_x, y).sparse_input
    monkeypatch.setenv("NNKERN_SPARSE_INPUT", "1")
    assert _step(dense_x, y).sparse_input
    monkeypatch.setenv("NNKERN_SPARSE_INPUT", "sometimes")
    with pytest.raises(ValueError, match="NNKERN_SPARSE_INPUT must be 'auto', '0' or '1', got 'sometimes'"):
        _step(sparse_x, y)


def test_dense_data_forced_through_the_sparse_path_still_trains_right(sparse_path, backend):
    """Every entry nonzero: the index lists are full; the numbers stay the dense path's."""
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((203, 150)), rng.integers(0, 10, 203)
    widths = (150, 97, 10)
    want = _train(x, y, widths, nn.ReLU, lambda: optim.SGD(lr=0.1), np.float32, fused=False, backend=backend)
    got = _train(x, y, widths, nn.ReLU, lambda: optim.SGD(lr=0.1), np.float32, fused=True, backend=backend)
    _assert_same(got, want, np.float32)
