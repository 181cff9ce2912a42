"""Layers, losses and the Sequential model: a thin layer over :mod:`nnkern.ops`::

    from nnkern import nn, optim
    model = nn.Sequential(nn.Linear(784, 100, seed=0), nn.Sigmoid(), nn.Linear(100, 10, seed=1))
    history = model.fit(x_train, y_train, epochs=5, batch_size=100, optimizer=optim.SGD(0.1),
                        validation_data=(x_test, y_test))
    loss, accuracy = model.evaluate(x_test, y_test)
    model.save("model.npz"); same = nn.load("model.npz")

A model is built for one backend (``backend=None``: the current one when it is built) and
one dtype (float32 by default, or float64). Layers hold parameters, gradients and
per-batch-size workspaces, and call the ops of the model's backend with ``out=`` buffers:
the arithmetic is the kernels'. The exceptions, each small and host-only, are said where
they are (Softmax's backward, Dropout's mask, accuracy counting).

Workspaces: every layer output and input gradient lives in a buffer allocated for a batch
size and reused for every later batch of that size (a few sizes are kept, so the full
batches and the last short batch of an epoch both keep theirs). So the array returned by
:meth:`Sequential.forward` is overwritten by the next forward of the same batch size;
:meth:`Sequential.predict` returns a fresh copy.

Gradients are overwritten (not accumulated) by every backward pass, so ``zero_grad`` is
not needed between steps.

For the "cuda" backend parameters and workspaces are device arrays; inputs and targets
are host arrays, copied to the device per batch; ``state_dict()`` and ``predict`` return
host arrays.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
import time
import zipfile
import zlib

import numpy as np

from . import _arrays, ops
from ._backend import backend_module, get_backend
from ._paths import check_writable
from .engine import fused_train_step

__all__ = [
    "Layer",
    "Linear",
    "Sigmoid",
    "Tanh",
    "ReLU",
    "LeakyReLU",
    "GELU",
    "Softmax",
    "Identity",
    "Dropout",
    "Loss",
    "CrossEntropyLoss",
    "MSELoss",
    "BCELoss",
    "get_loss",
    "Sequential",
    "History",
    "Callback",
    "NonFiniteLossError",
    "ModelFileError",
    "load",
]

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_SIZES_KEPT = 3  # workspaces kept per buffer: full batch, last short batch, evaluation chunk
_EVAL_BATCH = 1000  # rows per forward pass in predict and evaluate
_META_KEY = "__nnkern__"  # the .npz entry holding the architecture as JSON
FORMAT = "nnkern.Sequential"
FORMAT_VERSION = 1


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (the message names the epoch and step)."""


class ModelFileError(ValueError):
    """A file given to :func:`load` is not a readable nnkern model (the message names it)."""


