"""Layers, losses and models: a thin layer over :mod:`nnkern.ops`::

    from nnkern import nn, optim
    model = nn.Sequential(nn.Linear(784, 100, seed=0), nn.Sigmoid(), nn.Linear(100, 10, seed=1))
    history = model.fit(x_train, y_train, epochs=5, batch_size=100, optimizer=optim.SGD(0.1),
                        validation_data=(x_test, y_test))
    loss, accuracy = model.evaluate(x_test, y_test)
    model.save("model.npz"); same = nn.load("model.npz")

Networks that are not a chain are :class:`Graph` models: calling a layer on a node
returns a node, and the graph from inputs to outputs is the model::

    x = nn.Input(784)
    h = nn.ReLU()(nn.Linear(784, 256)(x))
    h = nn.Add()(h, nn.ReLU()(nn.Linear(256, 256)(h)))      # a residual connection
    model = nn.Graph(x, nn.Linear(256, 10)(h))

A :class:`Sequential` is the graph of a chain: both share one forward pass (in the
topological order fixed when the model is built), one backward pass (in the reverse
order, summing the gradients of a node that feeds several others) and one ``fit``.

A model is built for one backend (``backend=None``: the current one when it is built) and
one dtype (float32 by default, or float64). Layers hold parameters, gradients and
per-batch-size workspaces, and call the ops of the model's backend with ``out=`` buffers:
the arithmetic is the kernels'. The exceptions, each small and host-only, are said where
they are (Softmax's backward, Dropout's mask, accuracy counting).

Workspaces: every layer output and input gradient lives in a buffer allocated for a batch
size and reused for every later batch of that size (a few sizes are kept, so the full
batches and the last short batch of an epoch both keep theirs). So the array returned by
:meth:`Graph.forward` is overwritten by the next forward of the same batch size;
:meth:`Graph.predict` returns a fresh copy.

Gradients are overwritten (not accumulated) by every backward pass, so ``zero_grad`` is
not needed between steps.

For the "cuda" backend parameters and workspaces are device arrays; inputs and targets
are host arrays, copied to the device per batch; ``state_dict()`` and ``predict`` return
host arrays.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import tempfile
import time
import zipfile
import zlib

import numpy as np

from . import _arrays, _graph, ops
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
    "Node",
    "Input",
    "Add",
    "Concatenate",
    "Loss",
    "CrossEntropyLoss",
    "MSELoss",
    "BCELoss",
    "get_loss",
    "Graph",
    "GraphNode",
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
    """A step of a model: ``forward(x, training)`` and ``backward(grad_out)``.

    ``backward`` writes the gradients of the layer's parameters and returns the gradient
    with respect to the layer's input (or None when ``input_grad`` is false). A layer is
    bound to a backend and dtype by the model that holds it; a layer used on its own
    binds itself to the current backend and the dtype of its first input.

    Calling a layer on graph nodes, ``layer(node)``, adds it to a graph under
    construction and returns its output node (see :class:`Graph`).
    """

    in_features: int | None = None  # the input width the layer requires (None: any width)

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

    def __call__(self, *inputs: Node, name: str | None = None) -> Node:
        """The node of this layer applied to ``inputs`` (one node; several, or a list of
        them, for a merge layer) in a graph under construction. ``name`` names the node
        (its parameters are saved as "name.W", ...); by default the Graph names it."""
        if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
            inputs = tuple(inputs[0])
        for node in inputs:
            if not isinstance(node, Node):
                raise TypeError(
                    f"{self!r} was called on {type(node).__name__}: layers are called on graph nodes "
                    "(nn.Input(...) or another layer's node) to build an nn.Graph; "
                    "to compute on arrays use layer.forward(x) or a model"
                )
        problem = _arity_problem(self, len(inputs))
        if problem:
            raise ValueError(f"{self!r} {problem}")
        return Node(self, inputs, name)

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


def _check_features(value, name: str, owner: str = "Linear") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
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


def _add_into(out, x, scale: float, backend: str) -> None:
    """``out += scale * x`` in place (same shape, C-contiguous) by the backend's axpy: its
    raw sgd_update kernel, ``p -= lr * g``, run with ``lr = -scale``, as the optimizers'
    weight decay does (``ops.sgd_update`` refuses negative rates)."""
    if out.size:
        if isinstance(x, np.ndarray) and not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        backend_module(backend).sgd_update(out.reshape(-1), x.reshape(-1), -scale)


class _Merge(Layer):
    """A layer of several inputs, for graph models: ``forward(xs)`` takes a list of
    (N x width) arrays and ``backward`` returns the list of their gradients."""

    def output_features(self, input_features: list) -> int | None:
        raise NotImplementedError

    def _inputs(self, xs) -> list:
        """``xs`` as 2-D arrays of the layer's dtype in its memory, with one number of
        rows (in a model they already are, and pass through untouched)."""
        name = type(self).__name__
        if not isinstance(xs, (list, tuple)) or len(xs) < 2:
            raise TypeError(f"{name}.forward takes a list of two or more arrays, got {type(xs).__name__}")
        self._bind_for(xs[0])
        arrays = []
        for x in xs:
            if not _arrays.is_device_array(x):
                x = np.asarray(x)
                if x.dtype.kind not in "fiub":
                    raise TypeError(f"{name}: input has dtype {x.dtype}; expected real numbers")
                if self.backend in _arrays.DEVICE_BACKENDS:
                    x = _arrays.from_host(x, self.dtype, self.backend)
                elif x.dtype != self.dtype or not x.flags.c_contiguous:
                    x = np.ascontiguousarray(x, dtype=self.dtype)
            arrays.append(x)
        shapes = ", ".join(f"({_shape_str(x.shape)})" for x in arrays)
        if any(len(x.shape) != 2 for x in arrays):
            raise ValueError(f"{name}: inputs must be 2-D (samples x features), got shapes {shapes}")
        if len({x.shape[0] for x in arrays}) > 1:
            raise ValueError(f"{name}: inputs have different numbers of rows, shapes {shapes}")
        return arrays


class Add(_Merge):
    """The elementwise sum of its inputs, all of one width: ``nn.Add()(h, x)`` makes a
    residual connection. The sums run on the backend's axpy kernel; each input's
    gradient is the output's gradient."""

    def __init__(self):
        super().__init__()
        self._count = 0

    def output_features(self, input_features):
        known = [w for w in input_features if w is not None]
        if len(set(known)) > 1:
            raise ValueError("Add needs inputs of one width")
        return known[0] if known else None

    def forward(self, xs, training: bool = False):
        xs = self._inputs(xs)
        if len({tuple(x.shape) for x in xs}) > 1:
            raise ValueError("Add: cannot add inputs of shapes " + ", ".join(f"({_shape_str(x.shape)})" for x in xs))
        out = self._buffer("y", xs[0].shape)
        out[...] = xs[0]
        for x in xs[1:]:
            _add_into(out, x, 1.0, self.backend)
        self._count = len(xs)
        return out

    def backward(self, grad_out, input_grad: bool = True):
        return [grad_out] * self._count if input_grad else None


