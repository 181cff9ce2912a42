"""scikit-learn's output activations and losses, and :class:`OutputLoss`, which makes
them an nnkern loss for the layer-by-layer training step."""

from __future__ import annotations

import numpy as np
from scipy.special import expit, xlogy

from .. import _arrays
from ..losses import FusedHead, Loss


def _output_activation(name: str, z: np.ndarray) -> np.ndarray:
    """The output layer's activation on the logits ``z`` (a new array)."""
    if name == "softmax":
        shifted = z - z.max(axis=1, keepdims=True)
        p = np.exp(shifted)
        return p / p.sum(axis=1, keepdims=True)
    if name == "logistic":
        return expit(z)
    if name == "exp":
        return np.exp(z)
    return np.array(z, copy=True)


def _sample_losses(name: str, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each sample's loss, as scikit-learn's loss functions average it: half the mean
    squared error over the outputs, or the sum over the outputs of half the Poisson
    deviance, the log loss (softmax) or the binary log loss (logistic)."""
    if name == "squared_error":
        return 0.5 * ((y - p) ** 2).mean(axis=1)
    if name == "poisson":
        return (xlogy(y, y / p) - y + p).sum(axis=1)
    eps = np.finfo(p.dtype).eps
    p = np.clip(p, eps, 1 - eps)
    if name == "log_loss":
        return -xlogy(y, p).sum(axis=1)
    return -(xlogy(y, p) + xlogy(1 - y, 1 - p)).sum(axis=1)


class OutputLoss(Loss):
    """scikit-learn's output activation and loss on the network's logits, as an nnkern
    :class:`~nnkern.losses.Loss`: the mean of the samples' losses (:func:`_sample_losses`,
    clipped as scikit-learn clips them), its gradient the canonical link's ``(p - y) / n``
    (softmax, logistic, exp or identity output; for "squared_error" that is the gradient of
    the sum over the outputs where the loss is their mean, as in scikit-learn), each row's
    scaled by its share of the sample weights when there are any (:meth:`Loss.forward`)."""

    def __init__(self, activation: str, loss: str):
        super().__init__()
        self.activation, self.loss = activation, loss
        self.name = loss

    def _forward(self, pred, target, backend):
        p = _output_activation(self.activation, _arrays.to_host(pred))
        y = self._float_target(p, _arrays.to_host(target))
        delta = p - y
        delta /= len(p)
        self._grad = _arrays.from_host(delta, delta.dtype, backend) if _arrays.is_device_array(pred) else delta
        return float(_sample_losses(self.loss, y, p).sum()) / len(p)

    def _row_terms(self, pred, target):
        p = _output_activation(self.activation, pred)
        return _sample_losses(self.loss, self._float_target(p, target), p) / len(p)

    def fused_head(self, outputs):
        if (self.activation, self.loss) == ("logistic", "binary_log_loss"):
            return FusedHead("logistic_log_loss")
        if (self.activation, self.loss) == ("identity", "squared_error"):
            return FusedHead("identity_squared", 1.0, 0.5 / outputs)  # half the mean; gradient (p - y) / n
        return None  # softmax trains on CrossEntropyLoss; exp / poisson layer by layer

    def config(self):
        return {"activation": self.activation, "loss": self.loss}
