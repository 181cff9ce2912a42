"""The normalisation kernels (ops.batch_norm_forward/backward, ops.layer_norm_forward/backward):
every fast CPU backend against the NumPy reference on many shapes (one row or one column
where allowed, primes, more columns than a Cython column block (64), sizes above the
threading threshold, non-contiguous inputs, float32 and float64), the reference against
torch in float64 and against central differences, and the boundary checks.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from nnkern import ops
from nnkern.grad import numerical_gradient
from _tolerance import rtol

torch = pytest.importorskip("torch")

DTYPES = [np.float32, np.float64]
# (rows, columns): BatchNorm needs two rows or more in training
SHAPES = [(2, 1), (3, 7), (13, 5), (31, 97), (2, 130), (257, 131)]
LAYER_SHAPES = [(1, 1), (1, 9), *SHAPES]


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _case(shape, dtype, *key):
    """x (shifted and scaled so that the statistics are not trivial), weight, bias, grad_out."""
    rng = _rng(shape, np.dtype(dtype).name, *key)
    n, c = shape
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3, c) + rng.uniform(-2, 2, c)).astype(dtype)
    return (x, rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype),
            rng.standard_normal(shape).astype(dtype))


def assert_near(got, want, dtype, factor=8.0):
    """Within ``factor`` elementwise tolerances of the dtype, relative to the largest value
    (the kernels sum in double in other orders than the reference)."""
    want = np.asarray(want, np.float64)
    scale = np.abs(want).max() + 1.0
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=factor * rtol(dtype) * scale)


def _noncontiguous(a):
    """The same values in a strided view (every other column of a wider array)."""
    wide = np.zeros((a.shape[0], 2 * a.shape[1]), dtype=a.dtype)
    wide[:, ::2] = a
    return wide[:, ::2]


# -- fast backends against the reference --------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_training_matches_reference(fast_backend, threads, shape, dtype):
    x, w, b, g = _case(shape, dtype, "bn")
    results = {}
    for backend in ("numpy", fast_backend):
        rm, rv = np.linspace(-1, 1, shape[1]).astype(dtype), np.linspace(0.5, 2, shape[1]).astype(dtype)
        y, mean, invstd = ops.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, momentum=0.3,
                                                 backend=backend)
        dx, dw, db = ops.batch_norm_backward(x, g, w, mean, invstd, backend=backend)
        results[backend] = (y, mean, invstd, rm, rv, dx, dw, db)
    for got, want in zip(results[fast_backend], results["numpy"]):
        assert got.dtype == np.dtype(dtype)
        assert_near(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 6), *SHAPES])
def test_batch_norm_evaluation_matches_reference(fast_backend, shape, dtype):
    x, w, b, g = _case(shape, dtype, "bn-eval")
    rm, rv = np.linspace(-1, 1, shape[1]).astype(dtype), np.linspace(0.5, 2, shape[1]).astype(dtype)
    results = {}
    for backend in ("numpy", fast_backend):
        y, mean, invstd = ops.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, training=False,
                                                 backend=backend)
        dx, dw, db = ops.batch_norm_backward(x, g, w, mean, invstd, training=False, backend=backend)
        results[backend] = (y, mean, invstd, dx, dw, db)
    for got, want in zip(results[fast_backend], results["numpy"]):
        assert_near(got, want, dtype)
    np.testing.assert_array_equal(rm, np.linspace(-1, 1, shape[1]).astype(dtype))  # evaluation updates nothing


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LAYER_SHAPES)
def test_layer_norm_matches_reference(fast_backend, threads, shape, dtype):
    x, w, b, g = _case(shape, dtype, "ln")
    results = {}
    for backend in ("numpy", fast_backend):
        y, mean, invstd = ops.layer_norm_forward(x, w, b, eps=1e-3, backend=backend)
        results[backend] = (y, mean, invstd, *ops.layer_norm_backward(x, g, w, mean, invstd, backend=backend))
    for got, want in zip(results[fast_backend], results["numpy"]):
        assert got.dtype == np.dtype(dtype)
        assert_near(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_noncontiguous_and_absent_affine_arguments(any_backend, dtype):
    """Strided inputs give what their contiguous copies give; weight/bias None are 1 and 0;
    a strided running statistic is updated in place."""
    x, w, b, g = _case((9, 11), dtype, "strided")
    ones, zeros = np.ones(11, dtype), np.zeros(11, dtype)
    rm_strided = np.zeros((11, 2), dtype)[:, 0]
    rv_strided = np.ones((11, 2), dtype)[:, 0]
    rm, rv = np.zeros(11, dtype), np.ones(11, dtype)
    got = ops.batch_norm_forward(_noncontiguous(x), None, None, running_mean=rm_strided, running_var=rv_strided,
                                 backend=any_backend)
    want = ops.batch_norm_forward(x, ones, zeros, running_mean=rm, running_var=rv, backend=any_backend)
    for a, e in zip((*got, rm_strided, rv_strided), (*want, rm, rv)):
        np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(ops.batch_norm_backward(x, _noncontiguous(g), None, *want[1:], backend=any_backend)[0],
                                  ops.batch_norm_backward(x, g, ones, *want[1:], backend=any_backend)[0])
    got = ops.layer_norm_forward(np.asfortranarray(x), w[::-1], b, backend=any_backend)
    want = ops.layer_norm_forward(x, np.ascontiguousarray(w[::-1]), b, backend=any_backend)
    for a, e in zip(got, want):
        np.testing.assert_array_equal(a, e)


def test_out_buffers_are_used(any_backend):
    x, w, b, g = _case((6, 4), np.float64, "out")
    out, mean, invstd = np.empty((6, 4)), np.empty(4), np.empty(4)
    result = ops.batch_norm_forward(x, w, b, out=out, mean=mean, invstd=invstd, backend=any_backend)
    assert result[0] is out and result[1] is mean and result[2] is invstd
    dx, dw, db = np.empty((6, 4)), np.empty(4), np.empty(4)
    grads = ops.batch_norm_backward(x, g, w, mean, invstd, dx=dx, dweight=dw, dbias=db, backend=any_backend)
    assert grads[0] is dx and grads[1] is dw and grads[2] is db
    mean6, invstd6 = np.empty(6), np.empty(6)
    result = ops.layer_norm_forward(x, w, b, out=out, mean=mean6, invstd=invstd6, backend=any_backend)
    assert result[0] is out and result[1] is mean6 and result[2] is invstd6
    grads = ops.layer_norm_backward(x, g, w, mean6, invstd6, dx=dx, dweight=dw, dbias=db, backend=any_backend)
    assert grads[0] is dx and grads[1] is dw and grads[2] is db


# -- the reference against torch (float64) and against central differences ----------------


@pytest.mark.parametrize("momentum", [0.1, 0.7])
def test_batch_norm_against_torch(any_backend, momentum):
    backend = any_backend
    torch_bn = torch.nn.BatchNorm1d(7, momentum=momentum, dtype=torch.float64)
    rm, rv = np.zeros(7), np.ones(7)
    for step in range(3):  # running statistics over several batches
        x, w, b, g = _case((5 + step, 7), np.float64, "torch-bn", step)
        with torch.no_grad():
            torch_bn.weight.copy_(torch.from_numpy(w))
            torch_bn.bias.copy_(torch.from_numpy(b))
        xt = torch.from_numpy(x).requires_grad_()
        torch_bn.weight.grad = torch_bn.bias.grad = None
        yt = torch_bn.train()(xt)
        yt.backward(torch.from_numpy(g))
        y, mean, invstd = ops.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, momentum=momentum,
                                                 backend=backend)
        dx, dw, db = ops.batch_norm_backward(x, g, w, mean, invstd, backend=backend)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(dw, torch_bn.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(db, torch_bn.bias.grad.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(rm, torch_bn.running_mean.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rv, torch_bn.running_var.numpy(), rtol=1e-12, atol=1e-14)
    # evaluation: the running statistics, and the gradient through them as constants
    xt = torch.from_numpy(x).requires_grad_()
    yt = torch_bn.eval()(xt)
    yt.backward(torch.from_numpy(g))
    y, mean, invstd = ops.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, training=False, backend=backend)
    dx, _, _ = ops.batch_norm_backward(x, g, w, mean, invstd, training=False, backend=backend)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_layer_norm_against_torch(any_backend):
    backend = any_backend
    x, w, b, g = _case((6, 9), np.float64, "torch-ln")
    torch_ln = torch.nn.LayerNorm(9, eps=1e-4, dtype=torch.float64)
    with torch.no_grad():
        torch_ln.weight.copy_(torch.from_numpy(w))
        torch_ln.bias.copy_(torch.from_numpy(b))
    xt = torch.from_numpy(x).requires_grad_()
    yt = torch_ln(xt)
    yt.backward(torch.from_numpy(g))
    y, mean, invstd = ops.layer_norm_forward(x, w, b, eps=1e-4, backend=backend)
    dx, dw, db = ops.layer_norm_backward(x, g, w, mean, invstd, backend=backend)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(dw, torch_ln.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, torch_ln.bias.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["batch_train", "batch_eval", "layer"])
def test_gradients_against_central_differences(any_backend, kind):
    """d/dx, d/dweight, d/dbias of sum(y * G) against central differences (h = 1e-6)."""
    x, w, b, g = _case((5, 4), np.float64, "numeric", kind)
    rm, rv = np.linspace(-0.5, 0.5, 4), np.linspace(0.5, 1.5, 4)

    def forward(x_, w_, b_):
        if kind == "layer":
            return ops.layer_norm_forward(x_, w_, b_, backend=any_backend)
        return ops.batch_norm_forward(x_, w_, b_, running_mean=rm.copy(), running_var=rv.copy(),
                                      training=kind == "batch_train", backend=any_backend)

    y, mean, invstd = forward(x, w, b)
    if kind == "layer":
        grads = ops.layer_norm_backward(x, g, w, mean, invstd, backend=any_backend)
    else:
        grads = ops.batch_norm_backward(x, g, w, mean, invstd, training=kind == "batch_train", backend=any_backend)
    arguments = [x.copy(), w.copy(), b.copy()]
    for i, analytic in enumerate(grads):
        def objective(value, i=i):
            args = list(arguments)
            args[i] = value
            return float(np.sum(forward(*args)[0] * g))

        numeric = numerical_gradient(objective, arguments[i].copy(), h=1e-6)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


# -- the boundary -------------------------------------------------------------------------


def test_batch_norm_rejects_bad_arguments(any_backend):
    x, w, b, _ = _case((4, 3), np.float64, "bad")
    be = {"backend": any_backend}
    with pytest.raises(ValueError, match=r"more than one sample.*\(1x3\)"):
        ops.batch_norm_forward(x[:1], w, b, **be)
    with pytest.raises(ValueError, match=r"weight has shape \(2\), expected \(3,\)"):
        ops.batch_norm_forward(x, w[:2], b, **be)
    with pytest.raises(ValueError, match="must be 2-D"):
        ops.batch_norm_forward(x.ravel(), **be)
    with pytest.raises(ValueError, match="is empty"):
        ops.batch_norm_forward(np.empty((0, 3)), **be)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        ops.batch_norm_forward(x, running_mean=np.zeros(3), **be)
    with pytest.raises(ValueError, match="evaluation"):
        ops.batch_norm_forward(x, training=False, **be)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        ops.batch_norm_forward(x, momentum=1.5, **be)
    with pytest.raises(ValueError, match="eps must be > 0"):
        ops.batch_norm_forward(x, eps=0.0, **be)
    with pytest.raises(ValueError, match=r"running_var has shape \(4\)"):
        ops.batch_norm_forward(x, running_mean=np.zeros(3), running_var=np.ones(4), **be)
    with pytest.raises(TypeError, match="running_mean has dtype float32"):
        ops.batch_norm_forward(x, running_mean=np.zeros(3, np.float32), running_var=np.ones(3), **be)
    with pytest.raises(TypeError, match="updated in place"):
        ops.batch_norm_forward(x, running_mean=[0.0, 0.0, 0.0], running_var=np.ones(3), **be)
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        ops.batch_norm_forward(x, running_mean=frozen, running_var=np.ones(3), **be)
    with pytest.raises(TypeError, match="complex"):
        ops.batch_norm_forward(x.astype(complex), **be)
    with pytest.raises(ValueError, match=r"grad_out has shape \(4x2\) but x has shape \(4x3\)"):
        ops.batch_norm_backward(x, x[:, :2], w, np.zeros(3), np.ones(3), **be)
    with pytest.raises(ValueError, match=r"invstd has shape \(4\), expected \(3\)"):
        ops.batch_norm_backward(x, x, w, np.zeros(3), np.ones(4), **be)


def test_layer_norm_rejects_bad_arguments(any_backend):
    x, w, b, _ = _case((4, 3), np.float64, "bad-ln")
    be = {"backend": any_backend}
    with pytest.raises(ValueError, match=r"bias has shape \(4\), expected \(3,\)"):
        ops.layer_norm_forward(x, w, np.zeros(4), **be)
    with pytest.raises(ValueError, match="is empty"):
        ops.layer_norm_forward(np.empty((2, 0)), **be)
    with pytest.raises(ValueError, match=r"mean has shape \(3\), expected \(4\)"):
        ops.layer_norm_backward(x, x, w, np.zeros(3), np.ones(4), **be)
    with pytest.raises(TypeError, match="out has dtype float32"):
        ops.layer_norm_forward(x, out=np.empty((4, 3), np.float32), **be)


def test_integer_inputs_compute_in_float64(any_backend):
    y, mean, invstd = ops.layer_norm_forward(np.arange(6).reshape(2, 3), backend=any_backend)
    assert y.dtype == np.float64
    np.testing.assert_allclose(mean, [1.0, 4.0])
