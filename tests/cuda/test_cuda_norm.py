"""The "cuda" normalisation kernels (BatchNorm1d and LayerNorm, forward and backward)
against the NumPy reference, with host arrays and with device arrays, float32 and
float64, under the simulator: shapes with one row or column, primes, more columns than
a column block (32) and rows longer than a warp."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from numba import cuda

from nnkern import ops
from _tolerance import rtol

DTYPES = [np.float32, np.float64]
PLACEMENTS = ["host", "device"]
SHAPES = [(2, 1), (3, 7), (17, 37), (5, 70)]


def _case(shape, dtype, *key):
    rng = np.random.default_rng(zlib.crc32(repr((shape, np.dtype(dtype).name, *key)).encode()))
    c = shape[1]
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3, c) + rng.uniform(-2, 2, c)).astype(dtype)
    return (x, rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype),
            rng.standard_normal(shape).astype(dtype))


def _on(placement, *arrays):
    return [cuda.to_device(a) if placement == "device" else a for a in arrays]


def _host(a, placement):
    if placement == "device":
        assert not isinstance(a, np.ndarray)
        return a.copy_to_host()
    assert isinstance(a, np.ndarray)
    return a


def assert_near(got, want, dtype):
    want = np.asarray(want, np.float64)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0,
                               atol=8 * rtol(dtype) * (np.abs(want).max() + 1.0))


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm(shape, dtype, placement):
    x, w, b, g = _case(shape, dtype, "bn")
    c = shape[1]
    results = {}
    for backend in ("numpy", "cuda"):
        where = placement if backend == "cuda" else "host"
        rm, rv = _on(where, np.linspace(-1, 1, c).astype(dtype), np.linspace(0.5, 2, c).astype(dtype))
        xs, ws, bs, gs = _on(where, x, w, b, g)
        train = ops.batch_norm_forward(xs, ws, bs, running_mean=rm, running_var=rv, momentum=0.3, backend=backend)
        train_grads = ops.batch_norm_backward(xs, gs, ws, train[1], train[2], backend=backend)
        evaluation = ops.batch_norm_forward(xs, ws, bs, running_mean=rm, running_var=rv, training=False,
                                            backend=backend)
        eval_grads = ops.batch_norm_backward(xs, gs, ws, evaluation[1], evaluation[2], training=False,
                                             backend=backend)
        results[backend] = [_host(a, where) for a in (*train, *train_grads, rm, rv, *evaluation, *eval_grads)]
    for got, want in zip(results["cuda"], results["numpy"]):
        assert got.dtype == np.dtype(dtype)
        assert_near(got, want, dtype)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 40), *SHAPES])
def test_layer_norm(shape, dtype, placement):
    x, w, b, g = _case(shape, dtype, "ln")
    results = {}
    for backend in ("numpy", "cuda"):
        where = placement if backend == "cuda" else "host"
        xs, ws, bs, gs = _on(where, x, w, b, g)
        forward = ops.layer_norm_forward(xs, ws, bs, eps=1e-3, backend=backend)
        grads = ops.layer_norm_backward(xs, gs, ws, forward[1], forward[2], backend=backend)
        results[backend] = [_host(a, where) for a in (*forward, *grads)]
    for got, want in zip(results["cuda"], results["numpy"]):
        assert got.dtype == np.dtype(dtype)
        assert_near(got, want, dtype)


def test_batch_norm_without_affine_or_running_statistics():
    x, _, _, g = _case((6, 5), np.float64, "plain")
    want = ops.batch_norm_forward(x, backend="numpy")
    got = ops.batch_norm_forward(cuda.to_device(x), backend="cuda")
    for a, e in zip(got, want):
        assert_near(a.copy_to_host(), e, np.float64)
    assert_near(ops.batch_norm_backward(x, g, None, *want[1:], backend="cuda")[0],
                ops.batch_norm_backward(x, g, None, *want[1:], backend="numpy")[0], np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_with_norm_layers_matches_reference(dtype):
    """The layers on "cuda" (parameters, running statistics and workspaces on the device):
    two training steps and a prediction agree with the same model on the reference."""
    from nnkern import nn, optim
    from nnkern.normalization import BatchNorm1d, LayerNorm

    def build(backend):
        model = nn.Sequential(nn.Linear(5, 8, seed=0), BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 6, seed=1),
                              LayerNorm(6), nn.Tanh(), nn.Linear(6, 3, seed=2), backend=backend, dtype=dtype)
        sgd = optim.SGD(0.1, momentum=0.9)
        sgd.bind(model.parameters(), model.gradients(), backend=backend)
        return model, sgd

    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((9, 5)).astype(dtype), rng.integers(0, 3, 9)) for _ in range(2)]
    results = {}
    for backend in ("numpy", "cuda"):
        model, sgd = build(backend)
        losses = [model.train_step(x, y, sgd, nn.CrossEntropyLoss())[0] for x, y in batches]
        results[backend] = (losses, model.predict(batches[0][0]), model.state_dict(),
                            {name: np.array(b.copy_to_host() if hasattr(b, "copy_to_host") else b)
                             for name, b in model.layers[1].named_buffers()})
    (losses, out, state, buffers), (want_losses, want_out, want_state, want_buffers) = results["cuda"], results["numpy"]
    np.testing.assert_allclose(losses, want_losses, rtol=20 * rtol(dtype))
    assert_near(out, want_out, dtype)
    for name in want_state:
        assert_near(state[name], want_state[name], dtype)
    for name in want_buffers:
        assert_near(buffers[name], want_buffers[name], dtype)
