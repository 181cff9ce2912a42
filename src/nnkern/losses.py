"""Losses: :class:`CrossEntropyLoss` (fused softmax, integer labels or target rows),
:class:`MSELoss`, :class:`BCELoss`, each a kernel call that keeps its gradient, and the
:class:`Objective` a model trains on (one loss per output, weighted)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _arrays, _validate, ops
from ._backend import get_backend
from ._workspace import Buffers
from .backends.numpy_backend import BCE_CLAMP
from .layers import add_into


class FusedHead(NamedTuple):
    """How the fused CPU engines (:mod:`nnkern.engine`) compute a loss in one pass over the
    last Linear's output z: ``name``, one of :data:`nnkern.backends.OUTPUT_HEADS` (which
    says what it makes of z), the loss's gradient by z being ``grad_scale * (p - y)`` times
    each row's scale, and a row's loss ``loss_scale`` times its outputs' summed losses, times
    the row's scale. The row's scale: 1 / rows, or its share of the batch's sample weights;
    with ``sums_rows`` (a loss summed over the rows) 1, or its sample weight."""

    name: str
    grad_scale: float = 1.0
    loss_scale: float = 1.0
    sums_rows: bool = False


class Loss:
    """A loss: ``forward(pred, target)`` returns the mean loss as a float and keeps the
    gradient with respect to ``pred``, which ``backward()`` returns. ``correct(pred,
    target)`` counts correctly classified samples (None for regression losses).

    ``forward(..., sample_weight=w)`` takes the weighted mean over the rows instead,
    ``sum(w_i * loss_i) / sum(w)`` (each row's loss_i the mean over its outputs), and
    scales each row's gradient by its share ``w_i / sum(w)`` in place of ``1 / N`` (a
    loss that sums over the rows, MSELoss's "half_sum", weighs each row's term by w_i): the
    kernel computes the plain mean, then the rows' losses are summed again on the host with
    their weights (a small host pass, as scikit-learn's weighted losses are).
    """

    name = ""
    classification = False

    def __init__(self):
        self._buffers = Buffers()
        self._grad = None

    def __call__(self, pred, target, *, backend=None, sample_weight=None) -> float:
        return self.forward(pred, target, backend=backend, sample_weight=sample_weight)

    def _grad_buffer(self, pred, backend: str):
        memory = backend if _arrays.is_device_array(pred) else "numpy"
        return self._buffers.get("grad", tuple(pred.shape), pred.dtype, memory)

    @staticmethod
    def _float_target(pred, target):
        """Float targets in the prediction's dtype and shape ((N,) targets for a (N, 1)
        prediction are reshaped), so the loss gradient has the model's dtype."""
        if _arrays.is_device_array(target):
            return target
        target = np.asarray(target)
        if target.dtype != pred.dtype and target.dtype.kind in "fiub":
            target = target.astype(pred.dtype)
        if target.ndim == 1 and len(pred.shape) == 2 and pred.shape[1] == 1:
            target = target.reshape(-1, 1)
        return target

    def forward(self, pred, target, *, backend=None, sample_weight=None) -> float:
        backend = backend or get_backend()
        loss = self._forward(pred, target, backend)
        if sample_weight is None:
            return loss
        rows = pred.shape[0]
        weights = np.asarray(sample_weight, dtype=np.float64)
        if weights.shape != (rows,):
            raise ValueError(f"{type(self).__name__}: sample_weight of shape {weights.shape} for {rows} rows")
        total = weights.sum()
        if not total > 0:
            raise ValueError(f"{type(self).__name__}: the sample weights of a batch sum to {total}; they must be > 0")
        scale = self._row_scale(weights, total)
        grad = _arrays.to_host(self._grad)
        self._grad[...] = grad * scale.astype(grad.dtype).reshape((rows,) + (1,) * (grad.ndim - 1))
        terms = self._row_terms(_arrays.to_host(pred), _arrays.to_host(target))
        return float(np.dot(scale, terms))

    def _row_scale(self, weights: np.ndarray, total: float) -> np.ndarray:
        """What each row's part of the plain loss (and its gradient) is multiplied by: for
        a mean over the rows, its share of the weights times the rows."""
        return weights * (len(weights) / total)

    def _forward(self, pred, target, backend: str) -> float:
        """The plain mean loss by the backend's kernel, its gradient kept in ``_grad``."""
        raise NotImplementedError

    def _row_terms(self, pred: np.ndarray, target) -> np.ndarray:
        """Each row's part of the plain loss (they sum to it), on the host in float64."""
        raise NotImplementedError

    def backward(self):
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._grad

    def correct(self, pred, target) -> int | None:
        return None

    def fused_head(self, outputs: int) -> FusedHead | None:
        """This loss as the fused CPU engines compute it on a network of ``outputs``
        outputs, or None where they do not (it trains layer by layer)."""
        return None

    def config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class CrossEntropyLoss(Loss):
    """Softmax cross entropy on logits (ops.softmax_cross_entropy, fused), averaged over
    the batch. Targets: integer class indices (N,) or one-hot / probability rows (N, C)."""

    name = "cross_entropy"
    classification = True

    def _forward(self, pred, target, backend):
        if not _arrays.is_device_array(target):
            target = np.asarray(target)
            if target.ndim == 2:
                target = self._float_target(pred, target)
        loss, self._grad = ops.softmax_cross_entropy(pred, target, out=self._grad_buffer(pred, backend),
                                                     backend=backend)
        return loss

    def _row_terms(self, pred, target):
        z = pred.astype(np.float64)
        log_norm = np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1)
        target = np.asarray(target)
        if target.ndim == 2:
            losses = (target * (log_norm[:, None] - z)).sum(axis=1)
        else:
            losses = log_norm - z[np.arange(len(z)), target]
        return losses / len(z)

    def fused_head(self, outputs):
        return FusedHead("softmax_cross_entropy")

    def correct(self, pred, target) -> int:
        predicted = np.argmax(_arrays.to_host(pred), axis=1)
        target = np.asarray(_arrays.to_host(target))
        labels = np.argmax(target, axis=1) if target.ndim == 2 else target
        return int(np.count_nonzero(predicted == labels))


