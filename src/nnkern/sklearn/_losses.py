"""scikit-learn's output activations and losses."""

from __future__ import annotations

import numpy as np
from scipy.special import expit, xlogy


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


