"""Normalisation layers (exported by :mod:`nnkern.nn`) with torch's numbers: :class:`BatchNorm1d` and :class:`LayerNorm`.

Both compute with the fused kernels of :mod:`nnkern.ops` (``batch_norm_forward`` /
``batch_norm_backward``, ``layer_norm_forward`` / ``layer_norm_backward``) on the
model's backend, with ``out=`` buffers reused per batch size like every layer's.

Parameters are named as torch names them, ``weight`` and ``bias``. BatchNorm1d's
running statistics (``running_mean``, ``running_var``, ``num_batches_tracked``) are not
parameters (no gradient, no optimizer step): :meth:`BatchNorm1d.named_buffers` lists
them, the arrays a model's state_dict saves beside the parameters.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _arrays, ops
from .layers import Layer

__all__ = ["BatchNorm1d", "LayerNorm"]


def _positive_int(value, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _eps(value, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}: eps must be a finite number > 0, got {value!r}")
    return float(value)


def _flag(value, name: str, owner: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


class _Norm(Layer):
    """What both normalisations share: an optional (weight, bias) pair of one width, their
    gradients, and the input and statistics kept for the backward pass."""

    def __init__(self, features: int, affine: bool):
        super().__init__()
        self.in_features = features
        # float64 on the host until bound to a model's backend and dtype (as Linear's W)
        self.weight = np.ones(features) if affine else None
        self.bias = np.zeros(features) if affine else None
        self.dweight = self.dbias = None
        self._x = self._mean = self._invstd = None

    def bind(self, backend: str, dtype) -> None:
        super().bind(backend, dtype)
        if self.weight is not None:
            self.weight = _arrays.from_host(_arrays.to_host(self.weight), self.dtype, backend)
            self.bias = _arrays.from_host(_arrays.to_host(self.bias), self.dtype, backend)
            self.dweight = _arrays.zeros(self.weight.shape, self.dtype, backend)
            self.dbias = _arrays.zeros(self.bias.shape, self.dtype, backend)

    def _gradient_buffers(self) -> dict:
        """Where the backward kernel writes dx, dweight and dbias (scratch for the latter
        two without affine parameters)."""
        width = self._x.shape[1]
        return {"dx": self._buffer("dx", self._x.shape),
                "dweight": self.dweight if self.dweight is not None else self._buffer("dweight", (width,)),
                "dbias": self.dbias if self.dbias is not None else self._buffer("dbias", (width,))}

    def named_parameters(self):
        return [] if self.weight is None else [("weight", self.weight), ("bias", self.bias)]

    def named_gradients(self):
        return [] if self.weight is None else [("weight", self.dweight), ("bias", self.dbias)]


class BatchNorm1d(_Norm):
    """Batch normalisation of each feature of (N x num_features) inputs, as
    torch.nn.BatchNorm1d: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    In training, mean and (biased) var are the batch's (a batch needs two samples or
    more), and with ``track_running_stats`` the running statistics move towards them:
    ``running = (1 - momentum) * running + momentum * batch``, running_var taking the
    unbiased batch variance; ``momentum=None`` keeps their cumulative average instead
    (momentum 1 / num_batches_tracked). In evaluation the running statistics are used;
    without ``track_running_stats`` the batch's are used in evaluation too.
    ``affine=False``: no weight and bias (1 and 0).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True):
        self.num_features = _positive_int(num_features, "num_features", "BatchNorm1d")
        self.eps = _eps(eps, "BatchNorm1d")
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
                                     or not 0 <= momentum <= 1):
            raise ValueError(f"BatchNorm1d: momentum must be in [0, 1] or None (cumulative average), got {momentum!r}")
        self.momentum = None if momentum is None else float(momentum)
        self.affine = _flag(affine, "affine", "BatchNorm1d")
        self.track_running_stats = _flag(track_running_stats, "track_running_stats", "BatchNorm1d")
        super().__init__(self.num_features, self.affine)
        if self.track_running_stats:
            self.running_mean = np.zeros(self.num_features)
            self.running_var = np.ones(self.num_features)
            self.num_batches_tracked = np.zeros((), dtype=np.int64)  # a 0-d array: writable in place, as buffers are
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self._batch_stats = True

    def bind(self, backend: str, dtype) -> None:
        super().bind(backend, dtype)
        if self.track_running_stats:
            self.running_mean = _arrays.from_host(_arrays.to_host(self.running_mean), self.dtype, backend)
            self.running_var = _arrays.from_host(_arrays.to_host(self.running_var), self.dtype, backend)

    def named_buffers(self) -> list[tuple[str, object]]:
        """The running statistics, saved with the model but not trained, as torch's buffers."""
        if not self.track_running_stats:
            return []
        return [("running_mean", self.running_mean), ("running_var", self.running_var),
                ("num_batches_tracked", self.num_batches_tracked)]

    def forward(self, x, training: bool = False):
        self._bind_for(x)
        self._x = x
        self._batch_stats = training or not self.track_running_stats
        update = training and self.track_running_stats
        momentum = 0.0
        if update:
            self.num_batches_tracked += 1
            momentum = 1.0 / int(self.num_batches_tracked) if self.momentum is None else self.momentum
        width = self.num_features
        y, self._mean, self._invstd = ops.batch_norm_forward(
            x, self.weight, self.bias,
            running_mean=self.running_mean if update or not self._batch_stats else None,
            running_var=self.running_var if update or not self._batch_stats else None,
            training=self._batch_stats, momentum=momentum, eps=self.eps,
            out=self._buffer("y", x.shape), mean=self._buffer("mean", (width,)),
            invstd=self._buffer("invstd", (width,)), backend=self.backend)
        return y

    def backward(self, grad_out, input_grad: bool = True):
        dx, _, _ = ops.batch_norm_backward(self._x, grad_out, self.weight, self._mean, self._invstd,
                                           training=self._batch_stats, backend=self.backend,
                                           **self._gradient_buffers())
        return dx if input_grad else None

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats}