class Concatenate(_Merge):
    """Its inputs side by side along the features, in the order given: (N x a) and
    (N x b) make (N x (a + b)); the backward pass hands each input its columns of the
    gradient. Copies only (NumPy slices, or device-to-device copies on "cuda")."""

    def __init__(self):
        super().__init__()
        self._widths: list[int] = []

    def output_features(self, input_features):
        return None if None in input_features else sum(input_features)

    def forward(self, xs, training: bool = False):
        xs = self._inputs(xs)
        self._widths = [x.shape[1] for x in xs]
        out = self._buffer("y", (xs[0].shape[0], sum(self._widths)))
        start = 0
        for x, width in zip(xs, self._widths):
            out[:, start:start + width] = x
            start += width
        return out

    def backward(self, grad_out, input_grad: bool = True):
        if not input_grad:
            return None
        grads, start = [], 0
        for i, width in enumerate(self._widths):
            dx = self._buffer(f"dx{i}", (grad_out.shape[0], width))
            dx[...] = grad_out[:, start:start + width]
            grads.append(dx)
            start += width
        return grads


def _arity_problem(layer: Layer, count: int) -> str | None:
    """Why ``layer`` cannot take ``count`` input nodes (None: it can)."""
    if isinstance(layer, _Merge):
        return None if count >= 2 else f"merges two or more input nodes, got {count}"
    return None if count == 1 else f"takes one input node, got {count}"


def _check_node_name(name, where: str, *, required: bool = False) -> str | None:
    if (name is not None or required) and (not isinstance(name, str) or not name):
        raise TypeError(f"{where}: a node name must be a non-empty string, got {name!r}")
    return name


class Node:
    """A value in a graph model under construction: an :class:`Input`, or what calling
    a layer on nodes returns (``nn.ReLU()(node)``). Nodes hold no data: give a
    :class:`Graph` its input and output nodes and it builds the model between them."""

    def __init__(self, layer: Layer | None, inputs: tuple = (), name: str | None = None):
        self.layer, self.inputs = layer, tuple(inputs)
        self.name = _check_node_name(name, "Node")

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"Node({self.layer!r}{name})"


class Input(Node):
    """An input of a graph model, taking (N x ``features``) arrays: ``x = nn.Input(784)``."""

    def __init__(self, features: int, name: str | None = None):
        super().__init__(None, (), _check_node_name(name, "Input"))
        self.features = _check_features(features, "features", "Input")

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"Input({self.features}{name})"


# -- the stages of a model's plan: each reads the values in slots ``sources`` and writes
# slot ``target``; backward returns the gradients of its sources (None: not asked for).


class _FusedLinearActivation:
    """A Linear followed by an activation whose gradient needs only its output: the
    forward is one ops.linear call with the activation fused in."""

    def __init__(self, linear: Linear, activation: _Activation, sources: list[int], target: int):
        self.linear, self.activation = linear, activation
        self.sources, self.target = sources, target
        self.has_parameters = True

    def forward(self, inputs: list, training: bool):
        y = self.linear.forward_fused(inputs[0], self.activation.op_name, self.activation.op_params())
        self.activation.set_fused_output(y)
        return y

    def backward(self, grad_out, input_grad: bool):
        dx = self.linear.backward(self.activation.backward(grad_out), input_grad)
        return [dx] if input_grad else None


class _Single:
    """A layer of one input as a stage of the plan."""

    def __init__(self, layer: Layer, sources: list[int], target: int):
        self.layer, self.sources, self.target = layer, sources, target
        self.has_parameters = bool(layer.named_parameters())

    def forward(self, inputs: list, training: bool):
        return self.layer.forward(inputs[0], training)

    def backward(self, grad_out, input_grad: bool):
        dx = self.layer.backward(grad_out, input_grad)
        return [dx] if input_grad else None


class _MergeStage(_Single):
    """A merge layer as a stage of the plan."""

    def forward(self, inputs: list, training: bool):
        return self.layer.forward(inputs, training)

    def backward(self, grad_out, input_grad: bool):
        return self.layer.backward(grad_out, input_grad)


LAYER_TYPES = {cls.__name__: cls for cls in
               (Linear, Sigmoid, Tanh, ReLU, LeakyReLU, GELU, Identity, Softmax, Dropout, Add, Concatenate)}


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
# The training objective
# ---------------------------------------------------------------------------------------


