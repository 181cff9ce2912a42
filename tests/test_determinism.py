"""The same seed gives the same weights and losses, bit for bit, on one backend and thread count."""

from __future__ import annotations

import numpy as np
import pytest

import nnkern
from nnkern import nn, optim


def _train(backend, threads, fused=True):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 41)).astype(np.float32)
    y = rng.integers(0, 5, 300)
    model = nn.Sequential(nn.Linear(41, 64, seed=1), nn.ReLU(), nn.Linear(64, 5, seed=2), backend=backend)
    before = nnkern.get_num_threads()
    nnkern.set_num_threads(threads)
    try:
        history = model.fit(x, y, epochs=2, batch_size=32, optimizer=optim.Adam(lr=1e-2), seed=7,
                            verbose=False, fused=fused)
    finally:
        nnkern.set_num_threads(before)
    return history.history["loss"], [p.copy() for p in model.parameters()]


@pytest.mark.parametrize("threads", [1, 2])
def test_same_seed_same_numbers(any_backend, threads):
    loss_a, params_a = _train(any_backend, threads)
    loss_b, params_b = _train(any_backend, threads)
    assert loss_a == loss_b
    for a, b in zip(params_a, params_b):
        np.testing.assert_array_equal(a, b)


def test_thread_counts_agree_to_round_off(any_backend):
    """Across thread counts the summation order of a product may change, so results
    agree to float32 round-off, not bit for bit (README: Determinism)."""
    loss_1, params_1 = _train(any_backend, 1)
    loss_2, params_2 = _train(any_backend, 2)
    np.testing.assert_allclose(loss_1, loss_2, rtol=1e-4)
    for a, b in zip(params_1, params_2):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
