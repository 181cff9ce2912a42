"""Every op of every fast CPU backend against the NumPy reference.

Shapes include 1, primes and sizes that are not multiples of any blocking; inputs come
float32 and float64, contiguous, strided and transposed. Tolerances follow the dtype (and k
for products): see _tolerance.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import nnkern
from nnkern import ops
from _tolerance import STEPPED_UPDATES, UPDATES, assert_close, assert_linear_close, assert_matmul_close

DTYPES = [np.float32, np.float64]
ACTIVATIONS = [
    ("identity", {}),
    ("sigmoid", {}),
    ("tanh", {}),
    ("relu", {}),
    ("leaky_relu", {"negative_slope": 0.2}),
    ("gelu", {}),
    ("gelu", {"approximate": "tanh"}),
    ("step", {}),
]
ROW_SHAPES = [(1, 1), (1, 10), (7, 1), (13, 17), (64, 10), (128, 10), (31, 97)]


def _rng(*key):
    return np.random.default_rng(abs(hash(key)) % 2**32)


def test_expected_backends_are_available():
    """CI names the backends it built; a backend that silently failed to load fails here
    instead of skipping its tests."""
    expected = [b for b in os.environ.get("NNKERN_EXPECT_BACKENDS", "numpy").split(",") if b]
    missing = {b: nnkern.unavailable_reason(b) for b in expected if b not in nnkern.available_backends()}
    assert not missing, f"backends expected but unavailable: {missing}"


# ---------------------------------------------------------------------------------------
# matmul
# ---------------------------------------------------------------------------------------

MATMUL_SHAPES = [
    (1, 1, 1),
    (1, 7, 1),
    (3, 1, 5),
    (2, 3, 4),
    (13, 17, 19),
    (64, 784, 10),
    (37, 1031, 11),  # large prime k
    (97, 33, 129),
    (65, 64, 257),
    (129, 5, 67),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", MATMUL_SHAPES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul(fast_backend, dtype, m, k, n, trans_a, trans_b):
    rng = _rng("matmul", m, k, n, trans_a, trans_b)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, backend=fast_backend)
    assert c.shape == (m, n) and c.dtype == dtype
    assert_matmul_close(c, a.T if trans_a else a, b.T if trans_b else b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_views_and_out(fast_backend, dtype):
    rng = _rng("matmul-views")
    big_a = rng.standard_normal((40, 70)).astype(dtype)
    big_b = rng.standard_normal((90, 50)).astype(dtype)
    a = big_a[::2, 3:60:2]  # strided (20, 29)
    b = big_b[1:59:2, ::3]  # strided (29, 17)
    out = np.full((20, 17), np.nan, dtype=dtype)
    result = ops.matmul(a, b, out=out, backend=fast_backend)
    assert result is out
    assert_matmul_close(out, a, b)
    # transposed views (F-contiguous) are read without a copy by flipping the trans flags
    a_t = np.ascontiguousarray(a).T  # F-contiguous (29, 20)
    b_t = np.ascontiguousarray(b).T  # F-contiguous (17, 29)
    assert_matmul_close(ops.matmul(a_t, b, trans_a=True, backend=fast_backend), a, b)
    assert_matmul_close(ops.matmul(a, b_t, trans_b=True, backend=fast_backend), a, b)
    assert_matmul_close(ops.matmul(b_t, a_t, backend=fast_backend), b.T, a.T)


def test_matmul_mixed_and_integer_inputs(fast_backend):
    a = np.arange(12).reshape(3, 4)
    b = np.ones((4, 2), dtype=np.float32)
    c = ops.matmul(a, b, backend=fast_backend)
    assert c.dtype == np.float64
    np.testing.assert_array_equal(c, a @ b)
    c32 = ops.matmul(b.T, b, backend=fast_backend)
    assert c32.dtype == np.float32


def test_matmul_empty(fast_backend):
    assert ops.matmul(np.ones((0, 3)), np.ones((3, 4)), backend=fast_backend).shape == (0, 4)
    np.testing.assert_array_equal(ops.matmul(np.ones((2, 0)), np.ones((0, 4)), backend=fast_backend), 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,params", ACTIVATIONS)
@pytest.mark.parametrize("n,k,m", [(1, 1, 1), (13, 17, 19), (64, 784, 256), (100, 31, 10)])
def test_linear(fast_backend, dtype, act, params, n, k, m):
    rng = _rng("linear", act, n, k, m)
    x = rng.standard_normal((n, k)).astype(dtype)
    w = (rng.standard_normal((k, m)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    got = ops.linear(x, w, b, act, backend=fast_backend, **params)
    assert_linear_close(got, x, w, b, act, params)


# ---------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------


def _activation_input(rng, shape, dtype):
    x = rng.standard_normal(shape) * 3
    x.flat[: min(x.size, 4)] = [0.0, -40.0, 40.0, 1e-3][: min(x.size, 4)]
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,params", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1,), (7,), (13, 17), (3, 5, 7), (64, 256)])
def test_activation_and_grad(fast_backend, dtype, act, params, shape):
    rng = _rng("act", act, shape)
    x = _activation_input(rng, shape, dtype)
    y_ref = ops.activation(act, x, backend="numpy", **params)
    y = ops.activation(act, x, backend=fast_backend, **params)
    assert y.shape == x.shape and y.dtype == dtype
    assert_close(y, y_ref, dtype, factor=4)
    g = rng.standard_normal(shape).astype(dtype)
    d_ref = ops.activation_grad(act, x, y_ref, g, backend="numpy", **params)
    d = ops.activation_grad(act, x, y_ref, g, backend=fast_backend, **params)
    assert_close(d, d_ref, dtype, factor=8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_strided_input_and_out(fast_backend, dtype):
    x = _rng("strided").standard_normal((20, 30)).astype(dtype)[::3, 1::2]
    out = np.empty(x.shape, dtype)
    assert ops.activation("tanh", x, out=out, backend=fast_backend) is out
    assert_close(out, np.tanh(x), dtype, factor=4)


def test_relu_grad_at_zero_is_zero(any_backend):
    x = np.array([-1.0, 0.0, 2.0])
    d = ops.activation_grad("relu", x, None, np.ones(3), backend=any_backend)
    np.testing.assert_array_equal(d, [0.0, 0.0, 1.0])


def test_sigmoid_is_stable_for_large_inputs(any_backend):
    x = np.array([-1e4, -800.0, 0.0, 800.0, 1e4], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = ops.activation("sigmoid", x, backend=any_backend)
    np.testing.assert_allclose(y, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-30)


def test_float_sigmoid_is_accurate_over_its_whole_range(fast_backend):
    """The Cython and the Numba backend compute float sigmoid with their own vectorised exp
    (Cephes' expf): within a few float ulps of the exact value wherever that is a normal float, and 0 (not a subnormal)
    where exp underflows; every vector lane and the scalar tail alike."""
    x = np.concatenate([np.linspace(-120, 120, 20011), [-87.4, -87.3, -87.2, -1e-30, 0.0, 1e-30, 88.0],
                        np.float32(2.0) ** np.arange(-30, 7)]).astype(np.float32)
    exact = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    y = ops.activation("sigmoid", x, backend=fast_backend).astype(np.float64)
    normal = exact >= np.finfo(np.float32).tiny
    np.testing.assert_allclose(y[normal], exact[normal], rtol=4 * np.finfo(np.float32).eps)
    np.testing.assert_allclose(y[~normal], exact[~normal], rtol=0, atol=2 * np.finfo(np.float32).tiny)
    nan = np.full(11, np.nan, np.float32)  # a vector and a tail
    assert np.isnan(ops.activation("sigmoid", nan, backend=fast_backend)).all()


# ---------------------------------------------------------------------------------------
# Softmax and losses
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_softmax(fast_backend, dtype, shape):
    x = (_rng("softmax", shape).standard_normal(shape) * 5).astype(dtype)
    assert_close(ops.softmax(x, backend=fast_backend), ops.softmax(x, backend="numpy"), dtype, factor=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_softmax_cross_entropy_labels(fast_backend, dtype, shape):
    rng = _rng("sce", shape)
    logits = (rng.standard_normal(shape) * 4).astype(dtype)
    labels = rng.integers(0, shape[1], size=shape[0])
    loss_ref, d_ref = ops.softmax_cross_entropy(logits, labels, backend="numpy")
    loss, d = ops.softmax_cross_entropy(logits, labels, backend=fast_backend)
    assert d.dtype == dtype and d.shape == shape
    assert_close(loss, loss_ref, dtype, factor=4)
    assert_close(d, d_ref, dtype, scale=1.0 / shape[0], factor=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_softmax_cross_entropy_targets(fast_backend, dtype, shape):
    rng = _rng("sce-t", shape)
    logits = (rng.standard_normal(shape) * 4).astype(dtype)
    targets = rng.random(shape).astype(dtype)
    targets /= targets.sum(axis=1, keepdims=True)
    targets[0] *= 1.5  # a row that does not sum to one
    loss_ref, d_ref = ops.softmax_cross_entropy(logits, targets, backend="numpy")
    loss, d = ops.softmax_cross_entropy(logits, targets, backend=fast_backend)
    assert_close(loss, loss_ref, dtype, factor=8)
    assert_close(d, d_ref, dtype, scale=1.0 / shape[0], factor=8)


def test_softmax_cross_entropy_extreme_logits(any_backend):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32)
    loss, d = ops.softmax_cross_entropy(logits, np.array([1, 2]), backend=any_backend)
    # row 0: -log softmax[1] = 2e4; row 1: log 3
    np.testing.assert_allclose(loss, (2e4 + np.log(3.0)) / 2, rtol=1e-6)
    assert np.all(np.isfinite(d))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (13, 17), (64, 10), (2, 3, 5)])
@pytest.mark.parametrize("reduction", ["mean", "half_sum"])
def test_mse(fast_backend, dtype, shape, reduction):
    rng = _rng("mse", shape)
    p, t = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    loss_ref, d_ref = ops.mse(p, t, reduction=reduction, backend="numpy")
    loss, d = ops.mse(p, t, reduction=reduction, backend=fast_backend)
    assert_close(loss, loss_ref, dtype, factor=4)
    assert_close(d, d_ref, dtype, factor=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (13, 17), (64, 10)])
def test_binary_cross_entropy(fast_backend, dtype, shape):
    rng = _rng("bce", shape)
    p = rng.random(shape).astype(dtype)
    p.flat[0] = 0.0  # clamped
    if p.size > 1:
        p.flat[1] = 1.0
    t = (rng.random(shape) > 0.5).astype(dtype)
    loss_ref, d_ref = ops.binary_cross_entropy(p, t, backend="numpy")
    loss, d = ops.binary_cross_entropy(p, t, backend=fast_backend)
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    assert_close(loss, loss_ref, dtype, factor=4)
    assert_close(d, d_ref, dtype, factor=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 10), (64, 256), (129, 17)])
def test_bias_grad(fast_backend, dtype, shape):
    dy = _rng("bias", shape).standard_normal(shape).astype(dtype)
    got = ops.bias_grad(dy, backend=fast_backend)
    want = dy.astype(np.float64).sum(axis=0)
    tol = 2 * shape[0] * np.finfo(dtype).eps * np.abs(dy.astype(np.float64)).sum(axis=0)
    assert np.all(np.abs(got - want) <= tol + np.finfo(dtype).tiny)


# ---------------------------------------------------------------------------------------
# Optimizer updates
# ---------------------------------------------------------------------------------------

# parameter sizes of the MNIST MLP (784-256-128-64-20-10) and odd ones
PARAM_SHAPES = [(1,), (10,), (37,), (20, 10), (784, 256), (100003,)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(UPDATES))
@pytest.mark.parametrize("shape", PARAM_SHAPES)
def test_optimizer_updates(fast_backend, dtype, name, shape):
    n_state, hyper = UPDATES[name]
    rng = _rng("opt", name, shape)
    p0 = rng.standard_normal(shape).astype(dtype)
    states0 = [np.abs(rng.standard_normal(shape)).astype(dtype) for _ in range(n_state)]
    results = {}
    for backend in ("numpy", fast_backend):
        p, states = p0.copy(), [s.copy() for s in states0]
        for step in range(1, 4):
            g = _rng("grad", step, shape).standard_normal(shape).astype(dtype)
            args = (p, g, *states, step) if name in STEPPED_UPDATES else (p, g, *states)
            getattr(ops, name)(*args, **hyper, backend=backend)
        results[backend] = (p, states)
    p_ref, s_ref = results["numpy"]
    p, s = results[fast_backend]
    assert_close(p, p_ref, dtype, factor=16)
    for got, want in zip(s, s_ref):
        assert_close(got, want, dtype, factor=16)


@pytest.mark.parametrize("name", sorted(UPDATES))
def test_optimizer_updates_write_back_into_strided_views(fast_backend, name):
    n_state, hyper = UPDATES[name]
    rng = _rng("opt-view", name)
    base = {b: rng.standard_normal((10, 8)) for b in ("p", *[f"s{i}" for i in range(n_state)])}
    base = {k: np.abs(v) if k != "p" else v for k, v in base.items()}
    g = rng.standard_normal((10, 4))
    results = {}
    for backend in ("numpy", fast_backend):
        arrays = {k: v.copy() for k, v in base.items()}
        views = [arrays[k][:, ::2] for k in arrays]  # non-contiguous views updated in place
        args = (*views[:1], g, *views[1:], 1) if name in STEPPED_UPDATES else (*views[:1], g, *views[1:])
        getattr(ops, name)(*args, **hyper, backend=backend)
        results[backend] = arrays
    for k in base:
        assert_close(results[fast_backend][k], results["numpy"][k], np.float64, factor=16)
        np.testing.assert_array_equal(results[fast_backend][k][:, 1::2], base[k][:, 1::2])


@pytest.mark.skipif(os.environ.get("NNKERN_CHECKED_BUILD") != "1",
                    reason="only meaningful against a bounds-checked build (.ci/run's second pass)")
def test_checked_build_raises_index_error_on_a_bad_index():
    """Proof that the second CI pass runs checked kernels: a raw kernel, called past the ops
    layer with an out-of-range label, raises IndexError (Cython) instead of reading memory."""
    from nnkern.backends import _cy_losses

    dlogits = np.zeros((1, 3), np.float32)
    with pytest.raises(IndexError):
        _cy_losses.softmax_cross_entropy_labels(np.zeros((1, 3), np.float32), np.array([5]), dlogits, 1)
    from numba import config

    assert config.BOUNDSCHECK, "NUMBA_BOUNDSCHECK is not on in the checked pass"