class _Objective:
    """What a model is trained on: one loss per output, each with a weight. Its value is
    ``sum(weight * loss)``, and each output's loss gradient is scaled by its weight."""

    def __init__(self, losses: list[Loss], weights: list[float], names: list[str]):
        self.losses, self.weights, self.names = losses, weights, names
        self.classification = any(loss.classification for loss in losses)
        self.values = [math.nan] * len(losses)
        self._backend = None
        self._buffers = _Buffers()

    def forward(self, outputs: list, targets: list, backend: str) -> float:
        """The weighted loss of ``outputs`` against ``targets`` (one of each per output);
        each output's own loss is left in :attr:`values`."""
        self._backend = backend
        self.values = [loss.forward(output, target, backend=backend)
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
                _add_into(scaled, grad, weight, self._backend)
                grad = scaled
            grads.append(grad)
        return grads

    def correct(self, outputs: list, targets: list) -> list:
        """Correctly classified samples per output (None for a regression loss)."""
        return [loss.correct(output, target) if loss.classification else None
                for loss, output, target in zip(self.losses, outputs, targets)]


class _Meter:
    """Sample-weighted means of an objective's loss, of each output's loss and accuracy
    over the batches of an epoch or an evaluation: the logs of fit and evaluate. One
    output: "loss" and (classification) "accuracy"; several: "loss" (the weighted
    total), "<output>_loss" and "<output>_accuracy"."""

    def __init__(self, objective: _Objective):
        self.objective = objective
        self.seen, self.loss_sum = 0, 0.0
        self.loss_sums = [0.0] * len(objective.losses)
        self.correct = [0] * len(objective.losses)

    def add(self, samples: int, value: float, values: list, correct: list) -> None:
        self.loss_sum += value * samples
        self.seen += samples
        for i, (output_value, output_correct) in enumerate(zip(values, correct)):
            self.loss_sums[i] += output_value * samples
            if output_correct is not None:
                self.correct[i] += output_correct

    def logs(self) -> dict:
        def mean(total):
            return total / self.seen if self.seen else math.nan

        objective = self.objective
        logs = {"loss": mean(self.loss_sum)}
        if len(objective.losses) == 1:
            if objective.classification:
                logs["accuracy"] = mean(self.correct[0])
            return logs
        for name, loss, loss_sum, correct in zip(objective.names, objective.losses, self.loss_sums, self.correct):
            logs[f"{name}_loss"] = mean(loss_sum)
            if loss.classification:
                logs[f"{name}_accuracy"] = mean(correct)
        return logs


def _per_name(value, names: list[str], what: str, where: str, *, arrays: bool, kind: str = "outputs") -> list:
    """``value`` given for each of ``names`` (the model's inputs or outputs, ``kind``): a
    dict by name, or a list or tuple in the order of ``names``. For a single name the
    value itself works too; for ``arrays`` a list is then an array-like, unless it holds
    just one array (code written for any number of inputs or outputs)."""
    if isinstance(value, dict):
        missing = [name for name in names if name not in value]
        unexpected = [key for key in value if key not in names]
        if missing or unexpected:
            raise ValueError(f"{where}: {what} for {names}: missing {missing}, unexpected {unexpected}")
        return [value[name] for name in names]
    if len(names) == 1 and isinstance(value, (list, tuple)) and len(value) == 1 and arrays \
            and (isinstance(value[0], np.ndarray) or _arrays.is_device_array(value[0])):
        return list(value)
    if len(names) == 1 and (arrays or not isinstance(value, (list, tuple))):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{where}: the model has {len(names)} {kind} {names}: give {what} as a list "
                        f"in that order or a dict by name, got {type(value).__name__}")
    if len(value) != len(names):
        raise ValueError(f"{where}: {len(names)} {what} expected (for {names}), got {len(value)}")
    return list(value)


def _check_loss_weight(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"loss weight of output {name!r} must be a finite number >= 0, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


def _width_str(features: int | None) -> str:
    return f"(N x {'?' if features is None else features})"


def _layer_config(layer: Layer) -> dict:
    return {"type": type(layer).__name__, **layer.config()}


def _layer_from_config(spec: dict) -> Layer:
    spec = dict(spec)
    kind = spec.pop("type")
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}")
    return LAYER_TYPES[kind](**spec)


@dataclasses.dataclass(frozen=True)
class GraphNode:
    """A node of a built model: its name, its layer (None for an input), the names of
    the nodes it reads, and the width of its output (None: any width)."""

    name: str
    layer: Layer | None
    inputs: tuple[str, ...]
    features: int | None


