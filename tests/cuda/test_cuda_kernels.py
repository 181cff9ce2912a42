"""Every op of the "cuda" backend against the NumPy reference, with host arrays and with
device arrays, float32 and float64.

Runs under Numba's CUDA simulator (or on a GPU): see conftest.py. The simulator runs
every CUDA thread as a Python thread, so shapes are small; they still cover size 1,
primes, more than one GEMM tile (64) in each direction, more than one K step (16) and
rows longer than one warp.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from numba import cuda

import nnkern
from nnkern import ops
from _tolerance import STEPPED_UPDATES, UPDATES, assert_close, assert_linear_close, assert_matmul_close

DTYPES = [np.float32, np.float64]
PLACEMENTS = ["host", "device"]
TRANSPOSES = [(False, False), (True, False), (False, True), (True, True)]
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
ROW_SHAPES = [(1, 1), (3, 23), (2, 70)]  # rows shorter and longer than a warp


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _place(x, placement):
    return cuda.to_device(x) if placement == "device" else x


def _fetch(result, placement):
    """The result as a host array, after checking it lives where its inputs did."""
    if placement == "device":
        assert not isinstance(result, np.ndarray) and getattr(result, "__cuda_ndarray__", False)
        return result.copy_to_host()
    assert isinstance(result, np.ndarray)
    return result


def test_cuda_backend_is_available_and_selectable():
    assert "cuda" in nnkern.available_backends()
    with nnkern.use_backend("cuda"):
        assert nnkern.get_backend() == "cuda"
        x = np.arange(6.0).reshape(2, 3)
        np.testing.assert_array_equal(ops.activation("relu", x - 2.0), np.maximum(x - 2.0, 0))


# ---------------------------------------------------------------------------------------
# GEMM
# ---------------------------------------------------------------------------------------


def _matmul_operands(m, k, n, trans_a, trans_b, dtype):
    rng = _rng("matmul", m, k, n, trans_a, trans_b)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b, (a.T if trans_a else a), (b.T if trans_b else b)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (17, 23, 5)])
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
def test_matmul(placement, dtype, m, k, n, trans_a, trans_b):
    a, b, a_op, b_op = _matmul_operands(m, k, n, trans_a, trans_b, dtype)
    c = ops.matmul(_place(a, placement), _place(b, placement), trans_a=trans_a, trans_b=trans_b,
                   backend="cuda")
    assert c.shape == (m, n) and c.dtype == dtype
    assert_matmul_close(_fetch(c, placement), a_op, b_op)


@pytest.mark.parametrize("m,k,n", [(67, 17, 3), (3, 33, 67)])
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES)
def test_matmul_across_tiles(m, k, n, trans_a, trans_b):
    """More than one 64-wide output tile in each direction, and 2 or 3 steps of K."""
    a, b, a_op, b_op = _matmul_operands(m, k, n, trans_a, trans_b, np.float32)
    assert_matmul_close(ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, backend="cuda"), a_op, b_op)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_into_out(dtype):
    m, k, n = 13, 19, 7
    a, b, a_op, b_op = _matmul_operands(m, k, n, True, False, dtype)
    d_a, d_b = cuda.to_device(a), cuda.to_device(b)
    d_out = cuda.device_array((m, n), dtype=dtype)
    assert ops.matmul(d_a, d_b, trans_a=True, out=d_out, backend="cuda") is d_out
    assert_matmul_close(d_out.copy_to_host(), a_op, b_op)
    # a host out= filled from a mix of device and host inputs
    host_out = np.full((m, n), np.nan, dtype=dtype)
    assert ops.matmul(d_a, b, trans_a=True, out=host_out, backend="cuda") is host_out
    assert_matmul_close(host_out, a_op, b_op)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,params", ACTIVATIONS)
def test_linear(dtype, act, params):
    _check_linear("host", dtype, act, params, 5, 19, 13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_device_arrays(dtype):
    _check_linear("device", dtype, "gelu", {}, 5, 19, 13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_bias_across_column_tiles(dtype):
    _check_linear("host", dtype, "leaky_relu", {"negative_slope": 0.2}, 3, 17, 67)


def _check_linear(placement, dtype, act, params, n, k, m):
    rng = _rng("linear", act, n, k, m)
    x = rng.standard_normal((n, k)).astype(dtype)
    w = (rng.standard_normal((k, m)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    got = _fetch(ops.linear(_place(x, placement), _place(w, placement), _place(b, placement), act,
                            backend="cuda", **params), placement)
    assert got.shape == (n, m) and got.dtype == dtype
    assert_linear_close(got, x, w, b, act, params)


# ---------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,params", ACTIVATIONS)
def test_activation_and_grad(placement, dtype, act, params):
    shape = (3, 5, 7)
    rng = _rng("act", act, params)
    x = rng.standard_normal(shape) * 3
    x.flat[:5] = [0.0, -40.0, 40.0, 1e-3, -1e4]  # relu's gradient at 0 is 0; sigmoid stays finite
    x = x.astype(dtype)
    y_ref = ops.activation(act, x, backend="numpy", **params)
    y = _fetch(ops.activation(act, _place(x, placement), backend="cuda", **params), placement)
    assert y.shape == shape and y.dtype == dtype
    assert_close(y, y_ref, dtype, factor=4)
    g = rng.standard_normal(shape).astype(dtype)
    d_ref = ops.activation_grad(act, x, y_ref, g, backend="numpy", **params)
    d = ops.activation_grad(act, _place(x, placement), _place(y_ref, placement), _place(g, placement),
                            backend="cuda", **params)
    assert_close(_fetch(d, placement), d_ref, dtype, factor=8)


# ---------------------------------------------------------------------------------------
# Softmax and losses
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_softmax(placement, dtype, shape):
    x = (_rng("softmax", shape).standard_normal(shape) * 5).astype(dtype)
    got = _fetch(ops.softmax(_place(x, placement), backend="cuda"), placement)
    assert_close(got, ops.softmax(x, backend="numpy"), dtype, factor=4)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_softmax_cross_entropy_labels(placement, dtype, shape):
    rng = _rng("sce", shape)
    logits = (rng.standard_normal(shape) * 4).astype(dtype)
    labels = rng.integers(0, shape[1], size=shape[0]).astype(np.int64)
    loss_ref, d_ref = ops.softmax_cross_entropy(logits, labels, backend="numpy")
    loss, d = ops.softmax_cross_entropy(_place(logits, placement), _place(labels, placement), backend="cuda")
    assert isinstance(loss, float)
    d = _fetch(d, placement)
    assert d.dtype == dtype and d.shape == shape
    assert_close(loss, loss_ref, dtype, factor=4)
    assert_close(d, d_ref, dtype, scale=1.0 / shape[0], factor=4)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_softmax_cross_entropy_targets(placement, dtype, shape):
    rng = _rng("sce-t", shape)
    logits = (rng.standard_normal(shape) * 4).astype(dtype)
    targets = rng.random(shape).astype(dtype)
    targets /= targets.sum(axis=1, keepdims=True)
    targets[0] *= 1.5  # a row that does not sum to one
    loss_ref, d_ref = ops.softmax_cross_entropy(logits, targets, backend="numpy")
    loss, d = ops.softmax_cross_entropy(_place(logits, placement), _place(targets, placement), backend="cuda")
    assert_close(loss, loss_ref, dtype, factor=8)
    assert_close(_fetch(d, placement), d_ref, dtype, scale=1.0 / shape[0], factor=8)


@pytest.mark.parametrize("bad", [-1, 3, 10**9])
def test_out_of_range_device_labels_raise(bad):
    """Device labels are range-checked by the kernel (no host transfer), not read out of bounds."""
    labels = cuda.to_device(np.array([0, bad, 1], dtype=np.int64))
    with pytest.raises(ValueError, match="device label is out of range for 3 classes"):
        ops.softmax_cross_entropy(cuda.to_device(np.zeros((3, 3))), labels, backend="cuda")
    with pytest.raises(ValueError, match="logits have 2 rows but labels have 3 entries"):
        ops.softmax_cross_entropy(cuda.to_device(np.zeros((2, 3))), labels, backend="cuda")


def test_softmax_and_cross_entropy_extreme_logits():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32)
    loss, d = ops.softmax_cross_entropy(logits, np.array([1, 2]), backend="cuda")
    # row 0: -log softmax[1] = 2e4; row 1: log 3
    np.testing.assert_allclose(loss, (2e4 + np.log(3.0)) / 2, rtol=1e-6)
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(ops.softmax(logits, backend="cuda"), [[1, 0, 0], [1 / 3] * 3], rtol=1e-6)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7, 13)])
@pytest.mark.parametrize("reduction", ["mean", "half_sum"])
def test_mse(placement, dtype, shape, reduction):
    rng = _rng("mse", shape)
    p, t = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    loss_ref, d_ref = ops.mse(p, t, reduction=reduction, backend="numpy")
    loss, d = ops.mse(_place(p, placement), _place(t, placement), reduction=reduction, backend="cuda")
    assert_close(loss, loss_ref, dtype, factor=4)
    assert_close(_fetch(d, placement), d_ref, dtype, factor=4)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (300,)])  # 300: two blocks of partial sums
def test_binary_cross_entropy(placement, dtype, shape):
    rng = _rng("bce", shape)
    p = rng.random(shape).astype(dtype)
    p.flat[0] = 0.0  # clamped
    if p.size > 2:
        p.flat[1] = 1.0
        p.flat[2] = 1e-15  # below the clamp
    t = (rng.random(shape) > 0.5).astype(dtype)
    loss_ref, d_ref = ops.binary_cross_entropy(p, t, backend="numpy")
    loss, d = ops.binary_cross_entropy(_place(p, placement), _place(t, placement), backend="cuda")
    d = _fetch(d, placement)
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    assert_close(loss, loss_ref, dtype, factor=4)
    assert_close(d, d_ref, dtype, factor=4)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (17, 23), (19, 70)])
def test_bias_grad(placement, dtype, shape):
    dy = _rng("bias", shape).standard_normal(shape).astype(dtype)
    got = _fetch(ops.bias_grad(_place(dy, placement), backend="cuda"), placement)
    want = dy.astype(np.float64).sum(axis=0)
    tol = 2 * shape[0] * np.finfo(dtype).eps * np.abs(dy.astype(np.float64)).sum(axis=0)
    assert np.all(np.abs(got - want) <= tol + np.finfo(dtype).tiny)


# ---------------------------------------------------------------------------------------
# Optimizer updates
# ---------------------------------------------------------------------------------------



def _run_updates(name, backend, placement, p0, states0, grads):
    """Take len(grads) steps of update `name` from (p0, states0); returns host copies."""
    _, hyper = UPDATES[name]
    p = _place(p0.copy(), placement)
    states = [_place(s.copy(), placement) for s in states0]
    for step, g in enumerate(grads, start=1):
        g = _place(g, placement)
        args = (p, g, *states, step) if name in STEPPED_UPDATES else (p, g, *states)
        getattr(ops, name)(*args, **hyper, backend=backend)
    return _fetch(p, placement), [_fetch(s, placement) for s in states]


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(UPDATES))
def test_optimizer_updates(placement, dtype, name):
    shape = (7, 13)  # 2-D: the ops layer updates it through a flat view
    n_state, _ = UPDATES[name]
    rng = _rng("opt", name)
    p0 = rng.standard_normal(shape).astype(dtype)
    states0 = [np.abs(rng.standard_normal(shape)).astype(dtype) for _ in range(n_state)]
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(3)]
    p_ref, s_ref = _run_updates(name, "numpy", "host", p0, states0, grads)
    p, s = _run_updates(name, "cuda", placement, p0, states0, grads)
    assert_close(p, p_ref, dtype, factor=16)
    for got, want in zip(s, s_ref):
        assert_close(got, want, dtype, factor=16)


def test_optimizer_update_writes_back_into_strided_host_views():
    rng = _rng("opt-view")
    base = {"p": rng.standard_normal((10, 8)), "m": np.abs(rng.standard_normal((10, 8))),
            "v": np.abs(rng.standard_normal((10, 8)))}
    g = rng.standard_normal((10, 4))
    results = {}
    for backend in ("numpy", "cuda"):
        arrays = {k: v.copy() for k, v in base.items()}
        p, m, v = (arrays[k][:, ::2] for k in ("p", "m", "v"))
        ops.adam_update(p, g, m, v, 1, **UPDATES["adam_update"][1], backend=backend)
        results[backend] = arrays
    for k in base:
        assert_close(results["cuda"][k], results["numpy"][k], np.float64, factor=16)
        np.testing.assert_array_equal(results["cuda"][k][:, 1::2], base[k][:, 1::2])


# ---------------------------------------------------------------------------------------
# The training path: everything stays on the device
# ---------------------------------------------------------------------------------------


def _training_step(arrays, labels, t, backend):
    """One forward/backward/Adam step of a 2-layer tanh MLP; returns the loss."""
    x, w1, b1, w2, b2 = (arrays[k] for k in ("x", "w1", "b1", "w2", "b2"))
    h = ops.linear(x, w1, b1, "tanh", backend=backend)
    logits = ops.linear(h, w2, b2, backend=backend)
    loss, dlogits = ops.softmax_cross_entropy(logits, labels, backend=backend)
    grads = {
        "w2": ops.matmul(h, dlogits, trans_a=True, backend=backend),
        "b2": ops.bias_grad(dlogits, backend=backend),
    }
    dh = ops.matmul(dlogits, w2, trans_b=True, backend=backend)
    dz = ops.activation_grad("tanh", None, h, dh, backend=backend)
    grads["w1"] = ops.matmul(x, dz, trans_a=True, backend=backend)
    grads["b1"] = ops.bias_grad(dz, backend=backend)
    for name, g in grads.items():
        ops.adam_update(arrays[name], g, arrays["m_" + name], arrays["v_" + name], t, lr=0.01, backend=backend)
    return loss


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_steps_on_device_arrays_read_back_only_the_loss(monkeypatch, dtype):
    rng = _rng("train")
    n, d_in, hidden, classes = 4, 11, 7, 5
    host = {"x": rng.standard_normal((n, d_in)), "w1": rng.standard_normal((d_in, hidden)) * 0.3,
            "b1": rng.standard_normal(hidden) * 0.1, "w2": rng.standard_normal((hidden, classes)) * 0.3,
            "b2": rng.standard_normal(classes) * 0.1}
    for name in ("w1", "b1", "w2", "b2"):
        host["m_" + name] = np.zeros_like(host[name])
        host["v_" + name] = np.zeros_like(host[name])
    host = {k: v.astype(dtype) for k, v in host.items()}
    labels = rng.integers(0, classes, size=n)
    device = {k: cuda.to_device(v) for k, v in host.items()}
    device_labels = cuda.to_device(labels)

    transfers = {"to_device": 0, "copy_to_host": 0}
    to_device, copy_to_host = cuda.to_device, type(device["x"]).copy_to_host

    def counting_to_device(*args, **kwargs):
        transfers["to_device"] += 1
        return to_device(*args, **kwargs)

    def counting_copy_to_host(self, *args, **kwargs):
        transfers["copy_to_host"] += 1
        return copy_to_host(self, *args, **kwargs)

    monkeypatch.setattr(cuda, "to_device", counting_to_device)
    monkeypatch.setattr(type(device["x"]), "copy_to_host", counting_copy_to_host)
    device_losses = [_training_step(device, device_labels, t, "cuda") for t in (1, 2)]
    assert transfers == {"to_device": 0, "copy_to_host": 2}  # one loss scalar per step
    monkeypatch.undo()

    host_losses = [_training_step(host, labels, t, "numpy") for t in (1, 2)]
    assert_close(device_losses, host_losses, dtype, factor=64)
    for name in ("w1", "b1", "w2", "b2"):
        assert_close(device[name].copy_to_host(), host[name], dtype, factor=64)
