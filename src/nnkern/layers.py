"""The layers of a model: :class:`Layer` (the interface), :class:`Linear`, the activations,
:class:`Identity`, :class:`Softmax`, :class:`Dropout`, the merges :class:`Add` and
:class:`Concatenate` for graph models, and the graph nodes (:class:`Node`, :class:`Input`)
that calling a layer on nodes builds. Each layer calls the ops of its backend with ``out=``
buffers; the models (:mod:`nnkern.models`) bind layers to a backend and dtype and run them.
"""

from __future__ import annotations

import math

import numpy as np

from . import _arrays, _validate, ops
from ._backend import backend_module, get_backend
from ._workspace import DTYPES, Buffers, shape_str

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
        self._buffers = Buffers()

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
        problem = arity_problem(self, len(inputs))
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

    def named_buffers(self) -> list[tuple[str, object]]:
        """State that is no parameter (no gradient, no optimizer step) but is saved with
        the model: BatchNorm1d's running statistics."""
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
    return _validate.real("Linear", "init", init, low=0, expected="'he', 'xavier' or a standard deviation >= 0",
                          type_error=ValueError)


def check_features(value, name: str, owner: str = "Linear") -> int:
    return _validate.integer(owner, name, value, minimum=1, expected="a positive integer", type_error=ValueError)


class Linear(Layer):
    """The affine layer ``y = x @ W + b``, W of shape (in_features, out_features), b (out_features,).

    ``init``: "he" (default), "xavier", or a number, the standard deviation of the normal
    distribution W is drawn from; b starts at zero. ``seed`` seeds that draw.
    """

    def __init__(self, in_features: int, out_features: int, init="he", seed=None):
        super().__init__()
        self.in_features = check_features(in_features, "in_features")
        self.out_features = check_features(out_features, "out_features")
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


class ActivationLayer(Layer):
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


class Sigmoid(ActivationLayer):
    """``1 / (1 + exp(-x))``; gradient ``y * (1 - y)``."""

    op_name = "sigmoid"
    grad_from_output = True


class Tanh(ActivationLayer):
    op_name = "tanh"
    grad_from_output = True


class ReLU(ActivationLayer):
    """``max(x, 0)``; the gradient at 0 is taken as 0."""

    op_name = "relu"
    grad_from_output = True


class LeakyReLU(ActivationLayer):
    """``x`` for x > 0, ``negative_slope * x`` otherwise (PyTorch's default slope 0.01)."""

    op_name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = _validate.real("LeakyReLU", "negative_slope", negative_slope, expected="a finite number",
                                             type_error=ValueError)

    @property
    def grad_from_output(self) -> bool:
        return self.negative_slope >= 0

    def op_params(self):
        return {"negative_slope": self.negative_slope}

    def config(self):
        return {"negative_slope": self.negative_slope}


class GELU(ActivationLayer):
    """``x * Phi(x)`` (the exact erf form), or its tanh approximation with
    ``approximate="tanh"``, as torch.nn.GELU."""

    op_name = "gelu"

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = _validate.choice("GELU", "approximate", approximate, ("none", "tanh"))

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
        self.p = _validate.real("Dropout", "p", p, low=0, high=1, high_open=True, expected="in [0, 1)",
                                type_error=ValueError)
        self.seed = seed
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


def add_into(out, x, scale: float, backend: str) -> None:
    """``out += scale * x`` in place (same shape, C-contiguous) by the backend's axpy: its
    raw sgd_update kernel, ``p -= lr * g``, run with ``lr = -scale``, as the optimizers'
    weight decay does (``ops.sgd_update`` refuses negative rates)."""
    if out.size:
        if isinstance(x, np.ndarray) and not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        backend_module(backend).sgd_update(out.reshape(-1), x.reshape(-1), -scale)


class MergeLayer(Layer):
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
        shapes = ", ".join(f"({shape_str(x.shape)})" for x in arrays)
        if any(len(x.shape) != 2 for x in arrays):
            raise ValueError(f"{name}: inputs must be 2-D (samples x features), got shapes {shapes}")
        if len({x.shape[0] for x in arrays}) > 1:
            raise ValueError(f"{name}: inputs have different numbers of rows, shapes {shapes}")
        return arrays


class Add(MergeLayer):
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
            raise ValueError("Add: cannot add inputs of shapes " + ", ".join(f"({shape_str(x.shape)})" for x in xs))
        out = self._buffer("y", xs[0].shape)
        out[...] = xs[0]
        for x in xs[1:]:
            add_into(out, x, 1.0, self.backend)
        self._count = len(xs)
        return out

    def backward(self, grad_out, input_grad: bool = True):
        return [grad_out] * self._count if input_grad else None


class Concatenate(MergeLayer):
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


def arity_problem(layer: Layer, count: int) -> str | None:
    """Why ``layer`` cannot take ``count`` input nodes (None: it can)."""
    if isinstance(layer, MergeLayer):
        return None if count >= 2 else f"merges two or more input nodes, got {count}"
    return None if count == 1 else f"takes one input node, got {count}"


def check_node_name(name, where: str, *, required: bool = False) -> str | None:
    if (name is not None or required) and (not isinstance(name, str) or not name):
        raise TypeError(f"{where}: a node name must be a non-empty string, got {name!r}")
    return name


class Node:
    """A value in a graph model under construction: an :class:`Input`, or what calling
    a layer on nodes returns (``nn.ReLU()(node)``). Nodes hold no data: give a
    :class:`Graph` its input and output nodes and it builds the model between them."""

    def __init__(self, layer: Layer | None, inputs: tuple = (), name: str | None = None):
        self.layer, self.inputs = layer, tuple(inputs)
        self.name = check_node_name(name, "Node")

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"Node({self.layer!r}{name})"


class Input(Node):
    """An input of a graph model, taking (N x ``features``) arrays: ``x = nn.Input(784)``."""

    def __init__(self, features: int, name: str | None = None):
        super().__init__(None, (), check_node_name(name, "Input"))
        self.features = check_features(features, "features", "Input")

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"Input({self.features}{name})"


LAYER_TYPES = {cls.__name__: cls for cls in
               (Linear, Sigmoid, Tanh, ReLU, LeakyReLU, GELU, Identity, Softmax, Dropout, Add, Concatenate)}

# The one table of activation layers by the name their kernels take (ops.activation): the
# CLI's --activation, the benchmark's networks and the estimators' names all come from it.
ACTIVATION_LAYERS = {cls.op_name: cls for cls in (Sigmoid, Tanh, ReLU, LeakyReLU, GELU)}


def activation_layer(name: str, **params) -> Layer:
    """A new activation layer from its kernel name ("sigmoid", "tanh", "relu",
    "leaky_relu", "gelu") and its parameters (``negative_slope``, ``approximate``)."""
    if name not in ACTIVATION_LAYERS:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATION_LAYERS)}")
    return ACTIVATION_LAYERS[name](**params)