class MSELoss(Loss):
    """Mean squared error (ops.mse): ``reduction="mean"`` is the mean over all elements
    (PyTorch's MSELoss); ``"half_sum"`` is the source material's ``0.5 * sum``."""

    name = "mse"

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = _validate.choice("MSELoss", "reduction", reduction, ("mean", "half_sum"))

    def _forward(self, pred, target, backend):
        loss, self._grad = ops.mse(pred, self._float_target(pred, target), reduction=self.reduction,
                                   out=self._grad_buffer(pred, backend), backend=backend)
        return loss

    def _row_scale(self, weights, total):
        return weights if self.reduction == "half_sum" else super()._row_scale(weights, total)

    def fused_head(self, outputs):
        if self.reduction == "half_sum":  # 0.5 * sum of squares, gradient p - y
            return FusedHead("identity_squared", 1.0, 0.5, sums_rows=True)
        return FusedHead("identity_squared", 2.0 / outputs, 1.0 / outputs)  # the mean over all elements

    def _row_terms(self, pred, target):
        squares = (pred.astype(np.float64) - self._float_target(pred, target)) ** 2
        squares = squares.reshape(len(squares), -1)
        return 0.5 * squares.sum(axis=1) if self.reduction == "half_sum" else squares.sum(axis=1) / squares.size

    def config(self):
        return {"reduction": self.reduction}


class BCELoss(Loss):
    """Binary cross entropy on probabilities (e.g. after Sigmoid), averaged over all
    elements, logs clamped at log(1e-12) (ops.binary_cross_entropy). A sample counts as
    correct when every output is on the same side of 0.5 as its target."""

    name = "binary_cross_entropy"
    classification = True

    def _forward(self, pred, target, backend):
        loss, self._grad = ops.binary_cross_entropy(pred, self._float_target(pred, target),
                                                    out=self._grad_buffer(pred, backend), backend=backend)
        return loss

    def _row_terms(self, pred, target):
        p = pred.astype(np.float64).reshape(len(pred), -1)
        t = np.asarray(self._float_target(pred, target), dtype=np.float64).reshape(len(pred), -1)
        logs = t * np.log(np.maximum(p, BCE_CLAMP)) + (1.0 - t) * np.log(np.maximum(1.0 - p, BCE_CLAMP))
        return -logs.sum(axis=1) / p.size

    def fused_head(self, outputs):
        # the mean over all elements; the engines apply the model's last Sigmoid themselves
        return FusedHead("sigmoid_bce", 1.0 / outputs, 1.0 / outputs)

    def correct(self, pred, target) -> int:
        pred = _arrays.to_host(pred)
        target = self._float_target(pred, _arrays.to_host(target))
        right = (pred > 0.5) == (target > 0.5)
        return int(np.count_nonzero(right.all(axis=1) if right.ndim == 2 else right))


_LOSSES = {"cross_entropy": CrossEntropyLoss, "mse": MSELoss,
           "binary_cross_entropy": BCELoss, "bce": BCELoss}


def get_loss(loss) -> Loss:
    """A Loss instance from a Loss or one of the names "cross_entropy", "mse",
    "binary_cross_entropy" (or "bce")."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in _LOSSES:
        return _LOSSES[loss]()
    raise ValueError(f"unknown loss {loss!r}; use a Loss or one of {', '.join(_LOSSES)}")


# ---------------------------------------------------------------------------------------
# Training progress
# ---------------------------------------------------------------------------------------


class Objective:
    """What a model is trained on: one loss per output, each with a weight. Its value is
    ``sum(weight * loss)``, and each output's loss gradient is scaled by its weight."""

    def __init__(self, losses: list[Loss], weights: list[float], names: list[str]):
        self.losses, self.weights, self.names = losses, weights, names
        self.classification = any(loss.classification for loss in losses)
        self.values = [math.nan] * len(losses)
        self._backend = None
        self._buffers = Buffers()

    def forward(self, outputs: list, targets: list, backend: str, sample_weight=None) -> float:
        """The weighted loss of ``outputs`` against ``targets`` (one of each per output);
        each output's own loss is left in :attr:`values`. ``sample_weight`` weighs the rows
        of every output's loss (see :class:`Loss`)."""
        self._backend = backend
        self.values = [loss.forward(output, target, backend=backend, sample_weight=sample_weight)
                       for loss, output, target in zip(self.losses, outputs, targets)]
        if len(self.values) == 1 and self.weights[0] == 1.0:
            return self.values[0]
        return sum(weight * value for weight, value in zip(self.weights, self.values))

    def backward(self) -> list:
        """The gradient of the weighted loss with respect to each output."""
        grads = []
        for i, (loss, weight) in enumerate(zip(self.losses, self.weights)):
            grad = loss.backward()
            if weight != 1.0:
                memory = self._backend if _arrays.is_device_array(grad) else "numpy"
                scaled = self._buffers.get(f"grad{i}", tuple(grad.shape), np.dtype(grad.dtype), memory)
                scaled[...] = 0
                add_into(scaled, grad, weight, self._backend)
                grad = scaled
            grads.append(grad)
        return grads

    def correct(self, outputs: list, targets: list) -> list:
        """Correctly classified samples per output (None for a regression loss)."""
        return [loss.correct(output, target) if loss.classification else None
                for loss, output, target in zip(self.losses, outputs, targets)]
