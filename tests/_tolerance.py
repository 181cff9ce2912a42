"""Tolerances that follow the dtype (and the length of a reduction), and the optimizer update
cases: one place for the CPU and the CUDA kernel tests."""

from __future__ import annotations

import numpy as np

# Elementwise functions (exp, tanh, erf, log) differ by a few ulp between libm, NumPy and
# vectorised versions; these bounds sit well above that and well below any real bug.
ELEMENTWISE_RTOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-13}


def rtol(dtype) -> float:
    return ELEMENTWISE_RTOL[np.dtype(dtype)]


def assert_close(actual, expected, dtype, scale=1.0, factor=1.0):
    """|actual - expected| <= factor * rtol(dtype) * (|expected| + scale)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    tol = factor * rtol(dtype)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def assert_matmul_close(c, a_op, b_op):
    """The classic error bound of a length-k dot product in the inputs' precision:
    |C - A@B| <= 2 k eps (|A| @ |B|), checked against the float64 product of the same inputs."""
    dtype = np.dtype(c.dtype)
    a64, b64 = np.asarray(a_op, np.float64), np.asarray(b_op, np.float64)
    exact = a64 @ b64
    k = a64.shape[1]
    bound = 2 * max(k, 1) * np.finfo(dtype).eps * (np.abs(a64) @ np.abs(b64)) + np.finfo(dtype).tiny
    err = np.abs(np.asarray(c, np.float64) - exact)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else None
    assert np.all(err <= bound), (
        f"matmul error {err[worst]:.3g} exceeds bound {bound[worst]:.3g} at {worst} (k={k}, {dtype})"
    )


def assert_linear_close(got, x, w, b, act, params):
    """A fused linear layer against the exact pre-activation in float64 followed by the
    reference activation: the product's error (k eps |x||w|) times the activation's slope
    (<= 1.13, for gelu)."""
    from nnkern import ops

    dtype, k = np.dtype(got.dtype), x.shape[1]
    z = x.astype(np.float64) @ w.astype(np.float64) + b
    want = ops.activation(act, z, backend="numpy", **params)
    scale = (np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64))).max() + 1
    if act == "step":  # discontinuous at 0: compare away from it
        keep = np.abs(z) > 4 * k * np.finfo(dtype).eps * scale
        np.testing.assert_array_equal(got[keep], want[keep])
    else:
        tol = 2 * k * np.finfo(dtype).eps * scale * 1.2 + 4 * np.finfo(dtype).eps * (np.abs(want).max() + 1)
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=0, atol=tol)


# Each optimizer update kernel: (number of state arrays, hyperparameters as torch's defaults)
UPDATES = {
    "sgd_update": (0, dict(lr=0.1)),
    "momentum_update": (1, dict(lr=0.1, momentum=0.9)),
    "nesterov_update": (1, dict(lr=0.1, momentum=0.9)),
    "adagrad_update": (1, dict(lr=0.01, eps=1e-10)),
    "rmsprop_update": (1, dict(lr=0.01, alpha=0.99, eps=1e-8)),
    "adadelta_update": (2, dict(lr=1.0, rho=0.9, eps=1e-6)),
    "adam_update": (2, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)),
    # a large lr * weight_decay, so that the decoupled decay moves p by more than rounding
    "adamw_update": (2, dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.5)),
}
# the updates that take the step number t after their state arrays
STEPPED_UPDATES = ("adam_update", "adamw_update")