def _named_graph(inputs, outputs) -> tuple[list, list, list]:
    """The graph between ``inputs`` and ``outputs`` (Nodes) as named specs for
    :meth:`Graph._build`: every node the outputs depend on, each after the nodes it
    reads, named by its ``name`` or else "<layer type>_<k>" ("input_<k>" for inputs)."""
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    for node in inputs:
        if not isinstance(node, Input):
            raise TypeError(f"Graph: inputs must be nn.Input nodes, got {node!r}")
    for node in outputs:
        if not isinstance(node, Node):
            raise TypeError(f"Graph: outputs must be nodes (what calling a layer on nodes returns), got {node!r}")
    order, done = [], set()
    for output in outputs:  # depth first, each node after the nodes it reads
        stack = [(output, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in done:
                continue
            if expanded:
                done.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            stack.extend((source, False) for source in reversed(node.inputs) if id(source) not in done)
    names, taken, counters = {}, {node.name for node in [*inputs, *order] if node.name}, {}
    for node in [*inputs, *order]:
        if id(node) in names:
            continue
        if node.name:
            names[id(node)] = node.name
            continue
        kind = "input" if isinstance(node, Input) else type(node.layer).__name__.lower()
        k = counters.get(kind, 0)
        while f"{kind}_{k}" in taken:
            k += 1
        names[id(node)] = f"{kind}_{k}"
        taken.add(names[id(node)])
        counters[kind] = k + 1
    fed = {id(node) for node in inputs}
    for node in order:
        for source in node.inputs:
            if isinstance(source, Input) and id(source) not in fed:
                raise ValueError(
                    f"Graph: node {names[id(node)]!r} reads input {names[id(source)]!r} {_width_str(source.features)}, "
                    f"which is not among the model's inputs {[names[id(n)] for n in inputs]}: it would never be fed"
                )
    input_specs = [(names[id(node)], node.features) for node in inputs]
    node_specs = [(names[id(node)], node.layer, tuple(names[id(source)] for source in node.inputs))
                  for node in order if not isinstance(node, Input)]
    return input_specs, node_specs, [names[id(node)] for node in outputs]


class Graph:
    """A model whose layers form a directed acyclic graph: one or more inputs, one or
    more outputs, nodes that feed several others, and merges (:class:`Add`,
    :class:`Concatenate`). Calling a layer on nodes returns a node::

        x = nn.Input(784)
        h = nn.ReLU()(nn.Linear(784, 256)(x))
        r = nn.ReLU()(nn.Linear(256, 256)(h))
        model = nn.Graph(x, nn.Linear(256, 10)(nn.Add()(h, r)), backend="cython")

    ``inputs``: an :class:`Input` or a list of them (the order in which ``fit``,
    ``predict`` and ``evaluate`` take their arrays; a dict by input name works too).
    ``outputs``: a node or a list of nodes (then ``predict`` returns a list of arrays and
    ``fit`` takes a target array and a loss per output). :meth:`from_nodes` builds a
    model from named nodes instead. Nodes no output depends on are not part of it.

    Everything is checked here, before anything runs: a cycle, an input that is never
    fed, a node that reaches no output, a layer used by two nodes, a Linear whose
    ``in_features`` differs from the width it is given, and merges of widths that do
    not fit raise ValueError naming the nodes and shapes.

    The forward pass runs in a topological order fixed here; the backward pass runs in
    the reverse order and sums the gradients of a node that feeds several others. A
    Linear read only by an activation whose gradient needs only its output runs fused
    with it (one ops.linear call), as in a Sequential. Parameters are named after their
    node ("linear_0.W", ...) and listed in the topological order.
    """

    FORMAT = "nnkern.Graph"  # the "format" entry of a saved model's metadata

    def __init__(self, inputs, outputs, *, backend: str | None = None, dtype=np.float32):
        self._build(*_named_graph(inputs, outputs), backend, dtype)

    @classmethod
    def from_nodes(cls, inputs, nodes, outputs, *, backend: str | None = None, dtype=np.float32) -> Graph:
        """A graph model from named nodes, listed in any order::

            nn.Graph.from_nodes(
                inputs={"x": 784},
                nodes=[("hidden", nn.Linear(784, 256), "x"), ("act", nn.ReLU(), "hidden"),
                       ("block", nn.Linear(256, 256), "act"), ("sum", nn.Add(), ["act", "block"]),
                       ("logits", nn.Linear(256, 10), "sum")],
                outputs="logits")

        ``inputs``: {name: features}, or (name, features) pairs, in the order of the
        model's inputs. ``nodes``: (name, layer, the name or list of names it reads).
        ``outputs``: a node name or a list of them."""
        pairs = list(inputs.items()) if isinstance(inputs, dict) else [tuple(pair) for pair in inputs]
        input_specs = [(name, _check_features(features, f"features of input {name!r}", "Graph"))
                       for name, features in pairs]
        node_specs = []
        for spec in nodes:
            if not isinstance(spec, (list, tuple)) or len(spec) != 3:
                raise TypeError(f"Graph.from_nodes: a node is (name, layer, input names), got {spec!r}")
            name, layer, sources = spec
            node_specs.append((name, layer, (sources,) if isinstance(sources, str) else tuple(sources)))
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        graph = Graph.__new__(Graph)
        graph._build(input_specs, node_specs, outputs, backend, dtype)
        return graph

    # -- building ---------------------------------------------------------------------

    def _build(self, input_specs, node_specs, output_names, backend, dtype) -> None:
        self.backend = get_backend() if backend is None else backend
        backend_module(self.backend)  # unknown or unusable backends fail here, with the reason
        self.dtype = _check_dtype(dtype, type(self).__name__)
        self.nodes = self._checked_nodes(input_specs, node_specs, list(output_names))
        self.input_names = [name for name, _ in input_specs]
        self.output_names = list(output_names)
        self.layers = [node.layer for node in self.nodes if node.layer is not None]
        for layer in self.layers:
            layer.bind(self.backend, self.dtype)
        slot = {node.name: i for i, node in enumerate(self.nodes)}
        self._input_slots = [slot[name] for name in self.input_names]
        self._output_slots = [slot[name] for name in self.output_names]
        self._stages = self._plan(slot)
        # which node values need a gradient: those that parameters feed into
        self._needs_grad = [False] * len(self.nodes)
        for stage in self._stages:
            self._needs_grad[stage.target] = stage.has_parameters or any(self._needs_grad[s] for s in stage.sources)
        self.is_chain = (len(self.input_names) == 1 and self.output_names == [self.nodes[-1].name]
                         and all(node.inputs == (before.name,) for before, node in zip(self.nodes, self.nodes[1:])))
        self._buffers = _Buffers()
        self._forward_rows = None  # the batch size of the last forward pass
        self.loss: Loss | dict | None = None
        self.loss_weights = None
        self.stop_training = False

    def _checked_nodes(self, input_specs, node_specs, outputs) -> list[GraphNode]:
        """The nodes in topological order, after checking everything the docstring of
        :class:`Graph` lists."""
        where = type(self).__name__
        inputs_of, layer_of, features_of = {}, {}, {}
        for name, features in input_specs:
            _check_node_name(name, where, required=True)
            if name in inputs_of:
                raise ValueError(f"{where}: two inputs are named {name!r}")
            inputs_of[name], layer_of[name], features_of[name] = (), None, features
        for name, layer, sources in node_specs:
            _check_node_name(name, where, required=True)
            if name in inputs_of:
                raise ValueError(f"{where}: two nodes are named {name!r}")
            if not isinstance(layer, Layer):
                raise TypeError(f"{where}: node {name!r} is {type(layer).__name__}, not an nnkern.nn layer")
            problem = _arity_problem(layer, len(sources))
            if problem:
                raise ValueError(f"{where}: node {name!r} {layer!r} {problem}")
            inputs_of[name], layer_of[name] = tuple(sources), layer
        for name, sources in inputs_of.items():
            for source in sources:
                if source not in inputs_of:
                    raise ValueError(f"{where}: node {name!r} reads {source!r}, which is neither an input of the "
                                     "model nor a node: it would never be fed")
        if not outputs:
            raise ValueError(f"{where}: a model needs at least one output")
        for name in outputs:
            if name not in inputs_of:
                raise ValueError(f"{where}: output {name!r} is not a node of the graph")
            if layer_of[name] is None:
                raise ValueError(f"{where}: output {name!r} is an input; outputs are computed by layers")
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"{where}: an output is listed twice in {outputs}")
        try:
            order = _graph.topological_order(inputs_of)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        owner = {}
        for name in order:
            layer = layer_of[name]
            if layer is None:
                continue
            if id(layer) in owner:
                raise ValueError(f"{where}: the layer {layer!r} is used by nodes {owner[id(layer)]!r} and {name!r}; a "
                                 "layer holds the parameters and workspaces of one node: create one layer per node")
            owner[id(layer)] = name
            widths = [features_of[source] for source in inputs_of[name]]
            if isinstance(layer, _Merge):
                try:
                    features_of[name] = layer.output_features(widths)
                except ValueError as exc:
                    listing = ", ".join(f"{s!r} {_width_str(w)}" for s, w in zip(inputs_of[name], widths))
                    raise ValueError(f"{where}: node {name!r} {layer!r} cannot merge {listing}: {exc}") from None
                continue
            (source,), (width,) = inputs_of[name], widths
            if layer.in_features is not None and width is not None and width != layer.in_features:
                raise ValueError(f"{where}: node {name!r} {layer!r} takes inputs of shape {_width_str(layer.in_features)}, "
                                 f"but {'input' if layer_of[source] is None else 'node'} {source!r} "
                                 f"outputs {_width_str(width)}")
            features_of[name] = layer.output_features(width)
        reached = _graph.ancestors(outputs, inputs_of)
        unused = [name for name in order if name not in reached]
        if unused:
            listing = ", ".join(f"{'input' if layer_of[name] is None else 'node'} {name!r} {_width_str(features_of[name])}"
                                for name in unused)
            raise ValueError(f"{where}: {listing} reach{'es' if len(unused) == 1 else ''} no output of the model "
                             f"(outputs: {outputs}); remove {'it' if len(unused) == 1 else 'them'} or make it an output")
        return [GraphNode(name, layer_of[name], inputs_of[name], features_of[name]) for name in order]

    def _plan(self, slot: dict) -> list:
        """The stages of the forward pass, in topological order; a Linear read only by an
        activation whose gradient needs only its output is fused with it."""
        readers = {node.name: [] for node in self.nodes}
        for node in self.nodes:
            for source in node.inputs:
                readers[source].append(node.name)
        by_name = {node.name: node for node in self.nodes}
        stages, fused = [], set()
        for node in self.nodes:
            layer = node.layer
            if layer is None or node.name in fused:
                continue
            sources = [slot[source] for source in node.inputs]
            if isinstance(layer, Linear) and node.name not in self.output_names and len(readers[node.name]) == 1:
                reader = by_name[readers[node.name][0]]
                if isinstance(reader.layer, _Activation) and reader.layer.grad_from_output:
                    stages.append(_FusedLinearActivation(layer, reader.layer, sources, slot[reader.name]))
                    fused.add(reader.name)
                    continue
            stage = _MergeStage if isinstance(layer, _Merge) else _Single
            stages.append(stage(layer, sources, slot[node.name]))
        return stages

    def __repr__(self) -> str:
        return (f"Graph(inputs={self.input_names}, outputs={self.output_names}, nodes={len(self.nodes)}, "
                f"backend={self.backend!r}, dtype={self.dtype.name})")

    # -- description --------------------------------------------------------------------

    def summary(self, print_fn=print) -> str:
        """A table of the nodes in topological order: name, layer, the nodes it reads,
        output shape and parameter count, with the totals. Printed with ``print_fn``
        (None: not printed) and returned."""
        rows = [("node", "layer", "reads", "output", "parameters")]
        for node in self.nodes:
            count = sum(int(np.prod(p.shape)) for _, p in node.layer.named_parameters()) if node.layer else 0
            rows.append((node.name, "Input" if node.layer is None else repr(node.layer), ", ".join(node.inputs) or "-",
                         _width_str(node.features), f"{count:,}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.rjust(w) if i == 4 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        total = sum(int(np.prod(p.shape)) for p in self.parameters())
        lines.append("-" * len(lines[0]))
        lines.append(f"{type(self).__name__}: {len(self.nodes)} nodes, {total:,} parameters, outputs "
                     f"{', '.join(self.output_names)}; backend {self.backend}, {self.dtype.name}")
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def to_dot(self) -> str:
        """The graph in Graphviz's DOT language (``dot -Tpng``): a box per node with its
        layer and output shape, an arrow per edge; inputs and outputs shaded."""
        def quoted(*parts: str) -> str:  # a DOT string of lines, each escaped
            return '"' + "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in parts) + '"'

        lines = [f"digraph {quoted(type(self).__name__)} {{", "  rankdir=TB;",
                 '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica"];']
        for node in self.nodes:
            what = "Input" if node.layer is None else repr(node.layer)
            fill = ", fillcolor=lightblue" if node.layer is None else (
                ", fillcolor=lightyellow" if node.name in self.output_names else "")
            lines.append(f"  {quoted(node.name)} [label={quoted(node.name, what, _width_str(node.features))}{fill}];")
        for node in self.nodes:
            for source in node.inputs:
                lines.append(f"  {quoted(source)} -> {quoted(node.name)};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def plot(self, path, *, title: str | None = None) -> str:
        """Draw the graph (nodes, shapes, edges) to an image file with matplotlib
        (``pip install nnkern[plot]``); see :func:`nnkern.plots.plot_graph`."""
        from .plots import plot_graph

        return plot_graph(self, path, title=title)

    # -- parameters ----------------------------------------------------------------

    def named_parameters(self) -> list[tuple[str, object]]:
        """("<node>.W", W), ("<node>.b", b), ... in the topological order of the nodes."""
        return [(f"{node.name}.{name}", p) for node in self.nodes if node.layer is not None
                for name, p in node.layer.named_parameters()]

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
        """The architecture: inputs and their widths, the nodes (name, layer type and
        constructor arguments, the nodes read), the outputs, and the dtype."""
        features = {node.name: node.features for node in self.nodes}
        return {"inputs": [{"name": name, "features": features[name]} for name in self.input_names],
                "nodes": [{"name": node.name, "layer": _layer_config(node.layer), "inputs": list(node.inputs)}
                          for node in self.nodes if node.layer is not None],
                "outputs": list(self.output_names),
                "dtype": self.dtype.name}

    @classmethod
    def from_config(cls, config: dict, *, backend: str | None = None, dtype=None) -> Graph:
        """A new model with the architecture of ``config`` (weights freshly initialised)."""
        return Graph.from_nodes({spec["name"]: spec["features"] for spec in config["inputs"]},
                                [(spec["name"], _layer_from_config(spec["layer"]), spec["inputs"])
                                 for spec in config["nodes"]],
                                config["outputs"], backend=backend, dtype=config["dtype"] if dtype is None else dtype)

    def clone(self, *, backend: str | None = None, dtype=None) -> Graph:
        """A copy with the same architecture and weights, on ``backend`` (default: this
        model's) in ``dtype`` (default: this model's)."""
        copy = type(self).from_config(self.config(), backend=backend or self.backend, dtype=dtype or self.dtype)
        copy.load_state_dict(self.state_dict())
        return copy

    # -- forward and backward -------------------------------------------------------

    def _input_owner(self, index: int) -> str:
        """What takes input ``index``, for error messages."""
        return f"input {self.input_names[index]!r}"

    def _checked_input(self, index: int, x):
        """``x`` (a host array or a device array) after checking its type, that it is
        2-D, and its width."""
        where = type(self).__name__ + (f" input {self.input_names[index]!r}" if len(self.input_names) > 1 else "")
        if _arrays.is_device_array(x):
            if np.dtype(x.dtype) != self.dtype:
                raise TypeError(f"{where}: device input has dtype {x.dtype}, the model computes in {self.dtype}")
        else:
            x = np.asarray(x)
            if x.dtype.kind not in "fiub":
                raise TypeError(f"{where}: input has dtype {x.dtype}; expected real numbers")
        if len(x.shape) != 2:
            raise ValueError(
                f"{where}: input must be 2-D (samples x features), got shape ({_shape_str(x.shape)})"
                + ("; use x.reshape(1, -1) for one sample" if len(x.shape) == 1 else "")
            )
        width = self.nodes[self._input_slots[index]].features
        if width is not None and x.shape[1] != width:
            raise ValueError(
                f"{type(self).__name__}: input of shape ({_shape_str(x.shape)}) does not fit "
                f"{self._input_owner(index)}, which takes inputs of shape (N x {width})"
            )
        return x

    def _as_input(self, index: int, x):
        """``x`` as a C-contiguous 2-D array of the model's dtype in the model's memory,
        after checking it (one copy into a reused buffer at most)."""
        x = self._checked_input(index, x)
        if _arrays.is_device_array(x):
            return x
        if self.backend not in _arrays.DEVICE_BACKENDS and x.dtype == self.dtype and x.flags.c_contiguous:
            return x
        buffer = self._buffers.get(f"input{index}", tuple(x.shape), self.dtype, self.backend)
        buffer[...] = np.ascontiguousarray(x, dtype=self.dtype)
        return buffer

    def _input_arrays(self, x) -> list:
        """The model's input arrays from ``x``: an array (one input), a list or tuple of
        arrays in the order of :attr:`input_names`, or a dict by input name."""
        return _per_name(x, self.input_names, "input arrays", type(self).__name__, arrays=True, kind="inputs")

    def _target_arrays(self, y) -> list:
        return _per_name(y, self.output_names, "target arrays", type(self).__name__, arrays=True)

    def _forward(self, arrays: list, training: bool) -> list:
        values = [None] * len(self.nodes)
        for index, (slot, x) in enumerate(zip(self._input_slots, arrays)):
            values[slot] = self._as_input(index, x)
        rows = {values[slot].shape[0] for slot in self._input_slots}
        if len(rows) > 1:
            shapes = ", ".join(f"{name!r} ({_shape_str(values[slot].shape)})"
                               for name, slot in zip(self.input_names, self._input_slots))
            raise ValueError(f"{type(self).__name__}: the inputs have different numbers of samples: {shapes}")
        for stage in self._stages:
            values[stage.target] = stage.forward([values[source] for source in stage.sources], training)
        self._forward_rows = rows.pop()
        return [values[slot] for slot in self._output_slots]

    def forward(self, x, training: bool = False):
        """The model's output for the batch ``x`` (an array, or a list or dict of arrays
        for several inputs); a list of arrays for several outputs. The results are
        workspaces reused by the next forward pass of the same batch size."""
        outputs = self._forward(self._input_arrays(x), training)
        return outputs[0] if len(outputs) == 1 else outputs

    def backward(self, grad_output, input_grad: bool = False):
        """Backpropagate ``grad_output`` (the loss gradient with respect to the output, or
        a list of them, one per output) through the last forward pass, in reverse
        topological order, summing the gradients that reach a node from several readers:
        writes every parameter gradient, and returns the gradient with respect to the
        input (a list for several inputs) when ``input_grad``."""
        grads = []
        for name, slot, grad in zip(self.output_names, self._output_slots, self._target_arrays(grad_output)):
            if not _arrays.is_device_array(grad):  # the model's dtype and memory, as its own gradients
                grad = np.asarray(grad)
                if self.backend in _arrays.DEVICE_BACKENDS:
                    grad = _arrays.from_host(grad, self.dtype, self.backend)
                elif grad.dtype != self.dtype or not grad.flags.c_contiguous:
                    grad = np.ascontiguousarray(grad, dtype=self.dtype)
            width = self.nodes[slot].features
            if self._forward_rows is None or len(grad.shape) != 2 or grad.shape[0] != self._forward_rows \
                    or (width is not None and grad.shape[1] != width):
                raise ValueError(f"backward: the gradient of output {name!r} has shape ({_shape_str(grad.shape)}); "
                                 + ("no forward pass ran before" if self._forward_rows is None else
                                    f"the last forward pass gave {_width_str(width).replace('N', str(self._forward_rows))}"))
            grads.append(grad)
        return self._backward(grads, input_grad)

    def _backward(self, grads: list, input_grad: bool):
        summed = [None] * len(self.nodes)  # each node's gradient, a sum once several arrive
        owned = [False] * len(self.nodes)  # whether summed[slot] is this model's own buffer
        for slot, grad in zip(self._output_slots, grads):
            self._add_gradient(summed, owned, slot, grad)
        for stage in reversed(self._stages):
            wanted = [input_grad or self._needs_grad[source] for source in stage.sources]
            if not (stage.has_parameters or any(wanted)):
                continue
            source_grads = stage.backward(summed[stage.target], any(wanted))
            if source_grads is not None:
                for source, grad, want in zip(stage.sources, source_grads, wanted):
                    if want:
                        self._add_gradient(summed, owned, source, grad)
        if not input_grad:
            return None
        grads = [summed[slot] for slot in self._input_slots]
        return grads[0] if len(grads) == 1 else grads

    def _add_gradient(self, summed: list, owned: list, slot: int, grad) -> None:
        """Add ``grad`` to the gradient of node ``slot``: the first one is kept as it is
        (no copy); a second is summed into a buffer of the model (the axpy kernel)."""
        if summed[slot] is None:
            summed[slot] = grad
            return
        if not owned[slot]:
            buffer = self._buffers.get(f"grad{slot}", tuple(grad.shape), self.dtype, self.backend)
            buffer[...] = summed[slot]
            summed[slot], owned[slot] = buffer, True
        _add_into(summed[slot], grad, 1.0, self.backend)

    def _objective(self, loss, loss_weights=None) -> _Objective:
        """The objective of ``loss`` (a Loss or its name for every output; a list or a
        dict by output name for one each) weighted by ``loss_weights`` (None: 1 each)."""
        if isinstance(loss, _Objective):
            return loss
        names = self.output_names
        losses = []
        specs = _per_name(loss, names, "losses", "fit", arrays=False) if isinstance(loss, (list, tuple, dict)) \
            else [loss] * len(names)
        for spec in specs:
            loss = get_loss(spec)
            if any(loss is other for other in losses):  # a loss keeps its last gradient: one per output
                loss = type(loss)(**loss.config())
            losses.append(loss)
        weights = [1.0] * len(names) if loss_weights is None else \
            [_check_loss_weight(w, name) for w, name in zip(_per_name(loss_weights, names, "loss weights", "fit",
                                                                      arrays=False), names)]
        return _Objective(losses, weights, names)

    def compute_gradients(self, x, y, loss) -> tuple[float, object]:
        """Forward (training mode), loss, backward: returns (loss value, model output)
        and leaves the gradients in :meth:`gradients`. With several outputs ``y`` and
        ``loss`` are given per output (see :meth:`fit`) and the value is the weighted sum."""
        objective = self._objective(loss)
        outputs = self._forward(self._input_arrays(x), training=True)
        value = objective.forward(outputs, self._target_arrays(y), self.backend)
        self._backward(objective.backward(), input_grad=False)
        return value, (outputs[0] if len(outputs) == 1 else outputs)

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
            on_nonfinite: str = "raise", callbacks=(), fused: bool = True, loss_weights=None) -> History:
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

        A graph model with several inputs takes ``x`` as a list of arrays (in the order
        of its inputs) or a dict by input name; with several outputs, ``y`` likewise,
        ``loss`` is one loss for every output or a list or dict of them, and
        ``loss_weights`` (default 1 each) weighs them: the loss minimised is
        ``sum(weight * loss)``. The logs then hold that "loss" and, per output,
        "<output>_loss" and "<output>_accuracy" (for classification losses).
        """
        from .data import DataLoader

        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
            raise ValueError(f"fit: epochs must be an integer >= 0, got {epochs!r}")
        if on_nonfinite not in ("raise", "ignore"):
            raise ValueError(f"fit: on_nonfinite must be 'raise' or 'ignore', got {on_nonfinite!r}")
        objective = self._objective(loss, loss_weights)
        optimizer = self._bound_optimizer(optimizer)
        xs, ys = self._input_arrays(x), self._target_arrays(y)
        loader = DataLoader(xs[0] if len(xs) == 1 else tuple(xs), ys[0] if len(ys) == 1 else tuple(ys),
                            batch_size, shuffle=shuffle, seed=seed)
        one_loss = len(objective.losses) == 1 and objective.weights == [1.0]
        fused_step = (fused_train_step(self, optimizer, objective.losses[0], xs[0], ys[0], batch_size)
                      if fused and one_loss and len(xs) == 1 else None)
        if verbose and fused_step is not None and fused_step.first_call_note:
            print(fused_step.first_call_note, flush=True)
        self.loss = objective.losses[0] if len(ys) == 1 else dict(zip(self.output_names, objective.losses))
        self.loss_weights = loss_weights
        callbacks = list(callbacks)
        if optimizer.schedule is not None and optimizer.schedule not in callbacks:
            callbacks.insert(0, optimizer.schedule)  # the optimizer's lr schedule steps with the training
        callbacks += [_EpochPrinter(epochs)] if verbose else []
        history = History()
        steps = len(loader)
        self.stop_training = False
        _dispatch(callbacks, "set_model", self)
        _dispatch(callbacks, "on_train_begin", {"epochs": epochs, "steps": steps, "samples": loader.samples,
                                                "validation": validation_data is not None})
        for epoch in range(1, epochs + 1):
            _dispatch(callbacks, "on_epoch_begin", epoch, steps)
            started = time.perf_counter()
            meter = _Meter(objective)
            # The "cuda" engine trains the whole epoch on the device and returns its steps'
            # (loss, right predictions, rows), stopping after a non-finite loss when asked.
            epoch_on_device = getattr(fused_step, "run_epoch", None)
            batches = epoch_on_device(loader, stop_on_nonfinite=on_nonfinite == "raise") if epoch_on_device else loader
            for step, batch in enumerate(batches, 1):
                if epoch_on_device:
                    value, batch_correct, rows = batch
                    meter.add(rows, value, [value], [batch_correct])
                else:
                    xb, yb = batch
                    rows = len(xb[0] if len(xs) > 1 else xb)
                    if fused_step is not None:
                        value, batch_correct = fused_step(xb, yb)
                        meter.add(rows, value, [value], [batch_correct])
                    else:
                        value, output = self.train_step(xb, yb, optimizer, objective)
                        outputs, targets = ([output], [yb]) if len(ys) == 1 else (output, yb)
                        meter.add(rows, value, objective.values, objective.correct(outputs, targets))
                if not math.isfinite(value) and on_nonfinite == "raise":
                    raise NonFiniteLossError(
                        f"fit: the loss became {value} at epoch {epoch}, step {step} of {steps}; "
                        f"try a smaller learning rate, or pass on_nonfinite='ignore' to go on"
                    )
                _dispatch(callbacks, "on_batch_end", epoch, step, steps, meter.logs())
            metrics = meter.logs()
            if validation_data is not None:
                x_val, y_val = validation_data
                metrics.update({f"val_{key}": value for key, value in self._evaluate(x_val, y_val, objective).items()})
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

    def evaluate(self, x, y, *, loss=None, loss_weights=None, batch_size: int = _EVAL_BATCH):
        """(mean loss, accuracy) over (x, y); accuracy is None for regression losses.
        ``loss`` (and ``loss_weights``) default to those of the last ``fit``, else cross
        entropy. With several outputs: (weighted loss, {output name: accuracy or None})."""
        if loss is None:
            loss, loss_weights = self.loss or "cross_entropy", self.loss_weights if loss_weights is None else loss_weights
        logs = self._evaluate(x, y, self._objective(loss, loss_weights), batch_size)
        if len(self.output_names) == 1:
            return logs["loss"], logs.get("accuracy")
        return logs["loss"], {name: logs.get(f"{name}_accuracy") for name in self.output_names}

    def _evaluate(self, x, y, objective: _Objective, batch_size: int = _EVAL_BATCH) -> dict:
        """The logs of :class:`_Meter` over (x, y), in evaluation mode."""
        xs = [np.asarray(a) for a in self._input_arrays(x)]
        ys = [np.asarray(a) for a in self._target_arrays(y)]
        counts = [len(a) if a.ndim else 0 for a in (*xs, *ys)]
        if len(set(counts)) > 1 or counts[0] == 0:
            raise ValueError("evaluate: x and y need the same, non-zero number of samples, got "
                             + " and ".join(str(count) for count in counts))
        meter = _Meter(objective)
        for start, stop in self._chunks(xs[0], batch_size):
            outputs = self._forward([a[start:stop] for a in xs], training=False)
            targets = [a[start:stop] for a in ys]
            value = objective.forward(outputs, targets, self.backend)
            meter.add(stop - start, value, objective.values, objective.correct(outputs, targets))
        return meter.logs()

    def predict(self, x, *, batch_size: int = _EVAL_BATCH):
        """The model's outputs for ``x`` as a new host array (evaluation mode); a list of
        arrays, one per output, for several outputs."""
        xs = [self._checked_input(i, np.asarray(a)) for i, a in enumerate(self._input_arrays(x))]
        if len({len(a) for a in xs}) > 1:
            raise ValueError("predict: the inputs have different numbers of samples, shapes "
                             + ", ".join(f"({_shape_str(a.shape)})" for a in xs))
        if len(xs[0]) == 0:
            outputs = [np.empty((0, self.nodes[slot].features or xs[0].shape[1]), dtype=self.dtype)
                       for slot in self._output_slots]
        else:
            parts = [[_arrays.host_copy(output) for output in self._forward([a[start:stop] for a in xs], False)]
                     for start, stop in self._chunks(xs[0], batch_size)]
            outputs = [np.concatenate(chunks) if len(chunks) > 1 else chunks[0] for chunks in zip(*parts)]
        return outputs[0] if len(outputs) == 1 else outputs

    def predict_classes(self, x, *, batch_size: int = _EVAL_BATCH):
        """Predicted class indices: the argmax of each output row, or ``output > 0.5``
        for a single output column (a list, one per output, for several outputs)."""
        outputs = self.predict(x, batch_size=batch_size)

        def classes(output):
            if output.shape[1] == 1:
                return (output[:, 0] > 0.5).astype(np.int64)
            return np.argmax(output, axis=1)

        return classes(outputs) if len(self.output_names) == 1 else [classes(output) for output in outputs]

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
        meta = json.dumps({"format": self.FORMAT, "version": FORMAT_VERSION, **self.config()})
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


class Sequential(Graph):
    """Layers applied in order, built for one backend and dtype: the graph of a chain,
    whose nodes are named by layer index ("0", "1", ...; parameters "0.W", "0.b", ...).

    ``Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))``; a single list of
    layers works too. Layer widths are checked here: a Linear whose ``in_features`` does
    not match the width before it is an error naming both layers.
    """

    FORMAT = "nnkern.Sequential"

    def __init__(self, *layers, backend: str | None = None, dtype=np.float32):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layer {i} is {type(layer).__name__}, not an nnkern.nn layer")
            if isinstance(layer, _Merge):
                raise ValueError(f"Sequential: layer {i} {layer!r} merges several inputs; build an nn.Graph for that")
        if not layers:
            raise ValueError("Sequential: a model needs at least one layer")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("Sequential: the same layer object appears more than once; create one per position")
        self.layers = list(layers)
        self.in_features, self.out_features = self._check_widths()
        self._first_linear = next((layer for layer in self.layers if isinstance(layer, Linear)), None)
        names = [str(i) for i in range(len(layers))]
        self._build([("input", self.in_features)],
                    [(name, layer, (source,)) for name, layer, source in zip(names, layers, ["input", *names])],
                    [names[-1]], backend, dtype)

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

    def _input_owner(self, index: int) -> str:
        return f"the first Linear layer {self._first_linear!r}"

    def __repr__(self) -> str:
        layers = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential({layers}, backend={self.backend!r}, dtype={self.dtype.name})"

    def config(self) -> dict:
        """The architecture: layer types and constructor arguments, and the dtype."""
        return {"layers": [_layer_config(layer) for layer in self.layers], "dtype": self.dtype.name}

    @classmethod
    def from_config(cls, config: dict, *, backend: str | None = None, dtype=None) -> Sequential:
        """A new model with the architecture of ``config`` (weights freshly initialised)."""
        layers = [_layer_from_config(spec) for spec in config["layers"]]
        return cls(*layers, backend=backend, dtype=config["dtype"] if dtype is None else dtype)


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


_MODEL_TYPES = {Sequential.FORMAT: Sequential, Graph.FORMAT: Graph}


def load(path, *, backend: str | None = None) -> Graph:
    """The model saved at ``path`` by ``save`` (a :class:`Sequential` or a :class:`Graph`),
    rebuilt with the same architecture, dtype and weights on ``backend`` (None: the
    current backend).
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
    if not isinstance(meta, dict) or meta.get("format") not in _MODEL_TYPES:
        raise ModelFileError(f"{path}: not an nnkern model file (format {meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: model file version {meta.get('version')!r}; this nnkern reads version {FORMAT_VERSION}")
    try:
        model = _MODEL_TYPES[meta["format"]].from_config(meta, backend=backend)
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: inconsistent nnkern model file ({exc})") from exc
    return model
