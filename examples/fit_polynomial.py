"""Fit y = w1 x^2 + w2 x + w3 by gradient descent on the mean squared error.

The data come from y = 2 x^2 + 3 x + 4 (plus a little noise); the model is one affine layer
on the features (x^2, x), whose two weights and bias are w1, w2 and w3. Each step is the
chain rule written out with nnkern's kernels:

    pred = features @ w + b                      ops.linear
    loss, dpred = mean((pred - y)^2), its grad   ops.mse
    dw = features.T @ dpred, db = sum(dpred)     ops.matmul, ops.bias_grad
    w -= lr * dw, b -= lr * db                   ops.sgd_update

    python examples/fit_polynomial.py
"""

from __future__ import annotations

import numpy as np

from nnkern import ops

TRUE_COEFFICIENTS = (2.0, 3.0, 4.0)  # w1 (x^2), w2 (x), w3 (constant)


def make_data(n=200, noise=0.05, seed=0):
    """``n`` points of y = 2 x^2 + 3 x + 4 + noise for x uniform in [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=n)
    w1, w2, w3 = TRUE_COEFFICIENTS
    y = w1 * x**2 + w2 * x + w3 + noise * rng.standard_normal(n)
    return x, y


def fit(x, y, *, lr=0.5, steps=1000, backend=None, log_every=0):
    """The coefficients (w1, w2, w3) found by ``steps`` full-batch gradient-descent steps."""
    features = np.column_stack([x**2, x])
    target = y.reshape(-1, 1)
    w = np.zeros((2, 1))
    b = np.zeros(1)
    for step in range(1, steps + 1):
        pred = ops.linear(features, w, b, backend=backend)
        loss, dpred = ops.mse(pred, target, backend=backend)
        dw = ops.matmul(features, dpred, trans_a=True, backend=backend)
        db = ops.bias_grad(dpred, backend=backend)
        ops.sgd_update(w, dw, lr, backend=backend)
        ops.sgd_update(b, db, lr, backend=backend)
        if log_every and step % log_every == 0:
            print(f"step {step:5d}  mse {loss:.6f}  w1 {w[0, 0]:.4f}  w2 {w[1, 0]:.4f}  w3 {b[0]:.4f}")
    return float(w[0, 0]), float(w[1, 0]), float(b[0])


def main(*, n=200, lr=0.5, steps=1000, seed=0, backend=None, log_every=200):
    x, y = make_data(n, seed=seed)
    coefficients = fit(x, y, lr=lr, steps=steps, backend=backend, log_every=log_every)
    print("learned  y = {:.3f} x^2 + {:.3f} x + {:.3f}".format(*coefficients))
    print("true     y = {:.3f} x^2 + {:.3f} x + {:.3f}".format(*TRUE_COEFFICIENTS))
    return coefficients


if __name__ == "__main__":
    main()
