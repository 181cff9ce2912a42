"""Numerical gradients by central differences, and the gradient check of a model.

    from nnkern.grad import numerical_gradient, gradcheck, assert_gradcheck
    g = numerical_gradient(lambda x: float((x ** 2).sum()), np.array([-3.0, 4.0]))   # [-6, 8]
    errors = gradcheck(model, "cross_entropy", x, y)      # {"0.W": 3e-10, "0.b": 1e-10, ...}
"""

from __future__ import annotations

import numpy as np

from . import _arrays, _validate
from .models import Graph

__all__ = ["numerical_gradient", "gradcheck", "assert_gradcheck", "gradients_match", "relative_error",
           "GRADCHECK_TOLERANCE"]

GRADCHECK_TOLERANCE = 1e-6
"""Largest relative error :func:`assert_gradcheck` accepts by default: central differences
with h = 1e-4 in float64 are good to ~1e-8 on smooth functions."""


def numerical_gradient(f, x: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """The gradient of the scalar function ``f(x)`` at ``x`` by central differences,
    ``(f(x + h e_i) - f(x - h e_i)) / (2h)`` for every element i of ``x`` (any shape).

    ``x`` is perturbed in place, one element at a time, and restored afterwards (also
    when ``f`` raises). Returns a float64 array of ``x``'s shape.
    """
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise TypeError(f"numerical_gradient: x must be a float NumPy array (it is perturbed in place), got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, np.ndarray) else ""))
    if not x.flags.writeable:
        raise ValueError("numerical_gradient: x is read-only (it is perturbed in place)")
    h = _validate.real("numerical_gradient", "h", h, low=0, low_open=True)
    grad = np.zeros(x.shape, dtype=np.float64)
    for index in np.ndindex(x.shape):
        original = x[index]
        try:
            x[index] = original + h
            f_plus = float(f(x))
            x[index] = original - h
            f_minus = float(f(x))
        finally:
            x[index] = original
        grad[index] = (f_plus - f_minus) / (2 * h)
    return grad


def relative_error(analytic, numeric) -> float:
    """``max |a - n| / max(max |a|, max |n|)``: the worst difference relative to the
    largest gradient entry (0 when both are zero)."""
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    scale = max(np.max(np.abs(analytic), initial=0.0), np.max(np.abs(numeric), initial=0.0))
    worst = np.max(np.abs(analytic - numeric), initial=0.0)
    return float(worst / scale) if scale > 0 else float(worst)


def gradcheck(model: Graph, loss, x, y, *, h: float = 1e-4, loss_weights=None) -> dict[str, float]:
    """Compare every parameter gradient of ``model`` (from its backward pass) with the
    numerical gradient of ``loss(model(x), y)``, both in float64 on the model's backend.

    A float32 model is checked through a float64 copy of it. Layers run in evaluation
    mode (Dropout off). Returns ``{parameter name: relative error}`` (see
    :func:`relative_error`), names as in ``model.named_parameters()``. A graph model
    with several inputs or outputs takes ``x``, ``y``, ``loss`` and ``loss_weights`` as
    its ``fit`` does; the function checked is then the weighted sum of the losses.
    """
    if any(_arrays.is_device_array(p) for p in model.parameters()):
        raise ValueError(f"gradcheck: runs on host backends; the model lives on {model.backend!r} device memory")
    if model.dtype != np.float64:
        model = model.clone(dtype=np.float64)
    objective = model._objective(loss, loss_weights)
    inputs = [np.ascontiguousarray(a, dtype=np.float64) for a in model._input_arrays(x)]
    targets = model._target_arrays(y)

    def loss_value(_=None) -> float:
        return objective.forward(model._forward(inputs, training=False), targets, model.backend)

    loss_value()
    model._backward(objective.backward(), input_grad=False)
    analytic = {name: np.array(g, dtype=np.float64) for (name, _), g in zip(model.named_parameters(), model.gradients())}
    return {name: relative_error(analytic[name], numerical_gradient(loss_value, p, h))
            for name, p in model.named_parameters()}


def assert_gradcheck(model: Graph, loss, x, y, *, tol: float = GRADCHECK_TOLERANCE,
                     h: float = 1e-4, loss_weights=None) -> dict[str, float]:
    """:func:`gradcheck`, raising AssertionError naming every parameter whose relative
    error exceeds ``tol``; returns the errors when all pass."""
    errors = gradcheck(model, loss, x, y, h=h, loss_weights=loss_weights)
    failed = {name: error for name, error in errors.items() if not error <= tol}
    if failed:
        listing = ", ".join(f"{name}: {error:.3g}" for name, error in failed.items())
        raise AssertionError(f"gradcheck: relative error above {tol:g} for {listing}")
    return errors


def gradients_match(model: Graph, loss, x, y, *, tol: float = GRADCHECK_TOLERANCE, h: float = 1e-4,
                    loss_weights=None) -> bool:
    """Whether every parameter gradient of ``model`` agrees with the numerical one within ``tol``."""
    return all(error <= tol for error in gradcheck(model, loss, x, y, h=h, loss_weights=loss_weights).values())
