"""Hypothesis fuzzing of shapes, dtypes and layouts: every fast backend against the reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkern import ops
from _tolerance import assert_close, assert_matmul_close

from _backends import FAST_CPU_BACKENDS

pytestmark = pytest.mark.skipif(not FAST_CPU_BACKENDS, reason="no fast CPU backend built")

dims = st.integers(min_value=1, max_value=70)
dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(min_value=0, max_value=2**32 - 1)
backends = st.sampled_from(FAST_CPU_BACKENDS or ["numpy"])
FUZZ = settings(max_examples=60, deadline=None)


@FUZZ
@given(m=dims, k=dims, n=dims, trans_a=st.booleans(), trans_b=st.booleans(), dtype=dtypes,
       strided=st.booleans(), seed=seeds, backend=backends)
def test_fuzz_matmul(m, k, n, trans_a, trans_b, dtype, strided, seed, backend):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    if strided:  # a non-contiguous view with the same values
        wide = np.zeros((a.shape[0], 2 * a.shape[1]), dtype)
        wide[:, ::2] = a
        a = wide[:, ::2]
    c = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, backend=backend)
    assert_matmul_close(c, a.T if trans_a else a, b.T if trans_b else b)


@FUZZ
@given(n=dims, c=dims, dtype=dtypes, seed=seeds, scale=st.sampled_from([0.1, 1.0, 30.0, 1e3]),
       targets=st.booleans(), backend=backends)
def test_fuzz_softmax_cross_entropy(n, c, dtype, seed, scale, targets, backend):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, c)) * scale).astype(dtype)
    if targets:
        labels = rng.random((n, c)).astype(dtype)
    else:
        labels = rng.integers(0, c, size=n)
    loss_ref, d_ref = ops.softmax_cross_entropy(logits, labels, backend="numpy")
    loss, d = ops.softmax_cross_entropy(logits, labels, backend=backend)
    # the loss grows with the logits' scale; its rounding error does too
    assert_close(loss, loss_ref, dtype, scale=scale, factor=16)
    assert_close(d, d_ref, dtype, scale=1.0 / n, factor=16)


@FUZZ
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), dtype=dtypes, seed=seeds,
       name=st.sampled_from(["sigmoid", "tanh", "relu", "leaky_relu", "gelu", "identity"]), backend=backends)
def test_fuzz_activations(shape, dtype, seed, name, backend):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    y = ops.activation(name, x, backend=backend)
    assert_close(y, ops.activation(name, x, backend="numpy"), dtype, factor=4)
    g = rng.standard_normal(shape).astype(dtype)
    assert_close(ops.activation_grad(name, x, y, g, backend=backend),
                 ops.activation_grad(name, x, y, g, backend="numpy"), dtype, factor=8)