class LayerNorm(_Norm):
    """Layer normalisation of each sample of (N x features) inputs over its features, as
    torch.nn.LayerNorm: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the
    row's mean and biased variance; the same in training and evaluation.
    ``normalized_shape``: the number of features (an int, or a 1-tuple as torch takes
    it; nnkern's inputs are 2-D, so only the last dimension is normalised).
    ``elementwise_affine=False``: no weight and bias.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True):
        shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else normalized_shape
        if not isinstance(shape, (tuple, list)) or len(shape) != 1:
            raise ValueError("LayerNorm: normalized_shape must be the number of features (an int or a 1-tuple), "
                             f"since nnkern's inputs are (N x features); got {normalized_shape!r}")
        self.normalized_shape = (_positive_int(shape[0], "normalized_shape", "LayerNorm"),)
        self.eps = _eps(eps, "LayerNorm")
        self.elementwise_affine = _flag(elementwise_affine, "elementwise_affine", "LayerNorm")
        super().__init__(self.normalized_shape[0], self.elementwise_affine)

    def forward(self, x, training: bool = False):
        self._bind_for(x)
        self._x = x
        rows = x.shape[0]
        y, self._mean, self._invstd = ops.layer_norm_forward(
            x, self.weight, self.bias, eps=self.eps, out=self._buffer("y", x.shape),
            mean=self._buffer("mean", (rows,)), invstd=self._buffer("invstd", (rows,)), backend=self.backend)
        return y

    def backward(self, grad_out, input_grad: bool = True):
        dx, _, _ = ops.layer_norm_backward(self._x, grad_out, self.weight, self._mean, self._invstd,
                                           backend=self.backend, **self._gradient_buffers())
        return dx if input_grad else None

    def config(self):
        return {"normalized_shape": self.normalized_shape[0], "eps": self.eps,
                "elementwise_affine": self.elementwise_affine}
