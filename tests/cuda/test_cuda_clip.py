"""The "cuda" vector kernels of gradient clipping (ops.sum_squares, ops.max_abs,
ops.scale) against the reference, host and device arrays, and clip_grad_norm_ on the
device gradients of a "cuda" model against the same model on the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numba import cuda

from nnkern import nn, ops
from nnkern._clip import clip_grad_norm_
from _tolerance import rtol


@pytest.mark.parametrize("placement", ["host", "device"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 7, 300])
def test_vector_kernels(size, dtype, placement):
    x = (np.random.default_rng(size).standard_normal(size) * 3).astype(dtype)
    arg = cuda.to_device(x) if placement == "device" else x.copy()
    assert ops.sum_squares(arg, backend="cuda") == pytest.approx(ops.sum_squares(x, backend="numpy"), rel=1e-12)
    assert ops.max_abs(arg, backend="cuda") == ops.max_abs(x, backend="numpy")
    ops.scale(arg, 0.37, backend="cuda")
    got = arg.copy_to_host() if placement == "device" else arg
    want = x.copy()
    ops.scale(want, 0.37, backend="numpy")
    np.testing.assert_allclose(got, want, rtol=rtol(dtype))


def test_max_abs_propagates_nan():
    assert math.isnan(ops.max_abs(np.array([1.0, np.nan, 3.0]), backend="cuda"))


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_model_gradients(norm_type):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 5)) * 4, rng.integers(0, 3, 6)
    results = {}
    for backend in ("numpy", "cuda"):
        model = nn.Sequential(nn.Linear(5, 7, seed=0), nn.Tanh(), nn.Linear(7, 3, seed=1), backend=backend,
                              dtype=np.float64)
        model.compute_gradients(x, y, "cross_entropy")
        total = clip_grad_norm_(model, 0.05, norm_type=norm_type)
        results[backend] = total, [g.copy_to_host() if hasattr(g, "copy_to_host") else g for g in model.gradients()]
    assert results["cuda"][0] == pytest.approx(results["numpy"][0], rel=1e-12)
    for got, want in zip(results["cuda"][1], results["numpy"][1]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
