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