def _shape_str(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def _check_dtype(dtype, where: str) -> np.dtype:
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in DTYPES:
        raise ValueError(f"{where}: dtype must be float32 or float64, got {dtype}")
    return dtype


class _Buffers:
    """Named work arrays, one per (name, shape), keeping the last few shapes of each name."""

    def __init__(self):
        self._arrays = {}

    def get(self, name: str, shape: tuple, dtype: np.dtype, backend: str):
        key = (name, shape, dtype)
        array = self._arrays.get(key)
        if array is None:
            same_name = [k for k in self._arrays if k[0] == name]
            if len(same_name) >= _SIZES_KEPT:
                del self._arrays[same_name[0]]
            array = self._arrays[key] = _arrays.empty(shape, dtype, backend)
        return array

    def clear(self) -> None:
        self._arrays.clear()


# ---------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------


class Layer:
    """A step of a Sequential model: ``forward(x, training)`` and ``backward(grad_out)``.

    ``backward`` writes the gradients of the layer's parameters and returns the gradient
    with respect to the layer's input (or None when ``input_grad`` is false). A layer is
    bound to a backend and dtype by the Sequential that holds it; a layer used on its own
    binds itself to the current backend and the dtype of its first input.
    """

    def __init__(self):
        self.backend: str | None = None
        self.dtype: np.dtype | None = None
        self._buffers = _Buffers()

    def bind(self, backend: str, dtype) -> None:
        """Place the layer's arrays on ``backend`` in ``dtype`` (workspaces are dropped)."""
        self.backend, self.dtype = backend, np.dtype(dtype)
        self._buffers.clear()

    def _bind_for(self, x) -> None:
        if self.backend is None:
            dtype = x.dtype if np.dtype(x.dtype) in DTYPES else np.float32
            self.bind(get_backend(), dtype)

    def _buffer(self, name: str, shape) -> object:
        return self._buffers.get(name, tuple(shape), self.dtype, self.backend)

    def output_features(self, input_features: int | None) -> int | None:
        """The width of the output for an input of the given width (None: any width)."""
        return input_features

    def forward(self, x, training: bool = False):
        raise NotImplementedError

    def backward(self, grad_out, input_grad: bool = True):
        raise NotImplementedError

    def named_parameters(self) -> list[tuple[str, object]]:
        return []

    def named_gradients(self) -> list[tuple[str, object]]:
        return []

    def config(self) -> dict:
        """The constructor arguments that rebuild this layer (saved with a model)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _init_std(init, in_features: int) -> float:
    """He: sqrt(2 / fan_in) (for ReLU); Xavier: sqrt(1 / fan_in) (for sigmoid and tanh),
    as the source material defines them; a number is the standard deviation itself."""
    if isinstance(init, str):
        if init == "he":
            return math.sqrt(2.0 / in_features)
        if init == "xavier":
            return math.sqrt(1.0 / in_features)
        raise ValueError(f"Linear: init must be 'he', 'xavier' or a standard deviation, got {init!r}")
    if isinstance(init, bool) or not isinstance(init, numbers.Real) or not (math.isfinite(init) and init >= 0):
        raise ValueError(f"Linear: init must be 'he', 'xavier' or a standard deviation >= 0, got {init!r}")
    return float(init)


def _check_features(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"Linear: {name} must be a positive integer, got {value!r}")
    return int(value)


class Linear(Layer):
    """The affine layer ``y = x @ W + b``, W of shape (in_features, out_features), b (out_features,).

    ``init``: "he" (default), "xavier", or a number, the standard deviation of the normal
    distribution W is drawn from; b starts at zero. ``seed`` seeds that draw.
    """

    def __init__(self, in_features: int, out_features: int, init="he", seed=None):
        super().__init__()
        self.in_features = _check_features(in_features, "in_features")
        self.out_features = _check_features(out_features, "out_features")
        self.init, self.seed = init, seed
        std = _init_std(init, self.in_features)
        rng = np.random.default_rng(seed)
        # float64 on the host until bound to a model's backend and dtype
        self.W = rng.standard_normal((self.in_features, self.out_features)) * std
        self.b = np.zeros(self.out_features)
        self.dW = np.zeros_like(self.W)
        self.db = np.zeros_like(self.b)
        self._x = None

    def bind(self, backend: str, dtype) -> None:
        super().bind(backend, dtype)
        self.W = _arrays.from_host(_arrays.to_host(self.W), self.dtype, backend)
        self.b = _arrays.from_host(_arrays.to_host(self.b), self.dtype, backend)
        self.dW = _arrays.zeros(self.W.shape, self.dtype, backend)
        self.db = _arrays.zeros(self.b.shape, self.dtype, backend)

    def output_features(self, input_features):
        return self.out_features

    def forward(self, x, training: bool = False):
        return self.forward_fused(x, None, {})

    def forward_fused(self, x, activation: str | None, params: dict):
        """``activation(x @ W + b)`` in one kernel (ops.linear)."""
        self._bind_for(x)
        self._x = x
        out = self._buffer("y", (x.shape[0], self.out_features))
        return ops.linear(x, self.W, self.b, activation, out=out, backend=self.backend, **params)

    def backward(self, grad_out, input_grad: bool = True):
        ops.matmul(self._x, grad_out, trans_a=True, out=self.dW, backend=self.backend)
        ops.bias_grad(grad_out, out=self.db, backend=self.backend)
        if not input_grad:
            return None
        dx = self._buffer("dx", self._x.shape)
        return ops.matmul(grad_out, self.W, trans_b=True, out=dx, backend=self.backend)

    def named_parameters(self):
        return [("W", self.W), ("b", self.b)]

    def named_gradients(self):
        return [("W", self.dW), ("b", self.db)]

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "init": self.init, "seed": self.seed}

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features})"


class _Activation(Layer):
    """An elementwise activation computed by ops.activation / ops.activation_grad."""

    op_name = ""

    def __init__(self):
        super().__init__()
        self._x = self._y = None

    def op_params(self) -> dict:
        return {}

    @property
    def grad_from_output(self) -> bool:
        """Whether the gradient can be computed from the output alone, which lets a
        preceding Linear compute the activation in its fused kernel: true for sigmoid and
        tanh (their gradients use y), and for functions that keep the sign of their input
        (relu, leaky_relu with a slope >= 0), whose gradient only asks whether x > 0."""
        return False

    def forward(self, x, training: bool = False):
        self._bind_for(x)
        self._x = x
        out = self._buffer("y", x.shape)
        self._y = ops.activation(self.op_name, x, out=out, backend=self.backend, **self.op_params())
        return self._y

    def set_fused_output(self, y) -> None:
        """Record the output computed by a fused Linear; it stands in for the input,
        which is valid only when :attr:`grad_from_output`."""
        self._x = self._y = y

    def backward(self, grad_out, input_grad: bool = True):
        dx = self._buffer("dx", grad_out.shape)
        return ops.activation_grad(self.op_name, self._x, self._y, grad_out, out=dx,
                                   backend=self.backend, **self.op_params())


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))``; gradient ``y * (1 - y)``."""

    op_name = "sigmoid"
    grad_from_output = True


class Tanh(_Activation):
    op_name = "tanh"
    grad_from_output = True


class ReLU(_Activation):
    """``max(x, 0)``; the gradient at 0 is taken as 0."""

    op_name = "relu"
    grad_from_output = True


class LeakyReLU(_Activation):
    """``x`` for x > 0, ``negative_slope * x`` otherwise (PyTorch's default slope 0.01)."""

    op_name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real) \
                or not math.isfinite(negative_slope):
            raise ValueError(f"LeakyReLU: negative_slope must be a finite number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    @property
    def grad_from_output(self) -> bool:
        return self.negative_slope >= 0

    def op_params(self):
        return {"negative_slope": self.negative_slope}

    def config(self):
        return {"negative_slope": self.negative_slope}


class GELU(_Activation):
    """``x * Phi(x)`` (the exact erf form), or its tanh approximation with
    ``approximate="tanh"``, as torch.nn.GELU."""

    op_name = "gelu"

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def op_params(self):
        return {"approximate": self.approximate}

    def config(self):
        return {"approximate": self.approximate}


class Identity(Layer):
    """Passes its input through unchanged."""

    def forward(self, x, training: bool = False):
        return x

    def backward(self, grad_out, input_grad: bool = True):
        return grad_out


class Softmax(Layer):
    """Row softmax (ops.softmax). For classification train on the logits with
    CrossEntropyLoss (which fuses the softmax) and keep this layer for probabilities.

    Its backward ``y * (g - sum(g * y, axis=1))`` has no kernel: it runs in NumPy on the
    host (device arrays are copied there and back).
    """

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x, training: bool = False):
        self._bind_for(x)
        self._y = ops.softmax(x, out=self._buffer("y", x.shape), backend=self.backend)
        return self._y

    def backward(self, grad_out, input_grad: bool = True):
        y, g = _arrays.to_host(self._y), _arrays.to_host(grad_out)
        dx = self._buffer("dx", g.shape)
        dx[...] = y * (g - np.sum(g * y, axis=1, keepdims=True))
        return dx


