"""Gradient clipping by global norm, with ``torch.nn.utils.clip_grad_norm_``'s semantics::

    loss, _ = model.compute_gradients(xb, yb, loss_fn)
    total = clip_grad_norm_(model, max_norm=1.0)   # the norm before clipping
    optimizer.step()

The norm is taken over all the gradients together, as if they were one vector; when it
exceeds ``max_norm`` every gradient is scaled by ``max_norm / (total + 1e-6)``. The
reductions (``ops.sum_squares``, ``ops.max_abs``, in float64) and the scaling
(``ops.scale``, in place) are backend kernels, so the gradients stay where they live
(device memory for "cuda").
"""

from __future__ import annotations

import math
import numbers

from . import ops

__all__ = ["clip_grad_norm_"]

_EPS = 1e-6  # torch's: keeps the coefficient finite for a zero norm


def _gradients_and_backend(gradients, backend):
    """The gradient arrays and the backend they compute on, from a model or optimizer
    (``gradients()`` / ``grads``, its own backend) or an iterable of arrays."""
    if callable(getattr(gradients, "gradients", None)):  # a model
        return list(gradients.gradients()), backend or gradients.backend
    if hasattr(gradients, "grads") and hasattr(gradients, "params"):  # a bound optimizer
        return list(gradients.grads), backend or gradients.backend
    if hasattr(gradients, "shape"):  # one array
        return [gradients], backend
    try:
        return list(gradients), backend
    except TypeError:
        raise TypeError("clip_grad_norm_: expected a model, a bound optimizer, or gradient arrays, "
                        f"got {type(gradients).__name__}") from None


def clip_grad_norm_(gradients, max_norm, norm_type=2.0, error_if_nonfinite: bool = False, *,
                    backend=None) -> float:
    """Scale ``gradients`` in place so that their global norm is at most ``max_norm``;
    returns the global norm they had (a float), as ``torch.nn.utils.clip_grad_norm_``.

    ``gradients``: an nnkern model (its ``gradients()``, after a backward pass), a bound
    optimizer (its gradients), or gradient arrays. ``norm_type``: 2 (Euclidean) or
    ``inf`` (largest magnitude). The scale is ``max_norm / (total + 1e-6)``, applied
    when below 1. A NaN or infinite norm raises RuntimeError with
    ``error_if_nonfinite``; otherwise the gradients are scaled by it, as torch does
    (NaN for a NaN norm, 0 for an infinite one). ``backend``: the kernels' backend
    (None: the model's or optimizer's, else the current one)."""
    op = "clip_grad_norm_"
    grads, backend = _gradients_and_backend(gradients, backend)
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real) or not (
            math.isfinite(max_norm) and max_norm >= 0):
        raise ValueError(f"{op}: max_norm must be a finite number >= 0, got {max_norm!r}")
    if isinstance(norm_type, str) and norm_type.lower() == "inf":
        norm_type = math.inf
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real) or norm_type not in (2, math.inf):
        raise ValueError(f"{op}: norm_type must be 2 or inf, got {norm_type!r}")
    if not grads:
        return 0.0
    if norm_type == math.inf:
        norms = [ops.max_abs(g, backend=backend) for g in grads]
        total = math.nan if any(math.isnan(n) for n in norms) else max(norms)  # (max() can pass over a NaN)
    else:
        total = math.sqrt(sum(ops.sum_squares(g, backend=backend) for g in grads))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"{op}: the total norm of order {norm_type} of the gradients is non-finite ({total}), "
                           "so it cannot be clipped; to scale the gradients by it anyway, set "
                           "error_if_nonfinite=False")
    coefficient = max_norm / (total + _EPS)
    if not coefficient >= 1.0:  # below 1, or NaN for a NaN norm
        for g in grads:
            ops.scale(g, coefficient, backend=backend)
    return total
