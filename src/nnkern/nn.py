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

The code lives by concern: :mod:`nnkern.layers` (layers, merges, graph nodes), :mod:`nnkern.normalization`,
:mod:`nnkern.losses`, :mod:`nnkern.models` (Graph, Sequential, their plan, ``load``),
:mod:`nnkern.modelfile` (the file format) and :mod:`nnkern.training` (the one training
loop and its engines); this module is their public face.

For the "cuda" backend parameters and workspaces are device arrays; inputs and targets
are host arrays, copied to the device per batch; ``state_dict()`` and ``predict`` return
host arrays.
"""

from __future__ import annotations

from ._graph import GraphNode
from ._workspace import DTYPES
from .layers import (
    ACTIVATION_LAYERS,
    GELU,
    ActivationLayer,
    Add,
    Concatenate,
    Dropout,
    Identity,
    Input,
    Layer,
    LeakyReLU,
    Linear,
    MergeLayer,
    Node,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    activation_layer,
)
from .losses import BCELoss, CrossEntropyLoss, Loss, MSELoss, get_loss
from .modelfile import FORMAT_VERSION, ModelFileError
from .models import LAYER_TYPES, Graph, Sequential, load
from .normalization import BatchNorm1d, LayerNorm
from .training import Callback, History, NonFiniteLossError

# The names of the layer bases before the split of this module (code written against them
# keeps working).
_Activation = ActivationLayer
_Merge = MergeLayer

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
    "BatchNorm1d",
    "LayerNorm",
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
    "activation_layer",
    "ACTIVATION_LAYERS",
    "LAYER_TYPES",
    "DTYPES",
    "FORMAT_VERSION",
]