class Dropout(Layer):
    """Inverted dropout: in training each input is zeroed with probability ``p`` and the
    others scaled by ``1 / (1 - p)``; in evaluation the layer is the identity. The mask
    is drawn from a NumPy Generator seeded with ``seed`` and applied in NumPy (there is
    no kernel for it), so Dropout runs on host backends only."""

    def __init__(self, p: float = 0.5, seed=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p, self.seed = float(p), seed
        self._rng = np.random.default_rng(seed)
        self._mask = None

    def bind(self, backend: str, dtype) -> None:
        if backend in _arrays.DEVICE_BACKENDS:
            raise ValueError(f"Dropout runs on host backends only, not {backend!r}")
        super().bind(backend, dtype)

    def forward(self, x, training: bool = False):
        self._bind_for(x)
        if not training or self.p == 0:
            self._mask = None
            return x
        uniform = self._buffer("uniform", x.shape)
        self._rng.random(out=uniform, dtype=self.dtype)
        self._mask = self._buffer("mask", x.shape)
        np.multiply(uniform >= self.p, 1.0 / (1.0 - self.p), out=self._mask)
        return np.multiply(x, self._mask, out=self._buffer("y", x.shape))

    def backward(self, grad_out, input_grad: bool = True):
        if self._mask is None:
            return grad_out
        return np.multiply(grad_out, self._mask, out=self._buffer("dx", grad_out.shape))

    def config(self):
        return {"p": self.p, "seed": self.seed}


class _FusedLinearActivation:
    """A Linear followed by an activation whose gradient needs only its output: the
    forward is one ops.linear call with the activation fused in."""

    def __init__(self, linear: Linear, activation: _Activation):
        self.linear, self.activation = linear, activation
        self.has_parameters = True

    def forward(self, x, training: bool):
        y = self.linear.forward_fused(x, self.activation.op_name, self.activation.op_params())
        self.activation.set_fused_output(y)
        return y

    def backward(self, grad_out, input_grad: bool):
        return self.linear.backward(self.activation.backward(grad_out), input_grad)


class _Single:
    """A layer as a stage of the forward/backward plan."""

    def __init__(self, layer: Layer):
        self.layer = layer
        self.has_parameters = bool(layer.named_parameters())

    def forward(self, x, training: bool):
        return self.layer.forward(x, training)

    def backward(self, grad_out, input_grad: bool):
        return self.layer.backward(grad_out, input_grad)


LAYER_TYPES = {cls.__name__: cls for cls in
               (Linear, Sigmoid, Tanh, ReLU, LeakyReLU, GELU, Identity, Softmax, Dropout)}


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------


class Loss:
    """A loss: ``forward(pred, target)`` returns the mean loss as a float and keeps the
    gradient with respect to ``pred``, which ``backward()`` returns. ``correct(pred,
    target)`` counts correctly classified samples (None for regression losses)."""

    name = ""
    classification = False

    def __init__(self):
        self._buffers = _Buffers()
        self._grad = None

    def __call__(self, pred, target, *, backend=None) -> float:
        return self.forward(pred, target, backend=backend)

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

    def forward(self, pred, target, *, backend=None) -> float:
        raise NotImplementedError

    def backward(self):
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._grad

    def correct(self, pred, target) -> int | None:
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

    def forward(self, pred, target, *, backend=None) -> float:
        backend = backend or get_backend()
        if not _arrays.is_device_array(target):
            target = np.asarray(target)
            if target.ndim == 2:
                target = self._float_target(pred, target)
        loss, self._grad = ops.softmax_cross_entropy(pred, target, out=self._grad_buffer(pred, backend),
                                                     backend=backend)
        return loss

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
        if reduction not in ("mean", "half_sum"):
            raise ValueError(f"MSELoss: reduction must be 'mean' or 'half_sum', got {reduction!r}")
        self.reduction = reduction

    def forward(self, pred, target, *, backend=None) -> float:
        backend = backend or get_backend()
        loss, self._grad = ops.mse(pred, self._float_target(pred, target), reduction=self.reduction,
                                   out=self._grad_buffer(pred, backend), backend=backend)
        return loss

    def config(self):
        return {"reduction": self.reduction}


class BCELoss(Loss):
    """Binary cross entropy on probabilities (e.g. after Sigmoid), averaged over all
    elements, logs clamped at log(1e-12) (ops.binary_cross_entropy). A sample counts as
    correct when every output is on the same side of 0.5 as its target."""

    name = "binary_cross_entropy"
    classification = True

    def forward(self, pred, target, *, backend=None) -> float:
        backend = backend or get_backend()
        loss, self._grad = ops.binary_cross_entropy(pred, self._float_target(pred, target),
                                                    out=self._grad_buffer(pred, backend), backend=backend)
        return loss

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


class History:
    """What :meth:`Sequential.fit` returns: ``history`` maps "loss", "accuracy" (for
    classification losses), and "val_loss", "val_accuracy" (with validation data) to
    per-epoch lists."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []

    def append(self, epoch: int, metrics: dict) -> None:
        self.epochs.append(epoch)
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epochs)}, keys={list(self.history)})"


class Callback:
    """Hooks :meth:`Sequential.fit` calls (subclass and override what you need; any
    object with some of these methods works too):

    * ``set_model(model)``: the model being trained, before ``on_train_begin``;
    * ``on_train_begin(info)``: info has "epochs", "steps" (batches per epoch), "samples",
      "validation" (whether fit has validation data, so "val_*" logs will come);
    * ``on_epoch_begin(epoch, steps)``: epochs count from 1;
    * ``on_batch_end(epoch, step, steps, logs)``: steps count from 1; logs hold the
      running means of the epoch so far, "loss" and (classification) "accuracy";
    * ``on_epoch_end(epoch, logs)``: logs hold the epoch's "loss", "accuracy",
      "val_loss", "val_accuracy" (those that apply) and "seconds";
    * ``on_train_end(history)``.

    Setting ``model.stop_training = True`` in a hook ends training after the epoch.
    """

    model = None

    def set_model(self, model) -> None:
        self.model = model

    def on_train_begin(self, info: dict) -> None: ...

    def on_epoch_begin(self, epoch: int, steps: int) -> None: ...

    def on_batch_end(self, epoch: int, step: int, steps: int, logs: dict) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_train_end(self, history: History) -> None: ...


class _EpochPrinter(Callback):
    """``verbose=True``: one line per epoch."""

    def __init__(self, epochs: int):
        self.width = len(str(epochs))
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs):
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "seconds")
        print(f"epoch {epoch:>{self.width}}/{self.epochs}  {metrics}  ({logs['seconds']:.1f} s)", flush=True)


def _dispatch(callbacks, hook: str, *args) -> None:
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class Sequential:
    """Layers applied in order, built for one backend and dtype.

    ``Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))``; a single list of
    layers works too. Layer widths are checked here: a Linear whose ``in_features`` does
    not match the width before it is an error naming both layers.
    """

    def __init__(self, *layers, backend: str | None = None, dtype=np.float32):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layer {i} is {type(layer).__name__}, not an nnkern.nn layer")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("Sequential: the same layer object appears more than once; create one per position")
        self.backend = get_backend() if backend is None else backend
        backend_module(self.backend)  # unknown or unusable backends fail here, with the reason
        self.dtype = _check_dtype(dtype, "Sequential")
        self.layers = list(layers)
        self.in_features, self.out_features = self._check_widths()
        self._first_linear = next((layer for layer in self.layers if isinstance(layer, Linear)), None)
        for layer in self.layers:
            layer.bind(self.backend, self.dtype)
        self._stages = self._plan()
        self._lowest_trained = next((i for i, s in enumerate(self._stages) if s.has_parameters), len(self._stages))
        self._buffers = _Buffers()
        self.loss: Loss | None = None
        self.stop_training = False

    def _check_widths(self):
        """(input width, output width) of the model; None where any width fits."""
        width, source, first = None, None, None
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Linear):
                if width is not None and layer.in_features != width:
                    raise ValueError(
                        f"Sequential: layer {i} {layer!r} expects {layer.in_features} input features, "
                        f"but layer {source} {self.layers[source]!r} outputs {width}"
                    )
                if first is None:
                    first = layer.in_features
                source = i
            width = layer.output_features(width)
        return first, width

    def _plan(self):
        stages, i = [], 0
        while i < len(self.layers):
            layer = self.layers[i]
            following = self.layers[i + 1] if i + 1 < len(self.layers) else None
            if isinstance(layer, Linear) and isinstance(following, _Activation) and following.grad_from_output:
                stages.append(_FusedLinearActivation(layer, following))
                i += 2
            else:
                stages.append(_Single(layer))
                i += 1
        return stages

    def __repr__(self) -> str:
        layers = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential({layers}, backend={self.backend!r}, dtype={self.dtype.name})"

    # -- parameters ----------------------------------------------------------------

    def named_parameters(self) -> list[tuple[str, object]]:
        """("0.W", W0), ("0.b", b0), ... keyed by layer index."""
        return [(f"{i}.{name}", p) for i, layer in enumerate(self.layers) for name, p in layer.named_parameters()]

    def parameters(self) -> list:
        """The parameter arrays in layer order (W0, b0, W1, b1, ...); writing into them
        (``p[...] = values``) changes the model."""
        return [p for _, p in self.named_parameters()]

    def gradients(self) -> list:
        """The gradient arrays, in the order of :meth:`parameters`, written by backward."""
        return [g for layer in self.layers for _, g in layer.named_gradients()]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of the parameters, keyed as in :meth:`named_parameters`."""
        return {name: _arrays.host_copy(p) for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict) -> None:
        """Copy the arrays of ``state`` (keys and shapes as :meth:`state_dict`) into the
        parameters, converting them to the model's dtype."""
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        values = {}
        for name, p in own.items():
            value = np.asarray(_arrays.to_host(state[name]))
            if value.shape != tuple(p.shape):
                raise ValueError(
                    f"load_state_dict: {name} has shape ({_shape_str(value.shape)}), "
                    f"the model's has ({_shape_str(p.shape)})"
                )
            values[name] = np.ascontiguousarray(value, dtype=self.dtype)
        for name, p in own.items():
            p[...] = values[name]

    def config(self) -> dict:
        """The architecture: layer types and constructor arguments, and the dtype."""
        return {"layers": [{"type": type(layer).__name__, **layer.config()} for layer in self.layers],
                "dtype": self.dtype.name}

    @classmethod
    def from_config(cls, config: dict, *, backend: str | None = None, dtype=None) -> Sequential:
        """A new model with the architecture of ``config`` (weights freshly initialised)."""
        layers = []
        for spec in config["layers"]:
            spec = dict(spec)
            kind = spec.pop("type")
            if kind not in LAYER_TYPES:
                raise ValueError(f"unknown layer type {kind!r}")
            layers.append(LAYER_TYPES[kind](**spec))
        return cls(*layers, backend=backend, dtype=config["dtype"] if dtype is None else dtype)

    def clone(self, *, backend: str | None = None, dtype=None) -> Sequential:
        """A copy with the same architecture and weights, on ``backend`` (default: this
        model's) in ``dtype`` (default: this model's)."""
        copy = Sequential.from_config(self.config(), backend=backend or self.backend, dtype=dtype or self.dtype)
        copy.load_state_dict(self.state_dict())
        return copy

    # -- forward and backward -------------------------------------------------------

    def _as_input(self, x):
        """``x`` as a C-contiguous 2-D array of the model's dtype in the model's memory,
        after checking its width (one copy into a reused buffer at most)."""
        if _arrays.is_device_array(x):
            if np.dtype(x.dtype) != self.dtype:
                raise TypeError(f"Sequential: device input has dtype {x.dtype}, the model computes in {self.dtype}")
        else:
            x = np.asarray(x)
            if x.dtype.kind not in "fiub":
                raise TypeError(f"Sequential: input has dtype {x.dtype}; expected real numbers")
        if len(x.shape) != 2:
            raise ValueError(
                f"Sequential: input must be 2-D (samples x features), got shape ({_shape_str(x.shape)})"
                + ("; use x.reshape(1, -1) for one sample" if len(x.shape) == 1 else "")
            )
        if self.in_features is not None and x.shape[1] != self.in_features:
            raise ValueError(
                f"Sequential: input of shape ({_shape_str(x.shape)}) does not fit the first Linear layer "
                f"{self._first_linear!r}, which takes inputs of shape (N x {self.in_features})"
            )
        if _arrays.is_device_array(x):
            return x
        if self.backend not in _arrays.DEVICE_BACKENDS and x.dtype == self.dtype and x.flags.c_contiguous:
            return x
        buffer = self._buffers.get("input", tuple(x.shape), self.dtype, self.backend)
        buffer[...] = np.ascontiguousarray(x, dtype=self.dtype)
        return buffer

    def forward(self, x, training: bool = False):
        """The model's output for the batch ``x`` (N, in_features). The result is a
        workspace reused by the next forward pass of the same batch size."""
        x = self._as_input(x)
        for stage in self._stages:
            x = stage.forward(x, training)
        return x

    def backward(self, grad_output, input_grad: bool = False):
        """Backpropagate ``grad_output`` (the loss gradient with respect to the last
        output) through the last forward pass: writes every parameter gradient, and
        returns the gradient with respect to the input when ``input_grad``."""
        lowest = 0 if input_grad else self._lowest_trained
        grad = grad_output
        for i in range(len(self._stages) - 1, lowest - 1, -1):
            grad = self._stages[i].backward(grad, input_grad or i > lowest)
        return grad if input_grad else None

    def compute_gradients(self, x, y, loss) -> tuple[float, object]:
        """Forward (training mode), loss, backward: returns (loss value, model output)
        and leaves the gradients in :meth:`gradients`."""
        loss = get_loss(loss)
        output = self.forward(x, training=True)
        value = loss.forward(output, y, backend=self.backend)
        self.backward(loss.backward())
        return value, output

    def train_step(self, x, y, optimizer, loss) -> tuple[float, object]:
        """One optimisation step on the batch (x, y): returns (loss before the step,
        model output). ``fit`` calls this once per batch, so a backend with a fused
        training engine can replace just this method."""
        value, output = self.compute_gradients(x, y, loss)
        optimizer.step()
        return value, output

    # -- training and inference -------------------------------------------------------

    def _bound_optimizer(self, optimizer):
        from . import optim

        if isinstance(optimizer, str):
            optimizer = optim.get(optimizer)
        if not isinstance(optimizer, optim.Optimizer):
            raise TypeError(f"fit: optimizer must be an nnkern.optim optimizer or its name, got {optimizer!r}")
        if not optimizer.is_bound_to(self.parameters()):
            optimizer.bind(self.parameters(), self.gradients(), backend=self.backend)
        return optimizer

    def fit(self, x, y, *, epochs: int = 1, batch_size: int = 32, optimizer, loss="cross_entropy",
            shuffle: bool = True, seed=None, validation_data=None, verbose: bool = True,
            on_nonfinite: str = "raise", callbacks=(), fused: bool = True) -> History:
        """Train on (x, y) for ``epochs`` passes in mini-batches of ``batch_size``.

        ``optimizer``: an nnkern.optim optimizer (bound to this model's parameters here
        if it is not already) or its name. ``loss``: a Loss or its name. ``shuffle``
        draws a new order every epoch from a generator seeded with ``seed``.
        ``validation_data=(x_val, y_val)`` adds "val_loss" and "val_accuracy".
        ``verbose`` prints one line per epoch. ``callbacks``: objects with the hooks of
        :class:`Callback` (progress bars, :mod:`nnkern.callbacks`' early stopping and
        best-weights restore); the optimizer's learning-rate schedule
        (:class:`nnkern.optim.LRScheduler`) is stepped after every epoch or batch. A NaN or infinite batch loss
        raises :class:`NonFiniteLossError` naming the epoch and step, unless
        ``on_nonfinite="ignore"``. ``fused`` lets a backend with a fused training
        engine (see :mod:`nnkern.engine`) run each step in one compiled call when the
        model, loss and optimizer allow it; ``fused=False`` forces the layer-by-layer
        path. Returns a :class:`History`.
        """
        from .data import DataLoader

        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
            raise ValueError(f"fit: epochs must be an integer >= 0, got {epochs!r}")
        if on_nonfinite not in ("raise", "ignore"):
            raise ValueError(f"fit: on_nonfinite must be 'raise' or 'ignore', got {on_nonfinite!r}")
        loss = get_loss(loss)
        optimizer = self._bound_optimizer(optimizer)
        loader = DataLoader(x, y, batch_size, shuffle=shuffle, seed=seed)
        fused_step = fused_train_step(self, optimizer, loss, x, y, batch_size) if fused else None
        if verbose and fused_step is not None and fused_step.first_call_note:
            print(fused_step.first_call_note, flush=True)
        self.loss = loss
        callbacks = list(callbacks)
        if optimizer.schedule is not None and optimizer.schedule not in callbacks:
            callbacks.insert(0, optimizer.schedule)  # the optimizer's lr schedule steps with the training
        callbacks += [_EpochPrinter(epochs)] if verbose else []
        history = History()
        steps = len(loader)
        self.stop_training = False
        _dispatch(callbacks, "set_model", self)
        _dispatch(callbacks, "on_train_begin", {"epochs": epochs, "steps": steps, "samples": len(loader.x),
                                                "validation": validation_data is not None})
        for epoch in range(1, epochs + 1):
            _dispatch(callbacks, "on_epoch_begin", epoch, steps)
            started = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            for step, (xb, yb) in enumerate(loader, 1):
                if fused_step is not None:
                    value, batch_correct = fused_step(xb, yb)
                else:
                    value, output = self.train_step(xb, yb, optimizer, loss)
                    batch_correct = loss.correct(output, yb) if loss.classification else 0
                if not math.isfinite(value) and on_nonfinite == "raise":
                    raise NonFiniteLossError(
                        f"fit: the loss became {value} at epoch {epoch}, step {step} of {steps}; "
                        f"try a smaller learning rate, or pass on_nonfinite='ignore' to go on"
                    )
                loss_sum += value * len(xb)
                seen += len(xb)
                logs = {"loss": loss_sum / seen}
                if loss.classification:
                    correct += batch_correct
                    logs["accuracy"] = correct / seen
                _dispatch(callbacks, "on_batch_end", epoch, step, steps, logs)
            metrics = {"loss": loss_sum / seen} if seen else {"loss": math.nan}
            if loss.classification:
                metrics["accuracy"] = correct / seen if seen else math.nan
            if validation_data is not None:
                val_loss, val_accuracy = self.evaluate(*validation_data, loss=loss)
                metrics["val_loss"] = val_loss
                if loss.classification:
                    metrics["val_accuracy"] = val_accuracy
            history.append(epoch, metrics)
            _dispatch(callbacks, "on_epoch_end", epoch, {**metrics, "seconds": time.perf_counter() - started})
            if self.stop_training:
                break
        _dispatch(callbacks, "on_train_end", history)
        return history

    def _chunks(self, x, batch_size: int):
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        for start in range(0, len(x), batch_size):
            yield start, min(start + batch_size, len(x))

    def evaluate(self, x, y, *, loss=None, batch_size: int = _EVAL_BATCH) -> tuple[float, float | None]:
        """(mean loss, accuracy) over (x, y); accuracy is None for regression losses.
        ``loss`` defaults to the one of the last ``fit``, else cross entropy."""
        loss = get_loss(loss if loss is not None else (self.loss or "cross_entropy"))
        x, y = np.asarray(x), np.asarray(y)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"evaluate: x and y need the same, non-zero number of samples, got {len(x)} and {len(y)}")
        loss_sum, correct = 0.0, 0
        for start, stop in self._chunks(x, batch_size):
            output = self.forward(x[start:stop])
            loss_sum += loss.forward(output, y[start:stop], backend=self.backend) * (stop - start)
            if loss.classification:
                correct += loss.correct(output, y[start:stop])
        return loss_sum / len(x), (correct / len(x) if loss.classification else None)

    def predict(self, x, *, batch_size: int = _EVAL_BATCH) -> np.ndarray:
        """The model's outputs for ``x`` as a new host array (evaluation mode)."""
        x = np.asarray(x)
        if len(x) == 0:
            x = self._as_input(x)
            return np.empty((0, self.out_features or x.shape[1]), dtype=self.dtype)
        parts = [_arrays.host_copy(self.forward(x[start:stop])) for start, stop in self._chunks(x, batch_size)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def predict_classes(self, x, *, batch_size: int = _EVAL_BATCH) -> np.ndarray:
        """Predicted class indices: the argmax of each output row, or ``output > 0.5``
        for a single output column."""
        output = self.predict(x, batch_size=batch_size)
        if output.shape[1] == 1:
            return (output[:, 0] > 0.5).astype(np.int64)
        return np.argmax(output, axis=1)

    __call__ = predict

    # -- files ------------------------------------------------------------------------

    def save(self, path) -> None:
        """Write the architecture, dtype and weights to one .npz file at ``path``
        (exactly that name), atomically: a temporary file in the same directory,
        flushed to disk, then renamed over ``path``, so a failed or interrupted save
        leaves any previous file there intact. A folder that does not exist or takes no
        files is an OSError naming the path."""
        path = check_writable(path, "save", replaced_by_rename=True)
        directory = os.path.dirname(os.path.abspath(path))
        meta = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **self.config()})
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **{_META_KEY: np.array(meta)}, **self.state_dict())
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _new_file_mode())  # mkstemp creates 0600; give the file the usual mode
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        _fsync_directory(directory)


def _new_file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the process umask (which can only be
    read by setting it, so it is set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path, *, backend: str | None = None) -> Sequential:
    """The model saved at ``path`` by :meth:`Sequential.save`, rebuilt with the same
    architecture, dtype and weights on ``backend`` (None: the current backend).
    A file that is not a complete nnkern model raises :class:`ModelFileError`."""
    path = os.fspath(path)
    backend_module(get_backend() if backend is None else backend)  # fails here, not as a file error
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ModelFileError(f"{path}: not an nnkern model file (a single .npy array, not an .npz archive)")
        with archive:
            if _META_KEY not in archive.files:
                raise ModelFileError(f"{path}: not an nnkern model file (no {_META_KEY!r} entry)")
            meta = json.loads(str(archive[_META_KEY]))
            state = {name: archive[name] for name in archive.files if name != _META_KEY}
    except (FileNotFoundError, IsADirectoryError, PermissionError, ModelFileError):
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ModelFileError(f"{path}: not a readable nnkern model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an nnkern model file (format {meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: model file version {meta.get('version')!r}; this nnkern reads version {FORMAT_VERSION}")
    try:
        model = Sequential.from_config(meta, backend=backend)
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: inconsistent nnkern model file ({exc})") from exc
    return model
